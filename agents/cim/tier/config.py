"""The tier agent's settings: tiers, policies, backup; the bucket it needs, and the tiers `cim up` gives it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..capability import AgentConfig
from ..names import TIER_ACCESS_BUCKET
from ..provision.spec import KvSpec, ProvisionSpec
from ..store.unit_fold import HOT
from .events import TIER_NAME
from .policies import Policy
from .urls import Duration, TierSpec

ACCESS_BUCKET = TIER_ACCESS_BUCKET


class BackupSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tier: str = Field(pattern=TIER_NAME, description="the archive tier: every unit is copied there, events exported")
    interval: Duration = Field(default=60, gt=0, description="seconds between exports")
    chunk_events: int = Field(default=5000, gt=0, le=100_000, description="events per exported chunk")


class Config(AgentConfig):
    capability: Literal["tier"] = "tier"
    tiers: list[TierSpec] = Field(default_factory=list, description="the colder tiers, hot to cold; `hot` is the content bucket")
    policies: list[Policy] = Field(default_factory=list)
    migrate_interval: Duration = Field(default=300, gt=0, description="seconds between policy runs")
    concurrency: int = Field(default=4, ge=1, le=64, description="units moved at once")
    read_retry_for: Duration = Field(default=10, ge=0, description="seconds a read or move retries a tier that is down")
    promote_on_read: bool = Field(default=False, description="copy a unit back to the hot tier when it is read")
    promote_hold: Duration = Field(default=86400, ge=0, description=(
        "a unit brought back to the hot tier (promoted on read, or `cim tier restore`) stays there this long "
        "after its last read before a move policy takes it out again"))
    backup: BackupSettings | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        names = [HOT] + [t.name for t in self.tiers]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"tier names must be unique (and {HOT!r} is the content bucket): {sorted(dupes)}")
        for p in self.policies:
            for t in (p.from_tier, p.to_tier):
                if t is not None and t not in names:
                    raise ValueError(f"policy {p.name!r} names tier {t!r}; configured tiers: {', '.join(names)}")
        if self.backup and self.backup.tier not in names[1:]:
            raise ValueError(f"backup.tier {self.backup.tier!r} is not one of the colder tiers: {', '.join(names[1:]) or 'none'}")
        return self


def provision_spec() -> ProvisionSpec:
    return ProvisionSpec(include_core=False, kv=[
        KvSpec(bucket=ACCESS_BUCKET, description="CIM tier agent: last read of each unit (unix time)"),
    ])


def embedded_settings(data_dir: Path, http_port: int | None = None) -> tuple[dict, Callable[[Config], str | None]]:
    """`cim up`: a warm and an archive tier as directories; the archive under the data dir
    unless `cim up --archive-dir` (CIM_ARCHIVE_DIR) puts it elsewhere, e.g. on another disk.
    Its summary line names the tiers and the backup as the settings file left them."""
    warm = data_dir / "tiers" / "warm"
    archive = Path(os.environ.get("CIM_ARCHIVE_DIR") or data_dir / "tiers" / "archive")
    archive.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)

    def note(config: Config) -> str:
        line = "tiers: " + " -> ".join([HOT] + [f"{t.name} ({_where(t.url)})" for t in config.tiers])
        backup = next((t for t in config.tiers if config.backup and t.name == config.backup.tier), None)
        if backup is None:
            return line + "; no backups (set `backup` in the tier settings)"
        line += f"; backups to {_where(backup.url)}"
        folder = Path(backup.url.removeprefix("file://")) if backup.url.startswith("file://") else None
        if folder is not None and folder.is_dir() and os.stat(folder).st_dev == os.stat(data_dir).st_dev:
            line += (" (the same disk as the data: a backup of what is deleted, not of a lost disk; "
                     "--archive-dir puts it elsewhere)")
        return line

    return {
        "tiers": [{"name": "warm", "url": f"file://{warm}"}, {"name": "archive", "url": f"file://{archive}"}],
        "policies": [{"name": "warm-after-30d", "from": "hot", "to": "warm", "action": "move", "min_age": "30d"}],
        "backup": {"tier": "archive", "interval": 60},
        "migrate_interval": 600,
    }, note


def _where(url: str) -> str:
    """A tier's place as the summary shows it: a folder as its path, any other URL whole."""
    return url.removeprefix("file://") if url.startswith("file://") else url
