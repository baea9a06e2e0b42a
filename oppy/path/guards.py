"""Entry guards: guard-spec's algorithm (sampling, filtering, confirmed and primary guards,
retries, and when a circuit through a guard may be used).

What is kept, in guard-spec's words (tor ``entrynodes.c``):

* {SAMPLED_GUARDS} (:attr:`GuardSample.guards`, in sample order): relays of the {GUARDS}
  set (Guard, Stable, Fast, V2Dir, Valid) drawn with guard-position weights (Wgg/Wgd),
  at least ``guard-min-filtered-sample-size`` usable ones when possible and never more
  than the size limits. Each keeps ADDED_ON_DATE (drawn up to GUARD_LIFETIME/10 in the
  past), IS_LISTED and FIRST_UNLISTED_AT; a guard unlisted for
  REMOVE_UNLISTED_GUARDS_AFTER, or sampled more than GUARD_LIFETIME ago and not confirmed
  within GUARD_CONFIRMED_MIN_LIFETIME, leaves the sample.
* {FILTERED_GUARDS}: the listed sampled guards (oppy has no EntryNodes, ExcludeNodes or
  path-bias filter); {USABLE_FILTERED_GUARDS}: those not known to be unreachable.
* With UseBridges (:meth:`GuardSample.use_bridges`), guard-spec's "bridges" selection: {GUARDS} is the
  set of configured bridges (none of them in the consensus), sampled in random order, all of them; a
  bridge is listed while it is configured. Everything else (confirmation, primaries, retries) is the
  same.
* {CONFIRMED_GUARDS}: guards a circuit has been built through, with CONFIRMED_ON_DATE and
  their ``confirmed_idx``; like tor since proposal 310, the list is walked in sample order
  and ``confirmed_idx`` ranks guards when circuits compete.
* {PRIMARY_GUARDS}: N_PRIMARY_GUARDS filtered guards, confirmed ones first, kept until a
  confirmed guard displaces them; down guards are retried on guard-spec's schedules.

Choosing (:meth:`GuardSample.pick`): one of the first ``guard-n-primary-guards-to-use``
usable primaries, chosen uniformly (the circuit is usable on completion); else the first
usable confirmed guard that is not pending, else the first usable filtered one in sample
order, marked pending (the circuit is usable only if no better guard can be: it waits in
``WAITING_FOR_BETTER_GUARD`` until :meth:`GuardSample.upgrade_waiting` says so).

Sans-IO: every method takes ``now`` (POSIX seconds) and the sample draws from the
``random.Random`` it was given; persistence is :meth:`GuardSample.to_dict` /
:meth:`GuardSample.from_dict` (the caller writes the JSON file).
"""

from __future__ import annotations

import enum
import math
import random
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from oppy.netdoc.documents import Consensus, RelayRecord
from oppy.netdoc.weights import Position, bandwidth_weight_table, relay_weight
from oppy.path.selection import NoPathError, Path, PathNode, PathSelector
from oppy.path.state import is_state_time, short_repr

__all__ = [
    "SampledGuard",
    "GuardSample",
    "GuardParams",
    "GuardUsage",
    "GuardChoice",
    "GuardCircuitState",
    "Reachability",
    "choose_path",
    "has_higher_priority",
    "GuardStateError",
    "NoGuardAvailableError",
    "retry_delay",
    "GUARD_SET_FLAGS",
    "N_PRIMARY_GUARDS",
    "MIN_FILTERED_SAMPLE",
    "MAX_SAMPLE_SIZE",
    "MAX_SAMPLE_THRESHOLD",
    "REMOVE_UNLISTED_GUARDS_AFTER",
    "UNNAMED",
]

_MINUTE = 60
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR
_INT32_MAX = 2**31 - 1

# guard-spec A.1 "Parameters with suggested values"; the defaults of the consensus
# parameters of param-spec 11 (tor entrynodes.h DFLT_*).
#: Number of primary guards.
N_PRIMARY_GUARDS = 3
#: Listed guards the sample tries to hold.
MIN_FILTERED_SAMPLE = 20
#: Upper bound on the sample's size, listed or not.
MAX_SAMPLE_SIZE = 60
#: The sample may hold at most this fraction of the consensus's guards
#: (but never fewer than MIN_FILTERED_SAMPLE).
MAX_SAMPLE_THRESHOLD = 0.20
#: An unlisted guard is dropped from the sample after this long.
REMOVE_UNLISTED_GUARDS_AFTER = 20 * _DAY

#: param-spec 11 "Guard-related parameters": (GuardParams field, consensus parameter,
#: default, minimum, maximum, unit in seconds or the divisor of a percentage). tor reads
#: each with networkstatus_get_param and these bounds (entrynodes.c get_*()).
_GUARD_PARAMETERS: tuple[tuple[str, str, int, int, int, float], ...] = (
    ("lifetime", "guard-lifetime-days", 120, 1, 3650, _DAY),
    ("confirmed_min_lifetime", "guard-confirmed-min-lifetime-days", 60, 1, 3650, _DAY),
    ("internet_likely_down_interval", "guard-internet-likely-down-interval", 600, 1, _INT32_MAX, 1),
    ("max_sample_size", "guard-max-sample-size", MAX_SAMPLE_SIZE, 1, _INT32_MAX, 1),
    ("max_sample_threshold", "guard-max-sample-threshold-percent", 20, 1, 100, 1 / 100),
    ("min_filtered_sample_size", "guard-min-filtered-sample-size", MIN_FILTERED_SAMPLE, 1, _INT32_MAX, 1),
    ("n_primary_guards", "guard-n-primary-guards", N_PRIMARY_GUARDS, 1, _INT32_MAX, 1),
    ("n_primary_guards_to_use", "guard-n-primary-guards-to-use", 1, 1, _INT32_MAX, 1),
    ("n_primary_dir_guards_to_use", "guard-n-primary-dir-guards-to-use", 3, 1, _INT32_MAX, 1),
    ("nonprimary_guard_connect_timeout", "guard-nonprimary-guard-connect-timeout", 15, 1, _INT32_MAX, 1),
    ("nonprimary_guard_idle_timeout", "guard-nonprimary-guard-idle-timeout", 600, 1, _INT32_MAX, 1),
    ("remove_unlisted_guards_after", "guard-remove-unlisted-guards-after-days", 20, 1, 3650, _DAY),
)


@dataclass(frozen=True, slots=True)
class GuardParams:
    """The guard algorithm's parameters (guard-spec A.1), from the consensus (param-spec 11).

    Times are in seconds; ``max_sample_threshold`` is a fraction.
    """

    #: GUARD_LIFETIME: an unconfirmed guard sampled longer ago than this leaves the sample.
    lifetime: float = 120 * _DAY
    #: GUARD_CONFIRMED_MIN_LIFETIME: ... and a confirmed one once also confirmed this long ago.
    confirmed_min_lifetime: float = 60 * _DAY
    #: INTERNET_LIKELY_DOWN_INTERVAL: no success for this long means the network was down.
    internet_likely_down_interval: float = 600
    #: MAX_SAMPLE_SIZE.
    max_sample_size: int = MAX_SAMPLE_SIZE
    #: MAX_SAMPLE_THRESHOLD: the sample's share of the consensus's guards.
    max_sample_threshold: float = MAX_SAMPLE_THRESHOLD
    #: MIN_FILTERED_SAMPLE: usable guards the sample tries to hold.
    min_filtered_sample_size: int = MIN_FILTERED_SAMPLE
    #: N_PRIMARY_GUARDS.
    n_primary_guards: int = N_PRIMARY_GUARDS
    #: NUM_USABLE_PRIMARY_GUARDS: a circuit takes one of this many usable primaries.
    n_primary_guards_to_use: int = 1
    #: NUM_USABLE_PRIMARY_DIRECTORY_GUARDS: the same for directory requests.
    n_primary_dir_guards_to_use: int = 3
    #: NONPRIMARY_GUARD_CONNECT_TIMEOUT.
    nonprimary_guard_connect_timeout: float = 15
    #: NONPRIMARY_GUARD_IDLE_TIMEOUT.
    nonprimary_guard_idle_timeout: float = 600
    #: REMOVE_UNLISTED_GUARDS_AFTER.
    remove_unlisted_guards_after: float = REMOVE_UNLISTED_GUARDS_AFTER

    @classmethod
    def from_consensus(cls, consensus: Consensus) -> GuardParams:
        """Every ``guard-*`` parameter, clamped to its bounds as tor does, or its default."""
        values: dict[str, Any] = {}
        for field_name, name, default, low, high, unit in _GUARD_PARAMETERS:
            value = consensus.param(name, default, low, high)
            values[field_name] = value if unit == 1 else value * unit
        return cls(**values)


class GuardUsage(enum.Enum):
    """What a guard is picked for: it decides how many primaries are used in parallel."""

    #: Circuits for user traffic (guard-n-primary-guards-to-use).
    TRAFFIC = "traffic"
    #: One-hop directory requests (guard-n-primary-dir-guards-to-use).
    DIRECTORY = "directory"


#: (time failing so far, retry interval) steps: PRIMARY_GUARDS_RETRY_SCHED and
#: GUARDS_RETRY_SCHED (guard-spec A.1; tor entrynodes.c ``get_retry_schedule``): every
#: 10 min (1 h) for the first 6 h, every 90 min (4 h) up to 4 days, every 4 h (18 h) up to
#: 7 days, then every 9 h (36 h). Each limit is inclusive, as in tor.
_RETRY_SCHEDULE: tuple[tuple[float, int, int], ...] = (
    (6 * _HOUR, 10 * _MINUTE, 1 * _HOUR),
    (4 * _DAY, 90 * _MINUTE, 4 * _HOUR),
    (7 * _DAY, 4 * _HOUR, 18 * _HOUR),
    (math.inf, 9 * _HOUR, 36 * _HOUR),
)

#: The flags a relay needs to be in guard-spec's {GUARDS} set (guard-spec 4.0: "usable for all
#: circuits and directory requests"; tor ``node_is_possible_guard`` adds Valid). Running is
#: required too: every consensus entry carries it, and oppy never builds through a relay without it.
GUARD_SET_FLAGS = frozenset({"Guard", "Stable", "Fast", "V2Dir", "Valid", "Running"})

#: Version of the :meth:`GuardSample.to_dict` format. Version 1 (no confirmed guards) is read too.
STATE_VERSION = 2
_READABLE_STATE_VERSIONS = (1, 2)
#: The keys :meth:`GuardSample.to_dict` writes for a guard; others are kept as they were
#: (guard-spec A.5: "retain any unrecognized K=V entries").
_STATE_KEYS = ("fingerprint", "nickname", "added_at", "listed", "unlisted_since", "confirmed_on",
               "confirmed_idx")
_HEX40_RE = re.compile(r"[0-9A-F]{40}\Z")
#: A bridge's entry keeps its ``IP:PORT`` under this key (tor's state file ``bridge_addr``): a Bridge line
#: without a fingerprint finds the identity learned for it there after a restart.
BRIDGE_ADDRESS_KEY = "bridge_addr"
#: tor's nickname for a relay that has told us none (a bridge before its descriptor).
UNNAMED = "Unnamed"


class GuardStateError(ValueError):
    """Persisted guard state is malformed."""


class NoGuardAvailableError(NoPathError):
    """Every sampled guard is down, unlisted or unsuitable right now."""


def retry_delay(failing_for: float, is_primary: bool) -> int:
    """Seconds to wait between attempts on a guard that has been failing for ``failing_for``."""
    for limit, primary_delay, other_delay in _RETRY_SCHEDULE:
        if failing_for <= limit:
            return primary_delay if is_primary else other_delay
    raise AssertionError("unreachable: the schedule ends with infinity")


class Reachability(enum.Enum):
    """guard-spec {is_reachable}: "maybe" means worth trying."""

    YES = "yes"
    NO = "no"
    MAYBE = "maybe"


class GuardCircuitState(enum.Enum):
    """A circuit's state with respect to its guard (guard-spec 4.6; tor GUARD_CIRC_STATE_*)."""

    #: Through a primary guard: usable as soon as it is built.
    USABLE_ON_COMPLETION = "usable_on_completion"
    #: Through a non-primary guard: usable only if no better guard can be.
    USABLE_IF_NO_BETTER_GUARD = "usable_if_no_better_guard"
    #: Built through a non-primary guard; no streams until :meth:`GuardSample.upgrade_waiting`.
    WAITING_FOR_BETTER_GUARD = "waiting_for_better_guard"
    #: May carry streams.
    COMPLETE = "complete"
    #: Its guard failed.
    DEAD = "dead"


@dataclass(eq=False, slots=True)
class SampledGuard:
    """One guard of {SAMPLED_GUARDS}. Reachability, retries and pending are not persisted."""

    fingerprint: str
    nickname: str
    #: ADDED_ON_DATE, drawn up to GUARD_LIFETIME/10 in the past.
    added_at: float
    #: IS_LISTED: in the latest consensus with every flag of :data:`GUARD_SET_FLAGS`.
    listed: bool = True
    #: FIRST_UNLISTED_AT, drawn up to REMOVE_UNLISTED_GUARDS_AFTER/5 in the past.
    unlisted_since: float | None = None
    #: CONFIRMED_ON_DATE (drawn up to GUARD_LIFETIME/10 in the past); None if not confirmed.
    confirmed_on: float | None = None
    #: Rank among the confirmed guards (dense from 0); None if not confirmed.
    confirmed_idx: int | None = None
    reachable: Reachability = Reachability.MAYBE
    #: When the current run of failures started; None while the guard works.
    failing_since: float | None = None
    #: {last_tried_connect}: when a circuit or connection last chose it.
    last_tried: float | None = None
    #: {is_pending}: an exploratory circuit through this non-primary guard is being built.
    is_pending: bool = False
    #: Persisted keys oppy does not know, written back unchanged.
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_confirmed(self) -> bool:
        return self.confirmed_idx is not None

    @property
    def is_down(self) -> bool:
        return self.reachable is Reachability.NO


@dataclass(eq=False, slots=True)
class GuardChoice:
    """The guard a circuit was given and the circuit's :class:`GuardCircuitState` (tor
    ``circuit_guard_state_t``); report the circuit's outcome with it."""

    guard: SampledGuard
    state: GuardCircuitState
    state_set_at: float
    #: The restriction the guard had to obey (it must hold for a circuit that blocks this one).
    restriction: Callable[[SampledGuard], bool] | None = None

    @property
    def fingerprint(self) -> str:
        return self.guard.fingerprint


def _qualifies(relay: RelayRecord | None) -> bool:
    """Is this consensus entry in {GUARDS}, so that it may be (or stay listed as) a sampled guard?"""
    return relay is not None and GUARD_SET_FLAGS <= relay.flags and "MiddleOnly" not in relay.flags


class GuardSample:
    """One guard-selection state (guard-spec 2, the default instance): the sample, its
    confirmed and primary guards, and the rules to choose among them."""

    def __init__(self, guards: Iterable[SampledGuard] = (), *, rng: random.Random | None = None) -> None:
        #: {SAMPLED_GUARDS} in sample order.
        self.guards: list[SampledGuard] = list(guards)
        self.rng = rng if rng is not None else random.SystemRandom()
        #: The parameters of the latest consensus (:meth:`update_from_consensus`).
        self.params = GuardParams()
        #: {last_time_on_internet} (guard-spec 4.6): "infinitely far in the past" at first.
        self.last_time_on_internet = -math.inf
        self._consensus: Consensus | None = None
        #: UseBridges: fingerprint -> nickname of the configured bridges ({GUARDS}); None for relays.
        self._bridges: dict[str, str] | None = None
        #: UseBridges: fingerprint -> ``IP:PORT`` of the configured bridges, kept in each one's state entry.
        self._bridge_addresses: dict[str, str] = {}
        self._primary: list[SampledGuard] = []
        self._primary_up_to_date = False
        self._dirty = False
        self._update_confirmed()

    # ---- persistence -------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able snapshot of the durable state (sample order, dates, listing, confirmation)."""
        entries = []
        for guard in self.guards:
            entry = dict(guard.extra)
            entry.update(fingerprint=guard.fingerprint, nickname=guard.nickname, added_at=guard.added_at,
                         listed=guard.listed, unlisted_since=guard.unlisted_since,
                         confirmed_on=guard.confirmed_on, confirmed_idx=guard.confirmed_idx)
            entries.append(entry)
        return {"version": STATE_VERSION, "guards": entries}

    @classmethod
    def from_dict(cls, state: Any, *, rng: random.Random | None = None) -> GuardSample:
        """Rebuild a sample from :meth:`to_dict` output (this version or the last); raise
        :class:`GuardStateError` if malformed."""
        if not isinstance(state, dict):
            raise GuardStateError(f"guard state must be a dict, not {type(state).__name__}")
        if state.get("version") not in _READABLE_STATE_VERSIONS:
            raise GuardStateError(f"unsupported guard state version {short_repr(state.get('version'))}")
        entries = state.get("guards")
        if not isinstance(entries, list):
            raise GuardStateError("guard state has no 'guards' list")
        guards = []
        seen = set()
        for position, entry in enumerate(entries):
            guard = _guard_from_entry(position, entry)
            if guard.fingerprint in seen:
                raise GuardStateError(f"guard {guard.fingerprint} appears twice")
            seen.add(guard.fingerprint)
            guards.append(guard)
        return cls(guards, rng=rng)

    @property
    def dirty(self) -> bool:
        """Has the durable state changed since :meth:`mark_saved`?"""
        return self._dirty

    def mark_saved(self) -> None:
        self._dirty = False

    # ---- consensus updates (guard-spec 4.10 ON_CONSENSUS) ---------------------

    def max_sample_size(self, consensus: Consensus) -> int:
        """guard-spec SAMPLED: min(MAX_SAMPLE_SIZE, MAX_SAMPLE_THRESHOLD of the guards), at least
        MIN_FILTERED_SAMPLE (tor ``get_max_sample_size``)."""
        params = self.params
        n_guards = sum(1 for relay in consensus.relays if _qualifies(relay))
        by_share = int(n_guards * params.max_sample_threshold)
        return max(params.min_filtered_sample_size, min(params.max_sample_size, by_share))

    def update_from_consensus(self, consensus: Consensus, now: float) -> list[str]:
        """Take a new (live) consensus: its parameters, which guards are listed, the removal
        of expired guards, then the primary guards (growing the sample if it has too few
        usable guards). Returns the fingerprints newly sampled."""
        self.params = GuardParams.from_consensus(consensus)
        self._consensus = consensus
        if self._bridges is not None:
            return self._update_sample(now)
        self._update_listing(lambda fingerprint: _qualifies(consensus.relay_by_fingerprint(fingerprint)), now)
        return self._update_sample(now)

    def use_bridges(self, bridges: Iterable[tuple[str, str]], now: float,
                    addresses: Mapping[str, str] | None = None) -> list[str]:
        """UseBridges: the sample is drawn from these (fingerprint, nickname) bridges only (guard-spec 2:
        the "bridges" guard selection), and a sampled bridge is listed while it is configured. ``addresses``
        gives each bridge's ``IP:PORT``, kept with it in the state (tor's ``bridge_addr``: a Bridge line
        without a fingerprint finds the identity learned for it by its address). Returns the fingerprints
        newly sampled."""
        self._bridges = {fingerprint.upper(): nickname for fingerprint, nickname in bridges}
        self._bridge_addresses = {fingerprint.upper(): addrport for fingerprint, addrport in (addresses or {}).items()}
        configured = self._bridges
        for guard in self.guards:
            nickname = configured.get(guard.fingerprint)
            if nickname is not None and nickname not in (guard.nickname, UNNAMED):
                guard.nickname = nickname       # learned from the bridge's descriptor
                self._dirty = True
            self._note_bridge_address(guard)
        self._update_listing(lambda fingerprint: fingerprint in configured, now)
        return self._update_sample(now)

    def _note_bridge_address(self, guard: SampledGuard) -> None:
        addrport = self._bridge_addresses.get(guard.fingerprint)
        if addrport is not None and guard.extra.get(BRIDGE_ADDRESS_KEY) != addrport:
            guard.extra[BRIDGE_ADDRESS_KEY] = addrport
            self._dirty = True

    @property
    def uses_bridges(self) -> bool:
        return self._bridges is not None

    def _update_listing(self, qualifies: Callable[[str], bool], now: float) -> None:
        """IS_LISTED and FIRST_UNLISTED_AT of every sampled guard, by ``qualifies``."""
        params = self.params
        for guard in self.guards:
            listed_now = qualifies(guard.fingerprint)
            if listed_now and not guard.listed:
                guard.listed, guard.unlisted_since = True, None
                self._dirty = True
            elif not listed_now and (guard.listed or guard.unlisted_since is None):
                # (An unlisted guard without the date, from an old state file, gets one too, as in tor.)
                guard.listed = False
                guard.unlisted_since = self._randomized_past(now, params.remove_unlisted_guards_after / 5)
                self._dirty = True

    def _update_sample(self, now: float) -> list[str]:
        """Drop the expired guards, then bring the primary guards up to date, growing the sample if it has
        too few usable guards; returns the fingerprints newly sampled."""
        for guard in list(self.guards):
            if self._expired(guard, now):
                self._remove(guard)
        self._update_confirmed()
        self._primary_up_to_date = False
        before = {guard.fingerprint for guard in self.guards}
        self._update_primary(now)
        self._expand(now)
        return [guard.fingerprint for guard in self.guards if guard.fingerprint not in before]

    def _expired(self, guard: SampledGuard, now: float) -> bool:
        """guard-spec SAMPLED's two removal rules (tor ``sampled_guards_prune_obsolete_entries``)."""
        params = self.params
        if not guard.listed and guard.unlisted_since is not None \
                and guard.unlisted_since < now - params.remove_unlisted_guards_after:
            return True
        if guard.added_at < now - params.lifetime:
            return guard.confirmed_on is None or guard.confirmed_on < now - params.confirmed_min_lifetime
        return False

    def _remove(self, guard: SampledGuard) -> None:
        self.guards.remove(guard)
        if guard in self._primary:
            self._primary.remove(guard)
        guard.confirmed_idx = guard.confirmed_on = None
        self._dirty = True

    def _randomized_past(self, now: float, max_backdate: float) -> float:
        """guard-spec A.2 RAND(now, INTERVAL): a whole second up to ``max_backdate`` before now."""
        latest = math.floor(now)
        return float(self.rng.randint(max(1, latest - math.floor(max_backdate)), latest))

    # ---- the filtered and usable sets -----------------------------------------

    def _is_filtered(self, guard: SampledGuard) -> bool:
        """{FILTERED_GUARDS}: listed in the consensus in use, or a configured bridge (no configured filter
        applies)."""
        return guard.listed and (self._consensus is not None or self._bridges is not None)

    def _is_primary(self, guard: SampledGuard) -> bool:
        return guard in self._primary

    def _consider_retry(self, guard: SampledGuard, now: float) -> None:
        """guard-spec 4.5: an unreachable guard becomes "maybe" once its retry time has come."""
        if guard.reachable is not Reachability.NO:
            return
        failing_for = 0.0 if guard.failing_since is None else max(0.0, now - guard.failing_since)
        delay = retry_delay(failing_for, self._is_primary(guard))
        if guard.last_tried is None or now >= guard.last_tried + delay:
            guard.reachable = Reachability.MAYBE

    def _is_usable_filtered(self, guard: SampledGuard, now: float) -> bool:
        """{USABLE_FILTERED_GUARDS}: filtered and not known to be unreachable."""
        self._consider_retry(guard, now)
        return self._is_filtered(guard) and guard.reachable is not Reachability.NO

    def _count_usable_filtered(self, now: float, restriction: Callable[[SampledGuard], bool] | None = None) -> int:
        return sum(1 for guard in self.guards
                   if (restriction is None or restriction(guard)) and self._is_usable_filtered(guard, now))

    def _expand(self, now: float) -> None:
        """Sample more guards until MIN_FILTERED_SAMPLE of them are usable, within the size
        limits (guard-spec FILTERED; tor ``entry_guards_expand_sample``)."""
        if self._bridges is not None:
            self._expand_bridges(now)
            return
        consensus = self._consensus
        if consensus is None:
            return
        n_usable = self._count_usable_filtered(now)
        if n_usable >= self.params.min_filtered_sample_size:
            return
        sampled = {guard.fingerprint for guard in self.guards}
        table = bandwidth_weight_table(consensus, Position.GUARD)
        eligible = [relay for relay in consensus.relays if _qualifies(relay) and relay.fingerprint not in sampled]
        weights = [relay_weight(relay, table) for relay in eligible]
        cap = self.max_sample_size(consensus)
        lifetime = self.params.lifetime
        while n_usable < self.params.min_filtered_sample_size and len(self.guards) < cap and eligible:
            index = _weighted_index(weights, self.rng)
            relay = eligible.pop(index)
            weights.pop(index)
            self.guards.append(SampledGuard(relay.fingerprint, relay.nickname,
                                            self._randomized_past(now, lifetime / 10)))
            self._dirty = True
            n_usable += 1

    def _expand_bridges(self, now: float) -> None:
        """Every configured bridge not sampled yet joins the sample, in random order (tor: the bridges
        guard selection samples all of them, with no weights: bridges are in no consensus)."""
        assert self._bridges is not None
        sampled = {guard.fingerprint for guard in self.guards}
        new = [fingerprint for fingerprint in self._bridges if fingerprint not in sampled]
        self.rng.shuffle(new)
        for fingerprint in new:
            guard = SampledGuard(fingerprint, self._bridges[fingerprint],
                                 self._randomized_past(now, self.params.lifetime / 10))
            self._note_bridge_address(guard)
            self.guards.append(guard)
            self._dirty = True

    def _first_usable_filtered(self, now: float, restriction: Callable[[SampledGuard], bool] | None = None, *,
                               exclude_confirmed: bool = False, exclude_primary: bool = False,
                               exclude_pending: bool = False,
                               has_descriptor: Callable[[str], bool] | None = None) -> SampledGuard | None:
        """The first usable filtered guard in sample order that passes the exclusions, after
        growing the sample if needed (tor ``first_reachable_filtered_entry_guard``)."""
        if self._count_usable_filtered(now, restriction) < self.params.min_filtered_sample_size:
            self._expand(now)
        for guard in self.guards:
            if restriction is not None and not restriction(guard):
                continue
            if not self._is_usable_filtered(guard, now):
                continue
            if (exclude_confirmed and guard.is_confirmed) or (exclude_primary and self._is_primary(guard)) \
                    or (exclude_pending and guard.is_pending):
                continue
            if has_descriptor is not None and not has_descriptor(guard.fingerprint):
                continue
            return guard
        return None

    # ---- confirmed and primary guards (guard-spec 4.3, 4.4) ----------------------

    def confirmed_guards(self) -> list[SampledGuard]:
        """{CONFIRMED_GUARDS}, in sample order (tor since proposal 310)."""
        return [guard for guard in self.guards if guard.is_confirmed]

    def _update_confirmed(self) -> None:
        """Keep ``confirmed_idx`` dense, in its order (tor ``entry_guards_update_confirmed``)."""
        ranked = sorted(self.confirmed_guards(), key=lambda guard: guard.confirmed_idx)
        for index, guard in enumerate(ranked):
            if guard.confirmed_idx != index:
                guard.confirmed_idx = index
                self._dirty = True

    def _make_confirmed(self, guard: SampledGuard, now: float) -> None:
        guard.confirmed_on = self._randomized_past(now, self.params.lifetime / 10)
        guard.confirmed_idx = len(self.confirmed_guards())
        self._primary_up_to_date = False
        self._dirty = True

    def primary_guards(self, now: float | None = None) -> list[SampledGuard]:
        """{PRIMARY_GUARDS}, in sample order (brought up to date at ``now`` if given)."""
        if now is not None:
            self._update_primary(now)
        return list(self._primary)

    def _update_primary(self, now: float) -> None:
        """tor ``entry_guards_update_primary``: confirmed filtered guards first, then the
        previous primaries still filtered, then usable filtered guards in sample order."""
        if self._primary_up_to_date:
            return
        self._primary_up_to_date = True     # set first: the calls below must not recompute it
        wanted = self.params.n_primary_guards
        new = [guard for guard in self.confirmed_guards() if self._is_filtered(guard)][:wanted]
        for guard in self._primary:
            if len(new) < wanted and guard not in new and self._is_filtered(guard):
                new.append(guard)
        self._primary = new
        while len(new) < wanted:
            guard = self._first_usable_filtered(now, exclude_confirmed=True, exclude_primary=True)
            if guard is None:
                break
            new.append(guard)
        order = {id(guard): index for index, guard in enumerate(self.guards)}
        self._primary = sorted(new, key=lambda guard: order[id(guard)])

    def primaries_needing_descriptors(self) -> int:
        """How many usable primary guards need a microdescriptor before circuits are built:
        guard-n-primary-guards-to-use plus one (tor ``guard_selection_get_err_str_if_dir_info_missing``)."""
        return self.params.n_primary_guards_to_use + 1

    def primaries_to_check_for_descriptors(self, now: float) -> list[SampledGuard]:
        """The first :meth:`primaries_needing_descriptors` primaries not known to be down."""
        self._update_primary(now)
        found = []
        for guard in self._primary:
            self._consider_retry(guard, now)
            if guard.reachable is not Reachability.NO:
                found.append(guard)
        return found[: self.primaries_needing_descriptors()]

    def primaries_to_use(self, usage: GuardUsage) -> int:
        """How many usable primary guards a choice is spread over (guard-spec SELECTING)."""
        if usage is GuardUsage.DIRECTORY:
            return self.params.n_primary_dir_guards_to_use
        return self.params.n_primary_guards_to_use

    # ---- choosing (guard-spec 4.6 SELECTING) ---------------------------------------

    def pick(self, now: float, usage: GuardUsage = GuardUsage.TRAFFIC, *,
             restriction: Callable[[SampledGuard], bool] | None = None,
             has_descriptor: Callable[[str], bool] | None = None) -> GuardChoice:
        """A guard for a new circuit (tor ``select_entry_guard_for_circuit``).

        ``restriction`` is what the guard must obey (not the exit, nor in its family);
        ``has_descriptor`` says whether a guard can carry a multi-hop circuit. Raises
        :class:`NoGuardAvailableError` when no sampled guard is usable; every guard is then
        marked worth a retry, as tor does, so that a later attempt can succeed.
        """
        self._update_primary(now)
        usable = []
        for guard in self._primary:
            self._consider_retry(guard, now)
            if restriction is not None and not restriction(guard):
                continue
            if guard.reachable is Reachability.NO:
                continue
            if has_descriptor is not None and not has_descriptor(guard.fingerprint):
                continue
            guard.last_tried = now
            usable.append(guard)
            if len(usable) >= self.primaries_to_use(usage):
                break
        if usable:
            return GuardChoice(self.rng.choice(usable), GuardCircuitState.USABLE_ON_COMPLETION, now, restriction)
        guard = self._first_usable_confirmed(now, restriction, has_descriptor)
        if guard is None:
            guard = self._first_usable_filtered(now, restriction, exclude_confirmed=True, exclude_primary=True,
                                                exclude_pending=True, has_descriptor=has_descriptor)
        if guard is None:
            explanation = self._explain_none_usable(now)
            self.retry_all_down()
            raise NoGuardAvailableError(explanation)
        guard.is_pending = True
        guard.last_tried = now
        return GuardChoice(guard, GuardCircuitState.USABLE_IF_NO_BETTER_GUARD, now, restriction)

    def retry_all_down(self) -> None:
        """Every guard known to be down is worth a try again (tor, when no guard is usable: the network,
        not the guards, was probably down)."""
        for sampled in self.guards:
            if sampled.reachable is Reachability.NO:
                sampled.reachable = Reachability.MAYBE

    def _first_usable_confirmed(self, now: float, restriction: Callable[[SampledGuard], bool] | None,
                                has_descriptor: Callable[[str], bool] | None) -> SampledGuard | None:
        """tor ``select_confirmed_guard_for_circuit``: a non-primary confirmed guard, not pending."""
        for guard in self.confirmed_guards():
            if self._is_primary(guard) or (restriction is not None and not restriction(guard)):
                continue
            if self._is_usable_filtered(guard, now) and not guard.is_pending:
                if has_descriptor is not None and not has_descriptor(guard.fingerprint):
                    continue
                return guard
        return None

    def _explain_none_usable(self, now: float) -> str:
        listed = [guard for guard in self.guards if self._is_filtered(guard)]
        if not listed:
            return f"the guard sample has no listed guards ({len(self.guards)} sampled, none listed)"
        down = [guard for guard in listed if guard.reachable is Reachability.NO]
        if len(down) == len(listed):
            retry_at = min(self._next_retry_at(guard, now) for guard in down)
            return (f"all {len(listed)} listed guards are down; the next is due for a retry in "
                    f"{max(0.0, retry_at - now):.0f} s (all are marked for a retry now)")
        pending = sum(1 for guard in listed if guard.is_pending and guard.reachable is not Reachability.NO)
        return (f"none of the {len(listed) - len(down)} usable sampled guards fits this circuit"
                + (f" ({pending} of them are being tried by other circuits)" if pending else ""))

    def next_retry_at(self, fingerprint: str, now: float) -> float | None:
        """When a down guard may next be tried (None if it is not down)."""
        guard = self._get(fingerprint)
        self._consider_retry(guard, now)
        return None if guard.reachable is not Reachability.NO else self._next_retry_at(guard, now)

    def _next_retry_at(self, guard: SampledGuard, now: float) -> float:
        # The interval depends on how long the guard has failed at the moment of the check
        # (tor get_retry_schedule), so step until the time found is consistent.
        assert guard.failing_since is not None and guard.last_tried is not None
        is_primary = self._is_primary(guard)
        due = guard.last_tried + retry_delay(max(now, guard.last_tried) - guard.failing_since, is_primary)
        for _ in range(len(_RETRY_SCHEDULE)):
            later = guard.last_tried + retry_delay(due - guard.failing_since, is_primary)
            if later <= due:
                break
            due = later
        return due

    def directory_guards(self, now: float, accept: Callable[[str], bool] | None = None,
                         limit: int | None = None) -> list[str]:
        """Directory guards to try in turn, best first: one of the first
        ``guard-n-primary-dir-guards-to-use`` usable primaries drawn uniformly, the other usable
        primaries, then usable confirmed guards and usable filtered ones in sample order.

        Unlike :meth:`pick` this marks nothing pending: a directory fetch reports its outcome with
        :meth:`note_success` / :meth:`note_failure` on the guard.
        """
        self._update_primary(now)
        primaries = [guard for guard in self._primary
                     if self._is_usable_filtered(guard, now) and (accept is None or accept(guard.fingerprint))]
        spread = primaries[: self.primaries_to_use(GuardUsage.DIRECTORY)]
        if spread:
            first = self.rng.choice(spread)
            primaries.remove(first)
            primaries.insert(0, first)
        others = [guard for guard in self.confirmed_guards() if not self._is_primary(guard)]
        others += [guard for guard in self.guards if not guard.is_confirmed and not self._is_primary(guard)]
        found = [guard.fingerprint for guard in primaries]
        found += [guard.fingerprint for guard in others
                  if self._is_usable_filtered(guard, now) and (accept is None or accept(guard.fingerprint))]
        return found if limit is None else found[:limit]

    # ---- outcomes (guard-spec 4.7 ON_FAIL, 4.8 ON_SUCCESS) ----------------------------

    def succeeded(self, choice: GuardChoice, now: float) -> bool:
        """The circuit of ``choice`` was built; True if it may carry streams now.

        Otherwise it waits for better guards (``WAITING_FOR_BETTER_GUARD``) until
        :meth:`upgrade_waiting` upgrades it, or :meth:`should_expire` says to close it.
        A guard no longer in the sample makes the circuit unusable (``DEAD``).
        """
        guard = choice.guard
        if guard not in self.guards:
            choice.state, choice.state_set_at = GuardCircuitState.DEAD, now
            return False
        self._note_success(guard, now)
        if choice.state in (GuardCircuitState.COMPLETE, GuardCircuitState.USABLE_ON_COMPLETION) \
                or self._is_primary(guard):
            choice.state = GuardCircuitState.COMPLETE
        else:
            choice.state = GuardCircuitState.WAITING_FOR_BETTER_GUARD
        choice.state_set_at = now
        return choice.state is GuardCircuitState.COMPLETE

    def failed(self, choice: GuardChoice, now: float) -> None:
        """The circuit of ``choice`` failed at its guard: the guard is unreachable for now."""
        if choice.guard in self.guards:
            self._note_failure(choice.guard, now)
        choice.state, choice.state_set_at = GuardCircuitState.DEAD, now

    def cancel(self, choice: GuardChoice) -> None:
        """The circuit of ``choice`` went away without saying anything about its guard."""
        choice.guard.is_pending = False

    def note_success(self, fingerprint: str, now: float) -> None:
        """A connection or circuit through this sampled guard worked (no circuit state to update)."""
        self._note_success(self._get(fingerprint), now)

    def note_failure(self, fingerprint: str, now: float) -> None:
        """A connection or circuit to this sampled guard failed."""
        self._note_failure(self._get(fingerprint), now)

    def note_internet_connectivity(self, now: float) -> None:
        """Some connection worked: we are on the internet (tor ``entry_guards_note_internet_connectivity``)."""
        self.last_time_on_internet = max(self.last_time_on_internet, now)

    def _note_success(self, guard: SampledGuard, now: float) -> None:
        """tor ``entry_guards_note_guard_success`` (the guard's side)."""
        last_on_internet = self.last_time_on_internet
        self.last_time_on_internet = now
        guard.reachable = Reachability.YES
        guard.failing_since = None
        guard.is_pending = False
        if not guard.is_confirmed:
            self._make_confirmed(guard, now)
            self._update_primary(now)
        if not self._is_primary(guard) and last_on_internet + self.params.internet_likely_down_interval < now:
            # The network was probably down: the primary guards deserve another try.
            self._update_primary(now)
            for primary in self._primary:
                if primary.reachable is Reachability.NO:
                    primary.reachable = Reachability.MAYBE

    def _note_failure(self, guard: SampledGuard, now: float) -> None:
        """tor ``entry_guards_note_guard_failure``."""
        guard.reachable = Reachability.NO
        guard.is_pending = False
        if guard.failing_since is None:
            guard.failing_since = now
        if guard.last_tried is None:
            guard.last_tried = now

    # ---- circuits waiting for a better guard (guard-spec 4.9 UPDATE_WAITING) ------------

    def all_primary_guards_down(self, now: float) -> bool:
        self._update_primary(now)
        for guard in self._primary:
            self._consider_retry(guard, now)
            if guard.reachable is not Reachability.NO:
                return False
        return True

    def upgrade_waiting(self, choices: Iterable[GuardChoice], now: float) -> list[GuardChoice]:
        """Of the live circuits' ``choices``, the waiting ones that may now carry streams: every
        primary guard is down and no circuit with a better guard is complete, waiting, or has
        been building for less than NONPRIMARY_GUARD_CONNECT_TIMEOUT (tor
        ``entry_guards_upgrade_waiting_circuits``). They are marked ``COMPLETE``."""
        if not self.all_primary_guards_down(now):
            return []
        live = [choice for choice in choices
                if choice.guard in self.guards and choice.state is not GuardCircuitState.DEAD]
        best = None
        for choice in live:
            if choice.state is GuardCircuitState.WAITING_FOR_BETTER_GUARD \
                    and (best is None or self._circuit_has_priority(choice, None, best)):
                best = choice
        if best is None:
            return []
        restriction = best.restriction
        cutoff = now - self.params.nonprimary_guard_connect_timeout
        for choice in live:
            blocking = choice.state is GuardCircuitState.COMPLETE or (
                choice.state is GuardCircuitState.USABLE_IF_NO_BETTER_GUARD and choice.state_set_at > cutoff)
            if blocking and self._circuit_has_priority(choice, restriction, best):
                return []
        upgraded = []
        for choice in live:
            if choice is not best and restriction is not None:
                continue        # it might be blocked by a circuit that does not obey best's restriction
            if choice.state is not GuardCircuitState.WAITING_FOR_BETTER_GUARD \
                    or self._circuit_has_priority(best, None, choice):
                continue
            choice.state, choice.state_set_at = GuardCircuitState.COMPLETE, now
            upgraded.append(choice)
        return upgraded

    def should_expire(self, choice: GuardChoice, now: float) -> bool:
        """Has this circuit waited for a better guard longer than NONPRIMARY_GUARD_IDLE_TIMEOUT?"""
        return (choice.state is GuardCircuitState.WAITING_FOR_BETTER_GUARD
                and choice.state_set_at < now - self.params.nonprimary_guard_idle_timeout)

    def _circuit_has_priority(self, first: GuardChoice, restriction: Callable[[SampledGuard], bool] | None,
                              second: GuardChoice) -> bool:
        """tor ``circ_state_has_higher_priority``."""
        if first.guard not in self.guards:
            return False
        if second.guard not in self.guards:
            return True
        if restriction is not None and not restriction(first.guard):
            return False
        return has_higher_priority(first.guard, second.guard)

    def _get(self, fingerprint: str) -> SampledGuard:
        wanted = fingerprint.lstrip("$").upper()
        for guard in self.guards:
            if guard.fingerprint == wanted:
                return guard
        raise KeyError(f"{fingerprint} is not in the guard sample")


def has_higher_priority(first: SampledGuard, second: SampledGuard) -> bool:
    """guard-spec 4.3: would we rather use ``first`` than ``second`` if both were reachable?
    Confirmed beats unconfirmed (lower ``confirmed_idx`` first), then pending beats not pending,
    earlier tried first (tor ``entry_guard_has_higher_priority``)."""
    if first is second:
        return False
    if first.confirmed_idx is not None or second.confirmed_idx is not None:
        if first.confirmed_idx is None:
            return False
        if second.confirmed_idx is None:
            return True
        return first.confirmed_idx < second.confirmed_idx
    if first.is_pending != second.is_pending:
        return first.is_pending
    if first.is_pending:
        return (first.last_tried or 0.0) < (second.last_tried or 0.0)
    return False


def _guard_from_entry(position: int, entry: Any) -> SampledGuard:
    if not isinstance(entry, dict):
        raise GuardStateError(f"guard #{position} is not a dict")
    fingerprint = entry.get("fingerprint")
    if not isinstance(fingerprint, str) or not _HEX40_RE.match(fingerprint):
        raise GuardStateError(f"guard #{position} has a bad fingerprint {short_repr(fingerprint)}")
    nickname = entry.get("nickname", "")
    added_at = entry.get("added_at")
    listed = entry.get("listed", True)
    unlisted_since = entry.get("unlisted_since")
    confirmed_on = entry.get("confirmed_on")
    confirmed_idx = entry.get("confirmed_idx")
    if not isinstance(nickname, str):
        raise GuardStateError(f"guard {fingerprint} has a bad nickname")
    if not is_state_time(added_at):
        raise GuardStateError(f"guard {fingerprint} has a bad added_at {short_repr(added_at)}")
    if not isinstance(listed, bool):
        raise GuardStateError(f"guard {fingerprint} has a bad 'listed' value")
    for name, value in (("unlisted_since", unlisted_since), ("confirmed_on", confirmed_on)):
        if value is not None and not is_state_time(value):
            raise GuardStateError(f"guard {fingerprint} has a bad {name} {short_repr(value)}")
    if confirmed_idx is not None and (not isinstance(confirmed_idx, int) or isinstance(confirmed_idx, bool)
                                      or confirmed_idx < 0):
        raise GuardStateError(f"guard {fingerprint} has a bad confirmed_idx {short_repr(confirmed_idx)}")
    if (confirmed_on is None) != (confirmed_idx is None):
        raise GuardStateError(f"guard {fingerprint} needs both confirmed_on and confirmed_idx, or neither")
    return SampledGuard(fingerprint, nickname, float(added_at), listed,
                        None if unlisted_since is None or listed else float(unlisted_since),
                        None if confirmed_on is None else float(confirmed_on), confirmed_idx,
                        extra={key: value for key, value in entry.items() if key not in _STATE_KEYS})


def _weighted_index(weights: list[float], rng: random.Random) -> int:
    total = sum(weights)
    if total <= 0.0:
        return rng.randrange(len(weights))
    target = rng.random() * total
    running = 0.0
    for index, weight in enumerate(weights):
        running += weight
        if target < running:
            return index
    return len(weights) - 1


# ---- a circuit's path -----------------------------------------------------------------


def choose_path(selector: PathSelector, sample: GuardSample, now: float, rng: random.Random,
                port: int | None = None, *, avoid: Collection[bytes] = (),
                exit_node: PathNode | None = None) -> tuple[Path, GuardChoice]:
    """A circuit's path as oppy builds it: the exit first (its policy summary accepts ``port``),
    then a guard of ``sample`` that fits it (:meth:`GuardSample.pick`), then the middle; Stable
    relays on every hop for a long-lived port; no relay whose RSA identity is in ``avoid``.
    ``exit_node``, when given, is the exit (a further conflux leg to a set's exit).

    Returns the path and the guard choice to report the circuit's outcome with. Raises
    :class:`NoPathError` (:class:`NoGuardAvailableError` for the guard) saying why.
    """
    if exit_node is None:
        exit_node = selector.choose_exit(rng, port, avoid=avoid)
    choice = _pick_guard_for(selector, sample, now, exit_node, avoid)
    guard = selector.node(choice.fingerprint)
    assert guard is not None        # has_descriptor accepted it
    middle = selector.choose_middle(rng, exclude=(exit_node, guard), avoid=avoid, stable=selector.needs_stable(port))
    return Path(guard=guard, middle=middle, exit=exit_node), choice


def _pick_guard_for(selector: PathSelector, sample: GuardSample, now: float, exit_node: PathNode,
                    avoid: Collection[bytes]) -> GuardChoice:
    """A guard with a microdescriptor that obeys tor's exit restriction (not the exit, nor in its
    family or subnet) and is not avoided."""
    def why_not(guard: SampledGuard) -> str | None:
        node = selector.node(guard.fingerprint)
        if node is None:
            return None             # has_descriptor says why it cannot carry the circuit
        if node.relay.rsa_id in avoid:
            return f"${guard.fingerprint} is excluded"
        return selector.conflicts(node, (exit_node,))

    try:
        return sample.pick(now, GuardUsage.TRAFFIC, restriction=lambda guard: why_not(guard) is None,
                           has_descriptor=lambda fingerprint: selector.node(fingerprint) is not None)
    except NoGuardAvailableError as exc:
        reasons = [why_not(guard) or (f"${guard.fingerprint} has no microdescriptor or is not running"
                                      if selector.node(guard.fingerprint) is None else "")
                   for guard in sample.guards if guard.listed]
        detail = "; ".join([reason for reason in dict.fromkeys(reasons) if reason][:5])
        raise NoGuardAvailableError(f"no sampled guard fits exit {exit_node!r}: {exc}"
                                    + (f" ({detail})" if detail else "")) from None
