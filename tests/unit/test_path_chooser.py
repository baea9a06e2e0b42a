"""PathChooser: the one place paths are chosen, on the real 2017 directory with "now" pinned."""

from __future__ import annotations

import logging
import random

import pytest

from oppy.netdoc.netdir import NO_CONSENSUS
from oppy.path.chooser import GuardsChanged, PathChooser
from oppy.path.guards import GuardStateError
from oppy.path.selection import NoPathError
from oppy.path.vanguards import OnionServicePurpose
from tests.support.testdata import real_netdir

FOLDER = "2017-03-10-bitnym"


def chooser_2017(seed: int = 2017) -> PathChooser:
    netdir = real_netdir(FOLDER)
    now = netdir.consensus.valid_after + 1800
    chooser = PathChooser(rng=random.Random(seed), clock=lambda: now)
    chooser.set_netdir(netdir)
    return chooser


def test_without_a_netdir_nothing_can_be_chosen():
    chooser = PathChooser()
    assert chooser.netdir is None and chooser.dir_info() is NO_CONSENSUS
    for choose in (lambda: chooser.selector, lambda: chooser.choose_path(443)):
        with pytest.raises(NoPathError, match="no consensus yet"):
            choose()
    assert chooser.directory_targets(3) == [] and not chooser.exit_allows(b"\1" * 20, 80)


def test_a_new_consensus_fills_the_guard_sample_and_the_directory_information_is_enough():
    chooser = chooser_2017()
    assert len(chooser.guards.primary_guards()) == 3
    info = chooser.dir_info()
    assert info.enough and info.status.startswith("We have enough directory information (100% of guards bw")


def test_one_selector_per_netdir_and_subnet_rule():
    chooser = chooser_2017()
    selector = chooser.selector
    assert chooser.prepare(chooser.netdir) is selector and selector.enforce_distinct_subnets
    chooser.enforce_distinct_subnets = False                # SETCONF EnforceDistinctSubnets 0
    assert chooser.selector is not selector and not chooser.selector.enforce_distinct_subnets
    chooser.enforce_distinct_subnets = True
    assert chooser.selector is selector
    chooser.set_netdir(chooser.netdir.with_microdescs(chooser.netdir.microdescs))
    assert chooser.selector is not selector                  # a new NetDir, a new selector


def test_paths_are_relay_targets_of_the_netdir():
    chooser = chooser_2017()
    netdir = chooser.netdir
    primary = chooser.guards.primary_guards()[0]
    for seed in range(20):
        guard, middle, exit_ = chooser.choose_path(443, rng=random.Random(seed))
        assert guard.fingerprint == primary.fingerprint     # 2017: one primary guard in use
        assert [netdir.relay_target(hop.rsa_id) for hop in (guard, middle, exit_)] == [guard, middle, exit_]
        assert chooser.exit_allows(exit_.rsa_id, 443) and all(hop.ntor_onion_key for hop in (guard, middle, exit_))
    guard, _, _ = chooser.choose_path(443, exclude=["$" + primary.fingerprint + "~" + primary.nickname])
    assert guard.fingerprint == chooser.guards.primary_guards()[1].fingerprint


def test_directory_fetches_go_to_directory_guards_then_one_other_cache():
    chooser = chooser_2017()
    targets = chooser.directory_targets(3)
    sampled = {guard.fingerprint for guard in chooser.guards.guards}
    assert len(targets) == 4 and {target.fingerprint for target in targets[:3]} <= sampled
    assert targets[3].rsa_id not in {target.rsa_id for target in targets[:3]}
    assert all("V2Dir" in chooser.netdir.relay_by_id(target.rsa_id).flags for target in targets)
    # The first directory guard is one of the first guard-n-primary-dir-guards-to-use (3) primaries.
    primaries = {guard.fingerprint for guard in chooser.guards.primary_guards()}
    assert {chooser.directory_guards(1)[0].fingerprint for _ in range(60)} == primaries


def test_guard_outcomes_are_announced_with_whether_to_save():
    chooser = chooser_2017()
    events = []
    chooser.add_observer(events.append)
    first, second = chooser.guards.primary_guards()[:2]
    chooser.mark_guard_down(bytes.fromhex(first.fingerprint))
    chooser.mark_guard_up("$" + second.fingerprint)
    assert events[1] == GuardsChanged(needs_saving=True) and second.confirmed_idx == 0 and first.is_down
    middle = next(relay for relay in chooser.netdir.consensus.relays if "Guard" not in relay.flags)
    for not_a_guard in (middle.rsa_id, "nonsense", b"short"):
        chooser.mark_guard_down(not_a_guard)
        chooser.mark_guard_up(not_a_guard)
    assert len(events) == 2


def test_a_circuit_path_comes_with_its_guard_choice_on_which_its_outcome_is_reported():
    """guard-spec 4.7-4.9 through the chooser (the circuit manager's side): the path's guard choice, and each
    outcome reported on it reaches the sample and is announced."""
    chooser = chooser_2017()
    events = []
    chooser.add_observer(events.append)
    path, choice = chooser.choose_circuit_path(443)
    first = chooser.guards.primary_guards()[0]
    assert choice.guard is first and path[0].fingerprint == first.fingerprint
    assert chooser.guard_succeeded(choice) is True and first.confirmed_idx == 0      # a primary: usable at once
    assert events == [GuardsChanged(needs_saving=True)]
    assert chooser.upgrade_waiting([choice]) == [] and not chooser.guard_should_expire(choice)
    _, failing = chooser.choose_circuit_path(443)
    chooser.guard_failed(failing)
    assert failing.guard.is_down and len(events) == 2
    _, other = chooser.choose_circuit_path(443, exclude=[first.fingerprint])
    assert other.guard is not first
    other.guard.is_pending = True
    chooser.guard_cancelled(other)
    assert not other.guard.is_pending and len(events) == 2      # a cancel changes nothing durable


def test_the_guard_sample_is_restored_from_what_it_saved():
    first = chooser_2017(seed=1)
    first.mark_guard_up(bytes.fromhex(first.guards.primary_guards()[1].fingerprint))
    state = first.guards.to_dict()
    second = PathChooser(rng=random.Random(99), clock=first.clock)
    second.restore_guards(state)
    second.set_netdir(first.netdir)
    assert [g.fingerprint for g in second.guards.primary_guards()] == \
        [g.fingerprint for g in first.guards.primary_guards()]
    assert second.guards.confirmed_guards()[0].fingerprint == first.guards.primary_guards()[1].fingerprint
    with pytest.raises(GuardStateError):
        second.restore_guards({"version": 2, "guards": "not a list"})


def test_an_observers_bug_is_logged_and_the_others_still_hear(caplog):
    caplog.set_level(logging.INFO, logger="oppy")
    chooser = chooser_2017()
    events = []
    chooser.add_observer(lambda event: 1 / 0)
    chooser.add_observer(events.append)
    chooser.mark_guard_up(bytes.fromhex(chooser.guards.primary_guards()[0].fingerprint))
    (record,) = [r for r in caplog.records if r.name == "oppy.path.chooser"]
    assert record.levelno == logging.ERROR and record.exc_info[0] is ZeroDivisionError and len(events) == 1


def onion_service_paths(vanguards_lite, count: int = 20):
    netdir = real_netdir(FOLDER)
    now = netdir.consensus.valid_after + 1800
    chooser = PathChooser(rng=random.Random(7), clock=lambda: now, vanguards_lite=vanguards_lite)
    chooser.set_netdir(netdir)
    paths = [chooser.choose_onion_service_path(OnionServicePurpose.CLIENT_REND)[0] for _ in range(count)]
    return chooser, paths


def test_onion_service_circuits_take_their_second_hop_from_the_vanguards_lite_set():
    chooser, paths = onion_service_paths(None)  # auto: the consensus does not turn it off
    layer2 = {guard.fingerprint for guard in chooser.vanguards.guards}
    assert len(layer2) == chooser.vanguards.params.count
    assert all(path[1].fingerprint in layer2 for path in paths) and len(paths[0]) == 3


def test_without_vanguards_lite_the_second_hop_is_any_middle():
    chooser, paths = onion_service_paths(False)
    assert chooser.vanguards.guards == []
    assert len({path[1].fingerprint for path in paths}) > 4


def test_conflux_needs_an_exit_listing_conflux():
    # 2017: no relay lists Conflux=1 yet, so no set can be started...
    chooser = chooser_2017()
    with pytest.raises(NoPathError, match="excluded"):
        chooser.choose_conflux_path(443)


def test_a_conflux_leg_goes_to_the_sets_exit_through_other_guards_and_middles_where_it_can():
    chooser = chooser_2017()
    first, _ = chooser.choose_circuit_path(443)  # ... but a set's further legs are to its exit
    exit_id = first[-1].rsa_id
    taken = {first[0].rsa_id, first[1].rsa_id}
    for _ in range(10):
        path, choice = chooser.choose_conflux_path(443, exit_id, exclude_tiers=(taken, {first[1].rsa_id}, ()))
        assert path[-1].rsa_id == exit_id and choice is not None
        assert path[0].rsa_id not in taken and path[1].rsa_id not in taken
    # Every sampled guard excluded: the next tier (only the middle avoided) still gives a path.
    guards = {bytes.fromhex(guard.fingerprint) for guard in chooser.guards.guards}
    path, _ = chooser.choose_conflux_path(443, exit_id, exclude_tiers=(guards | taken, {first[1].rsa_id}))
    assert path[-1].rsa_id == exit_id and path[1].rsa_id != first[1].rsa_id
    with pytest.raises(NoPathError):
        chooser.choose_conflux_path(443, exit_id, exclude_tiers=(guards,))
    with pytest.raises(NoPathError, match="not in the consensus"):
        chooser.choose_conflux_path(443, b"\1" * 20)
