"""`cim up`: an embedded leaf on one machine, with no NixOS.

A nats-server with JetStream in a data directory, the default spec provisioned, and every
agent this version has, each as a supervised subprocess with its own config, restarted
with backoff when it dies. Everything stays in the data directory, so running it again
keeps the data; every port is fixed by an option (embedded.addresses), so it keeps the
addresses too. Each agent's config is what `cim up` generates merged with
`<data-dir>/settings/<capability>.json` (embedded.settings).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import capabilities
from ..capability import AgentConfig
from ..disk_full import DiskWatch
from ..errors import EmbeddedError
from ..identity import ensure_identities
from ..nats.connect import ConnectionSettings, connect
from ..permissions import nats_permissions
from ..ports import authority, dial_host, pid_alive, processes_holding_file
from ..provision.apply import provision
from ..provision.spec import ProvisionSpec
from . import addresses
from .addresses import Listener
from .nats_server import NatsServer
from .procs import ManagedProcess
from .readiness import wait_ready
from .settings import check_names, configure, settings_file

log = logging.getLogger("cim.up")

RESTART_BACKOFF = (0.5, 1, 2, 5, 10, 30)
HTTP_NAMES = {"ui": "the dashboard", "hub": "the hub's HTTP API"}
HEALTHY_AFTER = 60.0  # an agent up this long has its backoff reset
LOCK_FILE = ".cim-up.lock"


class AgentProcess(ManagedProcess):
    display_name = "agent"
    ready_timeout = 5.0

    def __init__(self, capability: str, config_path: Path, log_path: Path):
        super().__init__(log_path)
        self.capability = capability
        self.config_path = config_path
        self.display_name = f"{capability} agent"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "cim", "agent", "run", self.capability, "--config", str(self.config_path)]

    def is_ready(self) -> bool:
        return True  # alive is checked first; readiness on NATS is what `cim status` shows


@dataclass
class Supervised:
    proc: AgentProcess
    config: AgentConfig
    restarts: int = 0
    started_at: float = field(default_factory=time.monotonic)
    next_start: float | None = None


class Leaf:
    def __init__(self, data_dir: Path, *, host: str = "127.0.0.1", port: int = addresses.NATS_PORT,
                 http_port: int = addresses.MONITORING_PORT, ui_port: int = addresses.UI_PORT,
                 hub_port: int = addresses.HUB_PORT, metrics_port_base: int = addresses.METRICS_PORT_BASE,
                 agents: list[str] | None = None, log_level: str = "info"):
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.http_port = http_port
        self.http_ports = {"ui": ui_port, "hub": hub_port}  # the capabilities that serve HTTP
        self.metrics_port_base = metrics_port_base
        self.log_level = log_level
        self.agent_names = list(capabilities.NAMES) if agents is None else agents
        self.server: NatsServer | None = None
        self.keys: dict[str, tuple[Path, str]] = {}  # name -> (seed file, public key), made by prepare()
        # nats-server is supervised like an agent: restarted with backoff, and said so.
        self.server_restarts = 0
        self.server_started_at = time.monotonic()
        self.server_next_start: float | None = None
        self.disk_watch: DiskWatch | None = None
        self._log_offset = 0
        self.agents: dict[str, Supervised] = {}
        self.notes: dict[str, str] = {}
        self.configs: dict[str, tuple[Path, AgentConfig]] = {}  # made by prepare()
        self._locks: tuple[int, ...] = ()  # the lock file and the data directory, held while this leaf runs

    @property
    def url(self) -> str:
        return f"nats://{authority(dial_host(self.host), self.port)}"

    def prepare(self) -> None:
        """Everything that can fail before a process starts: the data directory locked (an
        EmbeddedError naming the `cim up` that holds it), each agent's config made, merged
        with its settings file and validated (a ConfigError naming the file), and every port
        checked (an EmbeddedError naming each taken one). Then the configs and the scrape
        targets are written."""
        addresses.metrics_ports_fit(self.metrics_port_base)
        self.lock()
        check_names(self.data_dir)
        # Secured like NixOS: an nkey per agent with exactly its capability's permissions, and
        # an admin key for `cim`; seeds stay in the data directory (0600), the server config
        # holds public keys only.
        self.keys = ensure_identities(self.data_dir / "keys", ["admin", *self.agent_names])
        made = {cap: self._config(cap) for cap in self.agent_names}
        addresses.check_free(self._listeners({cap: config for cap, (_, config) in made.items()}))
        for cap, (data, config) in made.items():
            path = self.data_dir / "agents" / f"{cap}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=2) + "\n")
            self.configs[cap] = (path, config)
        addresses.write_targets(self.targets_path, [
            addresses.target(config.metrics.host, config.metrics.port, cap, config.agent_name)
            for cap, (_, config) in self.configs.items() if config.metrics.port is not None
        ])

    def lock(self) -> None:
        """Hold `<data-dir>/.cim-up.lock`, and the data directory itself, while this leaf runs:
        nats-server does not lock its JetStream store, so a second `cim up` on the same data
        (on other ports) would run a second server over the same files. The directory's own
        lock is what a lock file deleted by hand cannot undo. nats-server and the agents
        inherit both: a `cim up` killed with SIGKILL leaves them running, over these files, and
        the locks with them. The kernel drops them when the last of them ends, however they end."""
        if self._locks:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / LOCK_FILE
        fds = [os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)]
        try:
            _flock(fds[0], path)
            fds.append(os.open(self.data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            try:
                _flock(fds[1], self.data_dir)
            except EmbeddedError as err:  # not BlockingIOError: this filesystem cannot lock a directory
                # NFS, for one, locks only files open for writing: the lock file alone guards it.
                os.close(fds.pop())
                log.warning("%s; the lock file %s alone guards the data: do not delete it while cim up runs", err, path)
        except BlockingIOError:
            holder = os.pread(fds[0], 64, 0).decode(errors="replace").strip()
            for fd in fds:
                os.close(fd)
            raise EmbeddedError(_in_use(self.data_dir, path, holder)) from None
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        os.ftruncate(fds[0], 0)
        os.pwrite(fds[0], f"{os.getpid()}\n".encode(), 0)
        self._locks = tuple(fds)

    def unlock(self) -> None:
        for proc in [self.server, *(s.proc for s in self.agents.values())]:
            if proc is not None:
                proc.inherit_fds = ()  # the numbers may be other files' once closed
        for fd in self._locks:
            os.close(fd)  # closing the last descriptor releases the flock
        self._locks = ()

    @property
    def targets_path(self) -> Path:
        return self.data_dir / addresses.TARGETS_FILE

    def _listeners(self, configs: dict[str, AgentConfig]) -> list[Listener]:
        out = [
            Listener("the NATS client port", self.host, self.port, "--port (CIM_PORT)"),
            Listener("NATS monitoring", "127.0.0.1", self.http_port, "--http-port (CIM_HTTP_PORT)",
                     "nothing: it stays on loopback"),
        ]
        for cap, config in configs.items():
            http = getattr(config, "http", None)
            if http is not None:
                out.append(Listener(HTTP_NAMES.get(cap, f"the {cap} agent's HTTP"), http.host, http.port,
                                    f"--{cap}-port (CIM_{cap.upper()}_PORT)", f"http.host in {settings_file(self.data_dir, cap)}"))
        for cap, config in configs.items():
            if config.metrics.port is not None:
                out.append(Listener(f"the {cap} agent's metrics", config.metrics.host, config.metrics.port,
                                    "--metrics-port-base (CIM_METRICS_PORT_BASE)",
                                    f"metrics.host in {settings_file(self.data_dir, cap)}"))
        return out

    def start_server(self) -> None:
        if not self.keys:
            self.prepare()
        users = [{"nkey": self.keys["admin"][1]}] + [
            {"nkey": self.keys[cap][1], "permissions": nats_permissions(cap)} for cap in self.agent_names
        ]
        self.server = NatsServer(
            store_dir=self.data_dir / "nats" / "jetstream", port=self.port, http_port=self.http_port,
            host=self.host, server_name="cim-leaf", config_path=self.data_dir / "nats" / "nats.conf",
            extra_config={"accounts": {"CIM": {"jetstream": "enabled", "users": users}}},
        )
        self.server.inherit_fds = self._locks
        self.server.start()
        self.server_started_at = time.monotonic()

    def check_server(self) -> list[str]:
        """Restart a dead nats-server on its ports and data (with backoff); say what happened.
        The agents keep reconnecting on their own and carry on once it is back."""
        server, now = self.server, time.monotonic()
        if server is None:
            return []
        if server.alive:
            if now - self.server_started_at > HEALTHY_AFTER:
                self.server_restarts = 0
            return self._check_disk(server)
        if self.server_next_start is None:
            delay = RESTART_BACKOFF[min(self.server_restarts, len(RESTART_BACKOFF) - 1)]
            self.server_next_start = now + delay
            return [
                f"nats-server exited (code {server.returncode}); restarting in {delay:g}s; "
                f"the agents wait for it and reconnect; log: {server.log_path}"
            ]
        if now < self.server_next_start:
            return []
        self.server_restarts += 1
        self.server_started_at = now
        self.server_next_start = None
        try:
            server.restart()
        except EmbeddedError as err:
            return [f"nats-server did not start again: {err}"]
        return [f"nats-server restarted (pid {server.pid}) on {self.url}"]

    def _new_log(self, server: NatsServer) -> bytes:
        """What nats-server logged since the last look (a restarted log starts over)."""
        try:
            size = server.log_path.stat().st_size
            if size < self._log_offset:
                self._log_offset = 0
            with open(server.log_path, "rb") as f:
                f.seek(max(self._log_offset, size - 1024 * 1024))
                data = f.read()
        except OSError:
            return b""
        self._log_offset = size
        return data

    def _check_disk(self, server: NatsServer) -> list[str]:
        """A full disk: say so; once space is back, restart nats-server so writes work again."""
        if self.disk_watch is None or self.disk_watch.store_dir != server.store_dir:
            self.disk_watch = DiskWatch(server.store_dir)
        notes = self.disk_watch.check(self._new_log(server), server.restart)
        if notes and not self.disk_watch.full:
            self._new_log(server)  # what it said before the restart is read
        return notes

    async def provision(self) -> list[str]:
        nc = await connect(ConnectionSettings(servers=[self.url], name="cim-up", nkey_seed_file=self.keys["admin"][0]))
        try:
            return [c.describe() for c in await provision(nc, ProvisionSpec(replicas=1))]
        finally:
            await nc.close()

    def _config(self, capability: str) -> tuple[dict, AgentConfig]:
        """The agent's config: generated, merged with its settings file, validated."""
        config = {
            "capability": capability,
            "nats": {"servers": [self.url], "nkey_seed_file": str(self.keys[capability][0])},
            "metrics": {"host": "127.0.0.1", "port": addresses.metrics_port(self.metrics_port_base, capability)},
            "log_level": self.log_level,
            # Projections (search index, the dashboard's unit list) survive restarts here.
            "state_dir": str(self.data_dir / "state" / capability),
        }
        # A capability may add what it needs on one machine (a port, a folder, a tier URL
        # under the data dir) and a line for the summary: its `Capability.embedded`. The
        # line is written from the config as merged with the settings file and validated,
        # so it shows what the agent will really use (a user's tokens file, a host).
        hook = capabilities.get(capability).embedded
        note_of = None
        if hook is not None:
            extra, note_of = hook(self.data_dir, self.http_ports.get(capability))
            config.update(extra)
        data, validated = configure(config, self.data_dir)
        note = note_of(validated) if note_of is not None else None
        if note:
            self.notes[capability] = note
        return data, validated

    def start_agents(self) -> None:
        for cap in self.agent_names:
            path, config = self.configs[cap]
            proc = AgentProcess(cap, path, self.data_dir / "logs" / f"{cap}.log")
            proc.inherit_fds = self._locks
            proc.start()
            self.agents[cap] = Supervised(proc, config)

    async def wait_ready(self, timeout: float) -> None:
        """Until every agent answers $SRV.PING and the hub and the dashboard accept connections;
        an EmbeddedError naming the agent that did not, and its log, otherwise."""
        nc = await connect(ConnectionSettings(servers=[self.url], name="cim-up", nkey_seed_file=self.keys["admin"][0]))
        try:
            await wait_ready(nc, {cap: (s.proc, s.config) for cap, s in self.agents.items()}, timeout)
        finally:
            await nc.close()

    def check_agents(self) -> list[str]:
        """Restart dead agents (with backoff); return what happened, for the console."""
        notes = []
        now = time.monotonic()
        for cap, s in self.agents.items():
            if s.proc.alive:
                if now - s.started_at > HEALTHY_AFTER:
                    s.restarts = 0
                continue
            if s.next_start is None:
                code = s.proc.returncode
                delay = RESTART_BACKOFF[min(s.restarts, len(RESTART_BACKOFF) - 1)]
                s.next_start = now + delay
                notes.append(f"{cap} agent exited (code {code}); restarting in {delay:g}s; log: {s.proc.log_path}")
                continue
            if now >= s.next_start:
                s.proc.stop()
                try:
                    s.proc.start()
                except EmbeddedError as err:
                    notes.append(f"{cap} agent did not start: {err}")
                s.restarts += 1
                s.started_at = now
                s.next_start = None
                notes.append(f"{cap} agent restarted (pid {s.proc.pid})")
        return notes

    def stop(self) -> None:
        for s in self.agents.values():
            s.proc.terminate()
        for s in self.agents.values():
            s.proc.stop()
        if self.server is not None:
            self.server.stop()
        self.unlock()

    def summary(self) -> str:
        assert self.server is not None
        lines = [
            "CIM is up.",
            f"  NATS        {self.url}",
            f"  monitoring  {self.server.monitor_url}",
            f"  data        {self.data_dir}",
            f"  admin key   {self.keys['admin'][0]} (the cim command uses it by default; elsewhere set CIM_NKEY)",
        ]
        for cap, s in self.agents.items():
            metrics = s.config.metrics
            where = (f"metrics http://{authority(dial_host(metrics.host), metrics.port)}/metrics"
                     if metrics.port is not None else "no metrics")
            lines.append(f"  {cap:<11} pid {s.proc.pid}, {where}, log {s.proc.log_path}")
            if cap in self.notes:
                lines.append(f"  {'':<11} {self.notes[cap]}")
        lines += [
            f"  scrape      {self.targets_path} (Prometheus file_sd targets)",
            "Try:  cim units put FILE   then   cim events tail",
            "Ctrl-C stops everything; the data stays for the next `cim up`.",
        ]
        return "\n".join(lines)


async def supervise(leaf: Leaf, stop: asyncio.Event, echo) -> None:
    while not stop.is_set():
        # A restart of nats-server waits until it is ready: off the event loop.
        for note in await asyncio.to_thread(leaf.check_server) + leaf.check_agents():
            echo(note)
        try:
            await asyncio.wait_for(stop.wait(), timeout=0.5)
        except TimeoutError:
            pass


def _flock(fd: int, path: Path) -> None:
    """An exclusive lock on `fd`, or BlockingIOError when another holds it; a filesystem
    that cannot lock at all is an EmbeddedError that says what to do."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise
    except OSError as err:
        raise EmbeddedError(f"cannot lock {path} ({err.strerror or err}): its filesystem does not support locks; give "
                            "`cim up` a data directory on a local disk (--data-dir, CIM_DATA_DIR)") from None


def _in_use(data_dir: Path, lock: Path, holder: str) -> str:
    """Why the data directory is taken, and what to do: another `cim up` runs, or one was
    killed and what it started still runs over these files."""
    left = processes_holding_file(lock, data_dir)
    # The pid written in the file is a `cim up` only while it holds the lock: after a kill -9
    # the pid may be any other process's by now (when /proc shows nobody, it cannot tell).
    if holder.isdigit() and pid_alive(int(holder)) and (not left or int(holder) in {pid for pid, _ in left}):
        return (f"{data_dir} is in use by another `cim up` (pid {holder}, lock {lock}); nothing was started. "
                f"Stop that one first (Ctrl-C where it runs, or kill {holder}), or give this one its own --data-dir "
                "(CIM_DATA_DIR)")
    if not left:  # another user's processes: /proc does not show their descriptors
        return (f"{data_dir} is in use by another process (lock {lock}); nothing was started. Stop what uses it, "
                "or give this one its own --data-dir (CIM_DATA_DIR)")
    # No pid in the file: it was deleted by hand (the directory's own lock still holds), so
    # who started these cannot be told; they are named all the same.
    who = (f"what an earlier `cim up` (pid {holder}, no longer running: was it killed?) started" if holder.isdigit()
           else f"these processes (its lock file {lock.name} was removed)")
    return (f"{data_dir} is still in use by {who}: {'; '.join(f'pid {pid} ({command})' for pid, command in left)}. "
            "Nothing was started: a second nats-server over the same files would damage them. Stop those "
            f"(kill {' '.join(str(p) for p, _ in left)}), then run `cim up` again")
