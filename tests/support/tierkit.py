"""Helpers for the tier tests: S3 tiers on the harness servers, the tier agent as a real process."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import nats

from cim.embedded.s3_server import S3Server
from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec
from support.waiting import async_wait_until


def s3_tier(s3: S3Server, name: str, tmp_path: Path, bucket: str | None = None, **extra) -> dict:
    """A tier on `s3` (bucket created), with its keys in a 0600 credentials file."""
    bucket = bucket or f"cim-{name}"
    s3.boto3_client().create_bucket(Bucket=bucket)
    creds = tmp_path / f"{name}.creds"
    creds.write_text(f"AWS_ACCESS_KEY_ID={s3.access_key}\nAWS_SECRET_ACCESS_KEY={s3.secret_key}\n")
    creds.chmod(0o600)
    return {"name": name, "url": f"s3://{bucket}/units", "endpoint": s3.endpoint_url, "credentials_file": str(creds),
            "multipart_threshold": "6MiB", "multipart_chunksize": "5MiB", **extra}


def mixed_sizes(n: int, big: int = 3, seed: int = 7) -> list[bytes]:
    """n distinct payloads: mostly small, `big` of them above the multipart threshold."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        size = rnd.choice([0, 1, 100, 4096, 70_000, 300_000]) if i >= big else 7 * 1024**2 + i * 333
        out.append(i.to_bytes(4, "big") + rnd.randbytes(size))
    return out


class TierAgent:
    """`cim agent run tier` as a subprocess, started, stopped and killed like a service.

    Its location index is kept on disk in `state_dir` (tmp_path/tier-state unless the
    settings name one), so a restart resumes from the checkpoint as a service's does."""

    def __init__(self, tmp_path: Path, url: str, settings: dict, nkey: Path | None = None):
        self.dir = tmp_path
        self.url = url
        self.config = tmp_path / "tier.json"
        self.name = settings.get("name", "cim-tier")
        self.state_dir = Path(settings.get("state_dir") or tmp_path / "tier-state")
        nats_cfg: dict = {"servers": [url]}
        if nkey:
            nats_cfg["nkey_seed_file"] = str(nkey)
        self.config.write_text(json.dumps({"capability": "tier", "nats": nats_cfg, **settings,
                                           "state_dir": str(self.state_dir)}))
        self.log = tmp_path / "tier.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> TierAgent:
        log = self.log.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "cim", "agent", "run", "tier", "--config", str(self.config)],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    async def ready(self, nc) -> None:
        async def answers() -> bool:
            assert self.proc and self.proc.poll() is None, self.log.read_text()
            try:
                await nc.request(f"$SRV.PING.{self.name}", b"", timeout=0.5)
                return True
            except Exception:
                return False

        await async_wait_until(answers, 30, what="the tier agent to answer")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


async def provisioned(url: str):
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=5)
    await provision(nc, ProvisionSpec())
    return nc


async def count_events(nc, subject: str) -> int:
    info = await nc.jetstream().stream_info("CIM_EVENTS", subjects_filter=subject)
    return sum((info.state.subjects or {}).values())
