"""The relation graph of units: a projection of unit and step events, in the pipeline
agent's projection database (next to the search index, under one checkpoint).

Edges: `references` (a unit's text names another's CID, from the relate step),
`derived-from` (lineage: a revision's parents) and `same-source` (units that share a
non-empty source, read from the search index's documents).
"""

from __future__ import annotations

import sqlite3

SAME_SOURCE_LIMIT = 100  # a source shared by a million units lists its newest hundred

SCHEMA = """
CREATE TABLE IF NOT EXISTS edges (a TEXT NOT NULL, kind TEXT NOT NULL, b TEXT NOT NULL, PRIMARY KEY (a, kind, b)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS edges_into ON edges (b, kind, a);
"""


def add_edge(conn: sqlite3.Connection, kind: str, a: str, b: str) -> None:
    conn.execute("INSERT OR IGNORE INTO edges (a, kind, b) VALUES (?, ?, ?)", (a, kind, b))


def related(conn: sqlite3.Connection, cid: str) -> list[dict]:
    title = "(SELECT title FROM docs WHERE docs.cid = {}), ''"
    rows = [{"type": t, "direction": "out", "cid": c, "title": n or ""} for t, c, n in conn.execute(
        f"SELECT kind, b, coalesce({title.format('b')}) FROM edges WHERE a = ? ORDER BY kind, b", (cid,))]
    rows += [{"type": t, "direction": "in", "cid": c, "title": n or ""} for t, c, n in conn.execute(
        f"SELECT kind, a, coalesce({title.format('a')}) FROM edges WHERE b = ? ORDER BY kind, a", (cid,))]
    rows += [{"type": "same-source", "direction": "both", "cid": c, "title": n} for c, n in conn.execute(
        "SELECT cid, title FROM docs WHERE source = (SELECT source FROM docs WHERE cid = ? AND source != '')"
        " AND cid != ? ORDER BY id DESC LIMIT ?", (cid, cid, SAME_SOURCE_LIMIT))]
    return rows
