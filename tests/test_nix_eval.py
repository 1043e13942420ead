"""The NixOS side, without a VM: every .nix file parses, the module evaluation tests in
tests/nix pass, every agent config the modules render passes `cim config check`, and
docs/options.md is current.

nixpkgs' lib comes from $CIM_NIXPKGS_LIB, else <nixpkgs/lib>; without either the
evaluation tests are skipped with a line saying so (parsing needs only nix-instantiate).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cim.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
NIX_FILES = sorted(
    p for p in ROOT.rglob("*.nix")
    if not any(part in {".venv", ".git", "node_modules", "result"} for part in p.relative_to(ROOT).parts)
)

pytestmark = pytest.mark.nix


def _nix_instantiate() -> str:
    found = shutil.which("nix-instantiate")
    if not found:
        pytest.skip("skipped: nix-instantiate is not installed (apt install nix-bin)")
    return found


def _lib_args() -> list[str]:
    """How to hand nixpkgs' lib to the evaluation, or skip saying why not."""
    lib = os.environ.get("CIM_NIXPKGS_LIB")
    if lib:
        if not (Path(lib) / "default.nix").is_file():
            pytest.fail(f"CIM_NIXPKGS_LIB={lib} has no default.nix; point it at nixpkgs' lib directory")
        return ["--arg", "lib", f"import {lib}"]
    probe = subprocess.run(
        [_nix_instantiate(), "--eval", "-E", "(import <nixpkgs/lib>).version"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip("skipped: the Nix evaluation tests need nixpkgs' lib; set CIM_NIXPKGS_LIB or put <nixpkgs> on NIX_PATH")
    return ["--arg", "lib", "import <nixpkgs/lib>"]


@pytest.fixture(scope="module")
def evaluation() -> dict:
    args = _lib_args()
    out = subprocess.run(
        [_nix_instantiate(), "--eval", "--strict", "--json", *args, str(ROOT / "tests/nix/default.nix")],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_nix_files_exist():
    names = {p.relative_to(ROOT).as_posix() for p in NIX_FILES}
    assert {"flake.nix", "modules/default.nix", "modules/capability.nix", "tests/nix/default.nix"} <= names


@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_nix_file_parses(path):
    out = subprocess.run([_nix_instantiate(), "--parse", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_module_evaluation_tests_pass(evaluation):
    assert evaluation["count"] >= 60
    assert evaluation["failures"] == [], json.dumps(evaluation["failures"], indent=2)


def test_rendered_agent_configs_pass_cim_config_check(evaluation, tmp_path):
    assert evaluation["agentConfigs"], "the evaluation rendered no agent config"
    for name, settings in evaluation["agentConfigs"].items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(settings))
        result = CliRunner().invoke(app, ["config", "check", str(path)])
        assert result.exit_code == 0, f"{name}: {result.output}"


def test_a_bad_setting_is_named_by_cim_config_check(evaluation, tmp_path):
    """What the build-time check does with a bad `services.cim.store.settings` value."""
    settings = dict(evaluation["agentConfigs"]["leaf-store"], max_unit_size="huge")
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(settings))
    result = CliRunner().invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 1
    assert "max_unit_size" in result.output


def test_options_doc_is_current():
    _lib_args()
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests/nix/render_options.py"), "--check"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
