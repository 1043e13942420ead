"""The full-text search index: a projection of the `index` steps recorded in `steps.done`.

It is rebuilt by replaying the event stream from the start (the pipeline agent does so on
every start) and kept current by following it. Ranking is BM25.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..events import StoredEvent
from ..text import terms
from .events import step_outputs

K1, B = 1.2, 0.75


@dataclass
class Hit:
    cid: str
    score: float
    title: str
    snippet: str


class SearchIndex:
    def __init__(self) -> None:
        self.postings: dict[str, dict[str, int]] = {}
        self.lengths: dict[str, int] = {}
        self.titles: dict[str, str] = {}
        self.texts: dict[str, str] = {}  # for snippets; bounded by what the extract step keeps
        self.last_seq = 0

    async def apply(self, e: StoredEvent, read_text: Callable[[str], Awaitable[bytes]]) -> None:
        self.last_seq = max(self.last_seq, e.seq)
        for cid, out in step_outputs(e, "index"):
            text_cid = out.get("text_cid")
            if text_cid:
                text = (await read_text(text_cid)).decode("utf-8", "replace")
                self.add(cid, text, out.get("title") or "")

    def add(self, cid: str, text: str, title: str) -> None:
        self.remove(cid)
        tf = Counter(terms(f"{title} {text}"))
        for term, n in tf.items():
            self.postings.setdefault(term, {})[cid] = n
        self.lengths[cid] = sum(tf.values())
        self.titles[cid] = title
        self.texts[cid] = text

    def remove(self, cid: str) -> None:
        if cid not in self.lengths:
            return
        for term in set(terms(f"{self.titles[cid]} {self.texts[cid]}")):
            docs = self.postings.get(term)
            if docs is not None:
                docs.pop(cid, None)
                if not docs:
                    del self.postings[term]
        for table in (self.lengths, self.titles, self.texts):
            table.pop(cid, None)

    def search(self, query: str, limit: int = 10) -> list[Hit]:
        q = terms(query)
        n = len(self.lengths)
        if not q or not n:
            return []
        avg = sum(self.lengths.values()) / n
        scores: dict[str, float] = defaultdict(float)
        for term in set(q):
            docs = self.postings.get(term, {})
            idf = math.log(1 + (n - len(docs) + 0.5) / (len(docs) + 0.5))
            for cid, tf in docs.items():
                norm = tf * (K1 + 1) / (tf + K1 * (1 - B + B * self.lengths[cid] / avg))
                scores[cid] += idf * norm
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
        return [Hit(cid, round(score, 4), self.titles[cid], self._snippet(cid, q)) for cid, score in ranked]

    def _snippet(self, cid: str, q: list[str], width: int = 160) -> str:
        text = re.sub(r"\s+", " ", self.texts[cid])
        lower = text.lower()
        pos = min((i for i in (lower.find(t) for t in q) if i >= 0), default=0)
        start = max(0, pos - width // 3)
        return ("…" if start else "") + text[start:start + width].strip() + ("…" if start + width < len(text) else "")

    def snapshot(self) -> dict:
        """Everything the index holds, for comparing a rebuilt index with a live one."""
        return {"postings": {t: dict(sorted(d.items())) for t, d in sorted(self.postings.items())},
                "lengths": dict(sorted(self.lengths.items())), "titles": dict(sorted(self.titles.items()))}
