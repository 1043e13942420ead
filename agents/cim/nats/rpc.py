"""Calling an agent's micro endpoint: the one call every caller uses (the CLI, the dashboard,
agents and tests).

An endpoint is declared once, in its capability's `api.py`, with the request and reply
models of the handler that serves it:

    PUT = Endpoint("cim.store.put", PutRequest, PutReply)
    reply = await call(nc, PUT, PutRequest(...))      # a PutReply

The agent serves it with `@endpoint(PUT)` (the runtime checks the handler's types against
it), so client and server cannot drift apart. A request is validated before it leaves; an
error reply arrives as the CimError class the agent raised, with its message
(`CimError.from_wire`); no responders means no agent of that capability runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

import nats.errors
from nats.aio.client import Client
from pydantic import BaseModel, ValidationError

from ..errors import CimError, invalid_input

# A message on the reply subject ahead of the answer: progress of a long request.
H_PROGRESS = "Cim-Progress"
# A micro error reply's status and text (the micro protocol's own headers).
H_ERROR = "Nats-Service-Error"
H_ERROR_CODE = "Nats-Service-Error-Code"

Reply = TypeVar("Reply")
# An error reply without a CIM body (an agent of an older version): its status, as an error code.
STATUS_CODES = {"400": "invalid_input", "413": "invalid_input", "404": "not_found"}


class AgentUnavailable(CimError):
    code = "agent_unavailable"


@dataclass(frozen=True)
class Endpoint(Generic[Reply]):
    """`cim.<capability>.<name>`, what it takes (a model, `bytes`, or nothing) and what it
    answers (a model, `bytes`, or `dict` for plain JSON)."""

    subject: str
    request: type[BaseModel] | type[bytes] | None
    reply: type[Reply]

    @property
    def capability(self) -> str:
        return self.subject.split(".")[1]

    @property
    def name(self) -> str:
        return self.subject.split(".", 2)[2]


def encode_request(endpoint: Endpoint[Any], request: BaseModel | bytes | dict[str, Any] | None) -> bytes:
    """The request's bytes, checked against the endpoint's model before they leave."""
    if isinstance(request, bytes):
        return request
    model = endpoint.request
    if isinstance(request, BaseModel):
        if model is not None and model is not bytes and not isinstance(request, model):
            raise TypeError(f"{endpoint.subject} takes a {model.__name__}, not a {type(request).__name__}")
        # Only what the caller set: an agent of an older version refuses fields it lacks.
        return request.model_dump_json(exclude_unset=True).encode()
    if model is not None and model is not bytes and issubclass(model, BaseModel):
        try:
            return model.model_validate(request or {}).model_dump_json(exclude_unset=True).encode()
        except ValidationError as err:
            raise invalid_input(err) from None
    return json.dumps(request or {}).encode()


def decode_reply(endpoint: Endpoint[Reply], data: bytes) -> Reply:
    kind: Any = endpoint.reply
    if kind is bytes:
        return data  # type: ignore[return-value]  # Reply is bytes here
    try:
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            return kind.model_validate_json(data)  # type: ignore[return-value]  # Reply is this model
        return json.loads(data) if data else None  # type: ignore[return-value]  # Reply is dict here
    except (ValidationError, ValueError, RecursionError) as err:  # RecursionError: JSON nested too deep
        raise CimError(f"the {endpoint.capability} agent's answer to {endpoint.subject} is not what it declares "
                       f"({type(err).__name__}); is it a different version of cim? Check `cim agents ls`") from None


def raise_for_error(endpoint: Endpoint[Any], headers: dict[str, str] | None, data: bytes) -> None:
    """The CimError an error reply stands for: the agent's own class when it sent one."""
    headers = headers or {}
    if H_ERROR_CODE not in headers and H_ERROR not in headers:
        return
    status = headers.get(H_ERROR_CODE, "")
    text = headers.get(H_ERROR) or f"the {endpoint.capability} agent failed ({status})"
    try:
        wire = json.loads(data) if data else None
    except (ValueError, RecursionError):  # not JSON, or nested too deep to be ours
        wire = None
    if not (isinstance(wire, dict) and isinstance(wire.get("codes"), list)):
        # An agent from before errors carried their class: its status says what kind.
        wire = {"codes": [STATUS_CODES.get(status, "error")], "message": text}
    raise CimError.from_wire(wire, fallback=text)


def _unavailable(endpoint: Endpoint[Any]) -> AgentUnavailable:
    cap = endpoint.capability
    return AgentUnavailable(f"no {cap} agent answers {endpoint.subject}; start it (`cim up` runs one; on NixOS set "
                            f"services.cim.{cap}.enable = true) and check `cim status`")


@overload
async def call(nc: Client, endpoint: Endpoint[Reply], request: BaseModel | bytes | dict[str, Any] | None = None, *,
               timeout: float = 10.0, on_progress: Callable[[dict[str, Any]], None] | None = None) -> Reply: ...
@overload
async def call(nc: Client, endpoint: str, request: BaseModel | bytes | dict[str, Any] | None = None, *,
               timeout: float = 10.0, on_progress: Callable[[dict[str, Any]], None] | None = None) -> Any: ...
async def call(nc: Client, endpoint: Endpoint[Any] | str, request: BaseModel | bytes | dict[str, Any] | None = None, *,
               timeout: float = 10.0, on_progress: Callable[[dict[str, Any]], None] | None = None) -> Any:
    """Ask `endpoint` and return its reply; `on_progress` gets what the agent sends ahead of
    it (`timeout` then bounds the wait for each message, not the whole call)."""
    ep: Endpoint[Any] = endpoint if isinstance(endpoint, Endpoint) else Endpoint(endpoint, None, dict)
    body = encode_request(ep, request)
    if on_progress is None:
        try:
            msg = await nc.request(ep.subject, body, timeout=timeout)
        except nats.errors.NoRespondersError:
            raise _unavailable(ep) from None
        except nats.errors.TimeoutError:
            raise AgentUnavailable(f"the {ep.capability} agent did not answer {ep.subject} within {timeout:g}s") from None
    else:
        msg = await _with_progress(nc, ep, body, timeout, on_progress)
    raise_for_error(ep, msg.headers, msg.data)
    return decode_reply(ep, msg.data)


async def _with_progress(nc: Client, ep: Endpoint[Any], body: bytes, timeout: float,
                         on_progress: Callable[[dict[str, Any]], None]) -> Any:
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish(ep.subject, body, reply=inbox)
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout)
            except nats.errors.TimeoutError:
                raise AgentUnavailable(f"the {ep.capability} agent did not answer {ep.subject} within {timeout:g}s") from None
            headers = msg.headers or {}
            if headers.get("Status") == "503":  # no responders, on a plain subscription
                raise _unavailable(ep)
            if headers.get(H_PROGRESS):
                try:
                    item = json.loads(msg.data)
                except (ValueError, RecursionError):
                    continue  # progress is advisory: a garbled line is skipped
                if isinstance(item, dict):
                    on_progress(item)
                continue
            return msg
    finally:
        await sub.unsubscribe()
