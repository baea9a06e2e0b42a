"""A SOCKS client that never reads, in process: the SOCKS listener, the circuit manager and a MemoryTracker
over loopback TCP, the circuit built through relays simulated by tests.unit.relaysim.

What the exit sends beyond what the client's socket and the listener's transport take waits in the stream,
counted, and never more than one stream window of it, since no stream SENDME goes out while the client does
not read. With MaxMemInQueues below that, the circuit is closed and the client's connection reset.
"""

from __future__ import annotations

import socket
import struct

import pytest_twisted
from twisted.internet import defer, reactor, task, threads

from oppy.cell.flow_control import STREAMWINDOW_INCREMENT, STREAMWINDOW_START
from oppy.circuit.circuit import CircuitState
from oppy.circuit.manager import CircuitManager
from oppy.circuit.memory import MemoryTracker
from oppy.path.chooser import PathChooser
from oppy.socks.server import SocksFactory
from tests.support.listeners import hung_up_on, until
from tests.support.socks_client import SOCKS5_NO_AUTH_GREETING, socks5_greeting
from tests.unit.relaysim import (
    CMD_CREATE2,
    CMD_CREATED2,
    CMD_RELAY,
    RELAY_CONNECTED,
    RELAY_DATA,
    RELAY_DATA_LEN,
    RELAY_SENDME,
    RecordingChannel,
    SimulatedPath,
    SimulatedRelay,
)

EXIT = 2
SMALL_SOCKET_BUFFER = 8192


class OneChannelLinks:
    """A link pool whose every link is one recording channel, open at once."""

    def __init__(self) -> None:
        self.channel = RecordingChannel()

    def get(self, relay):
        return defer.succeed(self.channel)


class SimulatedPaths(PathChooser):
    """Every circuit goes through the simulated exit's relays."""

    def __init__(self, path: SimulatedPath) -> None:
        super().__init__()
        self.path = path

    def choose_circuit_path(self, port=None, exclude=(), rng=None):
        return [relay.target for relay in self.path.relays], None


class SimulatedExit:
    """Builds the manager's circuit through three simulated relays and plays the exit of its one stream,
    sending DATA as far as the stream window allows."""

    def __init__(self, channel: RecordingChannel) -> None:
        self.channel = channel
        self.path = SimulatedPath([SimulatedRelay(name) for name in ("guard", "middle", "exit")])
        self.circuit = None
        self.stream_id = 0
        self.window = STREAMWINDOW_START
        self.sent = 0

    def answer(self) -> None:
        """Answer what the circuit sent: the build, BEGIN (CONNECTED), stream SENDMEs (more window)."""
        for circ_id, command, payload in self.channel.take():
            if command == CMD_CREATE2:
                self.circuit = self.channel.circuits[circ_id]
                self.circuit.cell_received(CMD_CREATED2, self.path.answer_create2(payload))
                continue
            message = self.path.receive(payload)
            if len(self.path.hops) < len(self.path.relays):
                self.circuit.cell_received(CMD_RELAY, self.path.answer_extend2(message))
            elif message.command == 1:  # BEGIN
                self.stream_id = message.stream_id
                self.circuit.cell_received(CMD_RELAY, self.path.send(EXIT, RELAY_CONNECTED, self.stream_id))
            elif message.command == RELAY_SENDME and message.stream_id == self.stream_id:
                self.window += STREAMWINDOW_INCREMENT

    def send_data(self, cells: int) -> int:
        """Up to `cells` DATA cells in one read, within the stream window; how many went."""
        count = min(cells, self.window)
        if count:
            batch = [self.path.send(EXIT, RELAY_DATA, self.stream_id, b"z" * RELAY_DATA_LEN) for _ in range(count)]
            self.circuit.relay_cells_received(b"".join(batch))
            self.window -= count
            self.sent += count
        return count


def connect_and_never_read(port: int, stop: defer.Deferred) -> str:
    """A SOCKS5 CONNECT with a small receive buffer, then no reading until `stop` fires; what the socket
    shows afterwards ("reset", "eof" or "open")."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_SOCKET_BUFFER)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"\x05\x01\x00")
        assert sock.recv(2) == b"\x05\x00"
        sock.sendall(b"\x05\x01\x00\x03\x0bexample.com" + struct.pack(">H", 80))
        reply = b""
        while len(reply) < 10:
            reply += sock.recv(10 - len(reply))
        assert reply[1] == 0, reply
        threads.blockingCallFromThread(reactor, lambda: stop)
        try:
            while sock.recv(65536):
                pass
            return "eof"
        except ConnectionResetError:
            return "reset"
        except socket.timeout:
            return "open"


@defer.inlineCallbacks
def stall_a_download(tracker: MemoryTracker):
    """A SOCKS client that stops reading, and an exit sending until the stream window is spent (or the
    circuit closed): (exit, managed stream, the client's outcome Deferred, the Deferred that lets it read)."""
    links = OneChannelLinks()
    exit_ = SimulatedExit(links.channel)
    manager = CircuitManager(links, SimulatedPaths(exit_.path), reactor=reactor, preemptive_circuits=0,
                             queue_account=tracker)
    factory = SocksFactory(manager, reactor, allow_private_addresses=True)
    listener = reactor.listenTCP(0, factory, interface="127.0.0.1")
    # Small kernel buffers on oppy's side too (accepted sockets inherit them), so that the transport fills.
    listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_SOCKET_BUFFER)
    stop = defer.Deferred()
    outcome = threads.deferToThread(connect_and_never_read, listener.getHost().port, stop)
    yield until(lambda: manager.streams, "the SOCKS request")
    (managed,) = manager.streams.values()
    yield until(lambda: (exit_.answer(), managed.stream.stream_id and exit_.stream_id)[1], "CONNECTED")
    idle = 0
    while idle < 20 and exit_.circuit.state is CircuitState.OPEN:  # until nothing moves for 0.2 s
        exit_.answer()
        idle = 0 if exit_.send_data(25) else idle + 1
        yield task.deferLater(reactor, 0.01, lambda: None)
    return exit_, managed, manager, factory, listener, outcome, stop


@defer.inlineCallbacks
def tear_down(manager, factory, listener, stop):
    if not stop.called:
        stop.callback(None)
    manager.close_all()
    factory.close_all()
    yield listener.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_client_that_never_reads_leaves_at_most_one_stream_window_queued_and_counted():
    tracker = MemoryTracker(max_bytes=1 << 30)
    exit_, managed, manager, factory, listener, outcome, stop = yield stall_a_download(tracker)
    stream = managed.stream
    try:
        # The exit sent its whole window and then some (the SENDMEs for what the client's socket took before
        # it filled), and then nothing: no SENDME came back for what waits in the stream.
        assert exit_.window == 0 and exit_.sent >= STREAMWINDOW_START
        assert 0 < stream.queued_bytes <= STREAMWINDOW_START * RELAY_DATA_LEN
        assert tracker.queued_in_streams == stream.queued_bytes
        assert exit_.circuit.state is CircuitState.OPEN and not stream.ended
    finally:
        yield tear_down(manager, factory, listener, stop)
    assert (yield outcome) in ("eof", "reset")
    assert tracker.queued_in_streams == 0


@pytest_twisted.inlineCallbacks
def test_past_max_mem_in_queues_the_circuit_is_closed_and_the_client_reset(caplog):
    tracker = MemoryTracker(max_bytes=100 * RELAY_DATA_LEN)
    with caplog.at_level("NOTICE", logger="oppy.circuit.memory"):
        exit_, managed, manager, factory, listener, outcome, stop = yield stall_a_download(tracker)
    try:
        assert exit_.circuit.state is CircuitState.CLOSED
        assert managed.stream.end.reason == 11  # RESOURCELIMIT
        assert tracker.queued_in_streams == 0 and tracker.circuits_closed == 1
        assert len([r for r in caplog.records if r.getMessage().startswith("We're low on memory")]) == 1
        stop.callback(None)
        assert (yield outcome) == "reset"  # an error for the client, not a clean end of a short download
    finally:
        yield tear_down(manager, factory, listener, stop)


# ------------------------------------------------------------------------------------------------ MaxSocksConnections

@pytest_twisted.inlineCallbacks
def test_connections_beyond_max_socks_connections_are_refused_with_one_line_per_episode(caplog):
    factory = SocksFactory(None, reactor, max_connections=2)
    listener = reactor.listenTCP(0, factory, interface="127.0.0.1")
    port = listener.getHost().port
    clients = []
    try:
        with caplog.at_level("WARNING", logger="oppy.socks.server"):
            for _ in range(2):
                clients.append((yield threads.deferToThread(socks5_greeting, port)))
            for _ in range(5):
                assert (yield threads.deferToThread(hung_up_on, port, SOCKS5_NO_AUTH_GREETING))
            clients.pop(0).close()
            yield until(lambda: len(factory.open_connections) == 1, "a client left")
            clients.append((yield threads.deferToThread(socks5_greeting, port)))  # served again
            assert (yield threads.deferToThread(hung_up_on, port, SOCKS5_NO_AUTH_GREETING))  # full again: a second episode
        expected = ("Refusing new SOCKS connections: 2 are open, as many as MaxSocksConnections allows (not "
                    "logged again until one closes)")
        assert [record.getMessage() for record in caplog.records] == [expected, expected]
        # The clients it kept were never disturbed: each still takes a request (a private address, refused).
        for client in clients:
            client.sendall(b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50")
            reply = yield threads.deferToThread(client.recv, 10)
            assert reply[:2] == b"\x05\x01"
    finally:
        for client in clients:
            client.close()
        yield listener.stopListening()
