"""Directory caches in memory, reached through oppy's real DirectoryClient over real one-hop circuits.

A directory cache reached over BEGIN_DIR is the relay end of a real one-hop oppy ``Circuit``:
:class:`WireDirectory` stands in for the link pool, the circuit manager's CREATE_FAST or CREATE2 is
answered by relaysim, the client's relay cells are decrypted by the simulated relay, and the answer goes
back as DATA cells and an END. Sites answer with raw bytes, so a test can send whatever a hostile source
might. (There is no DirPort here: oppy never uses one.)
"""

from __future__ import annotations

import email.utils
from typing import Protocol

from twisted.internet import defer, error as twisted_error
from twisted.internet.testing import MemoryReactorClock

from oppy.circuit.circuit import Circuit
from oppy.link.connection import LinkConnected, LinkFailed, LinkLaunched, LinkOpened
from oppy.netdoc.relay import RelayTarget
from tests.unit.relaysim import (
    CMD_CREATE2,
    CMD_CREATE_FAST,
    CMD_CREATED2,
    CMD_CREATED_FAST,
    CMD_RELAY,
    RELAY_CONNECTED,
    RELAY_DATA,
    RELAY_DATA_LEN,
    RELAY_END,
    RecordingChannel,
    SimulatedPath,
    SimulatedRelay,
    build_circuit,
)

#: tor-spec "Relay cells": BEGIN_DIR opens a directory stream.
RELAY_BEGIN_DIR = 13
#: tor-spec "Closing streams": END reasons used here.
END_REASON_DONE = 6
END_REASON_NOTDIRECTORY = 14


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
    """The relay end of one BEGIN_DIR circuit: reads each stream's request and answers it. Without a circuit
    given, one is built to a simulated relay on a channel of its own."""

    def __init__(self, site: Site, circuit: Circuit | None = None, channel: RecordingChannel | None = None,
                 path: SimulatedPath | None = None) -> None:
        self.site = site
        if circuit is None:
            circuit, channel, path = build_circuit(Circuit, hops=1)
        self.circuit, self.channel, self.path = circuit, channel, path
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
    """BEGIN_DIR sites by relay nickname, served over real one-hop circuits.

    It is the link pool of a circuit manager (``get``, observers with the pool's typed events): a link to a
    relay is a recording channel, open at once, or refused when its site is unreachable. Hand this object's
    ``reactor`` to the DirectoryService and its DirectoryClient; then :meth:`pump` answers everything the
    service asked for, until it asks nothing more. ``relays`` holds the simulated relays by nickname (their
    identity and ntor onion key must be those the consensus lists, for a CREATE2); a relay not in it is made
    up on demand (CREATE_FAST needs no key).
    """

    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.caches: dict[str, Site] = {}
        self.relays: dict[str, SimulatedRelay] = {}
        self.channels: dict[str, RecordingChannel] = {}
        self.circuits: dict[str, list[OneHopCache]] = {}
        #: (nickname, CREATE_FAST or CREATE2) of each circuit the client created.
        self.creates: list[tuple[str, int]] = []
        self._by_circ_id: dict[tuple[str, int], OneHopCache] = {}
        self._observers: list = []

    def add_observer(self, observer) -> None:
        self._observers.append(observer)

    def remove_observer(self, observer) -> None:
        self._observers.remove(observer)

    def get(self, target: RelayTarget) -> defer.Deferred:
        for observer in self._observers:
            observer(LinkLaunched(target))
        site = self.caches.get(target.nickname)
        if site is None or not site.reachable:
            for observer in self._observers:
                observer(LinkFailed(target, "Connection refused"))
            return defer.fail(twisted_error.ConnectionRefusedError(f"{target.nickname} refuses connections"))
        for observer in self._observers:
            observer(LinkConnected(target))
            observer(LinkOpened(target))
        channel = self.channels.get(target.nickname)
        if channel is None:
            channel = self.channels[target.nickname] = RecordingChannel()
        return defer.succeed(channel)

    def _serve_channels(self) -> bool:
        moved = False
        for nickname, channel in list(self.channels.items()):
            for circ_id, command, payload in channel.take():
                moved = True
                if command in (CMD_CREATE_FAST, CMD_CREATE2):
                    self._create(nickname, channel, circ_id, command, payload)
                elif (nickname, circ_id) in self._by_circ_id:
                    self._by_circ_id[nickname, circ_id]._handle([(circ_id, command, payload)])
        return moved

    def _create(self, nickname: str, channel: RecordingChannel, circ_id: int, command: int, payload: bytes) -> None:
        relay = self.relays.get(nickname) or SimulatedRelay(nickname)
        path = SimulatedPath([relay])
        circuit = channel.circuits[circ_id]
        self.creates.append((nickname, command))
        cache = OneHopCache(self.caches[nickname], circuit, channel, path)
        self._by_circ_id[nickname, circ_id] = cache
        self.circuits.setdefault(nickname, []).append(cache)
        if command == CMD_CREATE_FAST:
            circuit.cell_received(CMD_CREATED_FAST, path.answer_create_fast(payload))
        else:
            circuit.cell_received(CMD_CREATED2, path.answer_create2(payload))

    def pump(self) -> None:
        while self._serve_channels():
            pass
