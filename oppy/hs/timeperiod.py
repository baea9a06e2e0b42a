"""Onion-service time periods (rend-spec-v3 2.2.1 [TIME-PERIODS], 2.2.4 [FETCHUPLOADDESC]).

Blinded keys, subcredentials and the HSDir hash ring all change with the time period. Its length is the
``hsdir_interval`` consensus parameter (minutes), except on a test network where tor makes it one shared
random protocol run (24 voting intervals) so that it rotates while one watches. Periods are counted from
the epoch after subtracting a rotation offset of 12 voting intervals (one SR phase: 12:00 UTC on the
public network), and "now" is the valid-after time of the live consensus, never the local clock
(tor ``hs_get_time_period_num``, ``get_time_period_length``, ``sr_state_get_phase_duration``).
"""

from __future__ import annotations

from dataclasses import dataclass

from oppy.netdoc.documents import ConsensusHeader

__all__ = [
    "HSDIR_INTERVAL_PARAM",
    "HSDIR_INTERVAL_DEFAULT",
    "HSDIR_INTERVAL_BOUNDS",
    "SHARED_RANDOM_N_ROUNDS",
    "SHARED_RANDOM_N_PHASES",
    "TimePeriod",
    "voting_interval",
    "time_period_length",
    "time_period_at",
    "consensus_time_period",
    "srv_run_start",
    "in_period_between_tp_and_srv",
]

#: rend-spec-v3 2.2.1: the consensus parameter, in minutes, with tor's default and bounds
#: (HS_TIME_PERIOD_LENGTH_DEFAULT/_MIN/_MAX).
HSDIR_INTERVAL_PARAM = "hsdir_interval"
HSDIR_INTERVAL_DEFAULT = 1440
HSDIR_INTERVAL_BOUNDS = (30, 14400)
#: srv-spec: a shared-random protocol run is two phases (commit, reveal) of 12 voting rounds each.
SHARED_RANDOM_N_ROUNDS = 12
SHARED_RANDOM_N_PHASES = 2
_MINUTE = 60


@dataclass(frozen=True, slots=True)
class TimePeriod:
    """One time period: its number, its length (minutes) and the rotation offset (seconds) it counts
    from. ``number`` and ``length`` are what the blinding nonce and the hash ring hash."""

    number: int
    length: int
    rotation_offset: int

    @property
    def start(self) -> int:
        """POSIX time at which the period begins."""
        return self.number * self.length * _MINUTE + self.rotation_offset

    @property
    def end(self) -> int:
        """POSIX time at which the next period begins."""
        return self.start + self.length * _MINUTE

    def next(self) -> TimePeriod:
        return TimePeriod(self.number + 1, self.length, self.rotation_offset)

    def previous(self) -> TimePeriod:
        return TimePeriod(self.number - 1, self.length, self.rotation_offset)


def voting_interval(consensus: ConsensusHeader) -> int:
    """Seconds between consensuses, as tor's ``get_voting_interval`` reads a live consensus."""
    return consensus.fresh_until - consensus.valid_after


def time_period_length(consensus: ConsensusHeader, testing_network: bool = False) -> int:
    """Minutes per period: ``hsdir_interval`` clamped to its bounds, or on a test network one shared
    random protocol run (tor ``get_time_period_length``), at least a minute (tor only warns when a run
    is shorter, and would then divide by zero)."""
    if testing_network:
        return max(1, SHARED_RANDOM_N_ROUNDS * SHARED_RANDOM_N_PHASES * voting_interval(consensus) // _MINUTE)
    value = consensus.params.get(HSDIR_INTERVAL_PARAM, HSDIR_INTERVAL_DEFAULT)
    low, high = HSDIR_INTERVAL_BOUNDS
    return min(max(value, low), high)


def time_period_at(when: int, length: int, voting_interval_seconds: int = 3600) -> TimePeriod:
    """The period containing POSIX time ``when`` (tor ``hs_get_time_period_num(when)``)."""
    if length <= 0 or voting_interval_seconds <= 0:
        raise ValueError("time period length and voting interval must be positive")
    offset = SHARED_RANDOM_N_ROUNDS * voting_interval_seconds
    minutes = int(when) // _MINUTE - offset // _MINUTE
    return TimePeriod(minutes // length, length, offset)


def consensus_time_period(consensus: ConsensusHeader, testing_network: bool = False) -> TimePeriod:
    """The period a client uses with this (live) consensus: the one holding its valid-after."""
    return time_period_at(consensus.valid_after, time_period_length(consensus, testing_network),
                          voting_interval(consensus))


def srv_run_start(consensus: ConsensusHeader) -> int:
    """When the current shared-random protocol run began (tor
    ``sr_state_get_start_time_of_current_protocol_run``): the current SRV was published then."""
    interval = voting_interval(consensus)
    slot = (consensus.valid_after // interval) % (SHARED_RANDOM_N_ROUNDS * SHARED_RANDOM_N_PHASES)
    return consensus.valid_after - slot * interval


def in_period_between_tp_and_srv(consensus: ConsensusHeader, testing_network: bool = False) -> bool:
    """rend-spec-v3 2.2.4.1: whether the consensus falls after a new time period began and before the
    next SRV (the "-" segments of the spec's diagram), where a client fetches with the *current* SRV;
    in the "=" segments it uses the previous one (tor ``hs_in_period_between_tp_and_srv``)."""
    srv_start = srv_run_start(consensus)
    next_tp_start = time_period_at(srv_start, time_period_length(consensus, testing_network),
                                   voting_interval(consensus)).end
    return not srv_start <= consensus.valid_after < next_tp_start
