"""`cim nats`: looking after the NATS server CIM runs on (NixOS runs this as a service).

`cim up` looks after its own nats-server; on NixOS, nats.service is systemd's, and this
command gives it what `cim up` gives its child: a restart once a full disk has room again
(see cim.disk_full for why that is needed).
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import subprocess
from pathlib import Path

import typer

from ..disk_full import FREE_TO_RESUME, DiskWatch

app = typer.Typer(help="Look after the NATS server CIM runs on.", no_args_is_help=True)

LOG_KEPT = 1024 * 1024  # bytes of log kept between looks


@app.command("disk-watch")
def disk_watch(
    store_dir: Path = typer.Option(..., help="nats-server's JetStream store directory (the disk that can fill)."),
    log_command: str = typer.Option(
        "journalctl --unit nats.service --follow --lines 0 --output cat",
        help="a command that prints nats-server's log as it is written.",
    ),
    restart_command: str = typer.Option(
        "systemctl restart nats.service", help="the command that restarts nats-server.",
    ),
    interval: float = typer.Option(5.0, min=0.1, help="seconds between looks at the log and the free space."),
    free_mib: int = typer.Option(FREE_TO_RESUME // 2**20, min=1, help="MiB that must be free before the restart."),
) -> None:
    """Say when nats-server's disk filled, and restart nats-server once space is back: after a
    failed write it keeps failing writes, even with space free, until it restarts."""
    if not store_dir.is_dir():
        raise typer.BadParameter(f"{store_dir} is not a directory", param_hint="--store-dir")
    watch = DiskWatch(store_dir, free_to_resume=free_mib * 2**20)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_watch(watch, shlex.split(log_command), shlex.split(restart_command), interval))


def _restart(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"`{shlex.join(command)}` exited {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")


async def _watch(watch: DiskWatch, log_command: list[str], restart_command: list[str], interval: float) -> None:
    log = bytearray()
    follower = asyncio.create_task(_follow(log_command, log))
    typer.echo(f"watching {watch.store_dir} (log: {shlex.join(log_command)})", err=True)
    try:
        while True:
            await asyncio.sleep(interval)  # the polling period of the watch itself
            new = bytes(log)
            log.clear()
            for line in await asyncio.to_thread(watch.check, new, lambda: _restart(restart_command)):
                typer.echo(line, err=True)
    finally:
        follower.cancel()


async def _follow(command: list[str], log: bytearray) -> None:
    """Keep `command` running and its output in `log` (the newest LOG_KEPT bytes)."""
    while True:
        try:
            proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
        except OSError as err:
            typer.echo(f"cannot run {shlex.join(command)}: {err}; trying again in 10 s", err=True)
            await asyncio.sleep(10)  # backoff before starting it again
            continue
        assert proc.stdout is not None
        try:
            while chunk := await proc.stdout.read(65536):
                log += chunk
                del log[:-LOG_KEPT]
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        typer.echo(f"{shlex.join(command)} ended (exit {proc.returncode}); starting it again in 5 s", err=True)
        await asyncio.sleep(5)  # backoff before following the log again
