"""Dead letters in CIM_DLQ: listing, showing, and the data a retry needs."""

from __future__ import annotations

import json
from dataclasses import dataclass

from nats.aio.client import Client

from ..errors import JetStreamUnavailable, NotFound
from ..names import DLQ_STREAM
from ..nats.read import read_stream


@dataclass
class DeadLetter:
    seq: int
    subject: str
    pipeline: str
    reason: str
    attempts: int
    original_subject: str
    original_seq: int
    headers: dict[str, str]
    data: bytes

    def summary(self) -> dict:
        return {"seq": self.seq, "pipeline": self.pipeline, "reason": self.reason, "attempts": self.attempts,
                "original_subject": self.original_subject, "original_seq": self.original_seq}


def _from(subject: str, seq: int, headers: dict[str, str], data: bytes) -> DeadLetter:
    return DeadLetter(
        seq=seq, subject=subject, pipeline=headers.get("cim-dlq-pipeline", ""), reason=headers.get("cim-dlq-reason", ""),
        attempts=int(headers.get("cim-dlq-attempts", "0") or 0), original_subject=headers.get("cim-dlq-subject", ""),
        original_seq=int(headers.get("cim-dlq-seq", "0") or 0), headers=headers, data=data,
    )


async def list_letters(nc: Client, pipeline: str | None = None) -> list[DeadLetter]:
    subject = f"cim.dlq.pipeline.{pipeline}" if pipeline else "cim.dlq.>"
    return [_from(m.subject, m.seq, m.headers, m.data) async for m in read_stream(nc, DLQ_STREAM, [subject])]


async def get_letter(nc: Client, seq: int) -> DeadLetter:
    msg = await nc.request(f"$JS.API.STREAM.MSG.GET.{DLQ_STREAM}", json.dumps({"seq": seq}).encode(), timeout=5)
    resp = json.loads(msg.data)
    if "error" in resp:
        if resp["error"].get("code") == 404:
            raise NotFound(f"no dead letter #{seq}; `cim dlq ls` lists them")
        raise JetStreamUnavailable(f"cannot read dead letter #{seq}: {resp['error'].get('description')}")
    import base64

    m = resp["message"]
    headers = {}
    if m.get("hdrs"):
        raw = base64.b64decode(m["hdrs"]).decode()
        for line in raw.split("\r\n")[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip()] = v.strip()
    return _from(m["subject"], int(m["seq"]), headers, base64.b64decode(m.get("data") or b""))


async def delete_letter(nc: Client, seq: int) -> None:
    msg = await nc.request(f"$JS.API.STREAM.MSG.DELETE.{DLQ_STREAM}", json.dumps({"seq": seq}).encode(), timeout=5)
    resp = json.loads(msg.data)
    if "error" in resp and resp["error"].get("code") != 404:
        raise JetStreamUnavailable(f"cannot remove dead letter #{seq}: {resp['error'].get('description')}")
