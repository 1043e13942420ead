"""CIM's header parser gives what nats-py's gives, for every kind of header block, and is
the one CIM's connections use."""

from __future__ import annotations

import pytest
from nats.aio.client import Client

from cim.events import Event, EventStore
from cim.nats import headers as header_parsing
from cim.nats.connect import ConnectionSettings, connect
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec

EVENT = Event(type="unit.labeled", aggregate_id="abc", data={"labels": ["x"], "by": "test"}, correlation_id="corr",
              causation_id="cause")
BLOCKS = [
    b"NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in EVENT.headers().items()).encode() + b"\r\n",
    b"NATS/1.0\r\nfoo: bar\r\n\r\n",
    b"NATS/1.0\r\nName:Value\r\nTabbed:\tvalue \r\n\r\n",
    b"NATS/1.0\r\nurl: nats://host:4222/x\r\n\r\n",  # a colon in the value
    b"NATS/1.0\r\nno colon here\r\nok: 1\r\n\r\n",
    b"NATS/1.0\r\nbad name: dropped\r\ngood: kept\r\n\r\n",
    b"NATS/1.0\r\ndup: first\r\ndup: second\r\n\r\n",
    b"NATS/1.0\r\n: empty name\r\n\r\n",
    b"NATS/1.0\r\nempty:\r\n\r\n",
    b"NATS/1.0\r\n\r\n",
    b"NATS/1.0\r\nonly junk\r\n\r\n",
    b"NATS/1.0 503\r\n\r\n",
    b"NATS/1.0 404 No Messages\r\n\r\n",
    b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 1016\r\nNats-Last-Stream: 1024\r\n\r\n",
    "NATS/1.0\r\ntitle: Grüße\r\n\r\n".encode(),
    b"NATS/1.0\r\nbroken: \xff\xfe\r\n\r\n",
]


@pytest.mark.parametrize("block", BLOCKS, ids=range(len(BLOCKS)))
async def test_the_parser_agrees_with_nats_py(block):
    theirs = await Client()._process_headers(block)
    nc = Client()
    assert header_parsing.install(nc)
    assert await nc._process_headers(block) == theirs


async def test_events_read_over_a_cim_connection_keep_every_header(nats_server, nc):
    await provision(nc, ProvisionSpec())
    await EventStore(nc).append(EVENT)
    ours = await connect(ConnectionSettings(servers=[nats_server.url]))
    try:
        assert ours._process_headers.__qualname__.startswith("install.")  # the parser in use is ours
        (stored,) = [e async for e in EventStore(ours).read()]
    finally:
        await ours.close()
    assert (stored.id, stored.type, stored.source, stored.correlation_id, stored.causation_id, stored.time) == (
        EVENT.id, EVENT.type, EVENT.source, EVENT.correlation_id, EVENT.causation_id, EVENT.time)
