"""Logins, sessions and CSRF for the dashboard.

Passwords: a file of `user:hash` lines (a secret, given by path), where the hash is
`scrypt$<n>$<r>$<p>$<salt b64>$<key b64>` (stdlib scrypt, no extra dependency; make one
with `cim ui hash-password`). Or, behind a reverse proxy that authenticates, a header
naming the user, trusted only from the proxy's addresses.

Sessions are signed cookies (HMAC-SHA256 with a secret from a file, else one made at
start, which logs everyone out on a restart). Every state-changing request must come from
our own origin (the `Origin`/`Referer` check) and carry the session's CSRF token: either
alone stops a cross-site form, together they also stop a same-site one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from ..errors import ConfigError

COOKIE = "cim_session"
SESSION_SECONDS = 12 * 3600
_N, _R, _P = 2**14, 8, 1

# Failed logins: after LOGIN_FAILURES within LOGIN_WINDOW seconds, from one address or for one
# user, further tries are refused until the window has passed (guessing costs hours, not seconds).
LOGIN_FAILURES = 5
LOGIN_WINDOW = 300.0


class LoginThrottle:
    """Counts failed logins by address and by user name; in memory, per dashboard process."""

    def __init__(self, limit: int = LOGIN_FAILURES, window: float = LOGIN_WINDOW):
        self.limit, self.window = limit, window
        self.failures: dict[str, list[float]] = {}

    def _recent(self, key: str, now: float) -> list[float]:
        kept = [t for t in self.failures.get(key, []) if now - t < self.window]
        if kept:
            self.failures[key] = kept
        else:
            self.failures.pop(key, None)
        return kept

    def wait(self, *keys: str) -> float:
        """Seconds until these may try again; 0 when they may now."""
        now = time.monotonic()
        waits = [self.window - (now - recent[0]) for recent in (self._recent(k, now) for k in keys) if len(recent) >= self.limit]
        return max(waits, default=0.0)

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        for k in keys:
            self.failures.setdefault(k, []).append(now)


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(key)}"


def check_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, key = encoded.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(_unb64(key)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, _unb64(key))


def read_password_file(path: Path) -> dict[str, str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise ConfigError(str(path), [("(file)", f"cannot read the password file: {err.strerror}")]) from None
    users = {}
    for i, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, encoded = line.strip().partition(":")
        if not sep or not encoded.startswith("scrypt$"):
            raise ConfigError(str(path), [(f"line {i}", "expected `user:scrypt$...` (make the hash with `cim ui hash-password`)")])
        users[user] = encoded
    return users


@dataclass
class Session:
    user: str
    nonce: str
    expires: float


class Auth:
    def __init__(self, *, password_file: Path | None, session_secret_file: Path | None, trusted_header: str | None,
                 trusted_proxies: list[str], secure_cookies: bool):
        self.password_file = password_file
        self.secret = Path(session_secret_file).read_bytes().strip() if session_secret_file else secrets.token_bytes(32)
        self.trusted_header = trusted_header
        self.trusted_proxies = set(trusted_proxies)
        self.secure_cookies = secure_cookies
        self.throttle = LoginThrottle()
        # Sessions ended by a logout, until they would have expired anyway (in memory: a
        # restart without a session secret file logs everyone out in any case).
        self.revoked: dict[str, float] = {}
        self._users: tuple[float, frozenset[str]] | None = None

    # --- passwords --------------------------------------------------------------------

    def verify(self, user: str, password: str) -> bool:
        if not self.password_file:
            return False
        encoded = read_password_file(self.password_file).get(user)  # re-read: rotation without restart
        if encoded is None:
            check_password(password, hash_password("x"))  # same work either way: no user enumeration by timing
            return False
        return check_password(password, encoded)

    def users(self) -> frozenset[str]:
        """The users the password file names now (re-read when it changes)."""
        if not self.password_file:
            return frozenset()
        try:
            mtime = Path(self.password_file).stat().st_mtime
        except OSError:
            return frozenset()  # a password file that is gone lets nobody in
        if self._users is None or self._users[0] != mtime:
            try:
                self._users = (mtime, frozenset(read_password_file(self.password_file)))
            except ConfigError:
                self._users = (mtime, frozenset())
        return self._users[1]

    # --- sessions ---------------------------------------------------------------------

    def _sign(self, payload: bytes) -> str:
        return _b64(hmac.new(self.secret, payload, hashlib.sha256).digest())

    def issue(self, response: web.StreamResponse, user: str) -> Session:
        s = Session(user, secrets.token_urlsafe(16), time.time() + SESSION_SECONDS)
        payload = json.dumps({"u": s.user, "n": s.nonce, "e": int(s.expires)}).encode()
        response.set_cookie(COOKIE, f"{_b64(payload)}.{self._sign(payload)}", httponly=True, samesite="Strict",
                            secure=self.secure_cookies, max_age=SESSION_SECONDS, path="/")
        return s

    def session(self, request: web.Request) -> Session | None:
        if self.trusted_header and request.remote in self.trusted_proxies:
            user = request.headers.get(self.trusted_header)
            if user:
                # The proxy vouches for every request; the CSRF token is bound to the user.
                return Session(user, "proxy:" + user, time.time() + SESSION_SECONDS)
        raw = request.cookies.get(COOKIE, "")
        payload_b64, _, sig = raw.partition(".")
        try:
            payload = _unb64(payload_b64)
        except (ValueError, TypeError):
            return None
        if not sig or not hmac.compare_digest(sig, self._sign(payload)):
            return None
        data = json.loads(payload)
        if data["e"] < time.time() or data["n"] in self.revoked:
            return None
        if data["u"] not in self.users():
            return None  # removed from the password file: their sessions end with it
        return Session(data["u"], data["n"], data["e"])

    def revoke(self, session: Session) -> None:
        now = time.time()
        self.revoked = {n: e for n, e in self.revoked.items() if e > now}
        self.revoked[session.nonce] = session.expires

    def csrf_token(self, session: Session) -> str:
        return self._sign(b"csrf:" + session.nonce.encode())

    def same_origin(self, request: web.Request) -> bool:
        """The request came from a page of this dashboard (browsers always send Origin on a
        cross-origin POST; a missing one falls back to Referer)."""
        origin = request.headers.get("Origin") or request.headers.get("Referer")
        if not origin:
            return False
        parts = urlsplit(origin)
        host = request.headers.get("X-Forwarded-Host") if request.remote in self.trusted_proxies else None
        return parts.netloc == (host or request.host)

    def check_csrf(self, request: web.Request, session: Session, token: str | None) -> str | None:
        """None when the state-changing request may go ahead, else why not."""
        if not self.same_origin(request):
            return "this request did not come from a page of this dashboard (Origin mismatch)"
        if not token or not hmac.compare_digest(token, self.csrf_token(session)):
            return "the form's CSRF token is missing or stale; reload the page and try again"
        return None
