"""A new stream's time to first byte: what its application waits on (the SOCKS replies, the answer's first
bytes) is handed to the socket at once. Twisted's `write` only buffers until the reactor polls for writability,
which comes after the rest of that iteration's reads and the next poll's; under a bulk download each is up to
64 KiB of cells to decrypt first (the "TTFB under load" of scripts/bench, README "Conflux").

Real TCP connections on loopback: the test hands the listener's protocol the client's bytes as the reactor
would, and reads the client's socket before the reactor runs again."""

from __future__ import annotations

import socket
import struct

import pytest_twisted
from twisted.internet import defer, reactor, task

from oppy.socks.server import SocksClientProtocol, SocksFactory, SocksPortSettings
from tests.unit.test_socks_listener_close import FakeManaged


def read_now(sock: socket.socket) -> bytes:
    """What the socket holds right now (non-blocking)."""
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return b""


class Manager:
    """Opens a stream and leaves it waiting: the test says when it connects."""

    def open_stream(self, sink, host, port, kind, source=None, isolation=None, original_address=None):
        return FakeManaged()


@defer.inlineCallbacks
def connected_pair(factory):
    """A listener for `factory`, a non-blocking client socket connected to it, and the server protocol."""
    built = []

    class Recording(factory.protocol_class):
        def connectionMade(self):  # noqa: N802
            built.append(self)
            super().connectionMade()

    factory.protocol_class = Recording
    listener = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", listener.getHost().port), timeout=5)
    client.setblocking(False)
    while not built:
        yield task.deferLater(reactor, 0.01, lambda: None)
    return listener, client, built[0]


@pytest_twisted.inlineCallbacks
def test_socks_replies_and_the_answers_first_bytes_reach_the_socket_before_the_reactor_runs_again():
    factory = SocksFactory(Manager(), reactor, allow_private_addresses=True).for_port(
        SocksPortSettings(), SocksClientProtocol)
    listener, client, server = yield connected_pair(factory)
    try:
        server.dataReceived(b"\x05\x01\x00")
        assert read_now(client) == b"\x05\x00"
        server.dataReceived(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", 80))
        assert read_now(client) == b""  # no answer before CONNECTED
        server.stream_connected(server.stream)
        reply = read_now(client)
        assert reply[:2] == b"\x05\x00" and len(reply) == 10
        server.stream_data(server.stream, b"HTTP/1.1 200 OK\r\n")
        assert read_now(client) == b"HTTP/1.1 200 OK\r\n"
        # The rest of the answer is written as Twisted writes (per reactor iteration), not one call per read.
        server.stream_data(server.stream, b"the rest")
        assert read_now(client) == b""
        yield task.deferLater(reactor, 0.05, lambda: None)
        assert read_now(client) == b"the rest"
    finally:
        client.close()
        yield listener.stopListening()
