"""Where pipelines live at run time: the KV bucket CIM_PIPELINES, one key per pipeline.

The agent watches the bucket, so `cim pipelines apply` (or a changed step setting) takes
effect without a restart, and pause/resume is a flag in the same record.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError
from pydantic import BaseModel

from ..errors import JetStreamUnavailable, NotFound
from .model import PipelineDef

BUCKET = "CIM_PIPELINES"


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
    kv = await bucket(nc)
    try:
        keys = await kv.keys()
    except NotFoundError:
        return []
    except Exception as err:  # nats-py raises NoKeysError (name varies by version) for an empty bucket
        if "no keys" in str(err).lower() or type(err).__name__ == "NoKeysError":
            return []
        raise
    out = []
    for k in sorted(keys):
        try:
            out.append(await get(nc, k))
        except NotFound:
            continue
    return out


async def set_paused(nc: Client, name: str, paused: bool) -> PipelineRecord:
    record = await get(nc, name)
    record = record.model_copy(update={"paused": paused, "updated_at": datetime.now(UTC)})
    kv = await bucket(nc)
    await kv.put(name, record.model_dump_json().encode())
    return record
