"""Reading the registry straight from the `CIM_REGISTRY` bucket, without the registry agent.

The CLI and the pipeline engine use these, so discovery and negotiation keep working while
the registry agent is down; the agent adds the live view's history and the events.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from nats.aio.client import Client
from pydantic import ValidationError

from ..errors import NotFound
from ..names import REGISTRY_BUCKET
from ..nats.read import StreamMsg, TooMany, last_per_subject
from ..permissions import NAMES as CAPABILITIES
from .model import AgentRecord, AgentView, Match, Requirement, now_utc
from .query import negotiate as _negotiate
from .query import providers as _providers

log = logging.getLogger("cim.registry")

STREAM = f"KV_{REGISTRY_BUCKET}"
PREFIX = f"$KV.{REGISTRY_BUCKET}."
MAX_AGENTS = 1024  # records of one capability read in one snapshot (the server's multi_last limit)


class AgentNotFound(NotFound):
    code = "agent_not_found"
    wire_fields = ("name",)

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
    """The last message of every key, in one batched direct get (`multi_last`).

    Not `cim.nats.read.read_stream`: that one reads up to the sequence the stream ended at when it
    started, and in this bucket that message may expire before it arrives. No consumer
    either: a reader holds no consumer rights (see `cim.nats.read`).
    """
    # One capability at a time: the server answers at most MAX_AGENTS subjects per request,
    # and an agent that writes too many keys under its own capability spoils only that one.
    out: list[StreamMsg] = []
    for capability in CAPABILITIES:
        try:
            out += await last_per_subject(nc, STREAM, f"{PREFIX}{capability}.>", limit=MAX_AGENTS, timeout=timeout,
                                          what=f"the registry bucket {REGISTRY_BUCKET} ({capability})")
        except TooMany as err:
            log.warning("%s; those agents are not listed", err)
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
