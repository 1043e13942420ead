"""The event envelope survives the trip through NATS headers and body."""

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cim import cid
from cim.errors import InvalidInput, UnknownEventType
from cim.events import Event, StoredEvent
from cim.events.envelope import validated

tokens = st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True)
def _trimmed(s: str) -> bool:  # ids and agent names have no blank at either end (Event refuses one)
    return bool(s) and s == s.strip()


texts = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=40).filter(_trimmed)
# CloudEvents sources are absolute URIs: a scheme, then anything but blanks and control characters.
sources = st.builds(lambda scheme, rest: f"{scheme}:{rest}", st.from_regex(r"[a-z][a-z0-9+.-]{0,8}", fullmatch=True),
                    st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF, exclude_categories=("Cs", "Zs", "Zl", "Zp"),
                                          exclude_characters="\x7f"),
                            min_size=1, max_size=40).filter(lambda rest: not any(c.isspace() for c in rest)))
# Ids travel in headers, percent-encoded where the NATS binding asks: blanks, quotes, '%', non-ASCII
# (no control characters and no blank at either end: Event refuses those).
any_ids = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF, exclude_categories=("Cs",),
                                exclude_characters="\x7f"), min_size=1, max_size=40).filter(_trimmed)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


@given(
    aggregate_id=tokens,
    child=st.binary(max_size=64).map(cid.compute),
    source=sources,
    agent=texts,
    version=st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=10),
    event_id=any_ids,
    correlation=st.none() | any_ids,
    causation=st.none() | any_ids,
    when=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
)
def test_envelope_round_trip(aggregate_id, child, source, agent, version, event_id, correlation, causation, when):
    e = validated(Event(
        type="unit.revised", aggregate_id=aggregate_id, data={"child": child}, source=source, agent=agent,
        agent_version=version, id=event_id, correlation_id=correlation, causation_id=causation, time=when,
    ))
    assert all(v.isascii() and " " not in v for k, v in e.headers().items() if k.startswith("ce-"))
    back = StoredEvent.from_message(e.subject, 7, e.headers(), e.payload())
    assert back.problem is None and back.known
    assert (back.type, back.aggregate, back.aggregate_id, back.id) == ("unit.revised", "unit", aggregate_id, e.id)
    assert (back.source, back.agent, back.agent_version) == (source, agent, version)
    assert (back.correlation_id, back.causation_id) == (correlation, causation)
    assert back.time == when
    assert back.data == {"child": child}
    assert back.seq == 7


@given(json_values)
def test_unknown_types_read_back_are_kept_with_their_data(value):
    e = Event(type="future.thing", aggregate_id="x", data={"v": value})
    back = StoredEvent.from_message(e.subject, 1, e.headers(), e.payload())
    assert not back.known
    assert back.data == {"v": value}


def test_appending_an_unknown_type_is_refused():
    with pytest.raises(UnknownEventType, match="unit.created"):
        validated(Event(type="unit.exploded", aggregate_id="x"))


def test_data_that_does_not_match_its_type_names_the_field():
    with pytest.raises(InvalidInput) as err:
        validated(Event(type="unit.revised", aggregate_id="x", data={"child": "not-a-cid"}))
    assert err.value.field == "data.child"


def test_a_non_json_body_is_surfaced_not_dropped():
    back = StoredEvent.from_message("cim.evt.unit.x.revised", 3, {"ce-type": "unit.revised"}, b"\xff not json")
    assert back.problem and "not JSON" in back.problem
    assert back.typed() is None


@pytest.mark.parametrize("bad", ["a.b", "*", ">", "", "with space"])
def test_aggregate_ids_must_be_subject_tokens(bad):
    with pytest.raises(ValueError):
        Event(type="unit.revised", aggregate_id=bad)


def _nested(depth: int) -> bytes:
    return b'{"cid":' + b"[" * depth + b"]" * depth + b"}"


@given(
    body=st.binary(max_size=256)
    | st.integers(1, 20_000).map(_nested)
    | st.integers(1, 20_000).map(lambda n: b"{" * n)
    | json_values.map(lambda v: json.dumps(v).encode()),
    type_name=st.sampled_from(["unit.created", "unit.located", "unit.expired", "no.such"]),
)
def test_a_reader_survives_any_body(body, type_name):
    """Whatever bytes an event carries, reading it gives an event (with a problem if the
    body is unusable), never an exception."""
    headers = {"Nats-Msg-Id": "x", "ce-type": type_name}
    aggregate, event = type_name.split(".")
    e = StoredEvent.from_message(f"cim.evt.{aggregate}.abc.{event}", 3, headers, body)
    assert e.seq == 3 and e.type == type_name
    if e.problem is None:
        json.dumps(e.data)  # whatever was accepted can be printed again


def test_a_body_nested_five_thousand_deep_is_surfaced_not_raised():
    e = StoredEvent.from_message("cim.evt.unit.abc.created", 9, {"ce-type": "unit.created"}, _nested(5000))
    assert e.problem and "nests deeper than 64 levels" in e.problem
    assert e.typed() is None


@pytest.mark.parametrize("claimed", ["unit.expired", "dev.cim.unit.expired", "com.other.unit.created"])
def test_the_type_comes_from_the_subject_and_a_header_that_disagrees_is_a_problem(claimed):
    """Publish permissions are per subject: a writer allowed `unit.created` who claims
    `unit.expired` in the header (in the old short form or the wire form), or the right type
    under someone else's prefix, gets an event of type `unit.created` with a problem."""
    e = StoredEvent.from_message("cim.evt.unit.abc.created", 4, {"ce-type": claimed}, b'{"policy": "p", "reason": "r"}')
    assert e.type == "unit.created"
    assert e.problem and f"type header says {claimed!r}" in e.problem
    assert e.typed() is None


@pytest.mark.parametrize("claimed", ["unit.revised", "dev.cim.unit.revised"])
def test_a_type_header_in_either_form_that_matches_the_subject_is_believed(claimed, child=cid.compute(b"c")):
    e = StoredEvent.from_message("cim.evt.unit.abc.revised", 4, {"ce-type": claimed}, json.dumps({"child": child}).encode())
    assert (e.type, e.problem) == ("unit.revised", None)
    assert e.typed() is not None


def test_a_writer_builds_an_event_from_its_registered_model_and_a_reader_gets_the_model_back():
    """Typed events end to end (issue 15 item 3): the type comes from the model, and a stored
    event reads back as that model; a model nobody registered is refused by name."""
    from pydantic import BaseModel

    from cim.store.events import UnitLabeled

    event = Event.of(UnitLabeled(labels=["invoice"], by="p/classify@1"), "bafkreiabc", agent="cim-pipeline")
    assert event.type == "unit.labeled" and event.subject == "cim.evt.unit.bafkreiabc.labeled"
    stored = StoredEvent.from_message(event.subject, 7, event.headers(), event.payload())
    assert stored.typed() == UnitLabeled(labels=["invoice"], by="p/classify@1")

    class Stray(BaseModel):
        x: int = 1

    with pytest.raises(InvalidInput, match="Stray is not a registered event model"):
        Event.of(Stray(), "a1")
    assert json.loads(event.payload())["labels"] == ["invoice"]


# --- ids and times that would break a header, a log line or a webhook -----------------------


@pytest.mark.parametrize("field", ["id", "correlation_id", "causation_id"])
@pytest.mark.parametrize("bad", ["a\nb", "tab\there", "del\x7f", " leading", "trailing ", "\udcff lone surrogate"])
def test_ids_with_control_characters_blanks_at_an_end_or_lone_surrogates_are_refused_by_name(field, bad):
    with pytest.raises(InvalidInput) as err:
        Event(type="unit.labeled", aggregate_id="x", data={"labels": [], "by": "t"}, **{field: bad})
    assert err.value.field == field
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("bad", ["urn:x\n", "urn:x\x00y", "urn:\udcff"])
def test_a_source_with_a_trailing_newline_or_a_control_character_is_not_an_absolute_uri(bad):
    with pytest.raises(InvalidInput, match="not an absolute URI") as err:
        Event(type="unit.labeled", aggregate_id="x", source=bad)
    assert err.value.field == "source"


def test_a_header_that_decodes_to_control_characters_is_kept_as_sent_and_flagged():
    headers = {**Event(type="unit.labeled", aggregate_id="x", data={"labels": [], "by": "t"}).headers(),
               "ce-id": "evil%0AX", "ce-correlationid": "c%00", "Nats-Msg-Id": "evil"}
    e = StoredEvent.from_message("cim.evt.unit.x.labeled", 5, headers, b'{"labels": [], "by": "t"}')
    assert (e.id, e.correlation_id) == ("evil%0AX", "c%00")
    assert e.problem and "ce-id header holds control characters" in e.problem
    assert e.structured()["id"] == "evil%0AX"
    # An old-form event's raw header (from a client that is not nats-py) is encoded the same way.
    old = StoredEvent.from_message("cim.evt.unit.x.labeled", 6, {"ce-type": "unit.labeled", "ce-id": "a\x01b"},
                                   b'{"labels": [], "by": "t"}')
    assert old.id == "a%01b" and old.problem


@pytest.mark.parametrize("stored", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2025-01-01T00:00:00"])
def test_a_time_out_of_utc_range_or_without_offset_is_flagged_and_the_structured_form_still_answers(stored):
    e = StoredEvent.from_message("cim.evt.unit.x.labeled", 5, {"ce-type": "dev.cim.unit.labeled", "ce-time": stored},
                                 b'{"labels": [], "by": "t"}')
    assert e.problem and "ce-time" in e.problem
    assert e.structured()["time"] == stored  # as stored: never an OverflowError


def test_an_event_time_that_cannot_be_given_in_utc_is_refused():
    with pytest.raises(InvalidInput) as err:
        Event(type="unit.labeled", aggregate_id="x", time=datetime.fromisoformat("0001-01-01T00:00:00+01:00"))
    assert err.value.field == "time"


def test_an_event_stored_with_no_source_and_no_agent_names_no_machine():
    from cim.events.envelope import source_for

    bare = StoredEvent.from_message("cim.evt.unit.x.labeled", 1, {"ce-type": "unit.labeled"}, b"{}")
    assert bare.structured()["source"] == "urn:cim:unknown"
    by_cli = StoredEvent.from_message("cim.evt.unit.x.labeled", 1, {"ce-type": "unit.labeled", "cim-agent": "cim-cli"}, b"{}")
    assert by_cli.structured()["source"] == "urn:cim:cli"  # not the reading hub's own user@host
    # Any text a writer put in `cim-agent` names a source; remembering them all would grow for ever.
    for i in range(500):
        StoredEvent.from_message("cim.evt.unit.x.labeled", i, {"ce-type": "unit.labeled", "cim-agent": f"a{i}"},
                                 b"{}").structured()
    assert source_for.cache_info().currsize <= 64


def test_the_cli_refuses_an_id_with_a_newline_or_bad_bytes_in_one_line(cli):
    for bad in ("a\nb", "\udcff"):  # the second reaches the command as the byte 0xff
        r = cli("events", "append", "unit.labeled", "x", "--data", '{"labels": [], "by": "t"}', "--id", bad,
                check=False, server="nats://127.0.0.1:1")
        assert r.returncode != 0
        assert "Traceback" not in r.stderr, r.stderr
        [line] = r.stderr.strip().splitlines()
        assert "id" in line and ("control character" in line or "not valid Unicode" in line), line
