"""Circuit management: every circuit the client builds, each with a purpose, and which one carries which stream.

The rules are tor's (path-spec "When we build", tor-client-checklist.md section 6): clean circuits are built
ahead of demand so a first request does not wait for a build; a stream goes on an open circuit whose exit
allows its port, compatible by its port's isolation flags (oppy.circuit.isolation), not dirty for longer than
MaxCircuitDirtiness, built with Stable relays when the port is a long-lived one; a stream without CONNECTED
after 10 s (15 s from the third try), or refused by a retriable END, is detached and retried on another circuit.

A circuit through a guard keeps the guard choice its path came with (guard-spec 4.6-4.9): its outcome is
reported on it, and a circuit through a non-primary guard waits, built but unused (GUARD_WAIT), until no better
guard can be had; one that waits too long is closed.

What happens to circuits is told to observers as typed events (:class:`CircuitLaunched` ...
:class:`CircuitClosed`, :class:`StreamChanged`, :class:`StreamFlowChanged`), whatever the circuit's purpose.
"""

from __future__ import annotations

import enum
import itertools
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Protocol, Union

from twisted.internet import defer, reactor as default_reactor, task

from oppy.cell.commands import DestroyReason, EndReason
from oppy.circuit.build import build_circuit
from oppy.circuit.build_timeout import DEFAULT_ROUTE_LEN, CircuitBuildTimes
from oppy.circuit.circuit import Circuit, CircuitError
from oppy.circuit.conflux import (
    CLIENT_UX_NAMES,
    CONFLUX_NONCE_LEN,
    DEFAULT_MAX_OOO_BYTES,
    ConfluxParams,
    conflux_enabled,
    exit_conflux_ratio,
)
from oppy.circuit.congestion import CongestionParams
from oppy.circuit.isolation import CircuitIsolation, IsolationValues, StreamIsolation
from oppy.circuit.linked import ConfluxTunnel, TunnelState
from oppy.circuit.padding import (
    CircuitPadding,
    CircuitPaddingOptions,
    DefaultCircuitPaddingOptions,
    PaddingGate,
    purpose_for_hs_state,
)
from oppy.netdoc.relay import RelayTarget
from oppy.path.chooser import PathChooser
from oppy.path.guards import GuardChoice, GuardCircuitState, NoGuardAvailableError
from oppy.stream.stream import QueueAccount, Stream, StreamEnd, StreamKind, StreamSink, StreamState
from oppy.stream.xon_xoff import FlowControlEvent, FlowControlParams

log = logging.getLogger(__name__)

# path-spec / tor's MaxCircuitDirtiness default: no new streams on a circuit first used longer ago.
DEFAULT_MAX_CIRCUIT_DIRTINESS = 600.0
# tor builds one clean exit circuit at start-up and keeps about two clean ones for the ports in use.
DEFAULT_PREEMPTIVE_CIRCUITS = 2
PREEMPTIVE_PORT = 80
# connection_edge.c compute_retry_timeout: 10 s for the first two tries, 15 s after.
STREAM_CONNECT_TIMEOUTS = (10.0, 10.0, 15.0)
MAX_STREAM_ATTEMPTS = 4
# A resolve failure is retried this many times before it is believed (connection_edge.c MAX_RESOLVE_FAILURES).
MAX_RESOLVE_FAILURES = 3
# relay.c edge_reason_is_retriable: the END reasons that mean "try another circuit".
RETRIABLE_END_REASONS = frozenset((EndReason.HIBERNATING, EndReason.RESOURCELIMIT, EndReason.EXITPOLICY,
                                   EndReason.RESOLVEFAILED, EndReason.MISC, EndReason.NOROUTE))
# tor's NewCircuitPeriod default: how often circuits too dirty (or marked unusable) and without streams are
# closed (circuituse.c circuit_expire_old_circs_as_needed).
NEW_CIRCUIT_PERIOD = 30.0
#: oppy's own: after a conflux set is torn down without ever linking (its first hop unreachable, say a dead
#: pluggable transport), no new set is prebuilt for 1 s, doubling up to 60 s until a set links; without it the
#: failures come back within milliseconds and each tells the guard (or the only bridge) it is down.
CONFLUX_RELAUNCH_BACKOFF = (1.0, 60.0)
# tor's SocksTimeout default: how long a stream may wait for a controller to attach it, or for a guard that
# can start its circuit.
DEFAULT_UNATTACHED_TIMEOUT = 120.0
# mainloop.c: once a second tor attaches (or launches circuits for) the streams still waiting for a circuit
# (circuit_build_needed_circs -> connection_ap_rescan_and_attach_pending).
PENDING_STREAM_RESCAN_INTERVAL = 1.0
# How many circuits may be building at once (tor's MaxClientCircuitsPending default).
DEFAULT_MAX_PENDING_CIRCUITS = 32
# mainloop.c: tor looks once a second whether circuits are wanted, test circuits for the build timeout too.
LEARNING_CHECK_INTERVAL = 1.0
# How often circuits waiting for a better guard are looked at again (tor does it every second:
# circuit_upgrade_circuits_from_guard_wait and circuit_expire_waiting_for_better_guard).
GUARD_WAIT_CHECK_INTERVAL = 1.0


class CircuitStatus(enum.Enum):
    """The states the control port's CIRC events report (control-spec "CIRC")."""

    LAUNCHED = "LAUNCHED"
    EXTENDED = "EXTENDED"
    BUILT = "BUILT"
    # Built through a non-primary guard: it carries nothing until no better guard can be had.
    GUARD_WAIT = "GUARD_WAIT"
    FAILED = "FAILED"
    CLOSED = "CLOSED"


class CircuitPurpose(enum.Enum):
    """What a circuit is for (tor's CIRCUIT_PURPOSE_*). :attr:`controller_name` is the PURPOSE of its CIRC
    events (control-spec "CIRC"; tor circuit_purpose_to_controller_string)."""

    #: Exit circuits for client streams (C_GENERAL).
    GENERAL = "general"
    #: One-hop circuits carrying BEGIN_DIR to a directory cache (tor: C_GENERAL with ONEHOP_TUNNEL).
    DIRECTORY = "directory"
    #: Built on a controller's EXTENDCIRCUIT; never chosen for streams on oppy's own.
    CONTROLLER = "controller"
    #: Onion-service client circuits, not built yet: descriptor fetches, introduction, rendezvous.
    HS_CLIENT_HSDIR = "hs_client_hsdir"
    HS_CLIENT_INTRO = "hs_client_intro"
    HS_CLIENT_REND = "hs_client_rend"
    #: Conflux legs (prop 329), not built yet: before and after they are linked into a set.
    CONFLUX_UNLINKED = "conflux_unlinked"
    CONFLUX_LINKED = "conflux_linked"

    @property
    def controller_name(self) -> str:
        return "GENERAL" if self is CircuitPurpose.DIRECTORY else self.name

    @property
    def is_onion_service(self) -> bool:
        return self in (CircuitPurpose.HS_CLIENT_HSDIR, CircuitPurpose.HS_CLIENT_INTRO, CircuitPurpose.HS_CLIENT_REND)


#: The purposes tor's client padding machines apply to (circuitpadding_machines.c): introduction and rendezvous.
PADDED_PURPOSES = frozenset((CircuitPurpose.HS_CLIENT_INTRO, CircuitPurpose.HS_CLIENT_REND))


class OnionServiceCircuitUser(Protocol):
    """Who launched an onion-service circuit (the onion-service client): it hears the messages the circuit's
    last hop sends for it (RENDEZVOUS_ESTABLISHED, INTRODUCE_ACK, RENDEZVOUS2)."""

    def onion_service_message(self, managed: "ManagedCircuit", command: int, data: bytes) -> None: ...


class StreamRouter(Protocol):
    """Who chooses the circuit of the streams it opened (the onion-service client for `.onion` streams): the
    manager hands such a stream to it each time it needs a circuit (first, and after a failed attempt)."""

    def attach_stream(self, managed: "ManagedStream") -> None:
        """Attach the stream (`CircuitManager.attach_to`) now or later, or end it."""


#: Purposes whose last hop is an exit that may be asked for congestion control.
_EXIT_PURPOSES = frozenset((CircuitPurpose.GENERAL, CircuitPurpose.CONTROLLER, CircuitPurpose.CONFLUX_UNLINKED))


#: control-spec "CIRC" BUILD_FLAGS, in the order tor lists them (circuit_describe_status_for_controller).
BUILD_FLAG_ONEHOP_TUNNEL = "ONEHOP_TUNNEL"
BUILD_FLAG_IS_INTERNAL = "IS_INTERNAL"
BUILD_FLAG_NEED_CAPACITY = "NEED_CAPACITY"
BUILD_FLAG_NEED_UPTIME = "NEED_UPTIME"


class ManagedCircuit:
    """A circuit as the client uses it: its number, purpose, isolation, dirtiness and status."""

    def __init__(self, number: int, path: list[RelayTarget], purpose: CircuitPurpose, created_at: float,
                 created_wallclock: float, *, need_uptime: bool = False, guard: GuardChoice | None = None,
                 onion_service: OnionServiceCircuitUser | None = None) -> None:
        self.number = number
        self.path = path
        self.purpose = purpose
        self.created_at = created_at
        self.created_wallclock = created_wallclock
        # Launched for a long-lived port: its relays were chosen Stable (tor's build_state->need_uptime).
        self.need_uptime = need_uptime
        # The guard choice of a path the manager chose (None for a controller's path or a directory cache).
        self.guard = guard
        self.status = CircuitStatus.LAUNCHED
        self.circuit: Circuit | None = None
        # The isolation values of the streams it carried (or, while it is built for some, will carry).
        self.isolation = CircuitIsolation()
        self.dirty_since: float | None = None
        self.usable = True  # False once a stream timed out on it, or after NEWNYM
        self.port: int | None = None  # the port it was built for
        self.error: CircuitError | None = None
        self.hops_built = 0
        self._build_waiters: list[defer.Deferred] = []
        # A controller's CLOSECIRCUIT arrived while it was still building: close it once built.
        self.close_requested = False
        # An onion-service circuit: who launched it, the service's address without ".onion" (CIRC's
        # REND_QUERY) and its HS_STATE (control-spec "CIRC"; tor circuit_purpose_to_controller_hs_state_string).
        self.onion_service = onion_service
        self.rend_query: str | None = None
        self._hs_state: str | None = None
        # The conflux set this circuit is a leg of (purposes CONFLUX_UNLINKED and CONFLUX_LINKED).
        self.conflux_set: "ManagedConfluxSet | None" = None

    @property
    def hs_state(self) -> str | None:
        return self._hs_state

    @hs_state.setter
    def hs_state(self, value: str | None) -> None:
        """Its onion-service state changes as tor changes the circuit's purpose; the padding machines hear it
        (circpad_machine_event_circ_purpose_changed)."""
        self._hs_state = value
        if self.circuit is not None and self.circuit.padding is not None:
            self.circuit.padding.purpose_changed(purpose_for_hs_state(value))

    def __repr__(self) -> str:
        return f"<ManagedCircuit {self.number} {self.status.value}>"

    @property
    def is_open(self) -> bool:
        return self.status is CircuitStatus.BUILT and self.circuit is not None and self.circuit.is_open

    @property
    def exit(self) -> RelayTarget:
        return self.path[-1]

    @property
    def conflux_status(self) -> tuple[str, int] | None:
        """A linked conflux leg's CONFLUX_ID and CONFLUX_RTT (microseconds), as tor's CIRC events show them
        (control-spec "CIRC", tor 0.4.8.15); None for any other circuit."""
        record = self.conflux_set
        if record is None or self.circuit is None:
            return None
        rtt = record.tunnel.leg_rtt_usec(self.circuit)
        return None if rtt is None else (record.conflux_id, rtt)

    @property
    def stream_circuit(self) -> "Circuit | ConfluxTunnel | None":
        """What streams attach to: the circuit, or for a conflux leg its set's tunnel."""
        return self.conflux_set.tunnel if self.conflux_set is not None else self.circuit

    def when_built(self) -> defer.Deferred:
        """A Deferred firing with this circuit once it is built (now, if it is), or failing with the
        CircuitError that ended it."""
        if self.is_open:
            return defer.succeed(self)
        if self.status in (CircuitStatus.FAILED, CircuitStatus.CLOSED):
            return defer.fail(self.error or CircuitError(f"circuit {self.number} is closed"))
        waiter: defer.Deferred = defer.Deferred()
        self._build_waiters.append(waiter)
        return waiter

    def _build_settled(self, error: CircuitError | None) -> None:
        waiters, self._build_waiters = self._build_waiters, []
        for waiter in waiters:
            if error is None:
                waiter.callback(self)
            else:
                waiter.errback(error)

    @property
    def build_flags(self) -> tuple[str, ...]:
        """tor's CIRCLAUNCH flags as CIRC events list them: every client circuit NEED_CAPACITY; a BEGIN_DIR
        circuit ONEHOP_TUNNEL and IS_INTERNAL (circuituse.c circuit_get_open_circ_or_launch)."""
        flags = []
        if self.purpose is CircuitPurpose.DIRECTORY:
            flags += [BUILD_FLAG_ONEHOP_TUNNEL, BUILD_FLAG_IS_INTERNAL]
        elif self.purpose.is_onion_service:  # hs_circ_launch: CIRCLAUNCH_IS_INTERNAL | NEED_CAPACITY
            flags.append(BUILD_FLAG_IS_INTERNAL)
        flags.append(BUILD_FLAG_NEED_CAPACITY)
        if self.need_uptime:
            flags.append(BUILD_FLAG_NEED_UPTIME)
        return tuple(flags)


# ------------------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class CircuitEvent:
    """Something happened to a circuit of this purpose."""

    circuit: ManagedCircuit
    purpose: CircuitPurpose


@dataclass(frozen=True, slots=True)
class CircuitLaunched(CircuitEvent):
    """A circuit is being built (its first hop's link may still be opening)."""


@dataclass(frozen=True, slots=True)
class CircuitExtended(CircuitEvent):
    """One more hop of a circuit is built; `hops` are built so far."""

    hops: int


@dataclass(frozen=True, slots=True)
class CircuitGuardWait(CircuitEvent):
    """A circuit through a non-primary guard is built and waits until no better guard can be had."""


@dataclass(frozen=True, slots=True)
class CircuitBuilt(CircuitEvent):
    """A circuit is open and may carry what its purpose says."""


@dataclass(frozen=True, slots=True)
class CircuitFailed(CircuitEvent):
    """A circuit was given up before it was built; a CircuitClosed follows."""

    error: CircuitError


@dataclass(frozen=True, slots=True)
class CircuitClosed(CircuitEvent):
    """A circuit is gone, for the reason `error` gives (None: closed on purpose without one)."""

    error: CircuitError | None


@dataclass(frozen=True, slots=True)
class CircuitPurposeChanged(CircuitEvent):
    """An onion-service circuit moved on to its next state (tor circuit_change_purpose: its HS_STATE
    changes under the same controller purpose); the purpose and HS_STATE it left."""

    old_purpose: CircuitPurpose
    old_hs_state: str | None


@dataclass(frozen=True, slots=True)
class StreamChanged:
    """A client stream was opened, attached, detached, connected or ended (its state says which)."""

    stream: "ManagedStream"


@dataclass(frozen=True, slots=True)
class StreamFlowChanged:
    """A client stream sent or received an XON or XOFF (congestion-controlled circuits only)."""

    stream: "ManagedStream"
    event: FlowControlEvent


ManagerEvent = Union[CircuitEvent, StreamChanged, StreamFlowChanged]
ManagerObserver = Callable[[ManagerEvent], None]


def _take_proved_first_hop(managed: ManagedCircuit, circuit: Circuit) -> None:
    """A bridge dialled without an identity (its Bridge line gives none) is named by the one its link
    proved, which the circuit took (:func:`~oppy.circuit.build.build_circuit`)."""
    if not managed.path[0].rsa_id and circuit.path[0].rsa_id:
        managed.path = [circuit.path[0], *managed.path[1:]]


class _ManagedCircuitOwner:
    """What the circuit of one managed circuit reports to: the manager, told which managed circuit it is."""

    __slots__ = ("manager", "managed")

    def __init__(self, manager: "CircuitManager", managed: ManagedCircuit) -> None:
        self.manager = manager
        self.managed = managed

    def circuit_extended(self, circuit: Circuit) -> None:
        self.manager._circuit_extended(self.managed, circuit)

    def circuit_built(self, circuit: Circuit) -> None:
        self.manager._circuit_built(self.managed, circuit)

    def circuit_closed(self, circuit: Circuit, error: CircuitError) -> None:
        self.manager._circuit_closed(self.managed, error)

    def onion_service_message(self, circuit: Circuit, command: int, data: bytes) -> None:
        if self.managed.onion_service is not None:
            self.managed.onion_service.onion_service_message(self.managed, command, data)


class ManagedConfluxSet:
    """A conflux set as the manager keeps it (conflux_pool.c's linked and unlinked sets): the tunnel its
    streams use, its exit, its legs, how many legs it launched, and the isolation and dirtiness it has as one
    circuit for streams."""

    def __init__(self, tunnel: ConfluxTunnel, created_at: float) -> None:
        self.tunnel = tunnel
        self.created_at = created_at
        self.exit_id: bytes | None = None
        self.legs: list[ManagedCircuit] = []
        self.launches = 0
        self.isolation = CircuitIsolation()
        self.dirty_since: float | None = None
        self.usable = True
        self.ever_linked = False
        # A linked leg closed and no other has linked in its place yet: new streams go elsewhere, for the exit
        # may still send on the lost leg until it hears of it (and then closes the set, its cfx_del_leg).
        self.leg_lost = False
        # The legs' LINKED timers (`link_timed_out`), cancelled at shutdown.
        self.link_timers: list = []

    def __repr__(self) -> str:
        return f"<ManagedConfluxSet {self.tunnel!r} legs={[leg.number for leg in self.legs]}>"

    @property
    def anchor(self) -> ManagedCircuit | None:
        """The leg streams are reported on (tor's streams point at the set's first leg)."""
        linked = self.tunnel.legs
        for leg in self.legs:
            if leg.circuit is not None and leg.circuit in linked:
                return leg
        return None

    @property
    def conflux_id(self) -> str:
        """control-spec CIRC CONFLUX_ID: the set's id in hex as tor prints it (the nonce's first 16 bytes)."""
        return self.tunnel.nonce[:16].hex().upper()


class _TunnelOwner:
    """What a tunnel reports to: the manager, told which set it is."""

    __slots__ = ("manager", "record")

    def __init__(self, manager: "CircuitManager") -> None:
        self.manager = manager
        self.record: ManagedConfluxSet | None = None

    def tunnel_linked(self, tunnel: ConfluxTunnel) -> None:
        self.manager._conflux_set_linked(self.record)

    def tunnel_closed(self, tunnel: ConfluxTunnel, error: CircuitError) -> None:
        self.manager._conflux_set_closed(self.record, error)


class ManagedStream:
    """Bookkeeping for one client stream: its number, attempts, isolation and the timers that retry it."""

    def __init__(self, number: int, stream: Stream, isolation: IsolationValues, source: str | None,
                 router: StreamRouter | None = None) -> None:
        self.number = number
        # Chooses this stream's circuit instead of the manager (a `.onion` stream: its rendezvous circuit).
        self.router = router
        self.stream = stream
        self.isolation = isolation
        self.source = source
        self.attempts = 0
        self.resolve_failures = 0
        self.excluded_exits: set[bytes] = set()
        # The exit's reason for the last failed attempt: what the application hears if no circuit is left.
        self.last_end_reason: int | None = None
        self.managed_circuit: ManagedCircuit | None = None
        # The relay the stream exits from on managed_circuit: its last hop, or the hop a controller named
        # (ATTACHSTREAM HOP=).
        self.exit_relay: RelayTarget | None = None
        self.timer = None
        # Flushes the stream once the rate its exit advised allows more (Stream.flush, StreamOwner).
        self.rate_timer = None
        # When it first found that no circuit could be launched for it (every guard down), until attached.
        self.circuit_wait_since: float | None = None
        # Unattached until a controller's ATTACHSTREAM (__LeaveStreamsUnattached): tor's CONTROLLER_WAIT.
        self.awaiting_controller = False


class CircuitManager:
    """Owns the client's circuits and streams, and attaches the streams to the circuits.

    It is the `StreamOwner` of every stream it opens: the streams report their milestones to it."""

    def __init__(self, links, paths: PathChooser, *, reactor=None, clock: Callable[[], float] = time.monotonic,
                 max_circuit_dirtiness: float = DEFAULT_MAX_CIRCUIT_DIRTINESS,
                 build_times: CircuitBuildTimes | None = None,
                 preemptive_circuits: int = DEFAULT_PREEMPTIVE_CIRCUITS,
                 max_pending: int = DEFAULT_MAX_PENDING_CIRCUITS,
                 unattached_timeout: float = DEFAULT_UNATTACHED_TIMEOUT,
                 queue_account: QueueAccount | None = None,
                 padding_options: CircuitPaddingOptions | None = None,
                 observers: Iterable[ManagerObserver] = (),
                 conflux_option: bool | None = None, conflux_client_ux: str = "throughput",
                 max_ooo_bytes: int = DEFAULT_MAX_OOO_BYTES) -> None:
        self.links = links
        #: Chooses the paths, answers for exit policies, and hears how building through a guard went.
        self.paths = paths
        self.reactor = reactor or default_reactor
        self.clock = clock
        self.max_circuit_dirtiness = max_circuit_dirtiness
        # path-spec 2.4: how long builds may take, learned from the build times of general circuits.
        self.build_times = build_times if build_times is not None else CircuitBuildTimes(clock=clock)
        self.preemptive_circuits = preemptive_circuits
        self.max_pending = max_pending
        self.unattached_timeout = unattached_timeout
        # Counts what every stream queues (MaxMemInQueues: oppy.circuit.memory.MemoryTracker).
        self.queue_account = queue_account
        # prop 324: what the consensus says of congestion control (`update_consensus_params`).
        self.congestion_params = CongestionParams()
        # The same with the Vegas thresholds of rendezvous circuits (oppy.hsclient asks services for it).
        self.onion_congestion_params = CongestionParams().for_onion_service({})
        # prop 324 "Flow control": the XON/XOFF limits for streams opened from now on.
        self.flow_control_params = FlowControlParams()
        # prop 329: ConfluxEnabled (None: auto), ConfluxClientUX, the consensus's cfx_* parameters, the sets.
        self.conflux_option = conflux_option
        self.conflux_ux = CLIENT_UX_NAMES[conflux_client_ux]
        self.conflux_params = ConfluxParams()
        self.max_ooo_bytes = max_ooo_bytes
        self.conflux_sets: dict[bytes, ManagedConfluxSet] = {}
        self._conflux_backoff = 0.0
        self._conflux_retry_at = 0.0
        self._conflux_retry_timer = None
        # CircuitPadding / ReducedCircuitPadding (read live) and the consensus: onion-service setup padding.
        self.padding_gate = PaddingGate(padding_options or DefaultCircuitPaddingOptions(), paths)
        self.circuits: dict[int, ManagedCircuit] = {}
        self.streams: dict[int, ManagedStream] = {}
        self._managed_streams: dict[Stream, ManagedStream] = {}
        self._circuit_numbers = itertools.count(1)
        self._stream_numbers = itertools.count(1)
        self._newnym_epoch = 0
        self._running = True
        self._expiry_timer = None
        self._stream_waiters: list[ManagedStream] = []
        # `_top_up`, `_attach_waiting` and `_check_guard_waits` run again from what they start (a build that
        # fails at once): the inner call is left to the outer one.
        self._topping_up = False
        self._attaching_waiting = False
        self._checking_guard_waits = False
        self._guard_wait_timer = None
        self._observers: list[ManagerObserver] = list(observers)
        # tor's "circuit established": a circuit for client streams has been built (GETINFO
        # status/circuit-established; the daemon's "Bootstrapped 100%").
        self.circuit_established = False
        # When False, new streams wait for a controller's ATTACHSTREAM (__LeaveStreamsUnattached).
        self.attach_automatically = True
        self._learning_loop = task.LoopingCall(self._learn_build_timeout)
        self._learning_loop.clock = self.reactor

    # ------------------------------------------------------------------------------ events

    def add_observer(self, observer: ManagerObserver) -> None:
        """Tell `observer` every event from now on (the control port's CIRC and STREAM events)."""
        self._observers.append(observer)

    def remove_observer(self, observer: ManagerObserver) -> None:
        self._observers = [known for known in self._observers if known != observer]

    def _notify(self, event: ManagerEvent) -> None:
        for observer in list(self._observers):
            try:
                observer(event)
            except Exception:  # an observer's bug must not break circuits
                log.exception("circuit manager observer %r failed", observer)

    def _stream_changed(self, managed: "ManagedStream") -> None:
        self._notify(StreamChanged(managed))

    # ------------------------------------------------------------------------------ circuits

    def start(self) -> None:
        """Build the clean circuits kept ready ahead of demand, and start retiring old ones."""
        self._top_up()
        self._learning_loop.start(LEARNING_CHECK_INTERVAL, now=False)
        self._expire_old_circuits()

    def _learn_build_timeout(self) -> None:
        """path-spec 2.4.2: until the build timeout is learned, unused circuits are closed after
        cbtlearntimeout (circuitlist.c) and a test circuit is built every cbttestfreq seconds while fewer
        than cbtmaxopencircs are clean (circuituse.c needs_circuits_for_build)."""
        idle_timeout = self.build_times.learning_idle_timeout
        if idle_timeout is not None:
            idle_since = self.clock() - idle_timeout
            for managed in self._clean_circuits():
                if managed.is_open and managed.dirty_since is None and managed.created_at < idle_since:
                    managed.circuit.close(DestroyReason.FINISHED, "unused while the build timeout is learned")
        clean = len(self._clean_circuits())
        if self.build_times.wants_test_circuit(clean) and self._pending_count() < self.max_pending:
            try:
                self.launch(PREEMPTIVE_PORT)
            except Exception as exc:  # no path (yet)
                log.info("cannot build a circuit to learn the build timeout: %s", exc)

    def _expire_old_circuits(self) -> None:
        """Close every open circuit that carries no stream and takes no new ones: first used more than
        MaxCircuitDirtiness ago, or marked unusable (tor circuit_expire_old_circuits_clientside; tor's
        mark_circuit_unusable_for_new_conns backdates the dirtiness to the same effect). Again every
        NewCircuitPeriod."""
        self._expiry_timer = None
        if not self._running:
            return
        now = self.clock()
        for managed in list(self.circuits.values()):
            too_dirty = managed.dirty_since is not None and now - managed.dirty_since > self.max_circuit_dirtiness
            if (too_dirty or not managed.usable) and managed.is_open and not managed.circuit.streams \
                    and managed.conflux_set is None:
                log.info("circuit %d: %s and without streams; closing it", managed.number,
                         "dirty for too long" if too_dirty else "unusable for new streams")
                managed.circuit.close(DestroyReason.FINISHED, "expired")
        for record in list(self.conflux_sets.values()):
            too_dirty = record.dirty_since is not None and now - record.dirty_since > self.max_circuit_dirtiness
            if (too_dirty or not record.usable) and record.tunnel.state is TunnelState.LINKED \
                    and not record.tunnel.streams:
                log.info("conflux set %s: %s and without streams; closing it", record.conflux_id[:16],
                         "dirty for too long" if too_dirty else "unusable for new streams")
                record.tunnel.close(DestroyReason.FINISHED, "expired")
        self._expiry_timer = self.reactor.callLater(NEW_CIRCUIT_PERIOD, self._expire_old_circuits)

    def _clean_circuits(self) -> list[ManagedCircuit]:
        return [m for m in self.circuits.values()
                if m.purpose is CircuitPurpose.GENERAL and not m.isolation.is_set and m.usable
                and m.status in (CircuitStatus.LAUNCHED, CircuitStatus.EXTENDED, CircuitStatus.GUARD_WAIT,
                                 CircuitStatus.BUILT)]

    def _pending_count(self) -> int:
        """Exit circuits being built (MaxClientCircuitsPending; directory circuits are not limited by it)."""
        return sum(1 for m in self.circuits.values() if m.purpose is CircuitPurpose.GENERAL
                   and m.status in (CircuitStatus.LAUNCHED, CircuitStatus.EXTENDED))

    def _top_up(self) -> None:
        if not self._running or self._topping_up:
            return
        self._topping_up = True
        try:
            missing = self.preemptive_circuits - len(self._clean_circuits())
            for _ in range(max(0, missing)):
                if self._pending_count() >= self.max_pending:
                    break
                try:
                    self.launch(PREEMPTIVE_PORT)
                except Exception as exc:  # no path (yet)
                    log.info("cannot build a preemptive circuit: %s", exc)
                    break
            self._predict_conflux_sets()
        finally:
            self._topping_up = False

    def launch(self, port: int | None = None, path: list[RelayTarget] | None = None,
               purpose: CircuitPurpose = CircuitPurpose.GENERAL, exclude: set[bytes] = frozenset(), *,
               guard: GuardChoice | None = None, onion_service: OnionServiceCircuitUser | None = None,
               hs_state: str | None = None) -> ManagedCircuit:
        """Start building a circuit (for `port`, or through `path`, whose guard choice `guard` hears how it
        went); returns at once (`when_built()` fires later). An onion-service circuit names who launched it
        and its first HS_STATE (tor's comes from the purpose it is launched with, so LAUNCHED reports it)."""
        # Only the general three-hop circuits oppy chose teach the build timeout (path-spec 2.4.2).
        counted = path is None and purpose is CircuitPurpose.GENERAL
        if path is None:
            path, guard = self.paths.choose_circuit_path(port, exclude=exclude)
        managed = ManagedCircuit(next(self._circuit_numbers), list(path), purpose, self.clock(), time.time(),
                                 need_uptime=self.paths.needs_stable(port), guard=guard,
                                 onion_service=onion_service)
        managed.port = port
        managed.hs_state = hs_state
        self.circuits[managed.number] = managed
        self._notify(CircuitLaunched(managed, purpose))
        attempt = self.build_times.start_build(len(path), counted, self._any_circuit_open)
        # C tor asks only the exits of exit circuits for congestion control (extend_info_from_node's
        # for_exit_use), not directory caches or onion-service hops.
        congestion = self.congestion_params if purpose in _EXIT_PURPOSES else None
        building = build_circuit(self.links, path, reactor=self.reactor, owner=_ManagedCircuitOwner(self, managed),
                                 attempt=attempt, congestion=congestion)
        building.addErrback(self._circuit_failed, managed)
        return managed

    def update_consensus_params(self, params: Mapping[str, int]) -> None:
        """A new consensus: its congestion-control and conflux parameters hold for circuits built from now on
        (conflux_params_new_consensus counts the exits listing Conflux=1 in the NetDir in use), its XON/XOFF
        parameters for streams opened from now on."""
        self.congestion_params = CongestionParams.from_consensus(params)
        self.onion_congestion_params = self.congestion_params.for_onion_service(params)
        self.flow_control_params = FlowControlParams.from_consensus(params)
        netdir = self.paths.netdir
        relays = netdir.consensus.relays if netdir is not None else ()
        ratio = exit_conflux_ratio([("Exit" in relay.flags, "BadExit" in relay.flags,
                                     relay.supports_protocol("Conflux", 1)) for relay in relays])
        self.conflux_params = ConfluxParams.from_consensus(params, ratio)

    # ------------------------------------------------------------------------------ conflux sets

    @property
    def conflux_on(self) -> bool:
        """conflux_is_enabled: ConfluxEnabled over cfx_enabled, never without congestion control (with bridges
        too: the legs start at bridges)."""
        return conflux_enabled(self.conflux_option, self.conflux_params, self.congestion_params.enabled)

    def _usable_conflux_sets(self) -> list[ManagedConfluxSet]:
        return [record for record in self.conflux_sets.values()
                if record.usable and not record.isolation.is_set and record.dirty_since is None]

    def _predict_conflux_sets(self) -> None:
        """conflux_predict_new: keep cfx_max_prebuilt_set sets linked or linking ahead of demand (fewer when
        few exits support conflux), never more than cfx_max_linked_set linked ones."""
        if not self.conflux_on or self.clock() < self._conflux_retry_at:
            return
        params = self.conflux_params
        linked = sum(1 for record in self.conflux_sets.values() if record.tunnel.state is TunnelState.LINKED)
        if linked >= params.max_linked_set:
            return
        for _ in range(params.max_prebuilt - len(self._usable_conflux_sets())):
            if self._pending_count() >= self.max_pending or not self.launch_conflux_set():
                break

    def launch_conflux_set(self) -> ManagedConfluxSet | None:
        """launch_new_set: a new nonce and cfx_num_legs_set legs to one exit listing Conflux=1."""
        owner = _TunnelOwner(self)
        tunnel = ConfluxTunnel(os.urandom(CONFLUX_NONCE_LEN), owner, desired_ux=self.conflux_ux,
                               max_ooo_bytes=self.max_ooo_bytes, max_link_rtt=self.build_times.timeout_ms / 1000,
                               account=self.queue_account, clock=self.clock)
        record = owner.record = ManagedConfluxSet(tunnel, self.clock())
        self.conflux_sets[tunnel.nonce] = record
        log.info("Launching conflux set %s with %d legs.", record.conflux_id[:16], self.conflux_params.num_legs_set)
        for _ in range(self.conflux_params.num_legs_set):
            if not self._launch_conflux_leg(record):
                break
        if not record.legs:
            self.conflux_sets.pop(tunnel.nonce, None)
            return None
        return record

    def _launch_conflux_leg(self, record: ManagedConfluxSet) -> bool:
        """conflux_launch_leg: a leg to the set's exit through other guards and middles than its other legs
        where the path rules allow, within the set's launch budget (cfx_num_legs_set +
        cfx_max_unlinked_leg_retry)."""
        if record.launches >= self.conflux_params.max_leg_launches:
            log.info("Conflux set %s: no more leg launches allowed.", record.conflux_id[:16])
            return False
        others = [leg for leg in record.legs if leg.status is not CircuitStatus.CLOSED]
        guards = {leg.path[0].rsa_id for leg in others}
        middles = {hop.rsa_id for leg in others for hop in leg.path[1:-1]}
        try:
            path, guard = self.paths.choose_conflux_path(PREEMPTIVE_PORT, record.exit_id,
                                                         exclude_tiers=(guards | middles, middles, ()))
        except Exception as exc:  # no path (yet)
            log.info("cannot build a conflux leg: %s", exc)
            return False
        record.launches += 1
        record.exit_id = path[-1].rsa_id
        managed = self.launch(PREEMPTIVE_PORT, path=path, purpose=CircuitPurpose.CONFLUX_UNLINKED, guard=guard)
        if managed.status is not CircuitStatus.CLOSED:
            managed.conflux_set = record
            record.legs.append(managed)
            record.tunnel.leg_launched()
        return True

    def _conflux_leg_open(self, managed: ManagedCircuit) -> None:
        """conflux_circuit_has_opened: a leg without congestion control is closed; others send LINK."""
        record = managed.conflux_set
        circuit = managed.circuit
        if record.tunnel.state is TunnelState.CLOSED:
            circuit.close(DestroyReason.FINISHED, "its conflux set is gone")
            return
        if circuit.congestion_control is None:
            circuit.close(DestroyReason.PROTOCOL, "conflux leg opened without negotiating congestion control")
            return
        record.tunnel.add_leg(circuit)
        # A leg whose exit never answers LINK is stalled: closed after the build close timeout.
        timeout = self.build_times.close_ms / 1000
        record.link_timers = [timer for timer in record.link_timers if timer.active()]
        record.link_timers.append(self.reactor.callLater(timeout, record.tunnel.link_timed_out, circuit, timeout))

    def _conflux_set_linked(self, record: ManagedConfluxSet) -> None:
        record.ever_linked = True
        record.leg_lost = False
        self._conflux_backoff = 0.0
        for leg in record.legs:
            if leg.circuit is not None and leg.circuit in record.tunnel.legs:
                leg.purpose = CircuitPurpose.CONFLUX_LINKED
        log.info("Conflux set %s linked: legs %s to %s, RTTs %s ms.", record.conflux_id[:16],
                 [leg.number for leg in record.legs if leg.purpose is CircuitPurpose.CONFLUX_LINKED],
                 record.tunnel.exit.describe(), record.tunnel.rtt_ms)
        self._attach_waiting()

    def _conflux_set_closed(self, record: ManagedConfluxSet, error: CircuitError) -> None:
        log.info("Conflux set %s closed: %s", record.conflux_id[:16], error)
        self.conflux_sets.pop(record.tunnel.nonce, None)
        if not record.ever_linked and self._running:
            low, high = CONFLUX_RELAUNCH_BACKOFF
            self._conflux_backoff = min(high, max(low, 2 * self._conflux_backoff))
            self._conflux_retry_at = self.clock() + self._conflux_backoff
            if self._conflux_retry_timer is not None and self._conflux_retry_timer.active():
                self._conflux_retry_timer.cancel()
            self._conflux_retry_timer = self.reactor.callLater(self._conflux_backoff, self._top_up)
        self._top_up()

    def _conflux_leg_gone(self, managed: ManagedCircuit, error: CircuitError) -> None:
        """A leg failed or closed: the tunnel decides whether the set survives; a surviving set that has
        carried no stream launches a leg in its place when below cfx_num_legs_set (unlinked_circuit_closed /
        tor's relaunch) and takes new streams again once it has linked; a set in use goes on with the legs it
        has for its streams only."""
        record = managed.conflux_set
        if record is None:
            return
        if managed in record.legs:
            record.legs.remove(managed)
        tunnel = record.tunnel
        if managed.circuit is not None:
            tunnel.leg_closed(managed.circuit, error)
        else:
            tunnel.leg_build_failed(error)
        if tunnel.state is TunnelState.CLOSED or not self._running:
            return
        if not record.legs:
            tunnel.close(error.reason, f"every leg of the conflux set failed: {error}")
            return
        remaining = [leg.number for leg in record.legs]
        lost_linked = tunnel.state is TunnelState.LINKED and managed.purpose is CircuitPurpose.CONFLUX_LINKED
        if lost_linked:
            record.leg_lost = True
        if len(record.legs) >= self.conflux_params.num_legs_set:
            whole_again = True
        else:
            whole_again = not tunnel.carried_cells and self._launch_conflux_leg(record)
        if record.leg_lost and not whole_again:
            record.usable = False  # it keeps its streams and goes when they are done
        if lost_linked:
            log.info("Conflux set %s: leg %d closed (%s); the set goes on with legs %s, %s.",
                     record.conflux_id[:16], managed.number, error, remaining,
                     "taking new streams again once a new leg links" if whole_again else "for its streams only")

    def _any_circuit_open(self) -> bool:
        """Some three-hop circuit is open (circuitlist.c circuit_any_opened_circuits): if none is, a build
        past its timeout is given until the close timeout (the network may just have changed)."""
        return any(m.is_open and len(m.path) == DEFAULT_ROUTE_LEN for m in self.circuits.values())

    def _circuit_extended(self, managed: ManagedCircuit, circuit: Circuit) -> None:
        _take_proved_first_hop(managed, circuit)
        managed.hops_built = circuit.hops_built
        managed.status = CircuitStatus.EXTENDED
        self._notify(CircuitExtended(managed, managed.purpose, managed.hops_built))

    def _circuit_built(self, managed: ManagedCircuit, circuit: Circuit) -> None:
        _take_proved_first_hop(managed, circuit)
        managed.circuit = circuit
        managed.hops_built = circuit.hops_built
        congestion = circuit.congestion_control
        if congestion is not None:
            log.info("Circuit %d: congestion control (Vegas) negotiated with %s, sendme_inc %d.", managed.number,
                     circuit.exit.describe(), congestion.sendme_inc)
        elif managed.purpose in _EXIT_PURPOSES:
            log.info("Circuit %d: fixed windows with %s.", managed.number, circuit.exit.describe())
        if managed.close_requested:
            circuit.close(DestroyReason.REQUESTED, "closed on request")
            return
        if managed.purpose in PADDED_PURPOSES:
            # tor's circpad_machine_event_circ_built: the machines are offered every built client circuit;
            # only these purposes have any. Built again after EXTENDCIRCUIT, it keeps its machines.
            purpose = purpose_for_hs_state(managed.hs_state)
            if circuit.padding is None:
                circuit.start_padding(CircuitPadding(circuit, self.padding_gate, self.reactor, purpose=purpose,
                                                     max_dirtiness=self.max_circuit_dirtiness,
                                                     label=f"circuit {managed.number}"))
            circuit.padding.purpose_changed(purpose)
        if managed.guard is not None and not self.paths.guard_succeeded(managed.guard):
            if managed.guard.state is GuardCircuitState.DEAD:
                circuit.close(DestroyReason.NONE, f"its guard {managed.path[0].describe()} left the guard sample")
                return
            # guard-spec 4.8: built through a guard that is not primary, it carries nothing while a better
            # guard may still work.
            managed.status = CircuitStatus.GUARD_WAIT
            log.info("circuit %d is built through %s, not a primary guard: waiting for a better guard",
                     managed.number, managed.path[0].describe())
            self._notify(CircuitGuardWait(managed, managed.purpose))
            self._check_guard_waits()
            return
        self._circuit_usable(managed)

    def _circuit_usable(self, managed: ManagedCircuit) -> None:
        """A built circuit may now carry what its purpose says."""
        circuit = managed.circuit
        managed.status = CircuitStatus.BUILT
        if managed.purpose is CircuitPurpose.GENERAL:
            self.circuit_established = True
        self._notify(CircuitBuilt(managed, managed.purpose))
        if managed.conflux_set is not None:
            self._conflux_leg_open(managed)
        managed._build_settled(None)
        # The marks of the streams it was launched for go: the waiting streams are attached for real now.
        managed.isolation.clear_if_unused()
        self._attach_waiting()
        if not self._running:
            circuit.close()

    def _circuit_failed(self, failure, managed: ManagedCircuit) -> None:
        error = failure.value if isinstance(failure.value, CircuitError) else CircuitError(str(failure.value))
        managed.error = error
        managed.status = CircuitStatus.FAILED
        if managed.guard is not None:
            # circuitbuild.c circuit_build_failed: a circuit whose first hop never opened, for a reason other
            # than the guard's DESTROY, counts against the guard.
            if managed.hops_built == 0 and not error.remote:
                self.paths.guard_failed(managed.guard)
            else:
                self.paths.guard_cancelled(managed.guard)
        log.info("circuit %d failed: %s", managed.number, error)
        self._notify(CircuitFailed(managed, managed.purpose, error))
        managed.status = CircuitStatus.CLOSED
        self._notify(CircuitClosed(managed, managed.purpose, error))
        self.circuits.pop(managed.number, None)
        managed._build_settled(error)
        self._conflux_leg_gone(managed, error)
        if managed.guard is not None:
            self._check_guard_waits()       # a better guard's circuit failed: a waiting one may do now
        self._top_up()
        self._attach_waiting()

    def _circuit_closed(self, managed: ManagedCircuit, error: CircuitError) -> None:
        was_waiting = managed.status is CircuitStatus.GUARD_WAIT
        managed.error = error
        managed.status = CircuitStatus.CLOSED
        self.circuits.pop(managed.number, None)
        log.info("circuit %d closed: %s", managed.number, error)
        if was_waiting:
            self.paths.guard_cancelled(managed.guard)
        self._notify(CircuitClosed(managed, managed.purpose, error))
        managed._build_settled(error)
        self._conflux_leg_gone(managed, error)
        if managed.guard is not None:
            self._check_guard_waits()       # a better guard's circuit is gone: a waiting one may do now
        self._top_up()

    def _check_guard_waits(self) -> None:
        """guard-spec 4.9: close the circuits that waited for a better guard too long, take into use those no
        better guard can beat any more; look again in a second while any still wait."""
        if self._checking_guard_waits or not self._running:
            return
        self._checking_guard_waits = True
        try:
            for managed in self._guard_waiting():
                if self.paths.guard_should_expire(managed.guard):
                    log.info("circuit %d waited too long for a better guard than %s; closing it", managed.number,
                             managed.path[0].describe())
                    managed.circuit.close(DestroyReason.NONE, "waited too long for a better guard")
            live = [m.guard for m in self.circuits.values() if m.guard is not None]
            upgraded = self.paths.upgrade_waiting(live) if self._guard_waiting() else []
            for managed in self._guard_waiting():
                if any(choice is managed.guard for choice in upgraded):
                    log.info("circuit %d: no better guard than %s can be had; using it", managed.number,
                             managed.path[0].describe())
                    self._circuit_usable(managed)
        finally:
            self._checking_guard_waits = False
        if self._guard_wait_timer is not None and self._guard_wait_timer.active():
            self._guard_wait_timer.cancel()
        self._guard_wait_timer = None
        if self._guard_waiting() and self._running:
            self._guard_wait_timer = self.reactor.callLater(GUARD_WAIT_CHECK_INTERVAL, self._check_guard_waits)

    def _guard_waiting(self) -> list[ManagedCircuit]:
        return [m for m in self.circuits.values() if m.status is CircuitStatus.GUARD_WAIT]

    def directory_circuit(self, target: RelayTarget) -> defer.Deferred:
        """A one-hop circuit to the directory cache `target` for BEGIN_DIR streams (purpose DIRECTORY).

        Fires with the open `Circuit`: the one already open to `target` while it is fresh (first used less than
        MaxCircuitDirtiness ago), the one being built to it (concurrent callers share a build), or a new one.
        Fails with the CircuitError that ended its build. Its first hop is created with CREATE_FAST when
        `target` carries no ntor onion key (a fallback or an authority before any microdescriptor)."""
        for managed in list(self.circuits.values()):
            if managed.purpose is not CircuitPurpose.DIRECTORY or managed.path[0].rsa_id != target.rsa_id \
                    or not managed.usable:
                continue
            if managed.is_open:
                if managed.dirty_since is not None \
                        and self.clock() - managed.dirty_since > self.max_circuit_dirtiness:
                    managed.usable = False
                    managed.circuit.close(DestroyReason.FINISHED, "directory circuit too old for new requests")
                    continue
                return defer.succeed(self._use_directory_circuit(managed))
            if managed.status in (CircuitStatus.LAUNCHED, CircuitStatus.EXTENDED):
                return managed.when_built().addCallback(self._use_directory_circuit)
        log.info("Launching a one-hop directory circuit to %s", target.describe())
        launched = self.launch(None, path=[target], purpose=CircuitPurpose.DIRECTORY)
        return launched.when_built().addCallback(self._use_directory_circuit)

    def _use_directory_circuit(self, managed: ManagedCircuit) -> Circuit:
        if managed.dirty_since is None:
            managed.dirty_since = self.clock()
        return managed.circuit

    def extend_circuit(self, managed: ManagedCircuit, relays: list[RelayTarget]) -> None:
        """EXTENDCIRCUIT: add hops to a built circuit that carries no stream (CircuitError otherwise); CIRC
        EXTENDED follows for each hop, then BUILT."""
        if not managed.is_open:
            raise CircuitError(f"circuit {managed.number} is not open")
        managed.circuit.extend(relays)
        managed.path = managed.path + list(relays)
        # As tor reports a circuit sending its next onion skin: EXTENDED with the hops built so far.
        managed.status = CircuitStatus.EXTENDED
        self._notify(CircuitExtended(managed, managed.purpose, managed.hops_built))

    def close_circuit(self, number: int, reason: int = DestroyReason.REQUESTED) -> bool:
        managed = self.circuits.get(number)
        if managed is None:
            return False
        if managed.circuit is not None:
            managed.circuit.close(reason, "closed on request")
        else:
            managed.usable = False
            managed.close_requested = True
        return True

    def set_hs_state(self, managed: ManagedCircuit, hs_state: str) -> None:
        """Move an onion-service circuit to `hs_state` and tell the observers (CIRC_MINOR PURPOSE_CHANGED)."""
        old = managed.hs_state
        if old == hs_state:
            return
        managed.hs_state = hs_state
        self._notify(CircuitPurposeChanged(managed, managed.purpose, managed.purpose, old))

    def newnym(self) -> None:
        """NEWNYM: no circuit in use so far takes new streams; new streams get new circuits."""
        self._newnym_epoch += 1
        for managed in self.circuits.values():
            managed.usable = False
        for record in self.conflux_sets.values():
            record.usable = False
        self._top_up()

    def _is_usable_for(self, managed: ManagedCircuit, port: int, isolation: IsolationValues,
                       excluded_exits: set[bytes]) -> bool:
        if not managed.usable or managed.purpose is not CircuitPurpose.GENERAL:
            return False
        if self.paths.needs_stable(port) and not managed.need_uptime:
            # circuituse.c circuit_is_acceptable: a circuit built without Stable relays (a preemptive one
            # for port 80) does not carry a stream to a long-lived port.
            return False
        if not managed.isolation.compatible(isolation):
            return False
        if managed.dirty_since is not None and self.clock() - managed.dirty_since > self.max_circuit_dirtiness:
            return False
        if managed.exit.rsa_id in excluded_exits:
            return False
        return managed.port == port or self.paths.exit_allows(managed.exit.rsa_id, port)

    # ------------------------------------------------------------------------------ streams

    def open_stream(self, sink: StreamSink, host: str, port: int, kind: StreamKind = StreamKind.CONNECT,
                    credentials: tuple[bytes, bytes] | None = None, source: str | None = None,
                    router: StreamRouter | None = None,
                    isolation: StreamIsolation = StreamIsolation(),
                    original_address: str | None = None) -> ManagedStream:
        """A new stream for an application; it is attached as soon as a circuit its isolation allows is open
        (by `router` when given).

        `isolation` comes from the front door (its port's flags and session group, the client's protocol and
        address); `credentials` (username, password), when given, replace its SOCKS credentials.
        `original_address` is the address the application asked for when `host` is what it stands for (a
        virtual address of AutomapHostsOnResolve): isolation compares what the application asked for."""
        if credentials is not None:
            isolation = isolation.with_credentials(*credentials)
        stream = Stream(sink, host, port, kind, owner=self, account=self.queue_account,
                        flow_params=self.flow_control_params)
        values = IsolationValues.of(isolation, original_address or host, port, self._newnym_epoch)
        managed = ManagedStream(next(self._stream_numbers), stream, values, source, router)
        self._managed_streams[stream] = managed
        self.streams[managed.number] = managed
        self._stream_changed(managed)
        if self.attach_automatically:
            self._attach(managed)
        else:
            self._wait_for_controller(managed)
        return managed

    def _wait_for_controller(self, managed: ManagedStream) -> None:
        """__LeaveStreamsUnattached: the stream waits for ATTACHSTREAM (tor's CONTROLLER_WAIT)."""
        if managed.stream.ended:
            return
        managed.awaiting_controller = True
        self._stream_changed(managed)
        # connection_edge.c connection_ap_expire_beginning: a stream no controller attaches within
        # SocksTimeout is given up with END reason TIMEOUT.
        self._cancel_timer(managed)
        managed.timer = self.reactor.callLater(self.unattached_timeout, self._unattached_expired, managed)

    def _unattached_expired(self, managed: ManagedStream) -> None:
        managed.timer = None
        if managed.awaiting_controller and not managed.stream.ended:
            log.info("stream %d: no controller attached it within %.0fs; giving up", managed.number,
                     self.unattached_timeout)
            managed.awaiting_controller = False
            managed.stream.close(EndReason.TIMEOUT)

    def _attach_or_wait(self, managed: ManagedStream) -> None:
        if self.attach_automatically:
            self._attach(managed)
        else:
            self._wait_for_controller(managed)

    def controller_attach(self, managed: ManagedStream, target: ManagedCircuit | None = None,
                          hop: int | None = None) -> None:
        """ATTACHSTREAM: put a waiting or connecting stream on `target` (an open circuit), exiting from its
        `hop` (1-based; None: the last), or let oppy choose (None). A stream already sent to an exit is taken
        off its circuit first."""
        stream = managed.stream
        if stream.ended:
            raise RuntimeError("stream already ended")
        if target is not None and not target.is_open:
            raise RuntimeError(f"circuit {target.number} is not open")
        if hop is not None and target is not None and not 2 <= hop <= len(target.path):
            raise RuntimeError(f"circuit {target.number} has no hop {hop} a stream may exit from")
        if hop is not None and target is not None and hop < len(target.path) and target.conflux_set is not None:
            raise RuntimeError(f"circuit {target.number} is a conflux leg: its streams exit from its last hop")
        if target is not None and not target.circuit.has_stream_room and stream.circuit is not target.circuit:
            raise RuntimeError(f"circuit {target.number} carries as many streams as a circuit may")
        if stream.state in (StreamState.SENTCONNECT, StreamState.SENTRESOLVE):
            self._cancel_timer(managed)
            stream.detach(EndReason.TIMEOUT)
            self._stream_changed(managed)
        managed.awaiting_controller = False
        if target is None:
            self._attach(managed)
        else:
            self.attach_to(managed, target, hop)

    # StreamOwner

    def stream_attempt_failed(self, stream: Stream, end: StreamEnd) -> bool:
        return self._retry(self._managed_streams[stream], end)

    def stream_connected(self, stream: Stream) -> None:
        """CONNECTED (or RESOLVED): stop the stream's retry timer."""
        managed = self._managed_streams[stream]
        self._cancel_timer(managed)
        self._stream_changed(managed)

    def stream_ended(self, stream: Stream, end: StreamEnd) -> None:
        managed = self._managed_streams.pop(stream)
        self._cancel_timer(managed)
        if managed.rate_timer is not None and managed.rate_timer.active():
            managed.rate_timer.cancel()
        self._stream_changed(managed)
        self.streams.pop(managed.number, None)
        if managed in self._stream_waiters:
            self._stream_waiters.remove(managed)

    def stream_flow_control(self, stream: Stream, event: FlowControlEvent) -> None:
        managed = self._managed_streams.get(stream)
        if managed is not None:
            self._notify(StreamFlowChanged(managed, event))

    def stream_rate_limited(self, stream: Stream, delay: float) -> None:
        managed = self._managed_streams.get(stream)
        if managed is not None and (managed.rate_timer is None or not managed.rate_timer.active()):
            managed.rate_timer = self.reactor.callLater(delay, stream.flush)

    def _cancel_timer(self, managed: ManagedStream) -> None:
        if managed.timer is not None and managed.timer.active():
            managed.timer.cancel()
        managed.timer = None

    def _attach(self, managed: ManagedStream) -> None:
        stream = managed.stream
        if stream.ended:
            return
        if managed.router is not None:
            managed.router.attach_stream(managed)
            return
        port = stream.port if stream.kind is StreamKind.CONNECT else PREEMPTIVE_PORT
        conflux = self._conflux_set_for(port, managed) if stream.kind is not StreamKind.DIRECTORY else None
        # A linked set comes first, as in tor's circuit_get_open_circ_or_launch (conflux_get_circ_for_conn before
        # circuit_get_best): also when the stream's isolation-mates ride a single circuit taken while the sets
        # were still linking, or every later stream would stay off the sets.
        if conflux is not None:
            self.attach_to(managed, conflux)
            return
        candidates = [m for m in self.circuits.values() if m.is_open and m.circuit.has_stream_room
                      and self._is_usable_for(m, port, managed.isolation, managed.excluded_exits)]
        if candidates:
            # Prefer circuits already used (tor's circuit_is_better: better not dirty a clean one), then the newest.
            candidates.sort(key=lambda m: (not m.isolation.is_set, -m.created_at))
            self.attach_to(managed, candidates[0])
            return
        pending = [m for m in self.circuits.values()
                   if m.status in (CircuitStatus.LAUNCHED, CircuitStatus.EXTENDED, CircuitStatus.GUARD_WAIT)
                   and self._is_usable_for(m, port, managed.isolation, managed.excluded_exits)]
        if managed not in self._stream_waiters:
            self._stream_waiters.append(managed)
        if pending:
            # circuituse.c circuit_get_open_circ_or_launch: the circuit is marked for the stream, so that a
            # stream isolated from it launches a circuit of its own.
            pending[0].isolation.add(managed.isolation, attached=False)
            return
        try:
            launched = self.launch(port, exclude=managed.excluded_exits)
        except NoGuardAvailableError as exc:
            self._wait_for_a_circuit(managed, str(exc))
            return
        except Exception as exc:  # no path: tell the application now
            self._give_up(managed, f"no path: {exc}")
            return
        if launched.status is CircuitStatus.CLOSED and managed in self._stream_waiters:
            self._wait_for_a_circuit(managed, f"circuit {launched.number} failed at once: {launched.error}")
        else:
            launched.isolation.add(managed.isolation, attached=False)

    def _conflux_set_for(self, port: int, managed: ManagedStream) -> ManagedCircuit | None:
        """conflux_get_circ_for_conn: the anchor leg of a linked set whose exit takes the port, with the
        stream's isolation (or none yet), not too dirty; sets already carrying this isolation first."""
        if not self.conflux_on or self.paths.needs_stable(port):
            return None  # legs are not built from Stable relays: a long-lived port keeps a single circuit
        now = self.clock()
        fitting = []
        for record in self.conflux_sets.values():
            tunnel, anchor = record.tunnel, record.anchor
            if anchor is None or not tunnel.is_open or not tunnel.has_stream_room or not record.usable \
                    or record.leg_lost:
                continue
            if not record.isolation.compatible(managed.isolation):
                continue
            if record.dirty_since is not None and now - record.dirty_since > self.max_circuit_dirtiness:
                continue
            if tunnel.exit.rsa_id in managed.excluded_exits or not self.paths.exit_allows(tunnel.exit.rsa_id, port):
                continue
            fitting.append((not record.isolation.is_set, -record.created_at, anchor))
        return min(fitting, key=lambda entry: entry[:2])[2] if fitting else None

    def _wait_for_a_circuit(self, managed: ManagedStream, why: str) -> None:
        """No circuit could be launched for the stream (every guard is down, the sample just marked them for a
        retry; or the one launched failed at once): tor does not fail the stream but delays it (circuituse.c
        circuit_get_open_circ_or_launch, "No safe circuit ... ready for edge connection; delaying"), tries it
        again each second, and gives up after SocksTimeout with END TIMEOUT (connection_ap_expire_beginning)."""
        now = self.clock()
        if managed.circuit_wait_since is None:
            managed.circuit_wait_since = now
            log.info("stream %d: no circuit for it now (%s); waiting", managed.number, why)
        waited = now - managed.circuit_wait_since
        if waited >= self.unattached_timeout:
            self._stream_waiters.remove(managed)
            log.info("stream %d: tried for %.0f seconds to get a circuit to %s:%d; giving up: %s", managed.number,
                     waited, managed.stream.host, managed.stream.port, why)
            managed.stream.close(EndReason.TIMEOUT)
            return
        if managed.timer is None or not managed.timer.active():
            delay = min(PENDING_STREAM_RESCAN_INTERVAL, self.unattached_timeout - waited)
            managed.timer = self.reactor.callLater(delay, self._rescan_waiting_stream, managed)

    def _rescan_waiting_stream(self, managed: ManagedStream) -> None:
        managed.timer = None
        if not managed.stream.ended and managed in self._stream_waiters:
            self._attach(managed)

    def _give_up(self, managed: ManagedStream, why: str) -> None:
        """No circuit can be had for a waiting stream: the application hears the last reason (or NOROUTE)."""
        self._stream_waiters.remove(managed)
        log.info("stream %d: %s", managed.number, why)
        managed.stream.close(managed.last_end_reason or EndReason.NOROUTE)

    def _attach_waiting(self) -> None:
        if self._attaching_waiting:
            return
        self._attaching_waiting = True
        try:
            waiting, self._stream_waiters = self._stream_waiters, []
            for managed in waiting:
                self._attach(managed)
        finally:
            self._attaching_waiting = False

    def attach_to(self, managed: ManagedStream, target: ManagedCircuit, hop: int | None = None) -> None:
        """Attach a stream to a given open circuit (also the controller's ATTACHSTREAM), exiting from its
        `hop` (1-based) when that is not the last."""
        if managed in self._stream_waiters:
            self._stream_waiters.remove(managed)
        managed.awaiting_controller = False
        record = target.conflux_set
        if record is not None:
            record.isolation.add(managed.isolation, attached=True)
            if record.dirty_since is None:
                record.dirty_since = self.clock()
        if target.purpose is CircuitPurpose.GENERAL:
            target.isolation.add(managed.isolation, attached=True)
        if target.dirty_since is None:
            target.dirty_since = self.clock()
        managed.managed_circuit = target
        managed.circuit_wait_since = None
        managed.attempts += 1
        if hop is not None and hop < len(target.path):
            managed.exit_relay = target.path[hop - 1]
            stream_circuit = target.circuit.inner_hop(hop - 1)
        else:
            managed.exit_relay = target.exit
            stream_circuit = target.stream_circuit
        managed.stream.attach(stream_circuit, onion_service=target.purpose is CircuitPurpose.HS_CLIENT_REND)
        log.info("Attached stream %d to circuit %d (attempt %d)", managed.number, target.number, managed.attempts)
        self._stream_changed(managed)
        timeouts = STREAM_CONNECT_TIMEOUTS
        delay = timeouts[min(managed.attempts - 1, len(timeouts) - 1)]
        self._cancel_timer(managed)
        managed.timer = self.reactor.callLater(delay, self._connect_timed_out, managed, target)
        self._top_up()

    def _connect_timed_out(self, managed: ManagedStream, target: ManagedCircuit) -> None:
        managed.timer = None
        stream = managed.stream
        if stream.state not in (StreamState.SENTCONNECT, StreamState.SENTRESOLVE):
            return
        # The circuit is presumed slow or broken: no new streams on it (tor marks it "unusable").
        target.usable = False
        if target.conflux_set is not None:
            target.conflux_set.usable = False
        log.info("stream %d: no answer from the exit after attempt %d", managed.number, managed.attempts)
        stream.close(EndReason.TIMEOUT, retry=True)

    def _retry(self, managed: ManagedStream, end: StreamEnd) -> bool:
        """A stream's attempt failed before CONNECTED (it is detached): True when it is tried again, on
        another circuit (attached at once when one is open) or by a controller."""
        self._cancel_timer(managed)
        if not self._running or managed.attempts >= MAX_STREAM_ATTEMPTS:
            return False
        if end.remote:
            managed.last_end_reason = end.reason
            if end.reason not in RETRIABLE_END_REASONS:
                return False
            circuit = managed.managed_circuit
            if end.reason in (EndReason.EXITPOLICY, EndReason.HIBERNATING, EndReason.RESOURCELIMIT):
                if managed.exit_relay is not None:
                    managed.excluded_exits.add(managed.exit_relay.rsa_id)
            else:
                # relay.c connection_ap_process_end_not_open: a resolve failure, MISC or NOROUTE is retried
                # on another circuit up to MAX_RESOLVE_FAILURES times, and the circuit takes no new streams.
                managed.resolve_failures += 1
                if managed.resolve_failures >= MAX_RESOLVE_FAILURES:
                    return False
                if circuit is not None:
                    circuit.usable = False
                    if circuit.conflux_set is not None:
                        circuit.conflux_set.usable = False
        log.info("stream %d: attempt %d failed (%s); retrying on another circuit", managed.number,
                 managed.attempts, end)
        self._stream_changed(managed)  # DETACHED
        self._attach_or_wait(managed)
        return True

    # ------------------------------------------------------------------------------ shutdown

    def close_all(self) -> None:
        """Clean shutdown: END every stream, DESTROY every circuit."""
        self._running = False
        if self._learning_loop.running:
            self._learning_loop.stop()
        if self._guard_wait_timer is not None and self._guard_wait_timer.active():
            self._guard_wait_timer.cancel()
        self._guard_wait_timer = None
        if self._expiry_timer is not None and self._expiry_timer.active():
            self._expiry_timer.cancel()
        if self._conflux_retry_timer is not None and self._conflux_retry_timer.active():
            self._conflux_retry_timer.cancel()
        for record in self.conflux_sets.values():
            for timer in record.link_timers:
                if timer.active():
                    timer.cancel()
        for managed in list(self.streams.values()):
            self._cancel_timer(managed)
            managed.stream.close(EndReason.DONE)
        for managed in list(self.circuits.values()):
            if managed.circuit is not None:
                managed.circuit.close(DestroyReason.FINISHED, "shutting down", padding_may_hold=False)
