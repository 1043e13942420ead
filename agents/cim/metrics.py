"""Prometheus metrics: what each agent process serves on /metrics.

Each capability keeps its metrics in a registry of its own (`registry("hub")`, used by the
capability's `metrics.py`), and an agent serves the process's own numbers (CPU, memory,
GC), the runtime's (`RUNTIME`: requests, latency, connection) and its capability's only. A
module-level Counter on prometheus_client's global registry would be exported by every
process that imports it: the pipeline agent loads the hub's connector plugins, and so
exported the hub's series.

Numbers the server keeps (a stream's size, a consumer's lag) are read when Prometheus
scrapes (`Sampled`), not polled: nothing is asked of NATS while no one is looking. A reading
serves every scrape for SAMPLE_CACHE seconds, and scrapes that arrive together share one
reading: a flood of scrapes (the hub serves /metrics on its public port) costs NATS one call
every few seconds, not one each.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
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
# How long one reading serves later scrapes, in seconds: well under Prometheus's usual 15 s
# interval, so a scrape is never more than this behind.
SAMPLE_CACHE = 3.0


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

    One reading at a time: a scrape that arrives while one is in flight waits for that one,
    and a reading (or a failure) serves the scrapes of the next `cache_for` seconds.
    """

    def __init__(self, name: str, sample: Callable[[], Awaitable[Iterable[Metric]]],
                 loop: asyncio.AbstractEventLoop, timeout: float = SAMPLE_TIMEOUT, cache_for: float = SAMPLE_CACHE):
        self.name = name
        self.sample = sample
        self.loop = loop
        self.timeout = timeout
        self.cache_for = cache_for
        # Scrapes come from several threads at once. Reentrant: a reading that ends before its
        # callback is added runs `_done` at once, in the thread that holds the lock.
        self._lock = threading.RLock()
        self._inflight: concurrent.futures.Future[list[Metric]] | None = None
        self._last: tuple[float, list[Metric]] | None = None  # (monotonic time read, families)

    def describe(self) -> list[Metric]:
        return []  # registered without sampling: the loop may not run yet

    def collect(self) -> Iterable[Metric]:
        try:
            on_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            on_loop = False
        if on_loop or self.loop.is_closed():
            return []
        with self._lock:
            if self._last is not None and time.monotonic() - self._last[0] < self.cache_for:
                return self._last[1]
            future = self._inflight
            if future is None:
                future = self._inflight = asyncio.run_coroutine_threadsafe(self._sample(), self.loop)
                future.add_done_callback(self._done)
        try:
            return future.result(self.timeout)
        except FutureTimeout:
            future.cancel()  # every scrape waiting on it leaves it out; the next one reads anew
            log.warning("metrics: reading %s took over %gs; left out of this scrape", self.name, self.timeout)
        except concurrent.futures.CancelledError:
            log.warning("metrics: reading %s was given up; left out of this scrape", self.name)
        except Exception as err:
            log.warning("metrics: reading %s failed (%s: %s); left out of this scrape", self.name,
                        type(err).__name__, err)
        return []

    def _done(self, future: concurrent.futures.Future[list[Metric]]) -> None:
        """A reading ended: keep what it read (a failure as nothing: the server is not asked
        again by every scrape while it is away), and let the next scrape past `cache_for` read."""
        ok = not future.cancelled() and future.exception() is None
        with self._lock:
            self._last = (time.monotonic(), future.result() if ok else [])
            if self._inflight is future:
                self._inflight = None

    async def _sample(self) -> list[Metric]:
        return list(await self.sample())
