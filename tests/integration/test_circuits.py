"""oppy's link, circuit and stream layers against the real tor relays of the private network."""

from __future__ import annotations

import hashlib
import os

import pytest
import pytest_twisted
from twisted.internet import defer

from oppy.cell.commands import EndReason
from oppy.circuit.build import CircuitBuildError, build_circuit
from oppy.circuit.circuit import CircuitState
from oppy.link.connection import LinkPool
from oppy.stream.stream import Stream, StreamState
from tests.support.network import TestNetwork
from tests.support.relays import fetch, relay_targets
from tests.support.streams import CollectingSink, http_response_body

FIVE_MB = 5 * 1000 * 1000


@pytest.fixture(scope="module")
def relays(network: TestNetwork):
    return relay_targets(network)


@pytest.fixture
def links():
    pool = LinkPool()
    yield pool
    pool.close_all()


def three_hop_path(relays, exit_name: str, guard_name: str = "relay0", middle_name: str = "relay1"):
    return [relays[guard_name], relays[middle_name], relays[exit_name]]


@defer.inlineCallbacks
def http_exchange(circuit, network: TestNetwork, request: bytes, keep: bool = True):
    """Open a stream to the HTTP target on `circuit`, send `request`, and collect the response."""
    sink = CollectingSink(keep=keep)
    stream = Stream(sink, "127.0.0.1", network.http_port)
    stream.attach(circuit)
    assert stream.state is StreamState.SENTCONNECT
    yield sink.connected
    assert stream.state is StreamState.SUCCEEDED
    stream.write(request)
    end = yield sink.ended
    return stream, sink, end


@pytest_twisted.inlineCallbacks
def test_three_hop_circuit_through_each_exit(network, relays, links):
    for exit_name in ("exit0", "exit1"):
        circuit = yield build_circuit(links, three_hop_path(relays, exit_name))
        assert circuit.state is CircuitState.OPEN
        assert circuit.hops_built == 3
        stream, sink, end = yield http_exchange(
            circuit, network, b"GET / HTTP/1.0\r\nHost: target\r\n\r\n")
        head, body = http_response_body(sink.data)
        assert head.split(b"\r\n")[0].endswith(b" 200 OK"), head
        assert body == b"hello from the oppy test target\n"
        assert end.remote and end.reason == EndReason.DONE
        assert stream.state is StreamState.CLOSED
        circuit.close()


@pytest_twisted.inlineCallbacks
def test_five_megabytes_download_byte_exact(network, relays, links):
    circuit = yield build_circuit(links, three_hop_path(relays, "exit0", "relay2", "relay3"))
    stream, sink, end = yield http_exchange(
        circuit, network, f"GET /bytes/{FIVE_MB} HTTP/1.0\r\n\r\n".encode())
    head, body = http_response_body(sink.data)
    assert head.split(b"\r\n")[0].endswith(b" 200 OK"), head
    assert len(body) == FIVE_MB
    expected = fetch(network.url(f"/sha256/{FIVE_MB}")).decode().strip()
    assert hashlib.sha256(body).hexdigest() == expected
    # 5 MB is about 10,000 DATA cells: the exit only kept sending because our circuit and stream SENDMEs
    # (authenticated, v1: the network runs with sendme_accept_min_version=1) were accepted.
    assert circuit.state is CircuitState.OPEN
    assert circuit.bytes_read >= FIVE_MB
    circuit.close()


@pytest_twisted.inlineCallbacks
def test_five_megabytes_upload_confirmed_by_the_target(network, relays, links):
    circuit = yield build_circuit(links, three_hop_path(relays, "exit1", "relay4", "relay0"))
    body = hashlib.shake_256(b"oppy upload").digest(FIVE_MB)
    sink = CollectingSink()
    stream = Stream(sink, "127.0.0.1", network.http_port)
    stream.attach(circuit)
    yield sink.connected
    stream.write(f"POST /upload HTTP/1.0\r\nContent-Length: {len(body)}\r\n\r\n".encode())
    for offset in range(0, len(body), 64 * 1024):
        yield sink.when_writable()      # a writer that ignores "stop" past its buffer's hard limit is closed
        stream.write(body[offset:offset + 64 * 1024])
    yield sink.ended
    head, answer = http_response_body(sink.data)
    assert head.split(b"\r\n")[0].endswith(b" 200 OK"), head
    # The exit's SENDMEs to us were checked against the tags of our own DATA cells; the relays, with
    # sendme_accept_min_version=1, accepted ours.
    assert answer.decode().strip() == f"sha256={hashlib.sha256(body).hexdigest()} length={len(body)}"
    assert circuit.bytes_written >= FIVE_MB
    circuit.close()


@pytest_twisted.inlineCallbacks
def test_a_relay_that_is_not_the_expected_identity_is_refused(relays, links):
    impostor = relays["relay1"]._replace(rsa_id=relays["relay2"].rsa_id, nickname="relay2")
    with pytest.raises(CircuitBuildError) as failure:
        yield build_circuit(links, [impostor, relays["relay3"], relays["exit0"]])
    message = str(failure.value)
    assert relays["relay1"].fingerprint in message and relays["relay2"].fingerprint in message, message


@pytest_twisted.inlineCallbacks
def test_a_wrong_ed25519_identity_is_refused(relays, links):
    impostor = relays["relay1"]._replace(ed25519_id=relays["relay2"].ed25519_id)
    with pytest.raises(CircuitBuildError) as failure:
        yield links.get(impostor).addErrback(
            lambda f: (_ for _ in ()).throw(CircuitBuildError(f.getErrorMessage())))
    assert "Ed25519" in str(failure.value) or "ed25519" in str(failure.value)


@pytest_twisted.inlineCallbacks
def test_twenty_circuits_share_one_connection(network, relays, links):
    guard = relays["relay3"]
    paths = [[guard, relays[f"relay{(i % 3)}"], relays[f"exit{i % 2}"]] for i in range(20)]
    circuits = yield defer.gatherResults([build_circuit(links, path) for path in paths], consumeErrors=True)
    assert len(links.connections()) == 1
    channel = links.connections()[0].channel
    assert len({c.circ_id for c in circuits}) == 20
    assert all(c.channel is channel for c in circuits)
    assert all(c.circ_id & 0x80000000 for c in circuits)
    results = yield defer.gatherResults(
        [http_exchange(c, network, f"GET /bytes/{20000 + i} HTTP/1.0\r\n\r\n".encode())
         for i, c in enumerate(circuits)], consumeErrors=True)
    for i, (stream, sink, end) in enumerate(results):
        head, body = http_response_body(sink.data)
        assert len(body) == 20000 + i
        assert hashlib.sha256(body).hexdigest() == fetch(network.url(f"/sha256/{20000 + i}")).decode().strip()
    for circuit in circuits:
        circuit.close()


@pytest_twisted.inlineCallbacks
def test_begin_to_a_closed_port_fails_with_the_exits_reason(relays, links):
    circuit = yield build_circuit(links, three_hop_path(relays, "exit0"))
    sink = CollectingSink()
    stream = Stream(sink, "127.0.0.1", 1)  # nothing listens on port 1
    stream.attach(circuit)
    with pytest.raises(Exception):
        yield sink.connected
    end = yield sink.ended
    assert end.remote and end.before_connected
    # A 0.4.9 exit reports a refused connection as MISC or CONNECTREFUSED (C tor's client shows both as
    # SOCKS "general failure" / "connection refused").
    assert end.reason in (EndReason.MISC, EndReason.CONNECTREFUSED)
    assert stream.state is StreamState.FAILED
    assert circuit.state is CircuitState.OPEN  # one failed stream does not hurt the circuit
    circuit.close()


@pytest_twisted.inlineCallbacks
def test_extending_to_an_unreachable_relay_names_the_hop(relays, links):
    # A relay nobody runs: relay0 cannot connect to it and answers with a TRUNCATED (or DESTROY).
    ghost = relays["relay4"]._replace(or_port=1, nickname="ghost", rsa_id=os.urandom(20), ed25519_id=None)
    with pytest.raises(CircuitBuildError) as failure:
        yield build_circuit(links, [relays["relay0"], ghost, relays["exit0"]], timeout=30)
    message = str(failure.value)
    assert "hop 2" in message and "ghost" in message, message

