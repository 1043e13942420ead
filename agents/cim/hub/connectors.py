"""Connectors: plugins that bring information in from outside (a folder, a bucket, ...).

A connector is a plugin of kind "connector" in the `cim.plugins` entry-point group, so a
third party ships one in its own distribution:

    [project.entry-points."cim.plugins"]
    my-feed = "my_pkg.feed:plugin"

`plugin` is a `cim.plugins.Plugin(kind="connector", settings=<pydantic model>,
connector=<factory>)`; the hub calls `connector(settings, ctx)` and awaits its `run()`,
which works until `ctx.stopping` is set (or returns, for a one-shot import). The hub gives every connector the same context: the unit
store (all units go through the one put path), a KV bucket for its progress, and a way
to record a failed item as an event.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError, field_errors
from ..events import Event, EventStore
from ..names import HUB_BUCKET
from ..plugins import Plugin, discover
from ..store.unit_store import UnitStore
from .events import ImportFailed

KIND = "connector"
STATE_BUCKET = HUB_BUCKET


class ConnectorConfig(BaseModel):
    """One entry of the hub's `connectors` list."""

    model_config = ConfigDict(extra="forbid")
    plugin: str = Field(description="the plugin's name, e.g. inbox or s3-import")
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="this instance's name (events, state keys)")
    settings: dict[str, Any] = Field(default_factory=dict)


@dataclass
class ConnectorContext:
    name: str
    units: UnitStore
    events: EventStore
    agent: str
    stopping: asyncio.Event
    log: logging.Logger
    _kv: Any = field(default=None, repr=False)

    async def state(self):
        """The hub's KV bucket for connector progress (keys prefixed with the connector's name)."""
        if self._kv is None:
            self._kv = await self.units.nc.jetstream(timeout=10).key_value(STATE_BUCKET)
        return self._kv

    async def record_failure(self, item: str, reason: str) -> None:
        await self.events.append(Event.of(ImportFailed(item=item[:2000], reason=reason[:2000]), self.name,
                                          agent=self.agent))


@runtime_checkable
class Connector(Protocol):
    async def run(self) -> None: ...


def _builtin() -> dict[str, Plugin]:
    from .inbox import plugin as inbox
    from .s3_import import plugin as s3

    return {inbox.name: inbox, s3.name: s3}


def load() -> tuple[dict[str, Plugin], dict[str, str]]:
    """Every connector plugin: installed entry points, and the built-in ones even when the
    installed metadata predates them (an editable install that was not re-run); and the
    entry points that failed to load (name -> why), reported and skipped."""
    plugins = discover()
    found = {name: p for name, p in plugins.found.items() if p.kind == KIND and p.connector is not None}
    for name, p in _builtin().items():
        found.setdefault(name, p)
    return found, dict(plugins.broken)


def available() -> dict[str, Plugin]:
    return load()[0]


def checked(configs: list[ConnectorConfig], loaded: tuple[dict[str, Plugin], dict[str, str]] | None = None
            ) -> tuple[list[tuple[ConnectorConfig, Plugin, BaseModel]], list[tuple[str, str]]]:
    """Each connector with its plugin and its settings as the plugin's model, and the errors
    (field path, what is wrong): what `cim config check` reports and what the hub refuses."""
    plugins, broken = loaded or load()
    out, errors = [], []
    for i, c in enumerate(configs):
        plugin = plugins.get(c.plugin)
        if plugin is None:
            extra = f" (it failed to load: {broken[c.plugin]})" if c.plugin in broken else ""
            errors.append((f"connectors.{i}.plugin",
                           f"no connector plugin {c.plugin!r}{extra}; installed: {', '.join(sorted(plugins))}"))
            continue
        try:
            settings = plugin.settings.model_validate(c.settings)
        except ValidationError as err:
            errors += field_errors(err, prefix=f"connectors.{i}.settings.")
            continue
        out.append((c, plugin, settings))
    return out, errors


def build(configs: list[ConnectorConfig], make_ctx,
          loaded: tuple[dict[str, Plugin], dict[str, str]] | None = None) -> list[tuple[ConnectorConfig, Connector]]:
    good, errors = checked(configs, loaded)
    if errors:
        raise ConfigError("hub connectors", errors)
    return [(c, plugin.connector(settings, make_ctx(c.name))) for c, plugin, settings in good]
