"""The JetStream JSON API: one request helper, and the error codes CIM acts on, by name.

Errors are told apart by these codes (and nats-py's exception classes), never by the words
of a message, which a server version may change.
"""

from __future__ import annotations

import json
from enum import IntEnum
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.js.errors import NotFoundError


class JsError(IntEnum):
    """nats-server's `err_code`s (server/errors.json) that CIM handles."""

    CONSUMER_NOT_FOUND = 10014
    MESSAGE_NOT_FOUND = 10037
    STREAM_NOT_FOUND = 10059
    WRONG_LAST_SEQUENCE = 10071
    ROLLUP_NOT_PERMITTED = 10111
    CONSUMER_ALREADY_EXISTS = 10148
    BATCH_DUPLICATE_MSG_ID = 10201


async def api(nc: Client, subject: str, body: dict[str, Any] | None = None, *, timeout: float = 10.0) -> dict[str, Any]:
    """One JetStream API request (`subject` without the `$JS.API.` prefix): the JSON answer,
    with its `error` when the server refused. Raises what nats-py raises when nobody answers."""
    msg = await nc.request(f"$JS.API.{subject}", json.dumps(body).encode() if body is not None else b"", timeout=timeout)
    answer: dict[str, Any] = json.loads(msg.data)
    return answer


def error_code(answer: dict[str, Any]) -> int | None:
    """The `err_code` of an API answer's error, None when it has none."""
    err = answer.get("error")
    return int(err["err_code"]) if isinstance(err, dict) and "err_code" in err else None


def no_responders(err: BaseException) -> bool:
    """Nobody listens on the subject: no such stream, or no agent of that capability."""
    return isinstance(err, nats.errors.NoRespondersError)


def not_found(err: BaseException) -> bool:
    """A message (or stream) that is not there, as nats-py reports it."""
    return isinstance(err, NotFoundError) or getattr(err, "err_code", None) in (
        JsError.MESSAGE_NOT_FOUND, JsError.STREAM_NOT_FOUND) or getattr(err, "code", None) == 404
