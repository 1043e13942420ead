"""A hostile event in the store (any agent with append rights could write one, and
deny_delete keeps it for ever) is surfaced and skipped by every reader, never fatal."""

import json

import nats

NESTED = b'{"cid":' + b"[" * 5000 + b"]" * 5000 + b"}"


async def _poison(url: str) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().publish(
            "cim.evt.unit.bafkreipoison.created", NESTED, headers={"ce-type": "unit.created", "Nats-Msg-Id": "poison-1"}
        )
    finally:
        await nc.close()


async def test_a_poison_event_breaks_no_reader_and_later_units_are_still_listed(cli, nats_server, tmp_path):
    cli("provision")
    (tmp_path / "before.txt").write_text("before the poison")
    cli("units", "put", str(tmp_path / "before.txt"))
    await _poison(nats_server.url)
    (tmp_path / "after.txt").write_text("after the poison")
    after = json.loads(cli("--json", "units", "put", str(tmp_path / "after.txt")).stdout)[0]["cid"]

    listed = cli("--json", "units", "ls", check=False)
    assert listed.returncode == 0, listed.stderr
    assert after in listed.stdout and "Traceback" not in listed.stderr

    tail = cli("events", "tail", check=False)
    assert tail.returncode == 0, tail.stderr
    assert "nests deeper than 64 levels" in tail.stdout + tail.stderr
    assert after in tail.stdout
