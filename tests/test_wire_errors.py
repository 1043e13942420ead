"""CimError on the wire (issue 15 item 6): every class carries its code, and from_wire
gives back the same class and message, or the nearest class the receiver knows; hostile
bodies give a plain CimError, never an exception of their own."""

from __future__ import annotations

import json

import pytest

from cim.errors import CimError, ConfigError, InvalidInput, NotFound, UnitNotFound, field_errors
from cim.nats.rpc import Endpoint
from cim.registry.query import NoProvider
from cim.runtime import AgentBase, endpoint, endpoints_of
from cim.store import api as store_api
from cim.tier.errors import ObjectMissing


@pytest.mark.parametrize("err", [
    UnitNotFound("bafkreixyz"), InvalidInput("labels.0", "must be lower case"), ObjectMissing("warm", "bafkreiabc"),
    NoProvider(["search>=2: nothing provides it"]), ConfigError("agent.json", [("http.port", "too big")]),
], ids=lambda e: type(e).__name__)
def test_an_error_comes_back_as_its_class_with_its_message_and_fields(err):
    back = CimError.from_wire(json.loads(json.dumps(err.to_wire())))  # as it travels
    assert type(back) is type(err) and str(back) == str(err)
    for name in type(err).wire_fields:
        assert json.dumps(getattr(back, name)) == json.dumps(getattr(err, name))


def test_an_unknown_class_arrives_as_the_nearest_one_the_receiver_knows():
    wire = {"codes": ["shiny_new_not_found", "not_found", "error"], "message": "gone", "fields": {}}
    back = CimError.from_wire(wire)
    assert type(back) is NotFound and str(back) == "gone"


@pytest.mark.parametrize("wire", [None, "text", [], {"codes": "not_found"}, {"codes": [1, None]}, {"message": 5},
                                  {"codes": ["invalid_input"], "message": "x", "fields": "nope"}])
def test_hostile_wire_bodies_give_a_plain_error(wire):
    back = CimError.from_wire(wire, fallback="the agent failed")
    assert isinstance(back, CimError) and str(back)


def test_two_classes_cannot_claim_one_code():
    with pytest.raises(TypeError, match="taken"):
        type("Again", (CimError,), {"code": "unit_not_found"})


def test_field_errors_name_each_field_once():
    from pydantic import BaseModel, Field, ValidationError, field_validator

    class M(BaseModel):
        n: int = Field(gt=0)
        label: str

        @field_validator("label")
        @classmethod
        def lower(cls, v: str) -> str:
            if v != v.lower():
                raise InvalidInput("label", "must be lower case")
            return v

    with pytest.raises(ValidationError) as err:
        M(n=0, label="X")
    assert field_errors(err.value, prefix="settings.") == [
        ("settings.n", "Input should be greater than 0"), ("settings.label", "must be lower case")]


def test_a_handler_that_drifts_from_its_declared_endpoint_is_refused():
    class Drifted(AgentBase):
        @endpoint(store_api.SHOW)
        async def show(self, req: store_api.ListRequest) -> store_api.ShowReply:
            raise AssertionError

    with pytest.raises(TypeError, match=r"cim.store.show declares"):
        endpoints_of(Drifted.__new__(Drifted))
    assert Endpoint("cim.store.show", store_api.CidRequest, store_api.ShowReply).capability == "store"


def test_an_error_reply_that_is_hostile_or_from_an_older_agent_still_gives_a_cim_error():
    from cim.nats.rpc import H_ERROR, H_ERROR_CODE, raise_for_error

    ep = store_api.SHOW
    with pytest.raises(CimError) as deep:  # JSON nested past Python's recursion limit
        raise_for_error(ep, {H_ERROR_CODE: "500", H_ERROR: "boom"}, b"[" * 50_000)
    assert str(deep.value) == "boom"
    with pytest.raises(NotFound):  # an agent from before error bodies: its status says the kind
        raise_for_error(ep, {H_ERROR_CODE: "404", H_ERROR: "no such unit"}, b"")
    with pytest.raises(InvalidInput) as bad:
        raise_for_error(ep, {H_ERROR_CODE: "400", H_ERROR: "limit: too small"}, b"")
    assert bad.value.field is None  # every wire field is set, to None when it did not come
    wire = {"codes": ["unit_not_found"], "message": "gone \x1b[2J\x1b]0;pwned\x07 for good", "fields": {"cid": "b\x1b[31m"}}
    err = CimError.from_wire(wire)
    assert "\x1b" not in str(err) and "\x07" not in str(err) and err.cid == "b[31m"


async def test_closing_with_no_time_left_still_cancels_every_task():
    import asyncio

    from cim.tasks import Supervisor

    tasks = Supervisor()
    forever = tasks.spawn(asyncio.Event().wait(), name="forever")
    await tasks.close(timeout=0)
    for _ in range(10):
        await asyncio.sleep(0)  # a turn of the loop for the cancellation to land
    assert forever.cancelled()
