"""The search index's query language on SQLite FTS5, as the README documents it: stemming,
phrases, prefixes, OR, exclusion, filters, facets and snippets. (SQLite is the engine
itself, not a stand-in: these are the queries the pipeline agent runs.)"""

from __future__ import annotations

import sqlite3

import pytest

from cim.errors import InvalidInput
from cim.pipeline import graph, search


@pytest.fixture
def conn():
    c = sqlite3.connect(":memory:", isolation_level=None)
    c.executescript(search.SCHEMA + graph.SCHEMA)
    docs = [
        ("c1", "Wind power", "text/markdown", "inbox/a", "2026-01-05", ["energy"],
         "The turbines were running all night, turning wind into electricity."),
        ("c2", "Solar notes", "text/plain", "inbox/b", "2026-02-10", ["energy", "draft"],
         "Solar panels convert sunlight. A quick brown fox ran past the panels."),
        ("c3", "Groceries", "text/plain", "cli", "2026-03-01", [],
         "Apples, bread and cheese; the brown bread was quick to go."),
        ("c4", "Scan 17", "application/pdf", "inbox/a", "2026-03-02", ["scan"], ""),
    ]
    for i, (cid, title, media, source, created, labels, text) in enumerate(docs, 1):
        search.add_unit(c, cid=cid, title=title, media_type=media, source=source, created_at=created, labels=labels, seq=i)
        if text:
            search.set_text(c, cid, text=text, text_cid=f"t{cid}", title=title, language="english", seq=10 + i)
    return c


def cids(hits):
    if isinstance(hits, tuple):  # search() answers (hits, capped)
        hits = hits[0]
    return [h.cid for h in hits]


def test_english_stemming_finds_other_forms_of_a_word(conn):
    assert cids(search.search(conn, "run")) == ["c1"]  # "running" (Porter leaves the irregular "ran" alone)
    assert "c1" in cids(search.search(conn, "turbine"))
    assert cids(search.search(conn, "converting")) == ["c2"]


def test_a_phrase_matches_those_words_in_that_order_only(conn):
    assert cids(search.search(conn, '"brown fox"')) == ["c2"]
    assert cids(search.search(conn, "brown fox")) == ["c2"]
    assert set(cids(search.search(conn, "brown quick"))) == {"c2", "c3"}
    assert cids(search.search(conn, '"fox brown"')) == []


def test_prefix_or_and_exclusion(conn):
    assert set(cids(search.search(conn, "elec*"))) == {"c1"}
    assert set(cids(search.search(conn, "sunlight OR cheese"))) == {"c2", "c3"}
    assert cids(search.search(conn, "brown -fox")) == ["c3"]
    with pytest.raises(InvalidInput, match="at least 2 letters"):
        search.search(conn, "e*")
    with pytest.raises(InvalidInput, match="nothing to look for"):
        search.search(conn, "-fox")


def test_titles_are_searchable_for_every_unit_and_weigh_more(conn):
    assert cids(search.search(conn, "scan")) == ["c4"]  # no text at all: found by its title
    assert cids(search.search(conn, "solar"))[0] == "c2"


def test_filters_by_label_media_type_source_and_date(conn):
    assert cids(search.search(conn, "brown", filters=search.Filters(labels=["energy"]))) == ["c2"]
    assert cids(search.search(conn, "brown", filters=search.Filters(labels=["energy", "missing"]))) == []
    assert set(cids(search.search(conn, "panels OR bread", filters=search.Filters(media_type="text/*")))) == {"c2", "c3"}
    assert cids(search.search(conn, "wind OR scan", filters=search.Filters(media_type="application/pdf"))) == ["c4"]
    assert set(cids(search.search(conn, "wind OR scan", filters=search.Filters(source="inbox/*")))) == {"c1", "c4"}
    assert cids(search.search(conn, "brown", filters=search.Filters(since="2026-03-01"))) == ["c3"]
    assert cids(search.search(conn, "brown", filters=search.Filters(until="2026-03-01"))) == ["c2"]


def test_facets_count_the_matches(conn):
    f = search.facets(conn, "brown OR wind")
    assert dict(map(tuple, f["labels"])) == {"energy": 2, "draft": 1}
    assert dict(map(tuple, f["media_types"])) == {"text/plain": 2, "text/markdown": 1}
    assert dict(map(tuple, f["sources"])) == {"inbox/a": 1, "inbox/b": 1, "cli": 1}


def test_snippets_mark_the_matched_words(conn):
    (hit,), _ = search.search(conn, "electricity")
    assert [hit.snippet[a:b] for a, b in hit.highlights] == ["electricity"]
    assert "\x02" not in hit.snippet and "\x03" not in hit.snippet


def test_query_syntax_is_never_passed_through(conn):
    # FTS5 operators typed by a user are words to look for, not syntax (and not an error).
    for q in ['NEAR(brown fox)', 'title:bread', 'brown AND', '"unclosed', 'a" OR "b', "^brown", "{title}: bread"]:
        search.search(conn, q)  # no sqlite3.OperationalError
    assert cids(search.search(conn, "title:bread")) == []  # not a column filter: the phrase "title bread"
    assert cids(search.search(conn, "brown AND")) == ["c3"]  # AND is a word here: c3 has "and", c2 has not


def test_control_markers_in_a_text_cannot_forge_highlights(conn):
    search.add_unit(conn, cid="c9", title="evil", media_type="text/plain", source="", created_at="", labels=[], seq=99)
    search.set_text(conn, "c9", text="before \x02forged\x03 after zebra", text_cid="t9", title="evil", language="english", seq=100)
    (hit,), _ = search.search(conn, "zebra")
    assert [hit.snippet[a:b] for a, b in hit.highlights] == ["zebra"]


def test_more_like_this_ranks_units_sharing_distinctive_words(conn):
    search.add_unit(conn, cid="c5", title="Turbines", media_type="text/plain", source="", created_at="", labels=[], seq=20)
    search.set_text(conn, "c5", text="Wind turbines turn wind into electricity at night.", text_cid="t5", title="Turbines",
                    language="english", seq=21)
    similar = cids(search.similar(conn, "c1"))
    assert similar[0] == "c5" and "c1" not in similar


def test_simple_language_does_not_stem(conn):
    search.add_unit(conn, cid="c6", title="Lauf", media_type="text/plain", source="", created_at="", labels=[], seq=30)
    search.set_text(conn, "c6", text="Die Hunde laufen schnell", text_cid="t6", title="Lauf", language="simple", seq=31)
    assert cids(search.search(conn, "laufen")) == ["c6"]
    assert cids(search.search(conn, "running")) == ["c1"]  # the English index still stems


def test_related_lists_edges_and_same_source(conn):
    graph.add_edge(conn, "references", "c1", "c2")
    rel = graph.related(conn, "c1")
    assert {"type": "references", "direction": "out", "cid": "c2", "title": "Solar notes"} in rel
    assert {"type": "same-source", "direction": "both", "cid": "c4", "title": "Scan 17"} in rel
    assert {"type": "references", "direction": "in", "cid": "c1", "title": "Wind power"} in graph.related(conn, "c2")


def test_past_the_candidate_cap_the_newest_matches_are_ranked_and_the_answer_says_so(conn, monkeypatch):
    monkeypatch.setattr(search, "CANDIDATES", 2)
    hits, capped = search.search(conn, "brown OR wind OR scan")  # c1, c2, c3, c4 match
    assert capped and set(cids(hits)) <= {"c3", "c4"} and cids(hits)
    hits, capped = search.search(conn, "brown OR wind OR scan", filters=search.Filters(source="inbox/*"))
    assert not capped and set(cids(hits)) == {"c1", "c2", "c4"}  # a filter ranks every match
    hits, capped = search.search(conn, "sunlight")
    assert not capped and cids(hits) == ["c2"]


def test_dates_are_compared_as_utc_instants_and_media_types_lower_case():
    from pydantic import ValidationError

    from cim.pipeline.api import SearchRequest

    r = SearchRequest(query="x", since="2026-01-05T11:00:00+02:00", until="2026-01-06", media_type="Text/*")
    assert (r.since, r.until, r.media_type) == ("2026-01-05T09:00:00", "2026-01-06T00:00:00", "text/*")
    for bad in ("yesterday", "20261301", "2026-13-01", "0001-01-01T00:00:00+05:00"):  # the last: before year 1 in UTC
        with pytest.raises(ValidationError, match="ISO 8601"):
            SearchRequest(query="x", since=bad)
