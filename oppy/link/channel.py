"""A channel: one TLS link to one relay, sans IO.

The initiator side of the link handshake (tor-spec "Negotiating and initializing channels"): send VERSIONS,
read the relay's VERSIONS, CERTS, AUTH_CHALLENGE and NETINFO, verify CERTS against the identity we dialled,
answer NETINFO. Afterwards the channel frames cells and routes them to circuits by circuit id. Bytes come in
through `receive_data`; bytes to send are collected and taken with `data_to_send` (the Twisted adapter in
`oppy.link.connection` does both, told by `ChannelOwner.channel_data_pending` when there is something to take).

Padding (`oppy.link.padding`): right after our NETINFO the channel sends the PADDING_NEGOTIATE its policy asks
for, and it marks how far it is used (a RELAY_EARLY out: a full circuit; then a RELAY in: user traffic); its
adapter decides when to send PADDING cells.

Backpressure: when the queue of cells not yet taken grows past QUEUE_HIGH_WATERMARK (the connection stops
taking while its transport's write buffer is full), the channel is paused: its circuits stop packaging stream
data. Once the queue has been taken (the low watermark: empty), the circuits are told to resume.
"""

from __future__ import annotations

import enum
import os
import time
from typing import Callable, NamedTuple, Protocol

from oppy.cell.commands import CellCommand, DestroyReason
from oppy.cell.errors import CellParseError
from oppy.cell.framing import encode_cell, encode_fixed_cells, encode_versions_cell, CellReader
from oppy.cell.link import (
    decode_netinfo_body,
    decode_versions_body,
    encode_destroy_body,
    encode_netinfo_body,
)
from oppy.crypto.certs import VerifiedRelayIdentity, verify_relay_certs
from oppy.crypto.errors import CertificateError
from oppy.link.padding import ChannelPadding, ChannelUsage, PaddingPolicy

# tor-spec "Negotiating versions with VERSIONS cells": we offer 3, 4 and 5 (0.4.9 answers nothing to a
# VERSIONS cell offering only newer ones, and closes on 2 alone) and insist on 4 or 5: 4-byte circuit ids,
# and the consensus requires clients to speak Link=4 (tor-client-checklist.md section 0).
OFFERED_LINK_VERSIONS = (3, 4, 5)
MIN_ACCEPTED_LINK_VERSION = 4
# tor-spec "Choosing circuit IDs": on link versions >= 4 the initiator sets the most significant bit.
CIRC_ID_INITIATOR_BIT = 0x80000000
CIRC_ID_RANDOM_MASK = 0x7FFFFFFF
MAX_CIRC_ID_ATTEMPTS = 64
# oppy's own limit: bytes of cells queued toward the relay (not yet taken by the connection) above which the
# circuits on the channel stop packaging stream data, about 500 cells.
QUEUE_HIGH_WATERMARK = 256 * 1024

_RELAY = int(CellCommand.RELAY)
_RELAY_EARLY = int(CellCommand.RELAY_EARLY)
_USED_FOR_FULL_CIRCS = ChannelUsage.USED_FOR_FULL_CIRCS
_IGNORED_COMMANDS = frozenset((CellCommand.PADDING, CellCommand.VPADDING, CellCommand.VERSIONS,
                               CellCommand.AUTH_CHALLENGE, CellCommand.CERTS, CellCommand.AUTHORIZE))
_CIRCUIT_COMMANDS = frozenset((CellCommand.RELAY, CellCommand.RELAY_EARLY, CellCommand.DESTROY,
                               CellCommand.CREATED2, CellCommand.CREATED_FAST, CellCommand.CREATED))


class LinkError(Exception):
    """The link failed: a handshake problem, a protocol violation, or a relay that is not who we dialled."""


class LinkAuthenticationError(LinkError):
    """The relay did not prove the identity we dialled (control-spec ORCONN reason IDENTITY)."""


class ChannelState(enum.Enum):
    HANDSHAKING = "handshaking"
    OPEN = "open"
    CLOSED = "closed"


class LinkOpened(NamedTuple):
    """The handshake finished: the relay proved `identity`; `link_version` was negotiated."""

    identity: VerifiedRelayIdentity
    link_version: int
    relay_time: int


class CircuitEndpoint(Protocol):
    """What a channel needs from a circuit it carries."""

    def cell_received(self, command: int, payload: bytes) -> None:
        """A circuit cell other than RELAY (CREATED2, DESTROY, RELAY_EARLY, ...)."""

    def relay_cells_received(self, payloads: bytes) -> None:
        """RELAY cells in a row from one read, their 509-byte payloads back to back (one cell: a run of one)."""

    def channel_resumed(self) -> None:
        """The channel takes stream data again (`Channel.paused` is False once more)."""

    def channel_closed(self, reason: str) -> None: ...


class ChannelOwner(Protocol):
    """What carries a channel's bytes (`oppy.link.connection.RelayConnection`)."""

    def channel_data_pending(self) -> None:
        """Bytes became pending in `data_to_send` after the queue was empty: take them soon."""

    def channel_data_urgent(self) -> None:
        """The bytes just queued are timed by the relay (circuit SENDMEs) or waited for (a new stream's first
        cells): take them at once."""


class Channel:
    """The sans-IO state of one link to one relay."""

    def __init__(self, expected_rsa_id: bytes, expected_ed25519_id: bytes | None, peer_address: str,
                 clock: Callable[[], float] = time.time, owner: ChannelOwner | None = None,
                 high_watermark: int = QUEUE_HIGH_WATERMARK, padding_policy: PaddingPolicy | None = None) -> None:
        """Without an `owner` nobody is told of pending bytes: the caller takes `data_to_send` itself.
        Without a `padding_policy`, tor's defaults (ConnectionPadding auto). An empty `expected_rsa_id` takes
        any identity the CERTS cell proves (a bridge whose Bridge line gives no fingerprint)."""
        self.expected_rsa_id = expected_rsa_id
        self.expected_ed25519_id = expected_ed25519_id
        self.peer_address = peer_address
        self.clock = clock
        self.state = ChannelState.HANDSHAKING
        self.link_version = 0
        self.identity: VerifiedRelayIdentity | None = None
        self.peer_certificate_der: bytes | None = None
        self.circuits: dict[int, CircuitEndpoint] = {}
        # Circuit ids handed out so far: a circuit that came and went between two looks still counts as use.
        self.circuits_allocated = 0
        self.padding = ChannelPadding(padding_policy if padding_policy is not None else PaddingPolicy())
        self._reader = CellReader()
        self._certs_body: bytes | None = None
        self._outgoing: list[bytes] = [encode_versions_cell(OFFERED_LINK_VERSIONS)]
        self._queued = len(self._outgoing[0])
        self.owner = owner
        self.high_watermark = high_watermark
        # True while the queue is above the high watermark: circuits package no stream data.
        self.paused = False

    # -------------------------------------------------------------------------------- bytes in and out

    @property
    def is_open(self) -> bool:
        """The handshake is done and the link is not closed: cells sent now go out."""
        return self.state is ChannelState.OPEN

    @property
    def queued(self) -> int:
        """Bytes of cells waiting to be taken with `data_to_send`."""
        return self._queued

    def data_to_send(self) -> bytes:
        """Take every queued byte; a paused channel resumes its circuits (they may queue more at once)."""
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        self._queued = 0
        if self.paused:
            self.paused = False
            for circuit in list(self.circuits.values()):
                circuit.channel_resumed()
        return data

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[LinkOpened]:
        """Feed bytes from the relay. Returns the handshake's completion event when it happens.

        Raises LinkError when the relay breaks the protocol or is not the relay we dialled; the caller
        then closes the connection (and `close` tells the circuits). `data` is not kept.
        """
        if self.state is ChannelState.CLOSED:
            return []
        try:
            if self.state is ChannelState.OPEN:
                self._route_runs(self._reader.feed_runs(data, _RELAY))
                return []
            cells = self._reader.feed(data)
        except CellParseError as exc:
            raise LinkError(f"malformed cell from {self.peer_address}: {exc}") from None
        return self._handshake(cells)

    def _route_runs(self, entries) -> None:
        """The hot path: hand each circuit cell to its circuit, in order.

        A run of RELAY cells for one circuit (as `CellReader.feed_runs` gathers them) goes to it at once,
        `relay_cells_received(payloads)`, so that it can decrypt them in one pass per layer.
        """
        circuits = self.circuits
        if self.padding.usage is _USED_FOR_FULL_CIRCS and any(entry[1] == _RELAY for entry in entries):
            self.padding.note_relay_received()
        for circ_id, command, payload, count in entries:
            circuit = circuits.get(circ_id)
            if circuit is None:
                if command == CellCommand.PADDING_NEGOTIATE:
                    raise LinkError(f"{self.peer_address} sent PADDING_NEGOTIATE, which only clients send")
                continue  # padding, late cells for circuits already gone, cells we never asked for
            if command == _RELAY:
                circuit.relay_cells_received(payload)
            elif command in _CIRCUIT_COMMANDS:
                if command == CellCommand.DESTROY:
                    del circuits[circ_id]
                circuit.cell_received(command, payload)
            elif command == CellCommand.PADDING_NEGOTIATE:
                raise LinkError(f"{self.peer_address} sent PADDING_NEGOTIATE, which only clients send")

    # -------------------------------------------------------------------------------- handshake

    def _handshake(self, cells) -> list[LinkOpened]:
        events = []
        queue = list(cells)
        while queue:
            circ_id, command, payload = queue.pop(0)
            if self.state is ChannelState.OPEN:
                self._route_runs([(circ_id, command, payload, 1)] + [cell + (1,) for cell in queue])
                break
            if self.link_version == 0:
                if command != CellCommand.VERSIONS:
                    raise LinkError(f"{self.peer_address} sent command {command} before VERSIONS")
                queue.extend(self._negotiate_version(payload))
            elif command == CellCommand.CERTS:
                if self._certs_body is not None:
                    raise LinkError(f"{self.peer_address} sent a second CERTS cell")
                self._certs_body = payload
            elif command == CellCommand.NETINFO:
                events.append(self._finish(payload))
            elif command in _IGNORED_COMMANDS:
                continue
            else:
                raise LinkError(f"{self.peer_address} sent {_command_name(command)} during the link handshake")
        return events

    def _negotiate_version(self, payload: bytes):
        try:
            offered = decode_versions_body(payload)
        except CellParseError as exc:
            raise LinkError(f"malformed VERSIONS from {self.peer_address}: {exc}") from None
        common = set(offered) & set(OFFERED_LINK_VERSIONS)
        if not common or max(common) < MIN_ACCEPTED_LINK_VERSION:
            raise LinkError(f"{self.peer_address} offers link versions {sorted(offered)}; we need one of "
                            f"{[v for v in OFFERED_LINK_VERSIONS if v >= MIN_ACCEPTED_LINK_VERSION]}")
        self.link_version = max(common)
        return self._reader.set_link_version(self.link_version)

    def _finish(self, netinfo_payload: bytes) -> LinkOpened:
        if self._certs_body is None:
            raise LinkError(f"{self.peer_address} sent NETINFO without CERTS")
        if self.peer_certificate_der is None:
            raise LinkError("no TLS peer certificate to check the CERTS cell against")
        try:
            identity = verify_relay_certs(self._certs_body, self.peer_certificate_der, self.expected_rsa_id or None,
                                          self.expected_ed25519_id, self.clock())
        except CertificateError as exc:
            raise LinkAuthenticationError(f"relay at {self.peer_address} failed authentication: {exc}") from None
        try:
            netinfo = decode_netinfo_body(netinfo_payload)
        except CellParseError as exc:
            raise LinkError(f"malformed NETINFO from {self.peer_address}: {exc}") from None
        self.identity = identity
        self._certs_body = None
        host = self.peer_address.rsplit(":", 1)[0].strip("[]")
        self._queue(encode_cell(0, CellCommand.NETINFO, encode_netinfo_body(host), self.link_version))
        negotiation = self.padding.link_opened(self.link_version)
        if negotiation is not None:
            self._queue(encode_cell(0, CellCommand.PADDING_NEGOTIATE, negotiation, self.link_version))
        self.state = ChannelState.OPEN
        return LinkOpened(identity, self.link_version, netinfo.timestamp)

    # -------------------------------------------------------------------------------- circuits

    def _queue(self, data: bytes) -> None:
        outgoing = self._outgoing
        outgoing.append(data)
        self._queued += len(data)
        if self._queued > self.high_watermark:
            self.paused = True
        if len(outgoing) == 1 and self.owner is not None:
            self.owner.channel_data_pending()

    def send_cell(self, circ_id: int, command: int, payload: bytes) -> None:
        if self.state is not ChannelState.OPEN:
            raise LinkError(f"the link to {self.peer_address} is {self.state.value}")
        self._queue(encode_cell(circ_id, command, payload, self.link_version))

    def send_cells(self, circ_id: int, command: int, payloads: bytes, urgent: bool = False) -> None:
        """Several fixed-length cells with one circuit id and command: `payloads` is 509 bytes per cell.
        `urgent` cells (circuit SENDMEs, a stream's opening cell and first DATA) are taken by the owner at once
        (`ChannelOwner.channel_data_urgent`)."""
        if self.state is not ChannelState.OPEN:
            raise LinkError(f"the link to {self.peer_address} is {self.state.value}")
        if command == _RELAY_EARLY:
            self.padding.note_relay_early_sent()
        framed = encode_fixed_cells(circ_id, command, payloads, self.link_version)
        self._queue(framed)
        if urgent and self.owner is not None:
            self.owner.channel_data_urgent()

    def send_padding(self) -> None:
        """One PADDING cell (tor-spec "Link padding": circuit id 0, zero payload), which the relay drops."""
        if self.state is not ChannelState.OPEN:
            raise LinkError(f"the link to {self.peer_address} is {self.state.value}")
        self._queue(encode_cell(0, CellCommand.PADDING, b"", self.link_version))
        self.padding.padding_cells_sent += 1

    def allocate_circuit_id(self, circuit: CircuitEndpoint) -> int:
        """A fresh random circuit id with the initiator bit set, registered for `circuit`."""
        for _ in range(MAX_CIRC_ID_ATTEMPTS):
            circ_id = CIRC_ID_INITIATOR_BIT | (int.from_bytes(os.urandom(4), "big") & CIRC_ID_RANDOM_MASK)
            if circ_id != CIRC_ID_INITIATOR_BIT and circ_id not in self.circuits:
                self.circuits[circ_id] = circuit
                self.circuits_allocated += 1
                return circ_id
        raise LinkError("no free circuit id")

    def destroy_circuit(self, circ_id: int, reason: int = DestroyReason.NONE) -> None:
        """Forget a circuit and tell the relay (a client sends reason NONE, tor-spec "Tearing down")."""
        if self.circuits.pop(circ_id, None) is not None and self.state is ChannelState.OPEN:
            self._queue(encode_cell(circ_id, CellCommand.DESTROY, encode_destroy_body(reason), self.link_version))

    def close(self, reason: str) -> None:
        """The link is gone: every circuit on it is told once."""
        if self.state is ChannelState.CLOSED:
            return
        self.state = ChannelState.CLOSED
        circuits, self.circuits = self.circuits, {}
        for circuit in circuits.values():
            circuit.channel_closed(reason)


def _command_name(command: int) -> str:
    try:
        return CellCommand(command).name
    except ValueError:
        return f"command {command}"
