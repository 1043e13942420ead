"""The hub agent's settings, the consumer and bucket it needs, and what `cim up` gives it."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from ..capability import AgentConfig
from ..names import EVENTS_STREAM
from ..ports import authority, dial_host
from ..provision.spec import ConsumerSpec, KvSpec, ProvisionSpec
from .connectors import STATE_BUCKET, ConnectorConfig

DEFAULT_PORT = 8471


class HttpSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    reuse_port: bool = Field(default=False, description=(
        "bind with SO_REUSEPORT, so several hub agents on one host (each with its own `name`, all run by the "
        "same user) share one host and port, and the kernel (Linux) spreads new connections between them; "
        "one that stops or crashes leaves the others serving. Every hub stores through NATS and keeps nothing "
        "between requests, so any of them can answer any request (webhooks share one durable consumer); "
        "/healthz names the one that answered, and /metrics counts only its own requests. Give the connectors "
        "to one of them: two would work the same folder or bucket"))


class Config(AgentConfig):
    capability: Literal["hub"] = "hub"
    http: HttpSettings = Field(default_factory=HttpSettings)
    tokens_file: Path = Field(description="JSON file of bearer tokens with their allowed sources and labels")
    max_body_size: int = Field(default=64 * 1024 * 1024, gt=0, description="largest upload accepted, in bytes (413 above)")
    idle_timeout: float = Field(default=30.0, gt=0, le=3600,
                                description="seconds a client may send nothing while its upload is read (408 past "
                                            "it), and may take to send a whole request head (closed past it); a "
                                            "download whose client takes nothing for this long is cut off")
    max_downloads: int = Field(default=32, ge=1, le=10_000, description=(
        "downloads (GET /v1/units/{cid}/content) this hub sends at once; past it 503 with Retry-After. Each holds "
        "up to 16 MiB of buffers while its client reads"))
    max_cold_downloads: int = Field(default=8, ge=1, le=10_000, description=(
        "of those, downloads of units in a colder tier (a range too: it reads the whole unit); each holds one of "
        "the tier agent's 32 fetch slots, which `cim units get` and the pipelines share: keep it well below 32"))
    max_downloads_per_token: int = Field(default=8, ge=1, le=10_000, description=(
        "of max_downloads, those one token may hold at once (at most max_downloads): a token whose client reads "
        "slowly, or not at all, cannot lock the other tokens out"))
    max_cold_downloads_per_token: int = Field(default=2, ge=1, le=10_000, description=(
        "of max_cold_downloads, those one token may hold at once (at most max_cold_downloads)"))
    webhooks: list[WebhookSettings] = Field(default_factory=list)
    connectors: list[ConnectorConfig] = Field(default_factory=list)

    def deeper_errors(self) -> list[tuple[str, str]]:
        """Each connector's settings against its plugin's own model, so a typo in an inbox's
        `path` fails `cim config check` (and `cim up` before it starts), not the hub's start."""
        from .connectors import checked

        return checked(self.connectors)[1] if self.connectors else []

    def for_instance(self, i: int) -> Self:
        """Hubs under one service share its port (SO_REUSEPORT), and only the first runs the
        connectors: two would work the same folder or bucket. Webhooks share one consumer."""
        base = super().for_instance(i)
        return base.model_copy(update={"http": base.http.model_copy(update={"reuse_port": True}),
                                       "connectors": base.connectors if i == 1 else []})


def provision_spec() -> ProvisionSpec:
    return ProvisionSpec(
        include_core=False,
        consumers=[ConsumerSpec(
            stream=EVENTS_STREAM, name=CONSUMER, description="events for the hub's outbound webhooks",
            filter_subjects=["cim.evt.>"], deliver_policy="new", ack_wait=ACK_WAIT, max_ack_pending=256,
            max_deliver=MAX_DELIVER,
        )],
        kv=[KvSpec(bucket=STATE_BUCKET, description="hub connector progress (S3 import ETags)")],
    )


def embedded_settings(data_dir: Path, http_port: int | None = None) -> tuple[dict, Callable[[Config], str | None]]:
    """For `cim up`: its port (`--hub-port`), a token made once under the data dir, and an
    inbox folder; and its summary line, from the config as the settings file left it."""
    hub_dir = data_dir / "hub"
    hub_dir.mkdir(parents=True, exist_ok=True)
    tokens = hub_dir / "tokens.json"
    if not tokens.exists():
        fd = os.open(tokens, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"tokens": [{"name": "local", "token": secrets.token_urlsafe(24)}]}, f, indent=2)
    port = DEFAULT_PORT if http_port is None else http_port
    inbox = data_dir / "inbox"
    settings = {
        "http": {"host": "127.0.0.1", "port": port},
        "tokens_file": str(tokens),
        "connectors": [{"plugin": "inbox", "name": "inbox", "settings": {"path": str(inbox), "interval": 1.0}}],
    }

    def note(config: Config) -> str:
        line = f"hub http://{authority(dial_host(config.http.host), config.http.port)}/v1/units"
        if config.tokens_file == tokens:
            token = json.loads(tokens.read_text())["tokens"][0].get("token", "(see the file)")
            line += f" (token {token}, from {tokens})"
        else:  # the operator's own file: its secrets are not echoed
            line += f" (tokens from {config.tokens_file})"
        inboxes = [str(c.settings.get("path")) for c in config.connectors if c.plugin == "inbox"]
        others = [f"{c.name} ({c.plugin})" for c in config.connectors if c.plugin != "inbox"]
        if inboxes:
            line += "; inbox " + ", ".join(inboxes)
        if others:
            line += "; connectors " + ", ".join(others)
        return line

    return settings, note


ACK_WAIT = 60  # seconds: the webhook consumer's ack deadline (provision_spec)
LONGEST_STEP = ACK_WAIT - 10  # one attempt or one wait, at most: well inside it


class WebhookSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    url: HttpUrl
    subjects: list[str] = Field(default_factory=lambda: ["cim.evt.unit.*.created"], min_length=1,
                                description="NATS subject patterns of the events to send")
    secret_file: Path = Field(description="file holding the signing secret shared with the receiver: whsec_<base64> "
                                          "(the Standard Webhooks form) or, anything else, the raw key bytes")
    max_attempts: int = Field(default=5, ge=1, le=50)
    # Each attempt and each wait between two starts the consumer's ack deadline (ACK_WAIT) again:
    # one longer than it would have the server deliver the event a second time meanwhile, and
    # deliveries are bounded (MAX_DELIVER), so an event could be dropped without a dead letter.
    backoff: list[Annotated[float, Field(ge=0, le=LONGEST_STEP)]] = Field(
        default_factory=lambda: [1.0, 2.0, 5.0, 10.0, 30.0],
        description=f"seconds between attempts; the last repeats; each at most {LONGEST_STEP:g}")
    timeout: float = Field(default=10, gt=0, le=LONGEST_STEP,
                           description=f"seconds one attempt may take, at most {LONGEST_STEP:g}")


CONSUMER = "cim-hub-webhooks"
# Deliveries of one event to the webhook dispatcher, at most. A receiver's refusals never count
# (they are attempts within one delivery, then a dead letter); hub restarts mid-delivery and
# failures to write the dead letter do. Past it the event is dropped with an error in the log
# (`term()`): without a bound, a few events that always fail would take every one of the
# consumer's max_ack_pending slots and stop all webhooks.
MAX_DELIVER = 20
