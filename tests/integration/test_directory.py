"""The directory service against the private network's real authorities and relays.

Bootstrap from nothing over BEGIN_DIR to the authorities' ORPorts (CREATE_FAST: no onion key
is known yet), restart from the cache, refreshes from directory guards while circuits keep
working, guards that persist, a forged consensus from a fake authority (a relay in this
process) that is refused, hostile authorities, and no authority at all. The network is
shared with other tests: nothing here stops or restarts a relay.
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

from oppy.circuit.build import build_circuit
from oppy.circuit.manager import CircuitLaunched, CircuitManager, CircuitPurpose
from oppy.directory.cache import CACHED_MICRODESCS_FILE, encode_microdescriptors, split_microdescriptors
from oppy.directory.client import DirectoryClient, DirectoryStatusError
from oppy.directory.service import DirectoryService
from oppy.link.connection import LinkPool
from oppy.netdoc.relay import RelayTarget
from oppy.logs import NOTICE
from oppy.netdoc.authorities import parse_dir_authority_line
from oppy.netdoc.documents import microdesc_digest
from oppy.path.chooser import PathChooser
from oppy.stream.stream import Stream
from tests.support.network import TestNetwork
from tests.support.streams import CollectingSink, http_response_body
from tests.unit.tlsrelay import DirectoryCacheRelay

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


def directory_circuits(links, observers=()) -> CircuitManager:
    """A circuit manager that builds the service's one-hop directory circuits (and nothing else: its path
    chooser has no NetDir)."""
    return CircuitManager(links, PathChooser(), reactor=reactor, preemptive_circuits=0, observers=observers)


def new_service(authorities, directory, links, circuit_observers=(), **options) -> DirectoryService:
    return DirectoryService(authorities, directory, directory_circuits(links, circuit_observers),
                            testing_tor_network=True, reactor=reactor, links=links, **options)


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
    events = []
    service = new_service(authorities, tmp_path / "data", links, circuit_observers=[events.append])
    try:
        yield started(service)
        assert bootstrap_percents(caplog) == [0, 5, 10, 14, 15, 20, 25, 30, 40, 45, 50, 75]
        assert all(r.levelno == NOTICE for r in caplog.records if r.getMessage().startswith("Bootstrapped"))
        # No fallback on a test network: the authorities, at their ORPorts, over one-hop circuits created
        # with CREATE_FAST (their onion keys are not known yet).
        assert service.fetch_counts["consensus:authority"] == 1
        assert service.fetch_counts["certificates:authority"] >= 1
        assert service.fetch_counts["microdescriptors:authority"] >= 1
        launched = [event.circuit for event in events if isinstance(event, CircuitLaunched)]
        assert launched and all(circuit.purpose is CircuitPurpose.DIRECTORY for circuit in launched)
        or_ports = {(authority.address, authority.or_port) for authority in authorities}
        assert all(len(circuit.path) == 1 and (circuit.path[0].address, circuit.path[0].or_port) in or_ports
                   and circuit.path[0].ntor_onion_key is None for circuit in launched)
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
        assert second.fetch_counts["microdescriptors:directory_guard"] >= 1
        path = yield fetch_through(second, links, network)
        assert path[0].fingerprint == primaries[0]
    finally:
        yield second.stop()
        links.close_all()


@pytest_twisted.inlineCallbacks
def test_circuits_keep_working_across_consensus_refreshes(network, authorities, links, tmp_path, caplog):
    """About 190 s: the consensus lives 60 s and is replaced every 20 s, so the service must
    refresh on schedule (from its directory guards) while circuits are built from whatever is current."""
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
        assert service.fetch_counts["consensus:directory_guard"] >= 3
        new_digests = set().union(*(c.microdesc_digests() for c in seen)) - initial_digests
        if not new_digests:
            assert service.fetch_counts["microdescriptors"] == microdesc_requests
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == SERVICE_LOGGER]
    finally:
        yield service.stop()


class ForgingAuthority:
    """A directory cache in this process (a real TLS relay with its own identity) that answers each request
    with what a real authority answers it over BEGIN_DIR, and can forge the consensus."""

    def __init__(self, real, links):
        self.real = RelayTarget(real.nickname, bytes.fromhex(real.fingerprint), real.address, real.or_port)
        self.circuits = directory_circuits(links)
        self.client = DirectoryClient(reactor, timeout=20)
        self.relay = DirectoryCacheRelay(self.answer, slot=1, nickname="forger")
        self.forge = False
        self.forged: list[bytes] = []

    @defer.inlineCallbacks
    def answer(self, url: str):
        try:
            circuit = yield self.circuits.directory_circuit(self.real)
            response = yield self.client.fetch_over_circuit(circuit, url, 1 << 24)
        except DirectoryStatusError as exc:
            return f"HTTP/1.0 {exc.status} Not OK\r\n\r\n".encode()
        except Exception:  # noqa: BLE001 - the real authority could not be asked: say so
            return b"HTTP/1.0 503 Busy\r\n\r\n"
        body = response.body
        if self.forge and "consensus" in url:
            # One byte of one router entry's bandwidth: still well-formed, no longer what was signed.
            at = body.index(b"\nw Bandwidth=") + len(b"\nw Bandwidth=")
            body = body[:at] + (b"7" if body[at:at + 1] != b"7" else b"8") + body[at + 1:]
            self.forged.append(body)
        if url.endswith(".z"):
            return b"HTTP/1.0 200 OK\r\nContent-Encoding: deflate\r\n\r\n" + zlib.compress(body)
        return b"HTTP/1.0 200 OK\r\n\r\n" + body


def pointed_at(authority, relay: DirectoryCacheRelay):
    """The authority's line with its ORPort (and so the RSA identity its link must prove) at `relay`."""
    return dataclasses.replace(authority, fingerprint=relay.fingerprint, address="127.0.0.1",
                               or_port=relay.simulated.or_port)


@pytest_twisted.inlineCallbacks
def test_a_forged_consensus_is_refused_and_the_good_one_stays(network, authorities, links, tmp_path, caplog):
    proxy_links = LinkPool()
    fake = ForgingAuthority(authorities[0], proxy_links)
    port = fake.relay.listen(reactor)
    # The real authorities' v3 identities, all reached through the fake relay.
    pointed = [pointed_at(authority, fake.relay) for authority in authorities]
    caplog.set_level(logging.INFO, logger="oppy")
    service = new_service(pointed, tmp_path / "data", links)
    try:
        yield started(service)
        assert any("consensus-microdesc" in url for url in fake.relay.requests)
        assert set(fake.relay.creates) == {5}         # CREATE_FAST: its onion key is unknown
        good = service.netdir.consensus
        fake.forge = True
        caplog.clear()
        result = yield service.fetch_consensus_now(authorities_only=True)
        assert result is None and fake.forged
        rejections = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(rejections) == 3, rejections
        for message in rejections:
            assert message.startswith("Rejected the microdesc consensus from $")
            assert f"127.0.0.1:{port} (BEGIN_DIR): BadSignatureError" in message
            assert "did not verify" in message and "Still using the consensus valid-after" in message
        installed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Using the microdesc")]
        assert all(f"127.0.0.1:{port}" not in message for message in installed)    # only real relays' refreshes
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
        yield fake.relay.listening.stopListening()
        proxy_links.close_all()


@pytest_twisted.inlineCallbacks
def test_hostile_authorities_never_stall_the_directory(network, authorities, links, tmp_path, caplog):
    """Two authorities answer BEGIN_DIR with what fuzzing found (a status code of latin-1 superscripts, which
    pass str.isdigit() and fail int(); a Content-Length of 5000 digits). Each round moves on to the next
    source, bootstrap completes from the real one, and later rounds end too."""
    answers = [b"HTTP/1.0 \xb2\xb2\xb2 OK\r\n\r\n" + b"x" * 100,
               b"HTTP/1.0 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n"]
    hostile = [DirectoryCacheRelay(lambda url, answer=answer: answer, slot=2 + index, nickname=f"hostile{index}")
               for index, answer in enumerate(answers)]
    for relay in hostile:
        relay.listen(reactor)
    pointed = [pointed_at(authority, relay) for authority, relay in zip(authorities, hostile)] \
        + authorities[len(hostile):]

    def service(seed: int) -> DirectoryService:
        return new_service(pointed, tmp_path / "data", links, rng=random.Random(seed))

    # A seed that puts both hostile authorities before the real one in the first round.
    real = {authority.nickname for authority in authorities[len(hostile):]}
    seed = next(seed for seed in range(100)
                if service(seed)._directory_sources(authorities_only=True)[-1].nickname in real)
    caplog.set_level(logging.INFO, logger="oppy")
    directory = service(seed)
    try:
        yield started(directory)
        assert [len(relay.requests) >= 1 for relay in hostile] == [True, True]
        failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Consensus fetch from")]
        assert any("non-ASCII byte in the status line" in message for message in failed), failed
        assert any("bad Content-Length" in message for message in failed), failed
        for _ in range(3):       # each round ends (a newer consensus, or none), none is left waiting
            yield directory.fetch_consensus_now(authorities_only=True).addTimeout(60, reactor)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        yield fetch_through(directory, links, network)
    finally:
        yield directory.stop()
        for relay in hostile:
            yield relay.listening.stopListening()


@pytest_twisted.inlineCallbacks
def test_no_reachable_authority_warns_once_and_retries(authorities, links, tmp_path, caplog):
    closed = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
    port = closed.getHost().port
    yield closed.stopListening()
    pointed = [dataclasses.replace(authority, address="127.0.0.1", or_port=port) for authority in authorities]
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
