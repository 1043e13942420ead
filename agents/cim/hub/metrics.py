"""The hub agent's metrics: HTTP requests and ingest, webhook deliveries and dead letters,
connector items, and the webhook consumer's lag (read when Prometheus scrapes).

They live in the hub's own registry (cim.metrics): the pipeline agent imports the connector
plugins too, and must not export these."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web
from nats.aio.client import Client
from prometheus_client import Counter
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from ..metrics import registry
from ..names import EVENTS_STREAM

REGISTRY = registry("hub")

HTTP_REQUESTS = Counter("cim_hub_http_requests_total", "HTTP requests the hub answered, by method, route and status",
                        ["method", "route", "status"], registry=REGISTRY)
INGESTS = Counter("cim_hub_ingest_total", "HTTP ingest requests by HTTP status", ["status"], registry=REGISTRY)
INGEST_BYTES = Counter("cim_hub_ingest_bytes_total", "Bytes of content accepted over HTTP", registry=REGISTRY)
DELIVERIES = Counter("cim_hub_webhook_deliveries_total", "Webhook attempts by webhook and outcome (ok, failed)",
                     ["webhook", "outcome"], registry=REGISTRY)
DEAD_LETTERS = Counter("cim_hub_webhook_dead_letters_total", "Events a webhook gave up on after max_attempts "
                       "(sent to CIM_DLQ)", ["webhook"], registry=REGISTRY)
INBOX_FILES = Counter("cim_hub_inbox_files_total", "Inbox files by outcome", ["connector", "outcome"],
                      registry=REGISTRY)
S3_OBJECTS = Counter("cim_hub_s3_objects_total", "S3 objects by outcome", ["connector", "outcome"], registry=REGISTRY)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE"))
CLIENT_GONE = 499  # the status counted for a request whose client left before the answer


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every answer by its route's pattern (`/v1/units/{cid}`, never the CID itself,
    so the series stay few); an error raised past the handlers is counted as aiohttp
    answers it."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "(unmatched)"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as err:
        status = err.status
        raise
    except asyncio.CancelledError:
        # The handler was cut off with its connection (the client left, or the hub stops):
        # no answer went out, and no fault of the request's; nginx counts these as 499.
        status = CLIENT_GONE
        raise
    except ConnectionResetError:
        # aiohttp fails the body being read this way when the client goes away mid-upload;
        # a reset of anything else (the client still there) is the hub's own error.
        if request.transport is None or request.transport.is_closing():
            status = CLIENT_GONE
        raise
    finally:
        HTTP_REQUESTS.labels(method_label(request.method), route, str(status)).inc()


def method_label(method: str) -> str:
    """The method as a label: one of the standard ones, else "other". The pure-Python HTTP
    parser takes any token as a method, and a label per made-up method would let any client
    grow the series without bound."""
    return method if method in METHODS else "other"


async def webhook_lag(nc: Client, consumer: str) -> list[Metric]:
    """Events the webhook consumer has not yet delivered: pending plus unacknowledged."""
    info = await nc.jetstream(timeout=3).consumer_info(EVENTS_STREAM, consumer)
    family = GaugeMetricFamily("cim_hub_webhook_lag_events", "Events waiting for the hub's webhooks: pending plus "
                               "delivered and not yet acknowledged")
    family.add_metric([], float((info.num_pending or 0) + (info.num_ack_pending or 0)))
    return [family]
