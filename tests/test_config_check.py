"""`cim config check`: the check the NixOS build runs on every rendered agent config."""

import json

import pytest


def check(cli, tmp_path, config, raw=None):
    p = tmp_path / "agent.json"
    p.write_text(raw if raw is not None else json.dumps(config))
    return cli("config", "check", p, check=False)


def test_a_valid_store_config_passes(cli, tmp_path):
    seed = tmp_path / "store.nk"
    r = check(cli, tmp_path, {"capability": "store", "nats": {"servers": ["nats://10.0.0.1:4222"], "nkey_seed_file": str(seed)},
                              "metrics": {"host": "0.0.0.0", "port": 9464}, "max_unit_size": 1000})
    assert r.returncode == 0, r.stderr
    assert "valid store agent config" in r.stdout


@pytest.mark.parametrize(
    "config, paths",
    [
        ({"capability": "store", "max_unit_size": -1, "metrics": {"port": 70000}}, ["max_unit_size", "metrics.port"]),
        ({"capability": "store", "nats": {"servers": ["http://x"]}}, ["nats.servers"]),
        ({"capability": "store", "nats": {"password": "hunter2", "user": "u"}}, ["nats", "password_file"]),
        ({"capability": "store", "colour": "red"}, ["colour"]),
        ({"capability": "teleport"}, ["capability", "store"]),
        ({}, ["capability"]),
        ({"capability": "store", "nats": {"user": "u"}}, ["nats", "password_file"]),
        # A connector's settings are checked against its plugin's own model, and an unknown
        # plugin is named with those installed.
        ({"capability": "hub", "tokens_file": "/t", "connectors": [
            {"plugin": "inbox", "name": "scans", "settings": {"pth": "/srv/scans", "interval": 0}},
            {"plugin": "ftp", "name": "x"}]},
         ["connectors.0.settings.path", "connectors.0.settings.pth", "connectors.0.settings.interval",
          "connectors.1.plugin", "inbox, s3-import"]),
        # An attempt or a wait past the consumer's ack deadline would have the event delivered
        # twice, and deliveries are bounded: refused, with the bound.
        ({"capability": "hub", "tokens_file": "/t", "webhooks": [
            {"name": "slow", "url": "http://127.0.0.1:9/h", "secret_file": "/s", "timeout": 300, "backoff": [1, 600]}]},
         ["webhooks.0.timeout", "webhooks.0.backoff.1", "50"]),
    ],
)
def test_every_error_names_its_field_path(cli, tmp_path, config, paths):
    r = check(cli, tmp_path, config)
    assert r.returncode == 1
    for p in paths:
        assert p in r.stderr
    assert "Traceback" not in r.stderr


def test_a_hub_config_without_its_token_file_names_the_field(cli, tmp_path):
    # Every capability has an agent now; a missing required key is refused by name instead.
    r = check(cli, tmp_path, {"capability": "hub"})
    assert r.returncode == 1 and "tokens_file" in r.stderr


def test_not_json_says_where(cli, tmp_path):
    r = check(cli, tmp_path, None, raw='{"capability": "store",\n  oops}')
    assert r.returncode == 1 and "line 2" in r.stderr
