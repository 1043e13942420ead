"""Pipeline definitions an operator applies are checked against the installed plugins, a
hostile file is refused cleanly, and an agent's restart never reverts what was applied."""

from __future__ import annotations

import json

from cim.provision.apply import provision
from cim.provision.spec import ProvisionSpec


def test_apply_refuses_an_unknown_plugin_and_settings_its_plugin_rejects(cli, nats_server, tmp_path):
    """No pipeline agent answers: the plugins installed where `cim` runs decide."""
    spec = tmp_path / "p.json"
    spec.write_text(json.dumps({"name": "p", "steps": [
        {"name": "a", "plugin": "nope"},
        {"name": "b", "plugin": "summarize", "settings": {"sentences": 0}},
        {"name": "c", "plugin": "summarize", "settings": {"colour": "red"}},
    ]}))
    r = cli("pipelines", "apply", spec, check=False)
    assert r.returncode == 1, r.stdout
    assert "steps.0.plugin: no step plugin named 'nope'" in r.stderr and "installed: classify" in r.stderr
    assert "steps.1.settings.sentences" in r.stderr and "steps.2.settings.colour" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_yaml_alias_bomb_is_refused_at_once(cli, tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{cur}: &{cur} [{','.join(['*' + prev] * 9)}]")
    lines.append("name: bomb\nsteps: [{name: x, plugin: classify, settings: {rules: *i}}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    r = cli("pipelines", "apply", bomb, check=False, timeout=30)
    assert r.returncode == 1
    assert "more than 16 YAML aliases" in r.stderr and "Traceback" not in r.stderr


def test_a_file_nested_too_deep_or_too_large_is_refused_without_a_traceback(cli, tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 20_000 + "]" * 20_000)
    r = cli("pipelines", "apply", deep, check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "deep.yaml" in r.stderr
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"name": "big", "steps": [{"name": "x", "plugin": "classify"}], "description": "x" * 2_000_000}))
    r = cli("pipelines", "apply", big, check=False)
    assert r.returncode == 1 and "a pipeline file may have 1048576 at most" in r.stderr


async def test_apply_asks_the_pipeline_agent_which_plugins_it_has(nc, nats_server, agent_process, cli, tmp_path):
    """A plugin installed only where the agent runs is accepted; one it lacks is refused."""
    from support.pipeline_support import install_plugins

    await provision(nc, ProvisionSpec())
    site = install_plugins(tmp_path / "site", "cim-example-plugin")
    await agent_process("pipeline", {"nats": {"servers": [nats_server.url]}}, env={"PYTHONPATH": site}).ready(nc)
    spec = tmp_path / "guarded.json"
    spec.write_text(json.dumps({"name": "guarded", "steps": [{"name": "g", "plugin": "guard", "settings": {"reject": "X"}}]}))
    assert "applied guarded" in cli("pipelines", "apply", spec).stdout
    spec.write_text(json.dumps({"name": "guarded", "steps": [{"name": "g", "plugin": "guard", "settings": {"nope": 1}}]}))
    r = cli("pipelines", "apply", spec, check=False)
    assert r.returncode == 1 and "steps.0.settings.nope" in r.stderr


async def test_a_default_applied_by_the_operator_survives_an_agent_restart(nc, nats_server, agent_process, cli, tmp_path):
    await provision(nc, ProvisionSpec())
    servers = {"servers": [nats_server.url]}
    agent = await agent_process("pipeline", {"nats": servers}).ready(nc)
    mine = {"name": "default", "description": "mine", "steps": [{"name": "classify", "plugin": "classify"}]}
    (tmp_path / "default.json").write_text(json.dumps(mine))
    cli("pipelines", "apply", tmp_path / "default.json")

    agent.stop()
    await agent_process("pipeline", {"nats": servers}).ready(nc)
    shown = json.loads(cli("--json", "pipelines", "show", "default").stdout)
    assert shown["source"] == "cli"
    assert shown["definition"]["description"] == "mine"
    assert [s["name"] for s in shown["definition"]["steps"]] == ["classify"]
