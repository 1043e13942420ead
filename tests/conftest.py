"""Fixtures with real servers: each test gets its own, on free loopback ports and temp dirs.

Every fixture stops what it started, also when the test or the start itself fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from cim.embedded.nats_server import NatsCluster, NatsServer
from cim.embedded.procs import wait_until
from cim.embedded.s3_server import S3Server
from support.agentkit import AgentProcess
from support.upkit import Up

try:
    from playwright.async_api import expect
except ImportError:  # the browser tests skip themselves
    pass
else:
    # `expect(...)` does not follow page.set_default_timeout: it waits 5 s unless told, which
    # a loaded CI machine overruns. As long as the pages' own actions wait (20 s), suite-wide.
    expect.set_options(timeout=20_000)

# Markers follow from the fixtures a test uses, so `-m "not cluster"` works without decorating.
_MARKERS = {
    "nats_server": "nats",
    "nats_cluster": "cluster",
    "s3_server": "s3",
    "s3_server_2": "s3",
}


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    # `timeout`, CI runners and job control end a run with SIGTERM, which by default ends
    # Python without teardown or atexit and orphans every server (they run in their own
    # sessions). Handled like Ctrl-C, pytest tears the fixtures down first.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture in set(getattr(item, "fixturenames", ())) & _MARKERS.keys():
            item.add_marker(_MARKERS[fixture])


@pytest.fixture
def nats_server(tmp_path_factory) -> Iterator[NatsServer]:
    server = NatsServer(store_dir=tmp_path_factory.mktemp("nats") / "store")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url, connect_timeout=5, max_reconnect_attempts=5)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def nats_cluster(tmp_path_factory) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path_factory.mktemp("cluster"), size=3)
    cluster.start()  # stops every node it started if the cluster does not come up
    try:
        yield cluster
    finally:
        cluster.stop()


def _s3(tmp_path_factory, name: str) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp(name))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    yield from _s3(tmp_path_factory, "s3")


@pytest.fixture
def s3_server_2(tmp_path_factory) -> Iterator[S3Server]:
    """A second, independent S3 endpoint, for tests that move data between two tiers."""
    yield from _s3(tmp_path_factory, "s3b")


@pytest.fixture
def cli(request) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the real `cim` command: `cli("units", "ls", server=url, check=False)`.

    The server is `server=` (a URL or a list of URLs), else the harness server the test
    uses (nats_cluster, then nats_server), else whatever CIM_SERVER the caller's `env` sets.
    CIM_* variables of the surrounding shell are dropped so a developer's settings cannot
    leak in. `check=True` fails the test with the command's output on a non-zero exit.
    """

    def default_server() -> str | None:
        if "nats_cluster" in request.fixturenames:
            return " ".join(request.getfixturevalue("nats_cluster").urls)
        if "nats_server" in request.fixturenames:
            return request.getfixturevalue("nats_server").url
        return None

    def run(
        *args: str,
        input: str | None = None,
        env: dict[str, str] | None = None,
        server: str | list[str] | None = None,
        check: bool = True,
        timeout: float = 60,
        cwd: str | os.PathLike | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("CIM_")}
        # Plain, wide output so assertions on text do not depend on the terminal.
        full_env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"})
        url = " ".join(server) if isinstance(server, list) else server or default_server()
        if url:
            full_env["CIM_SERVER"] = url
        full_env.update(env or {})
        result = subprocess.run(
            [sys.executable, "-m", "cim", *map(str, args)],
            input=input, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"cim {' '.join(map(str, args))} exited {result.returncode}\n"
                f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}",
                pytrace=False,
            )
        return result

    return run


@pytest.fixture
def agent_process(tmp_path) -> Iterator[Callable[..., AgentProcess]]:
    """Start real agents: `await agent_process("pipeline", {"nats": {...}}).ready(nc)`; all stopped afterwards."""
    started: list[AgentProcess] = []

    def start(capability: str, config: dict, env: dict[str, str] | None = None) -> AgentProcess:
        agent = AgentProcess(capability, config, tmp_path, env).start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


@pytest.fixture
def secured_nats(tmp_path_factory) -> Iterator[Callable[..., tuple[NatsServer, dict]]]:
    """A nats-server configured as modules/nats.nix renders it: an account CIM, an
    unrestricted `admin` user, and one nkey user per capability with exactly the
    permissions capabilities.json declares. `server, seeds = secured_nats("store", "pipeline")`;
    `seeds[name]` is the seed file of `admin` or of a capability's agent."""
    from cim.cli.keys import new_user_seed, public_key_of
    from cim.permissions import nats_permissions

    started: list[NatsServer] = []

    def start(*capabilities: str) -> tuple[NatsServer, dict]:
        base = tmp_path_factory.mktemp("secured")
        seeds, users = {}, []
        for name in ("admin", *capabilities):
            seed = new_user_seed()
            path = base / f"{name}.nk"
            path.write_bytes(seed + b"\n")
            path.chmod(0o600)
            seeds[name] = path
            user = {"nkey": public_key_of(seed)}
            if name != "admin":
                user["permissions"] = nats_permissions(name)
            users.append(user)
        server = NatsServer(store_dir=base / "nats" / "store",
                            extra_config={"accounts": {"CIM": {"jetstream": "enabled", "users": users}}})
        server.start()
        started.append(server)
        return server, seeds

    yield start
    for server in started:
        server.stop()


class SmallDisk:
    """A small tmpfs of its own, to fill to the last byte."""

    def __init__(self, path: Path):
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> None:
        with self.filler.open("wb") as f:
            try:
                while True:
                    f.write(b"\0" * 2**20)
                    f.flush()
            except OSError:
                pass  # the disk is full

    def free_up(self) -> None:
        self.filler.unlink()


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Callable[[int], SmallDisk]]:
    """`small_disk(mib)`: a tmpfs of that size under tmp_path (mounting needs root: the test
    is skipped otherwise), unmounted (lazily: a process may still use it) afterwards."""
    mounted: list[Path] = []

    def make(mib: int) -> SmallDisk:
        path = tmp_path / f"disk{len(mounted)}"
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"a small filesystem for the full disk needs mount (root): {done.stderr.strip()}")
        mounted.append(path)
        return SmallDisk(path)

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def up(tmp_path):
    """Start `cim up` on free ports (`up(data_dir, ports)`); stopped with Ctrl-C at the end."""
    started = []

    def start(data_dir=None, ports=None):
        u = Up(data_dir or tmp_path / "data", tmp_path, ports)
        started.append(u)
        wait_until(lambda: "CIM is up" in u.output() or u.proc.poll() is not None, 60, what="cim up to start")
        assert u.proc.poll() is None, u.output()
        return u

    yield start
    for u in started:
        u.stop()


@pytest.fixture
async def browser():
    """Debian's Chromium, driven by Playwright (never a browser Playwright downloads)."""
    from support.ui_support import CHROMIUM, CHROMIUM_ARGS

    playwright_api = pytest.importorskip("playwright.async_api", reason="browser tests need playwright")
    async with playwright_api.async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()
