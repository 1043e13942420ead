"""Pipeline definitions: JSON or YAML, validated here, stored in the KV bucket CIM_PIPELINES."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import CimError, ConfigError, InvalidInput, field_errors

NAME = r"^[a-z0-9][a-z0-9_-]{0,40}$"
UNIT_CREATED = "cim.evt.unit.*.created"


class StepDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME)
    plugin: str
    settings: dict[str, Any] = Field(default_factory=dict)


class ContextDef(BaseModel):
    """Which units a pipeline is for: any of these labels, any of these sources (globs)."""

    model_config = ConfigDict(extra="forbid")
    labels: list[str] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list)


class PipelineDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME)
    description: str = ""
    trigger: list[str] = Field(default_factory=lambda: [UNIT_CREATED], min_length=1)
    context: ContextDef = Field(default_factory=ContextDef)
    steps: list[StepDef] = Field(min_length=1)
    requires: list[str] = Field(default_factory=list, description="capabilities some live agent must provide first, e.g. 'search>=1'")
    start: Literal["all", "new"] = Field(default="all", description="process existing units too, or only new ones")
    max_attempts: int = Field(default=5, ge=1, le=100, description="tries before a message goes to the dead letters")
    backoff: list[float] = Field(default_factory=lambda: [1.0, 5.0, 15.0, 60.0], description="seconds between tries")
    max_ack_pending: int = Field(default=256, ge=1, description="units in flight at most (back-pressure)")
    ack_wait: float = Field(default=60, gt=0, description="seconds before a unit in flight is redelivered (after a crash)")
    concurrency: int = Field(default=16, ge=1, le=256)

    @field_validator("trigger")
    @classmethod
    def _trigger(cls, v: list[str]) -> list[str]:
        for s in v:
            if not s.startswith("cim.evt."):
                raise ValueError(f"{s!r}: a trigger is an event subject filter under cim.evt.")
        return v

    @model_validator(mode="after")
    def _unique_steps(self) -> PipelineDef:
        names = [s.name for s in self.steps]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"step names must be unique: {', '.join(dupes)}")
        return self

    @property
    def consumer(self) -> str:
        return f"pipeline-{self.name}"


def step_key(pipeline: str, step: str, cid: str) -> str:
    """One step applied to one unit: the idempotency key its effects' ids are made of."""
    return f"{pipeline}--{step}--{cid}"


def run_key(pipeline: str, cid: str) -> str:
    """The aggregate id of one unit through one pipeline: its `steps.done` happens once."""
    return f"{pipeline}--{cid}"


def default_pipelines() -> list[PipelineDef]:
    return [PipelineDef(
        name="default",
        description="classify, extract text, index for search, relate and summarise every new unit",
        steps=[StepDef(name=n, plugin=n) for n in ("classify", "extract", "index", "relate", "summarize")],
    )]


def _errors(err: ValidationError) -> list[tuple[str, str]]:
    return field_errors(err)


def parse(data: Any, source: str) -> list[PipelineDef]:
    """One pipeline, a list of them, or {"pipelines": [...]}, validated."""
    if isinstance(data, dict) and "pipelines" in data:
        data = data["pipelines"]
    items = data if isinstance(data, list) else [data]
    out, problems = [], []
    for i, item in enumerate(items):
        try:
            out.append(PipelineDef.model_validate(item))
        except ValidationError as err:
            prefix = f"{i}." if len(items) > 1 else ""
            problems += [(prefix + path, msg) for path, msg in _errors(err)]
    if problems:
        raise ConfigError(source, problems)
    return out


# A pipeline file is small; these bound what a hostile one can cost before it is refused.
MAX_FILE_BYTES = 1024 * 1024
MAX_YAML_ALIASES = 16  # each `*ref` re-uses a node: a few levels of them multiply a file a billion-fold


def _yaml(text: str, source: str) -> Any:
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_YAML_ALIASES:
                    raise ConfigError(source, [("(file)", f"more than {MAX_YAML_ALIASES} YAML aliases (*name): refused; "
                                                          "write the values out")])
            return super().compose_node(parent, index)

    try:
        return yaml.load(text, Loader=BoundedLoader)
    except yaml.YAMLError as err:
        raise ConfigError(source, [("(file)", f"not YAML: {err}")]) from None


def load(path: Path) -> list[PipelineDef]:
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(str(path), [("(file)", f"cannot read it: {err.strerror}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(str(path), [("(file)", f"{len(raw)} bytes; a pipeline file may have {MAX_FILE_BYTES} at most")])
    try:
        text = raw.decode()
    except UnicodeDecodeError as err:
        raise ConfigError(str(path), [("(file)", f"not UTF-8 text (byte {err.start})")]) from None
    try:
        if str(path).endswith((".yaml", ".yml")):
            data = _yaml(text, str(path))
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                raise ConfigError(str(path), [(f"line {err.lineno} column {err.colno}", f"not JSON: {err.msg}")]) from None
        return parse(data, str(path))
    except RecursionError:
        raise ConfigError(str(path), [("(file)", "nested too deep")]) from None


def check_plugins(pipelines: list[PipelineDef], plugins: Any, source: str) -> None:
    """Every step names an installed step plugin and settings it accepts."""
    problems = []
    for i, p in enumerate(pipelines):
        prefix = f"{i}." if len(pipelines) > 1 else ""
        for j, step in enumerate(p.steps):
            try:
                plugin = plugins.get(step.plugin)
            except CimError as err:
                problems.append((f"{prefix}steps.{j}.plugin", str(err)))
                continue
            try:
                plugin.parse_settings(step.settings)
            except InvalidInput as err:
                problems.append((f"{prefix}steps.{j}.{err.field}", err.rule))
    if problems:
        raise ConfigError(source, problems)
