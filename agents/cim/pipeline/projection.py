"""The pipeline agent's read models, fed from the event stream: the search index (search.py)
and the relation graph (graph.py), in one projection database under one checkpoint."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable

from .. import cid as cidlib
from ..errors import InvalidCid
from ..events import StoredEvent
from ..store.events import UnitCreated, UnitLabeled
from . import graph, search
from .events import step_outputs

log = logging.getLogger("cim.pipeline")

SUBJECTS = ["cim.evt.steps.*.done", "cim.evt.unit.*.created", "cim.evt.unit.*.labeled"]
SCHEMA = search.SCHEMA + graph.SCHEMA
VERSION = 2  # raise it when SCHEMA or what the rows mean changes: older files are rebuilt

Write = Callable[[sqlite3.Connection], None]


async def prepare(batch: list[StoredEvent], read_texts: Callable[[list[str]], Awaitable[dict[str, bytes]]]) -> Write:
    """Read what the batch's index records point to (outside the transaction), then return
    the function that writes the batch's rows."""
    # Events are hostile input: only a well-formed CID is read (anything else is skipped per
    # event below), so one odd record cannot stall the whole projection.
    wanted = [str(t) for e in batch for _, out in step_outputs(e, "index") if _cid(t := out.get("text_cid"))]
    texts = await read_texts(list(dict.fromkeys(wanted))) if wanted else {}

    def write(conn: sqlite3.Connection) -> None:
        w = search.Writer(conn)
        for e in batch:
            try:
                apply(w, e, texts)
            except sqlite3.DatabaseError:
                raise
            except Exception as err:  # one bad event must not stop the projection
                log.warning("projection skipped event #%d: %s", e.seq, err)
        w.flush()

    return write


def _cid(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        cidlib.validate(value)
    except InvalidCid:
        return False
    return True


def apply(w: search.Writer, e: StoredEvent, texts: dict[str, bytes]) -> None:
    conn = w.conn
    if e.problem:
        return
    if e.type == "unit.created":
        created = e.typed()
        if isinstance(created, UnitCreated):
            w.add_unit(cid=created.cid, title=created.title, media_type=created.media_type,
                            source=created.source, created_at=created.created_at.isoformat()[:19],
                            labels=list(created.labels), seq=e.seq)
            for parent in created.parents:
                graph.add_edge(conn, "derived-from", created.cid, parent)
        return
    if e.type == "unit.labeled":
        labeled = e.typed()
        if isinstance(labeled, UnitLabeled):
            w.add_labels(e.aggregate_id, labeled.labels)
        return
    for cid, out in step_outputs(e, "index"):
        text_cid = out.get("text_cid")
        if text_cid is not None and not _cid(text_cid):
            raise ValueError(f"its index step names {str(text_cid)[:80]!r} as the text, which is not a CID")
        if text_cid:
            data = texts.get(text_cid)
            if data is None:
                log.warning("unit %s: its text %s could not be read; it is searchable by title only", cid, text_cid)
                continue
            w.set_text(cid, text=data.decode("utf-8", "replace"), text_cid=text_cid,
                            title=str(out.get("title") or ""), language=str(out.get("language") or "english"), seq=e.seq)
    for cid, out in step_outputs(e, "relate"):
        for rel in out.get("relations") or []:
            graph.add_edge(conn, str(rel.get("type", "references")), cid, str(rel["target"]))
