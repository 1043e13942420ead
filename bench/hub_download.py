"""Benchmark of the hub's downloads (`GET /v1/units/{cid}/content`), as ratios to raw
nats-py reads of the same bytes in the same run.

1. One big unit (default 64 MiB), read whole over HTTP, against a raw pull of its chunks
   from the object store's stream (no hashing, no HTTP): MB/s and the ratio.
2. Small units (4 KiB) fetched by 16 concurrent HTTP clients, against raw direct gets of
   the same object's chunk by the same number of concurrent tasks: units/s and the ratio.
Each download is checked against the CID as it is read, as any download is.

Run: .venv/bin/python bench/hub_download.py [--mib 64] [--small 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cim.embedded.nats_server import NatsServer
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec
from cim.store.content import ContentStore
from cim.store.unit_store import UnitStore
from support.hub_support import TOKEN, Hub

CLIENTS = 16
SMALL = 4096
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


async def best_of(fn, repeat: int = 3) -> float:
    """The fastest of `repeat` runs, in seconds: the one least disturbed by the machine."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - started)
    return min(times)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--small", type=int, default=2000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cim-bench-"))
    server = NatsServer(store_dir=tmp / "nats")
    server.start()
    hub = None
    try:
        nc = await nats.connect(server.url)
        await provision(nc, ProvisionSpec())
        units, content = UnitStore(nc), ContentStore(nc)
        big = os.urandom(args.mib * 1024 * 1024)
        big_cid = (await units.put_bytes(big)).unit.cid
        small = [(await units.put_bytes(os.urandom(SMALL))).unit.cid for _ in range(args.small)]
        hub = Hub(server.url, tmp, max_body_size=1 << 20)
        await asyncio.to_thread(hub.start)
        js = nc.jetstream()

        async with aiohttp.ClientSession(headers=HEADERS) as http:
            async def hub_big() -> None:
                n = 0
                async with http.get(f"{hub.url}/v1/units/{big_cid}/content") as r:
                    assert r.status == 200
                    async for chunk in r.content.iter_chunked(1 << 20):
                        n += len(chunk)
                assert n == len(big)

            where = await content.locate(big_cid)

            async def raw_big() -> None:
                sub = await js.pull_subscribe(f"$O.CIM_CONTENT.C.{where.nuid}", durable=None, stream="OBJ_CIM_CONTENT",
                                              config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE))
                n = got = 0
                while got < where.chunks:
                    for m in await sub.fetch(min(256, where.chunks - got), timeout=5):
                        n += len(m.data)
                        got += 1
                await sub.unsubscribe()
                assert n == len(big)

            hub_s, raw_s = await best_of(hub_big), await best_of(raw_big)
            mb = len(big) / 1e6
            print(f"download {args.mib} MiB: hub {mb / hub_s:,.0f} MB/s; raw chunk pull {mb / raw_s:,.0f} MB/s; "
                  f"ratio {raw_s / hub_s:.3f}")

            locations = [await content.locate(c) for c in small]

            async def concurrently(one, items) -> None:
                queue = list(items)

                async def worker() -> None:
                    while queue:
                        await one(queue.pop())

                await asyncio.gather(*(worker() for _ in range(CLIENTS)))

            async def hub_one(c: str) -> None:
                async with http.get(f"{hub.url}/v1/units/{c}/content") as r:
                    assert r.status == 200 and len(await r.read()) == SMALL

            async def raw_one(loc) -> None:
                m = await js.get_last_msg("OBJ_CIM_CONTENT", f"$O.CIM_CONTENT.C.{loc.nuid}", direct=True)
                assert len(m.data) == SMALL

            hub_s = await best_of(lambda: concurrently(hub_one, small))
            raw_s = await best_of(lambda: concurrently(raw_one, locations))
            print(f"download 4 KiB units, {CLIENTS} at once: hub {len(small) / hub_s:,.0f} units/s; "
                  f"raw direct get {len(small) / raw_s:,.0f} msg/s; ratio {raw_s / hub_s:.3f}")
        await nc.close()
    finally:
        if hub is not None:
            hub.stop()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
