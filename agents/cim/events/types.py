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
M = TypeVar("M", bound=type[BaseModel])


def event_type(name: str) -> Callable[[M], M]:
    """Class decorator: `@event_type("unit.created")` registers the model for that type."""
    if not TYPE_PATTERN.match(name):
        raise InvalidInput("type", f"{name!r} must look like 'aggregate.event' (lower case, one dot)")

    def register(model: M) -> M:
        existing = _registry.get(name)
        if existing is not None and existing is not model:
            raise InvalidInput("type", f"{name!r} is already registered to {existing.__qualname__}")
        _registry[name] = model
        return model

    return register


def model_for(name: str) -> type[BaseModel] | None:
    _load_builtin()
    return _registry.get(name)


def known_types() -> list[str]:
    _load_builtin()
    return sorted(_registry)


_loaded = False


def _load_builtin() -> None:
    """Import every `*_events` module of the package: each registers its models on import.

    A capability adds event types by adding such a module (e.g. `cim/tier_events.py`);
    plugins register theirs with `@event_type` when they are loaded.
    """
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib
    import pkgutil

    import cim

    for info in pkgutil.walk_packages(cim.__path__, "cim."):
        if info.name.rsplit(".", 1)[-1].endswith("_events"):
            importlib.import_module(info.name)
