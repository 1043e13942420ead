"""The relation graph of units: a projection of unit and step events.

Edges: `references` (a unit's text names another's CID, from the relate step),
`derived-from` (lineage: a revision's parents) and `same-source` (units that share a
non-empty source).
"""

from __future__ import annotations

from collections import defaultdict

from ..events import StoredEvent
from ..store.events import UnitCreated
from .events import step_outputs


class RelationGraph:
    def __init__(self) -> None:
        self.out: dict[str, set[tuple[str, str]]] = defaultdict(set)  # cid -> {(type, target)}
        self.into: dict[str, set[tuple[str, str]]] = defaultdict(set)  # cid -> {(type, source cid)}
        self.by_source: dict[str, set[str]] = defaultdict(set)
        self.source_of: dict[str, str] = {}
        self.titles: dict[str, str] = {}

    def _edge(self, kind: str, a: str, b: str) -> None:
        self.out[a].add((kind, b))
        self.into[b].add((kind, a))

    def apply(self, e: StoredEvent) -> None:
        created = e.typed() if e.type == "unit.created" else None
        if isinstance(created, UnitCreated):
            cid = created.cid
            self.titles[cid] = created.title
            for parent in created.parents:
                self._edge("derived-from", cid, parent)
            if created.source:
                self.by_source[created.source].add(cid)
                self.source_of[cid] = created.source
        for cid, out in step_outputs(e, "relate"):
            for rel in out.get("relations") or []:
                self._edge(rel.get("type", "references"), cid, rel["target"])

    def related(self, cid: str) -> list[dict]:
        rows = [{"type": t, "direction": "out", "cid": c, "title": self.titles.get(c, "")} for t, c in sorted(self.out.get(cid, ()))]
        rows += [{"type": t, "direction": "in", "cid": c, "title": self.titles.get(c, "")} for t, c in sorted(self.into.get(cid, ()))]
        source = self.source_of.get(cid)
        if source:
            rows += [{"type": "same-source", "direction": "both", "cid": c, "title": self.titles.get(c, "")}
                     for c in sorted(self.by_source[source] - {cid})]
        return rows
