"""Helpers shared by the pipeline tests: counting events, a tiny PDF, a third-party plugin install."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from nats.aio.client import Client

from cim.events import EventStore

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"  # tests/plugins


async def count(nc: Client, subject: str, stream: str = "CIM_EVENTS") -> int:
    """How many messages the stream holds on `subject` (wildcards allowed), from the server."""
    name = f"count_{uuid.uuid4().hex[:12]}"
    body = {"stream_name": stream, "config": {"name": name, "filter_subject": subject, "ack_policy": "none",
                                              "deliver_policy": "all", "inactive_threshold": 5_000_000_000,
                                              "mem_storage": True, "num_replicas": 1}}
    resp = json.loads((await nc.request(f"$JS.API.CONSUMER.CREATE.{stream}.{name}", json.dumps(body).encode(), timeout=5)).data)
    await nc.publish(f"$JS.API.CONSUMER.DELETE.{stream}.{name}", b"")
    if "num_pending" not in resp:  # an error answer: say which, not a KeyError
        raise AssertionError(f"cannot count {subject} in {stream}: {resp.get('error')}")
    return resp["num_pending"]


async def events_on(nc: Client, subject: str):
    return [e async for e in EventStore(nc).read([subject])]


def install_plugins(target: Path, *names: str) -> str:
    """pip-install plugin packages from tests/plugins into `target`, as a user would install
    theirs; returns the PYTHONPATH that makes an agent see them."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target),
         *(str(PLUGINS / n) for n in names)],
        check=True, capture_output=True, text=True, timeout=120,
    )
    return str(target)


def tiny_pdf(text: str) -> bytes:
    """A one-page PDF showing `text`, with a correct cross-reference table."""
    content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)
