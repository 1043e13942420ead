"""Fuzz the ingest API against the OpenAPI document it serves (schemathesis): whatever
the input, the hub answers with a status and body its own spec documents, and never 500."""

import asyncio

import pytest

pytest.importorskip("aiohttp", reason="the hub needs aiohttp")
schemathesis = pytest.importorskip("schemathesis", reason="the fuzz test needs schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance  # noqa: E402

from cim.provision.apply import provision  # noqa: E402
from cim.provision.spec import ProvisionSpec  # noqa: E402
from support.hub_support import TOKEN, Hub  # noqa: E402


async def test_fuzzed_requests_get_documented_answers_and_never_a_500(nats_server, nc, tmp_path):
    await provision(nc, ProvisionSpec())
    hub = Hub(nats_server.url, tmp_path, max_body_size=50_000).start()
    try:
        await asyncio.to_thread(_fuzz, hub.url)
    finally:
        hub.stop()
    assert "Traceback" not in hub.log()


def _fuzz(url: str) -> None:
    schema = schemathesis.openapi.from_url(url + "/openapi.yaml")
    checks = [not_a_server_error, status_code_conformance, response_schema_conformance]
    ran = 0
    for op in schema.get_all_operations():
        operation = op.ok()

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case):
            case.call_and_validate(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, checks=checks)

        given(case=operation.as_strategy())(run)()
        ran += 1
    assert ran >= 3
