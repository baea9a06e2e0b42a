"""The client descriptor cache with tor's rules (hs_cache.c): expiry at the next time period judged by
the live consensus, revision counters, undecrypted entries kept for a later key, introduction-point
failures kept two minutes. The clock is injected; descriptors are the private network's."""

from __future__ import annotations

import calendar
import dataclasses
import json
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from oppy.hs.address import parse_onion_address
from oppy.hs.cache import INTRO_STATE_MAX_AGE, HsDescriptorCache, IntroFailure
from oppy.hs.descriptor import decode_descriptor
from oppy.hs.keys import blinded_public_key
from oppy.hs.timeperiod import TimePeriod
from oppy.netdoc.documents import parse_consensus_header
from oppy.netdoc.verify import REASONABLY_LIVE_TIME
from tests.support.testdata import REAL_DIRECTORY

DATA = Path(__file__).resolve().parent / "data" / "onion_service"
CAPTURE = json.loads((DATA / "capture.json").read_text())
NOW = calendar.timegm((2026, 12, 5, 17, 50, 16))
IDENTITY = parse_onion_address(CAPTURE["plain"]["address"]).identity_key
ENCODED = (DATA / "plain.desc").read_bytes()
DESCRIPTOR = decode_descriptor(ENCODED, IDENTITY, blinded_public_key(IDENTITY, TimePeriod(3742692, 8, 240)), NOW)
AUTH_IDENTITY = parse_onion_address(CAPTURE["auth"]["address"]).identity_key


def _consensus(valid_after: int):
    """The test network's consensus header moved to ``valid_after`` (20-second votes: 8-minute periods)."""
    header = parse_consensus_header((REAL_DIRECTORY / "testnet-0.4.9.11" / "cached-microdesc-consensus").read_bytes())
    return dataclasses.replace(header, valid_after=valid_after, fresh_until=valid_after + 20,
                               valid_until=valid_after + 60)


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(NOW)
    return clock


def test_a_descriptor_lives_until_the_next_time_period(clock):
    cache = HsDescriptorCache(clock.seconds, testing_network=True)
    consensus = _consensus(calendar.timegm((2026, 12, 5, 17, 50, 0)))
    entry = cache.store(IDENTITY, ENCODED, DESCRIPTOR, consensus)
    # period 3742693 runs from 17:48:00 to 17:56:00 (8 minutes, offset 240 s)
    assert entry.expires_at == calendar.timegm((2026, 12, 5, 17, 56, 0))
    assert cache.lookup(IDENTITY, consensus) is DESCRIPTOR
    assert cache.lookup(IDENTITY, _consensus(entry.expires_at - 20)) is DESCRIPTOR
    later = _consensus(entry.expires_at)
    assert cache.lookup(IDENTITY, later) is None
    assert [gone.identity_key for gone in cache.clean(later)] == [IDENTITY]
    assert len(cache) == 0


def test_without_a_reasonably_live_consensus_everything_has_expired(clock):
    cache = HsDescriptorCache(clock.seconds, testing_network=True)
    consensus = _consensus(calendar.timegm((2026, 12, 5, 17, 50, 0)))
    cache.store(IDENTITY, ENCODED, DESCRIPTOR, consensus)
    assert cache.lookup(IDENTITY, None) is None
    clock.advance(consensus.valid_until + REASONABLY_LIVE_TIME - clock.seconds())
    assert cache.lookup(IDENTITY, consensus) is DESCRIPTOR
    clock.advance(1)
    assert cache.lookup(IDENTITY, consensus) is None
    assert cache.clean(consensus) and len(cache) == 0


def test_a_lower_revision_never_replaces_a_higher_one(clock):
    cache = HsDescriptorCache(clock.seconds, testing_network=True)
    consensus = _consensus(calendar.timegm((2026, 12, 5, 17, 50, 0)))
    cache.store(IDENTITY, ENCODED, DESCRIPTOR, consensus)
    older = dataclasses.replace(DESCRIPTOR, outer=dataclasses.replace(DESCRIPTOR.outer, revision_counter=1))
    assert cache.store(IDENTITY, b"older", older, consensus).descriptor is DESCRIPTOR
    newer = dataclasses.replace(DESCRIPTOR, outer=dataclasses.replace(DESCRIPTOR.outer, revision_counter=2**40))
    assert cache.store(IDENTITY, b"newer", newer, consensus).descriptor is newer
    assert cache.lookup(IDENTITY, consensus) is newer


def test_an_undecrypted_descriptor_is_kept_for_a_key_added_later(clock):
    cache = HsDescriptorCache(clock.seconds, testing_network=True)
    consensus = _consensus(calendar.timegm((2026, 12, 5, 17, 50, 0)))
    auth_encoded = (DATA / "auth.desc").read_bytes()
    cache.store(AUTH_IDENTITY, auth_encoded, None, consensus)
    assert cache.lookup(AUTH_IDENTITY, consensus) is None
    assert cache.lookup_entry(AUTH_IDENTITY, consensus).encoded == auth_encoded
    # either side undecrypted: the new one replaces the old, whatever the revision
    cache.store(IDENTITY, ENCODED, DESCRIPTOR, consensus)
    assert cache.store(IDENTITY, b"needs a key now", None, consensus).descriptor is None
    assert cache.store(IDENTITY, ENCODED, DESCRIPTOR, consensus).descriptor is DESCRIPTOR
    assert cache.remove(AUTH_IDENTITY).encoded == auth_encoded
    assert cache.lookup_entry(AUTH_IDENTITY, consensus) is None


def test_introduction_point_failures_are_remembered_for_two_minutes(clock):
    cache = HsDescriptorCache(clock.seconds)
    auth_key = DESCRIPTOR.introduction_points[0].auth_key
    assert cache.intro_state(IDENTITY, auth_key) is None
    for _ in range(4):
        state = cache.note_intro_failure(IDENTITY, auth_key, IntroFailure.UNREACHABLE)
    assert state.usable and state.unreachable_count == 4
    assert not cache.note_intro_failure(IDENTITY, auth_key, IntroFailure.UNREACHABLE).usable
    other = DESCRIPTOR.introduction_points[1].auth_key
    clock.advance(60)
    assert not cache.note_intro_failure(IDENTITY, other, IntroFailure.TIMEOUT).usable
    assert cache.note_intro_failure(AUTH_IDENTITY, other, IntroFailure.GENERIC).error
    clock.advance(INTRO_STATE_MAX_AGE - 60)
    cache.clean_intro_states()
    assert cache.intro_state(IDENTITY, auth_key) is None
    assert cache.intro_state(IDENTITY, other).timed_out
    clock.advance(60)
    cache.clean_intro_states()
    assert cache.intro_state(IDENTITY, other) is None and cache.intro_state(AUTH_IDENTITY, other) is None


def test_purge_forgets_everything(clock):
    cache = HsDescriptorCache(clock.seconds, testing_network=True)
    consensus = _consensus(calendar.timegm((2026, 12, 5, 17, 50, 0)))
    cache.store(IDENTITY, ENCODED, DESCRIPTOR, consensus)
    cache.note_intro_failure(IDENTITY, bytes(32), IntroFailure.GENERIC)
    cache.purge()
    assert len(cache) == 0 and cache.intro_state(IDENTITY, bytes(32)) is None
