"""`cim units put` of a folder of small files, as a ratio to raw nats-py in the same run.

The folder: 10,000 files of 4 KiB. The baseline: a raw nats-py loop over the same bytes
that stores each as an object in the object store's layout (a chunk and an index entry)
and appends one event, all pipelined with `publish_async`, acks awaited at the end: the
floor for what a put must send. `cim units put` also hashes, validates, looks up what is
stored, and checks every event's expected revision. Target (issue 16): >= 0.5.

Run: .venv/bin/python bench/put_folder.py [--files 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats

from cim.embedded.nats_server import NatsServer
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec, StreamSpec

SIZE = 4096


async def raw(nc, files: list[Path]) -> float:
    js = nc.jetstream()
    started = time.perf_counter()
    futures = []
    for i, f in enumerate(files):
        data = f.read_bytes()
        futures.append(await js.publish_async(f"bench.obj.C.{i}", data))
        futures.append(await js.publish_async(f"bench.obj.M.{i}", json.dumps({"name": f.name, "size": len(data)}).encode()))
        futures.append(await js.publish_async(f"bench.evt.{i}", json.dumps({"file": f.name}).encode()))
    await asyncio.gather(*futures)
    return len(files) / (time.perf_counter() - started)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cim-bench-put-"))
    server = NatsServer(store_dir=tmp / "nats")
    server.start()
    try:
        nc = await nats.connect(server.url)
        await provision(nc, ProvisionSpec(streams=[StreamSpec(name="BENCH_OBJ", subjects=["bench.obj.>"]),
                                                   StreamSpec(name="BENCH_EVT", subjects=["bench.evt.>"])]))
        folder = tmp / "files"
        folder.mkdir()
        files = []
        for i in range(args.files):
            f = folder / f"file-{i:05}.bin"
            f.write_bytes(os.urandom(SIZE))
            files.append(f)
        baseline = await raw(nc, files)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cim", "--server", server.url, "units", "put", str(folder)], check=True,
                       stdout=subprocess.DEVNULL)
        cim = args.files / (time.perf_counter() - started)
        print(f"put a folder of {args.files:,} files of 4 KiB: cim units put {cim:,.0f} files/s; "
              f"raw nats-py pipelined (chunk, index entry, event) {baseline:,.0f} files/s")
        print(f"  ratio {cim / baseline:.3f} (target >= 0.5)")
        await nc.close()
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
