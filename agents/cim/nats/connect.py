"""The one connection helper: settings every agent and the CLI share, and `connect()`.

Failures are turned into `ConnectionFailed` naming the server and the cause, because
nats-py reports an initial failure as a bare `NoServersError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import ConnectionFailed
from . import headers as header_parsing

log = logging.getLogger("cim.connection")

# Keys people reach for that would put a secret into a rendered config file.
_INLINE_SECRETS = {
    "password": "password_file",
    "nkey_seed": "nkey_seed_file",
    "seed": "nkey_seed_file",
    "token": "token_file",
    "creds": "creds_file",
}


class ConnectionSettings(BaseModel):
    """Where the NATS servers are and how to authenticate. Secrets only as file paths."""

    model_config = ConfigDict(extra="forbid")

    servers: list[str] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"], min_length=1)
    name: str | None = None
    nkey_seed_file: Path | None = None
    creds_file: Path | None = None
    user: str | None = None
    password_file: Path | None = None
    token_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Where replies arrive; an agent's is `_INBOX.<capability>`, the only inboxes its
    # credential may read. None: nats-py's `_INBOX`.
    inbox_prefix: str | None = Field(default=None, pattern=r"^_INBOX(\.[A-Za-z0-9_-]+)*$")
    connect_timeout: float = Field(default=5.0, gt=0)
    reconnect_wait: float = Field(default=1.0, gt=0)
    # -1: keep trying for ever (agents under systemd); the CLI uses a small number.
    max_reconnect_attempts: int = Field(default=-1, ge=-1)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, instead in _INLINE_SECRETS.items():
                if key in data:
                    raise ValueError(
                        f"'{key}' would put a secret into the config file; "
                        f"set '{instead}' to the path of a file holding it"
                    )
        return data

    @field_validator("servers")
    @classmethod
    def _urls(cls, servers: list[str]) -> list[str]:
        for url in servers:
            parts = urlsplit(url if "://" in url else f"nats://{url}")
            if parts.scheme not in {"nats", "tls", "ws", "wss"} or not parts.hostname:
                raise ValueError(f"{url!r} is not a NATS server URL (expected nats://HOST:PORT)")
        return servers

    @model_validator(mode="after")
    def _one_auth(self) -> ConnectionSettings:
        chosen = [n for n in ("nkey_seed_file", "creds_file", "user", "token_file") if getattr(self, n)]
        if len(chosen) > 1:
            raise ValueError(f"choose one way to authenticate, not {' and '.join(chosen)}")
        if self.user and not self.password_file:
            raise ValueError("'user' needs 'password_file'")
        if self.password_file and not self.user:
            raise ValueError("'password_file' needs 'user'")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("'tls_cert_file' and 'tls_key_file' go together")
        return self

    def secret_files(self) -> list[Path]:
        return [
            p
            for p in (self.nkey_seed_file, self.creds_file, self.password_file, self.token_file,
                      self.tls_key_file)
            if p is not None
        ]


def _read_secret(path: Path, what: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as err:
        raise ConnectionFailed(f"cannot read the {what} {path}: {err.strerror}; check the path and its permissions") from err


def _tls_context(s: ConnectionSettings) -> ssl.SSLContext | None:
    wants_tls = any(urlsplit(u).scheme in {"tls", "wss"} for u in s.servers)
    if not (s.tls_ca_file or s.tls_cert_file or wants_tls):
        return None
    try:
        ctx = ssl.create_default_context(cafile=str(s.tls_ca_file) if s.tls_ca_file else None)
        if s.tls_cert_file and s.tls_key_file:
            ctx.load_cert_chain(str(s.tls_cert_file), str(s.tls_key_file))
    except (OSError, ssl.SSLError) as err:
        raise ConnectionFailed(f"cannot load the TLS files: {err}; check tls_ca_file, tls_cert_file and tls_key_file") from err
    return ctx


def connect_options(s: ConnectionSettings) -> dict[str, Any]:
    """The keyword arguments for `nats.connect`, with secrets read from their files."""
    for path in s.secret_files():
        if not path.is_file():
            raise ConnectionFailed(f"the secret file {path} does not exist; create it or fix the path")
    opts: dict[str, Any] = {
        "servers": s.servers,
        "name": s.name,
        "connect_timeout": s.connect_timeout,
        "reconnect_time_wait": s.reconnect_wait,
        "max_reconnect_attempts": s.max_reconnect_attempts,
        "tls": _tls_context(s),
    }
    if s.inbox_prefix:
        opts["inbox_prefix"] = s.inbox_prefix
    if s.nkey_seed_file:
        opts["nkeys_seed_str"] = _read_secret(s.nkey_seed_file, "nkey seed file")
    if s.creds_file:
        opts["user_credentials"] = str(s.creds_file)
    if s.user:
        opts["user"] = s.user
        opts["password"] = _read_secret(s.password_file, "password file")  # type: ignore[arg-type]
    if s.token_file:
        opts["token"] = _read_secret(s.token_file, "token file")
    return opts


async def connect(settings: ConnectionSettings, *, initial_attempts: int = 1) -> Client:
    """Connect, logging every later disconnect and reconnect with the server's name.

    The initial connect fails fast with one line that names each server and its error:
    a CLI user should not wait through reconnect attempts to learn the server is down.
    """
    failures: dict[str, str] = {}
    connected = False

    async def on_error(err: Exception) -> None:
        server = getattr(nc, "connected_url", None) or getattr(nc, "_current_server", None)
        where = _server_name(server) if server else "nats"
        why = _describe(err)
        # The server answers refused credentials with an error and then closes the socket;
        # a later attempt may only see the reset. Keep the telling reason.
        if not (_is_reset(why) and where in failures):
            failures[where] = why
        if connected:
            log.warning("nats error from %s: %s", where, _describe(err))

    async def on_disconnect() -> None:
        if connected and not nc.is_closed and not nc.is_draining:
            log.warning("disconnected from nats; reconnecting (waits of %.1fs)", settings.reconnect_wait)

    async def on_reconnect() -> None:
        log.info("reconnected to %s", _server_name(nc.connected_url))

    nc = nats.NATS()
    header_parsing.install(nc)
    opts = connect_options(settings)
    # nats-py applies max_reconnect_attempts to the first connect too, and with -1 (or 0)
    # it retries a refused password for ever. Bound the first connect; restore afterwards.
    opts.update(error_cb=on_error, disconnected_cb=on_disconnect, reconnected_cb=on_reconnect,
                max_reconnect_attempts=max(1, initial_attempts))
    last: Exception | None = None
    # nats-py can also loop for ever on some failures (an untrusted TLS certificate), so the
    # whole first connect gets a deadline of its own.
    attempts = max(1, initial_attempts) + 1
    deadline = attempts * len(settings.servers) * (settings.connect_timeout + settings.reconnect_wait) + 1
    try:
        await asyncio.wait_for(nc.connect(**opts), deadline)
        nc.options["max_reconnect_attempts"] = settings.max_reconnect_attempts
        connected = True
        return nc
    except Exception as err:  # nats-py raises many types here; all mean "not connected"
        last = err
        if isinstance(err, asyncio.TimeoutError) and not failures:
            failures["nats"] = f"no answer within {deadline:.0f}s"
        with contextlib.suppress(Exception):
            await nc.close()
    detail = "; ".join(f"{srv}: {why}" for srv, why in failures.items()) or _describe(last)
    servers = ", ".join(settings.servers)
    credentials = "Check the credentials (--nkey, --creds, --user/--password-file or the agent config)."
    if "authorization" in detail or "credentials" in detail:
        hint = credentials
    elif _is_reset(detail) and any((settings.user, settings.nkey_seed_file, settings.creds_file, settings.token_file)):
        hint = ("The server closed the connection during the handshake, which it does on an authorization "
                f"failure. {credentials}")
    elif "certificate" in detail.lower() or "ssl" in detail.lower():
        hint = "Check the TLS files (--tls-ca, --tls-cert, --tls-key)."
    else:
        hint = "Is nats-server running there? Start one with `cim up`, or point --server / CIM_SERVER at it."
    raise ConnectionFailed(f"cannot connect to NATS at {servers} ({detail}). {hint}") from last


def _server_name(server: Any) -> str:
    uri = getattr(server, "uri", server)
    if hasattr(uri, "netloc"):
        return f"{uri.scheme}://{uri.hostname}:{uri.port}"
    return str(uri)


def _is_reset(why: str) -> bool:
    return "reset by peer" in why.lower() or "connection reset" in why.lower()


def _describe(err: BaseException | None) -> str:
    if err is None:
        return "unknown error"
    text = str(err).strip() or type(err).__name__
    if isinstance(err, ConnectionRefusedError) or "Connect call failed" in text:
        return "connection refused"
    if "Authorization Violation" in text or "authorization" in text.lower():
        return "authorization violation (check the credentials)"
    return text
