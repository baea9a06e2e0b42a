"""Backpressure toward a slow relay: the link pauses its circuits, which stop packaging their streams' data.

First sans IO (a real Channel, Circuit and Stream against the relays of tests.unit.relaysim), then in process
over loopback TCP: a relay written here with the standard library's TLS and relaysim's cells stops reading,
and the link's memory must stay bounded until it reads again.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct

import pytest_twisted
from twisted.internet import defer, protocol, reactor, task

from oppy.circuit.build import build_circuit
from oppy.circuit.circuit import Circuit
from oppy.link.channel import Channel, ChannelState
from oppy.link.connection import LinkPool
from oppy.stream.stream import Stream, StreamState
from tests.support.streams import CollectingSink
from tests.unit.certfactory import build_cert_set, cached_relay_keys
from tests.unit.relaysim import (
    CMD_CREATE2,
    CMD_CREATED2,
    CMD_RELAY,
    RELAY_CONNECTED,
    RELAY_DATA,
    RELAY_SENDME,
    RecordingCircuitOwner,
    SimulatedPath,
    SimulatedRelay,
    fixed_cell,
    parse_cells,
    relay_handshake_cells,
    sendme_v1_body,
)

CELL_LEN = 514  # a fixed-length cell with a 4-byte circuit id
RELAY_BEGIN = 1  # tor-spec "Relay cells"


# ------------------------------------------------------------------------------------------------ sans IO

def open_circuit_on_a_channel(high_watermark: int):
    """A real open Channel (no transport: the test takes its bytes) with a one-hop Circuit built on it."""
    channel = Channel(b"\0" * 20, None, "127.0.0.1:1", high_watermark=high_watermark)
    channel.state = ChannelState.OPEN
    channel.link_version = 5
    channel._reader.set_link_version(5)
    channel.data_to_send()
    path = SimulatedPath([SimulatedRelay("guard")])
    circuit = Circuit(channel, [relay.target for relay in path.relays], RecordingCircuitOwner())
    circuit.start()
    ((_, _, create2),) = parse_cells(channel.data_to_send())
    channel.receive_data(fixed_cell(circuit.circ_id, CMD_CREATED2, path.answer_create2(create2)))
    return channel, circuit, path


def test_a_paused_channel_stops_the_streams_and_resuming_lets_them_go_on():
    channel, circuit, path = open_circuit_on_a_channel(high_watermark=20 * CELL_LEN)
    sink = CollectingSink()
    stream = Stream(sink, "127.0.0.1", 80, send_buffer_limit=64 * 1024)
    stream.attach(circuit)
    ((_, _, begin),) = parse_cells(channel.data_to_send())
    stream_id = path.receive(begin).stream_id
    channel.receive_data(fixed_cell(circuit.circ_id, CMD_RELAY, path.send(0, RELAY_CONNECTED, stream_id)))
    first = os.urandom(100 * 498)
    stream.write(first)  # 100 cells at once: past the high watermark
    assert channel.paused and circuit.package_room == 0
    queued = channel.queued
    second = os.urandom(80 * 1024)
    stream.write(second)
    assert channel.queued == queued, "a paused channel takes no stream data"
    assert sink.writable_changes == [False], "the stream's buffer filled: its source is told to stop"
    taken = channel.data_to_send()  # the connection takes the queue: the circuit resumes its stream at once
    assert channel.queued > 0 and sink.writable_changes == [False, True]
    while channel.queued:
        taken += channel.data_to_send()
    assert not channel.paused
    sent = b"".join(message.data for message in map(path.receive, (payload for _, _, payload in parse_cells(taken)))
                    if message.command == RELAY_DATA)
    assert sent == first + second


# ------------------------------------------------------------------------------------------------ over TCP

class SlowRelay(protocol.Protocol):
    """The relay end of one link: TLS and the responder's handshake, CREATE2, BEGIN, DATA with SENDMEs as the
    exit sends them; it stops reading when told to (`hold`)."""

    def __init__(self, relay: SimulatedRelay, context: ssl.SSLContext, certs_body: bytes) -> None:
        self.relay = relay
        self.path = SimulatedPath([relay])
        self.certs_body = certs_body
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._tls_up = False
        self._plain = bytearray()
        self._versions_seen = False
        self.data: dict[int, bytearray] = {}
        self._cells_since_sendme = 0

    def hold(self) -> None:
        self.transport.pauseProducing()

    def release(self) -> None:
        self.transport.resumeProducing()

    def _send(self, data: bytes) -> None:
        if data:
            self._tls.write(data)
        if self._outgoing.pending:
            self.transport.write(self._outgoing.read())

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self._incoming.write(data)
        if not self._tls_up:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                self._send(b"")
                return
            self._tls_up = True
            self._send(b"".join(relay_handshake_cells(self.certs_body, client_address="127.0.0.1")))
        try:
            while True:
                piece = self._tls.read(65536)
                if not piece:
                    break
                self._plain += piece
        except ssl.SSLWantReadError:
            pass
        if not self._versions_seen:
            if len(self._plain) < 5:
                return
            (length,) = struct.unpack_from(">H", self._plain, 3)
            del self._plain[:5 + length]  # the client's VERSIONS, in the 2-byte framing
            self._versions_seen = True
        whole = len(self._plain) - len(self._plain) % CELL_LEN  # the client sends fixed-length cells only
        cells, self._plain[:whole] = parse_cells(bytes(self._plain[:whole])), b""
        self._send(b"".join(self._answer(circ_id, command, payload) for circ_id, command, payload in cells))

    def _answer(self, circ_id: int, command: int, payload: bytes) -> bytes:
        if command == CMD_CREATE2:
            return fixed_cell(circ_id, CMD_CREATED2, self.path.answer_create2(payload))
        if command != CMD_RELAY:
            return b""  # NETINFO
        message = self.path.receive(payload)
        if message.command == RELAY_BEGIN:
            self.data[message.stream_id] = bytearray()
            return fixed_cell(circ_id, CMD_RELAY, self.path.send(0, RELAY_CONNECTED, message.stream_id))
        if message.command != RELAY_DATA:
            return b""
        answer = b""
        received = self.data[message.stream_id]
        received += message.data
        if (len(received) // 498) % 50 == 0 and len(message.data) == 498:
            # tor-spec §7.4: a stream SENDME per 50 DATA cells (these streams send full cells).
            answer += fixed_cell(circ_id, CMD_RELAY, self.path.send(0, RELAY_SENDME, message.stream_id))
        self._cells_since_sendme += 1
        if self._cells_since_sendme == 100:
            # tor-spec §7.3 / prop 289: a circuit SENDME per 100, echoing the digest after the 100th.
            self._cells_since_sendme = 0
            answer += fixed_cell(circ_id, CMD_RELAY, self.path.send(0, RELAY_SENDME, 0, sendme_v1_body(message.tag)))
        return answer


def server_context(tmp_path, keys, certs) -> ssl.SSLContext:
    from cryptography.hazmat.primitives import serialization

    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_text(ssl.DER_cert_to_PEM_cert(certs.tls_cert_der))
    key_file.write_bytes(keys.tls_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


@defer.inlineCallbacks
def until(condition, what: str, timeout: float = 10.0):
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        yield task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"timed out waiting until {what}")


@pytest_twisted.inlineCallbacks
def test_a_relay_that_stops_reading_pauses_the_circuits_and_memory_stays_bounded(tmp_path):
    keys = cached_relay_keys(0)
    certs = build_cert_set(keys, reactor.seconds())
    relay = SimulatedRelay("slow", "127.0.0.1", 1)
    relay.rsa_id, relay.ed25519_id = keys.rsa_id, keys.ed25519_id  # the identity the CERTS cell proves
    context = server_context(tmp_path, keys, certs)
    servers: list[SlowRelay] = []

    def accept():
        servers.append(SlowRelay(relay, context, certs.certs_cell()))
        return servers[-1]

    listener = reactor.listenTCP(0, protocol.Factory.forProtocol(accept), interface="127.0.0.1")
    # Small kernel buffers, so that the transport's own buffer fills (the accepted socket inherits them).
    listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    relay.or_port = listener.getHost().port
    high_watermark = 32 * 1024
    sinks = [CollectingSink(), CollectingSink()]
    links = LinkPool(reactor, queue_high_watermark=high_watermark)
    try:
        circuit = yield build_circuit(links, [relay.target], timeout=10, reactor=reactor)
        (connection,) = links.connections()
        connection.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        channel = connection.channel
        (server,) = servers
        streams = [Stream(sink, "127.0.0.1", 80) for sink in sinks]
        for stream in streams:
            stream.attach(circuit)
        yield until(lambda: all(stream.state is StreamState.SUCCEEDED for stream in streams), "CONNECTED")
        server.hold()
        payloads = [os.urandom(1_000_000) for _ in streams]
        for stream, payload in zip(streams, payloads):
            stream.write(payload)
        yield until(lambda: channel.paused, "the link pauses its circuits")
        assert circuit.package_room == 0
        # Nothing moves while the relay does not read: the link holds at most the queue past its high
        # watermark (one flush of a stream's window) plus the transport's buffer of 64 KiB.
        transport_buffered = lambda: len(connection.transport.dataBuffer) + connection.transport._tempDataLen  # noqa: E731
        yield task.deferLater(reactor, 0.3, lambda: None)
        assert channel.paused
        assert channel.queued <= high_watermark + 500 * CELL_LEN
        assert transport_buffered() <= 2 * connection.transport.bufferSize + high_watermark + 500 * CELL_LEN
        assert all(sink.writable_changes[-1:] == [False] for sink in sinks), "the streams stop their sources"
        server.release()
        yield until(lambda: [bytes(server.data.get(stream.stream_id, b"")) for stream in streams] == payloads,
                    "the relay has every byte")
        assert not channel.paused and all(sink.writable_changes[-1] is True for sink in sinks)
    finally:
        for sink in sinks:
            sink.connected.addErrback(lambda failure: None)
        links.close_all()
        yield listener.stopListening()
