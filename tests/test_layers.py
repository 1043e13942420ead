"""Layers point one way (issue 15): a small import graph of the `cim` package, read from the
source with `ast`, and the rules it must keep. A new import going the wrong way fails here,
naming the module, what it imports and the rule."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "agents" / "cim"

# The capabilities and the operator's tools: nothing in the core imports them.
HIGH = ("cim.agents", "cim.cli", "cim.ui", "cim.hub", "cim.pipeline", "cim.tiering", "cim.registry",
        "cim.embedded", "cim.plugins")
CORE = ("cim.events", "cim.content", "cim.unit_store", "cim.unit_fold", "cim.units", "cim.provision")

Rule = tuple[Callable[[str], bool], Callable[[str], bool], str]  # importer, imported, why
RULES: list[Rule] = [
    (lambda m: m.startswith("cim.nats"), lambda t: not t.startswith(("cim.nats", "cim.errors")),
     "the transport layer knows nothing of CIM but its errors"),
    (lambda m: m in ("cim.errors", "cim.cid", "cim.json_depth", "cim.text", "cim.names"), lambda t: t != "cim.errors",
     "leaf modules import no other CIM module"),
    (lambda m: m.startswith(CORE), lambda t: t.startswith(HIGH),
     "the core never reaches up into a capability, the CLI or the UI"),
    (lambda m: m == "cim.status", lambda t: t.startswith(HIGH) and not t.startswith("cim.registry.client"),
     "status reads the registry bucket (cim.registry.client), nothing of the agents"),
    (lambda m: m.startswith("cim.ui"), lambda t: t.startswith("cim.cli"),
     "the dashboard and the CLI share lower modules, not each other"),
    (lambda m: m.startswith("cim.plugins"), lambda t: t.startswith("cim.pipeline"),
     "plugins sit below the pipeline engine that runs them"),
    (lambda m: not m.startswith("cim.cli") and m != "cim.__main__", lambda t: t.startswith("cim.cli"),
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
        full = f"{target}.{name}" if name and not name[0].isupper() and target.count(".") < 1 else target
        for importer, imported, why in RULES:
            if importer(mod) and imported(full):
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
        "__init__.py": "", "errors.py": "", "content.py": "from .cli import common\n",
        "cli/__init__.py": "", "cli/common.py": "", "ui/__init__.py": "", "ui/data.py": "from ..cli.common import run\n",
        "nats/__init__.py": "", "nats/read.py": "from ..content import _Hidden\nfrom ..errors import CimError\n",
    }.items():
        (cim / name).parent.mkdir(parents=True, exist_ok=True)
        (cim / name).write_text(source)
    found = "\n".join(violations(cim))
    assert "cim.content imports cim.cli: the core never reaches up" in found
    assert "cim.ui.data imports cim.cli.common: the dashboard and the CLI share" in found
    assert "cim.nats.read imports cim.content: the transport layer knows nothing" in found
    assert "cim.nats.read imports the private _Hidden from cim.content" in found
    assert "cim.errors" not in found
