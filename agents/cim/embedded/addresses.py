"""Where `cim up` listens: fixed ports from its options, the same at every start, checked
before anything starts; and the Prometheus scrape targets for them.

A port that is only closing (TIME_WAIT after the last run) counts as free, since every
server binds with SO_REUSEADDR; a port with a listening socket is an error that names it,
who holds it and the option that moves it. `cim up` never moves to another port by itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .. import capabilities
from ..errors import EmbeddedError
from ..hub import config as hub_config
from ..ports import authority, bind_error, bind_problem, dial_host, holder_of, in_use
from ..ui import config as ui_config

NATS_PORT = 4222
MONITORING_PORT = 8222
UI_PORT = ui_config.DEFAULT_PORT  # the agents' own defaults: the same addresses as on NixOS
HUB_PORT = hub_config.DEFAULT_PORT
METRICS_PORT_BASE = 9470
TARGETS_FILE = "prometheus-targets.json"


def metrics_port(base: int, capability: str) -> int:
    """Agent i of the capability list (capabilities.json: store, tier, registry, pipeline,
    hub, ui) serves /metrics on base + i, whichever agents run."""
    return base + capabilities.NAMES.index(capability)


def metrics_ports_fit(base: int) -> None:
    last = base + len(capabilities.NAMES) - 1
    if base < 1 or last > 65535:
        raise EmbeddedError(f"--metrics-port-base {base} puts the metrics ports at {base}..{last}, outside 1..65535; "
                            f"pick a base from 1 to {65535 - len(capabilities.NAMES) + 1}")


@dataclass(frozen=True)
class Listener:
    what: str  # "the dashboard", "the store agent's metrics"
    host: str
    port: int
    option: str  # how to move it: "--ui-port (CIM_UI_PORT)"
    host_option: str = "--host"  # where its address is set


def check_free(listeners: list[Listener]) -> None:
    """Every port distinct and free to listen on, or one error listing each problem."""
    problems = []
    seen: dict[int, Listener] = {}
    for x in listeners:
        if x.port in seen:
            problems.append(f"port {x.port} is given twice: to {seen[x.port].what} and {x.what}; "
                            f"pick another with {x.option}")
            continue
        seen[x.port] = x
        err = bind_error(x.port, x.host)
        if err is None:
            continue
        if in_use(err):
            holder = holder_of(x.port)
            problems.append(f"port {x.port} is taken ({x.what}, on {x.host})" + (f" by {holder}" if holder else "")
                            + f"; stop what holds it (another `cim up`?), or pick another with {x.option}")
        else:
            # Not a taken port: the address or the port itself is wrong, and says how.
            problems.append(f"{x.what} cannot listen on {authority(x.host, x.port)}: {bind_problem(err, x.host, x.port)} "
                            f"(the address is set with {x.host_option}, the port with {x.option})")
    if problems:
        raise EmbeddedError("cannot listen where asked; nothing was started:\n  " + "\n  ".join(problems))


def write_targets(path: Path, targets: list[dict[str, object]]) -> None:
    """Prometheus file_sd targets, written whole or not at all (Prometheus re-reads the file
    when it changes, and must never see half of it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(targets, indent=2) + "\n")
    os.replace(tmp, path)


def target(host: str, port: int, capability: str, agent: str) -> dict[str, object]:
    return {"targets": [authority(dial_host(host), port)], "labels": {"job": "cim", "capability": capability, "agent": agent}}
