"""Circuit management: which circuit carries which stream, built ahead of demand, isolated, retired.

The rules are tor's (path-spec "When we build", tor-client-checklist.md section 6): clean circuits are built
ahead of demand so a first request does not wait for a build; a stream goes on an open circuit whose exit
allows its port, with the same isolation key (SOCKS credentials, NEWNYM epoch), not dirty for longer than
MaxCircuitDirtiness; a stream without CONNECTED after 10 s (15 s from the third try), or refused by a
retriable END, is detached and retried on another circuit.
"""

from __future__ import annotations

import enum
import itertools
import logging
import time
from typing import Callable

from twisted.internet import defer, reactor as default_reactor

from oppy.cell.commands import DestroyReason, EndReason
from oppy.circuit.build import DEFAULT_CIRCUIT_BUILD_TIMEOUT, build_circuit
from oppy.circuit.circuit import Circuit, CircuitError
from oppy.link.relay import RelayTarget
from oppy.stream.stream import Stream, StreamEnd, StreamKind, StreamSink, StreamState

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
# tor's SocksTimeout default: how long a stream may wait for a controller to attach it.
DEFAULT_UNATTACHED_TIMEOUT = 120.0
# How many circuits may be building at once (tor's MaxClientCircuitsPending default).
DEFAULT_MAX_PENDING_CIRCUITS = 32


class CircuitStatus(enum.Enum):
    """The states the control port's CIRC events report."""

    LAUNCHED = "LAUNCHED"
    EXTENDED = "EXTENDED"
    BUILT = "BUILT"
    FAILED = "FAILED"
    CLOSED = "CLOSED"


class CircuitPurpose(enum.Enum):
    GENERAL = "GENERAL"
    CONTROLLER = "CONTROLLER"


class ManagedCircuit:
    """A circuit as the client uses it: its number, isolation, dirtiness and status."""

    def __init__(self, number: int, path: list[RelayTarget], purpose: CircuitPurpose, created_at: float,
                 created_wallclock: float) -> None:
        self.number = number
        self.path = path
        self.purpose = purpose
        self.created_at = created_at
        self.created_wallclock = created_wallclock
        self.status = CircuitStatus.LAUNCHED
        self.circuit: Circuit | None = None
        self.isolation: object = None
        self.dirty_since: float | None = None
        self.usable = True  # False once a stream timed out on it, or after NEWNYM
        self.port: int | None = None  # the port it was built for
        self.error: CircuitError | None = None
        self.hops_built = 0
        self.built: defer.Deferred = defer.Deferred()
        # A controller's CLOSECIRCUIT arrived while it was still building: close it once built.
        self.close_requested = False

    def __repr__(self) -> str:
        return f"<ManagedCircuit {self.number} {self.status.value}>"

    @property
    def is_open(self) -> bool:
        return self.status is CircuitStatus.BUILT and self.circuit is not None and self.circuit.is_open

    @property
    def exit(self) -> RelayTarget:
        return self.path[-1]


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


class ManagedStream:
    """Bookkeeping for one client stream: its number, attempts, isolation and the timers that retry it."""

    def __init__(self, number: int, stream: Stream, isolation: object, source: str | None) -> None:
        self.number = number
        self.stream = stream
        self.isolation = isolation
        self.source = source
        self.attempts = 0
        self.resolve_failures = 0
        self.excluded_exits: set[bytes] = set()
        # The exit's reason for the last failed attempt: what the application hears if no circuit is left.
        self.last_end_reason: int | None = None
        self.managed_circuit: ManagedCircuit | None = None
        self.timer = None
        # Unattached until a controller's ATTACHSTREAM (__LeaveStreamsUnattached): tor's CONTROLLER_WAIT.
        self.awaiting_controller = False


class CircuitManager:
    """Owns the client's circuits and streams, and attaches the streams to the circuits.

    It is the `StreamOwner` of every stream it opens: the streams report their milestones to it."""

    def __init__(self, links, choose_path: Callable[..., list[RelayTarget]], *,
                 exit_allows: Callable[[bytes, int], bool] = lambda rsa_id, port: True,
                 reactor=None, clock: Callable[[], float] = time.monotonic,
                 max_circuit_dirtiness: float = DEFAULT_MAX_CIRCUIT_DIRTINESS,
                 build_timeout: float = DEFAULT_CIRCUIT_BUILD_TIMEOUT,
                 preemptive_circuits: int = DEFAULT_PREEMPTIVE_CIRCUITS,
                 max_pending: int = DEFAULT_MAX_PENDING_CIRCUITS,
                 guard_result: Callable[[bytes, bool], None] = lambda rsa_id, ok: None,
                 unattached_timeout: float = DEFAULT_UNATTACHED_TIMEOUT) -> None:
        self.links = links
        self.choose_path = choose_path
        self.exit_allows = exit_allows
        self.reactor = reactor or default_reactor
        self.clock = clock
        self.max_circuit_dirtiness = max_circuit_dirtiness
        self.build_timeout = build_timeout
        self.preemptive_circuits = preemptive_circuits
        self.max_pending = max_pending
        self.guard_result = guard_result
        self.unattached_timeout = unattached_timeout
        self.circuits: dict[int, ManagedCircuit] = {}
        self.streams: dict[int, ManagedStream] = {}
        self._managed_streams: dict[Stream, ManagedStream] = {}
        self._circuit_numbers = itertools.count(1)
        self._stream_numbers = itertools.count(1)
        self._newnym_epoch = 0
        self._running = True
        self._expiry_timer = None
        self._stream_waiters: list[ManagedStream] = []
        # `_top_up` and `_attach_waiting` run again from what they start (a build that fails at once): the
        # inner call is left to the outer one.
        self._topping_up = False
        self._attaching_waiting = False
        # Observers for the control port: called with (kind, object), kind "circuit" or "stream".
        self.observers: list[Callable[[str, object], None]] = []
        # Called once, when the first circuit is built (the daemon's "Bootstrapped 100%").
        self.on_first_circuit: Callable[[ManagedCircuit], None] = lambda managed: None
        self._first_built = False
        # When False, new streams wait for a controller's ATTACHSTREAM (__LeaveStreamsUnattached).
        self.attach_automatically = True

    # ------------------------------------------------------------------------------ events

    def _notify(self, kind: str, obj: object) -> None:
        for observer in list(self.observers):
            try:
                observer(kind, obj)
            except Exception:  # an observer's bug must not break circuits
                log.exception("observer failed")

    # ------------------------------------------------------------------------------ circuits

    def start(self) -> None:
        """Build the clean circuits kept ready ahead of demand, and start retiring old ones."""
        self._top_up()
        self._expire_old_circuits()

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
            if (too_dirty or not managed.usable) and managed.is_open and not managed.circuit.streams:
                log.info("circuit %d: %s and without streams; closing it", managed.number,
                         "dirty for too long" if too_dirty else "unusable for new streams")
                managed.circuit.close(DestroyReason.FINISHED, "expired")
        self._expiry_timer = self.reactor.callLater(NEW_CIRCUIT_PERIOD, self._expire_old_circuits)

    def _clean_circuits(self) -> list[ManagedCircuit]:
        return [m for m in self.circuits.values()
                if m.purpose is CircuitPurpose.GENERAL and m.isolation is None and m.usable
                and m.status in (CircuitStatus.LAUNCHED, CircuitStatus.EXTENDED, CircuitStatus.BUILT)]

    def _pending_count(self) -> int:
        return sum(1 for m in self.circuits.values()
                   if m.status in (CircuitStatus.LAUNCHED, CircuitStatus.EXTENDED))

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
        finally:
            self._topping_up = False

    def launch(self, port: int | None = None, path: list[RelayTarget] | None = None,
               purpose: CircuitPurpose = CircuitPurpose.GENERAL, exclude: set[bytes] = frozenset()
               ) -> ManagedCircuit:
        """Start building a circuit (for `port`, or through `path`); returns at once, `.built` fires later."""
        if path is None:
            path = self.choose_path(port, exclude=exclude)
        managed = ManagedCircuit(next(self._circuit_numbers), list(path), purpose, self.clock(), time.time())
        managed.port = port
        self.circuits[managed.number] = managed
        self._notify("circuit", managed)
        building = build_circuit(self.links, path, timeout=self.build_timeout, reactor=self.reactor,
                                 owner=_ManagedCircuitOwner(self, managed))
        building.addErrback(self._circuit_failed, managed)
        return managed

    def _circuit_extended(self, managed: ManagedCircuit, circuit: Circuit) -> None:
        managed.hops_built = circuit.hops_built
        managed.status = CircuitStatus.EXTENDED
        self._notify("circuit", managed)

    def _circuit_built(self, managed: ManagedCircuit, circuit: Circuit) -> None:
        managed.circuit = circuit
        managed.hops_built = circuit.hops_built
        if managed.close_requested:
            circuit.close(DestroyReason.REQUESTED, "closed on request")
            managed.built.errback(CircuitError("closed on request", DestroyReason.REQUESTED))
            managed.built.addErrback(lambda f: None)
            return
        managed.status = CircuitStatus.BUILT
        self.guard_result(managed.path[0].rsa_id, True)
        self._notify("circuit", managed)
        if not self._first_built:
            self._first_built = True
            self.on_first_circuit(managed)
        managed.built.callback(managed)
        self._attach_waiting()
        if not self._running:
            circuit.close()

    def _circuit_failed(self, failure, managed: ManagedCircuit) -> None:
        error = failure.value if isinstance(failure.value, CircuitError) else CircuitError(str(failure.value))
        managed.error = error
        managed.status = CircuitStatus.FAILED
        if error.hop == 0:
            self.guard_result(managed.path[0].rsa_id, False)
        log.info("circuit %d failed: %s", managed.number, error)
        self._notify("circuit", managed)
        managed.status = CircuitStatus.CLOSED
        self._notify("circuit", managed)
        self.circuits.pop(managed.number, None)
        managed.built.errback(error)
        managed.built.addErrback(lambda f: None)
        self._top_up()
        self._attach_waiting()

    def _circuit_closed(self, managed: ManagedCircuit, error: CircuitError) -> None:
        managed.error = error
        managed.status = CircuitStatus.CLOSED
        self.circuits.pop(managed.number, None)
        log.info("circuit %d closed: %s", managed.number, error)
        self._notify("circuit", managed)
        self._top_up()

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

    def newnym(self) -> None:
        """NEWNYM: no circuit in use so far takes new streams; new streams get new circuits."""
        self._newnym_epoch += 1
        for managed in self.circuits.values():
            managed.usable = False
        self._top_up()

    def _is_usable_for(self, managed: ManagedCircuit, port: int, isolation: object,
                       excluded_exits: set[bytes]) -> bool:
        if not managed.usable or managed.purpose is not CircuitPurpose.GENERAL:
            return False
        if managed.isolation is not None and managed.isolation != isolation:
            return False
        if managed.dirty_since is not None and self.clock() - managed.dirty_since > self.max_circuit_dirtiness:
            return False
        if managed.exit.rsa_id in excluded_exits:
            return False
        return managed.port == port or self.exit_allows(managed.exit.rsa_id, port)

    # ------------------------------------------------------------------------------ streams

    def isolation_key(self, credentials: object) -> object:
        """Streams share circuits only with the same credentials in the same NEWNYM epoch."""
        return (self._newnym_epoch, credentials)

    def open_stream(self, sink: StreamSink, host: str, port: int, kind: StreamKind = StreamKind.CONNECT,
                    credentials: object = None, source: str | None = None) -> ManagedStream:
        """A new stream for an application; it is attached as soon as a fitting circuit is open."""
        stream = Stream(sink, host, port, kind, owner=self)
        managed = ManagedStream(next(self._stream_numbers), stream, self.isolation_key(credentials), source)
        self._managed_streams[stream] = managed
        self.streams[managed.number] = managed
        self._notify("stream", managed)
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
        self._notify("stream", managed)
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

    def controller_attach(self, managed: ManagedStream, target: ManagedCircuit | None = None) -> None:
        """ATTACHSTREAM: put a waiting or connecting stream on `target` (an open circuit), or let oppy
        choose (None). A stream already sent to an exit is taken off its circuit first."""
        stream = managed.stream
        if stream.ended:
            raise RuntimeError("stream already ended")
        if target is not None and not target.is_open:
            raise RuntimeError(f"circuit {target.number} is not open")
        if stream.state in (StreamState.SENTCONNECT, StreamState.SENTRESOLVE):
            self._cancel_timer(managed)
            stream.detach(EndReason.TIMEOUT)
            self._notify("stream", managed)
        managed.awaiting_controller = False
        if target is None:
            self._attach(managed)
        else:
            self.attach_to(managed, target)

    # StreamOwner

    def stream_attempt_failed(self, stream: Stream, end: StreamEnd) -> bool:
        return self._retry(self._managed_streams[stream], end)

    def stream_connected(self, stream: Stream) -> None:
        """CONNECTED (or RESOLVED): stop the stream's retry timer."""
        managed = self._managed_streams[stream]
        self._cancel_timer(managed)
        self._notify("stream", managed)

    def stream_ended(self, stream: Stream, end: StreamEnd) -> None:
        managed = self._managed_streams.pop(stream)
        self._cancel_timer(managed)
        self._notify("stream", managed)
        self.streams.pop(managed.number, None)
        if managed in self._stream_waiters:
            self._stream_waiters.remove(managed)

    def _cancel_timer(self, managed: ManagedStream) -> None:
        if managed.timer is not None and managed.timer.active():
            managed.timer.cancel()
        managed.timer = None

    def _attach(self, managed: ManagedStream) -> None:
        stream = managed.stream
        if stream.ended:
            return
        port = stream.port if stream.kind is StreamKind.CONNECT else PREEMPTIVE_PORT
        candidates = [m for m in self.circuits.values() if m.is_open
                      and self._is_usable_for(m, port, managed.isolation, managed.excluded_exits)]
        if candidates:
            # Prefer circuits already carrying this isolation, then the newest.
            candidates.sort(key=lambda m: (m.isolation is None, -m.created_at))
            self.attach_to(managed, candidates[0])
            return
        pending = [m for m in self.circuits.values()
                   if m.status in (CircuitStatus.LAUNCHED, CircuitStatus.EXTENDED)
                   and self._is_usable_for(m, port, managed.isolation, managed.excluded_exits)]
        if managed not in self._stream_waiters:
            self._stream_waiters.append(managed)
        if not pending:
            try:
                launched = self.launch(port, exclude=managed.excluded_exits)
            except Exception as exc:  # no path: tell the application now
                self._give_up(managed, f"no path: {exc}")
                return
            if launched.status is CircuitStatus.CLOSED and managed in self._stream_waiters:
                self._give_up(managed, f"circuit {launched.number} failed at once: {launched.error}")

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

    def attach_to(self, managed: ManagedStream, target: ManagedCircuit) -> None:
        """Attach a stream to a given open circuit (also the controller's ATTACHSTREAM)."""
        if managed in self._stream_waiters:
            self._stream_waiters.remove(managed)
        managed.awaiting_controller = False
        if target.isolation is None and target.purpose is CircuitPurpose.GENERAL:
            target.isolation = managed.isolation
        if target.dirty_since is None:
            target.dirty_since = self.clock()
        managed.managed_circuit = target
        managed.attempts += 1
        managed.stream.attach(target.circuit)
        log.info("Attached stream %d to circuit %d (attempt %d)", managed.number, target.number, managed.attempts)
        self._notify("stream", managed)
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
                if circuit is not None:
                    managed.excluded_exits.add(circuit.exit.rsa_id)
            else:
                # relay.c connection_ap_process_end_not_open: a resolve failure, MISC or NOROUTE is retried
                # on another circuit up to MAX_RESOLVE_FAILURES times, and the circuit takes no new streams.
                managed.resolve_failures += 1
                if managed.resolve_failures >= MAX_RESOLVE_FAILURES:
                    return False
                if circuit is not None:
                    circuit.usable = False
        log.info("stream %d: attempt %d failed (%s); retrying on another circuit", managed.number,
                 managed.attempts, end)
        self._notify("stream", managed)  # DETACHED
        self._attach_or_wait(managed)
        return True

    # ------------------------------------------------------------------------------ shutdown

    def close_all(self) -> None:
        """Clean shutdown: END every stream, DESTROY every circuit."""
        self._running = False
        if self._expiry_timer is not None and self._expiry_timer.active():
            self._expiry_timer.cancel()
        for managed in list(self.streams.values()):
            self._cancel_timer(managed)
            managed.stream.close(EndReason.DONE)
        for managed in list(self.circuits.values()):
            if managed.circuit is not None:
                managed.circuit.close(DestroyReason.FINISHED, "shutting down")
