"""Entry guards: a persisted, ordered guard sample (guard-spec, in its short form).

The sample is an ordered list of relays from guard-spec's {GUARDS} set (Guard,
Stable, Fast, V2Dir and Valid) drawn with guard-position weights (Wgg/Wgd). The
first ``guard-n-primary-guards`` listed ones are the primary guards; a circuit
uses one of the first ``guard-n-primary-guards-to-use`` primary guards that are
not known to be down (or whose retry time has come), chosen uniformly, and falls
back to the other sampled guards only when every primary one is down. Guards are
replaced only when they leave the consensus or lose a flag of the guard set; an
unlisted guard keeps its place for ``guard-remove-unlisted-guards-after-days``
in case it returns. Every ``guard-*`` consensus parameter is read
(:class:`GuardParams`).

Sans-IO: times are passed in (POSIX seconds), randomness comes from the
caller's ``random.Random``, and persistence is :meth:`GuardSample.to_dict` /
:meth:`GuardSample.from_dict` (the caller writes the JSON file).
"""

from __future__ import annotations

import enum
import math
import random
import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

from oppy.directory.documents import Consensus, RelayRecord
from oppy.path.selection import (
    NoPathError,
    Path,
    PathNode,
    PathSelector,
    Position,
    bandwidth_weight_table,
    relay_weight,
)

__all__ = [
    "SampledGuard",
    "GuardSample",
    "GuardParams",
    "GuardUsage",
    "choose_path",
    "GuardStateError",
    "NoGuardAvailableError",
    "retry_delay",
    "GUARD_SET_FLAGS",
    "N_PRIMARY_GUARDS",
    "MIN_FILTERED_SAMPLE",
    "MAX_SAMPLE_SIZE",
    "MAX_SAMPLE_THRESHOLD",
    "REMOVE_UNLISTED_GUARDS_AFTER",
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
#: GUARDS_RETRY_SCHED (guard-spec A.1; tor entrynodes.c ``get_retry_schedule``):
#: every 10 min (1 h) for the first 6 h, every 90 min (4 h) until 4 days,
#: every 4 h (18 h) until 7 days, then every 9 h (36 h).
_RETRY_SCHEDULE: tuple[tuple[float, int, int], ...] = (
    (6 * _HOUR, 10 * _MINUTE, 1 * _HOUR),
    (4 * _DAY, 90 * _MINUTE, 4 * _HOUR),
    (7 * _DAY, 4 * _HOUR, 18 * _HOUR),
    (math.inf, 9 * _HOUR, 36 * _HOUR),
)

#: Version of the :meth:`GuardSample.to_dict` format.
STATE_VERSION = 1
_HEX40_RE = re.compile(r"[0-9A-F]{40}\Z")


class GuardStateError(ValueError):
    """Persisted guard state is malformed."""


class NoGuardAvailableError(NoPathError):
    """Every sampled guard is down, unlisted or unsuitable right now."""


def retry_delay(failing_for: float, is_primary: bool) -> int:
    """Seconds to wait between attempts on a guard that has been failing for ``failing_for``."""
    for limit, primary_delay, other_delay in _RETRY_SCHEDULE:
        if failing_for < limit:
            return primary_delay if is_primary else other_delay
    raise AssertionError("unreachable: the schedule ends with infinity")


@dataclass(slots=True)
class SampledGuard:
    """One guard in the sample. Reachability is in-memory only (not persisted)."""

    fingerprint: str
    nickname: str
    added_at: float
    #: Listed in the latest consensus with every flag of :data:`GUARD_SET_FLAGS`.
    listed: bool = True
    unlisted_since: float | None = None
    #: When the current run of failures started; None while the guard works.
    failing_since: float | None = None
    last_tried: float | None = None

    @property
    def is_down(self) -> bool:
        return self.failing_since is not None


#: The flags a relay needs to be in guard-spec's {GUARDS} set (guard-spec 4.0: "usable for all
#: circuits and directory requests"; tor ``node_is_possible_guard`` adds Valid). Running is
#: required too: every consensus entry carries it, and oppy never builds through a relay without it.
GUARD_SET_FLAGS = frozenset({"Guard", "Stable", "Fast", "V2Dir", "Valid", "Running"})


def _qualifies(relay: RelayRecord | None) -> bool:
    """Is this consensus entry in {GUARDS}, so that it may be (or stay listed as) a sampled guard?"""
    return relay is not None and GUARD_SET_FLAGS <= relay.flags and "MiddleOnly" not in relay.flags


class GuardSample:
    """An ordered guard sample with primary guards and a retry schedule."""

    def __init__(self, guards: list[SampledGuard] | None = None) -> None:
        self.guards: list[SampledGuard] = list(guards or [])
        #: The parameters of the latest consensus (:meth:`update_from_consensus`).
        self.params = GuardParams()

    # ---- persistence -------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able snapshot of the durable state (order, identities, listing)."""
        return {
            "version": STATE_VERSION,
            "guards": [
                {
                    "fingerprint": guard.fingerprint,
                    "nickname": guard.nickname,
                    "added_at": guard.added_at,
                    "listed": guard.listed,
                    "unlisted_since": guard.unlisted_since,
                }
                for guard in self.guards
            ],
        }

    @classmethod
    def from_dict(cls, state: Any) -> GuardSample:
        """Rebuild a sample from :meth:`to_dict` output; raise :class:`GuardStateError` if malformed."""
        if not isinstance(state, dict):
            raise GuardStateError(f"guard state must be a dict, not {type(state).__name__}")
        if state.get("version") != STATE_VERSION:
            raise GuardStateError(f"unsupported guard state version {state.get('version')!r}")
        entries = state.get("guards")
        if not isinstance(entries, list):
            raise GuardStateError("guard state has no 'guards' list")
        guards = []
        seen = set()
        for position, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise GuardStateError(f"guard #{position} is not a dict")
            fingerprint = entry.get("fingerprint")
            if not isinstance(fingerprint, str) or not _HEX40_RE.match(fingerprint):
                raise GuardStateError(f"guard #{position} has a bad fingerprint {fingerprint!r}")
            if fingerprint in seen:
                raise GuardStateError(f"guard {fingerprint} appears twice")
            seen.add(fingerprint)
            nickname = entry.get("nickname", "")
            added_at = entry.get("added_at")
            listed = entry.get("listed", True)
            unlisted_since = entry.get("unlisted_since")
            if not isinstance(nickname, str):
                raise GuardStateError(f"guard {fingerprint} has a bad nickname")
            if not _is_time(added_at):
                raise GuardStateError(f"guard {fingerprint} has a bad added_at {added_at!r}")
            if not isinstance(listed, bool):
                raise GuardStateError(f"guard {fingerprint} has a bad 'listed' value")
            if unlisted_since is not None and not _is_time(unlisted_since):
                raise GuardStateError(f"guard {fingerprint} has a bad unlisted_since {unlisted_since!r}")
            guards.append(SampledGuard(fingerprint, nickname, float(added_at), listed,
                                       None if unlisted_since is None else float(unlisted_since)))
        return cls(guards)

    # ---- consensus updates -------------------------------------------------

    def max_sample_size(self, consensus: Consensus) -> int:
        """guard-spec SAMPLED: min(MAX_SAMPLE_SIZE, MAX_SAMPLE_THRESHOLD of the guards), at least
        MIN_FILTERED_SAMPLE (tor ``get_max_sample_size``)."""
        params = self.params
        n_guards = sum(1 for relay in consensus.relays if _qualifies(relay))
        by_share = int(n_guards * params.max_sample_threshold)
        return max(params.min_filtered_sample_size, min(params.max_sample_size, by_share))

    def update_from_consensus(self, consensus: Consensus, now: float,
                              rng: random.Random | None = None) -> list[str]:
        """Mark guards listed/unlisted, expire long-unlisted ones, and draw replacements.

        Guards that are still listed in the guard set keep their place; the
        sample is topped up with weighted draws until it holds
        ``guard-min-filtered-sample-size`` listed guards (or the size cap or the
        candidates run out). Returns the fingerprints newly added.
        """
        rng = rng if rng is not None else random.SystemRandom()
        self.params = GuardParams.from_consensus(consensus)
        for guard in self.guards:
            listed_now = _qualifies(consensus.relay_by_fingerprint(guard.fingerprint))
            if listed_now and not guard.listed:
                guard.listed, guard.unlisted_since = True, None
            elif not listed_now and guard.listed:
                guard.listed, guard.unlisted_since = False, now
        self.guards = [
            guard for guard in self.guards
            if guard.listed or guard.unlisted_since is None
            or now - guard.unlisted_since < self.params.remove_unlisted_guards_after
        ]
        return self._fill(consensus, now, rng)

    def _fill(self, consensus: Consensus, now: float, rng: random.Random) -> list[str]:
        sampled = {guard.fingerprint for guard in self.guards}
        table = bandwidth_weight_table(consensus, Position.GUARD)
        pool = [(relay, relay_weight(relay, table)) for relay in consensus.relays
                if _qualifies(relay) and relay.fingerprint not in sampled]
        cap = self.max_sample_size(consensus)
        added = []
        n_listed = sum(1 for guard in self.guards if guard.listed)
        while n_listed < self.params.min_filtered_sample_size and len(self.guards) < cap and pool:
            index = _weighted_index([weight for _, weight in pool], rng)
            relay, _ = pool.pop(index)
            self.guards.append(SampledGuard(relay.fingerprint, relay.nickname, now))
            added.append(relay.fingerprint)
            n_listed += 1
        return added

    # ---- choosing ------------------------------------------------------------

    def primary_guards(self) -> list[SampledGuard]:
        """The first ``guard-n-primary-guards`` listed guards in sample order."""
        return [guard for guard in self.guards if guard.listed][: self.params.n_primary_guards]

    def primaries_needing_descriptors(self) -> int:
        """How many usable primary guards need a microdescriptor before circuits are built:
        guard-n-primary-guards-to-use plus one (tor ``guard_selection_get_err_str_if_dir_info_missing``)."""
        return self.params.n_primary_guards_to_use + 1

    def primaries_to_use(self, usage: GuardUsage) -> int:
        """How many usable primary guards a choice is spread over (guard-spec SELECTING)."""
        if usage is GuardUsage.DIRECTORY:
            return self.params.n_primary_dir_guards_to_use
        return self.params.n_primary_guards_to_use

    def _usable_now(self, guard: SampledGuard, now: float, is_primary: bool) -> bool:
        if guard.failing_since is None:
            return True
        last = guard.last_tried if guard.last_tried is not None else guard.failing_since
        return now >= last + retry_delay(now - guard.failing_since, is_primary)

    def candidates(self, now: float, accept: Callable[[str], bool] | None = None, *,
                   rng: random.Random | None = None, usage: GuardUsage = GuardUsage.TRAFFIC) -> list[str]:
        """Fingerprints to try, best first: usable primaries, then other listed guards.

        ``accept`` can filter further (e.g. require V2Dir for a directory guard). With
        ``rng``, the first one is drawn uniformly from the first usable and accepted
        primaries, as many as :meth:`primaries_to_use` says (guard-spec SELECTING).
        """
        found = list(self._iter_candidates(now, accept))
        if rng is not None:
            primary = {guard.fingerprint for guard in self.primary_guards()}
            spread = [fingerprint for fingerprint in found if fingerprint in primary][: self.primaries_to_use(usage)]
            if len(spread) > 1:
                chosen = rng.choice(spread)
                found.remove(chosen)
                found.insert(0, chosen)
        return found

    def _iter_candidates(self, now: float, accept: Callable[[str], bool] | None) -> Iterator[str]:
        listed = [guard for guard in self.guards if guard.listed]
        for position, guard in enumerate(listed):
            is_primary = position < self.params.n_primary_guards
            if self._usable_now(guard, now, is_primary) and (accept is None or accept(guard.fingerprint)):
                yield guard.fingerprint

    def choose(self, now: float, accept: Callable[[str], bool] | None = None, *,
               rng: random.Random | None = None, usage: GuardUsage = GuardUsage.TRAFFIC) -> str:
        """The guard to use now: a reachable (or due for retry) primary, else the next listed one.

        With ``rng``, the primary is drawn uniformly from the first usable ones (see
        :meth:`candidates`); without, it is the first.
        """
        for fingerprint in self.candidates(now, accept, rng=rng, usage=usage)[:1]:
            return fingerprint
        listed = [guard for guard in self.guards if guard.listed]
        if not listed:
            raise NoGuardAvailableError(
                f"the guard sample has no listed guards ({len(self.guards)} sampled, all unlisted)"
            )
        retry_at = min(self.next_retry_at(guard.fingerprint) or now for guard in listed)
        raise NoGuardAvailableError(
            f"all {len(listed)} listed guards are down or refused; next retry in {retry_at - now:.0f} s"
        )

    def next_retry_at(self, fingerprint: str) -> float | None:
        """When a down guard may next be tried (None if it is not down)."""
        guard = self._get(fingerprint)
        if guard.failing_since is None:
            return None
        is_primary = any(g is guard for g in self.primary_guards())
        last = guard.last_tried if guard.last_tried is not None else guard.failing_since
        # The interval is looked up with the failing time at the moment of the
        # check (as tor does), so step until the time found is consistent.
        due = last + retry_delay(last - guard.failing_since, is_primary)
        for _ in range(len(_RETRY_SCHEDULE)):
            later = last + retry_delay(due - guard.failing_since, is_primary)
            if later <= due:
                break
            due = later
        return due

    # ---- reachability ----------------------------------------------------------

    def mark_down(self, fingerprint: str, now: float) -> None:
        """A connection or handshake to this guard failed at ``now``."""
        guard = self._get(fingerprint)
        if guard.failing_since is None:
            guard.failing_since = now
        guard.last_tried = now

    def mark_up(self, fingerprint: str, now: float) -> None:
        """A connection to this guard succeeded at ``now``."""
        guard = self._get(fingerprint)
        guard.failing_since = None
        guard.last_tried = now

    def _get(self, fingerprint: str) -> SampledGuard:
        wanted = fingerprint.lstrip("$").upper()
        for guard in self.guards:
            if guard.fingerprint == wanted:
                return guard
        raise KeyError(f"{fingerprint} is not in the guard sample")


def _is_time(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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


def choose_path(selector: PathSelector, sample: GuardSample, now: float, rng: random.Random,
                port: int | None = None, *, avoid: Collection[bytes] = ()) -> Path:
    """A circuit's path as oppy builds it: the exit first (its policy summary accepts ``port``),
    then a guard of ``sample`` that fits it, then the middle; Stable relays on every hop for a
    long-lived port; no relay whose RSA identity is in ``avoid``.

    Raises :class:`NoPathError` (:class:`NoGuardAvailableError` for the guard) saying why.
    """
    exit_node = selector.choose_exit(rng, port, avoid=avoid)
    guard = _guard_for(selector, sample, now, rng, exit_node, avoid)
    middle = selector.choose_middle(rng, exclude=(exit_node, guard), avoid=avoid, stable=selector.needs_stable(port))
    return Path(guard=guard, middle=middle, exit=exit_node)


def _guard_for(selector: PathSelector, sample: GuardSample, now: float, rng: random.Random,
               exit_node: PathNode, avoid: Collection[bytes]) -> PathNode:
    """A usable sampled guard with a microdescriptor that is neither avoided nor conflicting with
    the exit (tor's exit restriction: not the exit, nor in its family or subnet)."""
    reasons: list[str] = []

    def fits(fingerprint: str) -> bool:
        node = selector.node(fingerprint)
        if node is None:
            reasons.append(f"${fingerprint} has no microdescriptor or is not running")
        elif node.relay.rsa_id in avoid:
            reasons.append(f"${fingerprint} is excluded")
        else:
            conflict = selector.conflicts(node, (exit_node,))
            if conflict is None:
                return True
            reasons.append(conflict)
        return False

    try:
        fingerprint = sample.choose(now, fits, rng=rng, usage=GuardUsage.TRAFFIC)
    except NoGuardAvailableError:
        if not reasons:
            raise                   # every guard down (with the retry time), or none listed
        raise NoGuardAvailableError(f"no sampled guard fits exit {exit_node!r}: {'; '.join(reasons)}") from None
    guard = selector.node(fingerprint)
    assert guard is not None        # fits() accepted it
    return guard
