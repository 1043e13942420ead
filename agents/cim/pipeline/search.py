"""Full-text search on SQLite FTS5: the pipeline agent's search index, kept on disk.

Every unit is a document from its `unit.created` (title, source, media type, labels, date);
the `index` step's record adds its extracted text. FTS5 brings what a hand-made index did
not: Porter stemming, phrase and prefix queries, BM25 ranking and highlighted snippets, at a
million documents, from a file that survives restarts (cim.projection_db). A document sits
in one of two FTS tables, by the language its index step set: `english` (Porter stemming)
or `simple` (words as written).

Queries are parsed here, never passed to FTS5 as written: a user's `"` or `NEAR(` is a word
to look for, not syntax to inject. The syntax we accept: words (all must match), `"a
phrase"`, `prefix*`, `OR` between words, `-word` to exclude.
"""

from __future__ import annotations

import fnmatch
import re
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInput
from ..text import WORD, terms

LANGUAGES = {"english": "porter unicode61 remove_diacritics 2", "simple": "unicode61 remove_diacritics 2"}
MAX_TEXT = 1_000_000  # characters of a unit's text indexed; the rest is not searched
MARK_START, MARK_END = "\x02", "\x03"  # snippet markers: control characters, stripped from indexed text
MAX_TERMS = 32  # words in one query
CANDIDATES = 10_000  # matches ranked at most, the newest, when no filter narrows them

SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    id INTEGER PRIMARY KEY,
    cid TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL DEFAULT '',
    media_type TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL DEFAULT '',
    text_cid TEXT,
    language TEXT NOT NULL DEFAULT 'english',
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS docs_source ON docs (source, id);
CREATE INDEX IF NOT EXISTS docs_media ON docs (media_type, id);
CREATE INDEX IF NOT EXISTS docs_created ON docs (created_at, id);
-- The unit listing's order (newest first) and keyset: made on open, so older files gain it.
CREATE INDEX IF NOT EXISTS docs_seq ON docs (seq, cid);
CREATE TABLE IF NOT EXISTS doc_labels (label TEXT NOT NULL, doc INTEGER NOT NULL, PRIMARY KEY (label, doc)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS doc_labels_doc ON doc_labels (doc);
-- Kept as rows change: count(*) over a million documents would cost every answer ~200 ms.
CREATE TABLE IF NOT EXISTS doc_counts (id INTEGER PRIMARY KEY CHECK (id = 1), units INTEGER NOT NULL, indexed INTEGER NOT NULL);
INSERT OR IGNORE INTO doc_counts (id, units, indexed) VALUES (1, 0, 0);
""" + "".join(
    f"CREATE VIRTUAL TABLE IF NOT EXISTS fts_{lang} USING fts5(title, body, tokenize = '{tok}');\n"
    for lang, tok in LANGUAGES.items())


@dataclass
class Filters:
    labels: list[str] = field(default_factory=list)
    media_type: str = ""  # exact, or `text/*`
    source: str = ""  # exact, or a glob
    since: str = ""  # ISO dates, compared with created_at
    until: str = ""

    def sql(self) -> tuple[str, list[str]]:
        where, args = [], []
        for label in self.labels:
            where.append("d.id IN (SELECT doc FROM doc_labels WHERE label = ?)")
            args.append(label)
        if self.media_type:
            if self.media_type.endswith("/*"):
                where.append("d.media_type >= ? AND d.media_type < ?")
                args += [self.media_type[:-1], self.media_type[:-2] + "0"]  # '/' + 1 == '0'
            else:
                where.append("d.media_type = ?")
                args.append(self.media_type)
        if self.source:
            where.append("d.source GLOB ?" if any(c in self.source for c in "*?[") else "d.source = ?")
            args.append(self.source)
        if self.since:
            where.append("d.created_at >= ?")
            args.append(self.since)
        if self.until:
            where.append("d.created_at < ?")
            args.append(self.until)
        return "".join(f" AND {w}" for w in where), args


@dataclass
class Hit:
    cid: str
    score: float
    title: str
    snippet: str
    highlights: list[tuple[int, int]]
    media_type: str
    source: str
    created_at: str


# --- writing -------------------------------------------------------------------------------

def clean(text: str) -> str:
    return text[:MAX_TEXT].replace(MARK_START, " ").replace(MARK_END, " ")


class Writer:
    """One batch's writes. Each document's full-text row is written once, at `flush`, in its
    final state: a unit and its index record mostly arrive in one batch, and FTS5 pays for
    replacing a row by reading its tokens back. The counts are kept the same way."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.fts: dict[int, tuple[str, str, str]] = {}  # doc -> (language, title, body)
        self.new: set[int] = set()  # docs with no full-text row before this batch
        self.units = self.indexed = 0

    def add_unit(self, *, cid: str, title: str, media_type: str, source: str, created_at: str, labels: list[str],
                 seq: int) -> None:
        """A new unit: searchable by its title at once; its text comes with its index step."""
        cur = self.conn.execute(
            "INSERT INTO docs (cid, title, media_type, source, created_at, seq) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (cid) DO NOTHING", (cid, clean(title), media_type, source, created_at, seq))
        if not cur.rowcount:
            return
        doc = int(cur.lastrowid or 0)
        self.units += 1
        self.new.add(doc)
        self.fts[doc] = ("english", clean(title), "")
        self.add_labels(cid, labels)

    def add_labels(self, cid: str, labels: list[str]) -> None:
        self.conn.executemany("INSERT OR IGNORE INTO doc_labels (label, doc) SELECT ?, id FROM docs WHERE cid = ?",
                              [(label, cid) for label in labels])

    def set_text(self, cid: str, *, text: str, text_cid: str, title: str, language: str, seq: int) -> None:
        """The index step's text for a unit (again: the latest record wins)."""
        if language not in LANGUAGES:
            language = "english"
        row = self.conn.execute("SELECT id, title, text_cid FROM docs WHERE cid = ?", (cid,)).fetchone()
        if row is None:  # a record whose unit event was lost to retention: still searchable
            doc = int(self.conn.execute("INSERT INTO docs (cid, title, seq) VALUES (?, ?, ?)",
                                        (cid, clean(title), seq)).lastrowid or 0)
            self.new.add(doc)
            self.units += 1
            self.indexed += 1
        else:
            doc, title = row[0], title or row[1]
            self.indexed += row[2] is None
        self.conn.execute("UPDATE docs SET title = ?, text_cid = ?, language = ? WHERE id = ?",
                          (clean(title), text_cid, language, doc))
        self.fts[doc] = (language, clean(title), clean(text))

    def flush(self) -> None:
        for doc, (language, title, body) in self.fts.items():
            if doc not in self.new:
                for lang in LANGUAGES:
                    self.conn.execute(f"DELETE FROM fts_{lang} WHERE rowid = ?", (doc,))
            self.conn.execute(f"INSERT INTO fts_{language} (rowid, title, body) VALUES (?, ?, ?)", (doc, title, body))
        if self.units or self.indexed:
            self.conn.execute("UPDATE doc_counts SET units = units + ?, indexed = indexed + ?", (self.units, self.indexed))
        self.fts.clear()
        self.new.clear()
        self.units = self.indexed = 0


def add_unit(conn: sqlite3.Connection, **unit: Any) -> None:
    """One unit on its own (tests and tools; the projection writes batches with a Writer)."""
    w = Writer(conn)
    w.add_unit(**unit)
    w.flush()


def set_text(conn: sqlite3.Connection, cid: str, **text: Any) -> None:
    w = Writer(conn)
    w.set_text(cid, **text)
    w.flush()


# --- queries -------------------------------------------------------------------------------

_TOKEN = re.compile(r'(-?)"([^"]*)"?|(\S+)')


def fts_query(query: str) -> str:
    """The user's query as an FTS5 expression built only from quoted words."""
    positive: list[str] = []
    negative: list[str] = []
    pending_or = False
    count = 0
    for m in _TOKEN.finditer(query):
        neg, phrase, word = m.group(1), m.group(2), m.group(3)
        if word == "OR":
            pending_or = bool(positive)
            continue
        prefix = False
        if word is not None:
            neg = "-" if word.startswith("-") and len(word) > 1 else ""
            word = word[1:] if neg else word
            prefix = word.endswith("*")
        parts = WORD.findall(phrase if phrase is not None else word or "")
        if not parts:
            continue
        count += len(parts)
        if count > MAX_TERMS:
            raise InvalidInput("query", f"more than {MAX_TERMS} words; search with fewer")
        if prefix and len(parts[-1]) < 2:
            raise InvalidInput("query", f"{word!r}: a prefix needs at least 2 letters before the *")
        expr = '"' + " ".join(parts) + '"' + ("*" if prefix else "")
        if neg:
            negative.append(expr)
        elif pending_or:
            positive[-1] = f"{positive[-1]} OR {expr}"
            pending_or = False
        else:
            positive.append(expr)
    if not positive:
        raise InvalidInput("query", "nothing to look for: give at least one word that is not excluded with -")
    out = " AND ".join(f"({p})" for p in positive)
    if negative:
        out = f"({out}) NOT ({' OR '.join(negative)})"
    return out


def _hit(row: tuple) -> Hit:
    cid, title, media_type, source, created_at, snip, score = row
    text, spans = _spans(snip or "")
    return Hit(cid=cid, score=round(-score, 4), title=title, snippet=text, highlights=spans, media_type=media_type,
               source=source, created_at=created_at)


def _spans(marked: str) -> tuple[str, list[tuple[int, int]]]:
    """A snippet with FTS5's markers as plain text and the (start, end) of each highlight."""
    out, spans, pos, start = [], [], 0, None
    for piece in re.split(f"([{MARK_START}{MARK_END}])", marked):
        if piece == MARK_START:
            start = pos
        elif piece == MARK_END:
            if start is not None:
                spans.append((start, pos))
            start = None
        else:
            out.append(piece)
            pos += len(piece)
    return "".join(out), spans


def search(conn: sqlite3.Connection, query: str, *, limit: int = 10, filters: Filters | None = None,
           exclude: str = "") -> tuple[list[Hit], bool]:
    """Best first, and whether the ranking was kept to the newest CANDIDATES matches.
    `exclude` leaves one unit out (more-like-this leaves out the unit itself)."""
    expr = fts_query(query)
    filters = filters or Filters()
    where, args = filters.sql()
    want = limit + (1 if exclude else 0)
    ranked: list[tuple[float, int, str]] = []
    capped = False
    for lang in LANGUAGES:
        if where:
            # Filters need each match's row: ranked over every match, so nothing is missed.
            sql = (f"SELECT f.rowid, bm25(fts_{lang}, 4.0, 1.0) AS score FROM fts_{lang} f JOIN docs d ON d.id = f.rowid"
                   f" WHERE fts_{lang} MATCH ?{where} ORDER BY score, f.rowid LIMIT ?")
            params: list = [expr, *args, want]
        else:
            # BM25 costs ~2 µs a match: a word in every unit of a million would take seconds.
            # Past CANDIDATES matches only the newest are ranked (FTS5 starts its doclists
            # at a rowid), and the answer says so.
            floor = conn.execute(f"SELECT rowid FROM fts_{lang} WHERE fts_{lang} MATCH ? ORDER BY rowid DESC"
                                 " LIMIT 1 OFFSET ?", (expr, CANDIDATES - 1)).fetchone()
            capped = capped or floor is not None
            sql = (f"SELECT rowid, bm25(fts_{lang}, 4.0, 1.0) AS score FROM fts_{lang} WHERE fts_{lang} MATCH ?"
                   f"{' AND rowid >= ?' if floor else ''} ORDER BY score, rowid LIMIT ?")
            params = [expr, *([floor[0]] if floor else []), want]
        ranked += [(score, doc, lang) for doc, score in conn.execute(sql, params)]
    ranked.sort()
    hits = []
    for score, doc, lang in ranked:
        # A snippet is made only for the hits returned, not for every match.
        row = conn.execute(
            f"SELECT d.cid, d.title, d.media_type, d.source, d.created_at,"
            f" snippet(fts_{lang}, 1, '{MARK_START}', '{MARK_END}', '…', 24)"
            f" FROM fts_{lang} JOIN docs d ON d.id = fts_{lang}.rowid WHERE fts_{lang} MATCH ? AND fts_{lang}.rowid = ?",
            (expr, doc)).fetchone()
        if row is not None and row[0] != exclude:
            hits.append(_hit((*row, score)))
        if len(hits) == limit:
            break
    return hits, capped


def facets(conn: sqlite3.Connection, query: str, *, filters: Filters | None = None, top: int = 10) -> dict[str, list]:
    """How the matches split by label, media type and source (each the top `top`), over the
    same matches `search` ranks: past CANDIDATES, the newest ones (counting every match of
    a common word would hold the agent for seconds at a million units)."""
    expr = fts_query(query)
    where, args = (filters or Filters()).sql()
    parts, margs = [], []
    for lang in LANGUAGES:
        floor = conn.execute(f"SELECT rowid FROM fts_{lang} WHERE fts_{lang} MATCH ? ORDER BY rowid DESC"
                             " LIMIT 1 OFFSET ?", (expr, CANDIDATES - 1)).fetchone()
        parts.append(f"SELECT d.id AS id, d.media_type AS media_type, d.source AS source FROM fts_{lang}"
                     f" JOIN docs d ON d.id = fts_{lang}.rowid WHERE fts_{lang} MATCH ?"
                     f"{' AND fts_' + lang + '.rowid >= ?' if floor else ''}{where}")
        margs += [expr, *([floor[0]] if floor else []), *args]
    matches = " UNION ALL ".join(parts)
    out: dict[str, list] = {}
    for name, sql in (
        ("labels", f"SELECT l.label, count(*) FROM ({matches}) m JOIN doc_labels l ON l.doc = m.id GROUP BY l.label"),
        ("media_types", f"SELECT media_type, count(*) FROM ({matches}) GROUP BY media_type"),
        ("sources", f"SELECT source, count(*) FROM ({matches}) WHERE source != '' GROUP BY source"),
    ):
        out[name] = [[v, n] for v, n in conn.execute(f"{sql} ORDER BY 2 DESC, 1 LIMIT ?", [*margs, top])]
    return out


def similar(conn: sqlite3.Connection, cid: str, *, limit: int = 10) -> list[Hit]:
    """More like this: the units whose text shares most of this unit's distinctive words."""
    row = None
    for lang in LANGUAGES:
        row = conn.execute(f"SELECT title, body FROM fts_{lang} WHERE rowid = (SELECT id FROM docs WHERE cid = ?)",
                           (cid,)).fetchone()
        if row:
            break
    if row is None:
        return []
    common = [w for w, _ in Counter(w for w in terms(f"{row[0]} {row[1]}") if len(w) > 2).most_common(12)]
    if not common:
        return []
    # OR of its most frequent words: BM25 weighs the rare ones up, so the result is what
    # shares its distinctive words, not its common ones.
    return search(conn, " OR ".join(common), limit=limit, exclude=cid)[0]


@dataclass
class Listed:
    cid: str
    seq: int  # of the unit's `unit.created`: the listing's order and its keyset
    title: str
    media_type: str
    source: str
    created_at: str
    labels: list[str]


FEW = 10_000  # a label or source with fewer units than this is listed from its own index
# Rows of the newest-first index one listing walks at most: a filter that matches little
# stops there and answers where to resume, so one request holds the agent's event loop for
# milliseconds (10–25 ms at 20,000 rows), never for a walk of the whole index.
SCAN_ROWS = 20_000


@dataclass
class Reach:
    """What a caller may see, as a hub token's source patterns (fnmatch, as cim.hub.tokens
    reads them): a unit whose source matches one of `sources`; `*` among them: no limit.

    Labels are not here: a token sees a unit by the labels it was created with, which the
    index cannot tell apart from those pipeline steps added, so the hub checks those itself."""

    sources: list[str] = field(default_factory=lambda: ["*"])

    def sql(self) -> tuple[list[str], list[str]]:
        if "*" in self.sources:
            return [], []
        return [f"({' OR '.join(_matches('d.source', p) for p in self.sources) or '0'})"], list(self.sources)


def _matches(column: str, pattern: str) -> str:
    """`column` against one fnmatch pattern. Without a [...] class, fnmatch's `*` and `?` are
    SQLite GLOB's, and GLOB runs in SQLite (~3x faster); a class (fnmatch's [!x] is GLOB's
    [^x], and they differ on an unclosed [) is matched by fnmatch itself."""
    return f"{column} GLOB ?" if "[" not in pattern else f"cim_fnmatch({column}, ?)"


def _fnmatch(value: str | None, pattern: str | None) -> bool:
    return fnmatch.fnmatchcase(value or "", pattern or "")


def units(conn: sqlite3.Connection, *, filters: Filters | None = None, before: tuple[int, str] | None = None,
          limit: int = 50, reach: Reach | None = None, scan: int = SCAN_ROWS) -> tuple[list[Listed], int | None]:
    """Units newest first (by the sequence of their `unit.created`, which is the same in every
    pipeline agent's index and survives a rebuild), those older than `before` only, and the
    sequence to resume below (None: no more). Keyset, not OFFSET: a page far down costs what
    the first one does. Documents without a `unit.created` (a text whose unit event was lost)
    are no units; units have distinct sequences (one event each).

    Two plans, and SQLite cannot tell which is cheap: a label or exact source of few units is
    best read from its own index and sorted (at most FEW rows); one of many is best met
    walking the newest-first index until the page is full, testing each unit (reading every
    unit of a common label to sort it took ~100 ms at 150k). So each is counted up to FEW, and
    the index walked unless one has fewer. A walk reads at most `scan` rows: a filter that
    matches few of them (a rare source glob, two labels never together, a token that sees
    little) answers what it found there and resumes below the last row it read, instead of
    walking the whole index on one request (~250 ms at 300k)."""
    filters = filters or Filters()
    conn.create_function("cim_fnmatch", 2, _fnmatch, deterministic=True)
    sizes = {label: _count("SELECT 1 FROM doc_labels WHERE label = ?", conn, label) for label in filters.labels}
    rarest = min(sizes, key=lambda label: sizes[label], default=None)
    exact = filters.source and not any(c in filters.source for c in "*?[")
    few_source = bool(exact) and _count("SELECT 1 FROM docs WHERE source = ?", conn, filters.source) < FEW
    driver = rarest if rarest is not None and sizes[rarest] < FEW and not few_source else None
    where: list[str] = []
    args: list[str | int] = []
    for label in filters.labels:
        where.append("d.id IN (SELECT doc FROM doc_labels WHERE label = ?)" if label == driver
                     else "EXISTS (SELECT 1 FROM doc_labels l WHERE l.label = ? AND l.doc = d.id)")
        args.append(label)
    if filters.source:
        where.append("d.source = ?" if exact else "d.source GLOB ?")
        args.append(filters.source)
    reach_where, reach_args = (reach or Reach()).sql()
    where += reach_where
    args += reach_args
    if before:
        where.append("(d.seq, d.cid) < (?, ?)")
        args += list(before)
    walk = not (driver or few_source)
    frontier = _frontier(conn, before, scan) if walk else None
    if frontier is not None:
        where.append("(d.seq, d.cid) >= (?, ?)")
        args += list(frontier)
    table = "docs d INDEXED BY docs_seq" if walk else "docs d"
    rows = conn.execute(
        f"SELECT d.id, d.cid, d.seq, d.title, d.media_type, d.source, d.created_at FROM {table}"
        f" WHERE d.created_at != ''{''.join(f' AND {w}' for w in where)} ORDER BY d.seq DESC, d.cid DESC LIMIT ?",
        [*args, limit + 1]).fetchall()
    out = []
    for doc, cid, seq, title, media_type, source, created_at in rows[:limit]:
        labels = [r[0] for r in conn.execute("SELECT label FROM doc_labels WHERE doc = ? ORDER BY label", (doc,))]
        out.append(Listed(cid=cid, seq=seq, title=title, media_type=media_type, source=source, created_at=created_at,
                          labels=labels))
    if len(rows) > limit:
        return out, out[-1].seq
    return out, frontier[0] if frontier is not None else None


def _frontier(conn: sqlite3.Connection, before: tuple[int, str] | None, scan: int) -> tuple[int, str] | None:
    """The last of the next `scan` rows of the newest-first index below `before` (a walk of
    the covering index: ~1 ms for 20,000), or None when fewer rows are left."""
    below = "WHERE (seq, cid) < (?, ?) " if before else ""
    row = conn.execute(f"SELECT seq, cid FROM docs INDEXED BY docs_seq {below}ORDER BY seq DESC, cid DESC"
                       " LIMIT 1 OFFSET ?", [*(before or ()), scan - 1]).fetchone()
    return (int(row[0]), str(row[1])) if row else None


def _count(sql: str, conn: sqlite3.Connection, value: str) -> int:
    """Rows of `sql` (one parameter), counted up to FEW only."""
    return int(conn.execute(f"SELECT count(*) FROM ({sql} LIMIT ?)", (value, FEW)).fetchone()[0])


def counts(conn: sqlite3.Connection) -> tuple[int, int]:
    """(units known, units with indexed text)."""
    units, indexed = conn.execute("SELECT units, indexed FROM doc_counts WHERE id = 1").fetchone()
    return int(units), int(indexed)


def digest_rows(conn: sqlite3.Connection) -> list[tuple]:
    """Everything the index holds, in a stable order: to compare a rebuilt index with a live one."""
    rows = conn.execute(
        "SELECT d.cid, d.title, d.media_type, d.source, d.created_at, d.text_cid, d.language,"
        " (SELECT group_concat(label, ',') FROM (SELECT label FROM doc_labels WHERE doc = d.id ORDER BY label))"
        " FROM docs d ORDER BY d.cid").fetchall()
    for lang in LANGUAGES:
        rows += conn.execute(f"SELECT d.cid, f.title, f.body FROM fts_{lang} f JOIN docs d ON d.id = f.rowid"
                             " ORDER BY d.cid").fetchall()
    return rows
