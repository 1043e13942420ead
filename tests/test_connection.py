"""The one connection helper against real servers: passwords from files, TLS, clear failures."""

import subprocess

import pytest

from cim.embedded.nats_server import NatsServer
from cim.errors import ConnectionFailed
from cim.nats.connect import ConnectionSettings, connect


@pytest.fixture
def server_with(tmp_path):
    started = []

    def start(extra: dict) -> NatsServer:
        s = NatsServer(store_dir=tmp_path / f"s{len(started)}" / "store", extra_config=extra)
        s.start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


async def test_user_and_password_file(server_with, tmp_path):
    server = server_with({"authorization": {"users": [{"user": "op", "password": "s3cret-pw"}]}})
    good, bad = tmp_path / "pw", tmp_path / "wrong"
    good.write_text("s3cret-pw\n")
    bad.write_text("nope")
    nc = await connect(ConnectionSettings(servers=[server.url], user="op", password_file=good))
    assert nc.is_connected
    await nc.close()
    with pytest.raises(ConnectionFailed) as err:
        await connect(ConnectionSettings(servers=[server.url], user="op", password_file=bad))
    assert server.url in str(err.value) and "authorization" in str(err.value)


async def test_a_missing_secret_file_is_named(tmp_path):
    with pytest.raises(ConnectionFailed, match="secret file .*missing.nk does not exist"):
        await connect(ConnectionSettings(nkey_seed_file=tmp_path / "missing.nk"))


def make_certs(d):
    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=cim-test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
    return d / "ca.pem", d / "server.pem", d / "server.key"


async def test_tls_with_the_ca_file(server_with, tmp_path):
    ca, cert, key = make_certs(tmp_path)
    server = server_with({"tls": {"cert_file": str(cert), "key_file": str(key)}})
    url = server.url.replace("nats://", "tls://")
    nc = await connect(ConnectionSettings(servers=[url], tls_ca_file=ca))
    assert nc.is_connected
    await nc.close()
    # Without our CA the server's certificate is not trusted: a clear failure, not a hang.
    with pytest.raises(ConnectionFailed) as err:
        await connect(ConnectionSettings(servers=[url], connect_timeout=3))
    assert url in str(err.value)


@pytest.mark.parametrize(
    "settings, says",
    [
        ({"password": "x"}, "password_file"),
        ({"seed": "SU..."}, "nkey_seed_file"),
        ({"user": "u"}, "needs 'password_file'"),
        ({"creds_file": "/a", "nkey_seed_file": "/b"}, "choose one way"),
        ({"servers": ["http://example"]}, "not a NATS server URL"),
        ({"tls_cert_file": "/c"}, "go together"),
    ],
)
def test_settings_refuse_what_would_leak_or_cannot_work(settings, says):
    with pytest.raises(ValueError, match=says):
        ConnectionSettings(**settings)
