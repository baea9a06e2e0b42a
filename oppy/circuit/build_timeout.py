"""Circuit build timeout learning (path-spec 2.4, tor's circuitstats.c): how long to wait for a circuit.

A client that waits too long for slow circuits feels slow, and one that gives up too soon keeps only the
fastest paths. Tor clients therefore learn the distribution of their own three-hop build times: after
`cbtmincircs` builds, the tail is fitted with a Pareto curve (Xm from the histogram's modes, alpha by maximum
likelihood) and a circuit not built by its `cbtquantile` point is timed out for its users, but left to build
until the `cbtclosequantile` point so that the tail keeps being measured (path-spec 2.4.4). When most recent
circuits that reached their first hop time out, the network has changed: the history is dropped and the
timeout goes back up (2.4.5).

Sans IO: times come from the injected `clock`, the shuffle of a loaded history from the injected `rng`, and
the owner hears typed events. Build times are kept in milliseconds, as tor keeps them.
"""

from __future__ import annotations

import bisect
import enum
import heapq
import itertools
import logging
import math
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from oppy.logs import notice

log = logging.getLogger(__name__)

INT32_MAX = 2**31 - 1
# path-spec 2.4.2 (circuitstats.h CBT_NCIRCUITS_TO_OBSERVE): the build times kept, in a ring.
CBT_NCIRCUITS_TO_OBSERVE = 1000
# path-spec 2.4.2 (CBT_BIN_WIDTH): width in ms of the histogram bins, for Xm and on disk.
CBT_BIN_WIDTH = 10
# circuitstats.h: a circuit closed at the close timeout (right-censored), kept in the ring as this value.
CBT_BUILD_ABANDONED = INT32_MAX - 1
CBT_BUILD_TIME_MAX = INT32_MAX
# circuitstats.h CBT_SAVE_STATE_EVERY: the history is due to be saved every ten recorded times.
CBT_SAVE_STATE_EVERY = 10
# path-spec 2.4.2: only three-hop build times are recorded (tor's DEFAULT_ROUTE_LEN).
DEFAULT_ROUTE_LEN = 3
# circuitstats.c circuit_build_times_network_check_changed: the timeout is not doubled beyond this.
_MAX_DOUBLED_TIMEOUT_MS = INT32_MAX // 2
# The keys of tor's state file that hold the history (statefile.c); oppy writes them to a file of its own.
STATE_TOTAL = "TotalBuildTimes"
STATE_ABANDONED = "CircuitBuildAbandonedCount"
STATE_BIN = "CircuitBuildTimeBin"


class BuildTimesStateError(ValueError):
    """A saved build-time history cannot be read; the message says which line and why."""


# ------------------------------------------------------------------------------------------ parameters

#: path-spec 2.4.6 (circuitstats.h, circuitlist.c, circuituse.c): consensus parameter -> (field, default,
#: minimum, maximum). A value outside [minimum, maximum] is clamped, as networkstatus_get_param does.
CONSENSUS_PARAMETERS: dict[str, tuple[str, int, int, int]] = {
    "cbtdisabled": ("disabled", 0, 0, 1),
    "cbtnummodes": ("num_modes", 10, 1, 20),
    "cbtrecentcount": ("recent_count", 20, 3, 1000),
    "cbtmaxtimeouts": ("max_timeouts", 18, 3, 10000),
    "cbtmincircs": ("min_circuits", 100, 1, 10000),
    "cbtquantile": ("quantile", 80, 10, 99),
    "cbtclosequantile": ("close_quantile", 99, 10, 99),
    "cbttestfreq": ("test_frequency", 10, 1, INT32_MAX),
    "cbtmintimeout": ("min_timeout_ms", 10, 10, INT32_MAX),
    "cbtinitialtimeout": ("initial_timeout_ms", 60_000, 10, INT32_MAX),
    "cbtlearntimeout": ("learning_idle_timeout", 180, 10, 60_000),
    "cbtmaxopencircs": ("max_open_circuits", 10, 0, 14),
}


@dataclass(frozen=True)
class BuildTimeoutParameters:
    """The consensus parameters of build timeout learning, bounded as tor bounds them (path-spec 2.4.6)."""

    disabled: int = 0
    num_modes: int = 10
    recent_count: int = 20
    max_timeouts: int = 18
    min_circuits: int = 100
    quantile: int = 80  # percent
    close_quantile: int = 99  # percent, at least `quantile`
    test_frequency: int = 10  # seconds
    min_timeout_ms: int = 10
    initial_timeout_ms: int = 60_000  # at least `min_timeout_ms`
    learning_idle_timeout: int = 180  # seconds
    max_open_circuits: int = 10

    @classmethod
    def from_consensus(cls, params: Mapping[str, int]) -> "BuildTimeoutParameters":
        """The parameters a consensus's ``params`` line sets; the defaults for those it leaves out."""
        values = {}
        for name, (field, default, low, high) in CONSENSUS_PARAMETERS.items():
            values[field] = min(max(params.get(name, default), low), high)
        # circuitstats.c circuit_build_times_close_quantile and circuit_build_times_initial_timeout.
        if values["close_quantile"] < values["quantile"]:
            log.warning("Consensus parameter cbtclosequantile is too small, raising to %d", values["quantile"])
            values["close_quantile"] = values["quantile"]
        if values["initial_timeout_ms"] < values["min_timeout_ms"]:
            log.warning("Consensus parameter cbtinitialtimeout is too small, raising to %d",
                        values["min_timeout_ms"])
            values["initial_timeout_ms"] = values["min_timeout_ms"]
        return cls(**values)


# ------------------------------------------------------------------------------------------ events


class BuildTimeoutSetKind(enum.Enum):
    """control-spec BUILDTIMEOUT_SET types (control_events.c control_event_buildtimeout_set)."""

    COMPUTED = "COMPUTED"
    RESET = "RESET"


@dataclass(frozen=True)
class BuildTimeoutSet:
    """The timeout was computed or reset: what control-spec's BUILDTIMEOUT_SET event reports."""

    kind: BuildTimeoutSetKind
    total_times: int
    timeout_ms: float
    xm: int
    alpha: float
    cutoff_quantile: float
    timeout_rate: float
    close_ms: float
    close_rate: float

    def control_arguments(self) -> str:
        """The event's arguments as tor formats them (cbt_control_event_buildtimeout_set)."""
        return (f"{self.kind.value} TOTAL_TIMES={self.total_times} TIMEOUT_MS={int(self.timeout_ms)} "
                f"XM={self.xm} ALPHA={self.alpha:f} CUTOFF_QUANTILE={self.cutoff_quantile:f} "
                f"TIMEOUT_RATE={self.timeout_rate:f} CLOSE_MS={int(self.close_ms)} CLOSE_RATE={self.close_rate:f}")


@dataclass(frozen=True)
class BuildTimesToSave:
    """Ten more build times were recorded (CBT_SAVE_STATE_EVERY): the history should be written out."""

    total_times: int


BuildTimesEvent = BuildTimeoutSet | BuildTimesToSave


# ------------------------------------------------------------------------------------------ one build


class TimeoutAction(enum.Enum):
    """What becomes of a circuit that reaches its timeout unbuilt (circuituse.c circuit_expire_building)."""

    #: Give it up now: it is not measured (not a three-hop general circuit, or too few times to learn from).
    CLOSE = "close"
    #: It failed for its users, but keeps building until the close timeout to measure the tail.
    MEASURE = "measure"
    #: No circuit is open (the network may just have changed): wait for it until the close timeout.
    RELAX = "relax"


def _actions(hops: int) -> int:
    """path-spec 2.4.3: the hop traversals of building a circuit of `hops` hops, Actions(N) = N(N+1)/2."""
    return hops * (hops + 1) // 2


class BuildAttempt:
    """One circuit's build as the estimator sees it: its deadlines, and what each event means for the
    history. Made by `CircuitBuildTimes.start_build` when the circuit is launched; the builder calls `begin`
    when the first hop's link is open (the build's clock starts: tor's timestamp_began), `timed_out` at
    `timeout`, `close_timed_out` at `close_timeout` (unless it gave the circuit up at `timed_out`), and
    `built` if every hop is built in time."""

    def __init__(self, times: "CircuitBuildTimes", counted: bool, scale: float,
                 any_circuit_open: Callable[[], bool]) -> None:
        self.times = times
        #: A general-purpose three-hop circuit: its build time and its timeout count (path-spec 2.4.2).
        self.counted = counted
        self.scale = scale
        self.any_circuit_open = any_circuit_open
        #: When the circuit was launched: a network that has been silent since then is not live.
        self.created_at = times.clock()
        #: Timed out for its users and building on only to be measured (tor's MEASURE_TIMEOUT purpose).
        self.measuring = False
        #: Its timeout was counted while no circuit was open (tor's relaxed_timeout).
        self.relaxed = False
        self.begin()

    def begin(self) -> None:
        """The first hop's link is open: the build time and the deadlines run from now, the deadlines being
        the estimator's current ones (seconds, scaled for longer paths)."""
        times = self.times
        self.started_at = times.clock()
        self.timeout = times.timeout * self.scale
        self.close_timeout = max(times.close_timeout * self.scale, self.timeout)

    def timed_out(self, first_hop_done: bool) -> TimeoutAction:
        """The circuit is still unbuilt at `timeout` (circuituse.c circuit_expire_building)."""
        times = self.times
        if self.close_timeout > self.timeout and not self.any_circuit_open():
            if not self.relaxed:
                self.relaxed = True
                times.count_timeout(first_hop_done)
            return TimeoutAction.RELAX
        if self.counted and times.enough_to_compute and not times.disabled:
            # circuitstats.c circuit_build_times_mark_circ_as_measurement_only.
            self.measuring = True
            if not self.relaxed:
                times.count_timeout(first_hop_done)
            return TimeoutAction.MEASURE
        return TimeoutAction.CLOSE

    def close_timed_out(self, first_hop_done: bool) -> None:
        """The circuit is still unbuilt at `close_timeout` and is closed: abandoned, if it is measured."""
        times = self.times
        if not (self.counted and times.enough_to_compute):
            return
        elapsed_ms = (times.clock() - self.started_at) * 1000
        if elapsed_ms > 2 * times.close_ms + 1000:
            log.info("Extremely large value for circuit build timeout: %.0fms. Assuming clock jump.", elapsed_ms)
            return
        if times.count_close(first_hop_done, self.created_at):
            times.set_timeout()

    def built(self) -> None:
        """Every hop is built (circuitstats.c circuit_build_times_handle_completed_hop at the third hop)."""
        times = self.times
        if not self.counted or times.disabled:
            return
        elapsed_ms = round((times.clock() - self.started_at) * 1000)
        if elapsed_ms <= 0 or elapsed_ms > 2 * times.close_ms + 1000:
            log.info("Strange value for circuit build time: %dms. Assuming clock jump.", elapsed_ms)
            return
        if times.network_live:
            times.add_time(elapsed_ms)
            times.set_timeout()
        if not self.measuring:
            times.circuit_succeeded()


# ------------------------------------------------------------------------------------------ the estimator


class CircuitBuildTimes:
    """The client's build-time history and the timeouts learned from it (tor's circuit_build_times_t).

    `learn` is torrc's LearnCircuitBuildTimeout. `configured_timeout` is CircuitBuildTimeout in seconds: 0
    for none; otherwise the timeout used before one is learned, and the only one when learning is off."""

    def __init__(self, *, learn: bool = True, configured_timeout: float = 0,
                 parameters: BuildTimeoutParameters = BuildTimeoutParameters(),
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.learn = learn
        self.configured_timeout = configured_timeout
        self.parameters = parameters
        self.clock = clock
        self.rng = rng or random.SystemRandom()
        self._observers: list[Callable[[BuildTimesEvent], None]] = []
        # The ring of build times in ms (0: empty slot; CBT_BUILD_ABANDONED: closed at the close timeout).
        self._times = [0] * CBT_NCIRCUITS_TO_OBSERVE
        self._next = 0
        self.total_build_times = 0
        self.xm = 0
        self.alpha = 0.0
        self.have_computed_timeout = False
        # Network liveness (circuitstats.h network_liveness_t): the outcome of each recent circuit that
        # reached its first hop (1: timed out), and when a cell last arrived.
        self._recent: list[int] | None = None if self.disabled else [0] * parameters.recent_count
        self._recent_next = 0
        self.network_last_live = clock()
        self.nonlive_timeouts = 0
        # For the control event's rates (tor's num_circ_succeeded, num_circ_timeouts, num_circ_closed).
        self.succeeded = 0
        self.timeouts = 0
        self.closed = 0
        # When the last circuit was launched (for test circuits while learning, cbttestfreq).
        self.last_circuit_at = clock()
        self.timeout_ms = self.close_ms = self._initial_timeout_ms()

    # ---------------------------------------------------------------------------------- configuration

    @property
    def disabled(self) -> bool:
        """Learning is off (circuit_build_times_disabled): by LearnCircuitBuildTimeout 0 or cbtdisabled."""
        return not self.learn or bool(self.parameters.disabled)

    def _initial_timeout_ms(self) -> float:
        """CircuitBuildTimeout if set, else cbtinitialtimeout (circuit_build_times_get_initial_timeout)."""
        if self.configured_timeout:
            timeout = self.configured_timeout * 1000
            if not self.disabled and timeout < self.parameters.min_timeout_ms:
                log.warning("Config CircuitBuildTimeout too low. Setting to %ds",
                            self.parameters.min_timeout_ms // 1000)
                timeout = self.parameters.min_timeout_ms
            return timeout
        return self.parameters.initial_timeout_ms

    def set_options(self, *, learn: bool, configured_timeout: float) -> None:
        """LearnCircuitBuildTimeout or CircuitBuildTimeout changed (SETCONF, RELOAD)."""
        self.learn = learn
        self.configured_timeout = configured_timeout
        self._liveness_for_parameters()
        if not self.have_computed_timeout:
            self.timeout_ms = self.close_ms = self._initial_timeout_ms()

    def update_params(self, params: Mapping[str, int]) -> None:
        """A new consensus's ``params`` (circuit_build_times_new_consensus_params)."""
        self.parameters = BuildTimeoutParameters.from_consensus(params)
        self._liveness_for_parameters()

    def _liveness_for_parameters(self) -> None:
        """Size the recent-circuit record to cbtrecentcount, or drop it while learning is off."""
        if self.disabled:
            self._recent = None
            return
        count = self.parameters.recent_count
        if self._recent is not None and len(self._recent) == count:
            return
        if self._recent is None:
            log.info("Re-enabling circuit-based network failure detection.")
            self._recent, self._recent_next = [0] * count, 0
            return
        log.info("The consensus has changed how many circuits we must track to detect network failures "
                 "from %d to %d.", len(self._recent), count)
        # Only the number of timeouts matters: order and a few outcomes may be lost, as in tor.
        self._recent = (self._recent + [0] * count)[:count]
        self._recent_next = min(self._recent_next, count - 1)

    # ---------------------------------------------------------------------------------- the timeouts

    @property
    def timeout(self) -> float:
        """Seconds a circuit may take to build before it is given up for its users."""
        return (self._initial_timeout_ms() if self.disabled else self.timeout_ms) / 1000

    @property
    def close_timeout(self) -> float:
        """Seconds after which a circuit still building is closed for good."""
        return (self._initial_timeout_ms() if self.disabled else self.close_ms) / 1000

    @property
    def enough_to_compute(self) -> bool:
        """cbtmincircs times are recorded: the timeout is learned (circuit_build_times_enough_to_compute)."""
        return self.total_build_times >= self.parameters.min_circuits

    def start_build(self, path_length: int, counted: bool, any_circuit_open: Callable[[], bool]) -> BuildAttempt:
        """A circuit of `path_length` hops is launched.
        `counted`: a general-purpose circuit oppy chose; only three-hop ones are. `any_circuit_open` tells
        whether some three-hop circuit is open (circuit_any_opened_circuits) when the timeout passes."""
        self.last_circuit_at = self.clock()
        # path-spec 2.4.3: longer circuits wait in proportion to the hops their build traverses.
        scale = _actions(path_length) / _actions(DEFAULT_ROUTE_LEN) if path_length > DEFAULT_ROUTE_LEN else 1
        return BuildAttempt(self, counted and path_length == DEFAULT_ROUTE_LEN, scale, any_circuit_open)

    # ---------------------------------------------------------------------------------- observers

    def add_observer(self, observer: Callable[[BuildTimesEvent], None]) -> None:
        """Call ``observer(event)`` for each BuildTimeoutSet and BuildTimesToSave."""
        self._observers.append(observer)

    def remove_observer(self, observer: Callable[[BuildTimesEvent], None]) -> None:
        self._observers = [known for known in self._observers if known is not observer]

    def _emit(self, event: BuildTimesEvent) -> None:
        for observer in list(self._observers):
            try:
                observer(event)
            except Exception:  # an observer's bug must not break circuit building
                log.exception("build timeout observer failed")

    def _emit_timeout_set(self, kind: BuildTimeoutSetKind) -> None:
        """cbt_control_event_buildtimeout_set: rates over the circuits attempted since the last reset."""
        attempted = self.timeouts + self.succeeded
        quantile = self.parameters.quantile / 100 if kind is BuildTimeoutSetKind.COMPUTED else 1.0
        self._emit(BuildTimeoutSet(kind, self.total_build_times, self.timeout_ms, self.xm, self.alpha, quantile,
                                   self.timeouts / attempted if attempted else 0.0, self.close_ms,
                                   self.closed / attempted if attempted else 0.0))

    # ---------------------------------------------------------------------------------- the history

    def add_time(self, build_time_ms: int) -> None:
        """Record one build time in ms, or CBT_BUILD_ABANDONED (circuit_build_times_add_time)."""
        if not 0 < build_time_ms <= CBT_BUILD_TIME_MAX:
            raise ValueError(f"a circuit build time must be 1 to {CBT_BUILD_TIME_MAX} ms, not {build_time_ms}")
        self._times[self._next] = build_time_ms
        self._next = (self._next + 1) % CBT_NCIRCUITS_TO_OBSERVE
        if self.total_build_times < CBT_NCIRCUITS_TO_OBSERVE:
            self.total_build_times += 1
        if self.total_build_times % CBT_SAVE_STATE_EVERY == 0:
            self._emit(BuildTimesToSave(self.total_build_times))

    @property
    def build_times(self) -> list[int]:
        """The recorded times in ms, oldest first (CBT_BUILD_ABANDONED for abandoned circuits)."""
        ordered = self._times[self._next:] + self._times[:self._next]
        return [value for value in ordered if value]

    def _max_build_time(self) -> int:
        """The longest recorded build time, abandoned circuits left out (circuit_build_times_max)."""
        return max((value for value in self._times if value != CBT_BUILD_ABANDONED), default=0)

    def histogram(self) -> list[int]:
        """Counts per CBT_BIN_WIDTH ms bin up to the longest time (circuit_build_times_create_histogram)."""
        counts = [0] * (1 + self._max_build_time() // CBT_BIN_WIDTH)
        for value in self._times:
            if value and value != CBT_BUILD_ABANDONED:
                counts[value // CBT_BIN_WIDTH] += 1
        return counts

    def _compute_xm(self) -> int:
        """path-spec 2.4.3: the weighted average of the midpoints of the `cbtnummodes` most frequent bins,
        ties going to the shorter times; 0 if no time is recorded (circuit_build_times_get_xm)."""
        counts = Counter(value // CBT_BIN_WIDTH for value in self._times if value and value != CBT_BUILD_ABANDONED)
        modes = heapq.nsmallest(self.parameters.num_modes, counts.items(), key=lambda item: (-item[1], item[0]))
        weight = sum(count for _, count in modes)
        return sum(_bin_midpoint(index) * count for index, count in modes) // weight if weight else 0

    def _update_alpha(self) -> bool:
        """path-spec 2.4.3: Xm, then alpha = n / (sum ln(max(Xm, x_i)) - n ln Xm) over the n circuits
        that were built; abandoned ones are left out (circuit_build_times_update_alpha)."""
        self.xm = self._compute_xm()
        if self.xm == 0:
            return False
        log_xm = math.log(self.xm)
        total = 0.0
        n = 0
        for value in self._times:
            if not value or value == CBT_BUILD_ABANDONED:
                continue
            total += log_xm if value < self.xm else math.log(value)
            n += 1
        denominator = total - n * log_xm
        self.alpha = n / denominator if denominator > 0 else math.inf
        return True

    def _quantile_ms(self, quantile: float) -> float:
        """The Pareto quantile function Xm / (1 - q)^(1/alpha), at most INT32_MAX
        (circuit_build_times_calculate_timeout)."""
        if self.alpha > 0:
            p = (1.0 - quantile) ** (1.0 / self.alpha)
            if p > 0:
                return min(self.xm / p, INT32_MAX)
        return INT32_MAX

    def set_timeout(self) -> None:
        """Recompute the timeouts from the history (circuit_build_times_set_timeout)."""
        if self.disabled or not self.enough_to_compute or not self._update_alpha():
            return
        parameters = self.parameters
        previous = self.timeout_ms
        self.timeout_ms = self._quantile_ms(parameters.quantile / 100)
        self.close_ms = self._quantile_ms(parameters.close_quantile / 100)
        # path-spec 2.4.3: no longer than the longest build seen, closing at twice that, but not before
        # cbtinitialtimeout.
        longest = self._max_build_time()
        self.timeout_ms = min(self.timeout_ms, longest)
        if longest < INT32_MAX // 2 and self.close_ms > 2 * longest:
            self.close_ms = 2 * longest
        self.close_ms = max(self.close_ms, parameters.initial_timeout_ms)
        self.have_computed_timeout = True
        if self.timeout_ms < parameters.min_timeout_ms:
            log.info("Set buildtimeout to low value %fms. Setting to %dms", self.timeout_ms,
                     parameters.min_timeout_ms)
            self.timeout_ms = parameters.min_timeout_ms
            if self.close_ms < self.timeout_ms:
                self.close_ms = parameters.initial_timeout_ms
        self._emit_timeout_set(BuildTimeoutSetKind.COMPUTED)
        if round(previous / 1000) != round(self.timeout_ms / 1000):
            log.info("Based on %d circuit times, we will now assume a circuit is too slow to use after "
                     "waiting %.0f milliseconds.", self.total_build_times, self.timeout_ms)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("Circuit timeout data: %fms, %fms, Xm: %d, a: %f, r: %f", self.timeout_ms, self.close_ms,
                      self.xm, self.alpha, self.timeout_rate())

    def timeout_rate(self) -> float:
        """The share of recorded times at or past the timeout (circuit_build_times_timeout_rate)."""
        if not self.total_build_times:
            return 0.0
        return sum(1 for value in self._times if value >= self.timeout_ms) / self.total_build_times

    def reset(self) -> None:
        """Forget the history, keeping the timeouts and liveness (circuit_build_times_reset; DROPTIMEOUTS)."""
        self._times = [0] * CBT_NCIRCUITS_TO_OBSERVE
        self._next = 0
        self.total_build_times = 0
        self.have_computed_timeout = False
        self.succeeded = self.timeouts = self.closed = 0

    # ---------------------------------------------------------------------------------- outcomes

    def circuit_succeeded(self) -> None:
        """A counted circuit was built before its timeout (circuit_build_times_network_circ_success)."""
        self.succeeded += 1
        self._remember_outcome(0)

    def count_timeout(self, first_hop_done: bool) -> None:
        """A circuit reached its timeout (circuit_build_times_count_timeout): if it had reached its first
        hop it is a recent timeout, and too many of those mean the network changed."""
        if self.disabled:
            return
        self.timeouts += 1
        if first_hop_done:
            self._remember_outcome(1)
        self._check_network_changed()

    def _remember_outcome(self, timed_out: int) -> None:
        if self._recent is not None:
            self._recent[self._recent_next] = timed_out
            self._recent_next = (self._recent_next + 1) % len(self._recent)

    def _check_network_changed(self) -> bool:
        """path-spec 2.4.5 (circuit_build_times_network_check_changed): at least cbtmaxtimeouts of the last
        cbtrecentcount circuits timed out after their first hop: drop the history and wait longer."""
        recent_timeouts = sum(self._recent) if self._recent is not None else 0
        if recent_timeouts < self.parameters.max_timeouts:
            return False
        total = self.total_build_times
        self.reset()
        if self._recent is not None:
            self._recent = [0] * len(self._recent)
        self._recent_next = 0
        if self.timeout_ms >= self._initial_timeout_ms():
            if self.timeout_ms > _MAX_DOUBLED_TIMEOUT_MS or self.close_ms > _MAX_DOUBLED_TIMEOUT_MS:
                log.warning("Insanely large circuit build timeout value. (timeout = %fmsec, close = %fmsec)",
                            self.timeout_ms, self.close_ms)
            else:
                self.timeout_ms *= 2
                self.close_ms *= 2
        else:
            self.timeout_ms = self.close_ms = self._initial_timeout_ms()
        self._emit_timeout_set(BuildTimeoutSetKind.RESET)
        notice(log, "Your network connection speed appears to have changed. Resetting timeout to %.0fms after "
               "%d timeouts and %d buildtimes.", self.timeout_ms, recent_timeouts, total)
        return True

    def count_close(self, first_hop_done: bool, created_at: float) -> bool:
        """A measured circuit was closed at its close timeout (circuit_build_times_count_close): it is recorded
        as abandoned, unless no cell arrived from the network since it was launched. True if recorded."""
        if self.disabled:
            return False
        self.closed += 1
        if self.network_last_live < created_at:
            if first_hop_done:
                log.info("A circuit somehow completed a hop while the network was not live.")
            self.nonlive_timeouts += 1
            if self.nonlive_timeouts == 1:
                notice(log, "oppy has not observed any network activity for the past %.0f seconds. Disabling "
                       "circuit build timeout recording.", self.clock() - self.network_last_live)
        if not self.network_live:
            return False
        self.add_time(CBT_BUILD_ABANDONED)
        return True

    # ---------------------------------------------------------------------------------- network liveness

    def network_is_live(self) -> None:
        """A cell arrived on some link (circuit_build_times_network_is_live). Called for every read: cheap."""
        now = self.clock()
        if self.nonlive_timeouts:
            notice(log, "oppy now sees network activity. Restoring circuit build timeout recording. Network was "
                   "down for %.0f seconds during %d circuit attempts.", now - self.network_last_live,
                   self.nonlive_timeouts)
            self.nonlive_timeouts = 0
        self.network_last_live = now

    @property
    def network_live(self) -> bool:
        """No circuit was abandoned since the network last showed activity (network_check_live)."""
        return self.nonlive_timeouts == 0

    # ---------------------------------------------------------------------------------- learning phase

    def wants_test_circuit(self, clean_circuits: int) -> bool:
        """path-spec 2.4.2 (circuituse.c needs_circuits_for_build): until cbtmincircs times are recorded,
        one more circuit every cbttestfreq seconds, while fewer than cbtmaxopencircs are clean."""
        parameters = self.parameters
        return (not self.disabled and not self.enough_to_compute and clean_circuits < parameters.max_open_circuits
                and self.clock() - self.last_circuit_at > parameters.test_frequency)

    @property
    def learning_idle_timeout(self) -> float | None:
        """While learning, how long an unused circuit is kept (cbtlearntimeout, circuitlist.c); else None."""
        if self.disabled or self.enough_to_compute:
            return None
        return float(self.parameters.learning_idle_timeout)

    # ---------------------------------------------------------------------------------- persistence

    def state_lines(self) -> list[str]:
        """The history as tor's state file keeps it (circuit_build_times_update_state): the total, the
        abandoned count and one ``CircuitBuildTimeBin MIDPOINT COUNT`` line per non-empty bin."""
        abandoned = sum(1 for value in self._times if value == CBT_BUILD_ABANDONED)
        lines = [f"{STATE_TOTAL} {self.total_build_times}", f"{STATE_ABANDONED} {abandoned}"]
        lines.extend(f"{STATE_BIN} {_bin_midpoint(index)} {count}"
                     for index, count in enumerate(self.histogram()) if count)
        return lines

    def load_state(self, lines: Iterable[str]) -> None:
        """Take a history written by `state_lines` (or tor's own state-file lines for it), shuffled so that
        old times still leave the ring first (circuit_build_times_parse_state). Blank lines, comments and
        other keys of tor's state file are skipped. Raises BuildTimesStateError, keeping no history, if
        the lines are malformed or do not add up."""
        self.reset()
        total: int | None = None
        abandoned = 0
        bins: list[tuple[int, int]] = []
        for number, line in enumerate(lines, 1):
            key, _, value = line.strip().partition(" ")
            if not key or key.startswith("#"):
                continue
            fields = value.split()
            try:
                if key == STATE_TOTAL:
                    total = _state_int(fields, 1, INT32_MAX)[0]
                elif key == STATE_ABANDONED:
                    abandoned = _state_int(fields, 1, INT32_MAX)[0]
                elif key == STATE_BIN:
                    milliseconds, count = _state_int(fields, 2, CBT_BUILD_TIME_MAX)
                    if milliseconds == 0:
                        raise ValueError("a build time of 0 ms")
                    bins.append((milliseconds, count))
            except ValueError as exc:
                raise BuildTimesStateError(f"line {number} ({line.strip()!r}): {exc}") from None
        if total is None:
            if bins or abandoned:
                raise BuildTimesStateError(f"{STATE_BIN} or {STATE_ABANDONED} lines without {STATE_TOTAL}")
            return
        groups: list[tuple[int, int]] = []
        loaded = 0
        for milliseconds, count in bins:
            if loaded + count + abandoned > total:
                log.warning("Too many build times in state file. Stopping short before %d", loaded + count)
                break
            groups.append((milliseconds, count))
            loaded += count
        groups.append((CBT_BUILD_ABANDONED, abandoned))
        loaded += abandoned
        if loaded != total:
            raise BuildTimesStateError(f"{STATE_TOTAL} says {total} but the lines hold {loaded} times")
        if total > CBT_NCIRCUITS_TO_OBSERVE:
            log.info("Decreasing the circuit time history from %d to %d.", total, CBT_NCIRCUITS_TO_OBSERVE)
        # A random CBT_NCIRCUITS_TO_OBSERVE of the times, in random order (tor shuffles them all and keeps the
        # first ones), picked by position so that a huge saved total costs no memory.
        ends = list(itertools.accumulate(count for _, count in groups))
        for position in self.rng.sample(range(total), min(total, CBT_NCIRCUITS_TO_OBSERVE)):
            self.add_time(groups[bisect.bisect_right(ends, position)][0])
        log.info("Loaded %d circuit build times from %d histogram lines", self.total_build_times, len(bins))
        self.set_timeout()


def _bin_midpoint(index: int) -> int:
    """CBT_BIN_TO_MS: the midpoint in ms of histogram bin `index`."""
    return index * CBT_BIN_WIDTH + CBT_BIN_WIDTH // 2


def _state_int(fields: list[str], count: int, maximum: int) -> list[int]:
    """`count` decimal integers from 0 to `maximum` (tor_parse_ulong); extra fields are ignored, as tor does."""
    if len(fields) < count:
        raise ValueError(f"expected {count} number{'s' if count > 1 else ''}")
    values = []
    for field in fields[:count]:
        if not field.isdigit() or int(field) > maximum:
            raise ValueError(f"{field!r} is not a number from 0 to {maximum}")
        values.append(int(field))
    return values


__all__ = [
    "CBT_BIN_WIDTH", "CBT_BUILD_ABANDONED", "CBT_NCIRCUITS_TO_OBSERVE", "CONSENSUS_PARAMETERS", "DEFAULT_ROUTE_LEN",
    "BuildAttempt", "BuildTimeoutParameters", "BuildTimeoutSet", "BuildTimeoutSetKind", "BuildTimesEvent",
    "BuildTimesStateError", "BuildTimesToSave", "CircuitBuildTimes", "TimeoutAction",
]
