"""Directory sources in memory, reached through oppy's real DirectoryClient transports.

A DirPort is a port of a ``MemoryReactorClock``: each ``connectTCP`` the client makes is answered
by the site registered for that port over a ``StringTransport`` (the client's own protocol, request
encoder, reader and timeout run unchanged). A directory cache reached over BEGIN_DIR is a real
one-hop oppy ``Circuit`` built through relaysim: the client's relay cells are decrypted by the
simulated relay, and the answer goes back as DATA cells and an END. Sites answer with raw bytes,
so a test can send whatever a hostile source might.
"""

from __future__ import annotations

import email.utils
from typing import Protocol

from twisted.internet import defer, error as twisted_error
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from oppy.circuit.circuit import Circuit
from oppy.netdoc.relay import RelayTarget
from tests.unit.relaysim import CMD_RELAY, RELAY_CONNECTED, RELAY_DATA, RELAY_DATA_LEN, RELAY_END, build_circuit

#: tor-spec "Relay cells": BEGIN_DIR opens a directory stream.
RELAY_BEGIN_DIR = 13
#: tor-spec "Closing streams": END reasons used here.
END_REASON_DONE = 6
END_REASON_NOTDIRECTORY = 14
#: How many bytes of an answer a DirPort writes at a time.
DIRPORT_WRITE_SIZE = 4096


class Site(Protocol):
    """What answers directory requests: raw HTTP bytes for (path, If-Modified-Since or None)."""

    reachable: bool

    def answer(self, path: str, if_modified_since: float | None) -> bytes: ...


def parse_request(request: bytes) -> tuple[str, float | None]:
    """(path, If-Modified-Since) of ``GET path HTTP/1.0`` and its headers."""
    lines = request.decode("ascii").split("\r\n")
    method, path, version = lines[0].split(" ")
    assert (method, version) == ("GET", "HTTP/1.0"), lines[0]
    since = None
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        if name == "If-Modified-Since":
            since = email.utils.parsedate_to_datetime(value).timestamp()
    return path, since


class CannedSite:
    """Answers every request with the same bytes."""

    def __init__(self, answer: bytes, reachable: bool = True) -> None:
        self.raw = answer
        self.reachable = reachable

    def answer(self, path: str, if_modified_since: float | None) -> bytes:
        return self.raw


class OneHopCache:
    """The relay end of one BEGIN_DIR circuit: reads each stream's request and answers it."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.circuit, self.channel, self.path = build_circuit(Circuit, hops=1)
        self.requests: dict[int, bytearray] = {}
        self.answered: list[str] = []
        #: (stream id, reason) of each END the client sent.
        self.client_ends: list[tuple[int, int]] = []

    def pump(self) -> bool:
        """Handle what the client sends until it sends nothing more; True if it sent anything."""
        moved = False
        while self._handle(self.channel.take()):
            moved = True
        return moved

    def _handle(self, cells: list[tuple[int, int, bytes]]) -> bool:
        for _, command, payload in cells:
            assert command == CMD_RELAY, command
            message = self.path.receive(payload)
            if message.command == RELAY_BEGIN_DIR:
                if self.site.reachable:
                    self.requests[message.stream_id] = bytearray()
                    self._send(RELAY_CONNECTED, message.stream_id)
                else:
                    self._send(RELAY_END, message.stream_id, bytes([END_REASON_NOTDIRECTORY]))
            elif message.command == RELAY_DATA and message.stream_id in self.requests:
                request = self.requests[message.stream_id]
                request += message.data
                if request.endswith(b"\r\n\r\n"):
                    del self.requests[message.stream_id]
                    self._answer(message.stream_id, bytes(request))
            elif message.command == RELAY_END:
                self.requests.pop(message.stream_id, None)
                self.client_ends.append((message.stream_id, message.data[0]))
        return bool(cells)

    def _answer(self, stream_id: int, request: bytes) -> None:
        path, since = parse_request(request)
        self.answered.append(path)
        answer = self.site.answer(path, since)
        for start in range(0, len(answer), RELAY_DATA_LEN):
            self._send(RELAY_DATA, stream_id, answer[start:start + RELAY_DATA_LEN])
        self._send(RELAY_END, stream_id, bytes([END_REASON_DONE]))

    def _send(self, command: int, stream_id: int, data: bytes = b"") -> None:
        self.circuit.cell_received(CMD_RELAY, self.path.send(0, command, stream_id, data))


class WireDirectory:
    """DirPort sites by port and BEGIN_DIR sites by relay nickname, served through real transports.

    Hand :meth:`build_circuit` to a DirectoryService as its circuit builder and this object's
    ``reactor`` as its reactor (and to its DirectoryClient); then :meth:`pump` answers
    everything the service asked for, until it asks nothing more.
    """

    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.dirports: dict[int, Site] = {}
        self.caches: dict[str, Site] = {}
        self.circuits: dict[str, list[OneHopCache]] = {}
        self.dirport_requests: list[tuple[int, str]] = []
        self._connections_served = 0

    def build_circuit(self, links, path: list[RelayTarget], timeout: float, reactor=None) -> defer.Deferred:
        (target,) = path
        cache = OneHopCache(self.caches[target.nickname])
        self.circuits.setdefault(target.nickname, []).append(cache)
        return defer.succeed(cache.circuit)

    def pump(self) -> None:
        moved = True
        while moved:
            moved = self._serve_dirports()
            for caches in list(self.circuits.values()):
                for cache in list(caches):
                    moved = cache.pump() or moved

    def _serve_dirports(self) -> bool:
        moved = False
        while self._connections_served < len(self.reactor.tcpClients):
            _, port, factory, _, _ = self.reactor.tcpClients[self._connections_served]
            connector = self.reactor.connectors[self._connections_served]
            self._connections_served += 1
            moved = True
            if connector._disconnected:       # the client gave up before we got to it
                continue
            site = self.dirports.get(port)
            if site is None or not site.reachable:
                factory.clientConnectionFailed(connector, Failure(twisted_error.ConnectionRefusedError()))
                continue
            protocol = factory.buildProtocol(None)
            transport = StringTransport()
            protocol.makeConnection(transport)
            path, since = parse_request(transport.value())
            self.dirport_requests.append((port, path))
            answer = site.answer(path, since)
            for start in range(0, len(answer), DIRPORT_WRITE_SIZE):
                if transport.disconnecting:
                    break
                protocol.dataReceived(answer[start:start + DIRPORT_WRITE_SIZE])
            reason = twisted_error.ConnectionAborted() if transport.disconnecting else \
                twisted_error.ConnectionDone()
            protocol.connectionLost(Failure(reason))
        return moved
