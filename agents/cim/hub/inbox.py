"""The inbox folder: files dropped in become units, then move to `done/` or `failed/`.

Nothing is removed before its unit is stored: a file is moved only after the put returned,
and a put of bytes already stored is a harmless no-op, so a hub killed between the two
steps finishes the job after a restart with still exactly one unit per file. A file is
taken only once it kept the same size and modification time for `settle` seconds, so a file
still being written is left alone, and one that changed while it was being stored is not
moved (its settled version is stored at a later scan); writers that write elsewhere and
rename into the folder are never caught half-way.

Anything else in the folder (a symlink, a folder, a device, a file that cannot be read)
moves to `failed/` with `<name>.reason.txt` beside it, like a file that cannot become a
unit. The hub never follows a link there: names in `failed/` and `done/` that exist in any
form (a planted symlink included) are never written through.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..errors import CimError, InvalidInput, UnitExpiredError
from ..plugins import Plugin
from .connectors import ConnectorContext
from .metrics import INBOX_FILES as FILES


class InboxSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Path = Field(description="the folder to watch; done/ and failed/ are made inside it")
    labels: list[str] = Field(default_factory=list, description="labels every unit from here gets")
    interval: float = Field(default=1.0, gt=0, le=3600, description="seconds between scans")
    settle: float = Field(default=5.0, ge=0, le=3600, description="seconds a file must stay unchanged before it is taken")
    concurrency: int = Field(default=8, ge=1, le=64)


def _free_name(folder: Path, name: str, *also: str) -> Path:
    """A name in `folder` that is free, and whose `name + suffix` is free for each suffix in
    `also`; `lexists`, so a dangling symlink counts as taken."""
    target = folder / name
    n = 1
    while os.path.lexists(target) or any(os.path.lexists(str(target) + suffix) for suffix in also):
        stem, dot, ext = name.partition(".")
        target = folder / f"{stem}-{n}{dot}{ext}"
        n += 1
    return target


def _write_new(path: Path, text: str) -> None:
    """Create `path` and write `text`: never through a link, never over anything."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class Inbox:
    def __init__(self, settings: InboxSettings, ctx: ConnectorContext):
        self.s = settings
        self.ctx = ctx
        self.path = Path(settings.path)
        self.done = self.path / "done"
        self.failed = self.path / "failed"
        self._seen: dict[str, tuple[tuple[int, int, int], float]] = {}  # name -> (inode, size, mtime), since

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
            except TimeoutError:
                pass

    def _ready(self) -> tuple[list[Path], list[tuple[Path, str]]]:
        """Files unchanged for `settle` seconds, and what is in the folder but is no file."""
        clock = time.monotonic()
        now: dict[str, tuple[tuple[int, int, int], float]] = {}
        ready, refused = [], []
        with os.scandir(self.path) as it:
            for entry in it:
                if entry.name.startswith(".") or entry.name in ("done", "failed"):
                    continue
                if entry.is_symlink():
                    refused.append((Path(entry.path), "a symbolic link: the inbox takes regular files only, and never follows a link"))
                    continue
                if entry.is_dir(follow_symlinks=False):
                    refused.append((Path(entry.path), "a folder: the inbox takes the files dropped in it, not folders"))
                    continue
                if not entry.is_file(follow_symlinks=False):
                    refused.append((Path(entry.path), "not a regular file (a device, socket or pipe)"))
                    continue
                st = entry.stat(follow_symlinks=False)
                key = (st.st_ino, st.st_size, st.st_mtime_ns)
                seen = self._seen.get(entry.name)
                since = seen[1] if seen and seen[0] == key else clock
                now[entry.name] = (key, since)
                if seen and seen[0] == key and clock - since >= self.s.settle:
                    ready.append(Path(entry.path))
        self._seen = now
        return sorted(ready), refused

    async def scan(self) -> int:
        ready, refused = await asyncio.to_thread(self._ready)
        for path, reason in refused:
            await self._fail(path, reason)
        gate = asyncio.Semaphore(self.s.concurrency)

        async def one(path: Path) -> None:
            async with gate:
                await self._take(path)

        await asyncio.gather(*(one(p) for p in ready))
        return len(ready)

    async def _fail(self, path: Path, reason: str) -> None:
        target = _free_name(self.failed, path.name, ".reason.txt")
        try:
            os.replace(path, target)
        except OSError as err:
            self.ctx.log.error("inbox %s: cannot move %s to failed/: %s", self.ctx.name, path, err.strerror)
            return
        _write_new(target.with_name(target.name + ".reason.txt"), reason + "\n")
        self._seen.pop(path.name, None)
        FILES.labels(self.ctx.name, "failed").inc()
        await self.ctx.record_failure(str(path), reason)

    async def _take(self, path: Path) -> None:
        before = _stat(path)
        try:
            await self.ctx.units.put_file(path, labels=self.s.labels, source=f"inbox:{self.ctx.name}/{path.name}")
        except (InvalidInput, UnitExpiredError) as err:  # refused for good: to failed/, with why
            await self._fail(path, str(err))
            return
        except OSError as err:  # unreadable, or gone: a reason, not a crash of the connector
            if await asyncio.to_thread(os.path.lexists, path):
                await self._fail(path, f"cannot read it: {err.strerror}")
            return
        if _stat(path) != before:
            # Written to while it was stored: what was stored may be a part. Leave it; once it
            # settles again its whole content is stored too.
            self.ctx.log.warning("inbox %s: %s changed while it was stored; it is taken again once it settles",
                                 self.ctx.name, path.name)
            self._seen.pop(path.name, None)
            return
        os.replace(path, _free_name(self.done, path.name))
        self._seen.pop(path.name, None)
        FILES.labels(self.ctx.name, "done").inc()


# Found through the `cim.plugins` entry point `inbox = "cim.hub.inbox:plugin"`, like a third party's.
plugin = Plugin(
    name="inbox", version="1.0.0", kind="connector", provides={"ingest.folder": "1.0.0"}, settings=InboxSettings,
    connector=Inbox, description="files dropped in a folder become units",
)
