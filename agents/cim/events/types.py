"""The registry of event types: a type name like `unit.created` maps to a pydantic model.

Appending a type nobody registered is refused (it is almost always a typo); reading one
that a newer producer wrote is not: it is surfaced as an unknown event, never dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel

from ..errors import InvalidInput

TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_-]*\.[a-z][a-z0-9_-]*$")

_registry: dict[str, type[BaseModel]] = {}
_names: dict[type[BaseModel], str] = {}
M = TypeVar("M", bound=type[BaseModel])


def event_type(name: str) -> Callable[[M], M]:
    """Class decorator: `@event_type("unit.created")` registers the model for that type."""
    if not TYPE_PATTERN.fullmatch(name):
        raise InvalidInput("type", f"{name!r} must look like 'aggregate.event' (lower case, one dot)")

    def register(model: M) -> M:
        existing = _registry.get(name)
        if existing is not None and existing is not model:
            raise InvalidInput("type", f"{name!r} is already registered to {existing.__qualname__}")
        _registry[name] = model
        _names[model] = name
        return model

    return register


def type_of(model: type[BaseModel]) -> str:
    """The event type a model is registered for (`UnitLabeled` -> `unit.labeled`)."""
    try:
        return _names[model]
    except KeyError:
        raise InvalidInput("data", f"{model.__qualname__} is not a registered event model (decorate it with @event_type)") from None


def model_for(name: str) -> type[BaseModel] | None:
    _load_builtin()
    return _registry.get(name)


def known_types() -> list[str]:
    _load_builtin()
    return sorted(_registry)


def _load_builtin() -> None:
    """Register every capability's event models: each capability package imports its
    `events` module, and cim.capabilities lists the packages. The one import from above
    this layer, made on first lookup: the models live with their capability, and the
    registry must know them all before it refuses a type as unknown. Plugins register
    theirs with `@event_type` when they are loaded. Once: lookups run for every event read."""
    global _loaded
    if _loaded:
        return
    from .. import capabilities  # noqa: F401

    _loaded = True


_loaded = False
