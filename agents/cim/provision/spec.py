"""The declarative spec of every stream, consumer and bucket CIM needs: what each capability
declares (its `Capability.provision`) and what an operator adds in a JSON file.

The NixOS modules and `cim up` render this same JSON; cim.provision.apply applies it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError, field_errors
from ..names import CONTENT_BUCKET, DLQ_STREAM, EVENTS_STREAM, REGISTRY_BUCKET

NS = 1_000_000_000

_NAME = r"^[A-Za-z0-9_-]+$"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamSpec(_Spec):
    name: str = Field(pattern=_NAME)
    subjects: list[str] = Field(min_length=1)
    description: str = ""
    replicas: int | None = Field(default=None, ge=1, le=5)
    storage: Literal["file", "memory"] = "file"
    retention: Literal["limits", "interest", "workqueue"] = "limits"
    discard: Literal["old", "new"] = "old"
    max_age: float = Field(default=0, ge=0, description="seconds; 0 keeps for ever")
    max_bytes: int = Field(default=-1, ge=-1)
    max_msgs: int = Field(default=-1, ge=-1)
    max_msg_size: int = Field(default=-1, ge=-1)
    duplicate_window: float = Field(default=120, ge=0, description="seconds of Nats-Msg-Id memory")
    allow_atomic: bool = False
    deny_delete: bool = False
    deny_purge: bool = False


class ConsumerSpec(_Spec):
    stream: str = Field(pattern=_NAME)
    name: str = Field(pattern=_NAME)
    description: str = ""
    filter_subjects: list[str] = Field(default_factory=list)
    deliver_policy: Literal["all", "new", "last", "last_per_subject"] = "all"
    ack_wait: float = Field(default=30, gt=0)
    max_deliver: int = Field(default=-1, ge=-1)
    max_ack_pending: int = Field(default=1000, ge=-1)
    backoff: list[float] = Field(default_factory=list)


class KvSpec(_Spec):
    bucket: str = Field(pattern=_NAME)
    description: str = ""
    history: int = Field(default=1, ge=1, le=64)
    ttl: float = Field(default=0, ge=0, description="seconds; 0 keeps for ever")
    max_bytes: int = Field(default=-1, ge=-1)
    replicas: int | None = Field(default=None, ge=1, le=5)
    storage: Literal["file", "memory"] = "file"


# The largest unit the content bucket takes unless the spec says otherwise. Kept in the
# bucket's own metadata (MAX_UNIT_SIZE_KEY), where every writer reads it: one limit, on the
# server, for the CLI, the hub, the dashboard and the agents alike.
DEFAULT_MAX_UNIT_SIZE = 1024**3  # 1 GiB; JetStream holds it, colder tiers take larger loads later
MAX_UNIT_SIZE_KEY = "cim_max_unit_size"


class ObjectSpec(_Spec):
    bucket: str = Field(pattern=_NAME)
    description: str = ""
    max_bytes: int = Field(default=-1, ge=-1)
    max_unit_size: int | None = Field(default=None, gt=0, description="largest object a writer may store, in bytes "
                                      "(kept in the bucket's metadata, read by every writer)")
    replicas: int | None = Field(default=None, ge=1, le=5)
    storage: Literal["file", "memory"] = "file"


class ProvisionSpec(_Spec):
    replicas: int = Field(default=1, ge=1, le=5, description="for every resource that sets none")
    include_core: bool = Field(default=True, description="add the streams and buckets CIM itself needs")
    streams: list[StreamSpec] = Field(default_factory=list)
    consumers: list[ConsumerSpec] = Field(default_factory=list)
    kv: list[KvSpec] = Field(default_factory=list)
    objects: list[ObjectSpec] = Field(default_factory=list)

    def resolved(self, core: ProvisionSpec) -> ProvisionSpec:
        """The spec with the core resources added. A user entry of a core resource's name is
        laid over the core one: the fields it sets win, the others (the event store's guards
        among them) stay the core's."""
        if not self.include_core:
            return self
        def merge(mine: list, theirs: list, key: str) -> list:
            by_name = {getattr(r, key): r for r in mine}
            out = []
            for r in theirs:
                user = by_name.pop(getattr(r, key), None)
                out.append(r if user is None else r.model_copy(update={f: getattr(user, f) for f in user.model_fields_set}))
            return out + list(by_name.values())

        return self.model_copy(
            update={
                "include_core": False,
                "streams": merge(self.streams, core.streams, "name"),
                "kv": merge(self.kv, core.kv, "bucket"),
                "objects": merge(self.objects, core.objects, "bucket"),
                "consumers": merge(self.consumers, core.consumers, "name"),
            }
        )


def base_spec() -> ProvisionSpec:
    """What CIM itself needs, whatever runs: the event store, dead letters, content, registry."""
    return ProvisionSpec(
        include_core=False,
        streams=[
            StreamSpec(
                name=EVENTS_STREAM,
                subjects=["cim.evt.>"],
                description="CIM event store: cim.evt.<aggregate>.<id>.<event>",
                allow_atomic=True,
                deny_delete=True,
                deny_purge=True,
            ),
            StreamSpec(
                name=DLQ_STREAM,
                subjects=["cim.dlq.>"],
                description="CIM dead letters, with the reason and the original headers",
            ),
        ],
        objects=[ObjectSpec(bucket=CONTENT_BUCKET, description="CIM unit content, keyed by CID",
                            max_unit_size=DEFAULT_MAX_UNIT_SIZE)],
        kv=[KvSpec(bucket=REGISTRY_BUCKET, ttl=30, description="CIM agents and their capabilities (TTL heartbeats)")],
    )


def load_spec(path: Path) -> ProvisionSpec:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise ConfigError(str(path), [("(file)", f"cannot read it: {err.strerror}")]) from None
    except UnicodeDecodeError as err:
        raise ConfigError(str(path), [("(file)", f"not UTF-8 text (byte {err.start})")]) from None
    except json.JSONDecodeError as err:
        raise ConfigError(str(path), [(f"line {err.lineno} column {err.colno}", f"not JSON: {err.msg}")]) from None
    try:
        return ProvisionSpec.model_validate(data)
    except ValidationError as err:
        raise ConfigError(str(path), field_errors(err)) from None
