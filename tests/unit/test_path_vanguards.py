"""Vanguards-lite (proposal 333, tor entrynodes.c, circuitbuild.c): the layer-2 guard set, its
parameters, lifetimes, replacement and persistence, and onion-service paths. Real directory documents
with "now" pinned 30 minutes after valid-after, seeded rngs; the statistical bounds hold with a wide
margin for these seeds and fail for the wrong distribution (see each test)."""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from types import MappingProxyType

import pytest

from oppy.config import config_from_torrc_text
from oppy.path.guards import GuardCircuitState, GuardSample
from oppy.path.selection import PathError, PathSelector
from oppy.path.vanguards import (
    DEFAULT_LAYER2_LIFETIME_MAX,
    DEFAULT_LAYER2_LIFETIME_MIN,
    LAYER2_FLAGS,
    Layer2Guard,
    Layer2Removal,
    NoLayer2GuardError,
    OnionServicePurpose,
    VanguardsLite,
    VanguardsLiteParams,
    VanguardsStateError,
    choose_onion_service_path,
    vanguards_lite_enabled,
)

from tests.unit.test_path_selection import make_consensus, make_microdesc, make_relay, real_selector

DAY = 86400
#: Chi-square critical value at p = 0.001 for 10 degrees of freedom.
CHI2_CRITICAL_P001_DF10 = 29.59
Y2017 = "2017-03-10-bitnym"
Y2022 = "2022-11-19-safetor"


def pinned_now(selector: PathSelector) -> float:
    return float(selector.consensus.valid_after + 1800)


def with_consensus(selector: PathSelector, *, params=None, relays=None) -> PathSelector:
    """The same directory with other consensus parameters or entries."""
    changes = {}
    if params is not None:
        changes["params"] = MappingProxyType(params)
    if relays is not None:
        changes["relays"] = tuple(relays)
    consensus = dataclasses.replace(selector.consensus, **changes)
    microdescs = {node.relay.microdesc_digest: node.microdesc for node in selector.nodes}
    return PathSelector(consensus, microdescs)


def with_flags(selector: PathSelector, fingerprint: str, flags: frozenset[str]) -> PathSelector:
    relays = [dataclasses.replace(relay, flags=flags) if relay.fingerprint == fingerprint else relay
              for relay in selector.consensus.relays]
    return with_consensus(selector, relays=relays)


def fresh_set(selector: PathSelector, seed: int, now: float | None = None) -> VanguardsLite:
    vanguards = VanguardsLite(rng=random.Random(seed))
    vanguards.update_from_consensus(selector, pinned_now(selector) if now is None else now)
    return vanguards


def fingerprints(vanguards: VanguardsLite) -> list[str]:
    return [guard.fingerprint for guard in vanguards.guards]


# ---------------------------------------------------------------- the set


def test_set_from_real_consensus_2017():
    selector = real_selector(Y2017)
    now = pinned_now(selector)
    vanguards = VanguardsLite(rng=random.Random(1))
    changes = vanguards.update_from_consensus(selector, now)
    assert list(changes.added) == fingerprints(vanguards) and changes.removed == ()
    assert len(vanguards.guards) == 4 == len(set(fingerprints(vanguards)))
    for guard in vanguards.guards:
        node = selector.node(guard.fingerprint)
        assert node is not None                                  # Running, Valid, with a microdescriptor
        assert LAYER2_FLAGS <= node.flags
        assert now + DAY <= guard.expires_at < now + 12 * DAY
    assert vanguards.dirty
    vanguards.mark_saved()
    assert not vanguards.update_from_consensus(selector, now + 3600)   # nothing expired: no change
    assert not vanguards.dirty
    assert fingerprints(fresh_set(selector, 1)) == fingerprints(vanguards)   # deterministic with a seed


def test_members_never_lack_stable_or_fast_nor_are_exits_2017():
    # Wme = Wmd = 0 in this consensus: with middle weights an exit can never be drawn.
    selector = real_selector(Y2017)
    drawn = Counter()
    for seed in range(300):
        drawn.update(fingerprints(fresh_set(selector, seed)))
    nodes = [selector.node(fingerprint) for fingerprint in drawn]
    assert all(LAYER2_FLAGS <= node.flags for node in nodes)
    assert not any("Exit" in node.flags and "BadExit" not in node.flags for node in nodes)
    assert len(drawn) > 300                                      # spread over many relays
    eligible_without_stable = [n for n in selector.nodes if "Fast" in n.flags and "Stable" not in n.flags]
    assert len(eligible_without_stable) > 600                    # so "never" above means something


def test_draws_follow_middle_weights_2022():
    # In this consensus the Guard-flagged relays hold 10% of the middle weight of the Stable+Fast
    # relays, 74% of their guard weight and 67% of their number: the first draw of each set must
    # land on a guard about 10% of the time.
    selector = real_selector(Y2022)
    guard_share = sum("Guard" in selector.node(fresh_set(selector, seed).guards[0].fingerprint).flags
                      for seed in range(4000)) / 4000
    assert abs(guard_share - 0.101) < 0.02


def test_family_and_subnet_do_not_keep_relays_out_of_the_set():
    # tor excludes only the relays already in the set, not their families or subnets.
    relays = [make_relay(i, "Running Valid Fast Stable", 1000, f"10.1.0.{i}") for i in range(1, 7)]
    microdescs = {f"md{i}": make_microdesc(i, family=[j for j in range(1, 7) if j != i]) for i in range(1, 7)}
    selector = PathSelector(make_consensus(relays), microdescs)
    vanguards = fresh_set(selector, 3, now=1000.0)
    assert len(vanguards.guards) == 4
    first, second = (selector.node(fingerprint) for fingerprint in fingerprints(vanguards)[:2])
    assert selector.in_same_family(first, second) and first.same_subnet(second)


def test_only_stable_fast_relays_with_microdescriptors_join():
    relays = [make_relay(1, "Running Valid Fast Stable"), make_relay(2, "Running Valid Fast"),
              make_relay(3, "Running Valid Stable"), make_relay(4, "Running Fast Stable"),
              make_relay(5, "Running Valid Fast Stable"), make_relay(6, "Running Valid Fast Stable MiddleOnly")]
    microdescs = {f"md{i}": make_microdesc(i) for i in (1, 2, 3, 4, 6)}       # relay 5: none
    selector = PathSelector(make_consensus(relays), microdescs)
    vanguards = fresh_set(selector, 1, now=1000.0)
    # Only two relays qualify (MiddleOnly relays may be middles, so layer-2 guards, in tor);
    # the two other places stay empty: tor's fallback would take a relay it drops at once.
    assert sorted(fingerprints(vanguards)) == sorted(("01" * 20, "06" * 20))
    assert vanguards.maintain(selector, 2000.0) == vanguards.maintain(selector, 3000.0)
    empty = PathSelector(make_consensus(relays[1:4]), microdescs)
    with pytest.raises(NoLayer2GuardError, match="set is empty"):
        fresh_set(empty, 1, now=1000.0).choose_layer2(empty, 1000.0)


# ---------------------------------------------------------------- parameters


@pytest.mark.parametrize("params, expected", [
    ({}, VanguardsLiteParams(4, DAY, 12 * DAY, True)),
    ({"guard-hs-l2-number": 7, "guard-hs-l2-lifetime-min": 60, "guard-hs-l2-lifetime-max": 120,
      "vanguards-lite-enabled": 0}, VanguardsLiteParams(7, 60, 120, False)),
    ({"guard-hs-l2-number": 0, "guard-hs-l2-lifetime-min": 0, "guard-hs-l2-lifetime-max": -5,
      "vanguards-lite-enabled": -1}, VanguardsLiteParams(1, 1, 1, False)),
    ({"guard-hs-l2-number": 20, "guard-hs-l2-lifetime-min": 2**31 - 1, "guard-hs-l2-lifetime-max": 2**31 - 1,
      "vanguards-lite-enabled": 9}, VanguardsLiteParams(19, 2**31 - 1, 2**31 - 1, True)),
])
def test_params_are_clamped_like_tor(params, expected):
    assert VanguardsLiteParams.from_consensus(make_consensus([], params=params)) == expected


@pytest.mark.parametrize("setting, consensus_says, full_vanguards, expected", [
    (None, True, False, True),          # auto: the consensus parameter, on by default
    (None, False, False, False),
    (True, False, False, True),         # 1 overrides the consensus
    (False, True, False, False),        # 0 is final (tor vanguards_lite_is_enabled)
    (None, True, True, False),          # full vanguards replace the lite set
    (True, True, True, False),
])
def test_vanguards_lite_enabled(setting, consensus_says, full_vanguards, expected):
    params = VanguardsLiteParams(enabled=consensus_says)
    assert vanguards_lite_enabled(setting, params, full_vanguards=full_vanguards) is expected


def test_vanguards_lite_enabled_follows_the_option_and_the_consensus():
    config = config_from_torrc_text("VanguardsLiteEnabled auto\n")
    off = VanguardsLiteParams.from_consensus(make_consensus([], params={"vanguards-lite-enabled": 0}))
    assert not vanguards_lite_enabled(config.vanguards_lite_enabled, off)
    assert vanguards_lite_enabled(config_from_torrc_text("VanguardsLiteEnabled 1\n").vanguards_lite_enabled, off)
    default = VanguardsLiteParams.from_consensus(make_consensus([]))
    assert vanguards_lite_enabled(config.vanguards_lite_enabled, default)


def test_set_size_follows_the_parameter_2017():
    selector = real_selector(Y2017)
    now = pinned_now(selector)
    vanguards = fresh_set(with_consensus(selector, params={"guard-hs-l2-number": 19}), 2)
    assert len(vanguards.guards) == 19 == len(set(fingerprints(vanguards)))
    # A lower number does not trim the set (tor): the guards leave as they expire.
    smaller = with_consensus(selector, params={"guard-hs-l2-number": 2})
    assert not vanguards.update_from_consensus(smaller, now + 60)
    assert len(vanguards.guards) == 19
    soonest = min(guard.expires_at for guard in vanguards.guards)
    changes = vanguards.update_from_consensus(smaller, soonest)
    assert len(changes.removed) >= 1 and changes.added == ()


def test_lifetimes_are_uniform_from_one_to_twelve_days_2017():
    # tor get_layer2_hs_guard_lifetime: crypto_rand_int_range(min, max), whole seconds in [min, max).
    selector = real_selector(Y2017)
    now = pinned_now(selector)
    lifetimes = [guard.expires_at - now for seed in range(600) for guard in fresh_set(selector, seed).guards]
    assert len(lifetimes) == 2400
    assert all(DEFAULT_LAYER2_LIFETIME_MIN <= lifetime < DEFAULT_LAYER2_LIFETIME_MAX for lifetime in lifetimes)
    assert all(lifetime == int(lifetime) for lifetime in lifetimes)
    # The mean of a uniform 1..12 days is 6.5 days (the max(X, X) of proposal 333 would give 8.3).
    assert abs(sum(lifetimes) / len(lifetimes) / DAY - 6.5) < 0.25
    buckets = Counter(int((lifetime - DAY) // DAY) for lifetime in lifetimes)
    expected = len(lifetimes) / 11
    chi2 = sum((buckets[day] - expected) ** 2 / expected for day in range(11))
    assert chi2 < CHI2_CRITICAL_P001_DF10


def test_lifetime_is_the_minimum_when_min_is_not_below_max():
    rng = random.Random(1)
    assert {VanguardsLiteParams(4, 500, 500).draw_lifetime(rng) for _ in range(50)} == {500}
    assert {VanguardsLiteParams(4, 900, 100).draw_lifetime(rng) for _ in range(50)} == {900}
    assert {VanguardsLiteParams(4, 10, 12).draw_lifetime(rng) for _ in range(200)} == {10, 11}


# ---------------------------------------------------------------- replacement


def test_expired_guard_is_replaced_at_its_expiry_2017():
    selector = real_selector(Y2017)
    vanguards = fresh_set(selector, 4)
    soonest = min(vanguards.guards, key=lambda guard: guard.expires_at)
    others = [guard.fingerprint for guard in vanguards.guards if guard is not soonest]
    assert not vanguards.maintain(selector, soonest.expires_at - 1)
    changes = vanguards.maintain(selector, soonest.expires_at)       # tor: expire_on_date <= now
    assert changes.removed == ((soonest.fingerprint, Layer2Removal.EXPIRED),)
    assert len(changes.added) == 1 and changes.added[0] not in others
    assert fingerprints(vanguards) == others + list(changes.added)   # the others keep their places
    newest = vanguards.guards[-1]
    assert soonest.expires_at + DAY <= newest.expires_at < soonest.expires_at + 12 * DAY


def test_expired_guard_is_never_chosen_even_before_maintenance_2017():
    selector = real_selector(Y2017)
    vanguards = fresh_set(selector, 4)
    soonest = min(vanguards.guards, key=lambda guard: guard.expires_at)
    late = soonest.expires_at
    assert soonest.fingerprint not in [node.fingerprint for node in vanguards.layer2_candidates(selector, late)]
    assert len(vanguards.layer2_candidates(selector, late)) == 3
    rng = random.Random(9)
    chosen = {vanguards.choose_layer2(selector, late, rng=rng).fingerprint for _ in range(100)}
    assert soonest.fingerprint not in chosen and len(chosen) == 4   # choosing maintained the set first


def test_unlisted_and_unsuitable_guards_are_replaced_2017():
    selector = real_selector(Y2017)
    now = pinned_now(selector)
    vanguards = fresh_set(selector, 5)
    first, second, third, _ = fingerprints(vanguards)
    relays = [relay for relay in selector.consensus.relays if relay.fingerprint != first]
    changes = vanguards.update_from_consensus(with_consensus(selector, relays=relays), now + 60)
    assert changes.removed == ((first, Layer2Removal.UNLISTED),) and len(changes.added) == 1
    for lost, fingerprint in (("Stable", second), ("Fast", third)):
        flags = selector.consensus.relay_by_fingerprint(fingerprint).flags - {lost}
        changes = vanguards.update_from_consensus(with_flags(selector, fingerprint, flags), now + 120)
        assert changes.removed == ((fingerprint, Layer2Removal.UNSUITABLE),) and len(changes.added) == 1
    assert len(vanguards.guards) == 4 and {first, second, third}.isdisjoint(fingerprints(vanguards))


def test_a_guard_not_running_stays_but_is_not_chosen_2017():
    # tor keeps it (only listing, Stable and Fast are checked) and skips it when choosing.
    selector = real_selector(Y2017)
    vanguards = fresh_set(selector, 6)
    down = vanguards.guards[0].fingerprint
    flags = selector.consensus.relay_by_fingerprint(down).flags - {"Running"}
    changed = with_flags(selector, down, flags)
    now = pinned_now(selector) + 60
    assert not vanguards.update_from_consensus(changed, now)
    rng = random.Random(3)
    assert down not in {vanguards.choose_layer2(changed, now, rng=rng).fingerprint for _ in range(200)}


def test_choice_is_uniform_and_never_an_excluded_relay_2017():
    selector = real_selector(Y2017)
    now = pinned_now(selector)
    vanguards = fresh_set(selector, 7)
    rng = random.Random(11)
    counts = Counter(vanguards.choose_layer2(selector, now, rng=rng).fingerprint for _ in range(4000))
    assert set(counts) == set(fingerprints(vanguards))
    assert all(abs(count / 4000 - 0.25) < 0.03 for count in counts.values())   # smartlist_choose, not weighted
    excluded = [selector.node(fingerprint).relay.rsa_id for fingerprint in fingerprints(vanguards)[:3]]
    assert {vanguards.choose_layer2(selector, now, excluded, rng).fingerprint for _ in range(50)} \
        == {fingerprints(vanguards)[3]}
    excluded.append(selector.node(fingerprints(vanguards)[3]).relay.rsa_id)
    with pytest.raises(NoLayer2GuardError, match="already in the path"):
        vanguards.choose_layer2(selector, now, excluded, rng)


def test_purge_draws_a_new_set_2017():
    selector = real_selector(Y2017)
    vanguards = fresh_set(selector, 8)
    before = fingerprints(vanguards)
    vanguards.mark_saved()
    changes = vanguards.purge(selector, pinned_now(selector) + 60)
    assert changes.removed == tuple((fingerprint, Layer2Removal.PURGED) for fingerprint in before)
    assert list(changes.added) == fingerprints(vanguards) and len(changes.added) == 4
    assert fingerprints(vanguards) != before and vanguards.dirty


# ---------------------------------------------------------------- persistence


def test_state_round_trip_2017():
    selector = real_selector(Y2017)
    now = pinned_now(selector)
    vanguards = fresh_set(selector, 9)
    text = json.dumps(vanguards.to_dict())
    restored = VanguardsLite.from_dict(json.loads(text), rng=random.Random(1))
    assert [(g.fingerprint, g.expires_at) for g in restored.guards] == \
        [(g.fingerprint, g.expires_at) for g in vanguards.guards]
    assert not restored.dirty
    assert not restored.update_from_consensus(selector, now + 3600)    # still valid: nothing drawn
    assert json.loads(json.dumps(restored.to_dict())) == json.loads(text)


def test_unknown_keys_are_kept():
    state = {"version": 1, "layer2": [{"fingerprint": "AB" * 20, "expires_at": 5.0, "future": [1, 2]}]}
    assert VanguardsLite.from_dict(state).to_dict() == state


def test_stored_expiry_beyond_the_longest_lifetime_is_brought_back_2017():
    selector = real_selector(Y2017)
    now = pinned_now(selector)
    fingerprint = fresh_set(selector, 1).guards[0].fingerprint
    vanguards = VanguardsLite([Layer2Guard(fingerprint, now + 400 * DAY)], rng=random.Random(2))
    vanguards.update_from_consensus(selector, now)
    assert vanguards.guards[0].fingerprint == fingerprint
    assert vanguards.guards[0].expires_at == now + 12 * DAY
    assert len(vanguards.guards) == 4 and vanguards.dirty


BAD_STATES = [
    ([], "must be a dict"),
    ({"layer2": []}, "unsupported vanguards state version None"),
    ({"version": 2, "layer2": []}, "unsupported vanguards state version 2"),
    ({"version": True, "layer2": []}, "unsupported vanguards state version True"),
    ({"version": 1}, "no 'layer2' list"),
    ({"version": 1, "layer2": {}}, "no 'layer2' list"),
    ({"version": 1, "layer2": ["AB" * 20]}, "#0 is not a dict"),
    ({"version": 1, "layer2": [{"fingerprint": "ab" * 20, "expires_at": 1}]}, "#0 has a bad fingerprint"),
    ({"version": 1, "layer2": [{"fingerprint": "AB" * 19, "expires_at": 1}]}, "#0 has a bad fingerprint"),
    ({"version": 1, "layer2": [{"fingerprint": "AB" * 20}]}, "bad expires_at None"),
    ({"version": 1, "layer2": [{"fingerprint": "AB" * 20, "expires_at": "1"}]}, "bad expires_at '1'"),
    ({"version": 1, "layer2": [{"fingerprint": "AB" * 20, "expires_at": True}]}, "bad expires_at True"),
    ({"version": 1, "layer2": [{"fingerprint": "AB" * 20, "expires_at": float("nan")}]}, "bad expires_at nan"),
    ({"version": 1, "layer2": [{"fingerprint": "AB" * 20, "expires_at": float("inf")}]}, "bad expires_at inf"),
    ({"version": 1, "layer2": [{"fingerprint": "AB" * 20, "expires_at": 10**400}]}, "bad expires_at 1000+\\.\\.\\.$"),
    ({"version": 1, "layer2": [{"fingerprint": "AB" * 20, "expires_at": 10**5000}]}, "an int too long to show"),
    ({"version": 1, "layer2": [{"fingerprint": "F" * 10**5, "expires_at": 1}]}, "fingerprint 'FFF+\\.\\.\\.$"),
    ({"version": 1, "layer2": [{"fingerprint": "AB" * 20, "expires_at": 1},
                               {"fingerprint": "AB" * 20, "expires_at": 2}]}, "appears twice"),
]


@pytest.mark.parametrize("state, reason", BAD_STATES)
def test_malformed_state_is_refused(state, reason):
    with pytest.raises(VanguardsStateError, match=reason):
        VanguardsLite.from_dict(state)


# ---------------------------------------------------------------- onion-service paths


def onion_setup(seed: int = 1) -> tuple[PathSelector, GuardSample, VanguardsLite, float]:
    selector = real_selector(Y2017)
    now = pinned_now(selector)
    sample = GuardSample(rng=random.Random(seed))
    sample.update_from_consensus(selector.consensus, now)
    return selector, sample, fresh_set(selector, seed), now


def rsa_id(fingerprint: str) -> bytes:
    return bytes.fromhex(fingerprint)


def some_target(selector: PathSelector, avoid: set[str]) -> bytes:
    """An HSDir-like relay of the consensus that is none of ``avoid``."""
    return next(node.relay.rsa_id for node in selector.nodes
                if "HSDir" in node.flags and node.fingerprint not in avoid)


@pytest.mark.parametrize("purpose", list(OnionServicePurpose))
def test_paths_for_every_purpose_2017(purpose):
    selector, sample, vanguards, now = onion_setup()
    members = set(fingerprints(vanguards))
    primary = sample.primary_guards(now)[0].fingerprint
    target = some_target(selector, members | {primary}) if purpose.has_target else None
    rng = random.Random(2)
    for _ in range(100):
        path, choice = choose_onion_service_path(selector, sample, vanguards, purpose, now, rng, target)
        assert path.purpose is purpose and choice.guard.fingerprint == path.guard.fingerprint == primary
        assert choice.state is GuardCircuitState.USABLE_ON_COMPLETION
        assert path.layer2.fingerprint in members and path.layer2 is not path.guard
        if purpose.has_target:      # G - L2 - M, then the target (proposal 333 section 1)
            assert path.rendezvous is None and path.hops == (path.guard, path.layer2, path.middle)
            assert target not in {hop.relay.rsa_id for hop in path.hops}
        else:                       # G - L2 - Rend
            assert path.middle is None and path.hops == (path.guard, path.layer2, path.rendezvous)
            assert "MiddleOnly" not in path.rendezvous.flags
        assert path.hops[1] is not path.hops[2]
        assert all("Fast" in hop.flags for hop in path.hops)


def test_guard_may_be_the_target_2017():
    # tor guards_choose_guard: no exit restriction "if we're vanguards", so that an introduction
    # point or HSDir cannot learn the guard from never being it.
    selector, sample, vanguards, now = onion_setup()
    guard = sample.primary_guards(now)[0].fingerprint
    rng = random.Random(3)
    for _ in range(50):
        path, _ = choose_onion_service_path(selector, sample, vanguards, OnionServicePurpose.CLIENT_INTRO, now, rng,
                                            rsa_id(guard))
        assert path.guard.fingerprint == guard
        assert guard not in (path.layer2.fingerprint, path.middle.fingerprint)


def test_no_family_or_subnet_rule_between_the_hops_2017():
    # tor build_vanguard_middle_exclude_list: identities only. Put a family member and a same-/16
    # relay of the guard into the set: each is the second hop about a quarter of the time.
    selector, sample, _, now = onion_setup()
    guard = selector.node(sample.primary_guards(now)[0].fingerprint)
    usable = [node for node in selector.nodes if LAYER2_FLAGS <= node.flags and node is not guard]
    relative = next(node for node in usable if selector.in_same_family(guard, node))
    neighbour = next(node for node in usable if node.same_subnet(guard) and not selector.in_same_family(guard, node))
    assert selector.conflicts(relative, [guard]) and selector.conflicts(neighbour, [guard])  # a general path refuses
    vanguards = VanguardsLite([Layer2Guard(node.fingerprint, now + DAY) for node in (relative, neighbour)],
                              rng=random.Random(4))
    vanguards.update_from_consensus(selector, now)
    assert len(vanguards.guards) == 4
    rng = random.Random(5)
    counts = Counter(choose_onion_service_path(selector, sample, vanguards, OnionServicePurpose.CLIENT_REND, now,
                                               rng)[0].layer2.fingerprint for _ in range(800))
    assert counts[relative.fingerprint] > 150 and counts[neighbour.fingerprint] > 150


def test_target_is_never_the_second_hop_or_the_middle_2017():
    selector, sample, vanguards, now = onion_setup()
    target = fingerprints(vanguards)[0]
    rng = random.Random(6)
    for _ in range(300):
        path, _ = choose_onion_service_path(selector, sample, vanguards, OnionServicePurpose.CLIENT_HSDIR, now, rng,
                                            rsa_id(target))
        assert target not in (path.layer2.fingerprint, path.middle.fingerprint)
        assert path.middle.fingerprint not in (path.guard.fingerprint, path.layer2.fingerprint)


def test_stable_circuits_take_stable_hops_2017():
    selector, sample, vanguards, now = onion_setup()
    rng = random.Random(7)
    paths = [choose_onion_service_path(selector, sample, vanguards, OnionServicePurpose.CLIENT_REND, now, rng)[0]
             for _ in range(300)]
    assert sum("Stable" not in path.rendezvous.flags for path in paths) > 10    # not asked for: some lack it
    target = some_target(selector, set())
    for _ in range(300):
        path, _ = choose_onion_service_path(selector, sample, vanguards, OnionServicePurpose.SERVICE_REND, now, rng,
                                            target, stable=True)
        assert all("Stable" in hop.flags for hop in path.hops)
        path, _ = choose_onion_service_path(selector, sample, vanguards, OnionServicePurpose.CLIENT_REND, now, rng,
                                            stable=True)
        assert "Stable" in path.rendezvous.flags


def test_without_vanguards_the_second_hop_is_any_weighted_middle_2017():
    selector, sample, _, now = onion_setup()
    target = some_target(selector, set())
    rng = random.Random(8)
    paths = [choose_onion_service_path(selector, sample, None, OnionServicePurpose.CLIENT_INTRO, now, rng, target)[0]
             for _ in range(300)]
    assert len({path.layer2.fingerprint for path in paths}) > 150
    for path in paths:
        assert target not in {hop.relay.rsa_id for hop in path.hops}
        assert len({hop.fingerprint for hop in path.hops}) == 3
        assert not any("Exit" in hop.flags and "BadExit" not in hop.flags for hop in path.hops[1:])   # Wme = 0


def small_onion_network(params=None) -> PathSelector:
    """Guards 1-4, a heavy MiddleOnly relay 5, relays 6-8 that may be anything, relay 9 without Valid."""
    guard_flags = "Running Valid Fast Stable Guard V2Dir"
    relays = [make_relay(i, guard_flags, 100, f"10.{i}.0.1") for i in range(1, 5)]
    relays.append(make_relay(5, "Running Valid Fast Stable MiddleOnly", 100000, "10.5.0.1"))
    relays += [make_relay(i, "Running Valid Fast Stable", 1000, f"10.{i}.0.1") for i in range(6, 9)]
    relays.append(make_relay(9, "Running Fast Stable", 1000, "10.9.0.1"))
    return PathSelector(make_consensus(relays, params=params), {f"md{i}": make_microdesc(i) for i in range(1, 10)})


def test_rendezvous_point_is_never_middle_only_but_the_other_hops_may_be():
    # tor CRN_FOR_HS keeps MiddleOnly relays out of the RP, IP and HSDir places only.
    selector = small_onion_network()
    sample = GuardSample(rng=random.Random(1))
    sample.update_from_consensus(selector.consensus, 1000.0)
    vanguards = fresh_set(selector, 1, now=1000.0)
    assert "05" * 20 in fingerprints(vanguards)       # so heavy that it is always drawn
    rng = random.Random(2)
    rendezvous, second = Counter(), Counter()
    for _ in range(300):
        path, _ = choose_onion_service_path(selector, sample, vanguards, OnionServicePurpose.CLIENT_REND, 1000.0, rng)
        rendezvous[path.rendezvous.nickname] += 1
        second[path.layer2.nickname] += 1
    assert "relay5" not in rendezvous and second["relay5"] > 30
    middles = [choose_onion_service_path(selector, sample, None, OnionServicePurpose.CLIENT_INTRO, 1000.0, rng,
                                         bytes([6]) * 20)[0] for _ in range(100)]
    assert sum("relay5" in (path.layer2.nickname, path.middle.nickname) for path in middles) > 90


def test_the_rendezvous_point_is_never_the_guard_but_may_be_another_guard():
    """G - L2 - G cannot be built (relays refuse to extend back to the previous hop): on the private network,
    where the guard is often the heaviest middle too, three such rendezvous circuits in a row had a stream given
    up. Other guards stay rendezvous points."""
    guard_flags = "Running Valid Fast Stable Guard V2Dir"
    relays = [make_relay(i, guard_flags, 3000 if i == 1 else 1000, f"10.{i}.0.1") for i in range(1, 7)]
    selector = PathSelector(make_consensus(relays), {f"md{i}": make_microdesc(i) for i in range(1, 7)})
    sample = GuardSample(rng=random.Random(1))
    sample.update_from_consensus(selector.consensus, 1000.0)
    vanguards = fresh_set(selector, 1, now=1000.0)
    rng = random.Random(2)
    seen = Counter()
    for _ in range(300):
        path, choice = choose_onion_service_path(selector, sample, vanguards, OnionServicePurpose.CLIENT_REND,
                                                 1000.0, rng)
        assert path.rendezvous.fingerprint != path.guard.fingerprint == choice.fingerprint
        assert path.layer2.fingerprint not in (path.guard.fingerprint, path.rendezvous.fingerprint)
        seen[path.rendezvous.fingerprint] += 1
    assert len(seen) >= 4           # every relay but the guard and the vanguards' draws


def test_a_failed_second_hop_releases_the_guard_and_says_why():
    # One layer-2 guard, listed Stable and Fast but not Valid: kept (tor), never usable.
    selector = small_onion_network({"guard-hs-l2-number": 1})
    now = 1000.0
    sample = GuardSample(rng=random.Random(1))
    sample.update_from_consensus(selector.consensus, now)
    for guard in sample.primary_guards(now):
        sample.note_failure(guard.fingerprint, now)
    vanguards = VanguardsLite([Layer2Guard("09" * 20, now + DAY)], rng=random.Random(2))
    vanguards.update_from_consensus(selector, now)
    with pytest.raises(NoLayer2GuardError, match=r"\$0909.* is not running and valid or has no microdescriptor"):
        choose_onion_service_path(selector, sample, vanguards, OnionServicePurpose.CLIENT_INTRO, now,
                                  random.Random(3), bytes([6]) * 20)
    assert not any(guard.is_pending for guard in sample.guards)     # the exploratory guard is free again
    choice = sample.pick(now)
    assert choice.state is GuardCircuitState.USABLE_IF_NO_BETTER_GUARD      # the same one can be tried


@pytest.mark.parametrize("purpose, target, reason", [
    (OnionServicePurpose.CLIENT_REND, bytes(20), "client_rend circuit takes no target"),
    (OnionServicePurpose.CLIENT_INTRO, None, "client_intro circuit needs target"),
    (OnionServicePurpose.SERVICE_HSDIR, b"\x01" * 19, "20-byte RSA identity"),
    (OnionServicePurpose.SERVICE_INTRO, "01" * 20, "20-byte RSA identity"),
])
def test_targets_must_fit_the_purpose(purpose, target, reason):
    selector = small_onion_network()
    sample = GuardSample(rng=random.Random(1))
    with pytest.raises(PathError, match=reason):
        choose_onion_service_path(selector, sample, None, purpose, 1000.0, random.Random(1), target)
