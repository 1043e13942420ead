"""What the dashboard reads from: an in-memory projection of the event stream.

One catch-up subscription (`EventStore.read(follow=True)`) feeds it: history first, then
live. Listing units therefore never scans the stream per page view; at 100k units a page
is a slice of a list, a label filter a slice of that label's list, and a search one pass
over lower-cased titles. The same feed gives the event rate, recent errors and the live
events the pages receive over Server-Sent Events.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..events import EventStore, StoredEvent
from ..names import EVENTS_STREAM
from ..nats.read import last_seq
from ..store.events import UnitCreated
from ..store.unit_fold import UnitFold

log = logging.getLogger("cim.ui.projection")

ERROR_TYPES = ("failed", "dead_lettered", "error", "rejected")
RATE_MINUTES = 60


@dataclass(slots=True)
class UnitRow:
    cid: str
    title: str
    labels: tuple[str, ...]
    size: int
    media_type: str
    source: str
    created_at: str
    seq: int
    search: str  # lower-cased title, source and CID: what a search matches


class Projection:
    def __init__(self, events: EventStore):
        self.events = events
        self.rows: list[UnitRow] = []  # in stream order: newest last
        self.by_cid: dict[str, int] = {}
        self.by_label: dict[str, list[int]] = {}
        self.last_seq = 0
        self.caught_up = asyncio.Event()
        self.per_minute: dict[int, int] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=100)
        self.errors: deque[dict[str, Any]] = deque(maxlen=50)
        self.listeners: set[asyncio.Queue] = set()
        self.units = UnitFold()  # the one fold of unit events (labels added later, tiers)
        self._task: asyncio.Task | None = None

    # --- feeding ------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ui-projection")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                end = await last_seq(self.events.nc, EVENTS_STREAM, None)
                if end <= self.last_seq:
                    self.caught_up.set()
                async for e in self.events.read(start_seq=self.last_seq + 1, follow=True):
                    self.apply(e)
                    if not self.caught_up.is_set() and e.seq >= end:
                        self.caught_up.set()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the read gave up after its own resume window: start again
                log.warning("event feed interrupted (%s); resuming after #%d", err, self.last_seq)
                await asyncio.sleep(2)  # backoff before a new catch-up, not a wait for a condition

    def apply(self, e: StoredEvent) -> None:
        self.last_seq = e.seq
        if e.type == "unit.created" and not e.problem and e.aggregate_id not in self.by_cid:
            d = e.data
            row = UnitRow(
                cid=d["cid"], title=d.get("title", ""), labels=tuple(d.get("labels", ())), size=d.get("size", 0),
                media_type=d.get("media_type", ""), source=d.get("source", ""), created_at=str(d.get("created_at", ""))[:19],
                seq=e.seq, search=f"{d.get('title', '')}\n{d.get('source', '')}\n{d['cid']}".lower(),
            )
            i = len(self.rows)
            self.rows.append(row)
            self.by_cid[row.cid] = i
            for label in row.labels:
                self.by_label.setdefault(label, []).append(i)
        state = self.units.apply(e)
        if e.type == "unit.labeled" and state is not None and state.cid in self.by_cid:
            i = self.by_cid[state.cid]
            row = self.rows[i]
            for label in set(state.labels) - set(row.labels):
                bisect.insort(self.by_label.setdefault(label, []), i)  # positions stay in stream order
            row.labels = state.labels
        when = e.time or datetime.now(UTC)
        minute = int(when.timestamp() // 60)
        self.per_minute[minute] = self.per_minute.get(minute, 0) + 1
        if len(self.per_minute) > RATE_MINUTES * 2:
            for old in sorted(self.per_minute)[: len(self.per_minute) - RATE_MINUTES]:
                del self.per_minute[old]
        item = {"seq": e.seq, "type": e.type, "subject": e.subject, "time": when.isoformat()[:19], "agent": e.agent or "",
                "id": e.aggregate_id}
        created = e.typed() if e.type == "unit.created" else None
        if isinstance(created, UnitCreated):
            item["unit"] = {"cid": created.cid, "title": created.title, "labels": list(created.labels),
                            "size": created.size, "created_at": created.created_at.isoformat()[:19]}
        self.recent.append(item)
        if e.problem or e.type.endswith(ERROR_TYPES):
            self.errors.append({**item, "detail": e.problem or json.dumps(e.data)[:300]})
        if self.caught_up.is_set():
            for q in list(self.listeners):
                if q.qsize() < 1000:  # a stuck browser tab must not grow memory without bound
                    q.put_nowait(item)

    # --- reading ------------------------------------------------------------------------

    def page(self, *, q: str = "", label: str = "", offset: int = 0, limit: int = 50) -> tuple[list[UnitRow], int]:
        """Newest first; returns the page and the total number of matches."""
        positions: Any = self.by_label.get(label, []) if label else range(len(self.rows))
        needle = q.strip().lower()
        if not needle:
            total = len(positions)
            stop = max(total - offset, 0)
            idx = positions[max(stop - limit, 0):stop]
            return [self.rows[i] for i in reversed(idx)], total
        rows = self.rows
        matches = [i for i in positions if needle in rows[i].search]
        total = len(matches)
        stop = max(total - offset, 0)
        return [rows[i] for i in reversed(matches[max(stop - limit, 0):stop])], total

    def labels(self, top: int = 30) -> list[tuple[str, int]]:
        return sorted(((k, len(v)) for k, v in self.by_label.items()), key=lambda kv: (-kv[1], kv[0]))[:top]

    def rate(self, minutes: int = 30) -> list[tuple[int, int]]:
        now = int(datetime.now(UTC).timestamp() // 60)
        return [(m, self.per_minute.get(m, 0)) for m in range(now - minutes + 1, now + 1)]

    def tier_bytes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for u in self.units.units.values():
            if u.known:
                for t in u.tiers:
                    out[t] = out.get(t, 0) + u.size
        return out

    def listen(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        self.listeners.add(q)
        return q

    def unlisten(self, q: asyncio.Queue) -> None:
        self.listeners.discard(q)
