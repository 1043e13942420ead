"""One unit size limit, kept on the server (issue 15 item 6): `cim provision` writes it into
the content bucket's metadata, and every writer reads it there: the CLI, the hub, the store
agent (the dashboard's uploads) refuse a unit past it with the same sentence, and one that
fits is stored. A writer's own setting can only lower it."""

from __future__ import annotations

import base64
import json

import pytest

from cim import cid
from cim.errors import UnitTooLarge
from cim.nats.rpc import call
from cim.provision.apply import provision
from cim.provision.spec import ObjectSpec, ProvisionSpec
from cim.store import api as store_api
from cim.store.content import ContentStore
from support.hub_support import TOKEN, Hub

aiohttp = pytest.importorskip("aiohttp", reason="the hub needs aiohttp")

LIMIT = 1000
SAYS = f"over the limit of {LIMIT} bytes (the content bucket's limit, kept on the server"


async def test_every_writer_reads_the_one_limit_from_the_server(nats_server, nc, cli, agent_process, tmp_path):
    await provision(nc, ProvisionSpec())
    hub = Hub(nats_server.url, tmp_path).start()  # its own max_body_size (64 MiB) is far above
    try:
        await agent_process("store", {"nats": {"servers": [nats_server.url]}}).ready(nc)
        spec = tmp_path / "spec.json"
        spec.write_text(json.dumps({"objects": [{"bucket": "CIM_CONTENT", "max_unit_size": LIMIT}]}))
        cli("provision", "--spec", spec)
        assert await ContentStore(nc).max_unit_size() == LIMIT
        assert "\"max_unit_size\": 1000" in cli("provision", "--print", "--spec", spec).stdout
        assert cli("provision", "--check", "--spec", spec, check=False).returncode == 0  # no drift once applied

        over, fits = tmp_path / "over.bin", tmp_path / "fits.bin"
        over.write_bytes(b"o" * (LIMIT + 1))
        fits.write_bytes(b"f" * LIMIT)
        refused = cli("units", "put", over, check=False)
        assert refused.returncode == 1 and SAYS in refused.stderr
        assert cli("units", "put", fits).stdout.split()[0] == cid.compute(fits.read_bytes())

        async with aiohttp.ClientSession() as s, s.post(hub.url + "/v1/units", data=b"h" * (LIMIT + 1),
                                                        headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 413 and SAYS in json.dumps(await r.json())

        with pytest.raises(UnitTooLarge, match=SAYS.replace("(", r"\(")):
            await call(nc, store_api.PUT, store_api.PutRequest(content_b64=base64.b64encode(b"s" * (LIMIT + 1)).decode()))
        assert cli("units", "ls").stdout.count("\n") == 1  # only the unit that fits
    finally:
        hub.stop()


async def test_a_writers_own_setting_only_lowers_the_limit(nats_server, nc, cli, tmp_path):
    await provision(nc, ProvisionSpec(objects=[ObjectSpec(bucket="CIM_CONTENT", max_unit_size=LIMIT)]))
    f = tmp_path / "f.bin"
    f.write_bytes(b"x" * 600)
    lowered = cli("units", "put", f, env={"CIM_MAX_UNIT_SIZE": "500"}, check=False)
    assert lowered.returncode == 1 and "over the limit of 500 bytes (raise max_unit_size in this writer's settings" in lowered.stderr
    f.write_bytes(b"y" * (LIMIT + 1))
    raised = cli("units", "put", f, env={"CIM_MAX_UNIT_SIZE": str(10 * LIMIT)}, check=False)
    assert raised.returncode == 1 and SAYS in raised.stderr


async def test_garbage_in_the_metadata_falls_back_and_provisioning_keeps_an_operators_keys(nc, cli, tmp_path):
    await provision(nc, ProvisionSpec())
    js = nc.jetstream()
    info = await js.stream_info("OBJ_CIM_CONTENT")
    config = info.config
    config.metadata = {**(config.metadata or {}), "cim_max_unit_size": "²" * 3, "owner": "ops"}
    await js.update_stream(config)
    assert await ContentStore(nc).max_unit_size() == 1024**3  # not ours to believe: the default
    await provision(nc, ProvisionSpec())  # lays our key over, keeps the operator's
    metadata = (await js.stream_info("OBJ_CIM_CONTENT")).config.metadata
    assert metadata["cim_max_unit_size"] == str(1024**3) and metadata["owner"] == "ops"
