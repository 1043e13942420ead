"""Applying a provisioning spec, idempotently.

Resources are created and updated through the JetStream JSON API directly (not nats-py's
dataclasses) so every server field we set is under our control whatever nats-py version is
installed. The core resources every capability declares are laid under the spec given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client

from ..capabilities import core_spec
from ..errors import ProvisionError
from ..names import EVENTS_STREAM
from ..nats.api import JsError, api, error_code
from .spec import MAX_UNIT_SIZE_KEY, NS, ConsumerSpec, KvSpec, ObjectSpec, ProvisionSpec, StreamSpec

# --- rendering specs into JetStream API configs --------------------------------------------


def stream_config(s: StreamSpec, replicas: int) -> dict[str, Any]:
    return {
        "name": s.name,
        "subjects": s.subjects,
        "description": s.description,
        "retention": s.retention,
        "storage": s.storage,
        "discard": s.discard,
        "num_replicas": s.replicas or replicas,
        "max_age": int(s.max_age * NS),
        "max_bytes": s.max_bytes,
        "max_msgs": s.max_msgs,
        "max_msg_size": s.max_msg_size,
        # The server refuses a de-duplication window longer than the retention.
        "duplicate_window": int(min(s.duplicate_window, s.max_age or s.duplicate_window) * NS),
        "allow_atomic": s.allow_atomic,
        "deny_delete": s.deny_delete,
        "deny_purge": s.deny_purge,
        "allow_direct": True,
    }


def kv_stream_config(k: KvSpec, replicas: int) -> dict[str, Any]:
    # Mirrors the layout nats.go/nats.py use for a KV bucket, so their KV clients read it.
    ttl = int(k.ttl * NS)
    return {
        "name": f"KV_{k.bucket}",
        "subjects": [f"$KV.{k.bucket}.>"],
        "description": k.description,
        "retention": "limits",
        "storage": k.storage,
        "discard": "new",
        "num_replicas": k.replicas or replicas,
        "max_age": ttl,
        "max_bytes": k.max_bytes,
        "max_msgs_per_subject": k.history,
        "duplicate_window": min(ttl, 120 * NS) if ttl else 120 * NS,
        # No rollups: a `Nats-Rollup: all` from anyone who may write one key would empty the
        # whole bucket (CIM deletes keys with DEL markers, never purges them).
        "allow_rollup_hdrs": False,
        "deny_delete": True,
        "allow_direct": True,
    }


def object_stream_config(o: ObjectSpec, replicas: int) -> dict[str, Any]:
    # Mirrors nats.go/nats.py's object store layout, so their object clients read it; but
    # without rollups and message deletes: a writer's credential may add chunks and index
    # entries, never take one away (only the tier agent may purge). cim.store.content writes
    # without rollups; nats-py's own `put` and `delete` would be refused.
    cfg: dict[str, Any] = {
        "name": f"OBJ_{o.bucket}",
        "subjects": [f"$O.{o.bucket}.C.>", f"$O.{o.bucket}.M.>"],
        "description": o.description,
        "retention": "limits",
        "storage": o.storage,
        "discard": "new",
        "num_replicas": o.replicas or replicas,
        "max_bytes": o.max_bytes,
        "allow_rollup_hdrs": False,
        "deny_delete": True,
        "allow_direct": True,
    }
    if o.max_unit_size is not None:
        cfg["metadata"] = {MAX_UNIT_SIZE_KEY: str(o.max_unit_size)}
    return cfg


def consumer_config(c: ConsumerSpec) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "durable_name": c.name,
        "name": c.name,
        "description": c.description,
        "deliver_policy": c.deliver_policy,
        "ack_policy": "explicit",
        "ack_wait": int(c.ack_wait * NS),
        "max_deliver": c.max_deliver,
        "max_ack_pending": c.max_ack_pending,
        "replay_policy": "instant",
    }
    if len(c.filter_subjects) == 1:
        cfg["filter_subject"] = c.filter_subjects[0]
    elif c.filter_subjects:
        cfg["filter_subjects"] = c.filter_subjects
    if c.backoff:
        cfg["backoff"] = [int(b * NS) for b in c.backoff]
    return cfg


# The event store keeps every event for ever and no one may delete or purge one: a spec may
# not give it a retention limit nor take a guard away (`cim provision` refuses, and says why).
_GUARDS = {"allow_atomic": True, "deny_delete": True, "deny_purge": True}
_NO_LIMITS = {"max_age": 0, "max_bytes": -1, "max_msgs": -1}


def check_event_store(s: StreamSpec) -> None:
    """Refuse a spec for CIM_EVENTS that could lose events."""
    if s.name != EVENTS_STREAM:
        return
    problems = [
        f"{key} = {getattr(s, key)!r} would let the server delete events"
        for key, none in _NO_LIMITS.items()
        if getattr(s, key) != none
    ] + [f"{key} = false would let events be {'deleted or purged' if key != 'allow_atomic' else 'appended without their batch guarantee'}"
         for key, on in _GUARDS.items() if getattr(s, key) != on]
    if problems:
        raise ProvisionError(
            f"refusing to provision stream {EVENTS_STREAM}: " + "; ".join(problems)
            + ". The event store takes no retention limits and keeps its guards: remove these keys from its entry in the spec."
        )


# Fields the server refuses to change on update: a difference there is drift to report.
_IMMUTABLE_STREAM = {"storage", "retention"}
_IMMUTABLE_CONSUMER = {"deliver_policy"}


@dataclass
class Change:
    kind: str  # stream | kv | object | consumer
    name: str
    action: str  # created | updated | unchanged | drift | would-create | would-update
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def describe(self) -> str:
        diffs = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in self.fields.items())
        return f"{self.kind} {self.name}: {self.action}" + (f" ({diffs})" if diffs else "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "action": self.action,
            "fields": {k: {"current": old, "wanted": new} for k, (old, new) in self.fields.items()},
        }


def _diff(current: dict[str, Any], wanted: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    out = {}
    for key, value in wanted.items():
        have = current.get(key)
        if have is None and value in (False, "", [], 0):
            continue  # the server leaves out fields at their zero value
        if key == "filter_subjects" and have is None and "filter_subject" in current:
            have = [current["filter_subject"]]
        if key == "metadata":  # the server adds keys of its own (`_nats.*`): compare ours
            have = {k: (have or {}).get(k) for k in value}
        if have != value:
            out[key] = (have, value)
    return out


async def _api(nc: Client, subject: str, body: dict[str, Any] | None = None, timeout: float = 10.0) -> dict[str, Any]:
    try:
        return await api(nc, subject, body, timeout=timeout)
    except Exception as err:
        raise ProvisionError(
            f"JetStream did not answer {subject}: {err or type(err).__name__}. "
            "Is JetStream enabled on the server, and may this user call the JetStream API?"
        ) from err


def _api_error(resp: dict[str, Any]) -> dict[str, Any] | None:
    return resp.get("error")


class Provisioner:
    def __init__(self, nc: Client, *, dry_run: bool = False, timeout: float = 10.0):
        self.nc = nc
        self.dry_run = dry_run
        self.timeout = timeout

    async def apply(self, spec: ProvisionSpec) -> list[Change]:
        spec = spec.resolved(core_spec())
        for s in spec.streams:
            check_event_store(s)
        changes: list[Change] = []
        for s in spec.streams:
            changes.append(await self._stream("stream", s.name, stream_config(s, spec.replicas)))
        for k in spec.kv:
            changes.append(await self._stream("kv", k.bucket, kv_stream_config(k, spec.replicas)))
        for o in spec.objects:
            changes.append(await self._stream("object", o.bucket, object_stream_config(o, spec.replicas)))
        for c in spec.consumers:
            changes.append(await self._consumer(c))
        return changes

    async def _stream(self, kind: str, name: str, wanted: dict[str, Any]) -> Change:
        stream = wanted["name"]
        info = await _api(self.nc, f"STREAM.INFO.{stream}", timeout=self.timeout)
        if error_code(info) == JsError.STREAM_NOT_FOUND:
            if self.dry_run:
                return Change(kind, name, "would-create")
            resp = await _api(self.nc, f"STREAM.CREATE.{stream}", wanted, timeout=self.timeout)
            self._raise(resp, f"create {kind} {name}")
            return Change(kind, name, "created")
        self._raise(info, f"read {kind} {name}")
        diff = _diff(info["config"], wanted)
        if not diff:
            return Change(kind, name, "unchanged")
        if set(diff) & _IMMUTABLE_STREAM:
            return Change(kind, name, "drift", diff)
        if self.dry_run:
            return Change(kind, name, "would-update", diff)
        merged = {**info["config"], **wanted}
        if "metadata" in wanted:  # ours laid over what is there (an operator's keys, the server's)
            merged["metadata"] = {**(info["config"].get("metadata") or {}), **wanted["metadata"]}
        resp = await _api(self.nc, f"STREAM.UPDATE.{stream}", merged, timeout=self.timeout)
        self._raise(resp, f"update {kind} {name}")
        return Change(kind, name, "updated", diff)

    async def _consumer(self, c: ConsumerSpec) -> Change:
        wanted = consumer_config(c)
        info = await _api(self.nc, f"CONSUMER.INFO.{c.stream}.{c.name}", timeout=self.timeout)
        err = _api_error(info)
        exists = not err
        if err and error_code(info) != JsError.CONSUMER_NOT_FOUND:
            self._raise(info, f"read consumer {c.stream}/{c.name}")
        diff = _diff(info["config"], wanted) if exists else {}
        diff.pop("name", None)
        if exists and not diff:
            return Change("consumer", f"{c.stream}/{c.name}", "unchanged")
        if exists and set(diff) & _IMMUTABLE_CONSUMER:
            return Change("consumer", f"{c.stream}/{c.name}", "drift", diff)
        if self.dry_run:
            return Change("consumer", f"{c.stream}/{c.name}", "would-update" if exists else "would-create", diff)
        action = "update" if exists else "create"
        resp = await _api(
            self.nc,
            f"CONSUMER.CREATE.{c.stream}.{c.name}",
            {"stream_name": c.stream, "config": wanted, "action": action},
            timeout=self.timeout,
        )
        self._raise(resp, f"{action} consumer {c.stream}/{c.name}")
        return Change("consumer", f"{c.stream}/{c.name}", "updated" if exists else "created", diff)

    @staticmethod
    def _raise(resp: dict[str, Any], what: str) -> None:
        err = _api_error(resp)
        if err:
            raise ProvisionError(
                f"could not {what}: {err.get('description', err)} (JetStream error {err.get('err_code')})"
            )


async def provision(nc: Client, spec: ProvisionSpec, *, dry_run: bool = False) -> list[Change]:
    return await Provisioner(nc, dry_run=dry_run).apply(spec)
