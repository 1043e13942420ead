"""Tier benchmark: migration and read-through as ratios to raw boto3 on the same objects,
measured in one run against the same S3 server (`weed mini`) and nats-server.

    python bench/tier.py [--big 4] [--big-mib 32] [--small 64] [--small-kib 512]

- migration: the tier protocol moving units hot -> S3 (read from JetStream, verified, copied
  with the S3 checksum, recorded as events, deleted from hot) vs raw boto3
  `put_object` / multipart `upload_fileobj` of the same bytes from memory;
- read-through: what the agent serves a reader from the S3 tier (get_object, hashed and
  checked against the CID, last chunk held back) vs raw `get_object(...).read()`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import tempfile
import time
from pathlib import Path

import nats
from boto3.s3.transfer import TransferConfig

from cim.embedded.nats_server import NatsServer
from cim.embedded.s3_server import S3Server
from cim.events import EventStore
from cim.provision import ProvisionSpec, provision
from cim.tiering.backends import JetStreamBackend, S3Backend
from cim.tiering.locations import LocationIndex
from cim.tiering.migrate import Migrator
from cim.tiering.policies import Policy
from cim.tiering.urls import TierSpec
from cim.unit_store import UnitStore

TARGET = 0.8


def row(name: str, cim: float, raw: float) -> None:
    ratio = cim / raw if raw else 0
    print(f"{name:<44} {cim:>9.1f} MB/s  raw {raw:>9.1f} MB/s  ratio {ratio:5.2f}  (target >= {TARGET})")


async def main(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="cim-bench-tier-"))
    server = NatsServer(store_dir=tmp / "nats")
    s3 = S3Server(tmp / "s3")
    server.start()
    s3.start()
    try:
        client = s3.boto3_client()
        for b in ("raw-bench", "cim-warm"):
            client.create_bucket(Bucket=b)
        creds = tmp / "s3.creds"
        creds.write_text(f"AWS_ACCESS_KEY_ID={s3.access_key}\nAWS_SECRET_ACCESS_KEY={s3.secret_key}\n")
        spec = TierSpec(name="warm", url="s3://cim-warm/units", endpoint=s3.endpoint_url, credentials_file=creds)
        payloads = [os.urandom(args.big_mib * 1024**2) for _ in range(args.big)]
        payloads += [os.urandom(args.small_kib * 1024) for _ in range(args.small)]
        total_mb = sum(map(len, payloads)) / 1e6

        nc = await nats.connect(server.url)
        await provision(nc, ProvisionSpec())
        store = UnitStore(nc)
        cids = [(await store.put_bytes(p)).unit.cid for p in payloads]

        # Raw boto3: the same objects from memory, the same transfer settings, 4 at a time.
        transfer = TransferConfig(multipart_threshold=spec.multipart_threshold, multipart_chunksize=spec.multipart_chunksize,
                                  max_concurrency=spec.max_concurrency)

        def raw_put(i: int, data: bytes) -> None:
            if len(data) < spec.multipart_threshold:
                client.put_object(Bucket="raw-bench", Key=f"o{i}", Body=data)
            else:
                client.upload_fileobj(io.BytesIO(data), "raw-bench", f"o{i}", Config=transfer)

        gate = asyncio.Semaphore(4)

        async def put_one(i, data):
            async with gate:
                await asyncio.to_thread(raw_put, i, data)

        t = time.perf_counter()
        await asyncio.gather(*(put_one(i, p) for i, p in enumerate(payloads)))
        raw_put_rate = total_mb / (time.perf_counter() - t)

        events = EventStore(nc)
        warm = S3Backend(spec)
        tiers = {"hot": JetStreamBackend(TierSpec(name="hot", url="jetstream://CIM_CONTENT"), nc), "warm": warm}
        migrator = Migrator(events, tiers, concurrency=4)
        index = await LocationIndex.build(events)
        t = time.perf_counter()
        report = await migrator.run_policies(index, [Policy(name="all", to="warm")], {})
        cim_move_rate = total_mb / (time.perf_counter() - t)
        assert not report.failed and len(report.moved) == len(cids), report.failed[:3]

        # Reads: raw get_object vs the verified read the agent streams from.
        def raw_get(i: int) -> int:
            return len(client.get_object(Bucket="raw-bench", Key=f"o{i}")["Body"].read())

        t = time.perf_counter()
        for i in range(len(payloads)):
            await asyncio.to_thread(raw_get, i)
        raw_get_rate = total_mb / (time.perf_counter() - t)

        t = time.perf_counter()
        for c, p in zip(cids, payloads, strict=True):
            n = 0
            async for chunk in warm.get(c, len(p)):
                n += len(chunk)
            assert n == len(p)
        cim_get_rate = total_mb / (time.perf_counter() - t)

        print(f"{len(payloads)} objects, {total_mb:.0f} MB ({args.big} x {args.big_mib} MiB, {args.small} x {args.small_kib} KiB)")
        row("migration hot -> S3 (verified, recorded)", cim_move_rate, raw_put_rate)
        row("read-through from the S3 tier (CID-verified)", cim_get_rate, raw_get_rate)
        await nc.close()
    finally:
        s3.stop()
        server.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--big", type=int, default=4)
    p.add_argument("--big-mib", type=int, default=32)
    p.add_argument("--small", type=int, default=64)
    p.add_argument("--small-kib", type=int, default=512)
    asyncio.run(main(p.parse_args()))
