"""Fuzz the hub's API against the OpenAPI document it serves (schemathesis): whatever
the input, the hub answers with a status and body its own spec documents, and never 500.
A pipeline agent runs, so searches and listings are answered (200), not only refused; half
the requests about a unit name one that is stored, so its content, ranges and conditional
requests are fuzzed on real bytes too."""

import asyncio

import pytest

pytest.importorskip("aiohttp", reason="the hub needs aiohttp")
schemathesis = pytest.importorskip("schemathesis", reason="the fuzz test needs schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance  # noqa: E402

from cim.provision.apply import provision  # noqa: E402
from cim.provision.spec import ProvisionSpec  # noqa: E402
from cim.store.unit_store import UnitStore  # noqa: E402
from support.hub_support import TOKEN, Hub  # noqa: E402


async def test_fuzzed_requests_get_documented_answers_and_never_a_500(nats_server, nc, agent_process, tmp_path):
    await provision(nc, ProvisionSpec())
    await agent_process("pipeline", {"nats": {"servers": [nats_server.url]}, "state_dir": str(tmp_path / "state")}).ready(nc)
    hub = Hub(nats_server.url, tmp_path, max_body_size=50_000).start()
    # Three chunks: ranges within and across them.
    known = (await UnitStore(nc).put_bytes(bytes(range(256)) * 1200, media_type="text/plain")).unit.cid
    try:
        statuses = await asyncio.to_thread(_fuzz, hub.url, known)
    finally:
        hub.stop()
    assert "Traceback" not in hub.log()
    assert {"GET /v1/search", "POST /v1/units", "GET /v1/units/{cid}", "GET /v1/units",
            "GET /v1/units/{cid}/content"} <= set(statuses)
    assert 200 in statuses["GET /v1/search"], statuses  # the 200 schema was checked too
    assert 200 in statuses["GET /v1/units"], statuses
    assert 200 in statuses["GET /v1/units/{cid}/content"], statuses


def _fuzz(url: str, known: str) -> dict[str, set[int]]:
    """Every operation of the document, fuzzed: the statuses each one answered."""
    schema = schemathesis.openapi.from_url(url + "/openapi.yaml")
    checks = [not_a_server_error, status_code_conformance, response_schema_conformance]
    statuses: dict[str, set[int]] = {}

    def runner(seen: set[int]):
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case):
            response = case.call_and_validate(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, checks=checks)
            seen.add(response.status_code)

        return run

    for op in schema.get_all_operations():
        operation = op.ok()
        seen = statuses.setdefault(f"{operation.method.upper()} {operation.path}", set())
        cases = operation.as_strategy()
        if "{cid}" in operation.path:
            cases = st.one_of(cases, cases.map(lambda case: _naming(case, known)))
        given(case=cases)(runner(seen))()
    return statuses


def _naming(case, cid: str):
    """The same request about a unit that is stored."""
    case.path_parameters = {**(case.path_parameters or {}), "cid": cid}
    return case


def test_the_openapi_document_is_valid_to_an_outside_validator_and_has_every_route():
    """What a client generator reads first: openapi-spec-validator, not our own reading of it,
    accepts the document, and it describes every route the hub serves under /v1."""
    from importlib.resources import files

    import yaml
    from openapi_spec_validator import validate

    from cim.hub.http_api import ROUTES

    spec = yaml.safe_load(files("cim.hub").joinpath("openapi.yaml").read_text())
    validate(spec)
    served = {(method.lower(), path) for method, path, _handler in ROUTES if path.startswith("/v1/")}
    documented = {(method, path) for path, ops in spec["paths"].items() for method in ops if method != "parameters"}
    assert served <= documented, f"served but not documented: {sorted(served - documented)}"
    assert {("get", "/v1/units/{cid}/content"), ("get", "/v1/units")} <= documented
