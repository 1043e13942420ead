"""The permissions contract, capabilities.json: which subjects and event types each capability's
agent may use. The NixOS modules render the same JSON (modules/capabilities.nix); the Python
side of each capability is listed in cim.capabilities."""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any


@cache
def _data() -> dict[str, Any]:
    return json.loads(files("cim").joinpath("capabilities.json").read_text())


def names() -> list[str]:
    return list(_data()["capabilities"])


NAMES: tuple[str, ...] = tuple(names())


def event_subject(event_type: str) -> str:
    """The subjects of one event type, for any aggregate id: `unit.located` ->
    `cim.evt.unit.*.located` (modules/capabilities.nix renders the same)."""
    aggregate, event = event_type.split(".", 1)
    return f"cim.evt.{aggregate}.*.{event}"


def may_write(capability: str) -> list[str]:
    """The event types an agent of this capability may append (the server enforces it)."""
    return list(_data()["capabilities"][capability]["events"])


def permissions(capability: str) -> dict[str, list[str]]:
    """The NATS publish/subscribe permissions an agent of this capability needs, and the
    publishes denied inside them (`deny_publish`: another capability's durable consumer)."""
    data = _data()
    cap = data["capabilities"][capability]
    # `{capability}` in the common lists is the agent's own capability.
    common = {k: [s.replace("{capability}", capability) for s in data["common"][k]] for k in ("publish", "subscribe")}
    return {
        "publish": common["publish"] + [event_subject(t) for t in cap["events"]] + cap["publish"],
        "subscribe": common["subscribe"] + cap["subscribe"],
        "deny_publish": list(cap.get("deny_publish", [])),
    }


def scales(capability: str) -> bool:
    """Whether several agents of this capability may share its work (`"scales"` in the list)."""
    return bool(_data()["capabilities"][capability].get("scales", False))


def inbox_prefix(capability: str) -> str:
    """Where an agent of this capability receives its replies: the only inboxes it may read."""
    return f"_INBOX.{capability}"


def nats_permissions(capability: str) -> dict[str, Any]:
    """The `permissions` block of the agent's NATS user, as nats-server reads it (the NixOS
    modules render the same block from capabilities.json)."""
    p = permissions(capability)
    publish: dict[str, list[str]] = {"allow": p["publish"]}
    if p["deny_publish"]:
        publish["deny"] = p["deny_publish"]
    return {"publish": publish, "subscribe": {"allow": p["subscribe"]},
            "allow_responses": dict(_data()["common"]["allow_responses"])}


def describe(capability: str) -> str:
    return _data()["capabilities"][capability]["description"]
