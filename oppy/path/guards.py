"""Entry guards: a persisted, ordered guard sample (guard-spec, in its short form).

The sample is an ordered list of relays from guard-spec's {GUARDS} set (Guard,
Stable, Fast, V2Dir and Valid) drawn with guard-position weights (Wgg/Wgd). The first :data:`N_PRIMARY_GUARDS` listed ones are the
primary guards; a circuit always uses the first primary guard that is not
known to be down (or whose retry time has come), and falls back to the other
sampled guards only when every primary one is down. Guards are replaced only
when they leave the consensus or lose a flag of the guard set; an unlisted guard keeps
its place for :data:`REMOVE_UNLISTED_GUARDS_AFTER` in case it returns.

Sans-IO: times are passed in (POSIX seconds), randomness comes from the
caller's ``random.Random``, and persistence is :meth:`GuardSample.to_dict` /
:meth:`GuardSample.from_dict` (the caller writes the JSON file).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from oppy.directory.documents import Consensus, RelayRecord
from oppy.path.selection import NoPathError, Position, bandwidth_weight_table, relay_weight

__all__ = [
    "SampledGuard",
    "GuardSample",
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

# guard-spec A.1 "Parameters with suggested values".
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

    def __init__(self, guards: list[SampledGuard] | None = None, *,
                 n_primary: int = N_PRIMARY_GUARDS, target_listed: int = MIN_FILTERED_SAMPLE):
        self.guards: list[SampledGuard] = list(guards or [])
        self.n_primary = n_primary
        self.target_listed = target_listed

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
    def from_dict(cls, state: Any, **options: Any) -> GuardSample:
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
        return cls(guards, **options)

    # ---- consensus updates -------------------------------------------------

    def max_sample_size(self, consensus: Consensus) -> int:
        """guard-spec SAMPLED: min(MAX_SAMPLE_SIZE, 20% of the guards), at least MIN_FILTERED_SAMPLE."""
        n_guards = sum(1 for relay in consensus.relays if _qualifies(relay))
        return max(MIN_FILTERED_SAMPLE, min(MAX_SAMPLE_SIZE, int(n_guards * MAX_SAMPLE_THRESHOLD)))

    def update_from_consensus(self, consensus: Consensus, now: float,
                              rng: random.Random | None = None) -> list[str]:
        """Mark guards listed/unlisted, expire long-unlisted ones, and draw replacements.

        Guards that are still listed in the guard set keep their place; the
        sample is topped up with weighted draws until it holds
        ``target_listed`` listed guards (or the size cap or the candidates run
        out). Returns the fingerprints newly added.
        """
        rng = rng if rng is not None else random.SystemRandom()
        for guard in self.guards:
            listed_now = _qualifies(consensus.relay_by_fingerprint(guard.fingerprint))
            if listed_now and not guard.listed:
                guard.listed, guard.unlisted_since = True, None
            elif not listed_now and guard.listed:
                guard.listed, guard.unlisted_since = False, now
        self.guards = [
            guard for guard in self.guards
            if guard.listed or guard.unlisted_since is None
            or now - guard.unlisted_since < REMOVE_UNLISTED_GUARDS_AFTER
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
        while n_listed < self.target_listed and len(self.guards) < cap and pool:
            index = _weighted_index([weight for _, weight in pool], rng)
            relay, _ = pool.pop(index)
            self.guards.append(SampledGuard(relay.fingerprint, relay.nickname, now))
            added.append(relay.fingerprint)
            n_listed += 1
        return added

    # ---- choosing ------------------------------------------------------------

    def primary_guards(self) -> list[SampledGuard]:
        """The first ``n_primary`` listed guards in sample order."""
        return [guard for guard in self.guards if guard.listed][: self.n_primary]

    def _usable_now(self, guard: SampledGuard, now: float, is_primary: bool) -> bool:
        if guard.failing_since is None:
            return True
        last = guard.last_tried if guard.last_tried is not None else guard.failing_since
        return now >= last + retry_delay(now - guard.failing_since, is_primary)

    def candidates(self, now: float, accept: Callable[[str], bool] | None = None) -> list[str]:
        """Fingerprints to try, best first: usable primaries, then other listed guards.

        ``accept`` can filter further (e.g. require V2Dir for a directory guard).
        """
        return list(self._iter_candidates(now, accept))

    def _iter_candidates(self, now: float, accept: Callable[[str], bool] | None) -> Iterator[str]:
        listed = [guard for guard in self.guards if guard.listed]
        for position, guard in enumerate(listed):
            is_primary = position < self.n_primary
            if self._usable_now(guard, now, is_primary) and (accept is None or accept(guard.fingerprint)):
                yield guard.fingerprint

    def choose(self, now: float, accept: Callable[[str], bool] | None = None) -> str:
        """The guard to use now: the first reachable (or due for retry) primary, else the next."""
        for fingerprint in self._iter_candidates(now, accept):
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
