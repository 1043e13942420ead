"""The one list of capabilities, by explicit import: each package exports its `CAPABILITY`.

The order is capabilities.json's (the permissions contract the NixOS modules read, kept in
cim.permissions); a test holds the two lists equal. Importing this module registers every
capability's event models (each package imports its `events` module).
"""

from __future__ import annotations

from .capability import Capability
from .errors import ConfigError
from .hub import CAPABILITY as HUB
from .pipeline import CAPABILITY as PIPELINE
from .provision.spec import ProvisionSpec, base_spec
from .registry import CAPABILITY as REGISTRY
from .store import CAPABILITY as STORE
from .tier import CAPABILITY as TIER
from .ui import CAPABILITY as UI

ALL: tuple[Capability, ...] = (STORE, TIER, REGISTRY, PIPELINE, HUB, UI)
NAMES: tuple[str, ...] = tuple(c.name for c in ALL)
_BY_NAME = {c.name: c for c in ALL}


def get(name: str) -> Capability:
    """The capability of that name, or a ConfigError naming the ones there are."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError("config", [("capability", f"unknown capability {name!r}; choose one of {', '.join(NAMES)}")]) from None


def core_spec() -> ProvisionSpec:
    """What CIM needs: the base (events, dead letters, content, registry) plus what each
    capability declares, so one `cim provision` (and the NixOS activation) covers all."""
    spec = base_spec()
    for c in ALL:
        part = c.provision
        spec = spec.model_copy(update={
            "streams": spec.streams + part.streams,
            "consumers": spec.consumers + part.consumers,
            "kv": spec.kv + part.kv,
            "objects": spec.objects + part.objects,
        })
    return spec
