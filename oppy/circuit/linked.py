"""A conflux set as its streams see it: one circuit made of linked legs (prop 329; tor's conflux_pool.c for the
linking, conflux.c for the sending and receiving).

A `ConfluxTunnel` is created with the set's nonce, before its legs are built. Each open leg (a `Circuit` with
congestion control to the set's exit) is handed to `add_leg`, which sends RELAY_CONFLUX_LINK; the exit's
RELAY_CONFLUX_LINKED is checked (its nonce, no data lost), answered with RELAY_CONFLUX_LINKED_ACK and the
leg joins the `ConfluxSet`. Once no leg is waiting for its LINKED the set is usable and the owner hears
`tunnel_linked`. Streams attach to the tunnel as to a circuit: their multiplexed cells go out on the leg the
set's scheduler picks (after a SWITCH when it changes), and what comes in on the legs is put back in sequence
order before any stream sees it.

The out-of-order queue counts against MaxMemInQueues: the tunnel reports its bytes to the `QueueAccount`
(`oppy.circuit.memory.MemoryTracker`) as a stream does, and the out-of-memory handler may close the set.

A leg that closes leaves the set standing when nothing was lost (tor's cfx_del_leg); otherwise, or when the
out-of-order queue overflows or a leg breaks the protocol, the whole set is torn down and its streams end
with the error: a stream never sees a byte out of order.
"""

from __future__ import annotations

import enum
import logging
import time
from typing import Callable, Protocol

from oppy.cell.commands import DestroyReason, EndReason, RelayCommand
from oppy.cell.relay import encode_end_body
from oppy.circuit.circuit import Circuit, CircuitError, StreamTable
from oppy.circuit.conflux import (
    DEFAULT_MAX_OOO_BYTES,
    ConfluxAlgorithm,
    ConfluxError,
    ConfluxLeg,
    ConfluxLink,
    ConfluxSet,
    DesiredUX,
    algorithm_for_ux,
    encode_switch,
)
from oppy.circuit.congestion import VegasController
from oppy.netdoc.relay import RelayTarget
from oppy.stream.stream import QueueAccount

log = logging.getLogger(__name__)

_DATA = int(RelayCommand.DATA)
_USEC_PER_SECOND = 1_000_000


class TunnelState(enum.Enum):
    LINKING = "linking"
    LINKED = "linked"
    CLOSED = "closed"


class TunnelOwner(Protocol):
    """Who a tunnel reports to (the circuit manager)."""

    def tunnel_linked(self, tunnel: "ConfluxTunnel") -> None:
        """Every leg launched so far linked (or failed, at least one linked): the set takes streams. Again
        when a leg joins the linked set in place of a lost one."""

    def tunnel_closed(self, tunnel: "ConfluxTunnel", error: CircuitError) -> None:
        """The set is torn down (once); its streams have been told and its legs are closing."""


class ConfluxTunnel(StreamTable):
    """One conflux set: its legs, the linking handshake, and the circuit interface its streams use."""

    def __init__(self, nonce: bytes, owner: TunnelOwner, *, desired_ux: int = DesiredUX.HIGH_THROUGHPUT,
                 max_ooo_bytes: int = DEFAULT_MAX_OOO_BYTES, max_link_rtt: float | None = None,
                 account: QueueAccount | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.nonce = nonce
        self.owner = owner
        self.desired_ux = desired_ux
        # record_rtt: a leg whose LINK took this long (seconds; the circuit build timeout) is not linked.
        self.max_link_rtt = max_link_rtt
        self.clock = clock
        self.state = TunnelState.LINKING
        # What we send is scheduled by our own ConfluxClientUX (LowRTT for throughput). tor's cfx_add_leg takes
        # the UX of the exit's LINKED instead, and tor's exits ask for MIN_LATENCY, so C tor uploads over the
        # lowest-RTT leg alone (a 20 MB upload here took 4.3 s that way, 2.1 s with LowRTT).
        # Its out-of-order queue holds lists of entries as `leg_cells` takes them (the DATA copied).
        self.conflux: ConfluxSet[Circuit, list[tuple]] = ConfluxSet(
            nonce, algorithm_for_ux(desired_ux), max_ooo_bytes=max_ooo_bytes)
        # Legs launched and still building (`leg_launched`), and legs that sent LINK and wait for LINKED
        # (when each was sent): the set is usable once neither is left (tor's try_finalize_set).
        self._building = 0
        self._pending: dict[Circuit, float] = {}
        StreamTable.__init__(self)
        self.error: CircuitError | None = None
        # MaxMemInQueues: what the out-of-order queue held at the last report.
        self.account = account
        self._accounted = 0

    def __repr__(self) -> str:
        return f"<ConfluxTunnel {self.nonce[:4].hex()} {self.state.value} legs={len(self.conflux.legs)}>"

    # ------------------------------------------------------------------------------ what the manager reads

    @property
    def legs(self) -> list[Circuit]:
        return [leg.circuit for leg in self.conflux.legs]

    @property
    def pending_legs(self) -> list[Circuit]:
        return list(self._pending)

    @property
    def circ_id(self) -> int:
        """The first leg's circuit id (the memory tracker's log line names the set by it)."""
        legs = self.legs or self.pending_legs
        return legs[0].circ_id if legs else 0

    @property
    def exit(self) -> RelayTarget | None:
        legs = self.legs or self.pending_legs
        return legs[0].exit if legs else None

    @property
    def carried_cells(self) -> bool:
        """A stream has used the set: it sent or received multiplexed cells."""
        return bool(self.conflux.max_seq_sent or self.conflux.last_seq_delivered or self.conflux.max_seq_recv)

    @property
    def is_open(self) -> bool:
        return self.state is TunnelState.LINKED and any(leg.is_open for leg in self.legs)

    # QueueHolder (oppy.circuit.memory): the tunnel holds its out-of-order queue as a stream holds its buffers.

    @property
    def circuit(self) -> "ConfluxTunnel":
        return self

    @property
    def queued_bytes(self) -> int:
        return self.conflux.queued_bytes

    @property
    def oldest_queued(self) -> None:
        """No age: tor's circuits_handle_oom ages a circuit by its cell queues and stream buffers and counts
        the out-of-order queue only in the bytes freed (conflux_get_circ_bytes_allocation). The set is as old
        as its streams' data."""
        return None

    def abandon(self, reason: int, message: str) -> None:
        """Out of memory: the set goes with its streams (the handler closes it next)."""
        self._teardown(CircuitError(message, reason))

    def _report_queued(self) -> None:
        delta = self.conflux.queued_bytes - self._accounted
        if not delta:
            return
        self._accounted += delta
        if self.account is not None:
            self.account.queued_changed(self, delta)

    @property
    def congestion_control(self) -> VegasController | None:
        """A leg's controller: every leg has one, so streams keep no windows of their own."""
        return self.conflux.legs[0].congestion if self.conflux.legs else None

    @property
    def rtt_ms(self) -> list[int]:
        """Each linked leg's RTT in milliseconds (CIRC events' CONFLUX_RTT)."""
        return [leg.rtt_usec // 1000 for leg in self.conflux.legs]

    def leg_rtt_usec(self, circuit: Circuit) -> int | None:
        """A linked leg's RTT (the LINK round trip, then its controller's smoothed RTT); None if not linked."""
        leg = self.conflux.leg(circuit)
        return None if leg is None else leg.rtt_usec

    # ------------------------------------------------------------------------------ linking

    def leg_launched(self) -> None:
        """A leg is being built for this set: the set waits for it before it is usable."""
        self._building += 1

    def leg_build_failed(self, error: CircuitError) -> None:
        """A leg announced with `leg_launched` failed before it was added."""
        self._building -= 1
        self._settle(error)

    def add_leg(self, circuit: Circuit) -> None:
        """conflux_circuit_has_opened: send LINK on an open leg, with the set's sequence numbers (0: the set
        has carried no stream; a leg opening for a set that has is closed)."""
        if self.state is TunnelState.CLOSED:
            raise CircuitError("the conflux set is closed")
        if self._building:
            self._building -= 1
        if self.carried_cells:
            # tor links new legs only to sets not yet in use (it relaunches legs that failed while linking): the
            # exit checks a LINK's numbers against what it delivered and the numbers the legs count from
            # (validate_unlinked_legs, cfx_add_leg), and cells still on their way make it tear the set down.
            circuit.close(DestroyReason.FINISHED, "its conflux set carried streams since the leg was launched")
            return
        link = ConfluxLink(self.nonce, self.conflux.max_seq_sent, self.conflux.last_seq_delivered, self.desired_ux)
        circuit.start_conflux_leg(self, link.encode())
        self._pending[circuit] = self.clock()

    def leg_linked(self, circuit: Circuit, data: bytes) -> None:
        """conflux_process_linked: check the LINKED, measure the leg's RTT, acknowledge, join the set."""
        sent_at = self._pending.pop(circuit, None)
        if sent_at is None:
            circuit.close(DestroyReason.PROTOCOL, "CONFLUX_LINKED on a leg that is not linking")
            return
        try:
            link = ConfluxLink.decode(data)
        except ConfluxError as exc:
            self._leg_refused(circuit, f"malformed CONFLUX_LINKED: {exc}")
            return
        if link.nonce != self.nonce:
            self._leg_refused(circuit, "CONFLUX_LINKED with another set's nonce")
            return
        if link.last_seqno_sent > self.conflux.last_seq_delivered:
            # validate_unlinked_legs: the exit sent more than we delivered; that data is lost.
            self._leg_refused(circuit, f"data loss: the exit sent up to {link.last_seqno_sent}, we delivered "
                                       f"{self.conflux.last_seq_delivered}")
            return
        rtt = self.clock() - sent_at
        if self.max_link_rtt is not None and rtt >= self.max_link_rtt:
            self._leg_refused(circuit, f"its LINK round trip took {rtt:.3f} s, above the circuit build timeout "
                                       f"({self.max_link_rtt:.3f} s)", DestroyReason.TIMEOUT)
            return
        rtt_usec = max(1, round(rtt * _USEC_PER_SECOND))
        circuit.send_relay(RelayCommand.CONFLUX_LINKED_ACK, 0, b"")
        # cfx_add_leg: the exit's numbers, seen from our side.
        self.conflux.add_leg(ConfluxLeg(circuit, circuit.congestion_control, rtt_usec,
                                        last_seq_sent=link.last_seqno_recv, last_seq_recv=link.last_seqno_sent))
        log.info("Conflux set %s: leg %#x to %s linked, RTT %d ms, %s scheduling.", self.nonce[:4].hex(),
                 circuit.circ_id, circuit.exit.describe(), rtt_usec // 1000, self.conflux.algorithm.value)
        if self.state is TunnelState.LINKED:
            self.owner.tunnel_linked(self)  # a leg in place of a lost one
        else:
            self._settle()

    def _leg_refused(self, circuit: Circuit, why: str, reason: int = DestroyReason.PROTOCOL) -> None:
        log.info("Conflux set %s: leg %#x refused: %s", self.nonce[:4].hex(), circuit.circ_id, why)
        circuit.close(reason, why)
        self._settle(CircuitError(why, reason))

    def link_timed_out(self, circuit: Circuit, timeout: float) -> None:
        """The owner's timer: a leg still waiting for its LINKED after `timeout` seconds is stalled and
        closed (the owner may launch another)."""
        if circuit in self._pending:
            del self._pending[circuit]
            self._leg_refused(circuit, f"no CONFLUX_LINKED within {timeout:.1f} s", DestroyReason.TIMEOUT)

    def _settle(self, error: CircuitError | None = None) -> None:
        """While linking, once no leg is building or waiting for LINKED: usable with a linked leg, torn down
        without one."""
        if self.state is not TunnelState.LINKING or self._building or self._pending:
            return
        if self.conflux.legs:
            self.state = TunnelState.LINKED
            self.owner.tunnel_linked(self)
        else:
            error = error or CircuitError("no leg of the conflux set linked")
            self._teardown(CircuitError(f"no leg of the conflux set linked: {error}", error.reason, error.remote))

    def leg_closed(self, circuit: Circuit, error: CircuitError) -> None:
        """A leg's circuit closed (DESTROY, its link, a timeout, our own close): linked_circuit_closed /
        unlinked_circuit_closed."""
        if self.state is TunnelState.CLOSED:
            return
        if self._pending.pop(circuit, None) is not None:
            self._settle(error)
            return
        if self.conflux.leg(circuit) is None:
            return  # refused at its LINKED, accounted for then
        if self.conflux.remove_leg(circuit) or not self.conflux.legs:
            self._teardown(CircuitError(f"conflux leg {circuit.circ_id:#x} closed: {error}", error.reason,
                                        error.remote))

    def _teardown(self, error: CircuitError) -> None:
        """conflux_mark_all_for_close: every leg goes, the streams end with `error`, nothing reordered is
        delivered."""
        if self.state is TunnelState.CLOSED:
            return
        self.state = TunnelState.CLOSED
        self.error = error
        self.conflux.clear()
        self._report_queued()
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.circuit_closed(error)
        for circuit in self.legs + self.pending_legs:
            circuit.close(DestroyReason.FINISHED, f"conflux set torn down: {error}")
        self._pending.clear()
        self.owner.tunnel_closed(self, error)

    def close(self, reason: int = DestroyReason.FINISHED, message: str = "closed") -> None:
        self._teardown(CircuitError(message, reason))

    # ------------------------------------------------------------------------------ cells in

    def leg_switch(self, circuit: Circuit, data: bytes) -> None:
        leg = self.conflux.leg(circuit)
        if leg is None:
            circuit.close(DestroyReason.PROTOCOL, "CONFLUX_SWITCH on a leg that is not linked")
            return
        try:
            self.conflux.switch_received(leg, data)
        except ConfluxError as exc:
            self._protocol_error(circuit, exc)

    def leg_cells(self, circuit: Circuit, entries: list[tuple], count: int) -> None:
        """`count` multiplexed cells from a leg, in its arrival order (entries as `ConfluxLegOwner.leg_cells`
        has them), numbered at once. Those now in sequence go to their streams with what they free from the
        out-of-order queue (DATA in runs per stream, as a circuit hands them over); those that came early are
        copied into the queue."""
        conflux = self.conflux
        leg = conflux.leg(circuit)
        if leg is None:
            circuit.close(DestroyReason.PROTOCOL, "stream cells on a conflux leg that is not linked")
            return
        try:
            in_order = conflux.run_received(leg, count)
        except ConfluxError as exc:
            self._protocol_error(circuit, exc)
            return
        if in_order:
            ready = entries if in_order == count else _first_cells(entries, in_order)
            for queued in conflux.dequeue():
                _append_entries(ready, queued)
            self._report_queued()
            self._deliver(ready)
            if in_order == count or self.state is TunnelState.CLOSED:
                return
            # The rest repeats numbers another leg brought, delivered from the queue just now: refused below.
            entries = []
        try:
            conflux.enqueue(leg, count - in_order, _owned_entries(entries))
        except ConfluxError as exc:
            self._protocol_error(circuit, exc)
            return
        self._report_queued()

    def _protocol_error(self, circuit: Circuit, exc: ConfluxError) -> None:
        """A leg's cells broke the sequence (or filled the queue): the whole set goes."""
        log.info("Conflux set %s: %s; tearing the set down.", self.nonce[:4].hex(), exc)
        self._teardown(CircuitError(f"conflux leg {circuit.circ_id:#x}: {exc}", exc.reason))

    def _deliver(self, entries: list[tuple]) -> None:
        """Cells in sequence order to their streams: DATA runs at once, other commands one by one."""
        streams = self.streams
        for command, stream_id, data in entries:
            if self.state is TunnelState.CLOSED:
                return
            stream = streams.get(stream_id)
            if stream is None:
                continue  # cells for streams already gone are late arrivals after our END: dropped
            if command == _DATA:
                stream.data_cells_received(data)
            else:
                stream.relay_received(command, data)

    def leg_window_opened(self, circuit: Circuit) -> None:
        for stream in list(self.streams.values()):
            stream.circuit_window_opened()

    # ------------------------------------------------------------------------------ cells out

    def _refresh_blocked(self) -> None:
        for leg in self.conflux.legs:
            leg.blocked = leg.circuit.channel.paused or not leg.circuit.is_open

    @property
    def package_room(self) -> int:
        """DATA cells the scheduler may send now: the room of every leg it would fill (LowRTT), or of the
        lowest-RTT leg alone (MinRTT)."""
        if self.state is not TunnelState.LINKED:
            return 0
        self._refresh_blocked()
        leg = self.conflux.next_leg()
        if leg is None:
            return 0
        if self.conflux.algorithm is ConfluxAlgorithm.MIN_RTT:
            return leg.circuit.package_room
        return sum(other.circuit.package_room for other in self.conflux.legs if other.ready_to_send)

    def send_data_many(self, stream_id: int, chunks: list[bytes], urgent: bool = False) -> None:
        """DATA cells, each on the leg the scheduler picks: runs per leg, a SWITCH where the leg changes
        (`urgent`: each run written to its link at once)."""
        if self.state is not TunnelState.LINKED:
            raise CircuitError("the conflux set is not linked")
        self._refresh_blocked()
        sent = 0
        while sent < len(chunks):
            choice = self.conflux.choose_leg(_DATA)
            if choice is None:
                raise CircuitError("no conflux leg has room for these cells")
            circuit = choice.leg.circuit
            if choice.switch_seq is not None:
                circuit.send_relay(RelayCommand.CONFLUX_SWITCH, 0, encode_switch(choice.switch_seq))
            count = min(len(chunks) - sent, circuit.package_room)
            if count <= 0:
                raise CircuitError("no conflux leg has room for these cells")
            circuit.send_data_many(stream_id, chunks[sent:sent + count], urgent)
            self.conflux.cell_sent(choice.leg, _DATA, count)
            sent += count
            self._refresh_blocked()

    def send_relay(self, command: int, stream_id: int, data: bytes) -> None:
        """A stream's BEGIN, END, RESOLVE...: multiplexed, on the scheduler's leg (the current one when none
        has room)."""
        if self.state is not TunnelState.LINKED:
            raise CircuitError("the conflux set is not linked")
        self._refresh_blocked()
        choice = self.conflux.choose_leg(command)
        if choice is None:  # only DATA waits, and DATA goes through send_data_many
            raise CircuitError("no conflux leg may send now")
        circuit = choice.leg.circuit
        if choice.switch_seq is not None:
            circuit.send_relay(RelayCommand.CONFLUX_SWITCH, 0, encode_switch(choice.switch_seq))
        circuit.send_relay(command, stream_id, data)
        self.conflux.cell_sent(choice.leg, command)

    # ------------------------------------------------------------------------------ streams

    def detach_stream(self, stream_id: int) -> None:
        if self.streams.pop(stream_id, None) is not None:
            self._log_legs(stream_id)

    def end_stream(self, stream_id: int, reason: int = EndReason.MISC) -> None:
        self.detach_stream(stream_id)
        if self.state is TunnelState.LINKED:
            self.send_relay(RelayCommand.END, stream_id, encode_end_body(reason))

    def _log_legs(self, stream_id: int) -> None:
        """One line per finished stream: how the set's cells so far went over its legs."""
        log.info("Conflux set %s: stream %d done; multiplexed cells received per leg %s, sent per leg %s, "
                 "%d switches sent.", self.nonce[:4].hex(), stream_id,
                 {f"{leg.circuit.circ_id:#x}": leg.cells_received for leg in self.conflux.legs},
                 {f"{leg.circuit.circ_id:#x}": leg.cells_sent for leg in self.conflux.legs},
                 self.conflux.switches_sent)


def _first_cells(entries: list[tuple], cells: int) -> list[tuple]:
    """The entries of the first `cells` cells (a DATA run cut where the count falls)."""
    head = []
    for command, stream_id, data in entries:
        size = len(data) if command == _DATA else 1
        if cells < size:
            if cells:
                head.append((command, stream_id, data[:cells]))
            return head
        head.append((command, stream_id, data))
        cells -= size
    return head


def _append_entries(entries: list[tuple], more: list[tuple]) -> None:
    """`more` after `entries`, a DATA run of one stream that spans both made one."""
    if entries and more:
        command, stream_id, data = entries[-1]
        if command == _DATA and more[0][0] == _DATA and more[0][1] == stream_id:
            entries[-1] = (command, stream_id, data + more[0][2])
            more = more[1:]
    entries.extend(more)


def _owned_entries(entries: list[tuple]) -> list[tuple]:
    """Entries whose DATA no longer refers to the read's buffer: cells that wait in the out-of-order queue."""
    return [(command, stream_id, [bytes(chunk) for chunk in data]) if command == _DATA else (command, stream_id, data)
            for command, stream_id, data in entries]
