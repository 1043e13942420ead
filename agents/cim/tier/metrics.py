"""The tier agent's metrics: moves between tiers as they happen, and what each tier holds
(from the location index, read when Prometheus scrapes)."""

from __future__ import annotations

from prometheus_client import Counter
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from ..metrics import registry
from .locations import Counts

REGISTRY = registry("tier")

MOVES = Counter(
    "cim_tier_moves_total",
    "Units copied into a tier and verified there, by that tier and direction (colder: a policy or the backup; "
    "hotter: a restore or a promotion on read)",
    ["tier", "direction"], registry=REGISTRY)
MOVED_BYTES = Counter(
    "cim_tier_moved_bytes_total", "Bytes of the units counted in cim_tier_moves_total", ["tier", "direction"],
    registry=REGISTRY)
EXPIRED = Counter("cim_tier_expired_total", "Units expired by a retention policy", registry=REGISTRY)
ERRORS = Counter("cim_tier_errors_total", "Tier work that failed (a move, a sweep, a check; see `cim tier status`)",
                 registry=REGISTRY)


def direction(order: list[str], from_tier: str, to_tier: str) -> str:
    """"colder" when `to_tier` comes after `from_tier` in the configured order (hot first)."""
    if from_tier in order and to_tier in order and order.index(to_tier) < order.index(from_tier):
        return "hotter"
    return "colder"


def holdings(tiers: list[str], counts: Counts) -> list[Metric]:
    """Live units and their bytes per tier, the live units themselves, and the moves in flight,
    as the index has them. A unit may be held by two tiers at once (a copy policy, the backup
    in the archive), so the per-tier counts add up to more than there are units: the count of
    units is its own series."""
    live = GaugeMetricFamily("cim_tier_live_units", "Live units (created, not expired), each counted once "
                             "however many tiers hold it")
    live.add_metric([], float(counts.units))
    units = GaugeMetricFamily("cim_tier_units", "Live units a tier holds (a unit in two tiers counts in both)",
                              labels=["tier"])
    size = GaugeMetricFamily("cim_tier_stored_bytes", "Bytes of the live units a tier holds", labels=["tier"])
    for tier in tiers:
        n, b = counts.held(tier)
        units.add_metric([tier], float(n))
        size.add_metric([tier], float(b))
    pending = GaugeMetricFamily("cim_tier_pending_moves", "Moves recorded as started and not yet finished")
    pending.add_metric([], float(counts.pending))
    return [live, units, size, pending]
