"""The dashboard's unit list as SQLite rows, kept on disk by `projections.py`.

    units         one row per unit, keyed by the sequence of its `unit.created`: newest first
                  is the table's own order, so a page is a short index walk at any depth
    unit_labels   (label, seq): the label filter walks this index, never the units
    label_counts  units per label, and `counters` the units in all, kept as rows change: a
                  page never counts a million rows
    tier_bytes    units and bytes per tier: `UnitFold`'s tier bytes, kept as events move them
    fold          what the fold knows of a unit before its `unit.created` arrives (labels and
                  tiers of a unit whose events came out of order)
    rate          events per minute, the last hours only

The fold is `cim.store.unit_fold.UnitFold`'s, applied event by event to rows instead of
objects: a unit's labels are those it was created with plus every `unit.labeled`; its tiers
start at hot, gain each `unit.located`, lose the source of the tier agent's own move, and are
emptied by `unit.expired`; tier bytes count every tier of every created unit at its size.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..events import StoredEvent
from ..store.unit_fold import HOT

log = logging.getLogger("cim.ui.projection")

VERSION = 1  # raise it when SCHEMA or what the rows mean changes: older files are rebuilt
RATE_MINUTES = 60  # the rate kept reaches this far back (twice) and ahead (clock skew)

SCHEMA = """
CREATE TABLE IF NOT EXISTS units (
    seq INTEGER PRIMARY KEY,
    cid TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    labels TEXT NOT NULL,
    size INTEGER NOT NULL,
    media_type TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at TEXT NOT NULL,
    tiers TEXT NOT NULL,
    pending TEXT
);
-- The rowid alias again, as a narrow index: a page far down (OFFSET) walks it, not the rows.
CREATE INDEX IF NOT EXISTS units_seq ON units (seq);
CREATE TABLE IF NOT EXISTS unit_labels (label TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (label, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS label_counts (label TEXT PRIMARY KEY, units INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS label_counts_top ON label_counts (units DESC, label);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tier_bytes (tier TEXT PRIMARY KEY, units INTEGER NOT NULL, bytes INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fold (cid TEXT PRIMARY KEY, labels TEXT NOT NULL, tiers TEXT NOT NULL, pending TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rate (minute INTEGER PRIMARY KEY, events INTEGER NOT NULL);
"""

FOLDED = {"unit.created", "unit.labeled", "unit.moving", "unit.located", "unit.expired"}  # what moves a row
MAX_SIZE = 2**48  # bytes of one unit, at most, as counted here (a million of them still fit 64 bits)
COLUMNS = "u.seq, u.cid, u.title, u.labels, u.size, u.media_type, u.source, u.created_at"


@dataclass(frozen=True, slots=True)
class UnitRow:
    seq: int
    cid: str
    title: str
    labels: tuple[str, ...]
    size: int
    media_type: str
    source: str
    created_at: str


@dataclass
class _Changes:
    """What a batch changes in the counters, summed here and written once per transaction."""

    early: bool = False  # the fold table has rows: else a new unit need not look there (the usual case)
    units: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    tier_units: Counter[str] = field(default_factory=Counter)
    tier_bytes: Counter[str] = field(default_factory=Counter)
    minutes: Counter[int] = field(default_factory=Counter)

    def tiers(self, before: Iterable[str], after: Iterable[str], size: int) -> None:
        old, new = set(before), set(after)
        for t in old - new:
            self.tier_units[t] -= 1
            self.tier_bytes[t] -= size
        for t in new - old:
            self.tier_units[t] += 1
            self.tier_bytes[t] += size


@dataclass
class _State:
    """One unit's fold state as read from its row (`seq` None: no `unit.created` yet)."""

    cid: str
    seq: int | None
    labels: tuple[str, ...]
    tiers: frozenset[str]
    size: int
    pending: dict[str, Any] | None


# --- writing -------------------------------------------------------------------------------

def write(conn: sqlite3.Connection, batch: list[StoredEvent], now_minute: int) -> None:
    """Fold a batch of events into the rows and counters (inside the checkpoint's transaction)."""
    changes = _Changes(early=bool(conn.execute("SELECT EXISTS (SELECT 1 FROM fold)").fetchone()[0]))
    for e in batch:
        minute = int(e.time.timestamp() // 60) if e.time else now_minute
        changes.minutes[minute] += 1
        try:
            apply(conn, e, changes)
        except sqlite3.DatabaseError:
            raise
        except Exception as err:  # one bad event must not stop the projection
            log.warning("the unit list skipped event #%d (%s): %s", e.seq, e.type, err)
    _flush(conn, changes, now_minute)


def apply(conn: sqlite3.Connection, e: StoredEvent, changes: _Changes) -> None:
    if e.aggregate != "unit" or e.problem or e.type not in FOLDED:
        return
    d = e.data if isinstance(e.data, dict) else {}
    if e.type == "unit.created":
        _create(conn, _early(conn, e.aggregate_id) if changes.early else _State(e.aggregate_id, None, (), frozenset(), 0, None),
                e, d, changes)
        return
    u = _load(conn, e.aggregate_id, changes.early)
    if e.type == "unit.labeled":
        labels = tuple(sorted(set(u.labels) | set(d.get("labels") or ())))
        if u.seq is not None:
            _add_labels(conn, u.seq, set(labels) - set(u.labels), changes)
        _save(conn, u, changes, labels=labels)
    elif e.type == "unit.moving":
        _save(conn, u, changes, pending={**d, "seq": e.seq})
    elif e.type == "unit.located" and isinstance(d.get("tier"), str):
        tiers = set(u.tiers) | {d["tier"]}
        # Only the source of the tier agent's own move intent is dropped (as UnitFold does).
        intent = u.pending or {}
        for t in d.get("dropped") or ():
            if intent.get("action") == "move" and t == intent.get("from_tier"):
                tiers.discard(t)
        _save(conn, u, changes, tiers=frozenset(tiers), pending=None)
    elif e.type == "unit.expired":
        _save(conn, u, changes, tiers=frozenset(), pending=None)


def _load(conn: sqlite3.Connection, cid: str, early: bool) -> _State:
    row = conn.execute("SELECT seq, labels, tiers, size, pending FROM units WHERE cid = ?", (cid,)).fetchone()
    if row is not None:
        return _State(cid, row[0], tuple(json.loads(row[1])), frozenset(json.loads(row[2])), row[3],
                      json.loads(row[4]) if row[4] else None)
    return _early(conn, cid) if early else _State(cid, None, (), frozenset(), 0, None)


def _early(conn: sqlite3.Connection, cid: str) -> _State:
    """What the fold knows of a unit not created yet."""
    found = conn.execute("SELECT labels, tiers, pending FROM fold WHERE cid = ?", (cid,)).fetchone()
    if found is None:
        return _State(cid, None, (), frozenset(), 0, None)
    return _State(cid, None, tuple(json.loads(found[0])), frozenset(json.loads(found[1])), 0,
                  json.loads(found[2]) if found[2] else None)


_KEEP: Any = object()  # "this field stays as it is"


def _save(conn: sqlite3.Connection, u: _State, changes: _Changes, *, labels: Any = _KEEP, tiers: Any = _KEEP,
          pending: Any = _KEEP) -> None:
    new_labels = u.labels if labels is _KEEP else labels
    new_tiers = u.tiers if tiers is _KEEP else tiers
    new_pending = u.pending if pending is _KEEP else pending
    args = (json.dumps(list(new_labels)), json.dumps(sorted(new_tiers)),
            json.dumps(new_pending) if new_pending is not None else None)
    if u.seq is None:
        changes.early = True
        conn.execute("INSERT INTO fold (cid, labels, tiers, pending) VALUES (?, ?, ?, ?) ON CONFLICT (cid) DO UPDATE"
                     " SET labels = excluded.labels, tiers = excluded.tiers, pending = excluded.pending", (u.cid, *args))
        return  # not created yet: no tier bytes (the fold counts created units only)
    conn.execute("UPDATE units SET labels = ?, tiers = ?, pending = ? WHERE seq = ?", (*args, u.seq))
    changes.tiers(u.tiers, new_tiers, u.size)


def _create(conn: sqlite3.Connection, u: _State, e: StoredEvent, d: dict[str, Any], changes: _Changes) -> None:
    labels = tuple(sorted(set(u.labels) | set(d.get("labels") or ())))
    tiers = u.tiers | {HOT}
    # Events are hostile input: a size past what SQLite's integers (and the counters summing
    # them) can hold is kept at MAX_SIZE, as the tier agent's index does, not refused.
    size = min(max(int(d.get("size", 0)), 0), MAX_SIZE)
    inserted = conn.execute(
        "INSERT INTO units (seq, cid, title, labels, size, media_type, source, created_at, tiers, pending)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (cid) DO NOTHING",
        (e.seq, u.cid, str(d.get("title", "")), json.dumps(list(labels)), size, str(d.get("media_type", "")),
         str(d.get("source", "")), str(d.get("created_at", ""))[:19], json.dumps(sorted(tiers)),
         json.dumps(u.pending) if u.pending is not None else None)).rowcount
    if not inserted:
        return  # created once: a repeat (another writer's race) changes nothing
    if changes.early:
        conn.execute("DELETE FROM fold WHERE cid = ?", (u.cid,))
    changes.units += 1
    _add_labels(conn, e.seq, set(labels), changes)
    changes.tiers((), tiers, size)


def _add_labels(conn: sqlite3.Connection, seq: int, labels: set[str], changes: _Changes) -> None:
    for label in labels:
        if conn.execute("INSERT OR IGNORE INTO unit_labels (label, seq) VALUES (?, ?)", (label, seq)).rowcount:
            changes.labels[label] += 1


def _flush(conn: sqlite3.Connection, c: _Changes, now_minute: int) -> None:
    if c.units:
        conn.execute("INSERT INTO counters (name, n) VALUES ('units', ?) ON CONFLICT (name) DO UPDATE SET n = n + excluded.n",
                     (c.units,))
    conn.executemany("INSERT INTO label_counts (label, units) VALUES (?, ?)"
                     " ON CONFLICT (label) DO UPDATE SET units = units + excluded.units", c.labels.items())
    conn.executemany("INSERT INTO tier_bytes (tier, units, bytes) VALUES (?, ?, ?) ON CONFLICT (tier) DO UPDATE"
                     " SET units = units + excluded.units, bytes = bytes + excluded.bytes",
                     [(t, c.tier_units[t], c.tier_bytes[t]) for t in set(c.tier_units) | set(c.tier_bytes)])
    # The rate is bounded by the clock, not by the events: a replayed history or an event
    # dated far ahead must not grow the table.
    low, high = now_minute - 2 * RATE_MINUTES, now_minute + RATE_MINUTES
    conn.executemany("INSERT INTO rate (minute, events) VALUES (?, ?) ON CONFLICT (minute) DO UPDATE"
                     " SET events = events + excluded.events", [(m, n) for m, n in c.minutes.items() if low <= m <= high])
    conn.execute("DELETE FROM rate WHERE minute < ? OR minute > ?", (low, high))


# --- reading -------------------------------------------------------------------------------

def _row(r: tuple[Any, ...]) -> UnitRow:
    return UnitRow(r[0], r[1], r[2], tuple(json.loads(r[3])), r[4], r[5], r[6], r[7])


def total(conn: sqlite3.Connection, label: str = "") -> int:
    if label:
        found = conn.execute("SELECT units FROM label_counts WHERE label = ?", (label,)).fetchone()
    else:
        found = conn.execute("SELECT n FROM counters WHERE name = 'units'").fetchone()
    return int(found[0]) if found else 0


def page(conn: sqlite3.Connection, *, label: str = "", before: int | None = None, after: int | None = None,
         offset: int = 0, limit: int = 50) -> list[UnitRow]:
    """Newest first: older than `before`, newer than `after` (the pager's keyset links), else
    `offset` rows down (a page number typed into the address): counted in a narrow index,
    from whichever end is nearer, so the slowest page is the middle one."""
    if label:
        source, key, args, where = "unit_labels l JOIN units u ON u.seq = l.seq", "l.seq", [label], "l.label = ?"
        narrow, narrow_args = "unit_labels WHERE label = ?", [label]
    else:
        source, key, args, where = "units u", "u.seq", [], "1"
        narrow, narrow_args = "units", []
    order, skipped = "DESC", offset
    if offset > 0:
        from_oldest = total(conn, label) - 1 - offset
        if from_oldest < 0:
            return []
        if from_oldest < offset:
            order, skipped = "ASC", from_oldest
    skip = f"SELECT seq FROM {narrow} ORDER BY seq {order} LIMIT 1 OFFSET ?"
    skip_args: list[Any] = [*narrow_args, skipped]
    if after is not None:
        sql = f"SELECT {COLUMNS} FROM {source} WHERE {where} AND {key} > ? ORDER BY {key} ASC LIMIT ?"
        return [_row(r) for r in conn.execute(sql, [*args, after, limit]).fetchall()][::-1]
    if before is not None:
        sql = f"SELECT {COLUMNS} FROM {source} WHERE {where} AND {key} < ? ORDER BY {key} DESC LIMIT ?"
        return [_row(r) for r in conn.execute(sql, [*args, before, limit]).fetchall()]
    if offset > 0:
        sql = f"SELECT {COLUMNS} FROM {source} WHERE {where} AND {key} <= ({skip}) ORDER BY {key} DESC LIMIT ?"
        return [_row(r) for r in conn.execute(sql, [*args, *skip_args, limit]).fetchall()]
    sql = f"SELECT {COLUMNS} FROM {source} WHERE {where} ORDER BY {key} DESC LIMIT ?"
    return [_row(r) for r in conn.execute(sql, [*args, limit]).fetchall()]


def by_cids(conn: sqlite3.Connection, cids: list[str]) -> dict[str, UnitRow]:
    marks = ",".join("?" * len(cids))
    return {r.cid: r for r in map(_row, conn.execute(f"SELECT {COLUMNS} FROM units u WHERE u.cid IN ({marks})", cids))}


def title(conn: sqlite3.Connection, cid: str) -> str | None:
    found = conn.execute("SELECT title FROM units WHERE cid = ?", (cid,)).fetchone()
    return found[0] if found else None


def top_labels(conn: sqlite3.Connection, top: int) -> list[tuple[str, int]]:
    return [(r[0], r[1]) for r in conn.execute(
        "SELECT label, units FROM label_counts WHERE units > 0 ORDER BY units DESC, label LIMIT ?", (top,))]


def tier_bytes(conn: sqlite3.Connection) -> dict[str, int]:
    """Bytes per tier of the units it holds (a tier no unit is in is left out, as the fold does)."""
    return {r[0]: r[1] for r in conn.execute("SELECT tier, bytes FROM tier_bytes WHERE units > 0")}


def rate(conn: sqlite3.Connection, minutes: int, now_minute: int) -> list[tuple[int, int]]:
    first = now_minute - minutes + 1
    counts = dict(conn.execute("SELECT minute, events FROM rate WHERE minute BETWEEN ? AND ?", (first, now_minute)))
    return [(m, counts.get(m, 0)) for m in range(first, now_minute + 1)]
