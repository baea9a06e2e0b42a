"""The control listener's limits, in process over loopback TCP: how many controllers may be connected, and how
much output may wait for one that does not read. Either is refused or dropped with one log line, and the
other controllers go on being served."""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet import reactor, task, threads

from oppy.config import Config
from oppy.control.commands import ControlBackend
from oppy.control.session import ControlHub
from oppy.control.server import ControlFactory
from tests.support.listeners import hung_up_on, until

SMALL_SOCKET_BUFFER = 8192


class Backend(ControlBackend):
    def __init__(self) -> None:
        self.config = Config()
        self.manager = None
        self.directory = None


def connect(port: int, *, receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return sock


def ask(sock: socket.socket, line: bytes) -> bytes:
    """Send a command; its reply, up to the final line."""
    sock.sendall(line + b"\r\n")
    answer = b""
    while not answer.endswith(b"\r\n") or answer.splitlines()[-1][3:4] != b" ":
        piece = sock.recv(65536)
        if not piece:
            raise ConnectionError(f"closed after {answer!r}")
        answer += piece
    return answer


def drained_until_closed(sock: socket.socket) -> bool:
    """Read everything; True when the listener closed (or reset) the connection."""
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


@pytest_twisted.inlineCallbacks
def test_connections_beyond_the_cap_are_refused_with_one_line_and_the_others_served(caplog):
    factory = ControlFactory(ControlHub(Backend()), max_connections=2)
    listener = reactor.listenTCP(0, factory, interface="127.0.0.1")
    port = listener.getHost().port
    sockets = []
    try:
        with caplog.at_level("WARNING", logger="oppy.control.server"):
            for _ in range(2):
                sockets.append((yield threads.deferToThread(connect, port)))
            yield until(lambda: len(factory.connections) == 2, "two controllers")
            for _ in range(3):
                assert (yield threads.deferToThread(hung_up_on, port, b"PROTOCOLINFO\r\n"))
            answer = yield threads.deferToThread(ask, sockets[1], b"PROTOCOLINFO")
            assert answer.startswith(b"250-PROTOCOLINFO 1")
            sockets.pop(0).close()
            yield until(lambda: len(factory.connections) == 1, "one controller gone")
            sockets.append((yield threads.deferToThread(connect, port)))
            answer = yield threads.deferToThread(ask, sockets[-1], b"PROTOCOLINFO")
            assert answer.startswith(b"250-PROTOCOLINFO 1")
        lines = [record.getMessage() for record in caplog.records]
        assert lines == ["Refusing new control connections: 2 are open, the most oppy accepts (not logged again "
                         "until one closes)"]
    finally:
        for sock in sockets:
            sock.close()
        yield listener.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_controller_that_never_reads_is_dropped_once_too_much_waits_for_it(caplog):
    hub = ControlHub(Backend())
    factory = ControlFactory(hub, max_output=256 * 1024)
    listener = reactor.listenTCP(0, factory, interface="127.0.0.1")
    listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_SOCKET_BUFFER)
    port = listener.getHost().port
    stalled = reader = None
    try:
        stalled = yield threads.deferToThread(connect, port, receive_buffer=SMALL_SOCKET_BUFFER)
        reader = yield threads.deferToThread(connect, port)
        for sock in (stalled, reader):
            assert (yield threads.deferToThread(ask, sock, b"AUTHENTICATE")) == b"250 OK\r\n"
            assert (yield threads.deferToThread(ask, sock, b"SETEVENTS BW")) == b"250 OK\r\n"
        event = b"650 BW " + b"1" * 10_000 + b" 2\r\n"
        received = bytearray()
        with caplog.at_level("WARNING", logger="oppy.control.server"):
            for _ in range(200):  # 2 MB of events: the stalled controller reads none of them
                hub.broadcast("BW", event)
                yield task.deferLater(reactor, 0, lambda: None)
                received += yield threads.deferToThread(reader.recv, 1 << 20)
            yield until(lambda: len(factory.connections) == 1, "the stalled controller is dropped")
        (line,) = [record.getMessage() for record in caplog.records]
        assert line.startswith("Closing a controller connection that does not read what it is sent:")
        assert line.endswith("(the limit is 262144)")
        assert len(hub.sessions) == 1
        assert (yield threads.deferToThread(drained_until_closed, stalled))
        hub.broadcast("BW", event)
        while len(received) < 201 * len(event):
            received += yield threads.deferToThread(reader.recv, 1 << 20)
        assert bytes(received) == event * 201  # the reading controller got every event, whole
    finally:
        for sock in (stalled, reader):
            if sock is not None:
                sock.close()
        yield listener.stopListening()
