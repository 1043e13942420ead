"""Bearer tokens for the ingest API, read from a file (a secret: never inline in a config).

The file is JSON: `{"tokens": [{"name": "ci", "token": "...", "sources": ["ci", "ci/*"],
"labels": ["build", "report-*"], "scopes": ["write"]}]}`. `token_sha256` (hex) may stand in for
`token`, so the file can hold hashes only. `sources` and `labels` are shell-style patterns of
what a client holding the token may set; a request outside them is refused with 403, not
trimmed. `scopes` says what the token may do: `write` (store units) and `read` (unit metadata,
search); both unless the file says otherwise, as every token could before scopes existed.

A token reads what it could have written: units whose source and every label they were
created with (their `unit.created` record) lie inside its patterns. Labels pipeline steps
added later do not count: a classifier's `text` or `document` must not take a token's own
uploads from it (the listing's `label` filter, a filter and not who sees what, reads a
unit's labels now). A unit outside them answers 404, as an unknown one does; the listing
leaves it out (the pipeline's index by source, the hub by labels); a search is narrowed to
them, or refused with 403 where it cannot be (cim.hub.http_api).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError, field_errors

log = logging.getLogger(__name__)

Scope = Literal["read", "write"]
SCOPES: tuple[Scope, ...] = ("read", "write")


class Token(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    token: str | None = Field(default=None, min_length=16)
    token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    sources: list[str] = Field(default_factory=lambda: ["*"])
    labels: list[str] = Field(default_factory=lambda: ["*"])
    default_source: str | None = None
    # Both by default: every token could read and write before scopes existed.
    scopes: list[Scope] = Field(default_factory=lambda: list(SCOPES), min_length=1)

    @model_validator(mode="after")
    def _one_secret(self) -> Token:
        if (self.token is None) == (self.token_sha256 is None):
            raise ValueError("give exactly one of token (at least 16 characters) or token_sha256")
        return self

    @property
    def digest(self) -> bytes:
        return bytes.fromhex(self.token_sha256) if self.token_sha256 else hashlib.sha256((self.token or "").encode()).digest()

    def source_for(self, requested: str | None) -> str:
        """The source a unit gets: what the client asked for, else the token's default."""
        if requested:
            return requested
        if self.default_source:
            return self.default_source
        literal = [s for s in self.sources if not any(c in s for c in "*?[")]
        return literal[0] if literal else f"http:{self.name}"

    def forbidden(self, source: str, labels: list[str]) -> list[tuple[str, str]]:
        """(field, why) for each thing this token may not set; empty when all is allowed."""
        return self.refused("write") + self._outside(source, labels)

    def refused(self, scope: Scope) -> list[tuple[str, str]]:
        """(field, why) when this token lacks `scope`; empty when it has it."""
        if scope in self.scopes:
            return []
        doing = "store units" if scope == "write" else "read units"
        return [("Authorization", f"token {self.name!r} may not {doing} (its scopes: {', '.join(self.scopes)}); "
                                  f"give it the scope {scope} in the hub's tokens_file")]

    def may_see(self, source: str, labels: Iterable[str]) -> bool:
        """Whether this token may read a unit: it has `read` and could have written the unit."""
        return not self.refused("read") and not self._outside(source, list(labels))

    @property
    def every_source(self) -> bool:
        return "*" in self.sources

    @property
    def every_label(self) -> bool:
        return "*" in self.labels

    def _outside(self, source: str, labels: list[str]) -> list[tuple[str, str]]:
        problems = []
        if not any(fnmatch.fnmatchcase(source, p) for p in self.sources):
            problems.append(("source", f"token {self.name!r} may not set source {source!r} (allowed: {', '.join(self.sources)})"))
        for label in labels:
            if not any(fnmatch.fnmatchcase(label, p) for p in self.labels):
                problems.append(("labels", f"token {self.name!r} may not set label {label!r} (allowed: {', '.join(self.labels)})"))
        return problems


class TokenFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokens: list[Token] = Field(min_length=1)


class Tokens:
    """The tokens of one file, re-read when the file changes (rotation without a restart)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._mtime: float | None = None
        self._by_digest: dict[bytes, Token] = {}
        # The key that seals GET /v1/units's cursors (cim.hub.unit_pages): derived from the
        # file's content, a secret every hub of a service reads, so any of them opens a cursor
        # another gave out; a new file (a rotation) ends the cursors given out before.
        self.cursor_key = b""
        self._load()

    def _load(self) -> None:
        try:
            stat = self.path.stat()
            raw = self.path.read_bytes()
            data = json.loads(raw)
            parsed = TokenFile.model_validate(data)
        except OSError as err:
            raise ConfigError(str(self.path), [("(file)", f"cannot read the token file: {err.strerror}")]) from None
        except json.JSONDecodeError as err:
            raise ConfigError(str(self.path), [(f"line {err.lineno}", f"not JSON: {err.msg}")]) from None
        except (UnicodeDecodeError, RecursionError):
            raise ConfigError(str(self.path), [("(file)", "not UTF-8 JSON of a sane depth")]) from None
        except ValidationError as err:
            raise ConfigError(str(self.path), field_errors(err)) from None
        self._by_digest = {t.digest: t for t in parsed.tokens}
        self.cursor_key = hmac.new(raw, b"cim hub: GET /v1/units cursors", hashlib.sha256).digest()
        self._mtime = stat.st_mtime

    def _refresh(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            mtime = None
        if mtime == self._mtime:
            return
        try:
            self._load()
        except ConfigError as err:
            # Fail closed: the old tokens may include one that the new file revokes. Every
            # token is refused until the file is valid again (write it elsewhere and rename).
            problem = str(err)
            self._by_digest = {}
            self._mtime = mtime
            log.error("hub tokens: %s; refusing every token until the file is fixed", problem.replace("\n", " "))

    def lookup(self, presented: str) -> Token | None:
        self._refresh()
        digest = hashlib.sha256(presented.encode()).digest()
        for known, token in self._by_digest.items():
            # Constant time per comparison, so a guess learns nothing from the timing.
            if hmac.compare_digest(known, digest):
                return token
        return None
