"""Layers point one way (issue 15): a small import graph of the `cim` package, read from the
source with `ast`, and the rules it must keep. A new import going the wrong way fails here,
naming the module, what it imports and the rule."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "agents" / "cim"

# The layers, bottom up. Leaf modules and the transport know nothing of CIM's domain; the
# core (events, the agent runtime, the provisioning spec, what a capability is) knows no
# capability; the store (units) is what every other capability builds on; the list of
# capabilities, the CLI and `cim up` sit on top.
LEAF = ("cim.errors", "cim.cid", "cim.json_depth", "cim.text", "cim.names", "cim.ports")
CAPABILITIES = ("cim.store", "cim.tier", "cim.registry", "cim.pipeline", "cim.hub", "cim.ui")
OTHER_THAN_STORE = tuple(c for c in CAPABILITIES if c != "cim.store")
TOP = ("cim.capabilities", "cim.config", "cim.provision.apply", "cim.cli", "cim.embedded", "cim.__main__")
CORE = ("cim.events", "cim.capability", "cim.permissions", "cim.provision.spec", "cim.runtime", "cim.logs",
        "cim.gc_tuning", "cim.http_deadline", "cim.disk_full", "cim.spool", "cim.tasks", "cim.projection_db")

# The few imports that go up, each for a stated reason (importer, imported).
EXCEPTIONS = {
    # The event type registry lists every capability's models on first lookup (the models
    # live with their capability; a type no one registered is refused).
    ("cim.events.types", "cim.capabilities"),
    # Every agent announces itself in the registry bucket, in the registry's record format.
    ("cim.runtime", "cim.registry.announce"),
}


def _under(m: str, prefixes: tuple[str, ...]) -> bool:
    return any(m == p or m.startswith(p + ".") for p in prefixes)


Rule = tuple[Callable[[str], bool], Callable[[str], bool], str]  # importer, imported, why
RULES: list[Rule] = [
    (lambda m: _under(m, ("cim.nats",)), lambda t: not _under(t, ("cim.nats", "cim.errors")),
     "the transport layer knows nothing of CIM but its errors"),
    (lambda m: m in LEAF, lambda t: t != "cim.errors",
     "leaf modules import no other CIM module"),
    (lambda m: _under(m, CORE), lambda t: _under(t, CAPABILITIES + TOP),
     "the core never reaches up into a capability, the CLI or `cim up`"),
    (lambda m: _under(m, ("cim.store",)) and m != "cim.store.agent", lambda t: _under(t, OTHER_THAN_STORE + TOP),
     "the store's units are what the other capabilities build on: it imports none of them"),
    (lambda m: _under(m, ("cim.plugins",)), lambda t: _under(t, OTHER_THAN_STORE + TOP),
     "the plugin SDK builds on units; the capabilities that run plugins import it, not the other way"),
    (lambda m: _under(m, CAPABILITIES), lambda t: _under(t, TOP),
     "a capability is listed by cim.capabilities and used by the CLI, never the other way"),
    (lambda m: m == "cim.status", lambda t: _under(t, CAPABILITIES + TOP) and not _under(t, ("cim.registry.client",)),
     "status reads the registry bucket (cim.registry.client), nothing of the agents"),
    (lambda m: _under(m, ("cim.ui",)), lambda t: _under(t, ("cim.cli",)),
     "the dashboard and the CLI share lower modules, not each other"),
    (lambda m: _under(m, ("cim.plugins",)), lambda t: _under(t, ("cim.pipeline",)),
     "plugins sit below the pipeline engine that runs them"),
    (lambda m: not _under(m, ("cim.cli", "cim.__main__")), lambda t: _under(t, ("cim.cli",)),
     "only the CLI imports the CLI"),
]


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path) -> list[tuple[str, str, str]]:
    """(module, imported module, imported name) for every `cim` import under `root`."""
    out = []
    for path in root.rglob("*.py"):
        mod = module_name(root, path)
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    target = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                out += [(mod, target, alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                out += [(mod, alias.name, "") for alias in node.names]
    return [(m, t, n) for m, t, n in out if t == "cim" or t.startswith("cim.")]


def violations(root: Path) -> list[str]:
    wrong = set()
    for mod, target, name in imports(root):
        # `from ..provision import apply` imports the module cim.provision.apply, not a name
        submodule = root.parent.joinpath(*f"{target}.{name}".split("."))
        full = f"{target}.{name}" if name and (submodule.with_suffix(".py").is_file() or submodule.is_dir()) else target
        for importer, imported, why in RULES:
            if importer(mod) and imported(full) and (mod, full) not in EXCEPTIONS:
                wrong.add(f"{mod} imports {full}: {why}")
        if name.startswith("_") and not name.startswith("__") and target.split(".")[:2] != mod.split(".")[:2]:
            wrong.add(f"{mod} imports the private {name} from {target}")
    return sorted(wrong)


def test_imports_point_one_way_and_no_private_name_crosses_a_package():
    assert violations(PACKAGE) == []


def test_the_check_catches_imports_going_the_wrong_way(tmp_path):
    """The rules are not vacuous: a small package breaking three of them is caught."""
    cim = tmp_path / "cim"
    for name, source in {
        "__init__.py": "", "errors.py": "", "store/__init__.py": "", "store/content.py": "from ..cli import common\n",
        "cli/__init__.py": "", "cli/common.py": "", "ui/__init__.py": "", "ui/data.py": "from ..cli.common import run\n",
        "nats/__init__.py": "", "nats/read.py": "from ..store.content import _Hidden\nfrom ..errors import CimError\n",
        "store/unit_store.py": "from ..tier import fetch\n", "tier/__init__.py": "", "tier/fetch.py": "from ..capabilities import ALL\n",
        "capabilities.py": "", "provision/__init__.py": "", "provision/apply.py": "",
        "hub/__init__.py": "", "hub/agent.py": "from ..provision import apply\n",
    }.items():
        (cim / name).parent.mkdir(parents=True, exist_ok=True)
        (cim / name).write_text(source)
    found = "\n".join(violations(cim))
    assert "cim.store.content imports cim.cli.common: the store's units are what" in found
    assert "cim.store.unit_store imports cim.tier.fetch: the store's units are what" in found
    assert "cim.tier.fetch imports cim.capabilities: a capability is listed by" in found
    assert "cim.hub.agent imports cim.provision.apply: a capability is listed by" in found
    assert "cim.ui.data imports cim.cli.common: the dashboard and the CLI share" in found
    assert "cim.nats.read imports cim.store.content: the transport layer knows nothing" in found
    assert "cim.nats.read imports the private _Hidden from cim.store.content" in found
    assert "cim.errors" not in found
