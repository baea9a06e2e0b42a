"""A directory cache in process, over loopback TCP and real TLS (tests.unit.loopback_relay's link).

`DirectoryCacheRelay` is a relay that is a directory cache and nothing else: after the responder's link
handshake (a CERTS cell from certfactory proving its identity), it creates one-hop circuits (CREATE_FAST, or
CREATE2 with its ntor key) and answers BEGIN_DIR streams with the raw HTTP bytes its `answer(path)` gives (or a
Deferred of them), so that a test can put a hostile or forging directory source on 127.0.0.1 that oppy reaches
exactly as it reaches a real one.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

from twisted.internet import defer, protocol

from oppy.netdoc.relay import RelayTarget
from tests.unit.certfactory import build_cert_set, cached_relay_keys
from tests.unit.loopback_relay import LoopbackRelay, server_context
from tests.unit.relaysim import (
    CMD_CREATE2,
    CMD_CREATE_FAST,
    CMD_CREATED2,
    CMD_CREATED_FAST,
    CMD_DESTROY,
    CMD_RELAY,
    RELAY_CONNECTED,
    RELAY_DATA,
    RELAY_DATA_LEN,
    RELAY_END,
    SimulatedPath,
    SimulatedRelay,
    fixed_cell,
)

#: tor-spec "Relay cells" and "Closing streams".
RELAY_BEGIN_DIR = 13
END_REASON_DONE = 6


class _DirectoryCacheLink(LoopbackRelay):
    """The relay end of one link to a DirectoryCacheRelay: one-hop circuits and BEGIN_DIR streams."""

    def __init__(self, relay: "DirectoryCacheRelay") -> None:
        super().__init__([relay.simulated], relay.context, relay.certs.certs_cell())
        self.relay = relay
        self.paths: dict[int, SimulatedPath] = {}
        self.requests: dict[tuple[int, int], bytearray] = {}

    def _answer(self, circ_id: int, command: int, payload: bytes) -> bytes:
        if command in (CMD_CREATE_FAST, CMD_CREATE2):
            path = self.paths[circ_id] = SimulatedPath([self.relay.simulated])
            self.relay.creates.append(command)
            if command == CMD_CREATE_FAST:
                return fixed_cell(circ_id, CMD_CREATED_FAST, path.answer_create_fast(payload))
            return fixed_cell(circ_id, CMD_CREATED2, path.answer_create2(payload))
        if command == CMD_DESTROY:
            self.paths.pop(circ_id, None)
            return b""
        if command != CMD_RELAY or circ_id not in self.paths:
            return b""      # NETINFO, PADDING_NEGOTIATE
        path = self.paths[circ_id]
        message = path.receive(payload)
        key = (circ_id, message.stream_id)
        if message.command == RELAY_BEGIN_DIR:
            self.requests[key] = bytearray()
            return fixed_cell(circ_id, CMD_RELAY, path.send(0, RELAY_CONNECTED, message.stream_id))
        if message.command == RELAY_DATA and key in self.requests:
            request = self.requests[key]
            request += message.data
            if request.endswith(b"\r\n\r\n"):
                del self.requests[key]
                path_line = bytes(request).split(b"\r\n", 1)[0].decode("ascii")
                url = path_line.split(" ")[1]
                self.relay.requests.append(url)
                defer.maybeDeferred(self.relay.answer, url).addCallback(self._reply, circ_id, message.stream_id)
        return b""

    def _reply(self, answer: bytes, circ_id: int, stream_id: int) -> None:
        path = self.paths.get(circ_id)
        if path is None or self.transport is None:
            return
        cells = [fixed_cell(circ_id, CMD_RELAY, path.send(0, RELAY_DATA, stream_id, answer[at:at + RELAY_DATA_LEN]))
                 for at in range(0, len(answer), RELAY_DATA_LEN)]
        cells.append(fixed_cell(circ_id, CMD_RELAY, path.send(0, RELAY_END, stream_id, bytes([END_REASON_DONE]))))
        self._send(b"".join(cells))


class DirectoryCacheRelay:
    """A directory cache on 127.0.0.1 with a real identity (certfactory keys of `slot`) and ntor onion key.

    `answer(url)` gives the raw HTTP answer to a BEGIN_DIR request (or a Deferred of it); answers of up to
    500 cells are sent at once (the client's stream window), which every test answer fits. `requests` are the
    URLs asked for, `creates` the CREATE_FAST (5) or CREATE2 (10) of each circuit."""

    def __init__(self, answer: Callable[[str], bytes | defer.Deferred], *, slot: int = 0,
                 nickname: str = "dircache") -> None:
        self.answer = answer
        keys = cached_relay_keys(slot)
        self.certs = build_cert_set(keys, time.time())
        with tempfile.TemporaryDirectory() as folder:
            self.context = server_context(Path(folder), keys, self.certs)
        self.simulated = SimulatedRelay(nickname, "127.0.0.1", 0)
        self.simulated.rsa_id, self.simulated.ed25519_id = keys.rsa_id, keys.ed25519_id
        self.requests: list[str] = []
        self.creates: list[int] = []
        self.listening = None

    def listen(self, reactor) -> int:
        self.listening = reactor.listenTCP(0, protocol.Factory.forProtocol(lambda: _DirectoryCacheLink(self)),
                                           interface="127.0.0.1")
        self.simulated.or_port = self.listening.getHost().port
        return self.simulated.or_port

    @property
    def fingerprint(self) -> str:
        return self.simulated.fingerprint

    @property
    def target(self) -> RelayTarget:
        """The relay as a FallbackDir or DirAuthority line knows it: identity, address, ORPort, no keys."""
        return RelayTarget(self.simulated.nickname, self.simulated.rsa_id, "127.0.0.1", self.simulated.or_port)
