"""The registry agent's metrics: the agents it sees, by capability and state (read from its
live view when Prometheus scrapes)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from ..metrics import registry

REGISTRY = registry("registry")
STATES = ("up", "stale", "gone")


def agents(seen: Iterable[tuple[str, str]]) -> list[Metric]:
    """`cim_registry_agents` from (capability, state) pairs; every state of a capability seen
    is given, 0 included, so an alert on `stale > 0` sees it go back to 0."""
    counts = Counter(seen)
    family = GaugeMetricFamily("cim_registry_agents", "Agent instances the registry sees, by capability and state",
                               labels=["capability", "state"])
    for capability in sorted({c for c, _ in counts}):
        for state in STATES:
            family.add_metric([capability, state], float(counts[(capability, state)]))
    return [family]
