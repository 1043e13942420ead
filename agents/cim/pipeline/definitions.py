"""Where pipelines live at run time: the KV bucket CIM_PIPELINES, one key per pipeline.

The agent watches the bucket, so `cim pipelines apply` (or a changed step setting) takes
effect without a restart, and pause/resume is a flag in the same record.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError
from pydantic import BaseModel, ValidationError

from ..errors import JetStreamUnavailable, NotFound
from ..events.envelope import decode_body
from ..names import PIPELINES_BUCKET
from ..nats.read import last_per_subject
from .model import PipelineDef

log = logging.getLogger("cim.pipeline")
BUCKET = PIPELINES_BUCKET
MAX_PIPELINES = 1024  # the server's multi_last limit


class PipelineRecord(BaseModel):
    definition: PipelineDef
    paused: bool = False
    source: str = "cli"  # cli | config
    updated_at: datetime


async def bucket(nc: Client):
    try:
        return await nc.jetstream().key_value(BUCKET)
    except (BucketNotFoundError, NotFoundError):
        raise JetStreamUnavailable(f"the pipeline bucket {BUCKET} does not exist; run `cim provision` (or `cim up`)") from None


async def put(nc: Client, definition: PipelineDef, *, source: str = "cli", keep_paused: bool = True) -> PipelineRecord:
    kv = await bucket(nc)
    paused = False
    if keep_paused:
        try:
            paused = (await get(nc, definition.name)).paused
        except NotFound:
            pass
    record = PipelineRecord(definition=definition, paused=paused, source=source, updated_at=datetime.now(UTC))
    await kv.put(definition.name, record.model_dump_json().encode())
    return record


async def get(nc: Client, name: str) -> PipelineRecord:
    kv = await bucket(nc)
    try:
        entry = await kv.get(name)
    except (KeyNotFoundError, NotFoundError):
        raise NotFound(f"no pipeline named {name!r}; `cim pipelines ls` lists them") from None
    if not entry.value:
        raise NotFound(f"no pipeline named {name!r}; `cim pipelines ls` lists them")
    return PipelineRecord.model_validate(json.loads(entry.value))


async def list_all(nc: Client) -> list[PipelineRecord]:
    """Every pipeline, by name: the bucket's current values in one direct get (no consumer
    left behind by a poll). A value that is not a pipeline record is skipped and logged."""
    out = []
    for m in await last_per_subject(nc, f"KV_{BUCKET}", f"$KV.{BUCKET}.>", limit=MAX_PIPELINES,
                                    what=f"the pipeline bucket {BUCKET}"):
        if m.headers.get("KV-Operation") in ("DEL", "PURGE") or not m.data:
            continue
        body, problem = decode_body(m.data)
        try:
            if problem:
                raise ValueError(problem)
            out.append(PipelineRecord.model_validate(body))
        except (ValueError, ValidationError) as err:
            log.warning("ignoring %s in the pipeline bucket: not a pipeline record (%s)", m.subject,
                        str(err).splitlines()[0])
    return sorted(out, key=lambda r: r.definition.name)


async def set_paused(nc: Client, name: str, paused: bool) -> PipelineRecord:
    record = await get(nc, name)
    record = record.model_copy(update={"paused": paused, "updated_at": datetime.now(UTC)})
    kv = await bucket(nc)
    await kv.put(name, record.model_dump_json().encode())
    return record
