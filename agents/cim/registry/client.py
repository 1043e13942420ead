"""Reading the registry straight from the `CIM_REGISTRY` bucket, without the registry agent.

The CLI and the pipeline engine use these, so discovery and negotiation keep working while
the registry agent is down; the agent adds the live view's history and the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Iterable

from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import ValidationError

from ..errors import JetStreamUnavailable, NotFound
from ..jsread import NS, StreamMsg, _parse_ack_subject
from ..provision import REGISTRY_BUCKET
from .model import AgentRecord, AgentView, Match, Requirement, now_utc
from .query import negotiate as _negotiate
from .query import providers as _providers

log = logging.getLogger("cim.registry")

STREAM = f"KV_{REGISTRY_BUCKET}"
PREFIX = f"$KV.{REGISTRY_BUCKET}."


class AgentNotFound(NotFound):
    def __init__(self, name: str):
        self.name = name
        super().__init__(f"no agent {name!r} is announced in the registry (list them with `cim agents ls`)")


def is_removal(msg: StreamMsg) -> bool:
    """A KV delete or purge marker: the agent stopped cleanly."""
    return msg.headers.get("KV-Operation") in ("DEL", "PURGE")


def parse_record(msg: StreamMsg) -> AgentRecord | None:
    """The record in one bucket message; None (logged) for one that is not a record."""
    try:
        return AgentRecord.model_validate(json.loads(msg.data))
    except (ValueError, ValidationError) as err:
        log.warning("ignoring %s in the registry: not an agent record (%s)", msg.subject, str(err).splitlines()[0])
        return None


async def snapshot(nc: Client, *, timeout: float = 5.0) -> list[StreamMsg]:
    """The last message of every key, read once through an ephemeral consumer.

    Not `jsread.read_stream`: that one reads up to the sequence the stream ended at when it
    started, and in this bucket that message may expire before it arrives. This asks for
    what is pending and takes what the server still has (`no_wait`).
    """
    name = f"cim_{uuid.uuid4().hex[:16]}"
    config = {
        "name": name, "deliver_policy": "last_per_subject", "filter_subject": PREFIX + ">",
        "ack_policy": "none", "replay_policy": "instant", "mem_storage": True, "num_replicas": 1,
        "inactive_threshold": int(max(timeout, 5) * NS),
    }
    try:
        reply = await nc.request(
            f"$JS.API.CONSUMER.CREATE.{STREAM}.{name}", json.dumps({"stream_name": STREAM, "config": config}).encode(),
            timeout=timeout,
        )
    except Exception as err:
        raise JetStreamUnavailable(f"the registry bucket {REGISTRY_BUCKET} did not answer: {err or type(err).__name__}") from err
    resp = json.loads(reply.data)
    if "error" in resp:
        if resp["error"].get("err_code") == 10059:
            raise JetStreamUnavailable(f"there is no registry bucket {REGISTRY_BUCKET}; run `cim provision` (or `cim up`)")
        raise JetStreamUnavailable(f"cannot read the registry bucket: {resp['error'].get('description')}")
    out: list[StreamMsg] = []
    try:
        if not resp.get("num_pending"):
            return out
        inbox = nc.new_inbox()
        done = asyncio.Event()

        async def on_msg(msg: Msg) -> None:
            status = (msg.headers or {}).get("Status")
            if status:
                if status != "100":  # 404/408: nothing more now
                    done.set()
                return
            if msg.reply and msg.reply.startswith("$JS.ACK."):
                sseq, ts, pending = _parse_ack_subject(msg.reply)
                out.append(StreamMsg(msg.subject, sseq, msg.data, dict(msg.headers or {}), ts, pending))
                if pending == 0:
                    done.set()

        sub = await nc.subscribe(inbox, cb=on_msg)
        try:
            body = {"batch": int(resp["num_pending"]) + 16, "no_wait": True, "expires": int(timeout * NS)}
            await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{name}", json.dumps(body).encode(), reply=inbox)
            try:
                await asyncio.wait_for(done.wait(), timeout)
            except TimeoutError:
                raise JetStreamUnavailable(f"the registry bucket {REGISTRY_BUCKET} did not deliver within {timeout:g}s") from None
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
    finally:
        with contextlib.suppress(Exception):
            await nc.publish(f"$JS.API.CONSUMER.DELETE.{STREAM}.{name}", b"")
    return out


async def read_records(nc: Client, *, timeout: float = 5.0) -> list[AgentRecord]:
    """Every record in the bucket now (expired ones are gone from it, stopped ones deleted)."""
    records = [parse_record(m) for m in await snapshot(nc, timeout=timeout) if not is_removal(m)]
    return sorted((r for r in records if r is not None), key=lambda r: (r.name, r.started_at))


async def list_agents(nc: Client, capability: str | None = None, *, timeout: float = 5.0) -> list[AgentView]:
    """Announced agents, `up` or `stale` by the age of their last heartbeat; with
    `capability`, only those providing it."""
    now = now_utc()
    return [
        AgentView(record=r, state=r.state(now))
        for r in await read_records(nc, timeout=timeout)
        if capability is None or capability in r.capabilities
    ]


def select(views: Iterable[AgentView], name: str) -> list[AgentView]:
    """The instances `name` designates: an agent name, an instance id or a key, else AgentNotFound."""
    views = list(views)
    picked = [v for v in views if name in (v.record.name, v.record.id, v.record.key)]
    if not picked:
        picked = [v for v in views if len(name) >= 4 and v.record.id.startswith(name)]
    if not picked:
        raise AgentNotFound(name)
    return picked


async def show_agent(nc: Client, name: str, *, timeout: float = 5.0) -> list[AgentView]:
    return select(await list_agents(nc, timeout=timeout), name)


def _requirement(r: Requirement | str) -> Requirement:
    return r if isinstance(r, Requirement) else Requirement.parse(r)


async def find_providers(
    nc: Client, capability: str, spec: str = "", *, timeout: float = 5.0
) -> list[tuple[AgentView, str]]:
    """Live agents providing `capability` in the PEP 440 range `spec` (e.g. ">=1.2,<2"),
    best first, each with the version it provides."""
    req = Requirement.parse(f"{capability}{spec}") if spec else Requirement.parse(capability)
    return _providers(await list_agents(nc, timeout=timeout), req)


async def negotiate(nc: Client, requirements: Iterable[Requirement | str], *, timeout: float = 5.0) -> list[Match]:
    """A live provider for each requirement (`"search>=2"` or a Requirement), in order;
    NoProvider names every unmet one: "nothing provides search >= 2 (available: ...)"."""
    reqs = [_requirement(r) for r in requirements]
    return _negotiate(await list_agents(nc, timeout=timeout), reqs)
