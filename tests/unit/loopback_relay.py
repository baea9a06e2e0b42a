"""A relay over loopback TCP for in-process tests of oppy's Twisted link adapter.

The standard library's TLS on memory BIOs and relaysim's cells (written from the spec, sharing no code with
oppy): the responder's link handshake, CREATE2, EXTEND2 (when its path has more relays), BEGIN and DATA with
SENDMEs as the exit sends them. It records every cell it receives with the time it came, and stops reading
when told to (`hold`).
"""

from __future__ import annotations

import ssl
import struct
from dataclasses import dataclass, field

from twisted.internet import protocol, reactor

from tests.unit.certfactory import build_cert_set, cached_relay_keys
from tests.unit.relaysim import (
    CMD_CREATE2,
    CMD_CREATED2,
    CMD_RELAY,
    CMD_RELAY_EARLY,
    RELAY_CONNECTED,
    RELAY_DATA,
    RELAY_EXTEND2,
    RELAY_SENDME,
    SimulatedPath,
    SimulatedRelay,
    fixed_cell,
    parse_cells,
    relay_handshake_cells,
    sendme_v1_body,
)

CELL_LEN = 514  # a fixed-length cell with a 4-byte circuit id
RELAY_BEGIN = 1  # tor-spec "Relay cells"


class LoopbackRelay(protocol.Protocol):
    """The relay end of one link, for one circuit through `relays` (the first is this relay)."""

    def __init__(self, relays: list[SimulatedRelay], context: ssl.SSLContext, certs_body: bytes) -> None:
        self.path = SimulatedPath(relays)
        self.certs_body = certs_body
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._tls_up = False
        self._plain = bytearray()
        #: TCP bytes both ways, TLS included: what the client's link must count as written and read.
        self.raw_read = self.raw_written = 0
        self._versions_seen = False
        self.data: dict[int, bytearray] = {}
        self._cells_since_sendme = 0
        # (reactor time, command) of every fixed-length cell received after the client's VERSIONS.
        self.received: list[tuple[float, int, bytes]] = []

    def commands(self) -> list[int]:
        return [command for _, command, _ in self.received]

    def hold(self) -> None:
        self.transport.pauseProducing()

    def release(self) -> None:
        self.transport.resumeProducing()

    def _send(self, data: bytes) -> None:
        if data:
            self._tls.write(data)
        if self._outgoing.pending:
            raw = self._outgoing.read()
            self.raw_written += len(raw)
            self.transport.write(raw)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.raw_read += len(data)
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
        now = reactor.seconds()
        self.received += [(now, command, payload) for _, command, payload in cells]
        self._send(b"".join(self._answer(circ_id, command, payload) for circ_id, command, payload in cells))

    def _answer(self, circ_id: int, command: int, payload: bytes) -> bytes:
        if command == CMD_CREATE2:
            return fixed_cell(circ_id, CMD_CREATED2, self.path.answer_create2(payload))
        if command not in (CMD_RELAY, CMD_RELAY_EARLY):
            return b""  # NETINFO, PADDING, PADDING_NEGOTIATE
        message = self.path.receive(payload)
        if message.command == RELAY_EXTEND2:
            return fixed_cell(circ_id, CMD_RELAY, self.path.answer_extend2(message))
        if message.command == RELAY_BEGIN:
            self.data[message.stream_id] = bytearray()
            return fixed_cell(circ_id, CMD_RELAY, self.path.send(message.hop, RELAY_CONNECTED, message.stream_id))
        if message.command != RELAY_DATA:
            return b""
        answer = b""
        received = self.data[message.stream_id]
        received += message.data
        if (len(received) // 498) % 50 == 0 and len(message.data) == 498:
            # tor-spec §7.4: a stream SENDME per 50 DATA cells (these streams send full cells).
            answer += fixed_cell(circ_id, CMD_RELAY, self.path.send(message.hop, RELAY_SENDME, message.stream_id))
        self._cells_since_sendme += 1
        if self._cells_since_sendme == 100:
            # tor-spec §7.3 / prop 289: a circuit SENDME per 100, echoing the digest after the 100th.
            self._cells_since_sendme = 0
            answer += fixed_cell(circ_id, CMD_RELAY,
                                 self.path.send(message.hop, RELAY_SENDME, 0, sendme_v1_body(message.tag)))
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


@dataclass
class ListeningRelay:
    """A LoopbackRelay listening on 127.0.0.1: `relays[0]` is it (its identity proved by real certificates),
    the others are the hops after it; `servers` holds one LoopbackRelay per accepted link."""

    port: object  # Twisted's IListeningPort
    relays: list[SimulatedRelay]
    servers: list[LoopbackRelay] = field(default_factory=list)

    @property
    def path(self):
        return [relay.target for relay in self.relays]


def listen(tmp_path, hops: int = 1) -> ListeningRelay:
    keys = cached_relay_keys(0)
    certs = build_cert_set(keys, reactor.seconds())
    first = SimulatedRelay("loopback", "127.0.0.1", 1)
    first.rsa_id, first.ed25519_id = keys.rsa_id, keys.ed25519_id  # the identity the CERTS cell proves
    relays = [first] + [SimulatedRelay(f"hop{index + 2}", f"10.0.0.{index + 2}") for index in range(hops - 1)]
    context = server_context(tmp_path, keys, certs)
    servers: list[LoopbackRelay] = []

    def accept():
        servers.append(LoopbackRelay(relays, context, certs.certs_cell()))
        return servers[-1]

    port = reactor.listenTCP(0, protocol.Factory.forProtocol(accept), interface="127.0.0.1")
    first.or_port = port.getHost().port
    return ListeningRelay(port, relays, servers)
