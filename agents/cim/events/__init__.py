"""The event store on JetStream: envelopes, typed events, append and read."""

from .envelope import Event, StoredEvent
from .store import Appended, EventStore
from .types import event_type, known_types, model_for

__all__ = ["Appended", "Event", "EventStore", "StoredEvent", "event_type", "known_types", "model_for"]
