"""The plugin system: steps and connectors found through the `cim.plugins` entry points.

A plugin is a `Plugin` object named by an entry point in the group `cim.plugins`:

    [project.entry-points."cim.plugins"]
    shout = "my_package.shout:plugin"

It declares its name, version, kind, the capabilities it provides (with versions) and a
pydantic model of the settings it accepts. Discovery never lets one broken plugin take an
agent down: a plugin that fails to import or declares itself wrongly is reported and
skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Literal

from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, JsonValue

from ..errors import CimError, InvalidInput, field_errors
from ..events import Event
from ..store.units import Unit

log = logging.getLogger("cim.plugins")
GROUP = "cim.plugins"
Kind = Literal["step", "connector"]


class NoSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class StepOutput:
    """What a step made: `output` is recorded in the unit's `steps.done` event (provenance,
    and the input of later steps); `events` are its effects on other aggregates (e.g.
    `unit.labeled`), stored just before that record with ids derived from the pipeline, the
    step and the unit, so each effect is applied exactly once however often the step runs."""

    output: dict[str, JsonValue] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)


class StepContext:
    """What a running step may use. Built by the pipeline engine for each unit."""

    def __init__(self, *, unit: Unit, settings: BaseModel, previous: dict[str, dict],
                 read: Callable[[str], Awaitable[bytes]], store_text: Callable[[str], Awaitable[str]],
                 pipeline: str, step: str):
        self.unit = unit
        self.settings = settings
        self.previous = previous  # earlier steps' outputs, by step name
        self._read = read
        self._store_text = store_text
        self.pipeline = pipeline
        self.step = step

    async def content(self) -> bytes:
        """The unit's content (verified against its CID)."""
        return await self._read(self.unit.cid)

    async def read(self, cid: str) -> bytes:
        return await self._read(cid)

    async def store_text(self, text: str) -> str:
        """Keep derived text in the content store; returns its CID."""
        return await self._store_text(text)

    def earlier(self, key: str) -> Any:
        """The most recent earlier step output that has `key` (e.g. 'text_cid')."""
        for output in reversed(list(self.previous.values())):
            if key in output:
                return output[key]
        return None


StepFn = Callable[[StepContext], Awaitable[StepOutput]]


@dataclass(frozen=True)
class Plugin:
    name: str
    version: str
    kind: Kind
    run: StepFn | None = None  # for kind "step"
    provides: dict[str, str] = field(default_factory=dict)
    settings: type[BaseModel] = NoSettings
    description: str = ""
    connector: Any = None  # for kind "connector": the object the hub drives

    def check(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise InvalidInput("name", f"{self.name!r} must be letters, digits, '-' or '_'")
        for what, version in [("version", self.version), *((f"provides.{k}", v) for k, v in self.provides.items())]:
            try:
                Version(version)
            except InvalidVersion:
                raise InvalidInput(what, f"{version!r} is not a version like 1.2.0") from None
        if self.kind == "step" and self.run is None:
            raise InvalidInput("run", "a step plugin needs a run function")
        if not (isinstance(self.settings, type) and issubclass(self.settings, BaseModel)):
            raise InvalidInput("settings", "must be a pydantic model class")

    def parse_settings(self, raw: dict[str, Any] | None) -> BaseModel:
        from pydantic import ValidationError

        try:
            return self.settings.model_validate(raw or {})
        except ValidationError as err:
            field, rule = field_errors(err, prefix="settings.")[0]
            raise InvalidInput(field, f"{self.name}: {rule}") from None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "kind": self.kind, "provides": self.provides,
                "description": self.description, "settings": self.settings.model_json_schema()}


class PluginNotFound(CimError):
    code = "plugin_not_found"


@dataclass
class Plugins:
    found: dict[str, Plugin] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)  # entry point name -> why it was skipped

    def get(self, name: str, kind: Kind = "step") -> Plugin:
        plugin = self.found.get(name)
        if plugin is None or plugin.kind != kind:
            known = ", ".join(sorted(n for n, p in self.found.items() if p.kind == kind)) or "none"
            extra = f" (it failed to load: {self.broken[name]})" if name in self.broken else ""
            raise PluginNotFound(f"no {kind} plugin named {name!r}{extra}; installed: {known}")
        return plugin

    def providers(self) -> dict[str, str]:
        """Every capability the loaded plugins provide, with the highest version."""
        out: dict[str, str] = {}
        for p in self.found.values():
            for cap, version in p.provides.items():
                if cap not in out or Version(version) > Version(out[cap]):
                    out[cap] = version
        return out


def discover() -> Plugins:
    """Load every `cim.plugins` entry point; report and skip the broken ones."""
    result = Plugins()
    for ep in entry_points(group=GROUP):
        try:
            obj = ep.load()
            plugin = obj() if callable(obj) and not isinstance(obj, Plugin) else obj
            if not isinstance(plugin, Plugin):
                raise TypeError(f"{ep.value} is a {type(plugin).__name__}, not a cim.plugins.Plugin")
            plugin.check()
        except Exception as err:  # a third party's bug must not stop the agent
            why = f"{type(err).__name__}: {err}"
            result.broken[ep.name] = why
            log.error("plugin %s (%s) skipped: %s", ep.name, ep.value, why)
            continue
        if plugin.name in result.found:
            result.broken[ep.name] = f"a plugin named {plugin.name!r} is already loaded"
            log.error("plugin %s skipped: duplicate name %s", ep.name, plugin.name)
            continue
        result.found[plugin.name] = plugin
    return result
