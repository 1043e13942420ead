"""Free loopback ports: for the servers `cim up` and the tests start, and the ports an agent
asks for when its default one is taken."""

from __future__ import annotations

import socket

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


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    try:
        _bound(host, port).close()
    except OSError:
        return False
    return True


def _bound(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
