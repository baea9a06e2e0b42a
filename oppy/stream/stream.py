"""A stream, sans IO: one application connection carried over a circuit.

It opens with RELAY_BEGIN (or BEGIN_DIR, or asks RELAY_RESOLVE), chunks application bytes into RELAY_DATA
cells of at most 498 bytes, keeps its package and deliver windows (tor-spec "Flow control"), sends a stream
SENDME only once the data was handed to a local client that is reading, and moves through NEW, SENTCONNECT
(or SENTRESOLVE), SUCCEEDED, FAILED, CLOSED and DETACHED. Whichever side closes first, the application
(the sink) hears of the end exactly once.

Both buffers a stream keeps are bounded and counted. Bytes from the application wait in the send buffer
for the windows; past `send_buffer_limit` the application is asked to stop (`stream_writable(False)`), and
one that writes on regardless, past twice the limit, has its stream closed. Bytes from the exit wait in the
receive queue while the application does not read (`pause_delivery`); no stream SENDME goes out meanwhile,
so the queue never holds more than one stream window (500 cells). A `QueueAccount` handed at construction
hears how much both hold, once per read or write, never per cell (MaxMemInQueues: `oppy.circuit.memory`).

On a circuit with congestion control (`circuit.congestion_control` is not None) the stream keeps no windows:
XON/XOFF (`oppy.stream.xon_xoff`, proposal 324) bound the receive queue instead, by asking the exit to stop
once the client has let `cc_xoff_client` cells' worth wait, and an XOFF from the exit stops the packaging
until its XON. An XON that advises a rate holds the packaging to it (a token bucket, as tor's edge
connections): the stream asks its owner to flush it again when the bucket has refilled.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from typing import Callable, Protocol

from oppy.cell.commands import RELAY_PAYLOAD_LEN, EndReason, RelayCommand, reason_name
from oppy.cell.errors import CellParseError
from oppy.cell.flow_control import SendmeWindow
from oppy.cell.relay import (
    ResolvedAnswer,
    decode_connected_body,
    decode_end_body,
    decode_resolved_body,
    encode_begin_body,
    encode_onion_begin_body,
    encode_resolve_body,
    encode_reverse_resolve_body,
)
from oppy.stream.xon_xoff import (
    FlowControlError,
    FlowControlEvent,
    FlowControlParams,
    SendXoff,
    SendXon,
    StreamFlowControl,
)

log = logging.getLogger(__name__)

# How many application bytes a stream buffers before it asks its source to stop reading: a little over one
# full stream window, so a blocked window never leaves the circuit idle, and memory stays bounded.
DEFAULT_SEND_BUFFER_LIMIT = 256 * 1024
# An application that goes on writing after `stream_writable(False)` has its stream closed once the send
# buffer holds this many times the limit (one that stops overshoots by at most the read in progress).
SEND_BUFFER_HARD_LIMIT_FACTOR = 2


class StreamState(enum.Enum):
    NEW = "NEW"
    SENTCONNECT = "SENTCONNECT"
    SENTRESOLVE = "SENTRESOLVE"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CLOSED = "CLOSED"
    DETACHED = "DETACHED"


class StreamKind(enum.Enum):
    CONNECT = "connect"
    RESOLVE = "resolve"
    RESOLVE_PTR = "resolve_ptr"
    DIRECTORY = "directory"


class StreamEnd(Exception):
    """Why a stream ended: an END reason (ours or the exit's), or a circuit that went away."""

    def __init__(self, message: str, reason: int, remote: bool, before_connected: bool,
                 extended_error: int = 0) -> None:
        super().__init__(message)
        self.reason = reason
        self.remote = remote
        self.before_connected = before_connected
        # Proposal 304: the SOCKS5 extended reply (0xF0..0xF7) of a failed onion-service connection, 0 if
        # none; a SocksPort with ExtendedErrors answers it instead of the reason's code (tor's
        # socks_extended_error_code).
        self.extended_error = extended_error


class StreamSink(Protocol):
    """The application side of a stream: a SOCKS connection, a directory fetch, a test."""

    def stream_connected(self, stream: "Stream") -> None: ...

    def stream_resolved(self, stream: "Stream", answers: list[ResolvedAnswer]) -> None: ...

    def stream_data(self, stream: "Stream", data: bytes) -> None: ...

    def stream_writable(self, stream: "Stream", writable: bool) -> None:
        """The stream can take more application data (True) or its buffer is full (False)."""

    def stream_ended(self, stream: "Stream", end: StreamEnd) -> None: ...


class QueueAccount(Protocol):
    """Who counts the bytes queued in every stream (`oppy.circuit.memory.MemoryTracker`): told of each
    stream's change once per batch, it may abandon streams (and close their circuits) at once."""

    clock: Callable[[], float]

    def queued_changed(self, stream: "Stream", delta: int) -> None:
        """The stream's `queued_bytes` changed by `delta` (it is `stream.queued_bytes` now)."""


class StreamOwner(Protocol):
    """Who keeps a stream's books and may retry it on another circuit (the circuit manager). It hears of
    each milestone before the sink does; each method may act on the stream at once."""

    def stream_attempt_failed(self, stream: "Stream", end: StreamEnd) -> bool:
        """An attempt failed before CONNECTED (an END from the exit, a circuit that closed, a local timeout);
        the stream is DETACHED already. True: the owner tries it again (it may attach it right away); False:
        the stream ends with `end`."""

    def stream_connected(self, stream: "Stream") -> None:
        """CONNECTED (or RESOLVED) arrived."""

    def stream_ended(self, stream: "Stream", end: StreamEnd) -> None:
        """The stream ended (once)."""

    def stream_flow_control(self, stream: "Stream", event: FlowControlEvent) -> None:
        """The stream sent or received an XON or XOFF (tor reports each as a STREAM event)."""

    def stream_rate_limited(self, stream: "Stream", delay: float) -> None:
        """The stream's upload waits for the rate the exit advised: `stream.flush()` in `delay` seconds (one
        call pending per stream is enough)."""


class Stream:
    """One stream. Attach it to an open circuit with `attach`; feed application bytes with `write`.

    Without an `owner` a failed attempt ends the stream (a directory fetch, a test)."""

    def __init__(self, sink: StreamSink, host: str, port: int, kind: StreamKind = StreamKind.CONNECT,
                 send_buffer_limit: int = DEFAULT_SEND_BUFFER_LIMIT, owner: StreamOwner | None = None,
                 account: QueueAccount | None = None, flow_params: FlowControlParams = FlowControlParams(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sink = sink
        self.owner = owner
        self.host = host
        self.port = port
        self.kind = kind
        self.state = StreamState.NEW
        self.circuit = None
        self.stream_id = 0
        self.window = SendmeWindow.for_stream()
        # XON/XOFF in place of the windows while attached to a circuit with congestion control.
        self.flow: StreamFlowControl | None = None
        self.flow_params = flow_params
        self.clock = clock
        self.send_buffer_limit = send_buffer_limit
        self.bytes_read = 0
        self.bytes_written = 0
        self.end: StreamEnd | None = None
        self.account = account
        self._send_buffer: deque[bytes] = deque()
        # When each piece of the send buffer was written (only with an account: the age of queued data).
        self._send_times: deque[float] = deque()
        self._send_buffered = 0
        self._send_offset = 0  # bytes of _send_buffer[0] already sent
        self._writable = True
        self._delivery_paused = False
        self._close_after_flush: int | None = None
        # Data from the exit the application has not taken yet (it paused delivery): (time queued, bytes).
        self._received: deque[tuple[float, bytes]] = deque()
        self._received_queued = 0
        self._reported = 0  # queued_bytes as the account last heard it

    def __repr__(self) -> str:
        return f"<Stream {self.stream_id} {self.state.value} {self.kind.value}>"

    @property
    def ended(self) -> bool:
        return self.end is not None

    @property
    def queued_bytes(self) -> int:
        """Bytes held in both directions: written by the application and not yet sent, received from the
        exit and not yet taken by the application."""
        return self._send_buffered + self._received_queued

    @property
    def oldest_queued(self) -> float | None:
        """When the oldest byte still queued (either way) was queued, by the account's clock; None when
        nothing is queued (or there is no account)."""
        times = []
        if self._send_times:
            times.append(self._send_times[0])
        if self._received:
            times.append(self._received[0][0])
        return min(times, default=None)

    def _report_queued(self) -> None:
        """Tell the account how much this stream holds now (once per read, write or flush)."""
        if self.account is not None:
            delta = self._send_buffered + self._received_queued - self._reported
            if delta:
                self._reported += delta
                self.account.queued_changed(self, delta)

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    # ------------------------------------------------------------------------------ opening

    def attach(self, circuit, *, onion_service: bool = False) -> None:
        """Put the stream on an open circuit and send BEGIN / BEGIN_DIR / RESOLVE. On a rendezvous circuit
        (`onion_service`) BEGIN names no address, only the port."""
        if self.ended:
            raise RuntimeError("stream already ended")
        self.circuit = circuit
        self.stream_id = circuit.allocate_stream_id()
        # tor-spec "Congestion control": a congestion-controlled circuit carries no stream SENDMEs either way;
        # XON/XOFF bound what the stream holds instead.
        self.window = SendmeWindow.for_stream() if circuit.congestion_control is None else SendmeWindow.unbounded()
        self.flow = StreamFlowControl(self.flow_params) if circuit.congestion_control is not None else None
        circuit.attach_stream(self)
        if self.kind is StreamKind.CONNECT:
            body = encode_onion_begin_body(self.port) if onion_service else encode_begin_body(self.host, self.port)
            circuit.send_relay(RelayCommand.BEGIN, self.stream_id, body)
            self.state = StreamState.SENTCONNECT
        elif self.kind is StreamKind.DIRECTORY:
            circuit.send_relay(RelayCommand.BEGIN_DIR, self.stream_id, b"")
            self.state = StreamState.SENTCONNECT
        elif self.kind is StreamKind.RESOLVE:
            circuit.send_relay(RelayCommand.RESOLVE, self.stream_id, encode_resolve_body(self.host))
            self.state = StreamState.SENTRESOLVE
        else:
            circuit.send_relay(RelayCommand.RESOLVE, self.stream_id, encode_reverse_resolve_body(self.host))
            self.state = StreamState.SENTRESOLVE

    def detach(self, reason: int = EndReason.MISC) -> None:
        """Take a stream that never connected off its circuit (to retry it elsewhere): END goes to the exit."""
        if self.circuit is not None and self.state in (StreamState.SENTCONNECT, StreamState.SENTRESOLVE):
            self.circuit.end_stream(self.stream_id, reason)
        self._detached()

    def _detached(self) -> None:
        if self.circuit is not None:
            self.circuit.detach_stream(self.stream_id)
        self.circuit = None
        self.stream_id = 0
        self.flow = None
        self.state = StreamState.DETACHED

    def _attempt_failed(self, end: StreamEnd) -> None:
        """An attempt failed before CONNECTED: off its circuit, then retried by the owner or ended."""
        self._detached()
        if self.owner is not None and self.owner.stream_attempt_failed(self, end):
            return
        self._finish(end, send_end=None)

    # ------------------------------------------------------------------------------ cells from the circuit

    def relay_received(self, command: int, data: bytes) -> None:
        """A relay cell for this stream other than DATA (those come through `data_cells_received`)."""
        if command == RelayCommand.SENDME:
            self._sendme_received()
        elif command == RelayCommand.CONNECTED:
            self._connected(data)
        elif command == RelayCommand.END:
            self._end_received(data)
        elif command == RelayCommand.RESOLVED:
            self._resolved(data)
        elif command in (RelayCommand.XOFF, RelayCommand.XON) and self.flow is not None:
            self._xon_xoff_received(command, data)
        # Other commands on a stream (XON/XOFF without congestion control, ...) are ignored.

    def data_cells_received(self, chunks: list[bytes | bytearray | memoryview]) -> None:
        """The data of DATA cells in a row from one read (one cell: a list of one): counted per cell against
        the deliver window, delivered to the sink at once.

        Stream SENDMEs owed go out after the delivery (only while the sink reads). Cells beyond the deliver
        window are a protocol violation: those within it are delivered, then the stream ends. With XON/XOFF
        (no window to overrun) the flow control hears what waits or was drained, and may send XOFF or XON.
        """
        if self.state is not StreamState.SUCCEEDED:
            return  # tor-spec: DATA before CONNECTED is a protocol error; late DATA after END is tolerated
        window = self.window
        overrun = len(chunks) > window.deliver
        if overrun:
            chunks = chunks[:window.deliver]
        window.deliver -= len(chunks)
        if chunks:
            data = b"".join(chunks)  # bytes, also when the chunks are views of a decrypted batch
            self.bytes_read += len(data)
            flow = self.flow
            if self._delivery_paused or self._received:
                self._queue_received(data)
                if flow is not None:
                    self._send_flow_cell(flow.data_received(self._received_queued, self.clock()))
            else:
                self.sink.stream_data(self, data)
                if flow is not None and not self.ended:
                    self._send_flow_cell(flow.drained(len(data), self._received_queued, self.clock()))
        if overrun:
            self._finish(StreamEnd("the exit overran the stream deliver window", EndReason.TORPROTOCOL,
                                   remote=False, before_connected=False), send_end=EndReason.TORPROTOCOL)
            return
        if not self._delivery_paused and window.sendme_due:
            self._send_sendmes()

    def _send_flow_cell(self, cell: SendXoff | SendXon | None) -> None:
        """Send the XON or XOFF the flow control asked for (None: nothing)."""
        if cell is not None and self.circuit is not None and not self.ended:
            self.circuit.send_relay(cell.command, self.stream_id, cell.body)
            if self.owner is not None:
                self.owner.stream_flow_control(self, cell.event)

    def _xon_xoff_received(self, command: int, data: bytes) -> None:
        """The exit's XOFF stops our packaging until its XON; a bad one is logged and ignored, as tor does."""
        try:
            if command == RelayCommand.XOFF:
                self.flow.xoff_received_cell(data)
            else:
                self.flow.xon_received_cell(data, self.clock())
        except FlowControlError as exc:
            log.info("Ignoring an %s from the exit on stream %d: %s", RelayCommand(command).name, self.stream_id,
                     exc)
            return
        if self.owner is not None:
            self.owner.stream_flow_control(self, FlowControlEvent.XOFF_RECV if command == RelayCommand.XOFF
                                           else FlowControlEvent.XON_RECV)
        if command == RelayCommand.XON and not self.ended:
            self.flush()

    def _queue_received(self, data: bytes) -> None:
        """The application is not reading: keep the data (and owe the exit no SENDME for it)."""
        self._received.append((self.account.clock() if self.account is not None else 0.0, data))
        self._received_queued += len(data)
        self._report_queued()

    def _deliver_received(self, *, all_of_it: bool = False) -> None:
        """Hand queued data to the application: piece by piece while it reads, or `all_of_it` before the
        stream ends (the application may stop the delivery by closing the stream)."""
        received = self._received
        delivered = 0
        while received and (all_of_it or not self._delivery_paused) and not self.ended:
            data = received.popleft()[1]
            self._received_queued -= len(data)
            delivered += len(data)
            self.sink.stream_data(self, data)
        if delivered:
            self._report_queued()
        if self.flow is not None and not self.ended and not all_of_it:
            # Also with nothing delivered: the client read what the transport held, an XON may be due.
            self._send_flow_cell(self.flow.drained(delivered, self._received_queued, self.clock()))

    def _send_sendmes(self) -> None:
        circuit = self.circuit
        window = self.window
        while window.sendme_due and circuit is not None:
            window.sendme_sent()
            circuit.send_relay(RelayCommand.SENDME, self.stream_id, b"")

    def _sendme_received(self) -> None:
        if not self.window.sendme_received():
            self._finish(StreamEnd("the exit sent a stream SENDME we were not owed", EndReason.TORPROTOCOL,
                                   remote=False, before_connected=False), send_end=EndReason.TORPROTOCOL)
            return
        self.flush()

    def _connected(self, data: bytes) -> None:
        if self.state is not StreamState.SENTCONNECT:
            return
        if self.kind is not StreamKind.DIRECTORY:
            try:
                decode_connected_body(data)
            except CellParseError:
                pass  # tor ignores a malformed address in CONNECTED; the stream is open all the same
        self.state = StreamState.SUCCEEDED
        if self.owner is not None:
            self.owner.stream_connected(self)
        self.sink.stream_connected(self)
        self.flush()

    def _resolved(self, data: bytes) -> None:
        if self.state is not StreamState.SENTRESOLVE:
            return
        try:
            answers = decode_resolved_body(data)
        except CellParseError:
            answers = []
        self.state = StreamState.SUCCEEDED
        if self.owner is not None:
            self.owner.stream_connected(self)
        self.sink.stream_resolved(self, answers)
        # A RESOLVE opens no stream at the exit: the id is free again without an END.
        if self.circuit is not None:
            self.circuit.detach_stream(self.stream_id)
        self._finish(StreamEnd("resolved", EndReason.DONE, remote=False, before_connected=False), send_end=None)

    def _end_received(self, data: bytes) -> None:
        try:
            end = decode_end_body(data)
            reason = int(end.reason)
        except CellParseError:
            reason = EndReason.MISC
        before = self.state in (StreamState.SENTCONNECT, StreamState.SENTRESOLVE)
        end = StreamEnd(f"the exit ended the stream: {reason_name(EndReason, reason)}", reason, remote=True,
                        before_connected=before)
        if before:
            self._attempt_failed(end)
            return
        if self.circuit is not None:
            self.circuit.detach_stream(self.stream_id)
        self._finish(end, send_end=None)

    def circuit_closed(self, error) -> None:
        before = self.state in (StreamState.NEW, StreamState.SENTCONNECT, StreamState.SENTRESOLVE)
        end = StreamEnd(f"circuit closed: {error}", EndReason.DESTROY, remote=False, before_connected=before)
        if before:
            self._attempt_failed(end)
            return
        self.circuit = None
        self._finish(end, send_end=None)

    def circuit_window_opened(self) -> None:
        self.flush()

    # ------------------------------------------------------------------------------ application side

    def write(self, data: bytes) -> None:
        """Application bytes to send; they go out as RELAY_DATA as far as the windows allow."""
        if self.ended or not data:
            return
        told_to_stop = not self._writable
        self._send_buffer.append(data)
        if self.account is not None:
            self._send_times.append(self.account.clock())
        self._send_buffered += len(data)
        self.flush()
        if self.ended:
            return  # closed on the way (everything was sent and a close was waiting, or out of memory)
        if told_to_stop and self._send_buffered > SEND_BUFFER_HARD_LIMIT_FACTOR * self.send_buffer_limit:
            log.warning("Closing a stream whose application wrote on past its send buffer limit: %d bytes "
                        "wait to be sent (the limit is %d)", self._send_buffered, self.send_buffer_limit)
            self.close(EndReason.RESOURCELIMIT)
            return
        self._update_writable()
        self._report_queued()

    def flush(self) -> None:
        """Package buffered bytes into DATA cells while both windows are open (on a congestion-controlled
        circuit: while the circuit takes data, the exit has not said XOFF and the rate it advised allows).

        Every cell the windows allow right now is cut and handed to the circuit in one call
        (`send_data_many`, which encrypts them together).
        """
        if self.state is not StreamState.SUCCEEDED or self.circuit is None:
            return
        circuit = self.circuit
        buffer = self._send_buffer
        window = self.window
        flow = self.flow
        limit = flow.rate_limit if flow is not None else None
        if limit is not None:
            limit.refill(self.clock())
        while buffer and window.package > 0 and (flow is None or flow.may_send):
            room = min(window.package, circuit.package_room)
            if limit is not None:
                room = min(room, limit.cells)
            if room <= 0:
                break
            chunks = []
            while buffer and len(chunks) < room:
                chunks.append(self._next_chunk())
            # The stream's first data (typically its request) goes to the link at once: the answer waits on it.
            circuit.send_data_many(self.stream_id, chunks, urgent=not self.bytes_written)
            sent = sum(map(len, chunks))
            window.package -= len(chunks)
            if flow is not None:
                flow.data_sent(sent)
            self._send_buffered -= sent
            self.bytes_written += sent
        if buffer and limit is not None and limit.level <= 0 and flow.may_send and self.owner is not None:
            self.owner.stream_rate_limited(self, limit.delay())
        self._update_writable()
        self._report_queued()
        if not buffer and self._close_after_flush is not None:
            reason, self._close_after_flush = self._close_after_flush, None
            self.close(reason)

    def _next_chunk(self) -> bytes:
        """The next DATA cell's worth (at most 498 bytes) off the send buffer, which must not be empty.

        A piece is consumed from `_send_offset` on rather than re-sliced, so a large write costs one copy
        per cell. A short remainder is filled from the following pieces rather than sent as a short cell.
        """
        buffer = self._send_buffer
        piece = buffer[0]
        offset = self._send_offset
        end = offset + RELAY_PAYLOAD_LEN
        if end < len(piece):
            self._send_offset = end
            return piece[offset:end]
        self._pop_piece()
        self._send_offset = 0
        chunk = piece[offset:] if offset else piece
        if len(chunk) == RELAY_PAYLOAD_LEN or not buffer:
            return chunk
        parts = [chunk]
        size = len(chunk)
        while buffer and size < RELAY_PAYLOAD_LEN:
            piece = buffer[0]
            room = RELAY_PAYLOAD_LEN - size
            if len(piece) > room:
                parts.append(piece[:room])
                self._send_offset = room
                size += room
                break
            self._pop_piece()
            parts.append(piece)
            size += len(piece)
        return b"".join(parts)

    def _pop_piece(self) -> None:
        self._send_buffer.popleft()
        if self._send_times:
            self._send_times.popleft()

    def _update_writable(self) -> None:
        writable = self._send_buffered < self.send_buffer_limit
        if writable != self._writable:
            self._writable = writable
            self.sink.stream_writable(self, writable)

    def pause_delivery(self) -> None:
        """The local client stopped reading: grant the exit no more stream SENDMEs."""
        self._delivery_paused = True

    def resume_delivery(self) -> None:
        """The local client reads again: what was queued goes to it, then the SENDMEs owed (unless it
        stopped reading again on the way)."""
        self._delivery_paused = False
        if self.state is StreamState.SUCCEEDED:
            self._deliver_received()
            if not self._delivery_paused and self.state is StreamState.SUCCEEDED:
                self._send_sendmes()

    def close(self, reason: int = EndReason.DONE, *, retry: bool = False, flush_first: bool = False,
              extended_error: int = 0) -> None:
        """End the stream: END goes to the exit once (after the buffered bytes when `flush_first`).

        With `retry`, an attempt still waiting for CONNECTED (or RESOLVED) is given up instead, and the owner
        may try the stream again on another circuit. `extended_error` is proposal 304's SOCKS reply for an
        onion-service connection that failed (see `StreamEnd.extended_error`).
        """
        if self.ended:
            return
        if retry and self.state in (StreamState.SENTCONNECT, StreamState.SENTRESOLVE):
            if self.circuit is not None:
                self.circuit.end_stream(self.stream_id, reason)
            self._attempt_failed(StreamEnd(f"closed locally: {reason_name(EndReason, reason)}", reason,
                                           remote=False, before_connected=True))
            return
        if flush_first and self._send_buffer and self.state is StreamState.SUCCEEDED:
            self._close_after_flush = reason
            return
        # The application closes: what it has not read is dropped.
        self._finish(StreamEnd(f"closed locally: {reason_name(EndReason, reason)}", reason, remote=False,
                               before_connected=self.state is not StreamState.SUCCEEDED,
                               extended_error=extended_error), send_end=reason, deliver_received=False)

    def abandon(self, reason: int, message: str) -> None:
        """Out of memory (MaxMemInQueues): drop what the stream holds both ways and end it with `reason`,
        sending nothing (its circuit is destroyed next)."""
        if self.ended:
            return
        if self.circuit is not None:
            self.circuit.detach_stream(self.stream_id)
        before = self.state is not StreamState.SUCCEEDED
        self._finish(StreamEnd(message, reason, remote=False, before_connected=before), send_end=None,
                     deliver_received=False)

    def _finish(self, end: StreamEnd, send_end: int | None, deliver_received: bool = True) -> None:
        """End the stream once. Data still queued for the application reaches it first when the end came
        from the exit or the circuit (it was sent before the end); a local close drops it."""
        if self.ended:
            return
        if deliver_received:
            self._deliver_received(all_of_it=True)
            if self.ended:
                return  # the application closed the stream while it took the data
        self.end = end
        if send_end is not None and self.circuit is not None and self.stream_id:
            self.circuit.end_stream(self.stream_id, send_end)
        self.state = StreamState.FAILED if end.before_connected else StreamState.CLOSED
        self._send_buffer.clear()
        self._send_times.clear()
        self._send_buffered = 0
        self._send_offset = 0
        self._received.clear()
        self._received_queued = 0
        self._report_queued()
        self.circuit = None
        if self.owner is not None:
            self.owner.stream_ended(self, end)
        self.sink.stream_ended(self, end)

