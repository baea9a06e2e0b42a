"""The guard algorithm (guard-spec 4): sampling, listing and expiry, confirmed and primary guards,
retries, choosing, circuits waiting for a better guard, persistence. Every test runs on a
simulated clock (``now`` passed in) with a seeded rng."""

from __future__ import annotations

import dataclasses
import functools
import json
import random
from collections import Counter
from types import MappingProxyType

import pytest

from oppy.netdoc.documents import Consensus, RelayRecord, parse_consensus
from oppy.path.guards import (
    GUARD_SET_FLAGS,
    MIN_FILTERED_SAMPLE,
    REMOVE_UNLISTED_GUARDS_AFTER,
    GuardCircuitState,
    GuardParams,
    GuardSample,
    GuardStateError,
    GuardUsage,
    NoGuardAvailableError,
    Reachability,
    has_higher_priority,
    retry_delay,
)

from tests.support.testdata import REAL_DIRECTORY

MINUTE, HOUR, DAY = 60, 3600, 86400
#: A simulated clock's start: the 2017 consensus's valid-after.
T0 = 1489140000.0
USABLE_ON_COMPLETION = GuardCircuitState.USABLE_ON_COMPLETION
IF_NO_BETTER = GuardCircuitState.USABLE_IF_NO_BETTER_GUARD
WAITING = GuardCircuitState.WAITING_FOR_BETTER_GUARD
COMPLETE = GuardCircuitState.COMPLETE


@functools.cache
def real_consensus(folder: str = "2017-03-10-bitnym") -> Consensus:
    return parse_consensus((REAL_DIRECTORY / folder / "cached-microdesc-consensus").read_bytes())


GUARD_FLAGS = "Guard Running Valid Fast Stable V2Dir"


def make_relay(index: int, flags: str = GUARD_FLAGS, bandwidth: int = 1000) -> RelayRecord:
    return RelayRecord(f"guard{index}", index.to_bytes(20, "big"), f"10.{index % 250}.0.1", 9001, 0, (),
                       frozenset(flags.split()), bandwidth, False, MappingProxyType({}), f"md{index}")


def make_consensus(relays, params=None) -> Consensus:
    empty = MappingProxyType({})
    return Consensus("microdesc", 35, 0, 3600, 10800, (), MappingProxyType(params or {}), empty, empty, empty,
                     empty, (), MappingProxyType({"Wgg": 10000, "Wgd": 10000, "Wgm": 10000}), tuple(relays))


def fp(index: int) -> str:
    return index.to_bytes(20, "big").hex().upper()


def synthetic_sample(n_relays: int = 30, seed: int = 1, now: float = T0,
                     params=None) -> tuple[GuardSample, Consensus]:
    consensus = make_consensus([make_relay(i) for i in range(1, n_relays + 1)], params)
    sample = GuardSample(rng=random.Random(seed))
    sample.update_from_consensus(consensus, now)
    return sample, consensus


def fingerprints(guards) -> list[str]:
    return [guard.fingerprint for guard in guards]


def by_fingerprint(sample: GuardSample, fingerprint: str):
    return next(guard for guard in sample.guards if guard.fingerprint == fingerprint)


# ---------------------------------------------------------------- sampling (guard-spec 4.1 SAMPLED)


def test_sample_from_real_consensus():
    consensus = real_consensus()
    sample = GuardSample(rng=random.Random(4))
    added = sample.update_from_consensus(consensus, T0)
    assert len(added) == len(sample.guards) == MIN_FILTERED_SAMPLE == len(set(added))
    for guard in sample.guards:
        relay = consensus.relay_by_fingerprint(guard.fingerprint)
        assert GUARD_SET_FLAGS <= relay.flags and guard.nickname == relay.nickname
    again = GuardSample(rng=random.Random(4))
    again.update_from_consensus(consensus, T0)
    assert fingerprints(again.guards) == added                       # deterministic with a seed
    assert sample.update_from_consensus(consensus, T0 + HOUR) == []  # the same consensus changes nothing
    assert fingerprints(sample.primary_guards()) == added[:3]        # nothing confirmed: sample order


def test_added_on_date_is_randomized_into_the_past():
    # guard-spec 4.1: ADDED_ON_DATE = RAND(now, GUARD_LIFETIME/10), whole seconds.
    sample, _ = synthetic_sample(n_relays=200, params={"guard-min-filtered-sample-size": 40})
    dates = [guard.added_at for guard in sample.guards]
    assert all(T0 - 12 * DAY <= date <= T0 and date == int(date) for date in dates)
    assert max(dates) - min(dates) > 6 * DAY                        # spread, not all "now"


def test_draws_follow_guard_weights():
    # One heavy guard among light ones is almost always sampled first; a zero-weight one never.
    relays = [make_relay(1, bandwidth=1_000_000)] + [make_relay(i, bandwidth=1) for i in range(2, 12)]
    relays.append(make_relay(12, bandwidth=0))
    consensus = make_consensus(relays, {"guard-min-filtered-sample-size": 5})
    firsts = []
    for seed in range(200):
        sample = GuardSample(rng=random.Random(seed))
        sample.update_from_consensus(consensus, T0)
        firsts.append(sample.guards[0].fingerprint)
        assert fp(12) not in fingerprints(sample.guards)
    assert firsts.count(fp(1)) >= 198


def test_only_relays_of_the_guard_set_are_sampled():
    # guard-spec 4.0 {GUARDS}: Guard, Stable, Fast, V2Dir (and Valid, tor node_is_possible_guard).
    relays = [make_relay(1), make_relay(2, "Running Valid Fast Stable V2Dir"),
              make_relay(3, GUARD_FLAGS + " MiddleOnly"), make_relay(4, "Guard Valid Stable Fast V2Dir"),
              make_relay(5), make_relay(6, GUARD_FLAGS.replace(" Stable", "")),
              make_relay(7, GUARD_FLAGS.replace(" Fast", "")), make_relay(8, GUARD_FLAGS.replace(" V2Dir", "")),
              make_relay(9, GUARD_FLAGS.replace(" Valid", ""))]
    sample = GuardSample(rng=random.Random(1))
    sample.update_from_consensus(make_consensus(relays), T0)
    assert sorted(fingerprints(sample.guards)) == [fp(1), fp(5)]


def test_real_sample_holds_only_relays_tor_would_sample_2017():
    # 287 of the 2549 Guard relays of the 2017 consensus lack Stable, Fast or V2Dir; drawn by
    # weight they were about 9% of the primary guards. tor never samples them.
    consensus = real_consensus()
    assert sum(1 for r in consensus.relays if "Guard" in r.flags and not GUARD_SET_FLAGS <= r.flags) == 287
    for seed in range(40):
        sample = GuardSample(rng=random.Random(seed))
        sample.update_from_consensus(consensus, T0)
        assert len(sample.guards) == MIN_FILTERED_SAMPLE
        for guard in sample.guards:
            assert GUARD_SET_FLAGS <= consensus.relay_by_fingerprint(guard.fingerprint).flags


def test_sample_size_limits():
    # max(MIN_FILTERED_SAMPLE, min(MAX_SAMPLE_SIZE, 20% of the guards)) (tor get_max_sample_size).
    assert synthetic_sample(n_relays=5)[0].max_sample_size(make_consensus([make_relay(1)])) == 20
    sample, consensus = synthetic_sample(n_relays=150)
    assert sample.max_sample_size(consensus) == 30
    assert synthetic_sample(n_relays=400)[0].max_sample_size(make_consensus(
        [make_relay(i) for i in range(1, 401)])) == 60
    # Unusable guards make the sample grow (guard-spec FILTERED), up to its maximum.
    now = T0 + HOUR
    for guard in list(sample.guards):
        sample.note_failure(guard.fingerprint, now)
    choice = sample.pick(now)
    assert len(sample.guards) == 30 and choice.state is IF_NO_BETTER and choice.guard is sample.guards[20]
    sample.note_failure(choice.fingerprint, now)
    for _ in range(9):
        sample.note_failure(sample.pick(now).fingerprint, now)
    with pytest.raises(NoGuardAvailableError, match="all 30 listed guards are down"):
        sample.pick(now)
    assert len(sample.guards) == 30                                  # never beyond 20% of 150


def test_small_network_samples_every_guard():
    sample, consensus = synthetic_sample(n_relays=5)
    assert len(sample.guards) == 5
    assert sample.update_from_consensus(consensus, T0 + HOUR) == []


# ---------------------------------------------------------------- listing and expiry


def test_guard_losing_v2dir_becomes_unlisted():
    sample, consensus = synthetic_sample()
    first = sample.primary_guards()[0].fingerprint
    relays = [dataclasses.replace(r, flags=r.flags - {"V2Dir"}) if r.fingerprint == first else r
              for r in consensus.relays]
    sample.update_from_consensus(make_consensus(relays), T0 + HOUR)
    assert not by_fingerprint(sample, first).listed
    assert first not in fingerprints(sample.primary_guards())


def test_unlisted_guards_keep_their_place_for_20_days():
    # 300 guards: the sample may grow to 60 (20% of the guards), room for replacements.
    sample, consensus = synthetic_sample(n_relays=300)
    before = fingerprints(sample.guards)
    primary = fingerprints(sample.primary_guards())
    gone, demoted = primary[0], primary[2]
    relays = [dataclasses.replace(r, flags=frozenset({"Running", "Valid", "Fast"})) if r.fingerprint == demoted
              else r for r in consensus.relays if r.fingerprint != gone]
    now = T0 + HOUR
    added = sample.update_from_consensus(make_consensus(relays), now)
    assert len(added) == 2 and not set(added) & set(before)
    assert fingerprints(sample.guards)[:len(before)] == before                # order kept
    assert {g.fingerprint for g in sample.guards if not g.listed} == {gone, demoted}
    # FIRST_UNLISTED_AT = RAND(now, REMOVE_UNLISTED_GUARDS_AFTER/5).
    for fingerprint in (gone, demoted):
        assert now - 4 * DAY <= by_fingerprint(sample, fingerprint).unlisted_since <= now
    assert fingerprints(sample.primary_guards()) == [primary[1], before[3], before[4]]

    # Back within 20 days: it is listed again; the primaries stay as they are until a confirmed
    # guard displaces one (guard-spec 4.4).
    sample.update_from_consensus(consensus, now + DAY)
    assert by_fingerprint(sample, gone).listed and by_fingerprint(sample, gone).unlisted_since is None
    assert fingerprints(sample.primary_guards(now + DAY)) == [primary[1], before[3], before[4]]
    sample.note_success(gone, now + DAY)
    assert fingerprints(sample.primary_guards()) == [gone, primary[1], before[3]]

    # Unlisted for more than REMOVE_UNLISTED_GUARDS_AFTER: removed.
    sample.update_from_consensus(make_consensus(relays), now + 2 * DAY)
    sample.update_from_consensus(make_consensus(relays), now + 2 * DAY + REMOVE_UNLISTED_GUARDS_AFTER)
    assert gone not in fingerprints(sample.guards) and demoted not in fingerprints(sample.guards)


def test_full_sample_waits_for_unlisted_guards_to_expire():
    # 40 guards: the sample is capped at MIN_FILTERED_SAMPLE (20% of 40 is less), so an
    # unlisted guard is not replaced until it is removed (guard-spec SAMPLED).
    sample, consensus = synthetic_sample(n_relays=40)
    gone = sample.primary_guards()[0].fingerprint
    without = make_consensus([r for r in consensus.relays if r.fingerprint != gone])
    assert sample.update_from_consensus(without, T0 + HOUR) == []
    assert len(sample.guards) == MIN_FILTERED_SAMPLE and sample.pick(T0 + HOUR).fingerprint != gone
    added = sample.update_from_consensus(without, T0 + HOUR + REMOVE_UNLISTED_GUARDS_AFTER)
    assert len(added) == 1 and gone not in fingerprints(sample.guards)


def test_guard_lifetime_2017():
    # guard-spec 4.1: an unconfirmed guard sampled more than GUARD_LIFETIME (120 days) ago is
    # removed; a confirmed one once it was also confirmed more than 60 days ago. Before, the
    # sample was kept forever.
    consensus = real_consensus()
    sample = GuardSample(rng=random.Random(12))
    sample.update_from_consensus(consensus, T0)
    first = fingerprints(sample.guards)
    # ADDED_ON_DATE is up to 12 days early, so nothing can expire before day 108.
    assert sample.update_from_consensus(consensus, T0 + 108 * DAY - 1) == []
    kept = first[5]
    sample.note_success(kept, T0 + 100 * DAY)
    confirmed_on = by_fingerprint(sample, kept).confirmed_on          # randomized up to 12 days back
    assert T0 + 88 * DAY <= confirmed_on <= T0 + 100 * DAY
    added = sample.update_from_consensus(consensus, T0 + 120 * DAY + 1)
    assert fingerprints(sample.guards)[0] == kept and len(added) == MIN_FILTERED_SAMPLE - 1
    assert set(fingerprints(sample.guards)) & set(first) == {kept}
    assert sample.primary_guards()[0].fingerprint == kept             # confirmed: primary first
    assert by_fingerprint(sample, kept).confirmed_idx == 0
    # Confirmed more than GUARD_CONFIRMED_MIN_LIFETIME (60 days) ago: it goes too.
    sample.update_from_consensus(consensus, confirmed_on + 60 * DAY - 1)
    assert kept in fingerprints(sample.guards)
    sample.update_from_consensus(consensus, confirmed_on + 60 * DAY + 1)
    assert kept not in fingerprints(sample.guards) and len(sample.guards) == MIN_FILTERED_SAMPLE


def test_guard_lifetime_follows_the_consensus_parameters():
    sample, consensus = synthetic_sample(params={"guard-lifetime-days": 10})
    assert all(T0 - DAY <= guard.added_at <= T0 for guard in sample.guards)
    sample.update_from_consensus(consensus, T0 + 10 * DAY + 1)
    assert len(sample.guards) == 20 and all(guard.added_at >= T0 + 9 * DAY for guard in sample.guards)


# ---------------------------------------------------------------- confirmed and primary guards


def test_confirmed_guards_become_primary_and_keep_a_dense_order():
    sample, consensus = synthetic_sample()
    now = T0 + HOUR
    primaries = fingerprints(sample.primary_guards())
    assert primaries == fingerprints(sample.guards[:3])
    for guard in sample.primary_guards():
        sample.note_failure(guard.fingerprint, now)
    choice = sample.pick(now)                                          # the 4th sampled guard, pending
    assert choice.guard is sample.guards[3] and choice.guard.is_pending
    assert sample.succeeded(choice, now + 5) is True                   # confirmed: now primary
    fourth = sample.guards[3]
    assert fourth.confirmed_idx == 0 and now - 12 * DAY <= fourth.confirmed_on <= now + 5
    assert not fourth.is_pending and fourth.reachable is Reachability.YES
    # Confirmed guards come first; the rest keep their primary place (in sample order).
    assert fingerprints(sample.primary_guards()) == [primaries[0], primaries[1], fourth.fingerprint]
    sample.note_success(sample.guards[7].fingerprint, now + 10)
    assert sample.guards[7].confirmed_idx == 1
    assert fingerprints(sample.primary_guards()) == [primaries[0], fourth.fingerprint,
                                                     sample.guards[7].fingerprint]
    assert fingerprints(sample.confirmed_guards()) == [fourth.fingerprint, sample.guards[7].fingerprint]
    # A confirmed guard that leaves the sample: the others close up their indices.
    without = make_consensus([r for r in consensus.relays if r.fingerprint != fourth.fingerprint])
    sample.update_from_consensus(without, now + 20)
    sample.update_from_consensus(without, now + 20 + REMOVE_UNLISTED_GUARDS_AFTER)
    assert fourth.fingerprint not in fingerprints(sample.guards)
    assert sample.guards[6].confirmed_idx == 0


def test_priority_between_guards():
    sample, _ = synthetic_sample()
    a, b, c, d = sample.guards[4:8]
    sample.note_success(b.fingerprint, T0 + 1)
    sample.note_success(a.fingerprint, T0 + 2)
    assert has_higher_priority(b, a) and not has_higher_priority(a, b)       # lower confirmed_idx
    assert has_higher_priority(a, c) and not has_higher_priority(c, a)       # confirmed first
    c.is_pending, c.last_tried = True, T0 + 5
    assert has_higher_priority(c, d) and not has_higher_priority(d, c)       # pending first
    d.is_pending, d.last_tried = True, T0 + 3
    assert has_higher_priority(d, c)                                         # tried earlier
    d.is_pending = c.is_pending = False
    assert not has_higher_priority(c, d) and not has_higher_priority(d, c)   # equal


# ---------------------------------------------------------------- retries (guard-spec 4.5)


def test_retry_schedule():
    # tor get_retry_schedule: each limit is inclusive.
    assert [retry_delay(t, True) for t in (0, 6 * HOUR, 6 * HOUR + 1, 4 * DAY, 4 * DAY + 1, 7 * DAY + 1)] == \
           [10 * MINUTE, 10 * MINUTE, 90 * MINUTE, 90 * MINUTE, 4 * HOUR, 9 * HOUR]
    assert [retry_delay(t, False) for t in (0, 6 * HOUR + 1, 4 * DAY + 1, 7 * DAY + 1)] == \
           [1 * HOUR, 4 * HOUR, 18 * HOUR, 36 * HOUR]


def test_down_primary_is_retried_on_its_schedule():
    sample, _ = synthetic_sample()
    primary = fingerprints(sample.primary_guards())
    now = T0 + HOUR
    assert sample.pick(now).fingerprint == primary[0]
    sample.note_failure(primary[0], now)
    assert sample.pick(now).fingerprint == primary[1]
    assert sample.next_retry_at(primary[0], now) == now + 10 * MINUTE
    assert sample.pick(now + 10 * MINUTE - 1).fingerprint == primary[1]
    assert sample.pick(now + 10 * MINUTE).fingerprint == primary[0]        # due for a retry
    sample.note_failure(primary[0], now + 10 * MINUTE)                      # failed again
    assert sample.pick(now + 15 * MINUTE).fingerprint == primary[1]
    sample.note_success(primary[0], now + 30 * MINUTE)
    assert sample.pick(now + 30 * MINUTE).fingerprint == primary[0]
    assert sample.next_retry_at(primary[0], now + 30 * MINUTE) is None


def test_long_failing_guards_are_retried_less_often():
    sample, _ = synthetic_sample()
    first = sample.primary_guards()[0].fingerprint
    now = T0 + HOUR
    sample.note_failure(first, now)
    tried = now + 7 * HOUR
    assert sample.pick(tried).fingerprint == first                         # retried; it fails again
    sample.note_failure(first, tried)
    assert sample.next_retry_at(first, tried) == tried + 90 * MINUTE
    assert sample.pick(tried + 89 * MINUTE).fingerprint != first
    # A non-primary guard waits an hour, not ten minutes.
    other = sample.guards[10].fingerprint
    sample.note_failure(other, now)
    assert sample.next_retry_at(other, now + 11 * MINUTE) == now + HOUR


# ---------------------------------------------------------------- choosing (guard-spec 4.6)


def test_non_primary_guards_when_all_primaries_are_down():
    sample, _ = synthetic_sample()
    now = T0 + HOUR
    for guard in sample.primary_guards():
        sample.note_failure(guard.fingerprint, now)
    first = sample.pick(now)
    assert first.guard is sample.guards[3] and first.state is IF_NO_BETTER and first.guard.last_tried == now
    second = sample.pick(now)                                  # the 4th is pending: the next one
    assert second.guard is sample.guards[4] and second.state is IF_NO_BETTER
    refused = sample.pick(now, restriction=lambda guard: guard is not sample.guards[5])
    assert refused.guard is sample.guards[6]
    sample.failed(first, now + 1)
    assert first.state is GuardCircuitState.DEAD and sample.guards[3].is_down and not sample.guards[3].is_pending


def test_confirmed_guard_comes_before_unconfirmed_ones():
    sample, _ = synthetic_sample(params={"guard-n-primary-guards": 1})
    now = T0 + HOUR
    sample.note_success(sample.guards[0].fingerprint, now)           # primary, confirmed
    sample.note_success(sample.guards[9].fingerprint, now)           # confirmed, not primary
    assert sample.primary_guards() == [sample.guards[0]]
    sample.note_failure(sample.guards[0].fingerprint, now + 1)
    choice = sample.pick(now + 1)
    assert choice.guard is sample.guards[9] and choice.state is IF_NO_BETTER
    assert sample.pick(now + 1).guard is sample.guards[1]            # the confirmed one is pending


def test_every_guard_down_is_an_error_and_marks_all_for_retry():
    sample, _ = synthetic_sample(n_relays=5)
    now = T0 + HOUR
    for guard in sample.guards:
        sample.note_failure(guard.fingerprint, now)
    with pytest.raises(NoGuardAvailableError, match="all 5 listed guards are down; the next is due for a "
                                                    "retry in 600 s"):
        sample.pick(now)
    assert all(guard.reachable is Reachability.MAYBE for guard in sample.guards)
    assert sample.pick(now).fingerprint == sample.guards[0].fingerprint


def test_traffic_needs_a_descriptor_and_obeys_the_restriction():
    sample, _ = synthetic_sample(params={"guard-n-primary-guards-to-use": 2})
    now = T0 + HOUR
    primary = sample.primary_guards()
    no_descriptor = {primary[0].fingerprint}
    chosen = Counter(sample.pick(now, has_descriptor=lambda f: f not in no_descriptor).guard for _ in range(100))
    assert set(chosen) == {primary[1], primary[2]}
    choice = sample.pick(now, restriction=lambda guard: guard in primary[2:])
    assert choice.guard is primary[2] and choice.state is USABLE_ON_COMPLETION


@pytest.mark.parametrize("folder, to_use, dir_to_use", [("2022-11-19-safetor", 2, 3), ("2024-05-17-aziz", 2, 2)])
def test_choices_spread_uniformly_over_the_first_usable_primaries(folder, to_use, dir_to_use):
    # guard-n-primary-guards-to-use=2 in these consensuses: a circuit takes either of the first two
    # usable primaries (guard-spec SELECTING), a directory request one of the first dir-guards-to-use.
    consensus = real_consensus(folder)
    sample = GuardSample(rng=random.Random(7))
    now = consensus.valid_after + 1800
    sample.update_from_consensus(consensus, now)
    primaries = fingerprints(sample.primary_guards())
    traffic = Counter(sample.pick(now).fingerprint for _ in range(4000))
    assert set(traffic) == set(primaries[:to_use])
    assert all(abs(count / 4000 - 1 / to_use) < 0.03 for count in traffic.values())
    directory = Counter(sample.directory_guards(now, limit=1)[0] for _ in range(4000))
    assert set(directory) == set(primaries[:dir_to_use])
    assert sample.directory_guards(now)[dir_to_use:] == primaries[dir_to_use:] + fingerprints(sample.guards[3:])
    # A primary that is down (or refused) makes room for the next one.
    sample.note_failure(primaries[0], now)
    assert {sample.pick(now).fingerprint for _ in range(200)} == set(primaries[1:3])
    refused = primaries[1]
    assert {sample.pick(now, restriction=lambda g: g.fingerprint != refused).fingerprint
            for _ in range(50)} == {primaries[2]}


# ---------------------------------------------------------------- waiting for a better guard (4.8, 4.9)


def all_primaries_fail(sample: GuardSample, now: float) -> None:
    for guard in sample.primary_guards(now):
        sample.note_failure(guard.fingerprint, now)


def one_primary_and_a_confirmed_spare(now: float) -> GuardSample:
    """One primary guard (confirmed, index 0) and a confirmed non-primary one (guards[5],
    index 1); the primary has just failed."""
    sample, _ = synthetic_sample(params={"guard-n-primary-guards": 1})
    sample.note_success(sample.guards[0].fingerprint, now - 60)
    sample.note_success(sample.guards[5].fingerprint, now - 50)
    all_primaries_fail(sample, now)
    return sample


def test_circuit_through_a_primary_is_usable_at_once():
    sample, _ = synthetic_sample()
    choice = sample.pick(T0 + HOUR)
    assert choice.state is USABLE_ON_COMPLETION
    assert sample.succeeded(choice, T0 + HOUR + 2) is True and choice.state is COMPLETE


def test_waiting_circuit_is_upgraded_once_no_better_guard_can_be():
    now = T0 + HOUR
    sample = one_primary_and_a_confirmed_spare(now)
    better = sample.pick(now)                                         # the confirmed spare, pending
    worse = sample.pick(now)                                          # guards[1], pending
    assert (better.guard, worse.guard) == (sample.guards[5], sample.guards[1])
    assert better.state is worse.state is IF_NO_BETTER
    # The worse one is built first: its guard is confirmed (index 2), not primary, so it waits.
    assert sample.succeeded(worse, now + 3) is False and worse.state is WAITING
    assert worse.guard.confirmed_idx == 2
    assert sample.upgrade_waiting([better, worse], now + 3) == []     # better may still succeed
    # NONPRIMARY_GUARD_CONNECT_TIMEOUT (15 s) after better started, it no longer blocks.
    assert sample.upgrade_waiting([better, worse], now + 14) == []
    assert sample.upgrade_waiting([better, worse], now + 15) == [worse] and worse.state is COMPLETE
    # Not while a primary guard might be up again (its retry is due after 10 minutes).
    again = sample.pick(now + 20)
    assert sample.succeeded(again, now + 21) is False
    assert sample.upgrade_waiting([again], now + 10 * MINUTE - 1) == [again]
    later = sample.pick(now + 30)
    sample.succeeded(later, now + 31)
    assert sample.upgrade_waiting([later], now + 10 * MINUTE) == []


def test_better_circuit_completing_blocks_the_waiting_one():
    now = T0 + HOUR
    sample = one_primary_and_a_confirmed_spare(now)
    better, worse = sample.pick(now), sample.pick(now)
    assert sample.succeeded(worse, now + 2) is False
    assert sample.succeeded(better, now + 3) is False
    # Both wait; the better one (confirmed_idx 1 against 2) is upgraded, the other keeps waiting.
    assert sample.upgrade_waiting([better, worse], now + 4) == [better]
    assert better.state is COMPLETE and worse.state is WAITING
    assert sample.upgrade_waiting([better, worse], now + 5) == []      # a complete better circuit blocks it
    # A circuit that does not obey the waiting one's restriction does not block it.
    worse.restriction = lambda guard: guard is not better.guard
    assert sample.upgrade_waiting([better, worse], now + 6) == [worse]


def test_waiting_circuit_expires_after_the_idle_timeout():
    now = T0 + HOUR
    sample = one_primary_and_a_confirmed_spare(now)
    choice = sample.pick(now)
    assert sample.succeeded(choice, now + 2) is False
    assert not sample.should_expire(choice, now + 2 + 10 * MINUTE)
    assert sample.should_expire(choice, now + 3 + 10 * MINUTE)


@pytest.mark.parametrize("offline_for, primaries_retried", [(5 * MINUTE, False), (20 * MINUTE, True)])
def test_success_after_the_internet_was_down_retries_the_primaries(offline_for, primaries_retried):
    # guard-spec 4.8: a non-primary success after nothing worked for INTERNET_LIKELY_DOWN_INTERVAL
    # (10 minutes) means the network was down: the primary guards are marked "maybe" again.
    now = T0 + HOUR
    sample, _ = synthetic_sample(params={"guard-n-primary-guards": 1})
    sample.note_success(sample.guards[0].fingerprint, now - offline_for)
    all_primaries_fail(sample, now)
    choice = sample.pick(now)
    assert sample.succeeded(choice, now + 5) is False                  # its own retry is not due yet
    assert sample.guards[0].is_down is not primaries_retried


def test_a_guard_removed_meanwhile_makes_its_circuit_unusable():
    sample, consensus = synthetic_sample(n_relays=40)
    choice = sample.pick(T0 + HOUR)
    gone = choice.fingerprint
    without = make_consensus([r for r in consensus.relays if r.fingerprint != gone])
    sample.update_from_consensus(without, T0 + HOUR)
    sample.update_from_consensus(without, T0 + HOUR + REMOVE_UNLISTED_GUARDS_AFTER)
    assert sample.succeeded(choice, T0 + HOUR + REMOVE_UNLISTED_GUARDS_AFTER) is False
    assert choice.state is GuardCircuitState.DEAD


# ---------------------------------------------------------------- persistence


def durable(sample: GuardSample):
    return [(g.fingerprint, g.nickname, g.added_at, g.listed, g.unlisted_since, g.confirmed_on, g.confirmed_idx)
            for g in sample.guards]


def test_round_trip_through_json():
    sample, consensus = synthetic_sample()
    first = sample.guards[0].fingerprint
    sample.note_success(sample.guards[6].fingerprint, T0 + 10)
    remaining = [relay for relay in consensus.relays if relay.fingerprint != first]
    sample.update_from_consensus(make_consensus(remaining), T0 + HOUR)
    sample.note_failure(sample.guards[1].fingerprint, T0 + HOUR)
    assert sample.dirty
    restored = GuardSample.from_dict(json.loads(json.dumps(sample.to_dict())), rng=random.Random(1))
    assert durable(restored) == durable(sample)
    assert restored.guards[0].listed is False and restored.guards[6].confirmed_idx == 0
    # Reachability is not persisted: after a restart every guard is worth a try.
    assert all(g.reachable is Reachability.MAYBE and g.failing_since is None for g in restored.guards)
    restored.update_from_consensus(make_consensus(remaining), T0 + 2 * HOUR)
    assert fingerprints(restored.primary_guards()) == fingerprints(sample.primary_guards())
    assert not GuardSample.from_dict(sample.to_dict()).dirty


def test_version_1_state_is_read_and_unknown_keys_are_kept():
    old = {"version": 1, "guards": [
        {"fingerprint": fp(1), "nickname": "guard1", "added_at": T0 - DAY, "listed": True, "unlisted_since": None},
        {"fingerprint": fp(2), "nickname": "guard2", "added_at": T0 - DAY, "listed": False,
         "unlisted_since": T0 - HOUR, "pb_use_attempts": 3.5}]}
    sample = GuardSample.from_dict(old)
    assert durable(sample) == [(fp(1), "guard1", T0 - DAY, True, None, None, None),
                               (fp(2), "guard2", T0 - DAY, False, T0 - HOUR, None, None)]
    saved = sample.to_dict()
    assert saved["version"] == 2 and saved["guards"][1]["pb_use_attempts"] == 3.5
    assert saved["guards"][0]["confirmed_idx"] is None


@pytest.mark.parametrize("state, reason", [
    ([], "must be a dict"),
    ({"version": 3, "guards": []}, "version"),
    ({"version": 2}, "'guards' list"),
    ({"version": 2, "guards": ["x"]}, "not a dict"),
    ({"version": 2, "guards": [{"fingerprint": "abc", "added_at": 1}]}, "bad fingerprint"),
    ({"version": 2, "guards": [{"fingerprint": "A" * 40, "added_at": "yesterday"}]}, "bad added_at"),
    ({"version": 2, "guards": [{"fingerprint": "A" * 40, "added_at": 1, "listed": "yes"}]}, "listed"),
    ({"version": 2, "guards": [{"fingerprint": "A" * 40, "added_at": 1}] * 2}, "twice"),
    ({"version": 2, "guards": [{"fingerprint": "A" * 40, "added_at": float("nan")}]}, "bad added_at"),
    ({"version": 2, "guards": [{"fingerprint": "A" * 40, "added_at": 10 ** 400}]}, "bad added_at"),
    ({"version": 2, "guards": [{"fingerprint": "A" * 40, "added_at": 10 ** 5000}]}, "too long to show"),
    ({"version": 2, "guards": [{"fingerprint": "A" * 40, "added_at": 1, "confirmed_on": 1}]}, "both"),
    ({"version": 2, "guards": [{"fingerprint": "A" * 40, "added_at": 1, "confirmed_on": 1,
                                "confirmed_idx": -1}]}, "bad confirmed_idx"),
])
def test_malformed_state_is_rejected(state, reason):
    with pytest.raises(GuardStateError, match=reason):
        GuardSample.from_dict(state)


# ---------------------------------------------------------------- consensus parameters


def test_guard_params_from_the_real_consensuses():
    # 2017 has no guard-* parameter (its NumEntryGuards=1 is the obsolete one tor no longer reads).
    assert GuardParams.from_consensus(real_consensus("2017-03-10-bitnym")) == GuardParams()
    assert GuardParams.from_consensus(real_consensus("2022-11-19-safetor")) == GuardParams(
        n_primary_guards_to_use=2, n_primary_dir_guards_to_use=3)
    assert GuardParams.from_consensus(real_consensus("2024-05-17-aziz")) == GuardParams(
        n_primary_guards_to_use=2, n_primary_dir_guards_to_use=2)


def test_guard_params_defaults_and_bounds_are_tors():
    defaults = GuardParams.from_consensus(make_consensus([]))
    assert defaults == GuardParams(
        lifetime=120 * DAY, confirmed_min_lifetime=60 * DAY, internet_likely_down_interval=600,
        max_sample_size=60, max_sample_threshold=0.20, min_filtered_sample_size=20, n_primary_guards=3,
        n_primary_guards_to_use=1, n_primary_dir_guards_to_use=3, nonprimary_guard_connect_timeout=15,
        nonprimary_guard_idle_timeout=600, remove_unlisted_guards_after=20 * DAY)
    low = {name: -5 for name in (
        "guard-lifetime-days", "guard-confirmed-min-lifetime-days", "guard-internet-likely-down-interval",
        "guard-max-sample-size", "guard-max-sample-threshold-percent", "guard-min-filtered-sample-size",
        "guard-n-primary-guards", "guard-n-primary-guards-to-use", "guard-n-primary-dir-guards-to-use",
        "guard-nonprimary-guard-connect-timeout", "guard-nonprimary-guard-idle-timeout",
        "guard-remove-unlisted-guards-after-days")}
    assert GuardParams.from_consensus(make_consensus([], low)) == GuardParams(
        lifetime=DAY, confirmed_min_lifetime=DAY, internet_likely_down_interval=1, max_sample_size=1,
        max_sample_threshold=0.01, min_filtered_sample_size=1, n_primary_guards=1, n_primary_guards_to_use=1,
        n_primary_dir_guards_to_use=1, nonprimary_guard_connect_timeout=1, nonprimary_guard_idle_timeout=1,
        remove_unlisted_guards_after=DAY)
    high = {name: 2**31 - 1 for name in low}
    params = GuardParams.from_consensus(make_consensus([], high))
    assert (params.lifetime, params.confirmed_min_lifetime, params.remove_unlisted_guards_after) == (3650 * DAY,) * 3
    assert params.max_sample_threshold == 1.0 and params.n_primary_guards == 2**31 - 1


def test_sample_follows_the_consensus_parameters():
    params = {"guard-min-filtered-sample-size": 7, "guard-n-primary-guards": 2,
              "guard-remove-unlisted-guards-after-days": 2}
    sample, consensus = synthetic_sample(params=params)
    assert len(sample.guards) == 7 and len(sample.primary_guards()) == 2
    assert sample.primaries_to_use(GuardUsage.TRAFFIC) == 1 and sample.primaries_needing_descriptors() == 2
    gone = sample.guards[0].fingerprint
    without = make_consensus([r for r in consensus.relays if r.fingerprint != gone], params)
    sample.update_from_consensus(without, T0 + HOUR)
    assert gone in fingerprints(sample.guards)
    sample.update_from_consensus(without, T0 + HOUR + 2 * DAY)
    assert gone not in fingerprints(sample.guards)
