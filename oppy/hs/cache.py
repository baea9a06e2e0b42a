"""The client's descriptor cache and introduction-point failure cache (tor ``hs_cache.c``, client side).

Descriptors are kept by the service's identity key until the next time period begins (tor sets
``expiration_ts`` to the start of the next period when it stores one), judged by the live consensus's
valid-after rather than the local clock; without a reasonably live consensus every entry counts as
expired. A descriptor that needs client authorization we lack (or have wrong) is kept undecrypted, so
that a key added later can open it. A newer revision replaces an older one, never the reverse, unless
either is undecrypted. Introduction-point failures are remembered per service and auth key for two
minutes (HS_CACHE_CLIENT_INTRO_STATE_MAX_AGE). Sans-IO: the clock and the consensus are handed in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from oppy.hs.descriptor import HsDescriptor
from oppy.hs.timeperiod import consensus_time_period
from oppy.netdoc.documents import ConsensusHeader
from oppy.netdoc.verify import REASONABLY_LIVE_TIME

__all__ = [
    "INTRO_STATE_MAX_AGE",
    "MAX_INTRO_POINT_REACHABILITY_FAILURES",
    "CachedDescriptor",
    "IntroFailure",
    "IntroPointState",
    "HsDescriptorCache",
]

#: tor HS_CACHE_CLIENT_INTRO_STATE_MAX_AGE: how long an introduction point's failures are remembered.
INTRO_STATE_MAX_AGE = 2 * 60
#: tor or.h MAX_INTRO_POINT_REACHABILITY_FAILURES: failures to reach an introduction point before it is
#: not tried again.
MAX_INTRO_POINT_REACHABILITY_FAILURES = 5


@dataclass(frozen=True, slots=True)
class CachedDescriptor:
    """One cached descriptor: the text as fetched, what decoding made of it (None while client
    authorization is missing or wrong), and the consensus time at which it expires."""

    identity_key: bytes
    encoded: bytes
    descriptor: HsDescriptor | None
    expires_at: int


class IntroFailure(Enum):
    """tor ``rend_intro_point_failure_t``: how an introduction attempt failed."""

    GENERIC = "generic"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"


@dataclass(slots=True)
class IntroPointState:
    """tor ``hs_cache_intro_state_t``: what went wrong with one introduction point, since when."""

    created_at: float
    error: bool = False
    timed_out: bool = False
    unreachable_count: int = 0

    @property
    def usable(self) -> bool:
        """tor ``intro_point_is_usable``: no error, no timeout, fewer than 5 failures to reach it."""
        return not self.error and not self.timed_out and self.unreachable_count < MAX_INTRO_POINT_REACHABILITY_FAILURES


class HsDescriptorCache:
    """Descriptors by service identity key, and introduction-point failures, with tor's rules.

    ``consensus`` arguments are the client's latest consensus (or None); whether it is reasonably live
    is judged with ``clock``, as tor judges it with ``networkstatus_get_reasonably_live_consensus``.
    ``testing_network`` selects the test network's time periods (:mod:`oppy.hs.timeperiod`).
    """

    def __init__(self, clock: Callable[[], float] = time.time, testing_network: bool = False) -> None:
        self._clock = clock
        self._testing_network = testing_network
        self._descriptors: dict[bytes, CachedDescriptor] = {}
        self._intro_states: dict[bytes, dict[bytes, IntroPointState]] = {}

    def __len__(self) -> int:
        return len(self._descriptors)

    # ---- descriptors --------------------------------------------------------------------------

    def _live(self, consensus: ConsensusHeader | None) -> ConsensusHeader | None:
        if consensus is None or self._clock() > consensus.valid_until + REASONABLY_LIVE_TIME:
            return None
        return consensus

    def _expired(self, entry: CachedDescriptor, consensus: ConsensusHeader | None) -> bool:
        """tor ``cached_client_descriptor_has_expired``."""
        live = self._live(consensus)
        return live is None or entry.expires_at <= live.valid_after

    def store(self, identity_key: bytes, encoded: bytes, descriptor: HsDescriptor | None,
              consensus: ConsensusHeader) -> CachedDescriptor:
        """Keep a descriptor fetched for ``identity_key`` (``descriptor`` None if client authorization is
        missing or wrong), until the period after ``consensus``'s begins. Returns the entry now cached:
        the older one if it had a higher revision counter (tor ``cache_store_as_client``)."""
        entry = CachedDescriptor(identity_key, bytes(encoded), descriptor,
                                 consensus_time_period(consensus, self._testing_network).end)
        current = self.lookup_entry(identity_key, consensus)
        if (current is not None and current.descriptor is not None and descriptor is not None
                and current.descriptor.revision_counter > descriptor.revision_counter):
            return current
        self._descriptors[identity_key] = entry
        return entry

    def lookup_entry(self, identity_key: bytes, consensus: ConsensusHeader | None) -> CachedDescriptor | None:
        """The unexpired entry for a service, decrypted or not (tor ``lookup_v3_desc_as_client``)."""
        entry = self._descriptors.get(identity_key)
        if entry is None or self._expired(entry, consensus):
            return None
        return entry

    def lookup(self, identity_key: bytes, consensus: ConsensusHeader | None) -> HsDescriptor | None:
        """The unexpired, decrypted descriptor of a service (tor ``hs_cache_lookup_as_client``)."""
        entry = self.lookup_entry(identity_key, consensus)
        return entry.descriptor if entry is not None else None

    def remove(self, identity_key: bytes) -> CachedDescriptor | None:
        """Forget a service's descriptor (tor ``hs_cache_remove_as_client``); the entry removed, if any."""
        return self._descriptors.pop(identity_key, None)

    def clean(self, consensus: ConsensusHeader | None) -> list[CachedDescriptor]:
        """Drop expired entries (tor ``cache_clean_v3_as_client``); returns them, so the owner can close
        the introduction circuits of the decrypted ones."""
        expired = [entry for entry in self._descriptors.values() if self._expired(entry, consensus)]
        for entry in expired:
            del self._descriptors[entry.identity_key]
        return expired

    def purge(self) -> None:
        """Forget every descriptor and failure (tor ``hs_client_purge_state``, on NEWNYM)."""
        self._descriptors.clear()
        self._intro_states.clear()

    # ---- introduction point failures ----------------------------------------------------------

    def note_intro_failure(self, identity_key: bytes, auth_key: bytes, failure: IntroFailure) -> IntroPointState:
        """Remember that the introduction point ``auth_key`` of a service failed
        (tor ``hs_cache_client_intro_state_note``)."""
        states = self._intro_states.setdefault(identity_key, {})
        state = states.get(auth_key)
        if state is None:
            state = states[auth_key] = IntroPointState(self._clock())
        if failure is IntroFailure.GENERIC:
            state.error = True
        elif failure is IntroFailure.TIMEOUT:
            state.timed_out = True
        else:
            state.unreachable_count += 1
        return state

    def intro_state(self, identity_key: bytes, auth_key: bytes) -> IntroPointState | None:
        """The failures noted for an introduction point (tor ``hs_cache_client_intro_state_find``)."""
        return self._intro_states.get(identity_key, {}).get(auth_key)

    def clean_intro_states(self) -> None:
        """Forget failures noted more than INTRO_STATE_MAX_AGE ago (tor
        ``hs_cache_client_intro_state_clean``)."""
        cutoff = self._clock() - INTRO_STATE_MAX_AGE
        for identity_key in list(self._intro_states):
            states = self._intro_states[identity_key]
            for auth_key in [key for key, state in states.items() if state.created_at <= cutoff]:
                del states[auth_key]
            if not states:
                del self._intro_states[identity_key]
