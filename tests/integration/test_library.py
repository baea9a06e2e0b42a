"""oppy as a library: ``oppy.launch`` on the test's reactor, its endpoints, its Agent (and treq), the
``oppy:`` string endpoint, TLS over a stream, and a clean stop, against the private network."""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import subprocess
import sys

import pytest
import pytest_twisted
import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, protocol, reactor, ssl, task
from twisted.internet.endpoints import TCP4ClientEndpoint, clientFromString, wrapClientTLS
from twisted.web import resource, server
from twisted.web.client import BrowserLikePolicyForHTTPS

import oppy
import oppy.web
from oppy.endpoints import SocksError, TorStreamError
from oppy.library import LaunchError
from tests.support.network import REPO
from tests.support.relays import fetch

ONE_MB = 1000 * 1000
TLS_NAME = "secure.test"  # every *.test name is 127.0.0.1 to the exits (scripts/testnet's DNS server)


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def network_options(network) -> dict:
    return {"TestingTorNetwork": 1,
            "DirAuthority": [line.split(" ", 1)[1] for line in network.dir_authority_lines]}


def test_launch_refuses_the_public_network(tmp_path):
    """OPPY_FORBID_PUBLIC_NETWORK is set by the test suite: no DirAuthority, no oppy."""
    assert os.environ.get("OPPY_FORBID_PUBLIC_NETWORK")
    with pytest.raises(LaunchError, match="refusing to contact the public Tor network"):
        oppy.launch(reactor, data_directory=tmp_path / "data")


def test_launch_reports_a_bad_option(tmp_path, network):
    with pytest.raises(LaunchError, match="NoSuchOption"):
        oppy.launch(reactor, data_directory=tmp_path / "data", NoSuchOption=1, **network_options(network))


@pytest_twisted.inlineCallbacks
def test_launch_bootstraps_serves_and_stops_clean(tmp_path, network):
    yield task.deferLater(reactor, 0, lambda: None)  # the fixtures' own calls settle
    fds_before = open_fds()
    calls_before = set(reactor.getDelayedCalls())
    readers_before, writers_before = set(reactor.getReaders()), set(reactor.getWriters())
    tor = oppy.launch(reactor, data_directory=tmp_path / "data", **network_options(network))
    assert tor.socks_addresses == [] and tor.control_addresses == []  # no listener unless asked for
    ready = yield tor.bootstrapped
    assert ready is tor
    body = yield fetch_over(tor.endpoint(network.host, network.http_port), b"/bytes/%d" % ONE_MB)
    assert hashlib.sha256(body).hexdigest() == fetch(network.url(f"/sha256/{ONE_MB}")).decode().strip()
    yield tor.stop()
    assert set(reactor.getDelayedCalls()) - calls_before == set()
    assert set(reactor.getReaders()) - readers_before == set()
    assert set(reactor.getWriters()) - writers_before == set()
    assert open_fds() - fds_before == set()


@pytest_twisted.inlineCallbacks
def test_control_addresses_name_the_control_port(tmp_path, network):
    """ControlPort=auto: ``control_addresses`` says where the control port listens; a controller is served there."""
    tor = oppy.launch(reactor, data_directory=tmp_path / "data", ControlPort="auto", **network_options(network))
    try:
        ((host, port),) = tor.control_addresses
        assert host == "127.0.0.1" and port > 0
        received: list[bytes] = []
        done: defer.Deferred = defer.Deferred()

        class Controller(protocol.Protocol):
            def connectionMade(self):  # noqa: N802
                self.transport.write(b"PROTOCOLINFO 1\r\n")

            def dataReceived(self, data):  # noqa: N802
                received.append(data)
                if b"250 OK\r\n" in b"".join(received):
                    self.transport.loseConnection()
                    done.callback(b"".join(received))

        reply = yield TCP4ClientEndpoint(reactor, host, port).connect(protocol.Factory.forProtocol(Controller)) \
            .addCallback(lambda _: done)
        assert reply.startswith(b"250-PROTOCOLINFO 1\r\n")
    finally:
        yield tor.stop()


class _Download(protocol.Protocol):
    def __init__(self, done: defer.Deferred) -> None:
        self.done, self.chunks = done, []

    def dataReceived(self, data):  # noqa: N802
        self.chunks.append(data)

    def connectionLost(self, reason):  # noqa: N802
        self.done.callback(b"".join(self.chunks))


@defer.inlineCallbacks
def fetch_over(endpoint, path: bytes):
    """An HTTP/1.0 GET over a raw endpoint; the body."""
    done: defer.Deferred = defer.Deferred()
    proto = yield endpoint.connect(protocol.Factory.forProtocol(lambda: _Download(done)))
    proto.transport.write(b"GET " + path + b" HTTP/1.0\r\nHost: target\r\n\r\n")
    response = yield done
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], head
    return body


@pytest_twisted.async_yield_fixture
async def tor(network, tmp_path):
    """An in-process oppy, with a SOCKS listener for the tests that go through one."""
    launched = oppy.launch(reactor, data_directory=tmp_path / "data", SocksPort="auto", **network_options(network))
    await launched.bootstrapped
    yield launched
    await launched.stop()


def expected_sha256(network, size: int) -> str:
    return fetch(network.url(f"/sha256/{size}")).decode().strip()


@pytest_twisted.inlineCallbacks
def test_treq_over_the_agent_fetches_1mb_byte_exact(tor, network):
    response = yield treq.get(network.url(f"/bytes/{ONE_MB}"), agent=tor.agent())
    assert response.code == 200
    body = yield treq.content(response)
    assert len(body) == ONE_MB and hashlib.sha256(body).hexdigest() == expected_sha256(network, ONE_MB)


@pytest_twisted.inlineCallbacks
def test_agent_over_a_socks_port(tor, network):
    (host, port), = tor.socks_addresses
    agent = oppy.web.agent(reactor, socks_endpoint=TCP4ClientEndpoint(reactor, host, port))
    response = yield treq.get(network.url("/", host="target.test"), agent=agent)
    assert (yield treq.content(response)) == b"hello from the oppy test target\n"


@pytest_twisted.inlineCallbacks
def test_client_from_string_in_process_and_over_socks(tor, network):
    in_process = clientFromString(reactor, f"oppy:host=target.test:port={network.http_port}")
    assert in_process.tor is tor
    body = yield fetch_over(in_process, b"/")
    assert body == b"hello from the oppy test target\n"
    (_, socks_port), = tor.socks_addresses
    over_socks = clientFromString(reactor, f"oppy:target.test:{network.http_port}:socksPort={socks_port}")
    assert over_socks.tor is None
    body = yield fetch_over(over_socks, b"/bytes/1000")
    assert len(body) == 1000


@pytest_twisted.inlineCallbacks
def test_isolation_credentials_choose_the_circuit(network, tmp_path):
    """Streams with the same credentials share a circuit; different credentials never do. With single
    circuits (`ConfluxEnabled 0`): a conflux set that links between two requests takes the second, as in tor,
    which would make "share" depend on timing."""
    tor = oppy.launch(reactor, data_directory=tmp_path / "data", ConfluxEnabled=0, **network_options(network))
    yield tor.bootstrapped

    def connect(username):
        endpoint = tor.endpoint("target.test", network.http_port, username=username, password="pw")
        return endpoint.connect(protocol.Factory.forProtocol(protocol.Protocol))

    connections = []
    try:
        for username in ("alice", "alice", "bob"):
            connections.append((yield connect(username)))
        alice_1, alice_2, bob = (connected.transport.stream.circuit for connected in connections)
        assert alice_1 is alice_2
        assert bob is not alice_1
    finally:
        for connected in connections:
            connected.transport.loseConnection()
        yield tor.stop()


@pytest_twisted.inlineCallbacks
def test_refused_streams_fail_with_a_clear_error(tor, network):
    refused_port = network.state["exit_policy_refused_port"]
    with pytest.raises(TorStreamError):
        yield tor.endpoint("127.0.0.1", refused_port).connect(protocol.Factory.forProtocol(protocol.Protocol))
    (host, port), = tor.socks_addresses
    endpoint = clientFromString(reactor, f"oppy:host=nowhere.invalid:port=80:socksPort={port}")
    with pytest.raises(SocksError, match="HOST_UNREACHABLE"):
        yield endpoint.connect(protocol.Factory.forProtocol(protocol.Protocol))


def self_signed(name: str) -> tuple[bytes, bytes]:
    """A key and a certificate for ``name`` (subjectAltName, as service_identity checks it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


class _Payload(resource.Resource):
    isLeaf = True

    def render_GET(self, request):  # noqa: N802
        return b"over TLS through oppy: " + bytes(range(256)) * 4096


@pytest_twisted.async_yield_fixture
async def tls_site():
    """An HTTPS server on 127.0.0.1, its certificate for secure.test; the exits reach it by that name."""
    key_pem, cert_pem = self_signed(TLS_NAME)
    listener = reactor.listenSSL(0, server.Site(_Payload()),
                                 ssl.PrivateCertificate.loadPEM(key_pem + cert_pem).options(), interface="127.0.0.1")
    yield listener.getHost().port, ssl.Certificate.loadPEM(cert_pem)
    await defer.maybeDeferred(listener.stopListening)


@pytest_twisted.inlineCallbacks
def test_tls_over_an_oppy_stream(tor, tls_site):
    port, certificate = tls_site
    expected = b"over TLS through oppy: " + bytes(range(256)) * 4096
    endpoint = wrapClientTLS(ssl.optionsForClientTLS(TLS_NAME, trustRoot=certificate),
                             tor.endpoint(TLS_NAME, port))
    body = yield fetch_over(endpoint, b"/")
    assert body == expected
    response = yield treq.get(f"https://{TLS_NAME}:{port}/",
                              agent=tor.agent(tls_policy=BrowserLikePolicyForHTTPS(trustRoot=certificate)))
    assert (yield treq.content(response)) == expected
    # Without the test's certificate as trust root, the exit's answer is not trusted.
    with pytest.raises(Exception, match="(?i)certificate|SSL"):
        yield treq.get(f"https://{TLS_NAME}:{port}/", agent=tor.agent())


def readme_block(heading: str) -> str:
    """The first ```python block after ``heading`` in README.md."""
    text = (REPO / "README.md").read_text()
    after = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def test_the_readme_asyncio_example_runs(network, tmp_path):
    script = tmp_path / "fetch.py"
    script.write_text(readme_block("### From asyncio"))
    result = subprocess.run([sys.executable, str(script), network.url(f"/bytes/{ONE_MB}"),
                             *[line.split(" ", 1)[1] for line in network.dir_authority_lines]],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [str(ONE_MB), expected_sha256(network, ONE_MB)], result.stdout
