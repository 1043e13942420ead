"""Labels added by pipeline steps (unit.labeled) count for the tiering policies."""

from datetime import UTC, datetime

from cim import cid
from cim.events import Event, StoredEvent
from cim.tier.locations import LocationIndex
from cim.tier.policies import Policy


def stored(seq: int, event: Event) -> StoredEvent:
    return StoredEvent.from_message(event.subject, seq, event.headers(), event.payload())


def test_a_retention_label_added_by_a_pipeline_selects_the_unit_for_its_tier_policy():
    c = cid.compute(b"contract")
    created = Event(type="unit.created", aggregate_id=c, data={
        "cid": c, "size": 8, "labels": ["contract"], "created_at": datetime(2020, 1, 1, tzinfo=UTC).isoformat()})
    labeled = Event(type="unit.labeled", aggregate_id=c, data={"labels": ["tier:archive"], "by": "p/keep@retention"})
    index = LocationIndex().apply_all([stored(1, created), stored(2, labeled)])
    unit = index.units[c]
    assert unit.labels == ("contract", "tier:archive")
    archive = Policy.model_validate({"name": "archive", "from": "hot", "to": "archive", "action": "move", "labels": ["tier:archive"]})
    other = Policy.model_validate({"name": "warm", "from": "hot", "to": "warm", "action": "move", "labels": ["tier:warm"]})
    assert archive.matches(unit, None) and not other.matches(unit, None)
