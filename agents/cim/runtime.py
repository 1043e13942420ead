"""The agent runtime: what `cim agent run <capability> --config FILE` does for every agent.

It validates the config, connects, serves Prometheus `/metrics`, starts the agent, and
only then registers it as a NATS micro service (so `$SRV.PING/INFO/STATS` answer once it is
ready), and drains on SIGTERM.
Agents declare typed async handlers over pydantic models with `@endpoint`; the runtime
parses requests, maps errors into micro error replies and counts everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, cast, get_type_hints

from nats.aio.client import Client
from nats.micro.request import Request, ServiceError
from nats.micro.service import Service, ServiceConfig
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from pydantic import BaseModel, ValidationError

from . import __version__, gc_tuning, logs, metrics
from .capability import AgentConfig
from .errors import CimError, InvalidInput, invalid_input
from .nats.connect import connect
from .nats.rpc import H_PROGRESS, Endpoint
from .permissions import inbox_prefix
from .registry.announce import Heartbeat
from .tasks import Supervisor

log = logging.getLogger("cim.agent")
C = TypeVar("C", bound=AgentConfig)

# Every agent serves these beside its capability's own (cim.metrics).
REQUESTS = Counter("cim_requests_total", "Requests served by endpoint and outcome", ["endpoint", "outcome"],
                   registry=metrics.RUNTIME)
LATENCY = Histogram("cim_request_seconds", "Request handling time", ["endpoint"], registry=metrics.RUNTIME)
CONNECTED = Gauge("cim_nats_connected", "1 while the agent is connected to NATS", registry=metrics.RUNTIME)
UP_SINCE = Gauge("cim_agent_start_time_seconds", "When the agent started (unix time)", registry=metrics.RUNTIME)

Raw = bytes  # a handler may take or return raw bytes instead of a model


@dataclass
class EndpointSpec:
    name: str
    handler: Callable[..., Awaitable[Any]]
    request: type | None
    description: str


def endpoint(declared: Endpoint[Any]) -> Callable:
    """Serve an agent method as the micro endpoint its capability's api.py declares. The
    method's type hints must match the declaration: callers use the same `Endpoint`."""

    def mark(fn: Callable) -> Callable:
        fn.__cim_endpoint__ = declared  # type: ignore[attr-defined]
        return fn

    return mark


async def serve(nc: Client, config: AgentConfig, specs: list[EndpointSpec], metadata: dict[str, str]) -> Service:
    """The agent's micro service, its endpoints subscribed before it answers `$SRV.PING` and
    `$SRV.INFO`: those answering is what `cim up`, `cim status` and the registry take for
    "ready" (nats-py's `add_service` answers them first, and a request sent right after its
    first PING answer could find no responder)."""
    service = Service(nc, ServiceConfig(
        name=config.agent_name,
        version=__version__ if _semver(__version__) else "0.0.0",
        description=f"CIM {config.capability} agent",
        metadata=metadata,
        queue_group=f"cim-{config.capability}",
    ))
    group = service.add_group(name=f"cim.{config.capability}")
    for spec in specs:
        await group.add_endpoint(name=spec.name, handler=_wrap(spec), metadata={"description": spec.description})
    await service.start()
    return service


def endpoints_of(agent: Any) -> list[EndpointSpec]:
    specs = []
    for _, fn in inspect.getmembers(agent, inspect.ismethod):
        declared = getattr(fn, "__cim_endpoint__", None)
        if not isinstance(declared, Endpoint):
            continue
        hints = get_type_hints(fn)
        params = list(inspect.signature(fn).parameters.values())
        request = hints.get(params[0].name) if params else None
        reply = hints.get("return")
        if request is not declared.request or reply is not declared.reply:
            raise TypeError(f"{fn.__qualname__} takes {request} and answers {reply}, but {declared.subject} declares "
                            f"{declared.request} and {declared.reply}: change one to match the other")
        specs.append(EndpointSpec(declared.name, fn, request, (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""))
    return specs


def _status_of(err: Exception) -> tuple[str, str]:
    if isinstance(err, CimError):
        return err.status, str(err)
    if isinstance(err, ValidationError):
        return "400", str(err)
    return "500", f"internal error: {type(err).__name__}: {err}"


def _wire_of(err: Exception) -> dict[str, Any]:
    if isinstance(err, CimError):
        return err.to_wire()
    return CimError(_status_of(err)[1]).to_wire()


def _answer_with_wire(req: Request, wire: dict[str, Any]) -> None:
    """The micro framework answers a raised ServiceError itself (that is how $SRV.STATS
    counts it), with only a status and a text; this puts the error's CIM class and fields
    (CimError.to_wire) in the body of that same answer, for `cim.nats.rpc.call`."""
    plain = req.respond_error

    async def respond_error(code: str, description: str, data: bytes = b"", headers: dict[str, str] | None = None) -> None:
        await plain(code, description, json.dumps(wire, default=str).encode(), headers)

    req.respond_error = respond_error  # type: ignore[method-assign]


def _encode(result: Any) -> bytes:
    if isinstance(result, bytes):
        return result
    if isinstance(result, BaseModel):
        return result.model_dump_json().encode()
    return json.dumps(result, default=str).encode()


def _wrap(spec: EndpointSpec) -> Callable[[Request], Awaitable[None]]:
    async def handle(req: Request) -> None:
        started = time.perf_counter()
        outcome = "ok"
        _REQUEST.set(req)
        try:
            if spec.request is None:
                result = await spec.handler()
            elif spec.request is bytes:
                result = await spec.handler(req.data)
            else:
                try:
                    payload = json.loads(req.data or b"{}")
                except json.JSONDecodeError as err:
                    raise InvalidInput("(request)", f"not JSON: {err.msg}") from None
                try:
                    parsed = spec.request.model_validate(payload)  # type: ignore[attr-defined]  # a pydantic model
                except ValidationError as err:
                    raise invalid_input(err) from None
                result = await spec.handler(parsed)
            await req.respond(_encode(result))
        except Exception as err:
            code, text = _status_of(err)
            outcome = code
            _answer_with_wire(req, _wire_of(err))
            if code == "500":
                log.exception("endpoint %s failed", spec.name)
            # Raised, not answered here, so the micro framework counts it in $SRV.STATS.
            raise ServiceError(code, text[:1000]) from err
        finally:
            REQUESTS.labels(spec.name, outcome).inc()
            LATENCY.labels(spec.name).observe(time.perf_counter() - started)

    return handle


# Progress of a long request travels on its own reply subject, ahead of the answer, with the
# header H_PROGRESS: the only subject an agent may answer on (allow_responses) is the one it
# was asked on, and a subject named in a request's body would let any caller make the agent
# publish wherever its credential reaches.
_REQUEST: contextvars.ContextVar[Request | None] = contextvars.ContextVar("cim_request", default=None)


async def progress(item: dict) -> None:
    """Tell the caller of the endpoint now running how far it got (nothing if it did not ask
    on a reply subject)."""
    req = _REQUEST.get()
    if req is not None:
        with contextlib.suppress(ValueError):  # asked without a reply subject
            await req.respond(json.dumps(item).encode(), headers={H_PROGRESS: "1"})


class AgentContext:
    """What an agent gets from the runtime: its config, its live connection, and the one
    supervisor of its background tasks (`ctx.tasks.spawn(coro, name)`), which the runtime
    stops, ahead of the agent's own `stop`; and `metrics`, what its /metrics serves (the
    runtime's and its capability's metrics, cim.metrics), where an agent registers
    collectors of its own."""

    def __init__(self, config: AgentConfig, nc: Client):
        self.config = config
        self.nc = nc
        self.stopping = asyncio.Event()
        self.tasks = Supervisor()
        self.metrics: CollectorRegistry = metrics.served(config.capability)


class AgentBase(Generic[C]):
    """What every capability's agent is, over its config model (`AgentBase[Config]`). The
    runtime builds it with its context, calls `start` and then serves its endpoints, announces
    `capabilities()` in the registry at every beat, and on SIGTERM calls `quiesce` and then
    `stop`; each does nothing unless an agent overrides it."""

    def __init__(self, ctx: AgentContext):
        self.ctx = ctx
        # The runtime validated the file with this capability's own model (cim.config).
        self.config: C = cast(C, ctx.config)
        self.nc = ctx.nc

    async def start(self) -> None:
        pass

    async def quiesce(self) -> None:
        """On SIGTERM, first: take no new work (leave request subjects to the other agents of
        the queue group). Then the runtime cancels the background tasks, then `stop`."""

    async def stop(self) -> None:
        pass

    def capabilities(self) -> dict[str, str]:
        """What this agent provides besides its own capability, `name -> version`."""
        return {}


# An agent's whole stop, after SIGTERM, takes at most this long (systemd's TimeoutStopSec is
# 90 s by default): each step gets what is left of it, and what is still running then is
# abandoned. Nothing acknowledged is lost by that: work in flight was not acknowledged, and
# the server delivers it again. A second SIGTERM or Ctrl-C exits at once.
STOP_DEADLINE = 30.0


async def _bounded(what: str, step: Any, deadline: float) -> None:
    """Await `step` until `deadline` (loop time); past it, cancel it and go on without
    waiting for the cancellation (a step that swallows it must not hold the stop)."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
    if not done:
        task.cancel()
        log.warning("stopping: %s did not finish in time; going on without it", what)
    elif not task.cancelled() and task.exception() is not None:
        log.warning("stopping: %s failed: %s", what, task.exception())


def _exit_now(signum: int) -> None:
    log.warning("stopping: signal %d again; exiting now (work in flight is delivered again)", signum)
    logging.shutdown()
    os._exit(128 + signum)


async def run_agent(config: AgentConfig, agent_class: Callable[[AgentContext], AgentBase[Any]]) -> None:
    logs.setup(config.log_level)
    nc = await connect(config.nats.model_copy(update={
        "name": config.nats.name or config.agent_name,
        # Replies arrive under the agent's own prefix: its credential may read nothing else.
        "inbox_prefix": config.nats.inbox_prefix or inbox_prefix(config.capability),
    }))
    CONNECTED.set(1)
    ctx = AgentContext(config, nc)
    agent = agent_class(ctx)
    gc_tuning.tune()
    metrics_port = None
    if config.metrics.port is not None:
        server, _thread = start_http_server(config.metrics.port, addr=config.metrics.host, registry=ctx.metrics)
        metrics_port = server.server_port
        log.info("metrics on http://%s:%d/metrics", config.metrics.host, metrics_port)
    UP_SINCE.set(time.time())
    metadata = {
        "capability": config.capability,
        "agent": config.agent_name,
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
        "started": datetime.now(UTC).isoformat(),
        "metrics_port": str(metrics_port or ""),
    }
    specs = endpoints_of(agent)  # a handler that does not match its declaration fails before anything starts

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, ctx.stopping.set)
    await agent.start()
    # Registered only once the agent has started: an agent whose start fails (a tier that
    # refuses its keys) must never have looked ready. A request sent meanwhile finds no
    # responder, and its caller says so.
    service = heartbeat = None
    if not ctx.stopping.is_set():  # a stop asked during a long start: never served, never announced
        service = await serve(nc, config, specs, metadata)
        if config.registry.announce:
            heartbeat = Heartbeat(
                nc, name=config.agent_name, instance_id=service.id, capability=config.capability, version=__version__,
                capabilities=lambda: {config.capability: __version__, **agent.capabilities()},
                endpoints=[e.subject for e in service.info().endpoints], interval=config.registry.heartbeat,
            )
            await heartbeat.start()
        log.info("%s agent %s ready (pid %d)", config.capability, config.agent_name, os.getpid())
    try:
        await ctx.stopping.wait()
    finally:
        log.info("stopping: draining requests and closing the connection (at most %gs)", STOP_DEADLINE)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _exit_now, sig)
        deadline = loop.time() + STOP_DEADLINE
        if heartbeat is not None:
            await _bounded("the registry heartbeat", heartbeat.stop(), deadline)
        await _bounded(f"the {config.capability} agent's quiesce", agent.quiesce(), deadline)
        await _bounded(f"the {config.capability} agent's tasks", ctx.tasks.close(max(0.0, deadline - loop.time())), deadline)
        await _bounded(f"the {config.capability} agent's own stop", agent.stop(), deadline)
        if service is not None:
            await _bounded("the service endpoints", service.stop(), deadline)
        # The connection gets a few seconds of its own even when the steps above used the rest.
        await _bounded("draining the connection", nc.drain(), max(deadline, loop.time() + 5))
        if not nc.is_closed:
            await _bounded("closing the connection", nc.close(), loop.time() + 2)
        CONNECTED.set(0)
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
        for t in leftover:
            t.cancel()
        if leftover:
            _, pending = await asyncio.wait(leftover, timeout=2)
            if pending:
                # asyncio.run would wait for them for ever: they ignore cancellation.
                log.warning("stopping: %d task(s) ignore cancellation; exiting without them", len(pending))
                logging.shutdown()
                os._exit(0)
        log.info("stopped")


def _semver(v: str) -> bool:
    parts = v.split(".")
    return len(parts) >= 3 and all(p.isdigit() for p in parts[:3])
