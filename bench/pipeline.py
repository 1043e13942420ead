"""Pipeline benchmark: units per second through classify -> extract -> index, as a ratio to
a raw nats-py fetch + publish loop over the same messages, and end-to-end latency at half
the maximum rate.

    python bench/pipeline.py [--units 2000] [--rounds 3]

Starts its own nats-server (loopback, temp dir). Each round puts fresh units and runs every
loop over them, alternating which goes first; it prints the median and range of the
rounds' ratios, since one run of the 0.2 s raw loop on a shared machine is a coin toss. The raw loop does the same shape of work
without CIM: fetch the `unit.created` events from a durable consumer, publish three
records per event (one per step), ack.

A third loop, also bare nats-py, sends exactly the messages CIM's pipeline sends per unit
(the batched content reads, two appends with their CloudEvents headers: one effect and
the unit's `steps.done` record) and nothing else. It splits the gap in two: what those messages cost
in nats-py at all (its ratio to the raw loop) and what the engine adds on top (CIM's ratio
to it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import nats
from nats.js.api import AckPolicy, ConsumerConfig

from cim import gc_tuning
from cim.embedded.nats_server import NatsServer
from cim.events import Event
from cim.nats.connect import ConnectionSettings, connect
from cim.pipeline.engine import Runner
from cim.pipeline.model import PipelineDef, StepDef
from cim.plugins import discover
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec, StreamSpec
from cim.store.content import ContentStore
from cim.store.unit_store import UnitStore

STEPS = ("classify", "extract", "index")


async def put_units(units: UnitStore, n: int, tag: str) -> list[str]:
    cids = []
    for start in range(0, n, 200):
        batch = await asyncio.gather(*(
            units.put_bytes(f"{tag} document {i}: the quick brown fox jumps over the lazy dog {i}".encode(),
                            media_type="text/plain", title=f"{tag}-{i}.txt")
            for i in range(start, min(n, start + 200))))
        cids += [r.unit.cid for r in batch]
    return cids


async def raw_loop(nc, n: int, r: int) -> float:
    js = nc.jetstream()
    sub = await js.pull_subscribe("cim.evt.unit.*.created", durable=f"raw-bench-{r}", stream="CIM_EVENTS",
                                  config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=1000))
    t0 = time.perf_counter()
    done = 0
    while done < n:
        msgs = await sub.fetch(32, timeout=5)
        futs = []
        for m in msgs:
            for step in STEPS:
                futs.append(await js.publish_async(f"bench.raw.{step}", m.data))
        await asyncio.gather(*futs)
        for m in msgs:
            await m.ack()
        done += len(msgs)
    return n / (time.perf_counter() - t0)


async def same_messages_loop(nc, n: int, content: ContentStore, r: int) -> float:
    js = nc.jetstream()
    sub = await js.pull_subscribe("cim.evt.unit.*.created", durable=f"same-messages-bench-{r}", stream="CIM_EVENTS",
                                  config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=1000))
    headers = Event(type="steps.done", aggregate_id="x", agent="bench", agent_version="0",
                    correlation_id="c", causation_id="d").headers()
    t0 = time.perf_counter()
    done = 0
    while done < n:
        msgs = await sub.fetch(32, timeout=5)
        await content.read_small([m.subject.split(".")[3] for m in msgs])
        futs = []
        for m in msgs:
            for i in range(2):
                futs.append(await js.publish_async(f"bench.raw.same.{i}", m.data,
                                                   headers={**headers, "Nats-Msg-Id": f"{m.subject}-{i}"}))
        await asyncio.gather(*futs)
        for m in msgs:
            await m.ack()
        done += len(msgs)
    return n / (time.perf_counter() - t0)


def make_runner(nc, name: str, plugins, content: ContentStore, units: UnitStore, start: str = "all") -> Runner:
    async def read(cid: str) -> bytes:
        return b"".join([c async for c in units.get(cid)])

    async def store_text(text: str) -> str:
        return await content.put_bytes(text.encode())

    definition = PipelineDef(name=name, start=start, concurrency=128,
                             steps=[StepDef(name=s, plugin=s) for s in STEPS])
    return Runner(nc, definition, plugins, agent="bench", read=read, store_text=store_text,
                  read_many=content.read_small)



async def ours(nc, n: int, plugins, content, units, r: int) -> float:
    # Completion is read off the runner's own counters: a subscription to every `steps.done`
    # would charge this process the parsing of an extra message per unit.
    runner = make_runner(nc, f"bench{r}", plugins, content, units)
    t0 = time.perf_counter()
    runner.start()
    deadline = t0 + 600
    while runner.stats.processed + runner.stats.skipped < n:
        if time.perf_counter() > deadline or (runner._task and runner._task.done()):
            raise SystemExit(f"the pipeline stopped after {runner.stats.processed} of {n} units: {runner.stats.last_error}")
        await asyncio.sleep(0.005)  # polling the counters, bounded by the deadline above
    rate = n / (time.perf_counter() - t0)
    if runner.stats.failed_attempts:
        raise SystemExit(f"{runner.stats.failed_attempts} steps failed: {runner.stats.last_error}")
    await runner.stop()
    return rate


async def latency(nc, rate: float, seconds: float, plugins, content, units) -> list[float]:
    runner = make_runner(nc, "live", plugins, content, units, start="new")
    runner.start()
    await asyncio.sleep(0.5)  # let the consumer exist before the first unit (start="new")
    put_at: dict[str, float] = {}
    lat: list[float] = []

    async def on_done(msg):
        if ".live--" in msg.subject:
            cid = msg.subject.split("--")[-1].split(".")[0]
            if cid in put_at:
                lat.append(time.perf_counter() - put_at.pop(cid))

    sub = await nc.subscribe("cim.evt.steps.*.done", cb=on_done)
    n = int(rate * seconds)
    interval = 1 / rate
    start = time.perf_counter()
    for i in range(n):
        target = start + i * interval
        if (delay := target - time.perf_counter()) > 0:
            await asyncio.sleep(delay)  # pacing the load, not waiting for a condition
        r = await units.put_bytes(f"live document {i} about herons and kestrels".encode(), media_type="text/plain")
        put_at[r.unit.cid] = time.perf_counter()
    deadline = time.perf_counter() + 60
    while put_at and time.perf_counter() < deadline:  # noqa: ASYNC110 - the pipeline empties put_at as it records units
        await asyncio.sleep(0.05)
    await runner.stop()
    await sub.unsubscribe()
    return lat


def spread(values: list[float], fmt: str = ".2f") -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-seconds", type=float, default=8)
    args = ap.parse_args()
    n = args.units
    with tempfile.TemporaryDirectory() as tmp, NatsServer(store_dir=Path(tmp) / "store") as server:
        nc = await nats.connect(server.url)
        await provision(nc, ProvisionSpec(streams=[
            StreamSpec(name="CIM_EVENTS", subjects=["cim.evt.>"], allow_atomic=True, duplicate_window=30),
            StreamSpec(name="BENCH_RAW", subjects=["bench.raw.>"])]))
        plugins = discover()
        gc_tuning.tune()  # as the agent runtime does once an agent has started
        # The engine on a connection made as the pipeline agent makes its own.
        agent_nc = await connect(ConnectionSettings(servers=[server.url]))
        units, content = UnitStore(agent_nc), ContentStore(agent_nc)
        rates: dict[str, list[float]] = {"raw": [], "same": [], "cim": []}
        for r in range(args.rounds):
            # Fresh units on an emptied event stream: no round sees another's events.
            for stream in ("CIM_EVENTS", "BENCH_RAW"):
                await nc.jetstream().purge_stream(stream)
            await put_units(UnitStore(nc), n, f"round{r}")
            loops = [("raw", lambda r=r: raw_loop(nc, n, r)),
                     ("same", lambda r=r: same_messages_loop(nc, n, ContentStore(nc), r)),
                     ("cim", lambda r=r: ours(agent_nc, n, plugins, content, units, r))]
            for name, run in loops if r % 2 == 0 else loops[::-1]:
                rates[name].append(await run())
        cim_rate = statistics.median(rates["cim"])
        lat = await latency(agent_nc, cim_rate / 2, args.latency_seconds, plugins, content, units)
        await agent_nc.close()
        await nc.close()
    lat.sort()
    p50 = statistics.median(lat) * 1000 if lat else float("nan")
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else float("nan")
    ratio = [c / b for c, b in zip(rates["cim"], rates["raw"], strict=True)]
    same = [s / b for s, b in zip(rates["same"], rates["raw"], strict=True)]
    added = [c / s for c, s in zip(rates["cim"], rates["same"], strict=True)]
    print(f"{args.rounds} rounds of {n} units; median (range) of the rounds")
    print(f"{'units/s through classify->extract->index':<42} cim {spread(rates['cim'], ',.0f')}")
    print(f"{'raw fetch + 3 publishes + ack':<42} raw {spread(rates['raw'], ',.0f')}")
    print(f"{'ratio cim / raw':<42} {spread(ratio)}  (target >= 0.5)")
    print(f"{'  the same messages, bare nats-py / raw':<42} {spread(same)}  (what the messages cost)")
    print(f"{'  cim / the same messages':<42} {spread(added)}  (what the engine adds)")
    print(f"end-to-end latency at {cim_rate / 2:,.0f} u/s (half max): p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(lat)} units)")
    print(json.dumps({"cim_units_per_s": [round(x) for x in rates["cim"]], "raw_units_per_s": [round(x) for x in rates["raw"]],
                      "ratio": [round(x, 3) for x in ratio], "same_messages_ratio": [round(x, 3) for x in same],
                      "p50_ms": round(p50, 1), "p99_ms": round(p99, 1)}))


if __name__ == "__main__":
    asyncio.run(main())
