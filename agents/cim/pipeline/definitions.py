"""Where pipelines live at run time: the KV bucket CIM_PIPELINES, one key per pipeline.

The agent watches the bucket, so `cim pipelines apply` (or a changed step setting) takes
effect without a restart, and pause/resume is a flag in the same record.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.js.errors import (
    BucketNotFoundError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from pydantic import BaseModel, ValidationError

from ..errors import JetStreamUnavailable, NotFound
from ..events.envelope import decode_body
from ..names import PIPELINES_BUCKET
from ..nats.read import last_per_subject
from .model import PipelineDef

log = logging.getLogger("cim.pipeline")
BUCKET = PIPELINES_BUCKET
MAX_PIPELINES = 1024  # the server's multi_last limit
WRITE_ATTEMPTS = 10  # reads and writes of one record before a writer gives up to others


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


async def _change(nc: Client, name: str,
                  change: Callable[[PipelineRecord | None], PipelineRecord | None]) -> PipelineRecord | None:
    """Read one pipeline's record, `change` it (None: leave it) and write it back as one step:
    the write names the revision it read, so two writers (an apply and a pause, an agent's
    restart and an apply) never lose one another's change; the later one reads again and
    decides again. The record as it stands after."""
    kv = await bucket(nc)
    for _ in range(WRITE_ATTEMPTS):
        try:
            entry = await kv.get(name)
            revision = entry.revision or 0
            current = _record(name, entry.value)
        except KeyDeletedError as err:  # removed: written again after its tombstone
            revision, current = (err.entry.revision or 0) if err.entry else 0, None
        except (KeyNotFoundError, NotFoundError):
            revision, current = 0, None
        new = change(current)
        if new is None:
            return current
        try:
            await kv.update(name, new.model_dump_json().encode(), last=revision)
            return new
        except KeyWrongLastSequenceError:
            continue  # changed meanwhile: read again
    raise JetStreamUnavailable(f"pipeline {name!r} changed {WRITE_ATTEMPTS} times while it was being written; try again")


def _record(name: str, value: bytes | None) -> PipelineRecord | None:
    """The record a value holds; None for none, and for one that is not a pipeline record
    (written by hand, or by a version that no longer reads the same): logged, and written
    over by the change, so `cim pipelines apply` repairs it."""
    if not value:
        return None
    try:
        return PipelineRecord.model_validate(json.loads(value))
    except (ValueError, ValidationError) as err:
        log.warning("the pipeline record %s is unreadable (%s); it is taken as absent", name, str(err).splitlines()[0])
        return None


async def put(nc: Client, definition: PipelineDef, *, source: str = "cli", keep_paused: bool = True) -> PipelineRecord:
    def applied(current: PipelineRecord | None) -> PipelineRecord:
        paused = keep_paused and current is not None and current.paused
        return PipelineRecord(definition=definition, paused=paused, source=source, updated_at=datetime.now(UTC))

    record = await _change(nc, definition.name, applied)
    assert record is not None  # `applied` always writes
    return record


async def install_from_config(nc: Client, definition: PipelineDef) -> PipelineRecord:
    """Install a pipeline of an agent's config, unless one of its name was applied with
    `cim pipelines apply` (an operator's pipeline is never reverted by a restart) or it is
    installed already; the record as it stands after (its `source` says whose it is)."""

    def installed(current: PipelineRecord | None) -> PipelineRecord | None:
        if current is not None and (current.source != "config" or current.definition == definition):
            return None
        return PipelineRecord(definition=definition, paused=current is not None and current.paused, source="config",
                              updated_at=datetime.now(UTC))

    record = await _change(nc, definition.name, installed)
    assert record is not None  # `installed` writes whenever there is none
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
    def flagged(current: PipelineRecord | None) -> PipelineRecord:
        if current is None:
            raise NotFound(f"no pipeline named {name!r}; `cim pipelines ls` lists them")
        return current.model_copy(update={"paused": paused, "updated_at": datetime.now(UTC)})

    record = await _change(nc, name, flagged)
    assert record is not None  # `flagged` always writes or raises
    return record
