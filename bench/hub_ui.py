"""Benchmark of the hub and the dashboard, as ratios to raw nats-py in the same run.

1. Ingest: 4 KiB units POSTed to the hub by 16 concurrent HTTP clients, against two
   baselines in the same run: raw `publish_async` of the same payloads to a JetStream stream
   (pipelined, acks awaited), and the ceiling for HTTP into JetStream in Python here: a
   minimal aiohttp handler doing one JetStream publish per request, driven by the same
   client (issue 16's targets: hub >= 0.5 of that handler and >= 0.25 of raw).
2. The units page at 100k units: p50/p95 of GET /units (first page, a deep page, a label
   filter), against the raw `STREAM.INFO` request as a floor for a NATS round trip (the
   search on that page is the pipeline agent's, measured by bench/scale.py).

Run: .venv/bin/python bench/hub_ui.py [--units 100000] [--ingest 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import nats
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cim.cid import compute
from cim.embedded.nats_server import NatsServer
from cim.events import Event, EventStore
from cim.ports import free_port
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec, StreamSpec
from cim.ui.auth import hash_password
from support.hub_support import TOKEN, Hub
from support.ui_support import PASSWORD, Agent, http_ok
from support.waiting import async_wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import request_floor_p95

CLIENTS = 16
SIZE = 4096


async def raw_publish(nc, payloads: list[bytes]) -> float:
    js = nc.jetstream()
    started = time.perf_counter()
    futures = [await js.publish_async(f"bench.raw.{i}", p) for i, p in enumerate(payloads)]
    await asyncio.gather(*futures)
    return len(payloads) / (time.perf_counter() - started)


async def minimal_handler(nc) -> tuple[web.AppRunner, str]:
    """One POST, one JetStream publish with its ack, 201: nothing else a server could skip."""
    js = nc.jetstream()
    count = 0

    async def ingest(request: web.Request) -> web.Response:
        nonlocal count
        count += 1
        await js.publish(f"bench.http.{count}", await request.read())
        return web.json_response({"ok": True}, status=201)

    app = web.Application(client_max_size=1 << 20)
    app.router.add_post("/v1/units", ingest)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def hub_ingest(url: str, payloads: list[bytes]) -> float:
    queue = list(enumerate(payloads))
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/octet-stream"}

    async def client(session):
        while queue:
            _, p = queue.pop()
            async with session.post(url + "/v1/units", data=p, headers=headers) as r:
                assert r.status in (200, 201), await r.text()

    conn = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(connector=conn) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(CLIENTS)))
        return len(payloads) / (time.perf_counter() - started)


async def seed_units(nc, n: int) -> None:
    events = EventStore(nc)
    batch = []
    for i in range(n):
        data = f"unit {i}".encode()
        cid = compute(data)
        labels = ["bench", f"group-{i % 10}"]
        batch.append(Event(type="unit.created", aggregate_id=cid, id=f"unit-created-{cid}", data={
            "cid": cid, "size": len(data), "media_type": "text/plain", "title": f"report {i:06}", "labels": labels,
            "source": "bench", "author": "", "created_at": "2026-01-01T00:00:00Z", "metadata": {}, "parents": []}))
        if len(batch) == 5000:
            await events.append_many(batch)
            batch = []
    if batch:
        await events.append_many(batch)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(int(len(xs) * p), len(xs) - 1)]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=100_000)
    ap.add_argument("--ingest", type=int, default=4000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cim-bench-"))
    server = NatsServer(store_dir=tmp / "nats")
    server.start()
    procs = []
    try:
        nc = await nats.connect(server.url)
        await provision(nc, ProvisionSpec(streams=[StreamSpec(name="BENCH_RAW", subjects=["bench.raw.>"]),
                                                   StreamSpec(name="BENCH_HTTP", subjects=["bench.http.>"])]))
        payloads = [os.urandom(SIZE) for _ in range(args.ingest)]
        hub = Hub(server.url, tmp, max_body_size=1 << 20)
        await asyncio.to_thread(hub.start)
        procs.append(hub)
        raw = await raw_publish(nc, payloads)
        runner, handler_url = await minimal_handler(nc)
        try:
            via_handler = await hub_ingest(handler_url, payloads)  # the same client, the same payloads
        finally:
            await runner.cleanup()
        via_hub = await hub_ingest(hub.url, payloads)
        print(f"ingest 4 KiB, {CLIENTS} clients: hub {via_hub:,.0f} units/s; minimal aiohttp handler {via_handler:,.0f} req/s; "
              f"raw publish_async {raw:,.0f} msg/s")
        print(f"  ratio to the handler {via_hub / via_handler:.3f} (target >= 0.5); to raw {via_hub / raw:.3f} (target >= 0.25)")

        await seed_units(nc, args.units)
        (tmp / "users").write_text(f"admin:{hash_password(PASSWORD)}\n")
        port = free_port()
        ui = f"http://127.0.0.1:{port}"
        agent = Agent("ui", {"nats": {"servers": [server.url]}, "http": {"port": port}, "password_file": str(tmp / "users")}, tmp)
        procs.append(agent)
        started = time.perf_counter()

        async def caught_up():
            if not http_ok(ui + "/healthz"):
                return False
            async with aiohttp.ClientSession() as s, s.get(ui + "/healthz") as r:
                return (await r.json())["caught_up"]

        await async_wait_until(caught_up, 300, what="the UI projection to catch up")
        print(f"UI projection caught up on {args.units + args.ingest:,} units in {time.perf_counter() - started:.1f}s")
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            async with s.post(ui + "/login", data={"user": "admin", "password": PASSWORD}, headers={"Origin": ui}) as r:
                assert r.status == 200
            # Deep pages scale with --units (100k units: page 1000, and page 50 of a tenth of them).
            deep, label_page = max(1, min(1000, args.units // 100)), max(1, min(50, args.units // 2000))
            pages = {f"page {deep}": f"/units?page={deep}", "first page": "/units",
                     "label filter": f"/units?label=group-3&page={label_page}"}
            # The Units page's search is the pipeline agent's: bench/scale.py measures it.
            for name, path in pages.items():
                times = []
                for _ in range(60):
                    t = time.perf_counter()
                    async with s.get(ui + path) as r:
                        assert r.status == 200 and b"report 0" in await r.read(), "not logged in, or no rows"
                    times.append((time.perf_counter() - t) * 1000)
                print(f"units page ({name}) at {args.units:,} units: p50 {statistics.median(times):.1f} ms, p95 {pct(times, 0.95):.1f} ms")
        print(f"raw NATS request round trip (STREAM.INFO): p95 {await request_floor_p95(nc):.2f} ms")
        await nc.close()
    finally:
        for p in procs:
            p.stop()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # the seeded units take gigabytes of disk


if __name__ == "__main__":
    asyncio.run(main())
