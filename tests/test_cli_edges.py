"""The command line at its edges: every mistake is one line that says what to do, and a
command that fails stores nothing half-way."""

from __future__ import annotations

from cim.errors import InvalidInput
from cim.store.units import Unit


def test_put_checks_every_argument_before_storing_anything(cli, nats_server, tmp_path):
    cli("provision")
    good = tmp_path / "a.txt"
    good.write_text("would be stored first")
    r = cli("units", "put", good, tmp_path / "nonexistent", check=False)
    assert r.returncode == 1
    assert "nothing was stored" in r.stderr and "nonexistent: no such file or folder" in r.stderr
    assert "Traceback" not in r.stderr
    assert cli("--json", "units", "ls").stdout.strip() in ("[]", "")


def test_get_into_a_missing_folder_or_onto_a_folder_is_one_line(cli, nats_server, tmp_path):
    cli("provision")
    f = tmp_path / "a.txt"
    f.write_text("content")
    cid = cli("units", "put", f).stdout.split()[0]
    r = cli("units", "get", cid, "-o", tmp_path / "missing" / "out.txt", check=False)
    assert r.returncode == 1 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = cli("units", "get", cid, "-o", tmp_path, check=False)
    assert r.returncode == 1 and "is a folder" in r.stderr and "Traceback" not in r.stderr


def test_non_utf8_spec_and_config_files_are_named_not_a_traceback(cli, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"capability": "store", "name": "\xff\xfe"}')
    for args in (("provision", "--spec", bad), ("config", "check", bad)):
        r = cli(*args, check=False)
        assert r.returncode == 1, r
        assert "not UTF-8 text" in r.stderr + r.stdout and "Traceback" not in r.stderr


def test_unit_metadata_nested_too_deep_is_refused_by_the_model():
    deep: list = []
    for _ in range(200):
        deep = [deep]
    try:
        Unit.create(cid="bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku", size=1, metadata={"d": deep})
    except InvalidInput as err:
        assert "metadata" in err.field and "deeper than" in err.rule
    else:
        raise AssertionError("a 200-deep metadata value was accepted")


def test_tier_status_says_when_its_counts_may_miss_new_units():
    from cim.cli.tier import _status_text

    reply = {"tiers": [{"name": "hot", "url": "nats", "units": 3, "bytes": 12}], "units": 3, "expired": 0, "pending": 0,
             "pending_moves": [], "errors": [], "as_of": 41, "stale": True, "replayed": 41}
    assert "index: stale, it has applied events up to #41" in _status_text(reply)
    assert "stale" not in _status_text({**reply, "stale": False})
