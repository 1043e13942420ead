"""The tier agent's location index kept on disk: the rows of location_rows.py in the agent's
projection database (cim.projection_db), fed by a `Follower` and checkpointed with the stream.

A start resumes after the checkpoint and folds only the unit events that are newer; the
index never has to fit in memory (a scan reads a page of rows at a time). Before anything
plans from it (a policy run, a resumed move, a sweep, a verify) the agent waits until it has
applied every unit event the stream holds at that moment (`current`): a plan never works
from a stale index.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import nats.errors

from ..errors import CimError, ProjectionUnavailable
from ..events import EventStore, StoredEvent
from ..names import EVENTS_STREAM
from ..nats.api import JsError, api, error_code
from ..projection_db import Follower, ProjectionDb
from ..tasks import until_any
from . import location_rows as rows
from .locations import UNIT_EVENTS, Counts, UnitLocation
from .policies import Policy

PAGE = 1000  # rows read per query of a scan: a scan never holds the whole index
POLL = 0.05  # seconds between looks at the checkpoint while waiting (a commit wakes the wait sooner)
# SQLite's page cache for the writer: a batch's units sit on pages all over the table (CIDs are
# random), about 8 MiB of them a batch at a million units; with SQLite's default 2 MiB each
# page is read twice (load, then write). 16 MiB made a first build at 400,000 units 20% faster.
CACHE_KIB = 16384


class _Units:
    """`index.units.get(cid)`, as on the index in memory."""

    def __init__(self, index: StoredLocations):
        self.index = index

    def get(self, cid: str, /) -> UnitLocation | None:
        found = self.index.query(lambda c: c.execute(f"SELECT {rows.COLUMNS} FROM units WHERE cid = ?", (cid,)).fetchone())
        return rows.from_row(found) if found else None


class StoredLocations:
    """The index's rows, answering what the migrator, the backup and the agent ask (`Locations`)."""

    def __init__(self, db: ProjectionDb, damaged: Callable[[str], None]):
        self.db = db
        self.damaged = damaged  # asks for a rebuild by replay
        self.units = _Units(self)
        self.changed = asyncio.Event()  # set at every batch written
        self.opened = False  # requests may arrive while the agent starts, before the file is open
        self._tuned: sqlite3.Connection | None = None

    def query(self, run: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run a query on the rows; a corrupt file is rebuilt, never served."""
        if not self.opened:
            raise ProjectionUnavailable("the tier agent is starting: its location index is not open yet; ask again "
                                        "in a moment")
        try:
            return run(self.db.conn)
        except sqlite3.DatabaseError as err:
            self.damaged(f"a query failed on it ({err})")
            raise ProjectionUnavailable(
                "the tier agent's location index is damaged and is being rebuilt from the event stream; "
                "try again when `cim tier status` says stale: false") from None

    def prepare(self, batch: list[StoredEvent]) -> rows.Write:
        def write(conn: sqlite3.Connection) -> None:
            if conn is not self._tuned:  # the first batch, or the first after a rebuild opened a new file
                conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
                self._tuned = conn
            rows.write(conn, batch)
            self.changed.set()  # waiters look once this task yields: after the commit

        return write

    @property
    def last_seq(self) -> int:
        cp = self.query(lambda c: c.execute("SELECT seq FROM cim_checkpoint WHERE id = 1").fetchone())
        return int(cp[0]) if cp else 0

    def _scan(self, where: str, args: Sequence[Any], *, tier: str | None = None) -> Iterator[UnitLocation]:
        """Rows matching `where`, a page per query, in CID order; each page starts after the
        last CID of the one before, so rows written between pages do not upset the scan."""
        if tier is None:
            sql = f"SELECT {rows.COLUMNS} FROM units WHERE cid > ? AND ({where}) ORDER BY cid LIMIT {PAGE}"
        else:
            cols = ", ".join(f"u.{c.strip()}" for c in rows.COLUMNS.split(","))
            sql = (f"SELECT {cols} FROM unit_tiers t JOIN units u ON u.cid = t.cid"
                   f" WHERE t.tier = ? AND t.cid > ? AND ({where}) ORDER BY t.cid LIMIT {PAGE}")
        after = ""
        while True:
            params = [after, *args] if tier is None else [tier, after, *args]
            page: list[tuple[Any, ...]] = self.query(lambda c: c.execute(sql, params).fetchall())  # noqa: B023 (run at once)
            for r in page:
                yield rows.from_row(r)
            if len(page) < PAGE:
                return
            after = page[-1][0]

    def live(self, tier: str | None = None) -> Iterator[UnitLocation]:
        return self._scan("known = 1 AND expired IS NULL", (), tier=tier)

    def candidates(self, policies: Sequence[Policy], now: datetime) -> Iterator[UnitLocation]:
        """Live units without a move in flight that pass some policy's tier, size, age and
        label tests, read from the rows; `plan` applies every test (last access too) itself."""
        clauses: list[str] = []
        args: list[Any] = []
        now_us = (now - rows.EPOCH) // rows.MICROSECOND
        for p in policies:
            # Bounds beyond what a row holds are clamped: SQLite compares 64-bit integers.
            clause = ["size >= ?", "(created_us IS NULL OR created_us <= ?)"]
            # An infinite (or absurd) min_age matches nothing, as plan() finds: the floor is clamped.
            age_us = p.min_age * 1_000_000 if math.isfinite(p.min_age) else float("inf")
            args += [min(p.min_size, rows.MAX_SIZE), int(max(now_us - min(age_us, 2.0**62), -(2**62)))]
            if p.max_size is not None:
                clause.append("size <= ?")
                args.append(min(p.max_size, rows.MAX_SIZE))
            if p.action != "expire":  # tiers are a sorted JSON list of names that hold no quote
                clause.append("instr(tiers, ?) > 0")
                args.append(json.dumps(p.from_tier))
            if p.action == "copy" and p.to_tier:
                clause.append("instr(tiers, ?) = 0")
                args.append(json.dumps(p.to_tier))
            if p.labels:  # labels too are a JSON list: a label's own JSON string is found only as an element
                clause.append("(" + " OR ".join("instr(labels, ?) > 0" for _ in p.labels) + ")")
                args += [json.dumps(label) for label in p.labels]
            clauses.append("(" + " AND ".join(clause) + ")")
        if not clauses:
            return iter(())
        return self._scan(f"known = 1 AND expired IS NULL AND pending IS NULL AND ({' OR '.join(clauses)})", args)

    def pending(self, limit: int | None = None) -> list[UnitLocation]:
        sql = f"SELECT {rows.COLUMNS} FROM units WHERE pending IS NOT NULL AND known = 1 ORDER BY cid LIMIT ?"
        return [rows.from_row(r) for r in self.query(lambda c: c.execute(sql, (-1 if limit is None else limit,)).fetchall())]

    def counts(self) -> Counts:
        found = self.query(lambda c: c.execute("SELECT name, n FROM counters").fetchall())
        return Counts(Counter(dict(found)))


class LocationProjection:
    """The on-disk index with its feed: open, run, wait until it covers a sequence, close."""

    def __init__(self, events: EventStore, directory: Path | None):
        self.events = events
        self.db = ProjectionDb(directory, "tier", schema=rows.SCHEMA, version=rows.VERSION)
        self.index = StoredLocations(self.db, self._damaged)
        self.follower = Follower(events, self.db, [UNIT_EVENTS], self.index.prepare)

    def _damaged(self, why: str) -> None:
        self.follower.rebuild(why)

    @property
    def opened(self) -> bool:
        return self.index.opened

    def open(self) -> None:
        self.db.open()
        self.index.opened = True

    async def run(self) -> None:
        await self.follower.run()

    def close(self) -> None:
        if self.opened:
            self.index.opened = False
            self.db.close()

    async def covers(self, end: int, wait: float) -> bool:
        """Whether the index has applied every unit event up to `end`, waiting up to `wait`
        seconds for it. A checkpoint counts only once the feed has checked it against the
        stream (`caught_up`): one from a stream since recreated may be past `end`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            self.index.changed.clear()
            if self.opened and self.follower.caught_up.is_set() and self.follower.as_of >= end:
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                # Woken by the next batch written; POLL bounds it for a feed that catches up
                # with nothing to write (its checkpoint already at the end).
                await asyncio.wait_for(self.index.changed.wait(), min(left, POLL))

    async def current(self, wait: float) -> str | None:
        """None once the index has applied every unit event the stream holds now, waiting up
        to `wait` seconds for it; else why it has not.

        The end of the unit events is not asked for directly: the last message of a wildcard
        subject costs the server a scan of every unit's subject (0.1 s at a million units).
        Instead: the stream's end now, then the first unit event after the checkpoint, until
        there is none up to that end (a lookup near the stream's end is cheap)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        try:
            info = await api(self.events.nc, f"STREAM.INFO.{EVENTS_STREAM}", timeout=self.events.timeout)
            if "error" in info:
                return f"{EVENTS_STREAM} cannot be read: {info['error'].get('description')}"
            end = int(info.get("state", {}).get("last_seq", 0))
            target = 0
            while True:
                if not await self.covers(target, deadline - loop.time()):
                    doing = "catching up" if self.follower.caught_up.is_set() else "being built from the unit events"
                    return (f"the location index is {doing}: it has applied the stream up to #{self.follower.as_of if self.opened else 0}"
                            f" of #{end}")
                after = self.follower.as_of + 1
                found = await api(self.events.nc, f"STREAM.MSG.GET.{EVENTS_STREAM}",
                                  {"seq": after, "next_by_subj": UNIT_EVENTS}, timeout=self.events.timeout)
                if error_code(found) == JsError.MESSAGE_NOT_FOUND:
                    return None
                if "error" in found:
                    return f"{EVENTS_STREAM} cannot be read: {found['error'].get('description')}"
                target = int(found["message"]["seq"])
                if target > end:
                    return None  # newer than the question: not what it asked for
        except (CimError, nats.errors.Error, TimeoutError) as err:
            return f"{EVENTS_STREAM} cannot be read ({err or type(err).__name__})"

    async def built(self, stopping: asyncio.Event) -> None:
        """Until the first catch-up is done (a first start replays the whole stream), or stop."""
        await until_any(self.follower.caught_up, stopping)

    def state(self, fresh: bool) -> dict[str, Any]:
        """The index's freshness for a reply: the last unit event applied, whether it may miss
        some (`fresh`: it covered the stream's end when asked), events applied since start."""
        return {"as_of": self.follower.as_of if self.opened else 0, "stale": not fresh,
                "replayed": self.follower.replayed}
