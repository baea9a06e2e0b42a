"""Guard sample: drawing, persistence, primary guards, retries and replacement."""

from __future__ import annotations

import dataclasses
import functools
import json
import random
from collections import Counter
from types import MappingProxyType

import pytest

from oppy.directory.documents import Consensus, RelayRecord, parse_consensus
from oppy.path.guards import (
    GUARD_SET_FLAGS,
    MIN_FILTERED_SAMPLE,
    REMOVE_UNLISTED_GUARDS_AFTER,
    GuardParams,
    GuardSample,
    GuardStateError,
    GuardUsage,
    NoGuardAvailableError,
    retry_delay,
)

from tests.support.testdata import REAL_DIRECTORY

MINUTE, HOUR, DAY = 60, 3600, 86400


@functools.cache
def real_consensus() -> Consensus:
    return parse_consensus((REAL_DIRECTORY / "2017-03-10-bitnym" / "cached-microdesc-consensus").read_bytes())


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


def synthetic_sample(n_relays: int = 30, seed: int = 1) -> tuple[GuardSample, Consensus]:
    consensus = make_consensus([make_relay(i) for i in range(1, n_relays + 1)])
    sample = GuardSample()
    sample.update_from_consensus(consensus, 1000.0, random.Random(seed))
    return sample, consensus


# ---------------------------------------------------------------- drawing


def test_sample_from_real_consensus():
    consensus = real_consensus()
    sample = GuardSample()
    added = sample.update_from_consensus(consensus, consensus.valid_after, random.Random(4))
    assert len(added) == len(sample.guards) == MIN_FILTERED_SAMPLE == len(set(added))
    for guard in sample.guards:
        relay = consensus.relay_by_fingerprint(guard.fingerprint)
        assert GUARD_SET_FLAGS <= relay.flags and guard.nickname == relay.nickname
    again = GuardSample()
    again.update_from_consensus(consensus, consensus.valid_after, random.Random(4))
    assert [g.fingerprint for g in again.guards] == added              # deterministic with a seed
    # A second update with the same consensus changes nothing.
    assert sample.update_from_consensus(consensus, consensus.valid_after + HOUR, random.Random(5)) == []


def test_draws_follow_guard_weights():
    # One heavy guard among light ones is almost always sampled first; a zero-weight one never.
    relays = [make_relay(1, bandwidth=1_000_000)] + [make_relay(i, bandwidth=1) for i in range(2, 12)]
    relays.append(make_relay(12, bandwidth=0))
    consensus = make_consensus(relays, {"guard-min-filtered-sample-size": 5})
    firsts = []
    for seed in range(200):
        sample = GuardSample()
        sample.update_from_consensus(consensus, 0.0, random.Random(seed))
        firsts.append(sample.guards[0].fingerprint)
        assert fp(12) not in {g.fingerprint for g in sample.guards}
    assert firsts.count(fp(1)) >= 198


def test_only_relays_of_the_guard_set_are_sampled():
    # guard-spec 4.0 {GUARDS}: Guard, Stable, Fast, V2Dir (and Valid, tor node_is_possible_guard).
    relays = [make_relay(1), make_relay(2, "Running Valid Fast Stable V2Dir"),
              make_relay(3, GUARD_FLAGS + " MiddleOnly"), make_relay(4, "Guard Valid Stable Fast V2Dir"),
              make_relay(5), make_relay(6, GUARD_FLAGS.replace(" Stable", "")),
              make_relay(7, GUARD_FLAGS.replace(" Fast", "")), make_relay(8, GUARD_FLAGS.replace(" V2Dir", "")),
              make_relay(9, GUARD_FLAGS.replace(" Valid", ""))]
    sample = GuardSample()
    sample.update_from_consensus(make_consensus(relays), 0.0, random.Random(1))
    assert sorted(g.fingerprint for g in sample.guards) == [fp(1), fp(5)]


def test_real_sample_holds_only_relays_tor_would_sample_2017():
    # 287 of the 2549 Guard relays of the 2017 consensus lack Stable, Fast or V2Dir; drawn by
    # weight they were about 9% of the primary guards. tor never samples them.
    consensus = real_consensus()
    assert sum(1 for r in consensus.relays if "Guard" in r.flags and not GUARD_SET_FLAGS <= r.flags) == 287
    for seed in range(40):
        sample = GuardSample()
        sample.update_from_consensus(consensus, consensus.valid_after, random.Random(seed))
        assert len(sample.guards) == MIN_FILTERED_SAMPLE
        for guard in sample.guards:
            assert GUARD_SET_FLAGS <= consensus.relay_by_fingerprint(guard.fingerprint).flags


def test_guard_losing_v2dir_becomes_unlisted():
    sample, consensus = synthetic_sample()
    first = sample.primary_guards()[0].fingerprint
    relays = [dataclasses.replace(r, flags=r.flags - {"V2Dir"}) if r.fingerprint == first else r
              for r in consensus.relays]
    sample.update_from_consensus(make_consensus(relays), 2000.0, random.Random(1))
    assert not {g.fingerprint: g for g in sample.guards}[first].listed
    assert sample.primary_guards()[0].fingerprint != first


# ---------------------------------------------------------------- persistence


def test_round_trip_through_json():
    sample, consensus = synthetic_sample()
    first = sample.guards[0].fingerprint
    remaining = [relay for relay in consensus.relays if relay.fingerprint != first]
    sample.update_from_consensus(make_consensus(remaining), 5000.0, random.Random(2))
    sample.mark_down(sample.guards[1].fingerprint, 5000.0)
    restored = GuardSample.from_dict(json.loads(json.dumps(sample.to_dict())))
    durable = lambda s: [(g.fingerprint, g.nickname, g.added_at, g.listed, g.unlisted_since)  # noqa: E731
                         for g in s.guards]
    assert durable(restored) == durable(sample)
    assert restored.guards[0].listed is False and restored.guards[0].unlisted_since == 5000.0
    # Reachability is not persisted: after a restart every guard is worth a try.
    assert all(g.failing_since is None for g in restored.guards)
    assert restored.primary_guards()[0].fingerprint == sample.primary_guards()[0].fingerprint


@pytest.mark.parametrize("state, reason", [
    ([], "must be a dict"),
    ({"version": 2, "guards": []}, "version"),
    ({"version": 1}, "'guards' list"),
    ({"version": 1, "guards": ["x"]}, "not a dict"),
    ({"version": 1, "guards": [{"fingerprint": "abc", "added_at": 1}]}, "bad fingerprint"),
    ({"version": 1, "guards": [{"fingerprint": "A" * 40, "added_at": "yesterday"}]}, "bad added_at"),
    ({"version": 1, "guards": [{"fingerprint": "A" * 40, "added_at": 1, "listed": "yes"}]}, "listed"),
    ({"version": 1, "guards": [{"fingerprint": "A" * 40, "added_at": 1}] * 2}, "twice"),
    ({"version": 1, "guards": [{"fingerprint": "A" * 40, "added_at": float("nan")}]}, "bad added_at"),
])
def test_malformed_state_is_rejected(state, reason):
    with pytest.raises(GuardStateError, match=reason):
        GuardSample.from_dict(state)


# ---------------------------------------------------------------- choosing and retrying


def test_retry_schedule():
    assert [retry_delay(t, True) for t in (0, 6 * HOUR - 1, 6 * HOUR, 4 * DAY, 7 * DAY, 100 * DAY)] == \
           [10 * MINUTE, 10 * MINUTE, 90 * MINUTE, 4 * HOUR, 9 * HOUR, 9 * HOUR]
    assert [retry_delay(t, False) for t in (0, 6 * HOUR, 4 * DAY, 7 * DAY)] == \
           [1 * HOUR, 4 * HOUR, 18 * HOUR, 36 * HOUR]


def test_first_reachable_primary_is_used_and_retried():
    sample, _ = synthetic_sample()
    primary = [g.fingerprint for g in sample.primary_guards()]
    assert len(primary) == 3 and primary == [g.fingerprint for g in sample.guards[:3]]
    now = 10_000.0
    assert sample.choose(now) == primary[0]
    sample.mark_down(primary[0], now)
    assert sample.choose(now) == primary[1]
    assert sample.next_retry_at(primary[0]) == now + 10 * MINUTE
    assert sample.choose(now + 10 * MINUTE - 1) == primary[1]
    assert sample.choose(now + 10 * MINUTE) == primary[0]          # due for a retry
    sample.mark_down(primary[0], now + 10 * MINUTE)                # failed again
    assert sample.choose(now + 15 * MINUTE) == primary[1]
    sample.mark_up(primary[0], now + 20 * MINUTE)
    assert sample.choose(now + 20 * MINUTE) == primary[0]
    assert sample.next_retry_at(primary[0]) is None


def test_long_failing_primary_retried_every_90_minutes():
    sample, _ = synthetic_sample()
    first = sample.primary_guards()[0].fingerprint
    start = 0.0
    sample.mark_down(first, start)
    sample.mark_down(first, start + 7 * HOUR)          # still failing after 7 h
    assert sample.next_retry_at(first) == start + 7 * HOUR + 90 * MINUTE
    assert sample.choose(start + 7 * HOUR + 89 * MINUTE) != first


def test_non_primary_guards_when_all_primaries_are_down():
    sample, _ = synthetic_sample()
    now = 50_000.0
    for guard in sample.primary_guards():
        sample.mark_down(guard.fingerprint, now)
    assert sample.choose(now) == sample.guards[3].fingerprint
    assert sample.candidates(now)[:2] == [sample.guards[3].fingerprint, sample.guards[4].fingerprint]
    assert sample.choose(now, accept=lambda f: f != sample.guards[3].fingerprint) == sample.guards[4].fingerprint
    for guard in sample.guards:
        sample.mark_down(guard.fingerprint, now)
    with pytest.raises(NoGuardAvailableError, match="next retry in 600 s"):
        sample.choose(now)
    with pytest.raises(KeyError):
        sample.mark_down("FF" * 20, now)


# ---------------------------------------------------------------- replacement rules


def test_only_unlisted_or_flagless_guards_are_replaced():
    # 300 guards: the sample may grow to 60 (20% of the guards), room for replacements.
    sample, consensus = synthetic_sample(n_relays=300)
    before = [g.fingerprint for g in sample.guards]
    primary = [g.fingerprint for g in sample.primary_guards()]
    gone, demoted = primary[0], primary[2]
    relays = []
    for relay in consensus.relays:
        if relay.fingerprint == gone:
            continue                                                  # left the consensus
        if relay.fingerprint == demoted:
            relay = dataclasses.replace(relay, flags=frozenset({"Running", "Valid", "Fast"}))
        relays.append(relay)
    now = 2000.0
    added = sample.update_from_consensus(make_consensus(relays), now, random.Random(9))
    assert len(added) == 2 and not set(added) & set(before)
    assert [g.fingerprint for g in sample.guards][:len(before)] == before     # order kept
    assert {g.fingerprint for g in sample.guards if not g.listed} == {gone, demoted}
    assert sum(1 for g in sample.guards if g.listed) == MIN_FILTERED_SAMPLE
    listed_before = [f for f in before if f not in (gone, demoted)]
    assert [g.fingerprint for g in sample.primary_guards()] == listed_before[:3]
    assert sample.choose(now) == primary[1]

    # The guard comes back within 20 days: it regains its place (and primary status).
    sample.update_from_consensus(consensus, now + DAY, random.Random(9))
    assert sample.primary_guards()[0].fingerprint == gone
    assert sum(1 for g in sample.guards if g.listed) == MIN_FILTERED_SAMPLE + 2

    # Unlisted for more than 20 days: dropped from the sample.
    sample.update_from_consensus(make_consensus(relays), now + 2 * DAY, random.Random(9))
    sample.update_from_consensus(make_consensus(relays), now + 2 * DAY + REMOVE_UNLISTED_GUARDS_AFTER,
                                 random.Random(9))
    assert gone not in {g.fingerprint for g in sample.guards}
    assert demoted not in {g.fingerprint for g in sample.guards}


def test_full_sample_waits_for_unlisted_guards_to_expire():
    # 40 guards: the sample is capped at MIN_FILTERED_SAMPLE (20% of 40 is less), so an
    # unlisted guard is not replaced until it is dropped (guard-spec SAMPLED).
    sample, consensus = synthetic_sample(n_relays=40)
    gone = sample.primary_guards()[0].fingerprint
    without = make_consensus([r for r in consensus.relays if r.fingerprint != gone])
    assert sample.update_from_consensus(without, 2000.0, random.Random(1)) == []
    assert len(sample.guards) == MIN_FILTERED_SAMPLE and sample.choose(2000.0) != gone
    added = sample.update_from_consensus(without, 2000.0 + REMOVE_UNLISTED_GUARDS_AFTER, random.Random(1))
    assert len(added) == 1 and gone not in {g.fingerprint for g in sample.guards}


def test_small_network_samples_every_guard():
    sample, consensus = synthetic_sample(n_relays=5)
    assert len(sample.guards) == 5
    assert sample.update_from_consensus(consensus, 2000.0, random.Random(3)) == []


# ---------------------------------------------------------------- consensus parameters


@functools.cache
def real_consensus_of(folder: str) -> Consensus:
    return parse_consensus((REAL_DIRECTORY / folder / "cached-microdesc-consensus").read_bytes())


def test_guard_params_from_the_real_consensuses():
    # 2017 has no guard-* parameter (its NumEntryGuards=1 is the obsolete one tor no longer reads).
    assert GuardParams.from_consensus(real_consensus_of("2017-03-10-bitnym")) == GuardParams()
    assert GuardParams.from_consensus(real_consensus_of("2022-11-19-safetor")) == GuardParams(
        n_primary_guards_to_use=2, n_primary_dir_guards_to_use=3)
    assert GuardParams.from_consensus(real_consensus_of("2024-05-17-aziz")) == GuardParams(
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
    consensus = make_consensus([make_relay(i) for i in range(1, 31)], params)
    sample = GuardSample()
    sample.update_from_consensus(consensus, 1000.0, random.Random(1))
    assert len(sample.guards) == 7 and len(sample.primary_guards()) == 2
    gone = sample.guards[0].fingerprint
    without = make_consensus([r for r in consensus.relays if r.fingerprint != gone], params)
    sample.update_from_consensus(without, 2000.0, random.Random(1))
    assert gone in {g.fingerprint for g in sample.guards}
    sample.update_from_consensus(without, 2000.0 + 2 * DAY, random.Random(1))
    assert gone not in {g.fingerprint for g in sample.guards}


@pytest.mark.parametrize("folder, to_use, dir_to_use", [("2022-11-19-safetor", 2, 3), ("2024-05-17-aziz", 2, 2)])
def test_choices_spread_uniformly_over_the_first_usable_primaries(folder, to_use, dir_to_use):
    # guard-n-primary-guards-to-use=2 in these consensuses: a circuit takes either of the first two
    # usable primaries (guard-spec SELECTING), a directory request one of the first dir-guards-to-use.
    consensus = real_consensus_of(folder)
    sample = GuardSample()
    now = consensus.valid_after + 1800
    sample.update_from_consensus(consensus, now, random.Random(7))
    primaries = [g.fingerprint for g in sample.primary_guards()]
    rng = random.Random(1)
    traffic = Counter(sample.choose(now, rng=rng) for _ in range(4000))
    assert set(traffic) == set(primaries[:to_use])
    assert all(abs(count / 4000 - 1 / to_use) < 0.03 for count in traffic.values())
    directory = Counter(sample.choose(now, rng=rng, usage=GuardUsage.DIRECTORY) for _ in range(4000))
    assert set(directory) == set(primaries[:dir_to_use])
    # A primary that is down (or refused by the caller) makes room for the next one.
    sample.mark_down(primaries[0], now)
    assert set(sample.choose(now, rng=rng) for _ in range(200)) == set(primaries[1:3])
    refuse = primaries[1]
    assert set(sample.choose(now, lambda f: f != refuse, rng=rng) for _ in range(200)) == {primaries[2]}
    # Without an rng the choice is the first usable one.
    assert sample.choose(now) == primaries[1]
