"""The pipeline agent's metrics, by pipeline: units processed, skipped, failed attempts and
dead letters as the runners settle them, and each pipeline's lag as its durable consumer
says (read when Prometheus scrapes; several agents sharing a pipeline each report the same
consumer, so a dashboard takes the max)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from ..metrics import registry

REGISTRY = registry("pipeline")

PROCESSED = Counter("cim_pipeline_processed_total", "Units a pipeline ran every step on and recorded",
                    ["pipeline"], registry=REGISTRY)
SKIPPED = Counter("cim_pipeline_skipped_total", "Events a pipeline received with nothing to do (not a unit event, "
                  "or the unit is outside its context)", ["pipeline"], registry=REGISTRY)
FAILED = Counter("cim_pipeline_failed_total", "Failed attempts at a unit (retried with backoff until max_attempts)",
                 ["pipeline"], registry=REGISTRY)
DEAD_LETTERS = Counter("cim_pipeline_dead_letters_total", "Events sent to CIM_DLQ after max_attempts",
                       ["pipeline"], registry=REGISTRY)


def lag(consumers: Iterable[tuple[str, dict]]) -> list[Metric]:
    """`cim_pipeline_lag_events` from each running pipeline's consumer state (Runner.lag)."""
    family = GaugeMetricFamily("cim_pipeline_lag_events", "Events a pipeline's durable consumer has not yet had "
                               "processed: pending plus delivered and not yet acknowledged", labels=["pipeline"])
    for name, state in consumers:
        if "error" not in state:
            family.add_metric([name], float(state["pending"] + state["ack_pending"]))
    return [family]
