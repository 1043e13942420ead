"""Ports: free ones for the servers the tests start, and whether a fixed one `cim up` was
given is free, or who holds it."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from .errors import EmbeddedError


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just handed out on `host`. Free now; whoever binds it first owns it."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct free ports, all held open together so the kernel cannot repeat one."""
    held = [_bound(host, 0) for _ in range(count)]
    try:
        return [sock.getsockname()[1] for sock in held]
    finally:
        for sock in held:
            sock.close()


def free_port_pairs(count: int, offset: int, host: str = "127.0.0.1", attempts: int = 200) -> list[int]:
    """`count` distinct free ports p for which p + offset is free too, no two pairs overlapping
    (seaweedfs derives each gRPC port as its HTTP port + 10000)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(attempts):
            if len(ports) == count:
                return ports
            first = _bound(host, 0)
            held.append(first)  # kept open, so the kernel will not offer it again
            port = first.getsockname()[1]
            if port + offset > 65535:
                continue
            try:
                held.append(_bound(host, port + offset))
            except OSError:
                continue
            ports.append(port)
        if len(ports) == count:
            return ports
        raise EmbeddedError(f"found only {len(ports)} of {count} free port pairs (p, p+{offset}) on {host}")
    finally:
        for sock in held:
            sock.close()


def free_port_block(count: int, host: str = "127.0.0.1", attempts: int = 200) -> int:
    """The first of `count` consecutive free ports (a `cim up --metrics-port-base` for tests)."""
    for _ in range(attempts):
        held = [_bound(host, 0)]
        try:
            base = held[0].getsockname()[1]
            if base + count - 1 > 65535:
                continue
            try:
                held += [_bound(host, base + i) for i in range(1, count)]
            except OSError:
                continue
            return base
        finally:
            for sock in held:
                sock.close()
    raise EmbeddedError(f"found no {count} consecutive free ports on {host}")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on `port` now (see `bind_error`)."""
    return bind_error(port, host) is None


def bind_error(port: int, host: str = "127.0.0.1") -> OSError | None:
    """What a server listening on `host`:`port` now would run into; None when it could. The
    check binds as the servers do, with SO_REUSEADDR (aiohttp's, prometheus_client's and
    nats-server's listeners all set it), so a port that only has connections closing on it
    (TIME_WAIT after a restart) is free, and one with a listening socket is not: EADDRINUSE.
    Anything else (an address not on this machine, a port below 1024 without root, a name
    that does not resolve) is no "taken" port: `bind_problem` says what each one means."""
    try:
        _bound(host, port, reuse=True).close()
    except OSError as err:
        return err
    return None


def in_use(err: OSError) -> bool:
    """Whether a bind failed because something already listens there."""
    return err.errno == errno.EADDRINUSE


def bind_problem(err: OSError, host: str, port: int) -> str:
    """What a failed bind (not EADDRINUSE) means, and what to do about it."""
    if isinstance(err, socket.gaierror):
        return (f"{host!r} is not an address this machine can listen on ({err.strerror}); "
                "give an IP address such as 127.0.0.1, ::1, 0.0.0.0 (every IPv4 address) or :: (every address)")
    if err.errno == errno.EADDRNOTAVAIL:
        return (f"{host} is not an address of this machine; give one of its own (`ip -brief address` lists them), "
                "127.0.0.1 to stay local, or 0.0.0.0 for every address")
    if err.errno == errno.EACCES:
        return (f"no permission to listen on port {port}" + (" (ports below 1024 need root)" if port < 1024 else "")
                + "; pick a port from 1024 up")
    if err.errno == errno.EAFNOSUPPORT:
        return f"{host} is an IPv6 address and this machine has no IPv6; give an IPv4 address such as 127.0.0.1"
    return f"cannot listen on {authority(host, port)}: {err.strerror or err}"


def dial_host(host: str) -> str:
    """Where a local client reaches a listener on `host`: a wildcard address through loopback
    of its own family."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def authority(host: str, port: int) -> str:
    """`host:port` as a URL or a Prometheus target writes it: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def holder_of(port: int) -> str | None:
    """Who listens on TCP `port` on this machine, as `pid 123 (nats-server -c ...)`, when
    /proc says so: only processes of the same user show their sockets, so None is no proof
    that the port is free."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local address is ADDR:PORT in hex; state 0A is LISTEN; field 9 the socket's inode
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for pid, command in _holding(inodes):
        return f"pid {pid} ({command})"
    return "another user's process"


def processes_holding_file(*paths: Path) -> list[tuple[int, str]]:
    """(pid, command) of each process with one of `paths` (a file or a directory) open, as far
    as /proc shows: only the same user's processes show their descriptors."""
    return list(_holding({str(path.resolve()) for path in paths}))


def _holding(links: set[str]) -> Iterator[tuple[int, str]]:
    """Processes with an open descriptor whose /proc link is one of `links` (`socket:[inode]`
    for a socket, the path for a file)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(_link(fd) in links for fd in (proc / "fd").iterdir()):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                command = " ".join(" ".join(a.decode(errors="replace").split()) for a in argv if a)
                yield int(proc.name), command[:120]
        except OSError:
            continue  # gone meanwhile, or another user's


def _link(fd: Path) -> str:
    """One descriptor's link, or "" for one closed meanwhile: a busy process opens and closes
    sockets all the time, and must not drop out of the list for one of them."""
    try:
        return os.readlink(fd)
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    """A process of this pid runs (a zombie, killed and not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's, and alive
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _bound(host: str, port: int, *, reuse: bool = False) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
