"""The SOCKS listener closes the client connection once a stream ended, also when its producer was paused.

Twisted does not close a transport that has a registered producer: when the write buffer drains while the
producer is paused, it resumes the producer instead of disconnecting. A download whose client read slower
than the exit sent then never saw its end (found by scripts/bench: the fetch hung after the last byte).
"""

from __future__ import annotations

import socket
import struct
import time

import pytest_twisted
from twisted.internet import defer, reactor, threads

from oppy.cell.commands import EndReason
from oppy.socks.server import SocksFactory
from oppy.stream.stream import StreamEnd

PAYLOAD_LEN = 2 * 1024 * 1024  # far beyond Twisted's 64 KiB send buffer: the producer gets paused


class FakeStream:
    ended = False

    def __init__(self) -> None:
        self.paused = 0

    def write(self, data: bytes) -> None:
        pass

    def pause_delivery(self) -> None:
        self.paused += 1

    def resume_delivery(self) -> None:
        pass

    def close(self, reason, *, retry=False, flush_first=False) -> None:
        self.ended = True


class FakeManaged:
    def __init__(self) -> None:
        self.stream = FakeStream()


class FakeManager:
    """Connects every stream at once and hands the test the sink."""

    def __init__(self) -> None:
        self.sinks: defer.Deferred = defer.Deferred()

    def open_stream(self, sink, host, port, kind, source=None, isolation=None, original_address=None):
        managed = FakeManaged()
        reactor.callLater(0, sink.stream_connected, managed.stream)
        reactor.callLater(0, self.sinks.callback, (sink, managed.stream))
        return managed


def client_reads_late(port: int) -> tuple[int, bool]:
    """SOCKS5 CONNECT, wait while the listener fills its buffer, then read to EOF (or time out)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.sendall(b"\x05\x01\x00")
        assert sock.recv(2) == b"\x05\x00"
        sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", 80))
        reply = b""
        while len(reply) < 10:
            reply += sock.recv(10 - len(reply))
        assert reply[1] == 0
        time.sleep(0.5)
        received = 0
        try:
            while True:
                piece = sock.recv(65536)
                if not piece:
                    return received, True
                received += len(piece)
        except socket.timeout:
            return received, False


@pytest_twisted.inlineCallbacks
def test_connection_closes_after_the_end_although_the_client_read_slowly():
    manager = FakeManager()
    factory = SocksFactory(manager, reactor, allow_private_addresses=True)
    listener = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        reading = threads.deferToThread(client_reads_late, listener.getHost().port)
        sink, stream = yield manager.sinks
        sink.stream_data(stream, b"x" * PAYLOAD_LEN)
        assert stream.paused, "the transport's buffer should have paused the producer"
        sink.stream_ended(stream, StreamEnd("done", EndReason.DONE, remote=True, before_connected=False))
        received, saw_eof = yield reading
    finally:
        yield listener.stopListening()
    assert received == PAYLOAD_LEN
    assert saw_eof, "the SOCKS connection stayed open after the stream ended"
