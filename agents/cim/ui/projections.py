"""What the dashboard reads from: its projection of the event stream, kept on disk.

The unit list, label counts, bytes per tier and the event rate are SQLite rows
(`unit_list.py`) in one file under the agent's state directory (cim.projection_db), with the
stream position they cover: a restart resumes there and replays only what is newer, and a
page is an index walk whatever the number of units. Without a state directory the file is
kept in memory and rebuilt at every start.

The last events and errors (the Events page, the overview) stay in memory: they are read
again from the stream's end at start, so a restart does not empty them, and again from a
stream made anew (`cim restore`). Browsers listening for live events (Server-Sent Events) get
each event newer than that, also those that land while the feed is interrupted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ProjectionUnavailable
from ..events import EventStore, StoredEvent
from ..names import EVENTS_STREAM
from ..nats.read import last_seq
from ..projection_db import Follower, ProjectionDb, is_corrupt
from ..store.events import UnitCreated
from . import unit_list
from .unit_list import UnitRow

log = logging.getLogger("cim.ui.projection")

ERROR_TYPES = ("failed", "dead_lettered", "error", "rejected")
SUBJECTS = ["cim.evt.>"]  # every event: the rate and the Events page count them all
RECENT_AT_START = 200  # events read back from the stream's end at start, for the Events page
LISTENER_BACKLOG = 1000  # a stuck browser tab must not grow memory without bound
T = TypeVar("T")


def _now_minute() -> int:
    return int(datetime.now(UTC).timestamp() // 60)


class Projection:
    def __init__(self, events: EventStore, directory: Path | None):
        self.events = events
        self.db = ProjectionDb(directory, "ui", schema=unit_list.SCHEMA, version=unit_list.VERSION)
        self.follower = Follower(events, self.db, SUBJECTS, self._prepare, on_new_stream=self._new_stream)
        self.recent: deque[dict[str, Any]] = deque(maxlen=100)
        self.errors: deque[dict[str, Any]] = deque(maxlen=50)
        self.listeners: set[asyncio.Queue[dict[str, Any]]] = set()
        self._noted = 0  # the last sequence `recent` and `errors` hold: a replay never adds one twice
        self._pushing = False  # whether the events `_note` keeps go to the listeners too: see `_prepare`

    # --- feeding ------------------------------------------------------------------------

    def open(self) -> None:
        self.db.open()

    def close(self) -> None:
        self.db.close()

    async def run(self) -> None:
        """The feed, for the agent's task supervisor: the last events, then the follower."""
        await self._recent_at_start()
        await self.follower.run()

    @property
    def caught_up(self) -> asyncio.Event:
        return self.follower.caught_up

    def freshness(self) -> dict[str, Any]:
        """How far the rows reach: the last event they cover, whether they know they are behind,
        and how many events this start applied (a resumed start applies only the new ones)."""
        return self._query(lambda _: {**self.follower.state(), "replayed": self.follower.replayed})

    async def _recent_at_start(self) -> list[dict[str, Any]]:
        """Keep the stream's last events for the Events page, and count the stream as noted up
        to its end: the follower's replay of what is older adds nothing then, and sends
        browsers nothing. The events kept; none if they cannot be read."""
        try:
            end = await last_seq(self.events.nc, EVENTS_STREAM, None, self.events.timeout)  # the stream's end: no subject lookup
            tail = [e async for e in self.events.read(SUBJECTS, start_seq=max(1, end - RECENT_AT_START + 1))] if end else []
        except Exception as err:  # the page fills as events arrive; the unit list does not depend on it
            log.warning("the last events of %s could not be read for the Events page (%s); it fills as new ones arrive",
                        EVENTS_STREAM, err)
            return []
        kept = [item for e in tail if (item := self._note(e)) is not None]
        self._noted = max(self._noted, end)  # the stream may end with an event of no subject we read
        self._pushing = True
        return kept

    async def _new_stream(self) -> None:
        """The stream was made anew while the dashboard ran (`cim restore`, or deleted and
        provisioned again): its sequence numbers start again at 1, so the events kept, and
        how far they reach, belong to another history and would hide the new one's. They are
        read again from the new stream; browsers still connected get those (new to them, at
        most RECENT_AT_START) and what follows."""
        self.recent.clear()
        self.errors.clear()
        self._noted = 0
        self._pushing = False
        for item in await self._recent_at_start():
            self._push(item)

    def _prepare(self, batch: list[StoredEvent]) -> Callable[[sqlite3.Connection], None]:
        now = _now_minute()

        def write(conn: sqlite3.Connection) -> None:
            unit_list.write(conn, batch, now)
            # Last, with nothing awaited before the commit that follows: a browser told of a
            # unit finds it on the page it loads next.
            # Every event kept goes to the listeners too, once the tail was read at start:
            # `_note` keeps only what is newer, so a replay of the history (long at a first
            # start) sends browsers nothing. Not "while caught up": that is unset while the
            # feed resumes after an interruption, and browsers that stayed connected would
            # never get what arrived meanwhile. If the tail could not be read, from the first
            # catch-up on (the replay is behind then).
            self._pushing = self._pushing or self.follower.caught_up.is_set()
            for e in batch:
                item = self._note(e)
                if self._pushing and item is not None:
                    self._push(item)

        return write

    def _push(self, item: dict[str, Any]) -> None:
        for q in list(self.listeners):
            if q.qsize() < LISTENER_BACKLOG:
                q.put_nowait(item)

    def _note(self, e: StoredEvent) -> dict[str, Any] | None:
        """Keep the event for the Events page (and as an error if it is one); None if kept already."""
        if e.seq <= self._noted:
            return None
        self._noted = e.seq
        when = e.time or datetime.now(UTC)
        item: dict[str, Any] = {"seq": e.seq, "type": e.type, "subject": e.subject, "time": when.isoformat()[:19],
                                "agent": e.agent or "", "id": e.aggregate_id}
        created = e.typed() if e.type == "unit.created" else None
        if isinstance(created, UnitCreated):
            item["unit"] = {"cid": created.cid, "title": created.title, "labels": list(created.labels),
                            "size": created.size, "created_at": created.created_at.isoformat()[:19]}
        self.recent.append(item)
        if e.problem or e.type.endswith(ERROR_TYPES):
            self.errors.append({**item, "detail": e.problem or json.dumps(e.data)[:300]})
        return item

    # --- reading ------------------------------------------------------------------------

    def _query(self, run: Callable[[sqlite3.Connection], T]) -> T:
        """Run a query on the rows; a damaged file is rebuilt by replay, never served."""
        try:
            return run(self.db.conn)
        except sqlite3.DatabaseError as err:
            if not is_corrupt(err):  # a busy or unreadable disk: the rows are good, the moment is not
                raise ProjectionUnavailable(f"the dashboard's unit list cannot be read now ({err}); reload this page "
                                            "in a moment, and check the state directory's disk if it persists") from None
            self.follower.rebuild(f"a query failed on it ({err})")
            raise ProjectionUnavailable("the dashboard's unit list was found damaged and is being rebuilt from the event "
                                        "stream; reload this page in a moment") from None

    def page(self, *, label: str = "", before: int | None = None, after: int | None = None, offset: int = 0,
             limit: int = 50) -> tuple[list[UnitRow], int]:
        """Newest first; the page and the number of units it is a page of."""
        return self._query(lambda c: (unit_list.page(c, label=label, before=before, after=after, offset=offset, limit=limit),
                                      unit_list.total(c, label)))

    def count(self) -> int:
        return self._query(unit_list.total)

    def by_cids(self, cids: list[str]) -> dict[str, UnitRow]:
        return self._query(lambda c: unit_list.by_cids(c, cids)) if cids else {}

    def title(self, cid: str) -> str | None:
        return self._query(lambda c: unit_list.title(c, cid))

    def labels(self, top: int = 30) -> list[tuple[str, int]]:
        return self._query(lambda c: unit_list.top_labels(c, top))

    def rate(self, minutes: int = 30) -> list[tuple[int, int]]:
        return self._query(lambda c: unit_list.rate(c, minutes, _now_minute()))

    def tier_bytes(self) -> dict[str, int]:
        return self._query(unit_list.tier_bytes)

    @property
    def noted(self) -> int:
        """The last event the Events page's list (`recent`) holds: the page says it was
        rendered there, and its live events start after it."""
        return self._noted

    def position(self) -> int:
        """The last event the unit list covers: the Units page says it was rendered there,
        and its live events start after it."""
        return self._query(lambda _: self.follower.as_of)  # a read of the file: its errors are a 503

    def after(self, seq: int) -> list[dict[str, Any]]:
        """The kept events newer than `seq`, oldest first: what a page rendered at `seq` has
        not shown. Only the last 100 are kept; older ones are not sent again."""
        return [item for item in self.recent if item["seq"] > seq]

    def listen(self) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.listeners.add(q)
        return q

    def unlisten(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        self.listeners.discard(q)
