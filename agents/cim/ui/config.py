"""The ui agent's settings, and the login and port `cim up` gives it."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..capability import AgentConfig
from ..ports import authority, dial_host
from .auth import hash_password

DEFAULT_PORT = 8470


INLINE_LIMIT = 768 * 1024  # uploads go through the store agent's inline put


class HttpSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)


class Config(AgentConfig):
    capability: Literal["ui"] = "ui"
    http: HttpSettings = Field(default_factory=HttpSettings)
    password_file: Path | None = Field(default=None, description="`user:scrypt$...` lines (`cim ui hash-password`)")
    trusted_header: str | None = Field(default=None, description="header naming the user, set by an authenticating reverse proxy")
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"],
                                       description="addresses whose trusted_header is believed")
    session_secret_file: Path | None = Field(default=None, description="HMAC key for session cookies; random per start if unset")
    secure_cookies: bool = Field(default=False, description="mark cookies Secure (set when served over HTTPS)")
    max_upload: int = Field(default=INLINE_LIMIT, gt=0, le=INLINE_LIMIT)
    idle_timeout: float = Field(default=30.0, gt=0, le=3600,
                                description="seconds an upload may send nothing before it is cut off (408)")

    @model_validator(mode="after")
    def _some_login(self) -> Config:
        if self.password_file is None and self.trusted_header is None:
            raise ValueError("set password_file or trusted_header: the dashboard never runs without a login")
        return self


def embedded_settings(data_dir: Path, http_port: int | None = None) -> tuple[dict, Callable[[Config], str | None]]:
    """For `cim up`: its port (`--ui-port`), and a user `admin` whose password is made once
    and kept in a 0600 file under the data dir (the UI itself only ever sees its hash); and
    its summary line, from the config as the settings file left it."""
    ui_dir = data_dir / "ui"
    ui_dir.mkdir(parents=True, exist_ok=True)
    password_path = ui_dir / "admin-password"
    users = ui_dir / "users"
    if not password_path.exists() or not users.exists():
        password = secrets.token_urlsafe(12)
        # Users the operator added stay: only admin's line is made anew, with its password.
        others = [line for line in users.read_text().splitlines() if line.strip() and not line.startswith("admin:")] \
            if users.exists() else []
        _write_private(users, "".join(f"{line}\n" for line in [f"admin:{hash_password(password)}", *others]))
        _write_private(password_path, password + "\n")
    secret = ui_dir / "session-secret"
    if not secret.exists():
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    port = DEFAULT_PORT if http_port is None else http_port
    settings = {"http": {"host": "127.0.0.1", "port": port}, "password_file": str(users), "session_secret_file": str(secret)}

    def note(config: Config) -> str:
        url = f"http://{authority(dial_host(config.http.host), config.http.port)}"
        if config.password_file == users:
            login = f"user admin, password {password_path.read_text().strip()}, kept in {password_path}"
        elif config.password_file is not None:  # the operator's own users: their passwords are theirs
            login = f"users and password hashes from {config.password_file}"
        else:
            login = f"logged in by the proxy's {config.trusted_header} header"
        return f"UI {url} ({login}); `cim ui open` opens it"

    return settings, note


def _write_private(path: Path, text: str) -> None:
    """`text` in `path`, readable by its owner only, whole or not at all (a temporary file
    renamed over it: a crash never leaves a half-written login file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")  # 0600 already
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: a power cut leaves the old file or the new
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
