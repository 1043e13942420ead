"""Prometheus metrics: what each agent process serves on /metrics.

Each capability keeps its metrics in a registry of its own (`registry("hub")`, used by the
capability's `metrics.py`), and an agent serves the process's own numbers (CPU, memory,
GC), the runtime's (`RUNTIME`: requests, latency, connection) and its capability's only. A
module-level Counter on prometheus_client's global registry would be exported by every
process that imports it: the pipeline agent loads the hub's connector plugins, and so
exported the hub's series.

Numbers the server keeps (a stream's size, a consumer's lag) are read when Prometheus
scrapes (`Sampled`), not polled: nothing is asked of NATS while no one is looking.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import TimeoutError as FutureTimeout

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger("cim.metrics")

# The runtime's own metrics, which every agent serves (cim.runtime).
RUNTIME = CollectorRegistry()
_CAPABILITIES: dict[str, CollectorRegistry] = {}

# A scrape waits this long for the numbers read from the server; past it those are left out
# of that scrape (Prometheus's own scrape timeout is 10 s by default).
SAMPLE_TIMEOUT = 5.0


def registry(capability: str) -> CollectorRegistry:
    """The registry of one capability's metrics, made on first use."""
    return _CAPABILITIES.setdefault(capability, CollectorRegistry())


def served(capability: str) -> CollectorRegistry:
    """What an agent of `capability` serves: its process, the runtime's metrics and its
    capability's own, and nothing another capability's modules registered."""
    out = CollectorRegistry()
    ProcessCollector(registry=out)
    PlatformCollector(registry=out)
    GCCollector(registry=out)
    out.register(_Whole(RUNTIME))
    out.register(_Whole(registry(capability)))
    return out


class _Whole(Collector):
    """A registry served as one collector of another (its metrics as they are now)."""

    def __init__(self, source: CollectorRegistry):
        self.source = source

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        return self.source.collect()


class Sampled(Collector):
    """Metric families read at scrape time by a coroutine on the agent's event loop.

    The exporter's HTTP thread hands `sample` to the loop and waits at most SAMPLE_TIMEOUT;
    a sample that fails or takes longer is logged and left out of that scrape (a missing
    series says "unknown", a stale one would lie). Asked from the loop's own thread (an
    aiohttp handler calling generate_latest directly), it cannot wait for the loop, and
    leaves the samples out too.
    """

    def __init__(self, name: str, sample: Callable[[], Awaitable[Iterable[Metric]]],
                 loop: asyncio.AbstractEventLoop, timeout: float = SAMPLE_TIMEOUT):
        self.name = name
        self.sample = sample
        self.loop = loop
        self.timeout = timeout

    def describe(self) -> list[Metric]:
        return []  # registered without sampling: the loop may not run yet

    def collect(self) -> Iterable[Metric]:
        try:
            on_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            on_loop = False
        if on_loop or self.loop.is_closed():
            return []
        future = asyncio.run_coroutine_threadsafe(self._sample(), self.loop)
        try:
            return future.result(self.timeout)
        except FutureTimeout:
            future.cancel()
            log.warning("metrics: reading %s took over %gs; left out of this scrape", self.name, self.timeout)
        except Exception as err:
            log.warning("metrics: reading %s failed (%s: %s); left out of this scrape", self.name,
                        type(err).__name__, err)
        return []

    async def _sample(self) -> list[Metric]:
        return list(await self.sample())
