"""The NixOS side, without a VM: every .nix file parses, the module evaluation tests in
tests/nix pass, every agent config the modules render passes `cim config check`, and
docs/options.md is current.

nixpkgs' lib comes from $CIM_NIXPKGS_LIB, else <nixpkgs/lib>; without either the
evaluation tests are skipped with a line saying so (parsing needs only nix-instantiate).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cim.cli.main import app
from cim.embedded.nats_server import ClusterSpec, NatsServer, http_get_json
from cim.embedded.procs import wait_until
from cim.ports import free_ports

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


def _run_splice(script: str, conf: dict, work: Path, password: str) -> dict:
    """Run the module's own ExecStartPre script (its jq program) as systemd would: the
    rendered config in, the route password as a credential, the spliced config out."""
    jq = shutil.which("jq")
    if not jq:
        pytest.fail("jq is not installed (apt install jq): the route-password splice runs it")
    creds, runtime = work / "credentials", work / "runtime"
    creds.mkdir(parents=True)
    runtime.mkdir()
    (creds / "route-password").write_text(password + "\n")
    rendered = work / "nats.conf"
    rendered.write_text(json.dumps(conf))
    body = re.sub(r"/nix/store/[^ ]*-jq/bin/jq", jq, script)
    body = re.sub(r"/nix/store/[^ ]*-nats\.conf", str(rendered), body)
    env = dict(os.environ, CREDENTIALS_DIRECTORY=str(creds), RUNTIME_DIRECTORY=str(runtime))
    subprocess.run(["bash", "-c", body], env=env, check=True, timeout=30)
    return json.loads((runtime / "nats.conf").read_text())


def test_a_rendered_cluster_forms_with_its_route_password_and_refuses_a_server_without_it(evaluation, tmp_path):
    """The cluster nodes' nats settings as services.cim renders them, with the route password
    spliced in by the module's own start script, run on real nats-servers (loopback ports
    in place of the nodes' addresses)."""
    nodes = evaluation["clusterNats"]
    password = "p@ss/w0rd+cim"  # characters that must be escaped in a route URL
    route_ports, client_ports, http_ports, leaf_ports = (free_ports(len(nodes)) for _ in range(4))
    # Each node's address is the one the others route to and it does not.
    all_routes = [set(n["settings"]["cluster"]["routes"]) for n in nodes]
    loopback = {}
    for i in range(len(nodes)):
        others = set().union(*(all_routes[j] for j in range(len(nodes)) if j != i)) - all_routes[i]
        (address,) = {r.split("//")[1] for r in others}
        loopback[address] = f"127.0.0.1:{route_ports[i]}"

    servers = []
    try:
        for i, node in enumerate(nodes):
            conf = dict(node["settings"], leafnodes=dict(node["settings"]["leafnodes"], host="127.0.0.1", port=leaf_ports[i]))
            conf["cluster"] = dict(
                conf["cluster"],
                host="127.0.0.1",
                port=route_ports[i],
                routes=[f"nats-route://{loopback[r.split('//')[1]]}" for r in conf["cluster"]["routes"]],
            )
            spliced = _run_splice(node["splice"], conf, tmp_path / node["name"], password)
            assert "cim-route" in spliced["cluster"]["routes"][0] and password not in spliced["cluster"]["routes"][0]
            server = NatsServer(
                store_dir=tmp_path / node["name"] / "store",
                port=client_ports[i],
                http_port=http_ports[i],
                server_name=node["name"],
                cluster=ClusterSpec(name=spliced["cluster"]["name"], port=route_ports[i], routes=spliced["cluster"]["routes"]),
                extra_config={k: v for k, v in spliced.items() if k not in {"host", "port", "http", "jetstream", "server_name"}},
            )
            server.start()
            servers.append(server)

        def routes(server: NatsServer) -> int:
            return http_get_json(server.monitor_url + "/routez")[1]["num_routes"]

        wait_until(lambda: all(routes(s) >= 2 for s in servers), timeout=30, what="every node routed to the others")

        rogue = NatsServer(
            store_dir=tmp_path / "rogue" / "store",
            server_name="rogue",
            cluster=ClusterSpec(name=nodes[0]["settings"]["cluster"]["name"], port=free_ports(1)[0], routes=[f"nats-route://127.0.0.1:{route_ports[0]}"]),
        )
        rogue.start()
        servers.append(rogue)
        wait_until(
            lambda: "Authorization Violation" in rogue.log_path.read_text(),
            timeout=30,
            what="the node refusing the rogue route",
        )
        assert routes(rogue) == 0
    finally:
        for server in servers:
            server.stop()


def test_the_modules_render_the_same_permissions_as_cim_up_and_the_tests(evaluation):
    """One list, two renderers: modules/capabilities.nix and cim.capabilities agree for every
    capability, event authority included."""
    from cim.permissions import NAMES, nats_permissions

    rendered = evaluation["renderedPermissions"]
    assert sorted(rendered) == sorted(NAMES)
    for cap in NAMES:
        assert rendered[cap] == nats_permissions(cap), cap
