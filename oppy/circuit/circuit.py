"""A client circuit, sans IO: its hops, relay crypto, circuit-level windows and streams.

Building (tor-spec "Creating circuits"): CREATE2 with ntor to the first hop (CREATE_FAST when its onion key is
unknown: a directory source before any microdescriptor), then EXTEND2 inside RELAY_EARLY to the last hop for each
further one. Once open, the circuit encrypts relay cells to a hop, recognizes
inbound ones, keeps the circuit package/deliver windows with authenticated SENDMEs (tor-spec "Flow control",
prop 289) and dispatches stream cells to the streams it carries. Cells go out through the channel it rides;
outcomes go up to the `CircuitOwner` it was made with and to the stream objects.

Congestion control (prop 324; tor-spec "Congestion control"): given the consensus's `CongestionParams`, the
last hop of a multi-hop circuit is extended with ntor v3 carrying the congestion-control request when the relay
offers it (FlowCtrl=2 with Relay=4), as C tor's circuit_pick_create_handshake does for exits. If the exit
answers with its `sendme_inc`, a `VegasController` replaces the circuit package window (cells may be sent while
inflight < cwnd), SENDMEs are owed and expected every `sendme_inc` DATA cells, and streams keep no windows.
Otherwise the fixed windows stay.
"""

from __future__ import annotations

import collections
import enum
import hmac
import struct
import time
from typing import TYPE_CHECKING, Callable, NamedTuple, Protocol

from oppy.cell.commands import (
    CELL_PAYLOAD_LEN,
    RELAY_HEADER_LEN,
    RELAY_PAYLOAD_LEN,
    CellCommand,
    DestroyReason,
    EndReason,
    RelayCommand,
    reason_name,
)
from oppy.cell.errors import CellParseError
from oppy.cell.flow_control import SendmeWindow
from oppy.cell.link import (
    HandshakeType,
    decode_created2_body,
    decode_destroy_body,
    encode_create2_body,
    encode_create_fast_body,
)
from oppy.cell.relay import (
    decode_extended2_body,
    decode_sendme_body,
    decode_truncated_body,
    encode_end_body,
    encode_extend2_body,
    encode_relay_payload,
    encode_sendme_body,
    link_specifiers_for_relay,
    SendmeVersion,
)
from oppy.circuit.conflux import MULTIPLEXED_COMMANDS
from oppy.circuit.congestion import CongestionParams, VegasController
from oppy.crypto.errors import HandshakeError
from oppy.crypto.ntor import CreateFastHandshake, NtorClientHandshake
from oppy.crypto.ntor_v3 import NtorV3ClientHandshake, congestion_control_request, parse_congestion_control_response
from oppy.crypto.relay_crypto import Tor1ClientCrypto, Tor1Hop
from oppy.netdoc.relay import RelayTarget

if TYPE_CHECKING:
    from oppy.circuit.padding import CircuitPadding

# tor-spec "Handling RELAY_EARLY cells": a relay closes a circuit on the 9th outbound RELAY_EARLY.
MAX_RELAY_EARLY_CELLS = 8
# tor-spec "Opening streams": stream ids are 16-bit and non-zero.
MAX_STREAM_ID = 0xFFFF
# oppy's cap on the streams one circuit carries at once. tor's exits (0.4.9, tor(1) DoSStreamCreationBurst:
# 300 when the consensus sets none) take a burst of 300 new streams on a circuit and refuse the ones beyond
# (DoSStreamCreationDefenseType 2); the manager puts a stream beyond the cap on another circuit instead.
MAX_STREAMS_PER_CIRCUIT = 300

_RELAY_HEADER = struct.Struct(">BHHIH")
_DATA = int(RelayCommand.DATA)
_SENDME = int(RelayCommand.SENDME)
_RELAY = int(CellCommand.RELAY)
_RELAY_EARLY = int(CellCommand.RELAY_EARLY)
_DROP = int(RelayCommand.DROP)
_USEC_PER_SECOND = 1_000_000
# A stream's opening cell: one cell its application waits on (SOCKS connect), written to the link at once.
_OPENING_COMMANDS = frozenset({int(RelayCommand.BEGIN), int(RelayCommand.BEGIN_DIR), int(RelayCommand.RESOLVE)})


class CircuitTraffic(NamedTuple):
    """A circuit's relay traffic since it was made, in the units of control-spec "CIRC_BW": READ and WRITTEN
    count 509 bytes per relay cell; DELIVERED counts the relay bodies, OVERHEAD the rest of each 498-byte
    body space (tor's circuit_read_valid_data / circuit_sent_valid_data)."""

    read: int
    written: int
    delivered_read: int
    overhead_read: int
    delivered_written: int
    overhead_written: int


class CircuitState(enum.Enum):
    BUILDING = "building"
    OPEN = "open"
    CLOSED = "closed"


# rend-spec-v3 3.2.2, 4.1, 4.2: the messages an onion-service client's circuits receive from their last hop.
ONION_SERVICE_CLIENT_MESSAGES = frozenset((RelayCommand.RENDEZVOUS_ESTABLISHED, RelayCommand.INTRODUCE_ACK,
                                           RelayCommand.RENDEZVOUS2))


class CircuitError(Exception):
    """A circuit failed or was closed; the message says which hop and why."""

    def __init__(self, message: str, reason: int = DestroyReason.NONE, remote: bool = False,
                 hop: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.remote = remote
        self.hop = hop


class Channel(Protocol):
    """What a circuit needs from the link it rides (`oppy.link.channel.Channel`)."""

    peer_address: str
    # True while the link's queue toward the relay is too long: no stream data is packaged meanwhile.
    paused: bool

    def allocate_circuit_id(self, circuit) -> int: ...

    def send_cell(self, circ_id: int, command: int, payload: bytes) -> None:
        """One cell that is not a relay cell (CREATE2)."""

    def send_cells(self, circ_id: int, command: int, payloads: bytes, urgent: bool = False) -> None:
        """RELAY or RELAY_EARLY cells, their encrypted 509-byte payloads back to back (one cell: a run of one);
        `urgent` ones (circuit SENDMEs) go to the socket at once."""

    def destroy_circuit(self, circ_id: int, reason: int = DestroyReason.NONE) -> None: ...


class CircuitOwner(Protocol):
    """Who a circuit reports to (`oppy.circuit.build` while it is built, then the circuit manager). Each
    method may act on the circuit at once (close it, attach streams)."""

    def circuit_extended(self, circuit: "Circuit") -> None:
        """A hop was added and the circuit extends to the next one."""

    def circuit_built(self, circuit: "Circuit") -> None:
        """Every hop is built: the circuit is open."""

    def circuit_closed(self, circuit: "Circuit", error: CircuitError) -> None:
        """The circuit is closed (once), for the reason `error` gives; its streams have been told."""

    def onion_service_message(self, circuit: "Circuit", command: int, data: bytes) -> None:
        """RENDEZVOUS_ESTABLISHED, INTRODUCE_ACK or RENDEZVOUS2 arrived from the circuit's last hop
        (rend-spec-v3 3.2.2, 4.1, 4.2): for the onion-service client that launched it."""


class StreamEndpoint(Protocol):
    """What a circuit needs from a stream it carries (`oppy.stream.stream.Stream`)."""

    stream_id: int

    def relay_received(self, command: int, data: bytes) -> None:
        """A relay cell for the stream other than DATA."""

    def data_cells_received(self, chunks: list[memoryview]) -> None:
        """The data of DATA cells in a row from one read (one cell: a list of one)."""

    def circuit_closed(self, error: CircuitError) -> None: ...

    def circuit_window_opened(self) -> None:
        """The circuit can package DATA again (a SENDME opened its window, or its channel resumed)."""


class ConfluxLegOwner(Protocol):
    """Who a conflux leg hands its set's cells to (`oppy.circuit.linked.ConfluxTunnel`), in the order they
    arrived on the leg."""

    def leg_linked(self, circuit: "Circuit", data: bytes) -> None:
        """RELAY_CONFLUX_LINKED from the exit."""

    def leg_switch(self, circuit: "Circuit", data: bytes) -> None:
        """RELAY_CONFLUX_SWITCH from the exit."""

    def leg_cells(self, circuit: "Circuit", entries: list[tuple], count: int) -> None:
        """`count` multiplexed relay cells from the exit, in a row, as entries (command, stream id, data):
        DATA cells in a row for one stream as one entry whose data is a list of each cell's data (views of the
        decrypted read, valid during the call), any other command one entry per cell (its data as bytes)."""

    def leg_window_opened(self, circuit: "Circuit") -> None:
        """The leg may send DATA again (a SENDME opened its cwnd, or its channel resumed)."""


class StreamTable:
    """The streams a circuit (or a conflux set) carries, by stream id."""

    def __init__(self) -> None:
        self.streams: dict[int, StreamEndpoint] = {}
        self._next_stream_id = 1

    @property
    def has_stream_room(self) -> bool:
        """Fewer than MAX_STREAMS_PER_CIRCUIT streams: one more may be attached."""
        return len(self.streams) < MAX_STREAMS_PER_CIRCUIT

    def allocate_stream_id(self) -> int:
        for _ in range(MAX_STREAM_ID):
            stream_id = self._next_stream_id
            self._next_stream_id = stream_id % MAX_STREAM_ID + 1
            if stream_id not in self.streams:
                return stream_id
        raise CircuitError("no free stream id on this circuit")

    def attach_stream(self, stream: StreamEndpoint) -> None:
        self.streams[stream.stream_id] = stream

    def detach_stream(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)


class Circuit(StreamTable):
    """One client circuit through `path` (guard first), riding `channel` (a link to the guard).

    `congestion` is the consensus's congestion-control parameters; None (directory and other one-hop uses)
    never asks for congestion control."""

    def __init__(self, channel: Channel, path: list[RelayTarget], owner: CircuitOwner,
                 clock: Callable[[], float] = time.monotonic, congestion: CongestionParams | None = None):
        if not path:
            raise ValueError("a circuit needs at least one hop")
        self.channel = channel
        self.owner = owner
        self.path = list(path)
        self.clock = clock
        self.state = CircuitState.BUILDING
        self.circ_id = channel.allocate_circuit_id(self)
        self.crypto = Tor1ClientCrypto()
        self.created_at = clock()
        self.built_at: float | None = None
        self.error: CircuitError | None = None
        self.window = SendmeWindow.for_circuit()
        self.congestion_params = congestion
        # The exit hop's controller once it accepted congestion control (`congestion_control`).
        self._congestion: VegasController | None = None
        # Tags (20-byte running digests) of our every 100th DATA cell (every sendme_inc-th with congestion
        # control), which the exit's SENDMEs must echo.
        self._expected_sendme_tags: collections.deque[bytes] = collections.deque()
        self._data_cells_sent = 0
        self._relay_early_left = MAX_RELAY_EARLY_CELLS
        self._handshake: NtorClientHandshake | NtorV3ClientHandshake | CreateFastHandshake | None = None
        StreamTable.__init__(self)
        # The conflux set this circuit is a leg of (`start_conflux_leg`): its multiplexed cells go there.
        self._conflux: ConfluxLegOwner | None = None
        self.bytes_read = 0
        self.bytes_written = 0
        # For `traffic`, counted per batch of cells (the DATA bytes are bytes_read and bytes_written).
        self._cells_read = 0
        self._cells_recognized = 0
        self._control_bytes_read = 0
        self._cells_written = 0
        self._control_bytes_written = 0
        # Circuit-setup padding (oppy.circuit.padding) on the onion-service circuits that negotiate it.
        self.padding: CircuitPadding | None = None
        # Hops other than the last that streams exit from (ATTACHSTREAM HOP=, `inner_hop`), by hop index;
        # None on every other circuit, whose received cells then take the fast path alone.
        self._inner_hops: dict[int, InnerHop] | None = None

    def __repr__(self) -> str:
        return f"<Circuit {self.circ_id:#010x} {self.state.value} {'>'.join(h.nickname for h in self.path)}>"

    @property
    def exit(self) -> RelayTarget:
        return self.path[-1]

    @property
    def is_open(self) -> bool:
        """Built, not closed, and its link is up. `Channel.close` tells its circuits one at a time, and what
        the first ones set off (a stream retried at once) must not choose one not yet told."""
        return self.state is CircuitState.OPEN and self.channel.is_open

    @property
    def traffic(self) -> CircuitTraffic:
        """What the circuit has read and written so far (the control port's CIRC_BW events)."""
        delivered_read = self.bytes_read + self._control_bytes_read
        delivered_written = self.bytes_written + self._control_bytes_written
        return CircuitTraffic(
            read=self._cells_read * CELL_PAYLOAD_LEN, written=self._cells_written * CELL_PAYLOAD_LEN,
            delivered_read=delivered_read,
            overhead_read=max(0, self._cells_recognized * RELAY_PAYLOAD_LEN - delivered_read),
            delivered_written=delivered_written,
            overhead_written=self._cells_written * RELAY_PAYLOAD_LEN - delivered_written)

    @property
    def hops_built(self) -> int:
        return len(self.crypto)

    @property
    def congestion_control(self) -> VegasController | None:
        """The congestion controller of the last hop, or None while the circuit runs the fixed windows."""
        return self._congestion

    def _hop_name(self, index: int) -> str:
        if index >= len(self.path):
            return f"hop {index + 1} (the onion service)"
        return f"hop {index + 1} ({self.path[index].describe()})"

    def start_padding(self, padding: "CircuitPadding") -> None:
        """From now on, tell `padding` the relay cells sent and the padding cells received."""
        self.padding = padding

    def add_virtual_hop(self, hop: Tor1Hop, congestion: VegasController | None = None) -> None:
        """Join the rendezvous point's circuit to the onion service's (rend-spec-v3 4.2.1): a layer past the
        last relay, to which streams and SENDMEs go from now on. `congestion` is the controller of that hop
        when INTRODUCE1 asked the service for congestion control (tor finalize_rend_circuit moves the
        circuit's ccontrol onto the new hop); None keeps the fixed windows."""
        if not self.is_open:
            raise CircuitError(f"circuit {self.circ_id:#x} is not open")
        self.crypto.add_hop(hop)
        if congestion is not None:
            self._start_congestion_control(congestion)

    # ------------------------------------------------------------------------------------ building

    def start(self) -> None:
        """Send CREATE2 (ntor) to the first hop, or CREATE_FAST when its ntor onion key is unknown.

        tor-spec "CREATE_FAST/CREATED_FAST cells": C tor uses CREATE_FAST only for a first hop it has no onion
        key for (a fallback directory or an authority at bootstrap). The link's CERTS cell has proved the
        relay's RSA identity already, and the TLS link carries the cells, so the hop needs no public-key
        handshake of its own."""
        first = self.path[0]
        if first.ntor_onion_key is None:
            self._handshake = CreateFastHandshake()
            self.channel.send_cell(self.circ_id, CellCommand.CREATE_FAST,
                                   encode_create_fast_body(self._handshake.onionskin))
            return
        htype = self._new_handshake(0)
        self.channel.send_cell(self.circ_id, CellCommand.CREATE2,
                               encode_create2_body(htype, self._handshake.onionskin))

    def _asks_congestion_control(self, index: int) -> bool:
        """Hop `index` is the exit of a multi-hop circuit that offers congestion control, and the consensus
        has it on (C tor: ntor v3 only to exits that support congestion control, only when it is enabled)."""
        params = self.congestion_params
        relay = self.path[index]
        return params is not None and params.enabled and index == len(self.path) - 1 and len(self.path) > 1 \
            and relay.congestion_control and relay.ed25519_id is not None

    def _new_handshake(self, index: int) -> HandshakeType:
        """Start the handshake with hop `index`: ntor v3 with the congestion-control request for an exit
        that offers it, ntor otherwise. Returns its HTYPE."""
        relay = self.path[index]
        if relay.ntor_onion_key is None:
            raise CircuitError(f"{relay.describe()} has no ntor onion key")
        if self._asks_congestion_control(index):
            self._handshake = NtorV3ClientHandshake(relay.ed25519_id, relay.ntor_onion_key,
                                                    congestion_control_request())
            return HandshakeType.NTOR_V3
        self._handshake = NtorClientHandshake(relay.rsa_id, relay.ntor_onion_key)
        return HandshakeType.NTOR

    def _hop_created(self, handshake_data: bytes) -> None:
        index = len(self.crypto)
        try:
            if isinstance(self._handshake, NtorV3ClientHandshake):
                keys, server_message = self._handshake.complete(handshake_data)
                sendme_inc = parse_congestion_control_response(server_message, self.congestion_params.sendme_inc)
                if sendme_inc is not None:
                    self._start_congestion_control(VegasController(self.congestion_params, sendme_inc))
            else:
                keys = self._handshake.complete(handshake_data)
        except HandshakeError as exc:
            self._fail(f"{self._hop_name(index)}: {exc}", DestroyReason.PROTOCOL, hop=index)
            return
        self._handshake = None
        self.crypto.add_hop(Tor1Hop.from_keys(keys))
        if len(self.crypto) == len(self.path):
            self.state = CircuitState.OPEN
            self.built_at = self.clock()
            self.owner.circuit_built(self)
        else:
            self.owner.circuit_extended(self)
            if self.state is CircuitState.BUILDING:  # the owner may have closed it
                self._extend(self.path[len(self.crypto)])

    def extend(self, relays: list[RelayTarget]) -> None:
        """EXTENDCIRCUIT on a built circuit (control-spec 3.10): `relays` are added after the last hop, one
        EXTEND2 after the other; the owner hears circuit_extended for each and circuit_built again at the end.
        Only a circuit that carries no stream grows: a stream speaks to the hop that was last when it began."""
        if not self.is_open:
            raise CircuitError(f"circuit {self.circ_id:#x} is not open")
        if self.streams:
            raise CircuitError(f"circuit {self.circ_id:#x} carries streams")
        if not relays:
            raise CircuitError("no relay to extend to")
        self.path.extend(relays)
        self.state = CircuitState.BUILDING
        self._extend(self.path[len(self.crypto)])

    def _start_congestion_control(self, congestion: VegasController) -> None:
        """The last hop runs congestion control: `congestion` (Vegas) decides what we send, and the circuit
        SENDMEs both ways come every `sendme_inc` DATA cells (tor-spec "Congestion control")."""
        self._congestion = congestion
        self.window = SendmeWindow(self.window.start, congestion.sendme_inc)

    def _extend(self, relay: RelayTarget) -> None:
        htype = self._new_handshake(len(self.crypto))
        specifiers = link_specifiers_for_relay(relay.rsa_id, ipv4=(relay.address, relay.or_port),
                                               ed25519_identity=relay.ed25519_id)
        body = encode_extend2_body(specifiers, htype, self._handshake.onionskin)
        self.send_relay(RelayCommand.EXTEND2, 0, body, early=True)

    # ------------------------------------------------------------------------------------ cells in

    def cell_received(self, command: int, payload: bytes) -> None:
        """A cell for this circuit from the channel (a RELAY cell is a run of one)."""
        if command == _RELAY:
            self.relay_cells_received(payload)
        elif command == CellCommand.DESTROY:
            try:
                reason = decode_destroy_body(payload)
            except CellParseError:
                reason = DestroyReason.NONE
            hop = len(self.crypto) if self.state is CircuitState.BUILDING else None
            where = f" while extending to {self._hop_name(hop)}" if hop is not None else ""
            self._closed(CircuitError(f"circuit destroyed by {self.path[0].describe()}{where}: "
                                      f"{reason_name(DestroyReason, reason)}", reason, remote=True, hop=hop))
        elif command == CellCommand.CREATED2 and self.state is CircuitState.BUILDING and not self.crypto \
                and isinstance(self._handshake, (NtorClientHandshake, NtorV3ClientHandshake)):
            try:
                handshake_data = decode_created2_body(payload)
            except CellParseError as exc:
                self._fail(f"{self._hop_name(0)}: malformed CREATED2: {exc}", DestroyReason.PROTOCOL, hop=0)
                return
            self._hop_created(handshake_data)
        elif command == CellCommand.CREATED_FAST and self.state is CircuitState.BUILDING and not self.crypto \
                and isinstance(self._handshake, CreateFastHandshake):
            self._hop_created(payload)
        elif command == _RELAY_EARLY:
            self._fail("relay sent an inbound RELAY_EARLY cell", DestroyReason.PROTOCOL)
        else:
            self._fail(f"unexpected cell command {command}", DestroyReason.PROTOCOL)

    def relay_cells_received(self, payloads: bytes) -> None:
        """RELAY cells for this circuit, in the order one read from the link brought them: their 509-byte
        payloads back to back.

        On an open circuit each crypto layer is removed from all of them in one pass
        (`Tor1ClientCrypto.decrypt_inbound_many`). While building, a hop is added between two cells
        (EXTENDED2), so each cell is a run of its own.
        """
        self._cells_read += len(payloads) // CELL_PAYLOAD_LEN
        if self.state is CircuitState.OPEN:
            self._relay_run_received(payloads)
            return
        for offset in range(0, len(payloads), CELL_PAYLOAD_LEN):
            if self.state is CircuitState.CLOSED:
                return
            self._relay_run_received(payloads[offset:offset + CELL_PAYLOAD_LEN])

    def _relay_run_received(self, payloads: bytes) -> None:
        """The per-cell path: decrypt a run, keep the deliver window, hand DATA to streams and the rest to
        `_relay_message_received`."""
        if self._conflux is not None:
            self._leg_run_received(payloads)
            return
        cells, error = self.crypto.decrypt_inbound_many(payloads)
        self._cells_recognized += len(cells)
        if self._inner_hops is not None:
            self._cells_received_by_hop(cells, error)
            return
        self._cells_received(cells, error)

    def _cells_received(self, cells: list[tuple], error: Exception | None) -> None:
        """Decrypted cells (hop, buffer, offset, tag) in order, the last hop's or no inner hop's streams'."""
        unpack = _RELAY_HEADER.unpack_from
        streams = self.streams
        window = self.window
        data_run = _data_run(cells, len(self.crypto) - 1)
        if data_run is not None:
            stream_id, lengths = data_run
            sendmes = []
            window.deliver = _count_data_run(window, window.deliver, cells, sendmes)
            self.bytes_read += len(cells) * RELAY_PAYLOAD_LEN if lengths is None else sum(lengths)
            if sendmes:
                self._send_sendmes(sendmes)
            stream = streams.get(stream_id)
            if stream is not None and self.state is not CircuitState.CLOSED:
                stream.data_cells_received(_data_run_views(cells, lengths))
            if error is not None and self.state is not CircuitState.CLOSED:
                self._fail(str(error), DestroyReason.PROTOCOL)
            return
        threshold = window.sendme_threshold
        # DATA cells in a row for one stream are handed over together (`Stream.data_cells_received`): one
        # delivery to the application per read instead of one per cell. The circuit's counters live in
        # locals inside the loop and are written back before anything else can look at them.
        run_stream = None
        run: list = []
        deliver = window.deliver
        bytes_read = self.bytes_read
        # Stream data is taken as views of the decrypted batch: the stream's one join is the only copy.
        viewed = view = None
        sendmes = None
        for hop, buffer, offset, tag in cells:
            command, _, stream_id, _, length = unpack(buffer, offset)
            if command == _DATA and length <= RELAY_PAYLOAD_LEN:
                bytes_read += length
                deliver -= 1
                if deliver <= threshold:
                    window.deliver, self.bytes_read = deliver, bytes_read
                    if deliver < 0:
                        if run:
                            run_stream.data_cells_received(run)
                        if self.state is not CircuitState.CLOSED:
                            self._fail(f"{self._hop_name(hop)} overran the circuit deliver window",
                                       DestroyReason.PROTOCOL)
                        return
                    # prop 289: the tag is the digest right after the DATA cell that triggers the SENDME. The
                    # SENDMEs of a run go out together (`_send_sendmes`: one encryption, one socket write)
                    # before any of its data is delivered to a stream: the exit's congestion control times
                    # them as round trips.
                    window.sendme_sent()
                    deliver = window.deliver
                    if sendmes is None:
                        sendmes = []
                    sendmes.append((hop, tag))
                if stream_id:
                    stream = streams.get(stream_id)
                    if stream is None:
                        continue  # a late arrival after our END: dropped
                    if stream is not run_stream:
                        if run:
                            window.deliver, self.bytes_read = deliver, bytes_read
                            if sendmes:
                                self._send_sendmes(sendmes)
                                sendmes = None
                            run_stream.data_cells_received(run)
                            run = []
                            if self.state is CircuitState.CLOSED:
                                return
                        run_stream = stream
                    if buffer is not viewed:
                        viewed, view = buffer, memoryview(buffer)
                    start = offset + RELAY_HEADER_LEN
                    run.append(view[start:start + length])
                    continue
            window.deliver, self.bytes_read = deliver, bytes_read
            if sendmes:
                self._send_sendmes(sendmes)
                sendmes = None
            if run:
                run_stream.data_cells_received(run)
                run = []
                run_stream = None
            if self.state is CircuitState.CLOSED:
                return
            self._relay_message_received(hop, command, stream_id, buffer, offset, length)
            if self.state is CircuitState.CLOSED:
                return
            deliver, bytes_read = window.deliver, self.bytes_read
        window.deliver, self.bytes_read = deliver, bytes_read
        if sendmes and self.state is not CircuitState.CLOSED:
            self._send_sendmes(sendmes)
        if run:
            run_stream.data_cells_received(run)
        if error is not None and self.state is not CircuitState.CLOSED:
            self._fail(str(error), DestroyReason.PROTOCOL)

    def _cells_received_by_hop(self, cells: list[tuple], error: Exception | None) -> None:
        """Decrypted cells on a circuit with streams at inner hops: those from an inner hop that streams exit
        from go to its `InnerHop`, the runs between them to `_cells_received`, in the order they came."""
        inner_hops = self._inner_hops
        run: list[tuple] = []
        for cell in cells:
            inner = inner_hops.get(cell[0])
            if inner is None:
                run.append(cell)
                continue
            if run:
                self._cells_received(run, None)
                run = []
            if self.state is CircuitState.CLOSED:
                return
            inner.cell_received(*cell)
            if self.state is CircuitState.CLOSED:
                return
        self._cells_received(run, error)

    def allocate_stream_id(self) -> int:
        """A stream id free on the circuit: on its last hop and on every inner hop streams exit from."""
        for _ in range(MAX_STREAM_ID):
            stream_id = StreamTable.allocate_stream_id(self)
            if self._inner_hops is None or all(stream_id not in inner.streams
                                               for inner in self._inner_hops.values()):
                return stream_id
        raise CircuitError("no free stream id on this circuit")

    def inner_hop(self, hop: int) -> InnerHop:
        """What a stream exiting from hop index `hop` (not the last) attaches to (ATTACHSTREAM HOP=,
        control-spec 3.5): one per hop for the circuit's life, as the hop keeps its circuit windows."""
        if not 0 <= hop < len(self.crypto) - 1:
            raise CircuitError(f"circuit {self.circ_id:#x} has no inner hop {hop + 1}")
        if self._inner_hops is None:
            self._inner_hops = {}
        inner = self._inner_hops.get(hop)
        if inner is None:
            inner = self._inner_hops[hop] = InnerHop(self, hop)
        return inner

    # ------------------------------------------------------------------------------------ conflux legs

    def start_conflux_leg(self, owner: ConfluxLegOwner, link_body: bytes) -> None:
        """Make this open circuit a conflux leg (prop 329): RELAY_CONFLUX_LINK to the exit; from now on its
        multiplexed cells, LINKED and SWITCH go to `owner`, and it carries no stream of its own."""
        if self.state is not CircuitState.OPEN or self._congestion is None or self.streams:
            raise CircuitError("only an open circuit with congestion control and no streams can be a conflux leg")
        self._conflux = owner
        self.send_relay(RelayCommand.CONFLUX_LINK, 0, link_body)

    def _leg_run_received(self, payloads: bytes) -> None:
        """A conflux leg's cells: the deliver window and SENDMEs stay per leg; the multiplexed cells go to the
        set in arrival order, a batch up to the next cell the leg handles itself (which may be a SWITCH). As
        in `_cells_received`, DATA cells in a row for one stream are one entry of views of the decrypted run:
        no copy of their data here (the set copies the cells that came early into its queue), and a read of
        DATA for one stream alone takes no Python step per cell (`_data_run`)."""
        owner = self._conflux
        cells, error = self.crypto.decrypt_inbound_many(payloads)
        self._cells_recognized += len(cells)
        unpack = _RELAY_HEADER.unpack_from
        window = self.window
        threshold = window.sendme_threshold
        exit_hop = len(self.crypto) - 1
        # Counters in locals, written back before anything else can look at them (as in `_cells_received`).
        deliver = window.deliver
        bytes_read = self.bytes_read
        entries: list[tuple] = []
        count = 0
        run: list = []
        run_stream_id = -1  # the stream of the DATA entry `run` belongs to; -1: none (ids are 16-bit)
        viewed = view = None
        sendmes = None
        failure = None
        data_run = _data_run(cells, exit_hop)
        if data_run is not None:
            stream_id, lengths = data_run
            count = len(cells)
            bytes_read += count * RELAY_PAYLOAD_LEN if lengths is None else sum(lengths)
            sendmes = []
            deliver = _count_data_run(window, deliver, cells, sendmes)
            entries.append((_DATA, stream_id, _data_run_views(cells, lengths)))
            cells = ()
        for hop, buffer, offset, tag in cells:
            command, _, stream_id, _, length = unpack(buffer, offset)
            if length > RELAY_PAYLOAD_LEN:
                failure = f"relay cell from {self._hop_name(hop)} claims {length} bytes of data"
                break
            if hop != exit_hop:
                # conflux_validate_source_hop: a leg's cells come from its exit, never from a middle.
                failure = f"{self._hop_name(hop)} sent a cell on a conflux leg"
                break
            start = offset + RELAY_HEADER_LEN
            if command == _DATA:
                bytes_read += length
                deliver -= 1
                if deliver <= threshold:
                    if deliver < 0:
                        failure = f"{self._hop_name(hop)} overran the circuit deliver window"
                        break
                    window.deliver = deliver
                    window.sendme_sent()
                    deliver = window.deliver
                    if sendmes is None:
                        sendmes = []
                    sendmes.append((hop, tag))
                if stream_id != run_stream_id:
                    run = []
                    entries.append((_DATA, stream_id, run))
                    run_stream_id = stream_id
                if buffer is not viewed:
                    viewed, view = buffer, memoryview(buffer)
                run.append(view[start:start + length])
                count += 1
                continue
            run_stream_id = -1
            data = bytes(buffer[start:start + length])
            if command in MULTIPLEXED_COMMANDS:
                entries.append((command, stream_id, data))
                count += 1
                continue
            window.deliver, self.bytes_read = deliver, bytes_read
            if sendmes:
                self._send_sendmes(sendmes)  # before the data goes on: the exit times them as round trips
                sendmes = None
            if entries:
                owner.leg_cells(self, entries, count)
                entries, count = [], 0
                if self.state is CircuitState.CLOSED:
                    return
            if command == RelayCommand.CONFLUX_LINKED:
                owner.leg_linked(self, data)
            elif command == RelayCommand.CONFLUX_SWITCH:
                owner.leg_switch(self, data)
            else:
                self._control_cell_received(hop, command, data)
            if self.state is CircuitState.CLOSED:
                return
            deliver, bytes_read = window.deliver, self.bytes_read
        window.deliver, self.bytes_read = deliver, bytes_read
        # The cells before a bad one count, as they would have one at a time.
        if sendmes:
            self._send_sendmes(sendmes)
        if entries:
            owner.leg_cells(self, entries, count)
        if self.state is CircuitState.CLOSED:
            return
        if failure is not None:
            self._fail(failure, DestroyReason.PROTOCOL)
        elif error is not None:
            self._fail(str(error), DestroyReason.PROTOCOL)

    def _send_sendmes(self, sendmes: list[tuple[int, bytes]]) -> None:
        """Circuit SENDMEs (v1, the tag of each trigger) to the hops that sent the data, in one encryption per
        hop."""
        hop = sendmes[0][0]
        if all(each_hop == hop for each_hop, _ in sendmes):
            bodies = [encode_sendme_body(tag) for _, tag in sendmes]
            self._control_bytes_written += sum(map(len, bodies))
            # Written at once: the exit's congestion control counts every moment the SENDME waits here as
            # queueing on the circuit and shrinks its window.
            self._send_payloads(_RELAY, [encode_relay_payload(_SENDME, 0, body) for body in bodies], hop,
                                urgent=True)
            return
        for each_hop, tag in sendmes:
            self.send_relay(RelayCommand.SENDME, 0, encode_sendme_body(tag), hop=each_hop)

    def _relay_data(self, hop: int, buffer: bytes, offset: int, length: int) -> bytes | None:
        """The data of the relay cell at buffer[offset:offset + 509]; None when it claims more than a cell
        holds, and the circuit is failed for it."""
        if length > RELAY_PAYLOAD_LEN:
            self._fail(f"relay cell from {self._hop_name(hop)} claims {length} bytes of data",
                       DestroyReason.PROTOCOL)
            return None
        start = offset + RELAY_HEADER_LEN
        return bytes(buffer[start:start + length])

    def _relay_message_received(self, hop: int, command: int, stream_id: int, buffer: bytes, offset: int,
                                length: int) -> None:
        """A recognized relay cell other than DATA for a stream, buffer[offset:offset + 509] (DATA cells have
        been counted against the deliver window already)."""
        data = self._relay_data(hop, buffer, offset, length)
        if data is None:
            return
        self._control_bytes_read += length
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream.relay_received(command, data)
            # Cells for streams already gone are late arrivals after our END: drop them.
        else:
            self._control_cell_received(hop, command, data)

    def _control_cell_received(self, hop: int, command: int, data: bytes) -> None:
        if command == RelayCommand.SENDME:
            self._sendme_received(hop, data)
        elif command == RelayCommand.EXTENDED2 and self.state is CircuitState.BUILDING:
            if hop != len(self.crypto) - 1:
                self._fail(f"EXTENDED2 from {self._hop_name(hop)}, not the last hop", DestroyReason.PROTOCOL)
                return
            try:
                handshake_data = decode_extended2_body(data)
            except CellParseError as exc:
                self._fail(f"{self._hop_name(hop + 1)}: malformed EXTENDED2: {exc}", DestroyReason.PROTOCOL,
                           hop=hop + 1)
                return
            self._hop_created(handshake_data)
        elif command == RelayCommand.TRUNCATED:
            try:
                reason = decode_truncated_body(data)
            except CellParseError:
                reason = DestroyReason.NONE
            failed = hop + 1
            target = self._hop_name(failed) if failed < len(self.path) else f"beyond hop {hop + 1}"
            self._fail(f"circuit truncated at {self._hop_name(hop)} ({target} failed: "
                       f"{reason_name(DestroyReason, reason)})", DestroyReason.NONE, hop=failed,
                       remote_reason=reason)
        elif command in ONION_SERVICE_CLIENT_MESSAGES and self.state is CircuitState.OPEN:
            if hop != len(self.crypto) - 1:
                self._fail(f"{RelayCommand(command).name} from {self._hop_name(hop)}, not the last hop",
                           DestroyReason.PROTOCOL)
                return
            self.owner.onion_service_message(self, command, data)
        elif command == RelayCommand.DROP:
            # Long-range padding (tor-spec "Relay cells"): taken and dropped; the padding machine counts it.
            if self.padding is not None:
                self.padding.drop_received(hop)
        elif command == RelayCommand.PADDING_NEGOTIATED:
            if self.padding is not None:
                self.padding.negotiated_received(hop, data)
        else:
            # Unknown or unexpected control commands are dropped; they still counted for the digest.
            pass

    def _sendme_received(self, hop: int, data: bytes) -> None:
        if not self._sendme_valid(hop, data, self._expected_sendme_tags):
            return
        congestion = self._congestion
        if congestion is not None:
            was_blocked = congestion.inflight >= congestion.cwnd
            congestion.sendme_received(int(self.clock() * _USEC_PER_SECOND), self.channel.paused)
            if was_blocked and congestion.inflight < congestion.cwnd:
                self._wake_streams()
            return
        was_blocked = self.window.package <= 0
        self.window.sendme_received()
        if was_blocked:
            self._wake_streams()

    def _sendme_valid(self, hop: int, data: bytes, expected_tags: collections.deque[bytes]) -> bool:
        """A circuit SENDME from `hop` that echoes the next of `expected_tags` (prop 289); otherwise the
        circuit is closed and False."""
        try:
            sendme = decode_sendme_body(data)
        except CellParseError as exc:
            self._fail(f"malformed SENDME from {self._hop_name(hop)}: {exc}", DestroyReason.PROTOCOL)
            return False
        if not expected_tags:
            self._fail(f"{self._hop_name(hop)} sent a circuit SENDME we were not owed", DestroyReason.PROTOCOL)
            return False
        if sendme.version not in (SendmeVersion.UNAUTHENTICATED, SendmeVersion.AUTHENTICATED) or \
                (sendme.version == SendmeVersion.AUTHENTICATED and sendme.tag is None):
            # prop 289: a SENDME of a version we do not know tears the circuit down.
            self._fail(f"{self._hop_name(hop)} sent a SENDME of unknown version {sendme.version}",
                       DestroyReason.PROTOCOL)
            return False
        expected = expected_tags.popleft()
        if sendme.tag is not None and not hmac.compare_digest(sendme.tag, expected):
            self._fail(f"{self._hop_name(hop)} sent a SENDME with a wrong authentication tag",
                       DestroyReason.PROTOCOL)
            return False
        return True

    def _wake_streams(self) -> None:
        if self._conflux is not None:
            self._conflux.leg_window_opened(self)
        for stream in list(self.streams.values()):
            stream.circuit_window_opened()
        if self._inner_hops is not None:
            for inner in list(self._inner_hops.values()):
                inner.wake_streams()

    # ------------------------------------------------------------------------------------ cells out

    def send_relay(self, command: int, stream_id: int, data: bytes, hop: int | None = None,
                   early: bool = False) -> None:
        """Encrypt a relay cell to `hop` (default: the last hop built) and send it (a stream's opening cell
        at once: see `Channel.send_cells`)."""
        if self.state is CircuitState.CLOSED:
            raise CircuitError(f"circuit {self.circ_id:#x} is closed")
        if hop is None:
            hop = len(self.crypto) - 1
        cell_command = _RELAY
        if early:
            if self._relay_early_left <= 0:
                raise CircuitError("no RELAY_EARLY cells left on this circuit")
            self._relay_early_left -= 1
            cell_command = _RELAY_EARLY
        self._control_bytes_written += len(data)
        self._send_payloads(cell_command, [encode_relay_payload(command, stream_id, data)], hop,
                            urgent=command in _OPENING_COMMANDS)
        if self.padding is not None and command != _DROP:
            self.padding.nonpadding_sent()

    def _send_payloads(self, cell_command: int, payloads: list[bytes], hop: int, urgent: bool = False) -> list[bytes]:
        """Encrypt relay payloads to `hop` and send them: the hop's running digest after each (SENDME tags).
        `urgent`: the link writes them at once (see `Channel.send_cells`)."""
        cells, tags = self.crypto.encrypt_outbound_many(payloads, hop)
        self._cells_written += len(payloads)
        self.channel.send_cells(self.circ_id, cell_command, cells, urgent)
        return tags

    @property
    def package_room(self) -> int:
        """How many DATA cells may be sent right now: the circuit package window, 0 unless the circuit is open
        and its channel takes stream data."""
        if self.state is not CircuitState.OPEN or self.channel.paused:
            return 0
        congestion = self._congestion
        if congestion is not None:
            return congestion.room
        return self.window.package

    def send_data_many(self, stream_id: int, chunks: list[bytes], urgent: bool = False) -> None:
        """DATA cells of one stream (each chunk at most 498 bytes), encrypted together, counted against the
        circuit package window (or, with congestion control, the congestion window). `urgent`: written to the
        link at once (a stream's first data, its request: see `Channel.send_cells`)."""
        if self.state is CircuitState.CLOSED:
            raise CircuitError(f"circuit {self.circ_id:#x} is closed")
        congestion = self._congestion
        count = len(chunks)
        if count > (self.window.package if congestion is None else congestion.room):
            raise CircuitError("circuit package window is too small for these cells")
        if not count:
            return
        payloads = [encode_relay_payload(_DATA, stream_id, chunk) for chunk in chunks]
        tags = self._send_payloads(_RELAY, payloads, len(self.crypto) - 1, urgent)
        self.bytes_written += sum(map(len, chunks))
        sent = self._data_cells_sent
        increment = self.window.increment
        # The exit's SENDME will echo the digest right after every increment-th DATA cell (prop 289): 100, or
        # sendme_inc with congestion control.
        triggers = tags[increment - 1 - sent % increment::increment]
        self._expected_sendme_tags.extend(triggers)
        self._data_cells_sent = sent + count
        if congestion is None:
            self.window.package -= count
        else:
            congestion.cells_sent(count, len(triggers), int(self.clock() * _USEC_PER_SECOND))
        if self.padding is not None:
            self.padding.nonpadding_sent(count)

    # ------------------------------------------------------------------------------------ streams

    def end_stream(self, stream_id: int, reason: int = EndReason.MISC) -> None:
        """Send RELAY_END for a stream and forget it."""
        self.streams.pop(stream_id, None)
        if self.state is CircuitState.OPEN:
            self.send_relay(RelayCommand.END, stream_id, encode_end_body(reason))

    # ------------------------------------------------------------------------------------ closing

    def _fail(self, message: str, reason: int, hop: int | None = None, remote_reason: int | None = None) -> None:
        error = CircuitError(message, reason if remote_reason is None else remote_reason,
                             remote=remote_reason is not None, hop=hop)
        self.channel.destroy_circuit(self.circ_id, DestroyReason.NONE)
        self._closed(error)

    def close(self, reason: int = DestroyReason.FINISHED, message: str = "closed", padding_may_hold: bool = True
              ) -> None:
        """Tear the circuit down ourselves: DESTROY to the guard (a client sends NONE). A padding machine that
        manages the circuit's lifetime may hold it open a while first (it closes it when done), unless
        `padding_may_hold` is False (the client shuts down)."""
        if self.state is CircuitState.CLOSED:
            return
        if padding_may_hold and self.padding is not None and self.state is CircuitState.OPEN \
                and self.padding.holds_open(reason, message):
            return
        self.channel.destroy_circuit(self.circ_id, DestroyReason.NONE)
        self._closed(CircuitError(message, reason))

    def channel_resumed(self) -> None:
        """The channel takes stream data again: the streams package what they hold."""
        if self.state is CircuitState.OPEN:
            self._wake_streams()

    def channel_closed(self, reason: str) -> None:
        """The link under the circuit is gone."""
        self._closed(CircuitError(f"link to {self.path[0].describe()} closed: {reason}",
                                  DestroyReason.CHANNEL_CLOSED))

    def _closed(self, error: CircuitError) -> None:
        if self.state is CircuitState.CLOSED:
            return
        self.state = CircuitState.CLOSED
        self.error = error
        if self.padding is not None:
            self.padding.circuit_closed()
        streams = list(self.streams.values())
        self.streams = {}
        for inner in (self._inner_hops or {}).values():
            streams += inner.streams.values()
            inner.streams = {}
        for stream in streams:
            stream.circuit_closed(error)
        self.owner.circuit_closed(self, error)


# The usual read of a bulk download is DATA cells for one stream, all from the last hop, most of them full: such
# a run is checked with a few strided slices, counted against the deliver window from one SENDME trigger to the
# next and cut into views, with no Python step per cell (`_cells_received`, `_leg_run_received`).
_FULL_LENGTH_HIGH = bytes([RELAY_PAYLOAD_LEN >> 8])
_FULL_LENGTH_LOW = bytes([RELAY_PAYLOAD_LEN & 0xFF])


def _data_run(cells: list[tuple], hop: int) -> tuple[int, list[int] | None] | None:
    """(stream id, the cells' data lengths, None when all are full) when the decrypted `cells` (as
    `decrypt_inbound_many` gives them) are all DATA cells from `hop` for one stream (not 0) of at most a relay
    body, back to back in one buffer from its start; None otherwise."""
    if not cells:
        return None
    first_hop, buffer, offset, _ = cells[0]
    count = len(cells)
    end = count * CELL_PAYLOAD_LEN
    if first_hop != hop or offset or cells[-1][1] is not buffer or cells[-1][2] != end - CELL_PAYLOAD_LEN:
        return None
    header = bytes(buffer[:RELAY_HEADER_LEN])
    if header[0] != _DATA or not (header[3] or header[4]):
        return None
    for index in (0, 3, 4):  # the command and the stream id, the same in every cell
        if buffer[index:end:CELL_PAYLOAD_LEN] != header[index:index + 1] * count:
            return None
    stream_id = header[3] << 8 | header[4]
    high, low = buffer[9:end:CELL_PAYLOAD_LEN], buffer[10:end:CELL_PAYLOAD_LEN]
    if high == _FULL_LENGTH_HIGH * count and low == _FULL_LENGTH_LOW * count:
        return stream_id, None
    lengths = [high_byte << 8 | low_byte for high_byte, low_byte in zip(high, low)]
    if max(lengths) > RELAY_PAYLOAD_LEN:
        return None  # the cell-by-cell loop closes the circuit over it
    return stream_id, lengths


def _count_data_run(window: SendmeWindow, deliver: int, cells: list[tuple], sendmes: list) -> int:
    """Count a DATA run against the deliver window that stands at `deliver`, as cell by cell: each cell that
    takes it down to the threshold owes a SENDME echoing its tag (appended to `sendmes` with its hop) and
    opens the window by an increment. Returns the window after the run. (Above the threshold before each
    cell, it never falls below 0: a run cannot overrun it.)"""
    count = len(cells)
    threshold = window.sendme_threshold
    position = 0
    while deliver - (count - position) <= threshold:
        position += deliver - threshold
        deliver = threshold + window.increment
        hop, _, _, tag = cells[position - 1]
        sendmes.append((hop, tag))
    return deliver - (count - position)


def _data_run_views(cells: list[tuple], lengths: list[int] | None) -> list[memoryview]:
    """The data of a DATA run (`lengths` as `_data_run` gives them): views of the decrypted buffer."""
    view = memoryview(cells[0][1])
    starts = range(RELAY_HEADER_LEN, len(cells) * CELL_PAYLOAD_LEN, CELL_PAYLOAD_LEN)
    if lengths is None:
        return [view[start:start + RELAY_PAYLOAD_LEN] for start in starts]
    return [view[start:start + length] for start, length in zip(starts, lengths)]


class InnerHop(StreamTable):
    """The circuit as the streams that exit from one of its inner hops see it (ATTACHSTREAM HOP=,
    control-spec 3.5; tor's cpath_layer of an edge): their cells are encrypted to that hop and counted against
    that hop's own circuit windows (fixed SENDME windows: congestion control is negotiated with the last hop
    only), and only that hop's cells reach them. Their ids are the circuit's (`Circuit.allocate_stream_id`)."""

    def __init__(self, circuit: Circuit, hop: int) -> None:
        StreamTable.__init__(self)
        self.circuit = circuit
        self.hop = hop
        self.window = SendmeWindow.for_circuit()
        # Tags of our every 100th DATA cell to this hop, which its SENDMEs must echo (prop 289).
        self._expected_sendme_tags: collections.deque[bytes] = collections.deque()
        self._data_cells_sent = 0

    def __repr__(self) -> str:
        return f"<InnerHop {self.hop + 1} of {self.circuit!r}>"

    @property
    def circ_id(self) -> int:
        return self.circuit.circ_id

    @property
    def congestion_control(self) -> None:
        return None

    def allocate_stream_id(self) -> int:
        return self.circuit.allocate_stream_id()

    def close(self, reason: int = DestroyReason.FINISHED, message: str = "closed") -> None:
        self.circuit.close(reason, message)

    def send_relay(self, command: int, stream_id: int, data: bytes) -> None:
        self.circuit.send_relay(command, stream_id, data, hop=self.hop)

    def end_stream(self, stream_id: int, reason: int = EndReason.MISC) -> None:
        self.streams.pop(stream_id, None)
        if self.circuit.state is CircuitState.OPEN:
            self.send_relay(RelayCommand.END, stream_id, encode_end_body(reason))

    @property
    def package_room(self) -> int:
        circuit = self.circuit
        if circuit.state is not CircuitState.OPEN or circuit.channel.paused:
            return 0
        return self.window.package

    def send_data_many(self, stream_id: int, chunks: list[bytes], urgent: bool = False) -> None:
        """DATA cells of one stream to this hop, counted against its circuit package window."""
        circuit = self.circuit
        if circuit.state is CircuitState.CLOSED:
            raise CircuitError(f"circuit {circuit.circ_id:#x} is closed")
        count = len(chunks)
        if count > self.window.package:
            raise CircuitError("circuit package window is too small for these cells")
        if not count:
            return
        tags = circuit._send_payloads(_RELAY, [encode_relay_payload(_DATA, stream_id, chunk) for chunk in chunks],
                                      self.hop, urgent)
        circuit.bytes_written += sum(map(len, chunks))
        increment = self.window.increment
        self._expected_sendme_tags.extend(tags[increment - 1 - self._data_cells_sent % increment::increment])
        self._data_cells_sent += count
        self.window.package -= count

    def cell_received(self, hop: int, buffer: bytes, offset: int, tag: bytes) -> None:
        """A cell this hop sent: DATA counts against its deliver window (a SENDME to it each 100th, as for
        the last hop) and reaches its stream if the stream is this hop's; circuit SENDMEs open its package
        window; anything else for the circuit goes to the circuit."""
        circuit = self.circuit
        command, _, stream_id, _, length = _RELAY_HEADER.unpack_from(buffer, offset)
        data = circuit._relay_data(hop, buffer, offset, length)
        if data is None:
            return
        stream = self.streams.get(stream_id) if stream_id else None
        if command == _DATA:
            circuit.bytes_read += length
            window = self.window
            window.deliver -= 1
            if window.deliver < 0:
                circuit._fail(f"{circuit._hop_name(hop)} overran the circuit deliver window",
                              DestroyReason.PROTOCOL)
                return
            if window.sendme_due:
                window.sendme_sent()
                circuit.send_relay(RelayCommand.SENDME, 0, encode_sendme_body(tag), hop=hop)
            if stream is not None:
                stream.data_cells_received([data])
            return
        circuit._control_bytes_read += length
        if stream is not None:
            stream.relay_received(command, data)
        elif stream_id == 0 and command == _SENDME:
            self._sendme_received(data)
        elif stream_id == 0:
            circuit._control_cell_received(hop, command, data)
        # Cells for a stream that is not this hop's are dropped (tor's relay_lookup_conn matches the layer).

    def _sendme_received(self, data: bytes) -> None:
        if not self.circuit._sendme_valid(self.hop, data, self._expected_sendme_tags):
            return
        was_blocked = self.window.package <= 0
        self.window.sendme_received()
        if was_blocked:
            self.wake_streams()

    def wake_streams(self) -> None:
        for stream in list(self.streams.values()):
            stream.circuit_window_opened()
