"""The tier agent's location index as SQLite rows: the schema, a unit as a row and back, and
a batch of unit events folded into the rows.

    units       one row per unit (any unit event makes one; `known` once its `unit.created`
                arrived), the fold's fields, its small collections as JSON
    unit_tiers  (tier, cid): the units a tier holds, walked without reading the others
    counters    the totals `cim tier status` reports (locations.tally), kept as rows change:
                a status never counts a million rows

The rows are written by the one fold every reader shares (cim.store.unit_fold): a batch's
units are read into a `UnitFold`, the batch is applied to it there, and the units are written
back. So a row means exactly what `LocationIndex` holds in memory, and the two cannot drift.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from ..events import StoredEvent
from ..store.unit_fold import UnitFold, UnitState
from .locations import tally

log = logging.getLogger("cim.tier")

VERSION = 1  # raise it when SCHEMA or what the rows mean changes: older files are rebuilt

# `known` and `expired` are not indexed: live units (known, not expired) are nearly all rows,
# so a scan is what an index would do, and their counts are kept in `counters`. Units with a
# move in flight are few, so `pending` has a partial index.
SCHEMA = """
CREATE TABLE IF NOT EXISTS units (
    cid TEXT PRIMARY KEY,
    known INTEGER NOT NULL,
    size INTEGER NOT NULL,
    labels TEXT NOT NULL,
    created_us INTEGER,
    created_at TEXT,
    created_seq INTEGER NOT NULL,
    children TEXT NOT NULL,
    tiers TEXT NOT NULL,
    revision INTEGER NOT NULL,
    pending TEXT,
    expired TEXT,
    promoted_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS units_pending ON units (cid) WHERE pending IS NOT NULL;
CREATE TABLE IF NOT EXISTS unit_tiers (tier TEXT NOT NULL, cid TEXT NOT NULL, PRIMARY KEY (tier, cid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
"""

COLUMNS = ("cid, known, size, labels, created_us, created_at, created_seq, children, tiers, revision, pending, expired,"
           " promoted_at")
IN_CHUNK = 500  # cids per `IN (...)`: under every SQLite build's limit of bound parameters
# SQLite integers are 64 bits and sums of them must stay so; a size beyond any disk (events
# are hostile input) is kept as this, which every real policy bound still compares right.
MAX_SIZE = 2**48

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)

Write = Callable[[sqlite3.Connection], None]


@lru_cache(maxsize=4096)
def _json_list(items: tuple[Any, ...]) -> str:
    """Labels and tiers repeat across units: each distinct list is encoded once."""
    return json.dumps(list(items))


def to_row(u: UnitState) -> tuple[Any, ...]:
    at = u.created_at
    aware = at is not None and at.utcoffset() is not None
    # created_us is what policies compare (`min_age`); the text is kept only when the time
    # is not UTC, so the row gives back the very datetime the fold made.
    return (
        u.cid, int(u.known), min(u.size, MAX_SIZE), _json_list(u.labels),
        (at - EPOCH) // MICROSECOND if at is not None and aware else None,
        at.isoformat() if at is not None and at.utcoffset() != timedelta(0) else None,
        u.created_seq, json.dumps(u.children) if u.children else "[]", _json_list(tuple(sorted(u.tiers))), u.revision,
        json.dumps(u.pending) if u.pending is not None else None,
        json.dumps(u.expired) if u.expired is not None else None,
        u.promoted_at,
    )


def from_row(r: tuple[Any, ...]) -> UnitState:
    cid, known, size, labels, created_us, created_at, created_seq, children, tiers, revision, pending, expired, promoted = r
    if created_at is not None:
        at: datetime | None = datetime.fromisoformat(created_at)
    else:
        at = EPOCH + created_us * MICROSECOND if created_us is not None else None
    return UnitState(
        cid=cid, size=size, labels=tuple(json.loads(labels)), created_at=at, created_seq=created_seq,
        children=json.loads(children), tiers=set(json.loads(tiers)), revision=revision,
        pending=json.loads(pending) if pending is not None else None,
        expired=json.loads(expired) if expired is not None else None, known=bool(known), promoted_at=promoted,
    )


def load(conn: sqlite3.Connection, cids: list[str]) -> dict[str, UnitState]:
    out: dict[str, UnitState] = {}
    for i in range(0, len(cids), IN_CHUNK):
        chunk = cids[i:i + IN_CHUNK]
        rows = conn.execute(f"SELECT {COLUMNS} FROM units WHERE cid IN ({','.join('?' * len(chunk))})", chunk)
        out.update((r[0], from_row(r)) for r in rows)
    return out


def write(conn: sqlite3.Connection, batch: list[StoredEvent]) -> None:
    """Fold a batch of events into the rows and counters (inside the checkpoint's transaction)."""
    cids = list(dict.fromkeys(e.aggregate_id for e in batch if e.aggregate == "unit" and not e.problem))
    fold = UnitFold()
    fold.units = load(conn, cids)
    before = {cid: (set(u.tiers), tally(u)) for cid, u in fold.units.items()}
    for e in batch:
        try:
            fold.apply(e)
        except Exception as err:  # one bad event must not stop the index (the memory fold skips it too)
            log.warning("the location index skipped event #%d (%s): %s", e.seq, e.type, err)
    delta: dict[str, int] = {}
    dropped: list[tuple[str, str]] = []
    added: list[tuple[str, str]] = []
    for cid, u in fold.units.items():
        u.size = min(u.size, MAX_SIZE)
        old_tiers, old_tally = before.get(cid, (set(), {}))
        for name, n in tally(u).items():
            delta[name] = delta.get(name, 0) + n
        for name, n in old_tally.items():
            delta[name] = delta.get(name, 0) - n
        dropped += [(t, cid) for t in old_tiers - u.tiers]
        added += [(t, cid) for t in u.tiers - old_tiers]
    conn.executemany(f"INSERT OR REPLACE INTO units ({COLUMNS}) VALUES ({','.join('?' * 13)})",
                     [to_row(u) for u in fold.units.values()])
    conn.executemany("DELETE FROM unit_tiers WHERE tier = ? AND cid = ?", dropped)
    conn.executemany("INSERT OR IGNORE INTO unit_tiers (tier, cid) VALUES (?, ?)", added)
    conn.executemany("INSERT INTO counters (name, n) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET n = n + excluded.n",
                     [(name, n) for name, n in delta.items() if n])
