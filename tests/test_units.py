"""Information units: immutable, validated, with lineage."""

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from cim import cid
from cim.errors import InvalidInput
from cim.store.units import Unit

A = cid.compute(b"a")
B = cid.compute(b"b")


def test_a_unit_cannot_be_changed():
    u = Unit.create(cid=A, size=1, title="t", metadata={"k": {"n": [1, 2]}})
    with pytest.raises(ValidationError):
        u.title = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        u.metadata["k"]["n"] = 3  # type: ignore[index]
    assert u.model_dump(mode="json")["metadata"] == {"k": {"n": [1, 2]}}


def test_revise_returns_a_new_unit_naming_its_parent_and_leaves_the_old_one():
    u = Unit.create(cid=A, size=1, title="first", labels=["x"])
    before = u.model_dump()
    v = u.revise(cid=B, size=1, title="second")
    assert v.parents == (A,)
    assert (v.title, v.labels, v.cid) == ("second", ("x",), B)
    assert u.model_dump() == before


def test_revision_with_the_same_content_is_refused():
    u = Unit.create(cid=A, size=1)
    with pytest.raises(InvalidInput, match="new content"):
        u.revise(cid=A, size=1)


def test_labels_are_sorted_and_unique():
    assert Unit.create(cid=A, size=1, labels=["b", "a", "b"]).labels == ("a", "b")


@pytest.mark.parametrize(
    "fields, field, rule",
    [
        ({"cid": "nope", "size": 1}, "cid", "base32"),
        ({"cid": A}, "size", "required"),
        ({"cid": A, "size": -1}, "size", "greater than or equal"),
        ({"cid": A, "size": 1, "media_type": "text"}, "media_type", "media type"),
        ({"cid": A, "size": 1, "labels": ["Bad Label"]}, "labels", "not a label"),
        ({"cid": A, "size": 1, "parents": [A, A]}, "parents", "twice"),
        ({"cid": A, "size": 1, "created_at": datetime(2020, 1, 1)}, "created_at", "time zone"),
        ({"cid": A, "size": 1, "colour": "red"}, "colour", "Extra inputs"),
    ],
)
def test_invalid_units_name_the_field_and_the_rule(fields, field, rule):
    with pytest.raises(InvalidInput) as err:
        Unit.create(**fields)
    assert err.value.field == field
    assert rule in err.value.rule


def test_times_are_kept_in_utc():
    u = Unit.create(cid=A, size=1, created_at=datetime(2026, 1, 1, tzinfo=UTC))
    assert u.created_at.tzinfo == UTC
