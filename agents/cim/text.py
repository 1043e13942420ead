"""Words and sentences, shared by the search index, summaries and relation finding."""

from __future__ import annotations

import re

WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)?", re.UNICODE)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")
CID_REF = re.compile(r"\bbafkrei[a-h][a-z2-7]{50}[aeimquy4]\b")

# Small and English-only on purpose: it keeps "the" from ranking; other languages still work.
STOPWORDS = frozenset([
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "from", "has", "have", "he", "her", "his",
    "i", "if", "in", "into", "is", "it", "its", "me", "my", "no", "not", "of", "on", "or", "our", "she", "so",
    "than", "that", "the", "their", "them", "then", "there", "these", "they", "this", "to", "too", "us", "was",
    "we", "were", "what", "when", "where", "which", "who", "why", "will", "with", "you", "your",
])


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def terms(text: str) -> list[str]:
    """Index terms: lower-case words, without stopwords and one-letter words."""
    return [w for w in words(text) if len(w) > 1 and w not in STOPWORDS]


def sentences(text: str) -> list[str]:
    flat = re.sub(r"\s+", " ", text).strip()
    return [s.strip() for s in SENTENCE_END.split(flat) if s.strip()]
