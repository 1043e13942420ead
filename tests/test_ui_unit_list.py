"""The dashboard's unit list on SQLite (issue 16 item 3) counts what `UnitFold` counts: labels
added later, tier moves, expiry, events out of order and repeated, in any batching. Pure
SQLite, no server: the fold is the reference the rows are checked against."""

from __future__ import annotations

import json
import random
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from cim import cid as cidlib
from cim.events import StoredEvent
from cim.store.unit_fold import UnitFold
from cim.ui import unit_list

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def event(seq: int, type_: str, cid: str, data: dict, minutes: int = 0) -> StoredEvent:
    aggregate, name = type_.split(".")
    headers = {"ce-id": f"e{seq}", "ce-time": (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")}
    return StoredEvent.from_message(f"cim.evt.{aggregate}.{cid}.{name}", seq, headers, json.dumps(data).encode())


def created(cid: str, size: int, labels: list[str]) -> dict:
    return {"cid": cid, "size": size, "title": f"t-{cid[-6:]}", "labels": labels, "media_type": "text/plain",
            "source": "test", "created_at": T0.isoformat()}


def history(seed: int, units: int = 12, n: int = 400) -> list[StoredEvent]:
    """A hostile-enough history: creations repeated and late, labels before creation, moves
    that drop their source, copies that keep it, `dropped` lists no move announced, expiry."""
    rnd = random.Random(seed)
    cids = [cidlib.compute(f"unit {seed} {i}".encode()) for i in range(units)]
    tiers = ["hot", "minio", "wasabi"]
    out = []
    for seq in range(1, n + 1):
        cid = rnd.choice(cids)
        kind = rnd.choice(["created", "created", "labeled", "moving", "located", "located", "expired", "revised", "other"])
        if kind == "created":
            out.append(event(seq, "unit.created", cid, created(cid, rnd.randint(0, 5000), rnd.sample(["a", "b", "c"], 2))))
        elif kind == "labeled":
            out.append(event(seq, "unit.labeled", cid, {"labels": rnd.sample(["b", "c", "d", "tier:archive"], 2), "by": "t"}))
        elif kind == "moving":
            src, dst = rnd.sample(tiers, 2)
            out.append(event(seq, "unit.moving", cid, {"from_tier": src, "to_tier": dst, "action": rnd.choice(["copy", "move"]),
                                                       "policy": "p"}))
        elif kind == "located":
            out.append(event(seq, "unit.located", cid, {"tier": rnd.choice(tiers), "url": "u", "size": 1,
                                                        "verified_by": "cid", "dropped": rnd.sample(tiers, rnd.randint(0, 2))}))
        elif kind == "expired":
            if rnd.random() < 0.3:
                out.append(event(seq, "unit.expired", cid, {"policy": "p", "reason": "r"}))
        elif kind == "revised":
            out.append(event(seq, "unit.revised", cid, {"child": rnd.choice(cids)}))
        else:
            out.append(event(seq, "agent.appeared", "cim-x", {"nonsense": True}))
    return out


def fold_into_rows(events: list[StoredEvent], batch: int) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(unit_list.SCHEMA)
    for i in range(0, len(events), batch):
        conn.execute("BEGIN")
        unit_list.write(conn, events[i:i + batch], now_minute=int(T0.timestamp() // 60))
        conn.execute("COMMIT")
    return conn


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_the_rows_count_what_the_unit_fold_counts(seed, batch):
    events = history(seed)
    fold = UnitFold().apply_all(events)
    conn = fold_into_rows(events, batch)

    expected: dict[str, int] = {}
    for u in fold.units.values():
        if u.known:
            for t in u.tiers:
                expected[t] = expected.get(t, 0) + u.size
    assert unit_list.tier_bytes(conn) == expected

    known = fold.in_created_order()
    rows = unit_list.page(conn, limit=100)
    assert [r.cid for r in rows] == [u.cid for u in reversed(known)]  # newest first
    assert {r.cid: r.labels for r in rows} == {u.cid: u.labels for u in known}
    assert unit_list.total(conn) == len(known)
    for label in ("a", "b", "c", "d", "tier:archive"):
        having = [u.cid for u in reversed(known) if label in u.labels]
        assert unit_list.total(conn, label) == len(having)
        assert [r.cid for r in unit_list.page(conn, label=label, limit=100)] == having


def test_keyset_and_offset_pages_agree():
    cids = [cidlib.compute(f"paged {i}".encode()) for i in range(57)]
    events = [event(i + 1, "unit.created", c, created(c, i, ["even" if i % 2 == 0 else "odd"])) for i, c in enumerate(cids)]
    conn = fold_into_rows(events, 10)
    for label in ("", "even"):
        by_offset = [unit_list.page(conn, label=label, offset=n * 10, limit=10) for n in range(7)]
        walked, before = [], None
        while True:
            rows = unit_list.page(conn, label=label, before=before, limit=10)
            if not rows:
                break
            walked.append(rows)
            before = rows[-1].seq
        assert walked == [p for p in by_offset if p]
        back = unit_list.page(conn, label=label, after=walked[2][0].seq, limit=10)
        assert back == walked[1]  # the "newer" link goes back to the page before


def test_the_rate_is_kept_per_minute_and_bounded_by_the_clock():
    cid = cidlib.compute(b"rate")
    now = int(T0.timestamp() // 60)
    events = [event(1, "unit.created", cid, created(cid, 1, [])),
              event(2, "unit.labeled", cid, {"labels": ["x"], "by": "t"}),
              event(3, "unit.labeled", cid, {"labels": ["y"], "by": "t"}, minutes=-1),
              event(4, "unit.labeled", cid, {"labels": ["z"], "by": "t"}, minutes=-10_000),  # long ago: not kept
              event(5, "unit.labeled", cid, {"labels": ["w"], "by": "t"}, minutes=100_000)]  # far ahead: not kept
    conn = fold_into_rows(events, 10)
    assert unit_list.rate(conn, 3, now) == [(now - 2, 0), (now - 1, 1), (now, 2)]
    assert conn.execute("SELECT count(*) FROM rate").fetchone()[0] == 2
