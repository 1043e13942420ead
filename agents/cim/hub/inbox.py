"""The inbox folder: files dropped in become units, then move to `done/` or `failed/`.

Nothing is removed before its unit is stored: a file is moved only after the put returned,
and a put of bytes already stored is a harmless no-op, so a hub killed between the two
steps finishes the job after a restart with still exactly one unit per file. A file is
taken only once two scans saw the same size and modification time, so a file still being
written is left alone (writers that rename into the folder are never caught half-way).
A file that cannot become a unit moves to `failed/` with `<name>.reason.txt` beside it.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field

from ..errors import CimError, InvalidInput
from ..plugins import Plugin
from .connectors import ConnectorContext

FILES = Counter("cim_hub_inbox_files_total", "Inbox files by outcome", ["connector", "outcome"])


class InboxSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Path = Field(description="the folder to watch; done/ and failed/ are made inside it")
    labels: list[str] = Field(default_factory=list, description="labels every unit from here gets")
    interval: float = Field(default=1.0, gt=0, le=3600, description="seconds between scans")
    concurrency: int = Field(default=8, ge=1, le=64)


def _free_name(folder: Path, name: str) -> Path:
    target = folder / name
    n = 1
    while target.exists():
        stem, dot, ext = name.partition(".")
        target = folder / f"{stem}-{n}{dot}{ext}"
        n += 1
    return target


class Inbox:
    def __init__(self, settings: InboxSettings, ctx: ConnectorContext):
        self.s = settings
        self.ctx = ctx
        self.path = Path(settings.path)
        self.done = self.path / "done"
        self.failed = self.path / "failed"
        self._seen: dict[str, tuple[int, int]] = {}

    async def run(self) -> None:
        for d in (self.path, self.done, self.failed):
            d.mkdir(parents=True, exist_ok=True)
        self.ctx.log.info("inbox %s watching %s", self.ctx.name, self.path)
        while not self.ctx.stopping.is_set():
            try:
                await self.scan()
            except CimError as err:  # NATS away: the files stay where they are for the next scan
                self.ctx.log.warning("inbox %s: %s; trying again", self.ctx.name, err)
            try:
                await asyncio.wait_for(self.ctx.stopping.wait(), self.s.interval)
            except asyncio.TimeoutError:
                pass

    def _ready(self) -> list[Path]:
        now: dict[str, tuple[int, int]] = {}
        ready = []
        with os.scandir(self.path) as it:
            for entry in it:
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
                now[entry.name] = (st.st_size, st.st_mtime_ns)
                if self._seen.get(entry.name) == now[entry.name]:
                    ready.append(Path(entry.path))
        self._seen = now
        return sorted(ready)

    async def scan(self) -> int:
        ready = await asyncio.to_thread(self._ready)
        gate = asyncio.Semaphore(self.s.concurrency)

        async def one(path: Path) -> None:
            async with gate:
                await self._take(path)

        await asyncio.gather(*(one(p) for p in ready))
        return len(ready)

    async def _take(self, path: Path) -> None:
        try:
            await self.ctx.units.put_file(path, labels=self.s.labels, source=f"inbox:{self.ctx.name}/{path.name}")
        except InvalidInput as err:
            reason = str(err)
            target = _free_name(self.failed, path.name)
            os.replace(path, target)
            target.with_name(target.name + ".reason.txt").write_text(reason + "\n")
            self._seen.pop(path.name, None)
            FILES.labels(self.ctx.name, "failed").inc()
            await self.ctx.record_failure(str(path), reason)
            return
        os.replace(path, _free_name(self.done, path.name))
        self._seen.pop(path.name, None)
        FILES.labels(self.ctx.name, "done").inc()


# Found through the `cim.plugins` entry point `inbox = "cim.hub.inbox:plugin"`, like a third party's.
plugin = Plugin(
    name="inbox", version="1.0.0", kind="connector", provides={"ingest.folder": "1.0.0"}, settings=InboxSettings,
    connector=Inbox, description="files dropped in a folder become units",
)
