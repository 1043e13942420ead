"""The CID encoder against an independent implementation (the `multiformats` package)."""

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multiformats import CID, multihash

from cim import cid
from cim.errors import CimError, InvalidCid


def reference(data: bytes) -> str:
    return str(CID("base32", 1, "raw", multihash.digest(data, "sha2-256")))


@given(st.binary(max_size=4096))
def test_cid_matches_multiformats(data):
    assert cid.compute(data) == reference(data)


@given(st.binary(max_size=4096))
def test_cid_round_trips_to_its_digest(data):
    c = cid.compute(data)
    assert cid.digest_of(c) == hashlib.sha256(data).digest()
    assert c.startswith("bafkrei")


@given(st.lists(st.binary(max_size=300), max_size=10))
def test_incremental_hasher_equals_one_shot(parts):
    h = cid.Hasher()
    for p in parts:
        h.update(p)
    assert h.cid() == cid.compute(b"".join(parts))
    assert h.size == sum(map(len, parts))


@pytest.mark.parametrize(
    "bad, says",
    [
        ("", "non-empty"),
        ("Qmabc", "base32"),
        ("bafkrei", "characters"),
        ("b" + "1" * 58, "base32"),
        # a valid base32 CIDv1 but dag-pb codec, not raw
        (str(CID("base32", 1, "dag-pb", multihash.digest(b"x", "sha2-256"))), "raw codec"),
        (cid.compute(b"x").upper(), "base32"),
    ],
)
def test_bad_cids_are_refused_with_the_rule(bad, says):
    with pytest.raises(InvalidCid) as err:
        cid.validate(bad)
    assert says in str(err.value)
    assert isinstance(err.value, CimError)
    assert err.value.field == "cid"


@given(st.from_regex(r"bafkrei[a-z2-7]{52}", fullmatch=True))
def test_the_fast_check_agrees_with_the_full_decoder(candidate):
    try:
        cid.digest_of(candidate)
        full = True
    except InvalidCid:
        full = False
    fast = bool(cid._CANONICAL.match(candidate))
    assert fast == full


def test_a_trailing_line_break_is_no_part_of_any_name_that_becomes_a_subject_or_a_key():
    """`re.match` with `$` accepts a final "\\n": each of these checks must refuse it (a CID
    or a type becomes a NATS subject token or a KV key)."""
    from cim.events.envelope import Event
    from cim.store.units import Unit

    good = cid.compute(b"x")
    with pytest.raises(InvalidCid):
        cid.validate(good + "\n")
    with pytest.raises(ValueError):
        Event(type="unit.created", aggregate_id="abc\n")
    # A unit's media type and labels were checked the same way: one stored then still reads,
    # without the line break, and a new one is stored without it.
    from cim.store.events import UnitLabeled

    old = Unit(cid=good, size=1, media_type="text/plain\n", labels=["ok\n"], created_at="2026-01-01T00:00:00Z")
    assert (old.media_type, old.labels) == ("text/plain", ("ok",))
    assert UnitLabeled(labels=["ok\n", "b"], by="p/s").labels == ["b", "ok"]
    with pytest.raises(ValueError):
        Unit(cid=good, size=1, media_type="text/plain\n\n", created_at="2026-01-01T00:00:00Z")
