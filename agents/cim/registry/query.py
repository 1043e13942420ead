"""Which agents provide what: matching and negotiation over registry views (no I/O here,
so the registry agent's live view and a direct read of the bucket share one rule)."""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import NotFound
from .model import AgentView, Match, Requirement, version_key


class NoProvider(NotFound):
    """Negotiation failed: `unmet` holds one line per requirement nothing live satisfies."""

    code = "no_provider"
    wire_fields = ("unmet",)

    def __init__(self, unmet: list[str]):
        self.unmet = unmet
        super().__init__("; ".join(unmet))


def providers(views: Iterable[AgentView], requirement: Requirement) -> list[tuple[AgentView, str]]:
    """Live (`up`) agents that provide the capability in the range, best first: highest
    version, then the most recent heartbeat."""
    found = []
    for view in views:
        if view.state != "up":
            continue
        version = view.record.capabilities.get(requirement.capability)
        if version is not None and requirement.accepts(version):
            found.append((view, version))
    found.sort(key=lambda vv: (version_key(vv[1]), vv[0].record.last_seen), reverse=True)
    return found


def negotiate(views: Iterable[AgentView], requirements: Iterable[Requirement]) -> list[Match]:
    """A provider for every requirement, in their order, or NoProvider naming each unmet one."""
    views = list(views)
    matches: list[Match] = []
    unmet: list[str] = []
    for req in requirements:
        found = providers(views, req)
        if found:
            view, version = found[0]
            matches.append(Match(requirement=req, provider=view.record, version=version))
            continue
        unmet.append(f"nothing provides {req} ({_available(views, req.capability)})")
    if unmet:
        raise NoProvider(unmet)
    return matches


def _available(views: list[AgentView], capability: str) -> str:
    offers = sorted(
        {
            f"{capability} {v.record.capabilities[capability]} from {v.record.name}"
            + ("" if v.state == "up" else f" ({v.state})")
            for v in views
            if capability in v.record.capabilities
        }
    )
    if not offers:
        return "no agent announces it"
    return "available: " + ", ".join(offers)
