"""Settings under `cim up`: `<data-dir>/settings/<capability>.json`, merged into the config
`cim up` generates for that agent, and checked by the code `cim config check` runs.

The merge rule: objects merge key by key, everything else (lists, strings, numbers, null)
in the file replaces what `cim up` generated. So `{"policies": [...]}` in tier.json replaces
the default policies, and `{"http": {"host": "0.0.0.0"}}` in ui.json keeps the port.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import capabilities
from ..capability import AgentConfig
from ..config import read_json, validate_config
from ..errors import ConfigError

SETTINGS_DIR = "settings"

# What `cim up` owns: the addresses it checks, waits for and prints, and each agent's
# identity and state. A settings file that sets one is refused, naming the way to change it.
OWNED: dict[tuple[str, ...], str] = {
    ("capability",): "it is the file's name",
    ("name",): "`cim up` names each agent cim-<capability>, and finds it by that name when it waits for it "
               "(two agents of one name would be one micro service)",
    ("nats",): "`cim up` connects each agent with its own key (--port, --host move the server)",
    ("state_dir",): "`cim up` keeps each agent's state under <data-dir>/state",
    ("metrics", "port"): "set --metrics-port-base (CIM_METRICS_PORT_BASE) instead",
    ("http", "port"): "set --ui-port (CIM_UI_PORT) or --hub-port (CIM_HUB_PORT) instead",
}


def settings_file(data_dir: Path, capability: str) -> Path:
    return Path(data_dir) / SETTINGS_DIR / f"{capability}.json"


def check_names(data_dir: Path) -> None:
    """Every file in the settings folder is `<capability>.json` of a capability this version
    has, or a ConfigError naming it: a file `cim up` would not read (`dashboard.json`,
    `Hub.json`) is a setting the operator believes in and that never takes effect. Only
    `.json` names are judged: an editor's leftovers (`hub.json~`, `#hub.json#`, `.hub.json.swp`,
    `hub.json.bak`) are no settings and are left alone."""
    folder = Path(data_dir) / SETTINGS_DIR
    if not folder.is_dir():
        return
    valid = [f"{name}.json" for name in capabilities.NAMES]
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.name.endswith(".json") or (path.name in valid and path.is_file()):
            continue
        raise ConfigError(str(path), [("(file name)", f"not a settings file `cim up` reads; the names are {', '.join(valid)} "
                                                      "(one per capability, lower case): rename it to one of them")])


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` deep-merged over `base` (neither is changed): objects key by key, any other
    value from `override` replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_settings(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, None if there is no such file; a ConfigError naming the file
    and the place of the problem otherwise."""
    if not path.exists():
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        raise ConfigError(str(path), [("(top level)", "expected a JSON object of settings")])
    owned = [(".".join(key), why) for key, why in OWNED.items() if _has(data, key)]
    if owned:
        raise ConfigError(str(path), [(key, f"set by `cim up`: {why}") for key, why in owned])
    return data


def configure(generated: dict[str, Any], data_dir: Path) -> tuple[dict[str, Any], AgentConfig]:
    """An agent's config: what `cim up` generated, merged with its settings file if there is
    one, validated as `cim config check` validates a file. Returns the JSON to write and the
    validated config; a ConfigError whose source is the settings file when it has a problem."""
    capability = generated["capability"]
    path = settings_file(data_dir, capability)
    settings = read_settings(path)
    config = generated if settings is None else merge(generated, settings)
    # The same validation as `cim config check`; its source names the file to fix.
    return config, validate_config(config, str(path) if settings is not None else f"the generated {capability} config")


def _has(data: dict[str, Any], key: tuple[str, ...]) -> bool:
    node: Any = data
    for part in key:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
