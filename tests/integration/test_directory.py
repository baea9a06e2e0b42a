"""The directory service against the private network's real authorities and relays.

Bootstrap from nothing over the authorities' DirPorts, restart from the cache, refreshes
over BEGIN_DIR while circuits keep working, guards that persist, a forged consensus from a
fake authority that is refused, and no authority at all. The network is shared with other
tests: nothing here stops or restarts a relay.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
import zlib

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, task
from twisted.web import resource, server

from oppy.circuit.build import build_circuit
from oppy.circuit.manager import CircuitManager
from oppy.directory.cache import CACHED_MICRODESCS_FILE, encode_microdescriptors, split_microdescriptors
from oppy.directory.client import DirectoryClient
from oppy.directory.service import DirectoryService
from oppy.link.connection import LinkPool
from oppy.logs import NOTICE
from oppy.netdoc.authorities import parse_dir_authority_line
from oppy.netdoc.documents import microdesc_digest
from oppy.path.chooser import PathChooser
from oppy.stream.stream import Stream
from tests.support.network import TestNetwork
from tests.support.streams import CollectingSink, http_response_body

SERVICE_LOGGER = "oppy.directory.service"
BOOTSTRAP_TIMEOUT = 90
HELLO = b"hello from the oppy test target\n"


@pytest.fixture(scope="module")
def authorities(network: TestNetwork):
    return [parse_dir_authority_line(line) for line in network.dir_authority_lines]


@pytest.fixture
def links():
    pool = LinkPool()
    yield pool
    pool.close_all()


def directory_circuits(links) -> CircuitManager:
    """A circuit manager that builds the service's one-hop directory circuits (and nothing else: its path
    chooser has no NetDir)."""
    return CircuitManager(links, PathChooser(), reactor=reactor, preemptive_circuits=0)


def new_service(authorities, directory, links, **options) -> DirectoryService:
    return DirectoryService(authorities, directory, directory_circuits(links), testing_tor_network=True,
                            reactor=reactor, links=links, **options)


def started(service: DirectoryService, timeout: float = BOOTSTRAP_TIMEOUT) -> defer.Deferred:
    return service.start().addTimeout(timeout, reactor)


@defer.inlineCallbacks
def fetch_through(service: DirectoryService, links, network: TestNetwork):
    """Build a circuit on a path the service chose and GET / from the HTTP target through it."""
    path = service.paths.choose_path(network.http_port)
    circuit = yield build_circuit(links, path, timeout=30)
    sink = CollectingSink()
    stream = Stream(sink, "127.0.0.1", network.http_port)
    stream.attach(circuit)
    yield sink.connected
    stream.write(b"GET / HTTP/1.0\r\nHost: target\r\n\r\n")
    yield sink.ended
    circuit.close()
    head, body = http_response_body(sink.data)
    assert head.split(b"\r\n")[0].endswith(b" 200 OK"), head
    assert body == HELLO
    return path


def bootstrap_percents(caplog) -> list[int]:
    return [int(record.getMessage().split()[1].rstrip("%")) for record in caplog.records
            if record.name == SERVICE_LOGGER and record.getMessage().startswith("Bootstrapped")]


@pytest_twisted.inlineCallbacks
def test_bootstrap_from_scratch_then_a_circuit(network, authorities, links, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="oppy")
    service = new_service(authorities, tmp_path / "data", links)
    try:
        yield started(service)
        assert bootstrap_percents(caplog) == [0, 5, 10, 25, 30, 40, 45, 50, 75]
        assert all(r.levelno == NOTICE for r in caplog.records if r.getMessage().startswith("Bootstrapped"))
        assert service.fetch_counts["consensus:dirport"] == 1
        assert service.fetch_counts["certificates:dirport"] >= 1
        assert service.fetch_counts["microdescriptors:dirport"] == 1
        listed = {relay.fingerprint for relay in service.netdir.consensus.relays}
        assert {node["fingerprint"] for node in network.relays()} <= listed
        for node in network.relays():
            target = service.netdir.relay_target(node["fingerprint"])
            assert target.ntor_onion_key is not None and target.or_port == node["ports"]["or"]
        yield service.cache_writes_done()
        for name in ("cached-certs", "cached-microdesc-consensus", "cached-microdescs", "state"):
            assert (tmp_path / "data" / name).exists(), name
        assert time.time() <= service.netdir.consensus.valid_until
        path = yield fetch_through(service, links, network)
        assert path[0].fingerprint == service.paths.guards.primary_guards()[0].fingerprint
    finally:
        yield service.stop()


@pytest_twisted.inlineCallbacks
def test_restart_from_the_cache_keeps_guards_and_fetches_no_consensus(network, authorities, tmp_path):
    directory = tmp_path / "data"
    first_links = LinkPool()
    first = new_service(authorities, directory, first_links)
    try:
        yield started(first)
        primaries = [guard.fingerprint for guard in first.paths.guards.primary_guards()]
        valid_after = first.netdir.consensus.valid_after
    finally:
        yield first.stop()
        first_links.close_all()
    # Drop one exit's microdescriptor from the cache: the restart fetches just that one, over BEGIN_DIR
    # to a directory guard (whose microdescriptor is cached), and no consensus at all.
    exit_digest = next(relay.microdesc_digest for relay in first.netdir.consensus.relays
                       if "Exit" in relay.flags)
    cached = directory / CACHED_MICRODESCS_FILE
    entries = [(body, listed) for body, listed in split_microdescriptors(cached.read_bytes())
               if microdesc_digest(body) != exit_digest]
    cached.write_bytes(encode_microdescriptors(entries))

    links = LinkPool()
    second = new_service(authorities, directory, links)
    try:
        yield started(second, 30)
        assert second.fetch_counts["consensus"] == 0
        assert second.netdir.consensus.valid_after == valid_after
        assert [guard.fingerprint for guard in second.paths.guards.primary_guards()] == primaries
        yield task.deferLater(reactor, 0.5, lambda: None)
        assert exit_digest in second.netdir.microdescs
        assert second.fetch_counts["microdescriptors:begin_dir"] >= 1
        assert second.fetch_counts["microdescriptors:dirport"] == 0
        path = yield fetch_through(second, links, network)
        assert path[0].fingerprint == primaries[0]
    finally:
        yield second.stop()
        links.close_all()


@pytest_twisted.inlineCallbacks
def test_circuits_keep_working_across_consensus_refreshes(network, authorities, links, tmp_path, caplog):
    """About 190 s: the consensus lives 60 s and is replaced every 20 s, so the service must
    refresh on schedule (over BEGIN_DIR) while circuits are built from whatever is current."""
    caplog.set_level(logging.INFO, logger="oppy")
    service = new_service(authorities, tmp_path / "data", links)
    seen = []
    service.add_netdir_observer(lambda event: seen.append(event.netdir.consensus) if event.new_consensus else None)
    try:
        yield started(service)
        initial_digests = set(service.netdir.consensus.microdesc_digests())
        microdesc_requests = service.fetch_counts["microdescriptors"]
        deadline = time.monotonic() + 190
        fetches = 0
        while time.monotonic() < deadline:
            assert time.time() <= service.netdir.consensus.valid_until, "the consensus in use expired"
            yield fetch_through(service, links, network)
            fetches += 1
            yield task.deferLater(reactor, 12, lambda: None)
        valid_afters = [consensus.valid_after for consensus in seen]
        assert valid_afters == sorted(set(valid_afters)), "consensuses must only get newer"
        assert len(seen) >= 1 + 3, f"only {len(seen) - 1} refreshes in 190 s"
        assert fetches >= 14
        assert service.fetch_counts["consensus:begin_dir"] >= 3
        new_digests = set().union(*(c.microdesc_digests() for c in seen)) - initial_digests
        if not new_digests:
            assert service.fetch_counts["microdescriptors"] == microdesc_requests
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == SERVICE_LOGGER]
    finally:
        yield service.stop()


class FakeAuthority(resource.Resource):
    """A DirPort on 127.0.0.1 that relays requests to a real authority, and can forge the consensus."""

    isLeaf = True

    def __init__(self, real_port: int):
        super().__init__()
        self.client = DirectoryClient(reactor, timeout=20)
        self.real_port = real_port
        self.forge = False
        self.requests: list[str] = []
        self.forged: list[bytes] = []

    def render_GET(self, request):  # noqa: N802 - twisted.web's naming
        path = request.uri.decode()
        self.requests.append(path)
        compressed = path.endswith(".z")
        real_path = path[:-2] if compressed else path
        fetching = self.client.fetch_dirport("127.0.0.1", self.real_port, real_path, 1 << 24)

        def answer(response):
            body = response.body
            if self.forge and "consensus" in path:
                # One byte of one router entry's bandwidth: still well-formed, no longer what was signed.
                at = body.index(b"\nw Bandwidth=") + len(b"\nw Bandwidth=")
                body = body[:at] + (b"7" if body[at:at + 1] != b"7" else b"8") + body[at + 1:]
                self.forged.append(body)
            if compressed:
                request.setHeader(b"Content-Encoding", b"deflate")
                body = zlib.compress(body)
            request.write(body)
            request.finish()

        def failed(failure):
            request.setResponseCode(503)
            request.finish()

        fetching.addCallbacks(answer, failed)
        return server.NOT_DONE_YET


@pytest_twisted.inlineCallbacks
def test_a_forged_consensus_is_refused_and_the_good_one_stays(network, authorities, links, tmp_path, caplog):
    fake = FakeAuthority(authorities[0].dir_port)
    listening = reactor.listenTCP(0, server.Site(fake), interface="127.0.0.1")
    port = listening.getHost().port
    # The real authorities' identities, all reached through the fake DirPort.
    pointed = [dataclasses.replace(authority, address="127.0.0.1", dir_port=port) for authority in authorities]
    caplog.set_level(logging.INFO, logger="oppy")
    service = new_service(pointed, tmp_path / "data", links)
    try:
        yield started(service)
        assert any("consensus-microdesc" in path for path in fake.requests)
        good = service.netdir.consensus
        fake.forge = True
        caplog.clear()
        result = yield service.fetch_consensus_now(authorities_only=True)
        assert result is None and fake.forged
        rejections = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(rejections) == 3, rejections
        for message in rejections:
            assert message.startswith("Rejected the microdesc consensus from auth")
            assert f"127.0.0.1:{port} (DirPort): BadSignatureError" in message
            assert "did not verify" in message and "Still using the consensus valid-after" in message
        installed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Using the microdesc")]
        assert all("(BEGIN_DIR)" in message for message in installed)    # only real relays' refreshes
        if not installed:
            assert service.netdir.consensus is good
        assert service.enough_dir_info
        yield fetch_through(service, links, network)
        # Honest again: a newer consensus is taken from the same source once the network has one.
        fake.forge = False
        for _ in range(15):
            before = service.netdir.consensus.valid_after
            yield service.fetch_consensus_now(authorities_only=True)
            if service.netdir.consensus.valid_after > before:
                break
            yield task.deferLater(reactor, 2, lambda: None)
        assert service.netdir.consensus.valid_after > good.valid_after
    finally:
        yield service.stop()
        yield listening.stopListening()


class HostileDirPort(protocol.Protocol):
    """Answers a request with the factory's bytes and closes, as a hostile directory source may."""

    def connectionMade(self):  # noqa: N802 - Twisted's naming
        self.buffer = b""

    def dataReceived(self, data):  # noqa: N802
        self.buffer += data
        if self.buffer.endswith(b"\r\n\r\n"):
            self.factory.requests += 1
            self.transport.write(self.factory.answer)
            self.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_hostile_dirports_never_stall_the_directory(network, authorities, links, tmp_path, caplog):
    """Two authorities' DirPorts answer with what fuzzing found (a status code of latin-1 superscripts,
    which pass str.isdigit() and fail int(); a Content-Length of 5000 digits). Each round moves on to the
    next source, bootstrap completes from the real one, and later rounds end too."""
    answers = [b"HTTP/1.0 \xb2\xb2\xb2 OK\r\n\r\n" + b"x" * 100,
               b"HTTP/1.0 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n"]
    factories, listenings = [], []
    for answer in answers:
        factory = protocol.Factory.forProtocol(HostileDirPort)
        factory.answer, factory.requests = answer, 0
        factories.append(factory)
        listenings.append(reactor.listenTCP(0, factory, interface="127.0.0.1"))
    pointed = [dataclasses.replace(authority, address="127.0.0.1", dir_port=listening.getHost().port)
               for authority, listening in zip(authorities, listenings)] + authorities[len(listenings):]

    def service(seed: int) -> DirectoryService:
        return new_service(pointed, tmp_path / "data", links, rng=random.Random(seed))

    # A seed that puts both hostile DirPorts before the real one in the first round.
    real = {authority.nickname for authority in authorities[len(listenings):]}
    seed = next(seed for seed in range(100)
                if service(seed)._directory_sources(authorities_only=True)[-1].nickname in real)
    caplog.set_level(logging.INFO, logger="oppy")
    directory = service(seed)
    try:
        yield started(directory)
        assert [factory.requests >= 1 for factory in factories] == [True, True]
        failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Consensus fetch from")]
        assert any("non-ASCII byte in the status line" in message for message in failed), failed
        assert any("bad Content-Length" in message for message in failed), failed
        for _ in range(3):       # each round ends (a newer consensus, or none), none is left waiting
            yield directory.fetch_consensus_now(authorities_only=True).addTimeout(60, reactor)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        yield fetch_through(directory, links, network)
    finally:
        yield directory.stop()
        for listening in listenings:
            yield listening.stopListening()


@pytest_twisted.inlineCallbacks
def test_no_reachable_authority_warns_once_and_retries(authorities, links, tmp_path, caplog):
    closed = reactor.listenTCP(0, server.Site(resource.Resource()), interface="127.0.0.1")
    port = closed.getHost().port
    yield closed.stopListening()
    pointed = [dataclasses.replace(authority, address="127.0.0.1", dir_port=port) for authority in authorities]
    caplog.set_level(logging.INFO, logger="oppy")
    service = new_service(pointed, tmp_path / "data", links)
    waiter = service.start()
    try:
        yield task.deferLater(reactor, 3.5, lambda: None)
        assert not waiter.called
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, warnings
        assert warnings[0].startswith("No directory authority or cache could be reached")
        assert "Connection refused" in warnings[0]
        assert service.fetch_counts["consensus"] >= 9          # rounds at 0 s, +1 s, +2 s
        assert service.bootstrap_phase == (5, "conn", "Connecting to a relay")
    finally:
        yield service.stop()
        waiter.cancel()
        waiter.addErrback(lambda failure: None)
