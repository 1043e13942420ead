"""Scale: agents over a store of 10,000 to 1,000,000 units (issue 16's benchmark).

For each size, a fresh nats-server is filled through the real append path with synthetic
units: one `unit.created` each, a label on a tenth of them, and one pipeline record whose
index step points to one of 500 texts stored in the content bucket (so the search index
has real text to read, without a million objects). Then, per agent:

- the time from agent start until complete answers: the first build (replaying
  everything), then two restarts that resume from the checkpoint on disk (the second is the
  steady state: the first stop after a build may not have been a clean one), and the ratio
  of the largest size's resume time to the smallest's (targets: <= 3 s at 1,000,000;
  ratio <= 3);
- its RSS after that (target <= 200 MB at 1,000,000);
- search p95 over NATS, as `cim search` and the hub ask: a word, a phrase, a label filter
  (target <= 50 ms at 1,000,000), beside a raw NATS request round trip as the floor;
- units page p95 on the dashboard: first page, a deep page, a label filter (<= 50 ms).

Run: .venv/bin/python bench/scale.py [--sizes 10000,100000,1000000] [--agents pipeline,ui,tier]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import nats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cim import __version__
from cim.cid import compute
from cim.embedded.nats_server import NatsServer
from cim.events import Event, EventStore
from cim.nats.rpc import call
from cim.pipeline import api
from cim.pipeline.events import StepRecord, StepsDone
from cim.pipeline.model import run_key
from cim.ports import free_port
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec
from cim.store.content import ContentStore
from cim.ui.auth import hash_password
from support.agentkit import AgentProcess
from support.ui_support import PASSWORD, http_ok
from support.waiting import async_wait_until

TEXTS = 500
VOCAB = [f"w{i:04}" for i in range(5000)]


def text_of(i: int) -> str:
    rnd = random.Random(i)
    words = " ".join(rnd.choice(VOCAB) for _ in range(60))
    extra = " The quarterly revenue report is attached." if i % 10 == 0 else ""
    return f"Document {i}. {words}.{extra}"


async def fill(nc, n: int) -> int:
    """n units through EventStore.append_many; returns the last sequence."""
    content = ContentStore(nc)
    text_cids = [await content.put_bytes(text_of(i).encode()) for i in range(TEXTS)]
    events = EventStore(nc)
    batch: list[Event] = []
    last = 0
    for i in range(n):
        cid = compute(f"unit {i}".encode())
        labels = ["bench", f"group-{i % 10}"]
        batch.append(Event(type="unit.created", aggregate_id=cid, id=f"unit-created-{cid}", data={
            "cid": cid, "size": 7 + len(str(i)), "media_type": "text/plain", "title": f"report {i:07}", "labels": labels,
            "source": f"bench/{i % 100}", "author": "", "created_at": "2026-01-01T00:00:00Z", "metadata": {},
            "parents": []}))
        if i % 10 == 3:
            batch.append(Event(type="unit.labeled", aggregate_id=cid, id=f"labeled-{cid}",
                               data={"labels": ["reviewed"], "by": "bench"}))
        record = StepsDone(pipeline="bench", cid=cid, trigger_seq=1, steps=[StepRecord(
            step="index", plugin="index", plugin_version=__version__,
            output={"text_cid": text_cids[i % TEXTS], "title": f"report {i:07}", "language": "english"})])
        batch.append(Event.of(record, run_key("bench", cid), id=f"steps-done-{run_key('bench', cid)}"))
        if len(batch) >= 6000:
            last = (await events.append_many(batch))[-1].seq
            batch = []
    if batch:
        last = (await events.append_many(batch))[-1].seq
    return last


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def request_floor_p95(nc, times: int = 200) -> float:
    """p95 of the cheapest JetStream request there is: the floor under any query's latency."""
    rtt = []
    for _ in range(times):
        t = time.perf_counter()
        await nc.request("$JS.API.STREAM.INFO.CIM_EVENTS", b"", timeout=5)
        rtt.append((time.perf_counter() - t) * 1000)
    return pct(rtt, 0.95)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(int(len(xs) * p), len(xs) - 1)]


async def timed(ask: Callable[[], Awaitable[object]], times: int = 40) -> tuple[float, float]:
    out = []
    for _ in range(times):
        t = time.perf_counter()
        await ask()
        out.append((time.perf_counter() - t) * 1000)
    return statistics.median(out), pct(out, 0.95)


async def until_complete(proc: AgentProcess, nc, check: Callable[[], Awaitable[bool]]) -> float:
    started = time.perf_counter()
    proc.start()
    await async_wait_until(check, 3600, interval=0.02, what=f"{proc.name} to answer completely")
    return time.perf_counter() - started


async def starts(capability: str, config: dict, tmp: Path, nc, complete: Callable[[], Awaitable[bool]], n: int,
                 results: dict, procs: list[AgentProcess], note: Callable[[], str] = lambda: "") -> AgentProcess:
    """First build, a restart, and a second restart (the steady state: the first stop after a
    build may not have been clean); returns the last agent, still running, for the queries."""
    agent: AgentProcess | None = None
    for attempt in ("first build", "restart", "resume"):
        if agent is not None:
            agent.stop()
        agent = AgentProcess(capability, config, tmp)
        procs.append(agent)
        took = await until_complete(agent, nc, complete)
        assert agent.proc is not None
        print(f"{capability}: {attempt} until complete answers {took:.2f} s, RSS {rss_mb(agent.proc.pid):.0f} MB{note()}")
        results.setdefault((capability, attempt), {})[n] = took
    assert agent is not None and agent.proc is not None
    results.setdefault((capability, "rss"), {})[n] = rss_mb(agent.proc.pid)
    return agent


async def one_size(n: int, tmp: Path, results: dict, agents: set[str]) -> None:
    server = NatsServer(store_dir=tmp / "nats")
    server.start()
    procs: list[AgentProcess] = []
    try:
        nc = await nats.connect(server.url)
        await provision(nc, ProvisionSpec(replicas=1))
        t = time.perf_counter()
        end = await fill(nc, n)
        print(f"\n== {n:,} units ({end:,} events), filled in {time.perf_counter() - t:.0f} s")
        servers = {"servers": [server.url]}

        # --- pipeline: search ------------------------------------------------------------------
        pconf = {"nats": servers, "state_dir": str(tmp / "state" / "pipeline"), "pipelines": [],
                 "registry": {"announce": False}}

        async def pipeline_complete() -> bool:
            try:
                r = await call(nc, api.SEARCH, api.SearchRequest(query="w0001", limit=1), timeout=5)
            except Exception:
                return False
            return not r.stale and r.as_of >= end

        if "pipeline" in agents:
            p = await starts("pipeline", pconf, tmp, nc, pipeline_complete, n, results, procs)
            for name, req in (("word", api.SearchRequest(query="w0042")),
                              ("phrase", api.SearchRequest(query='"quarterly revenue"')),
                              ("label filter", api.SearchRequest(query="w0042", labels=["group-3"]))):
                p50, p95 = await timed(lambda req=req: call(nc, api.SEARCH, req, timeout=30))
                print(f"  search ({name}): p50 {p50:.1f} ms, p95 {p95:.1f} ms")
                results.setdefault(("search p95", name), {})[n] = p95
            p.stop()

        # --- ui: the units page ----------------------------------------------------------------
        (tmp / "users").write_text(f"admin:{hash_password(PASSWORD)}\n")
        port = free_port()
        ui = f"http://127.0.0.1:{port}"
        uconf = {"nats": servers, "http": {"port": port}, "password_file": str(tmp / "users"),
                 "state_dir": str(tmp / "state" / "ui"), "registry": {"announce": False}}

        async def ui_complete() -> bool:
            if not http_ok(ui + "/healthz"):
                return False
            async with aiohttp.ClientSession() as s, s.get(ui + "/healthz") as r:
                body = await r.json()
            return bool(body.get("caught_up")) and not body.get("stale", False)

        if "ui" in agents:
            u = await starts("ui", uconf, tmp, nc, ui_complete, n, results, procs)
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
                async with s.post(ui + "/login", data={"user": "admin", "password": PASSWORD},
                                  headers={"Origin": ui}) as r:
                    assert r.status == 200
                deep = max(1, min(1000, n // 100))
                for name, path in (("first page", "/units"), (f"page {deep}", f"/units?page={deep}"),
                                   ("label filter", "/units?label=group-3&page=2")):
                    async def get(path=path):
                        async with s.get(ui + path) as r:
                            assert r.status == 200 and b"report 0" in await r.read(), path
                    p50, p95 = await timed(get)
                    print(f"  units page ({name}): p50 {p50:.1f} ms, p95 {p95:.1f} ms")
                    results.setdefault(("units page p95", name.split()[0] if name.startswith("page") else name),
                                       {})[n] = p95
            u.stop()

        # --- tier: the location index ----------------------------------------------------------
        tconf = {"nats": servers, "state_dir": str(tmp / "state" / "tier"), "registry": {"announce": False}}

        tier_reply: dict = {}

        async def tier_complete() -> bool:
            try:
                r = await call(nc, "cim.tier.status", {}, timeout=5)
            except Exception:
                return False
            tier_reply.update(r)
            # An agent that reports its index's freshness answers completely once it is not stale.
            return not r.get("stale", False) and r.get("units") == n

        if "tier" in agents:
            tp = await starts("tier", tconf, tmp, nc, tier_complete, n, results, procs, note=lambda: (
                f", {tier_reply['replayed']:,} unit events replayed" if "replayed" in tier_reply else ""))
            tp.stop()

        print(f"raw NATS request round trip (STREAM.INFO): p95 {await request_floor_p95(nc):.2f} ms")
        await nc.close()
    finally:
        for p in procs:
            p.stop()
        server.stop()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--agents", default="pipeline,ui,tier", help="which agents to measure")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict = {}
    for n in sizes:
        tmp = Path(tempfile.mkdtemp(prefix=f"cim-scale-{n}-"))
        try:
            await one_size(n, tmp, results, set(args.agents.split(",")))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    small, large = min(sizes), max(sizes)
    print(f"\n== summary ({small:,} -> {large:,} units)")
    for (what, kind), by_size in sorted(results.items()):
        line = ", ".join(f"{n:,}: {v:.2f}" for n, v in sorted(by_size.items()))
        ratio = f"; ratio {by_size[large] / by_size[small]:.2f}" if kind == "resume" and by_size.get(small) else ""
        print(f"{what} {kind}: {line}{ratio}")


if __name__ == "__main__":
    asyncio.run(main())
