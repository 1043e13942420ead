"""The store agent's metrics: units stored by any writer, and the event store's own numbers.

Units are counted where they become units: every `unit.created` appended to CIM_EVENTS,
by whichever writer (`cim units put`, the hub, the store agent, a pipeline's texts), as the
store agent follows the stream. The event store's size and its appends are what JetStream
itself says of CIM_EVENTS, read when Prometheus scrapes.
"""

from __future__ import annotations

from nats.aio.client import Client
from prometheus_client import Counter
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..metrics import registry
from ..names import EVENTS_STREAM

REGISTRY = registry("store")

UNITS_STORED = Counter(
    "cim_units_stored_total",
    "Units stored by any writer (unit.created events appended to CIM_EVENTS since this agent started)",
    registry=REGISTRY)
UNIT_BYTES_STORED = Counter(
    "cim_units_stored_bytes_total", "Content bytes of the units counted in cim_units_stored_total", registry=REGISTRY)


async def event_store(nc: Client) -> list[Metric]:
    """CIM_EVENTS as JetStream counts it: every append ever (its last sequence: the stream
    refuses deletes and purges, so it only grows), and what it holds now."""
    state = (await nc.jetstream(timeout=3).stream_info(EVENTS_STREAM)).state
    appended = CounterMetricFamily("cim_events_appended", "Events appended to CIM_EVENTS (its last sequence)")
    appended.add_metric([], float(state.last_seq))
    messages = GaugeMetricFamily("cim_event_stream_messages", "Events CIM_EVENTS holds")
    messages.add_metric([], float(state.messages))
    size = GaugeMetricFamily("cim_event_stream_bytes", "Bytes CIM_EVENTS holds on the server")
    size.add_metric([], float(state.bytes))
    return [appended, messages, size]
