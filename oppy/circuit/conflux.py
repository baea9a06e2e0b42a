"""Conflux, sans IO: one stream's cells over a linked set of circuits to the same exit (proposal 329;
tor-spec "Conflux"), as tor 0.4.8/0.4.9 runs it (conflux.c, conflux_cell.c, conflux_pool.c, conflux_params.c).

A client links two or more circuits ("legs") that negotiated congestion control with the same exit: each
leg sends RELAY_CONFLUX_LINK with the set's 32-byte nonce, the exit answers RELAY_CONFLUX_LINKED and the
client acknowledges with RELAY_CONFLUX_LINKED_ACK. From then on the multiplexed relay commands (stream data
and stream control: `should_multiplex`) carry an implicit absolute sequence number per direction: every
such cell sent on a leg counts one on it. The sender moves from one leg to another with RELAY_CONFLUX_SWITCH,
which advances the new leg's number by a relative amount (the difference to the leg it leaves); the
receiver delivers cells in sequence order and holds the ones that arrive early in a bounded out-of-order
queue.

`ConfluxSet` is one linked set's state: the legs' sequence numbers, the sender's choice of leg for the
scheduling algorithm the peer's UX asks for (read from each leg's congestion controller: cwnd, inflight,
RTT), and the reordering. It sends nothing: the caller sends what it says on the leg it names.
"""

from __future__ import annotations

import bisect
import enum
import logging
import struct
from dataclasses import dataclass
from typing import Generic, Hashable, Mapping, Protocol, TypeVar

from oppy.cell.commands import CELL_PAYLOAD_LEN, DestroyReason, RelayCommand
from oppy.netdoc.params import ConsensusParam

log = logging.getLogger(__name__)

# tor-spec "Conflux" / trunnel conflux.trunnel: the only LINK/LINKED version.
CONFLUX_LINK_VERSION = 0x01
# tor-spec "Conflux": the set's nonce is 32 random bytes.
CONFLUX_NONCE_LEN = 32
# conflux.trunnel trn_cell_conflux_link_payload_v1: nonce, u64 last_seqno_sent, u64 last_seqno_recv, u8 ux.
_LINK_V1 = struct.Struct(">32sQQB")
# conflux.trunnel trn_cell_conflux_switch: u32 seqnum (relative).
_SWITCH = struct.Struct(">I")
_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1
_UINT8_MAX = 255


class ConfluxError(Exception):
    """A conflux cell or state change the protocol forbids; `reason` is the DESTROY reason to close with."""

    def __init__(self, message: str, reason: int = DestroyReason.PROTOCOL) -> None:
        super().__init__(message)
        self.reason = reason


class ConfluxQueueFull(ConfluxError):
    """The out-of-order queue would exceed its limit: the set is torn down (RESOURCELIMIT)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, DestroyReason.RESOURCELIMIT)


class DesiredUX(enum.IntEnum):
    """conflux.trunnel CONFLUX_UX_*: what the sender of LINK/LINKED asks the other side to optimize."""

    NO_OPINION = 0
    MIN_LATENCY = 1
    LOW_MEM_LATENCY = 2
    HIGH_THROUGHPUT = 3
    LOW_MEM_THROUGHPUT = 4


# tor(1) ConfluxClientUX: the option's values and the UX each puts in the LINK cell (config.c).
CLIENT_UX_NAMES: dict[str, DesiredUX] = {
    "throughput": DesiredUX.HIGH_THROUGHPUT,
    "latency": DesiredUX.MIN_LATENCY,
    "throughput_lowmem": DesiredUX.LOW_MEM_THROUGHPUT,
    "latency_lowmem": DesiredUX.LOW_MEM_LATENCY,
}


class ConfluxAlgorithm(enum.Enum):
    """conflux.h CONFLUX_ALG_*: how a sender picks the leg for the next multiplexed cell."""

    MIN_RTT = "minrtt"  # only the lowest-RTT leg, when it has cwnd room (latency; no reordering)
    LOW_RTT = "lowrtt"  # the lowest-RTT leg that has cwnd room (throughput; fills every leg)


def algorithm_for_ux(ux: int) -> ConfluxAlgorithm:
    """conflux_pool.c conflux_choose_algorithm: the low-memory UXs have no algorithm of their own yet and
    use MinRTT, which switches least."""
    if ux in (DesiredUX.NO_OPINION, DesiredUX.HIGH_THROUGHPUT):
        return ConfluxAlgorithm.LOW_RTT
    return ConfluxAlgorithm.MIN_RTT


# conflux.c conflux_should_multiplex: the relay commands that belong to the set's single sequence (their
# order relative to each other must survive the legs); every other command stays on the leg it came on.
MULTIPLEXED_COMMANDS = frozenset({
    RelayCommand.BEGIN, RelayCommand.DATA, RelayCommand.END, RelayCommand.CONNECTED,
    RelayCommand.RESOLVE, RelayCommand.RESOLVED, RelayCommand.XOFF, RelayCommand.XON,
})


def should_multiplex(command: int) -> bool:
    """True for the commands that take a sequence number (conflux_should_multiplex); an unknown command is
    per leg, as tor treats it."""
    return command in MULTIPLEXED_COMMANDS


# ------------------------------------------------------------------------------------------------ cells


@dataclass(frozen=True)
class ConfluxLink:
    """The body of RELAY_CONFLUX_LINK and RELAY_CONFLUX_LINKED (the same format; conflux_cell.c)."""

    nonce: bytes
    last_seqno_sent: int
    last_seqno_recv: int
    desired_ux: int = DesiredUX.HIGH_THROUGHPUT
    version: int = CONFLUX_LINK_VERSION

    def encode(self) -> bytes:
        if len(self.nonce) != CONFLUX_NONCE_LEN:
            raise ConfluxError(f"conflux nonce must be {CONFLUX_NONCE_LEN} bytes, got {len(self.nonce)}")
        if not (0 <= self.last_seqno_sent <= _UINT64_MAX and 0 <= self.last_seqno_recv <= _UINT64_MAX):
            raise ConfluxError("conflux sequence numbers must fit 64 bits")
        if self.desired_ux not in DesiredUX.__members__.values():
            raise ConfluxError(f"unknown conflux desired UX {self.desired_ux}")
        return bytes([self.version]) + _LINK_V1.pack(self.nonce, self.last_seqno_sent, self.last_seqno_recv,
                                                     self.desired_ux)

    @classmethod
    def decode(cls, body: bytes) -> "ConfluxLink":
        """Parse a LINK/LINKED body (conflux_cell_parse_link): version 1 only, its payload at least the v1
        fields (more is ignored, as trunnel ignores it), a known UX (trunnel's IN constraint)."""
        if not body:
            raise ConfluxError("empty CONFLUX_LINK/LINKED body")
        version = body[0]
        if version != CONFLUX_LINK_VERSION:
            raise ConfluxError(f"unsupported CONFLUX_LINK/LINKED version {version}")
        if len(body) - 1 < _LINK_V1.size:
            raise ConfluxError(f"truncated CONFLUX_LINK/LINKED body: {len(body)} bytes, need {1 + _LINK_V1.size}")
        nonce, sent, received, ux = _LINK_V1.unpack_from(body, 1)
        if ux not in DesiredUX.__members__.values():
            raise ConfluxError(f"unknown desired UX {ux} in CONFLUX_LINK/LINKED")
        return cls(nonce, sent, received, ux, version)


def encode_switch(relative_seq: int) -> bytes:
    """RELAY_CONFLUX_SWITCH: the relative sequence number (conflux_send_switch_command)."""
    if not 0 <= relative_seq <= _UINT32_MAX:
        raise ConfluxError(f"relative sequence number {relative_seq} does not fit 32 bits")
    return _SWITCH.pack(relative_seq)


def decode_switch(body: bytes) -> int:
    """The relative sequence number of a RELAY_CONFLUX_SWITCH (tor pads the cell; the rest is ignored)."""
    if len(body) < _SWITCH.size:
        raise ConfluxError(f"truncated CONFLUX_SWITCH body: {len(body)} bytes")
    return _SWITCH.unpack_from(body)[0]


# ------------------------------------------------------------------------------------ consensus params

# conflux_params.c: defaults and bounds as networkstatus_get_param clamps them.
CFX_ENABLED = ConsensusParam("cfx_enabled", 1, 0, 1)
# A percentage scaled by 100 (6000 = 60.00%) of the exits that must support conflux for a full prebuilt pool.
CFX_LOW_EXIT_THRESHOLD = ConsensusParam("cfx_low_exit_threshold", 6000, 0, 10000)
CFX_MAX_LINKED_SET = ConsensusParam("cfx_max_linked_set", 10, 0, _UINT8_MAX)
CFX_MAX_PREBUILT_SET = ConsensusParam("cfx_max_prebuilt_set", 3, 0, _UINT8_MAX)
CFX_MAX_UNLINKED_LEG_RETRY = ConsensusParam("cfx_max_unlinked_leg_retry", 3, 0, _UINT8_MAX)
CFX_NUM_LEGS_SET = ConsensusParam("cfx_num_legs_set", 2, 0, _UINT8_MAX)
CFX_MAX_LEGS_SET = ConsensusParam("cfx_max_legs_set", 8, 3, _UINT8_MAX)
CFX_SEND_PCT = ConsensusParam("cfx_send_pct", 100, 0, 255)
CFX_DRAIN_PCT = ConsensusParam("cfx_drain_pct", 0, 0, 255)
_LOW_EXIT_THRESHOLD_SCALE = CFX_LOW_EXIT_THRESHOLD.high


@dataclass(frozen=True)
class ConfluxParams:
    """The conflux parameters of one consensus (tor's defaults when it names none), with the share of the
    exits (not BadExit) that list Conflux=1."""

    enabled: bool = bool(CFX_ENABLED.default)
    low_exit_threshold: int = CFX_LOW_EXIT_THRESHOLD.default
    max_linked_set: int = CFX_MAX_LINKED_SET.default
    max_prebuilt_set: int = CFX_MAX_PREBUILT_SET.default
    max_unlinked_leg_retry: int = CFX_MAX_UNLINKED_LEG_RETRY.default
    num_legs_set: int = CFX_NUM_LEGS_SET.default
    max_legs_set: int = CFX_MAX_LEGS_SET.default
    send_pct: int = CFX_SEND_PCT.default
    drain_pct: int = CFX_DRAIN_PCT.default
    exit_conflux_ratio: float = 0.0

    @classmethod
    def from_consensus(cls, params: Mapping[str, int], exit_conflux_ratio: float = 0.0) -> "ConfluxParams":
        """conflux_params_new_consensus: each value clamped into tor's bounds."""
        return cls(bool(CFX_ENABLED.read(params)), CFX_LOW_EXIT_THRESHOLD.read(params),
                   CFX_MAX_LINKED_SET.read(params), CFX_MAX_PREBUILT_SET.read(params),
                   CFX_MAX_UNLINKED_LEG_RETRY.read(params), CFX_NUM_LEGS_SET.read(params),
                   CFX_MAX_LEGS_SET.read(params), CFX_SEND_PCT.read(params), CFX_DRAIN_PCT.read(params),
                   exit_conflux_ratio)

    @property
    def max_prebuilt(self) -> int:
        """conflux_params_get_max_prebuilt: none without a conflux exit, one while fewer than the threshold's
        share of the exits support it, else cfx_max_prebuilt_set."""
        if self.exit_conflux_ratio <= 0.0:
            return 0
        if self.exit_conflux_ratio < self.low_exit_threshold / _LOW_EXIT_THRESHOLD_SCALE:
            return 1
        return self.max_prebuilt_set

    @property
    def max_leg_launches(self) -> int:
        """launch_leg_is_allowed: the legs one set may launch in all (its size plus the retries)."""
        return self.num_legs_set + self.max_unlinked_leg_retry


def exit_conflux_ratio(exits: list[tuple[bool, bool, bool]]) -> float:
    """conflux_params.c count_exit_with_conflux_support over (is_exit, is_bad_exit, supports_conflux)."""
    usable = [supports for is_exit, bad, supports in exits if is_exit and not bad]
    return sum(usable) / len(usable) if usable else 0.0


def conflux_enabled(option: bool | None, params: ConfluxParams, congestion_control: bool) -> bool:
    """conflux_is_enabled: never without congestion control; ConfluxEnabled 0/1 overrides the consensus,
    auto (None) follows cfx_enabled."""
    if not congestion_control:
        return False
    return params.enabled if option is None else option


# ------------------------------------------------------------------------------------------- the set


class LegCongestion(Protocol):
    """What the scheduler reads of a leg's last-hop congestion control (`VegasController`)."""

    cwnd: int
    inflight: int
    in_slow_start: bool
    sendme_inc: int
    ewma_rtt_usec: int


LegKey = TypeVar("LegKey", bound=Hashable)


class ConfluxLeg(Generic[LegKey]):
    """One linked circuit of a set: its absolute sequence numbers and the congestion state it sends with.

    `circuit` is the caller's handle (the leg is found by it); `rtt_usec` is the LINK→LINKED round trip until
    the congestion controller has a smoothed RTT (conflux_update_rtt takes ewma_rtt_usec once non-zero).
    """

    __slots__ = ("circuit", "congestion", "link_rtt_usec", "last_seq_sent", "last_seq_recv", "blocked",
                 "cells_sent", "cells_received")

    def __init__(self, circuit: LegKey, congestion: LegCongestion, link_rtt_usec: int,
                 last_seq_sent: int = 0, last_seq_recv: int = 0) -> None:
        self.circuit = circuit
        self.congestion = congestion
        self.link_rtt_usec = link_rtt_usec
        self.last_seq_sent = last_seq_sent
        self.last_seq_recv = last_seq_recv
        #: True while the leg's channel is too full to take cells (circuit_blocked_on_n_chan).
        self.blocked = False
        self.cells_sent = 0
        self.cells_received = 0

    def __repr__(self) -> str:
        return (f"<ConfluxLeg {self.circuit!r} sent={self.last_seq_sent} recv={self.last_seq_recv} "
                f"rtt={self.rtt_usec}us>")

    @property
    def rtt_usec(self) -> int:
        return self.congestion.ewma_rtt_usec or self.link_rtt_usec

    @property
    def ready_to_send(self) -> bool:
        """circuit_ready_to_send: room in the cwnd and a channel that takes cells."""
        return self.congestion.inflight < self.congestion.cwnd and not self.blocked


@dataclass(frozen=True)
class SendChoice(Generic[LegKey]):
    """Where the next multiplexed cell goes: `leg`, after a SWITCH carrying `switch_seq` when not None."""

    leg: ConfluxLeg[LegKey]
    switch_seq: int | None = None


Item = TypeVar("Item")

# conflux.c counts each queued cell as a cell_t (a 4-byte circuit id, the command, the payload); so does oppy.
OOO_CELL_COST = 4 + 1 + CELL_PAYLOAD_LEN
# oppy's default limit of one set's out-of-order queue: 8 MB of cells (16k cells: a few cwnds of a fast leg).
DEFAULT_MAX_OOO_BYTES = 8 * 1024 * 1024


class ConfluxSet(Generic[LegKey, Item]):
    """One linked set: the legs, the sender's leg choice and the receiver's reordering.

    Sending: `choose_leg(command)` names the leg for a cell (and a SWITCH to send first on it);
    `cell_sent(leg, command)` counts it once sent. Receiving: `switch_received(leg, body)`, and for the
    multiplexed cells that came in a row on a leg `run_received(leg, count)`, which numbers them at once and
    says how many of them are next in sequence; those are delivered, then what `dequeue()` gives; the rest came
    early and wait as one item (`enqueue`). `cell_received(leg, item)` is the same for a single cell.
    """

    def __init__(self, nonce: bytes, algorithm: ConfluxAlgorithm = ConfluxAlgorithm.LOW_RTT,
                 max_ooo_bytes: int = DEFAULT_MAX_OOO_BYTES) -> None:
        if len(nonce) != CONFLUX_NONCE_LEN:
            raise ConfluxError(f"conflux nonce must be {CONFLUX_NONCE_LEN} bytes, got {len(nonce)}")
        self.nonce = nonce
        self.algorithm = algorithm
        self.max_ooo_bytes = max_ooo_bytes
        self.legs: list[ConfluxLeg[LegKey]] = []
        self.curr_leg: ConfluxLeg[LegKey] | None = None
        self.prev_leg: ConfluxLeg[LegKey] | None = None
        self.last_seq_delivered = 0
        self.switches_sent = 0
        # The out-of-order queue: runs of cells that came early, each the item its cells wait as, in sequence
        # order: the first and last numbers of each and the items, side by side (runs never overlap).
        self._ooo_first: list[int] = []
        self._ooo_last: list[int] = []
        self._ooo_items: list[Item] = []
        self._ooo_cells = 0

    def __repr__(self) -> str:
        return f"<ConfluxSet {self.nonce[:4].hex()} legs={len(self.legs)} ooo={self._ooo_cells}>"

    @property
    def queued_bytes(self) -> int:
        """What the out-of-order queue holds, counted as tor counts it (per cell)."""
        return self._ooo_cells * OOO_CELL_COST

    def leg(self, circuit: LegKey) -> ConfluxLeg[LegKey] | None:
        for leg in self.legs:
            if leg.circuit == circuit:
                return leg
        return None

    def add_leg(self, leg: ConfluxLeg[LegKey]) -> None:
        """cfx_add_leg: a leg that linked (its numbers from the peer's LINKED, sent and received swapped)."""
        if self.leg(leg.circuit) is not None:
            raise ConfluxError(f"{leg.circuit!r} is already a leg of this set", DestroyReason.INTERNAL)
        self.legs.append(leg)

    def remove_leg(self, circuit: LegKey) -> bool:
        """cfx_del_leg: drop a closed leg. True when the whole set must go: the leg had data in flight, the
        highest sequence number sent or received, or was the one being sent on (tor resumes nothing)."""
        leg = self.leg(circuit)
        if leg is None:
            return False
        teardown = leg.congestion.inflight >= leg.congestion.sendme_inc
        self.legs.remove(leg)
        if self.legs and (max(other.last_seq_sent for other in self.legs) < leg.last_seq_sent
                          or max(other.last_seq_recv for other in self.legs) < leg.last_seq_recv):
            teardown = True
        if self.curr_leg is leg:
            self.curr_leg = None
            teardown = True
        if self.prev_leg is leg:
            self.prev_leg = None
        return teardown

    @property
    def max_seq_sent(self) -> int:
        return max((leg.last_seq_sent for leg in self.legs), default=0)

    @property
    def max_seq_recv(self) -> int:
        return max((leg.last_seq_recv for leg in self.legs), default=0)

    # ------------------------------------------------------------------------------------ sending

    def _pick_first_leg(self) -> ConfluxLeg[LegKey]:
        """conflux_pick_first_leg: the lowest non-zero RTT, else the first leg."""
        measured = [leg for leg in self.legs if leg.rtt_usec > 0]
        return min(measured, key=lambda leg: leg.rtt_usec) if measured else self.legs[0]

    def _min_rtt_leg(self) -> ConfluxLeg[LegKey]:
        return min(self.legs, key=lambda leg: leg.rtt_usec)

    def next_leg(self) -> ConfluxLeg[LegKey] | None:
        """conflux_decide_next_circ: the leg the algorithm would send the next cell on, None when none may
        send now. (tor's conflux_can_switch never holds a leg back: it leaves cells_until_switch at 0, so
        cfx_send_pct and cfx_drain_pct are read but change nothing; oppy does the same.)"""
        if not self.legs:
            raise ConfluxError("conflux set without legs", DestroyReason.INTERNAL)
        if self.curr_leg is None:
            self.curr_leg = self._pick_first_leg()
        if self.algorithm is ConfluxAlgorithm.MIN_RTT:
            leg = self._min_rtt_leg()
            return leg if leg.ready_to_send else None
        ready = [leg for leg in self.legs if leg.ready_to_send]
        return min(ready, key=lambda leg: leg.rtt_usec) if ready else None

    def choose_leg(self, command: int) -> SendChoice[LegKey] | None:
        """conflux_decide_circ_for_send for a multiplexed command: the leg to send on, with the SWITCH to send
        first when it is not the current leg. None: no leg may send DATA now. Other multiplexed commands go
        on the current leg when no leg has room, so that they stay in order."""
        leg = self.next_leg()
        assert self.curr_leg is not None
        if leg is None:
            if command == RelayCommand.DATA:
                return None
            return SendChoice(self.curr_leg)
        if leg is self.curr_leg:
            return SendChoice(leg)
        self.prev_leg, self.curr_leg = self.curr_leg, leg
        relative = self.prev_leg.last_seq_sent - leg.last_seq_sent
        if relative < 0 or relative > _UINT32_MAX:
            raise ConfluxError(f"conflux legs' sequence numbers diverged by {relative}", DestroyReason.INTERNAL)
        leg.last_seq_sent = self.prev_leg.last_seq_sent
        self.switches_sent += 1
        return SendChoice(leg, relative)

    def cell_sent(self, leg: ConfluxLeg[LegKey], command: int, count: int = 1) -> None:
        """conflux_note_cell_sent: `count` cells of a multiplexed command went out on `leg`."""
        if should_multiplex(command):
            leg.last_seq_sent += count
            leg.cells_sent += count

    # ---------------------------------------------------------------------------------- receiving

    def switch_received(self, leg: ConfluxLeg[LegKey], body: bytes) -> int:
        """conflux_process_switch_command: the peer moved to `leg`; its sequence number jumps by the relative
        amount (the SWITCH itself takes no number)."""
        relative = decode_switch(body)
        leg.last_seq_recv += relative
        if leg.last_seq_recv > _UINT64_MAX:
            raise ConfluxError("conflux sequence number overflow")
        return relative

    def run_received(self, leg: ConfluxLeg[LegKey], count: int) -> int:
        """conflux_process_cell for `count` multiplexed cells that came in a row on `leg`, numbered with one
        update: how many of them, from the first, are next in sequence (counted delivered: the caller delivers
        them, then what `dequeue` gives). The others came early: the caller queues them with `enqueue` (which
        refuses them when they run into numbers already queued: a queued run may be next after this one's
        first cells, and then the rest repeat numbers).

        Raises ConfluxError when the first cell's number is at or below the last delivered."""
        first = leg.last_seq_recv + 1
        leg.last_seq_recv += count
        leg.cells_received += count
        delivered = self.last_seq_delivered
        if first != delivered + 1:
            if first <= delivered:
                raise ConfluxError(f"conflux cell with sequence number {first} at or below the last delivered "
                                   f"({delivered})")
            return 0
        in_order = count
        if self._ooo_first and self._ooo_first[0] < first + count:
            in_order = self._ooo_first[0] - first
        self.last_seq_delivered = delivered + in_order
        return in_order

    def dequeue(self) -> list[Item]:
        """conflux_dequeue_cell: the queued items now next in sequence, in order (counted delivered)."""
        firsts = self._ooo_first
        ready = []
        while firsts and firsts[0] == self.last_seq_delivered + 1:
            first = firsts.pop(0)
            self.last_seq_delivered = last = self._ooo_last.pop(0)
            self._ooo_cells -= last - first + 1
            ready.append(self._ooo_items.pop(0))
        return ready

    def enqueue(self, leg: ConfluxLeg[LegKey], count: int, item: Item) -> None:
        """The last `count` cells numbered on `leg` came early: they wait as `item` until the cells before them
        are delivered.

        Raises ConfluxError when one of their numbers is at or below the last delivered or queued already,
        ConfluxQueueFull when they would take the queue past its limit."""
        last = leg.last_seq_recv
        first = last - count + 1
        if first <= self.last_seq_delivered:
            raise ConfluxError(f"conflux cell with sequence number {first} at or below the last delivered "
                               f"({self.last_seq_delivered})")
        firsts = self._ooo_first
        index = bisect.bisect_left(firsts, first)
        duplicate = None
        if index and self._ooo_last[index - 1] >= first:
            duplicate = first
        elif index < len(firsts) and firsts[index] <= last:
            duplicate = firsts[index]
        # The cells that still fit. Whichever error a cell of the run meets first is the one raised (one at a
        # time, the cells before it would have been queued).
        room = self.max_ooo_bytes // OOO_CELL_COST - self._ooo_cells
        if duplicate is not None and duplicate - first <= room:
            raise ConfluxError(f"two conflux cells with sequence number {duplicate}")
        if count > room:
            raise ConfluxQueueFull(f"conflux out-of-order queue full: {self._ooo_cells} cells "
                                   f"({self.queued_bytes} bytes) waiting for sequence number "
                                   f"{self.last_seq_delivered + 1}, {count} more came, limit "
                                   f"{self.max_ooo_bytes} bytes")
        firsts.insert(index, first)
        self._ooo_last.insert(index, last)
        self._ooo_items.insert(index, item)
        self._ooo_cells += count

    def cell_received(self, leg: ConfluxLeg[LegKey], item: Item) -> list[Item]:
        """One multiplexed cell on `leg` (a run of one): the items now in order (this one and those queued
        behind it), or none when it arrived early (it is queued)."""
        if self.run_received(leg, 1):
            return [item, *self.dequeue()]
        self.enqueue(leg, 1, item)
        return []

    def clear(self) -> int:
        """Drop the out-of-order queue (the set is torn down); the bytes it held."""
        held = self.queued_bytes
        self._ooo_first.clear()
        self._ooo_last.clear()
        self._ooo_items.clear()
        self._ooo_cells = 0
        return held
