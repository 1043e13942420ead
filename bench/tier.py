"""Tier benchmark: migration and read-through as ratios to raw boto3 on the same objects,
measured in one run against the same S3 server (`weed mini`) and nats-server.

    python bench/tier.py [--rounds 3] [--big 4] [--big-mib 32] [--small 64] [--small-kib 512]
                         [--concurrency 4] [--s3-own-cores]

Each round puts fresh units, then runs raw and CIM in alternating order; the figures are
the median and range of the rounds' ratios.

- migration: the tier protocol moving units hot -> S3 (read from JetStream, verified, copied
  with the S3 checksum, recorded as events, deleted from hot) vs raw boto3
  `put_object` / multipart `upload_fileobj` of the same bytes from memory;
- read-through: what the agent serves a reader from the S3 tier (get_object, hashed and
  checked against the CID, last chunk held back) vs raw `get_object(...).read()`.

A third copy, bare nats-py + boto3, moves the same bytes out of JetStream (an ordered
consumer on each object's chunks, joined in memory) into the same raw upload, and does
nothing else: no verification, no events, no delete. It splits the migration's gap in two:
what reading the bytes out of JetStream costs at all on this machine (its ratio to raw),
and what the tier protocol adds on top (CIM's ratio to it).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import nats
from boto3.s3.transfer import TransferConfig

from cim import gc_tuning
from cim.embedded.nats_server import NatsServer
from cim.embedded.s3_server import S3Server
from cim.events import EventStore
from cim.nats.connect import ConnectionSettings, connect
from cim.provision.apply import CONTENT_BUCKET, provision
from cim.provision.spec import ProvisionSpec
from cim.store.unit_store import UnitStore
from cim.tier.backends import JetStreamBackend, S3Backend
from cim.tier.fetch import fetch
from cim.tier.locations import LocationIndex
from cim.tier.migrate import Migrator
from cim.tier.policies import Policy
from cim.tier.urls import TierSpec

TARGET = 0.8


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU a process has used so far (to show where a run's time went)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Wall time and the CPU of this process, nats-server and the S3 server, for one phase."""

    def __init__(self, *servers) -> None:
        self.pids = [s.pid for s in servers]

    async def run(self, coro) -> tuple[float, list[float]]:
        before = [time.process_time(), *map(cpu_seconds, self.pids)]
        t = time.perf_counter()
        await coro
        wall = time.perf_counter() - t
        after = [time.process_time(), *map(cpu_seconds, self.pids)]
        return wall, [a - b for a, b in zip(after, before, strict=True)]


def split_cpus() -> tuple[set[int], set[int]]:
    """--s3-own-cores: the S3 server on one half of this machine's CPUs, this process and
    nats-server on the other, as when the S3 server is a host of its own (Wasabi, or MinIO
    on a bigger box) instead of competing with the agent for the same cores."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--s3-own-cores needs at least 2 CPUs; run without it")
    half = len(cpus) // 2
    return set(cpus[half:]), set(cpus[:half])


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of a running process onto `cpus`; threads it starts later inherit them."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


async def main(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="cim-bench-tier-"))
    server = NatsServer(store_dir=tmp / "nats")
    s3 = S3Server(tmp / "s3")
    server.start()
    s3.start()
    try:
        if args.s3_own_cores:
            s3_cpus, other_cpus = split_cpus()
            pin(s3.pid, s3_cpus)
            for pid in (server.pid, os.getpid()):
                pin(pid, other_cpus)
            print(f"S3 server on CPUs {sorted(s3_cpus)}; this process and nats-server on {sorted(other_cpus)}")
        client = s3.boto3_client()
        for b in ("raw-bench", "cim-warm"):
            client.create_bucket(Bucket=b)
        creds = tmp / "s3.creds"
        creds.write_text(f"AWS_ACCESS_KEY_ID={s3.access_key}\nAWS_SECRET_ACCESS_KEY={s3.secret_key}\n")
        spec = TierSpec(name="warm", url="s3://cim-warm/units", endpoint=s3.endpoint_url, credentials_file=creds)
        nc = await nats.connect(server.url)  # the bare copy's: plain nats-py
        # CIM's side on a connection made as the tier agent makes its own.
        agent_nc = await connect(ConnectionSettings(servers=[server.url]))
        gc_tuning.tune()  # as the agent runtime does once an agent has started
        await provision(nc, ProvisionSpec())
        store, events = UnitStore(agent_nc, cold=fetch), EventStore(agent_nc)
        warm = S3Backend(spec)
        tiers = {"hot": JetStreamBackend(TierSpec(name="hot", url="jetstream://CIM_CONTENT"), agent_nc), "warm": warm}
        meter = Meter(server, s3)
        # Raw boto3: the same objects from memory, the same transfer settings, 4 at a time.
        transfer = TransferConfig(multipart_threshold=spec.multipart_threshold, multipart_chunksize=spec.multipart_chunksize,
                                  max_concurrency=spec.max_concurrency)
        gate = asyncio.Semaphore(args.concurrency)

        def raw_put(key: str, data: bytes) -> None:
            if len(data) < spec.multipart_threshold:
                client.put_object(Bucket="raw-bench", Key=key, Body=data)
            else:
                client.upload_fileobj(io.BytesIO(data), "raw-bench", key, Config=transfer)

        async def raw_puts(r: int, payloads: list[bytes]) -> None:
            async def one(i, data):
                async with gate:
                    await asyncio.to_thread(raw_put, f"r{r}-{i}", data)
            await asyncio.gather(*(one(i, p) for i, p in enumerate(payloads)))

        objects = await nc.jetstream().object_store(CONTENT_BUCKET)

        async def bare_read(cid: str) -> bytes:
            info = await objects.get_info(cid)
            sub = await nc.jetstream().subscribe(f"$O.{CONTENT_BUCKET}.C.{info.nuid}", ordered_consumer=True)
            parts = []
            async for msg in sub.messages:
                parts.append(msg.data)
                if msg.metadata.num_pending == 0:
                    break
            await sub.unsubscribe()
            return b"".join(parts)

        async def bare_copies(r: int, cids: list[str]) -> None:
            async def one(i, cid):
                async with gate:
                    data = await bare_read(cid)
                    await asyncio.to_thread(raw_put, f"b{r}-{i}", data)
            await asyncio.gather(*(one(i, c) for i, c in enumerate(cids)))

        async def migrate(n: int) -> None:
            index = await LocationIndex.build(events)
            report = await Migrator(events, tiers, concurrency=args.concurrency).run_policies(index, [Policy(name="all", to="warm")], {})
            assert not report.failed and len(report.moved) == n, report.failed[:3]

        async def raw_gets(r: int, n: int) -> None:
            for i in range(n):
                await asyncio.to_thread(lambda i=i: client.get_object(Bucket="raw-bench", Key=f"r{r}-{i}")["Body"].read())

        async def cim_gets(cids: list[str], payloads: list[bytes]) -> None:
            for c, p in zip(cids, payloads, strict=True):
                n = 0
                async for chunk in warm.get(c, len(p)):
                    n += len(chunk)
                assert n == len(p)

        moves, bares, reads, cpu = [], [], [], {"raw put": [], "bare copy": [], "migration": []}
        for r in range(args.rounds):
            # Fresh units each round (the last round's are in the S3 tier now); the two sides
            # alternate which goes first, so neither always meets a warmer server.
            payloads = [os.urandom(args.big_mib * 1024**2) for _ in range(args.big)]
            payloads += [os.urandom(args.small_kib * 1024) for _ in range(args.small)]
            total_mb = sum(map(len, payloads)) / 1e6
            cids = [(await store.put_bytes(p)).unit.cid for p in payloads]
            runs = {"raw put": lambda r=r, payloads=payloads: raw_puts(r, payloads),
                    "bare copy": lambda r=r, cids=cids: bare_copies(r, cids),
                    "migration": lambda cids=cids: migrate(len(cids))}
            # Each goes first in turn; the bare copy reads the hot objects the migration removes.
            order = [("raw put", "bare copy", "migration"), ("bare copy", "migration", "raw put"),
                     ("bare copy", "raw put", "migration")][r % 3]
            walls = {}
            for name in order:
                walls[name], used = await meter.run(runs[name]())
                cpu[name].append(used)
            moves.append((total_mb / walls["migration"], total_mb / walls["raw put"]))
            bares.append((total_mb / walls["bare copy"], total_mb / walls["raw put"], total_mb / walls["migration"]))
            raw_get = total_mb / (await meter.run(raw_gets(r, len(payloads))))[0]
            cim_get = total_mb / (await meter.run(cim_gets(cids, payloads)))[0]
            reads.append((cim_get, raw_get))

        print(f"{args.rounds} rounds of {len(payloads)} objects, {total_mb:.0f} MB "
              f"({args.big} x {args.big_mib} MiB, {args.small} x {args.small_kib} KiB); median (range) of the rounds:")
        for name, pairs in (("migration hot -> S3 (verified, recorded)", moves),
                            ("read-through from the S3 tier (CID-verified)", reads)):
            print(f"{name:<46} cim {spread([c for c, _ in pairs])} MB/s  raw {spread([b for _, b in pairs])} MB/s  "
                  f"ratio {spread([c / b for c, b in pairs])}  (target >= {TARGET})")
        print(f"{'  bare JetStream -> S3 copy / raw put':<46} {spread([b / raw for b, raw, _ in bares])}  "
              "(reading the bytes out of JetStream at all)")
        print(f"{'  migration / bare copy':<46} {spread([m / b for b, _, m in bares])}  (what the protocol adds)")
        # Where the CPU went (this process, nats-server, S3 server): the machine has 2 cores,
        # so a phase that needs more core-seconds than another is slower by about as much.
        for name, runs in cpu.items():
            mean = [statistics.mean(x[i] for x in runs) for i in range(3)]
            print(f"cpu seconds per round, {name:<10} client {mean[0]:.2f}  nats-server {mean[1]:.2f}  S3 server {mean[2]:.2f}")
        await nc.close()
        await agent_nc.close()
    finally:
        s3.stop()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # each run stores over a gigabyte


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--big", type=int, default=4)
    p.add_argument("--big-mib", type=int, default=32)
    p.add_argument("--small", type=int, default=64)
    p.add_argument("--small-kib", type=int, default=512)
    p.add_argument("--concurrency", type=int, default=4, help="objects at once, raw and CIM alike")
    p.add_argument("--s3-own-cores", action="store_true",
                   help="give the S3 server half of the CPUs to itself, as a separate S3 host would have")
    asyncio.run(main(p.parse_args()))
