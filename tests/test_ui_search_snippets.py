"""The Units page shows the pipeline agent's snippets with their matches marked: the text is
escaped whatever it holds, and spans that do not fit the snippet cannot break the markup."""

from __future__ import annotations

from cim.ui.search import highlight


def test_matches_are_marked_and_everything_else_is_escaped():
    snippet = "a <b>zanzibar</b> & Zanzibar"
    spans = [(20, 28), (5, 13)]
    assert str(highlight(snippet, spans)) == "a &lt;b&gt;<mark>zanzibar</mark>&lt;/b&gt; &amp; <mark>Zanzibar</mark>"


def test_spans_out_of_order_overlapping_or_outside_the_snippet_are_cut_to_fit():
    assert str(highlight("<one> two", [(7, 99), (-5, 2), (1, 3), (4, 4)])) == "<mark>&lt;o</mark><mark>n</mark>e&gt; t<mark>wo</mark>"
    assert str(highlight("plain", [])) == "plain"
