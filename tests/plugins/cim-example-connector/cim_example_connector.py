"""`json-folder`: every `*.json` file of a folder, `{"title": ..., "text": ..., "labels": [...]}`,
becomes a text unit.

A third-party connector: it uses only the public plugin API (`cim.plugins.Plugin`) and the
context the hub hands every connector (`ctx.units`, `ctx.stopping`, `ctx.record_failure`,
`ctx.log`, `ctx.name`). Files are read again at every scan; a unit whose bytes are already
stored is not made twice (units are content-addressed), so a restart duplicates nothing.
"""

import asyncio
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from cim.plugins import Plugin


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Path
    labels: list[str] = Field(default_factory=list)
    interval: float = Field(default=5.0, gt=0)


class JsonFolder:
    def __init__(self, settings: Settings, ctx):
        self.s = settings
        self.ctx = ctx
        self.failed: set[tuple[str, float]] = set()  # (file, mtime) already reported

    async def run(self) -> None:
        while not self.ctx.stopping.is_set():
            await self.scan()
            try:
                await asyncio.wait_for(self.ctx.stopping.wait(), self.s.interval)
            except TimeoutError:
                pass

    async def scan(self) -> None:
        for path in sorted(Path(self.s.path).glob("*.json")):
            mtime = path.stat().st_mtime
            if (path.name, mtime) in self.failed:
                continue
            try:
                doc = json.loads(path.read_text())
                text = doc["text"]
                if not isinstance(text, str):
                    raise ValueError("'text' must be a string")
            except (ValueError, KeyError, TypeError) as err:
                self.failed.add((path.name, mtime))
                await self.ctx.record_failure(str(path), f"not a note: {type(err).__name__}: {err}")
                continue
            await self.ctx.units.put_bytes(
                text.encode(), media_type="text/plain", title=str(doc.get("title") or path.stem),
                labels=[*self.s.labels, *doc.get("labels", [])], source=f"json-folder:{self.ctx.name}/{path.name}",
            )


plugin = Plugin(name="json-folder", version="0.3.0", kind="connector", settings=Settings, connector=JsonFolder,
                provides={"ingest.json-folder": "0.3.0"}, description="JSON notes in a folder become text units")
