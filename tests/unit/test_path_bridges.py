"""UseBridges in the path layer: the guard sample is the bridges, every circuit starts at a bridge whose
descriptor is held, and the bridges are the only directory sources (the real 2017 directory, "now" pinned)."""

from __future__ import annotations

import random

import pytest

from oppy.config import parse_bridge_line
from oppy.netdoc.router import parse_router_descriptor
from oppy.path.bridges import BridgeSet
from oppy.path.chooser import PathChooser
from oppy.path.guards import GuardSample, NoGuardAvailableError, Reachability, retry_delay
from oppy.path.selection import NoPathError
from oppy.path.vanguards import OnionServicePurpose
from tests.support.testdata import real_netdir
from tests.unit.test_netdoc_router import identity_key, make_descriptor, rsa_id

FOLDER = "2017-03-10-bitnym"
# The private network's directory: its exits list Conflux=1 (and its relays share 127.0.0.1).
CONFLUX_FOLDER = "testnet-0.4.9.11"


def bridge_lines(count: int = 2):
    return [parse_bridge_line(f"10.0.0.{index + 1}:{9000 + index} {rsa_id(identity_key(index)).hex()}")
            for index in range(count)]


def bridge_chooser(count: int = 2, seed: int = 7, folder: str = FOLDER, **options) -> tuple[PathChooser, list[float]]:
    netdir = real_netdir(folder)
    now = [netdir.consensus.valid_after + 1800.0]
    chooser = PathChooser(rng=random.Random(seed), clock=lambda: now[0], bridges=BridgeSet(bridge_lines(count)),
                          **options)
    chooser.set_netdir(netdir)
    return chooser, now


def learn(chooser: PathChooser, index: int) -> None:
    descriptor = parse_router_descriptor(make_descriptor(identity_key(index), f"bridge{index}", "192.0.2.9"))
    assert chooser.learned_bridge_descriptor(descriptor)


def test_the_guard_sample_is_the_bridges_and_nothing_from_the_consensus():
    chooser, _ = bridge_chooser(3)
    bridges = {rsa_id(identity_key(index)).hex().upper() for index in range(3)}
    assert {guard.fingerprint for guard in chooser.guards.guards} == bridges
    assert all(guard.listed for guard in chooser.guards.guards)
    assert len(chooser.guards.primary_guards()) == 3 and chooser.state_key == "bridges"
    assert PathChooser().state_key == "guards"


def test_bridges_are_sampled_without_any_consensus():
    sample = GuardSample(rng=random.Random(1))
    assert sample.use_bridges([("AA" * 20, "Unnamed"), ("BB" * 20, "Unnamed")], 1000.0) != []
    assert sample.uses_bridges and len(sample.primary_guards(1000.0)) == 2
    assert sample.pick(1000.0).fingerprint in ("AA" * 20, "BB" * 20)


def test_no_circuit_before_a_bridge_descriptor_then_every_circuit_starts_at_the_bridge():
    chooser, _ = bridge_chooser(1)
    assert not chooser.dir_info().enough
    assert "missing descriptors for 1/2 of our primary entry guards (bridges)" in chooser.dir_info().status
    with pytest.raises(NoGuardAvailableError, match="no bridge can start this circuit: none of the 1 bridge "
                                                     "descriptor"):
        chooser.choose_circuit_path(443)
    learn(chooser, 0)
    assert chooser.dir_info().enough
    consensus = chooser.netdir.consensus
    for seed in range(20):
        path, choice = chooser.choose_circuit_path(443, rng=random.Random(seed))
        bridge, middle, exit_ = path
        assert (bridge.address, bridge.or_port, bridge.nickname) == ("10.0.0.1", 9000, "bridge0")
        assert bridge.rsa_id == rsa_id(identity_key(0)) and bridge.ntor_onion_key is not None
        assert choice.fingerprint == bridge.fingerprint
        assert consensus.relay_by_id(middle.rsa_id) is not None and consensus.relay_by_id(exit_.rsa_id) is not None
        assert len({bridge.rsa_id, middle.rsa_id, exit_.rsa_id}) == 3
    # The nickname the descriptor taught is kept in the sample (and so in the state file).
    assert chooser.guards.guards[0].nickname == "bridge0"


def test_directory_requests_go_to_the_bridges_only_with_or_without_descriptors():
    chooser, _ = bridge_chooser(2)
    targets = chooser.directory_targets(3)
    assert {target.rsa_id for target in targets} == {rsa_id(identity_key(index)) for index in range(2)}
    assert all(target.ntor_onion_key is None for target in targets)         # CREATE_FAST until known
    assert chooser.directory_cache([]) is None
    assert chooser.directory_guards(1)[0].rsa_id in {target.rsa_id for target in targets}
    learn(chooser, 1)
    with_key = [target for target in chooser.directory_guards() if target.ntor_onion_key is not None]
    assert [target.nickname for target in with_key] == ["bridge1"]


def test_a_bridge_that_is_down_is_not_used_and_retried_on_the_guard_schedule():
    chooser, now = bridge_chooser(2)
    learn(chooser, 0)
    learn(chooser, 1)
    down = rsa_id(identity_key(0))
    chooser.mark_guard_down(down)
    for seed in range(10):
        assert chooser.choose_circuit_path(80, rng=random.Random(seed))[0][0].rsa_id == rsa_id(identity_key(1))
    assert [target.rsa_id for target in chooser.directory_guards()] == [rsa_id(identity_key(1))]
    now[0] += retry_delay(0, is_primary=True)              # guard-spec: a primary is retried after 10 minutes
    assert {target.rsa_id for target in chooser.directory_guards()} == {down, rsa_id(identity_key(1))}


def test_with_every_bridge_down_they_are_all_worth_a_retry():
    chooser, _ = bridge_chooser(1)
    chooser.mark_guard_down(rsa_id(identity_key(0)))
    assert chooser.guards.guards[0].reachable is Reachability.NO
    assert [target.rsa_id for target in chooser.directory_guards()] == [rsa_id(identity_key(0))]


def test_the_bridge_sample_survives_a_restart_and_a_removed_bridge_is_unlisted():
    chooser, now = bridge_chooser(2)
    learn(chooser, 0)
    path, choice = chooser.choose_circuit_path(443)
    assert chooser.guard_succeeded(choice)
    state = chooser.guards.to_dict()
    confirmed = {guard["fingerprint"]: guard for guard in state["guards"] if guard["confirmed_idx"] is not None}
    assert list(confirmed) == [path[0].fingerprint]

    again = PathChooser(rng=random.Random(99), clock=lambda: now[0], bridges=BridgeSet(bridge_lines(2)))
    again.restore_guards(state)
    assert again.guards.to_dict() == state
    assert again.guards.primary_guards()[0].fingerprint == path[0].fingerprint

    fewer = PathChooser(rng=random.Random(99), clock=lambda: now[0], bridges=BridgeSet(bridge_lines(1)))
    fewer.restore_guards(state)
    listed = {guard.fingerprint: guard.listed for guard in fewer.guards.guards}
    assert listed == {rsa_id(identity_key(0)).hex().upper(): True, rsa_id(identity_key(1)).hex().upper(): False}


def test_a_descriptor_of_no_configured_bridge_is_not_taken():
    chooser, _ = bridge_chooser(1)
    stranger = parse_router_descriptor(make_descriptor(identity_key(5), "stranger"))
    assert not chooser.learned_bridge_descriptor(stranger)
    assert not PathChooser().learned_bridge_descriptor(stranger)
    with pytest.raises(NoPathError):
        chooser.choose_circuit_path(443)


def fingerprint_of(index: int) -> str:
    return rsa_id(identity_key(index)).hex().upper()


def descriptor_of(index: int):
    return parse_router_descriptor(make_descriptor(identity_key(index), f"bridge{index}", "192.0.2.9"))


def unidentified_chooser() -> tuple[PathChooser, list[float]]:
    """Bridge 0 given without a fingerprint (10.0.0.1:9000), bridge 1 with one."""
    netdir = real_netdir(FOLDER)
    now = [netdir.consensus.valid_after + 1800.0]
    lines = [parse_bridge_line("10.0.0.1:9000"), bridge_lines(2)[1]]
    chooser = PathChooser(rng=random.Random(3), clock=lambda: now[0], bridges=BridgeSet(lines))
    chooser.set_netdir(netdir)
    return chooser, now


def test_a_bridge_without_fingerprint_is_asked_for_its_descriptor_then_used_by_the_identity_learned():
    chooser, _ = unidentified_chooser()
    # Before: not in the sample, no circuit starts at it; directory requests go to it without an identity.
    assert [guard.fingerprint for guard in chooser.guards.guards] == [fingerprint_of(1)]
    unknown = [target for target in chooser.directory_guards() if not target.rsa_id]
    assert [(target.address, target.or_port) for target in unknown] == [("10.0.0.1", 9000)]
    assert len(chooser.directory_guards(limit=1)) == 1
    learn(chooser, 1)
    for seed in range(5):
        assert chooser.choose_circuit_path(443, rng=random.Random(seed))[0][0].rsa_id == rsa_id(identity_key(1))
    # Another bridge's address, or a line that gives a fingerprint, learns nothing.
    assert not chooser.learned_bridge_descriptor(descriptor_of(0), at=("10.0.0.2", 9000))
    assert not chooser.learned_bridge_descriptor(descriptor_of(1), at=("10.0.0.1", 9000))

    # After: the descriptor fetched there (its link proved the same identity) teaches who it is.
    assert chooser.learned_bridge_descriptor(descriptor_of(0), at=("10.0.0.1", 9000))
    learned = {guard.fingerprint: guard for guard in chooser.guards.guards}
    assert set(learned) == {fingerprint_of(0), fingerprint_of(1)}
    assert learned[fingerprint_of(0)].extra == {"bridge_addr": "10.0.0.1:9000"}
    assert learned[fingerprint_of(1)].extra == {"bridge_addr": "10.0.0.2:9001"}
    assert not [target for target in chooser.directory_guards() if not target.rsa_id]
    chooser.mark_guard_down(fingerprint_of(1))
    for seed in range(5):
        bridge = chooser.choose_circuit_path(443, rng=random.Random(seed))[0][0]
        assert (bridge.rsa_id, bridge.address, bridge.or_port, bridge.nickname) == (
            rsa_id(identity_key(0)), "10.0.0.1", 9000, "bridge0")
    # Its descriptor is fetched again without an expected identity: the line names none.
    bridges = chooser.bridges
    assert bridges is not None
    again = bridges.descriptor_target(bridges.target(fingerprint_of(0)))
    assert (again.rsa_id, again.address, again.or_port) == (b"", "10.0.0.1", 9000)
    assert bridges.descriptor_target(bridges.target(fingerprint_of(1))).rsa_id == rsa_id(identity_key(1))


def test_the_identity_learned_for_a_bridge_without_fingerprint_survives_a_restart(caplog):
    chooser, now = unidentified_chooser()
    assert chooser.learned_bridge_descriptor(descriptor_of(0), at=("10.0.0.1", 9000))
    state = chooser.guards.to_dict()

    restarted, _ = unidentified_chooser()
    restarted.restore_guards(state)
    assert restarted.guards.to_dict() == state
    bridges = restarted.bridges
    assert bridges is not None and bridges.learned_fingerprint("10.0.0.1", 9000) == fingerprint_of(0)
    assert bridges.descriptor(fingerprint_of(0)) is None          # known by identity, descriptor asked again
    assert {target.rsa_id for target in restarted.directory_guards()} == {rsa_id(identity_key(index))
                                                                          for index in range(2)}
    # The bridge at that address proves another identity: taken (the line names none), logged at notice.
    caplog.set_level("INFO")
    assert restarted.learned_bridge_descriptor(descriptor_of(2), at=("10.0.0.1", 9000))
    assert [record.levelname for record in caplog.records if "now proves the identity" in record.message] \
        == ["NOTICE"]
    listed = {guard.fingerprint: guard.listed for guard in restarted.guards.guards}
    assert listed == {fingerprint_of(0): False, fingerprint_of(1): True, fingerprint_of(2): True}
    assert bridges.fingerprints() == [fingerprint_of(1), fingerprint_of(2)]
    # Restarted again: the identity in use is remembered, not the one it had before.
    caplog.clear()
    third, _ = unidentified_chooser()
    third.restore_guards(restarted.guards.to_dict())
    assert third.bridges is not None and third.bridges.learned_fingerprint("10.0.0.1", 9000) == fingerprint_of(2)
    assert not [record for record in caplog.records if record.levelname == "NOTICE"]


def test_with_every_primary_bridge_down_the_directory_information_says_so():
    chooser, _ = bridge_chooser(1)
    learn(chooser, 0)
    assert chooser.dir_info().enough
    chooser.mark_guard_down(rsa_id(identity_key(0)))
    assert chooser.dir_info().status == "None of our primary bridges is reachable right now."


def test_no_exit_or_middle_shares_the_bridges_subnet():
    """163.172/16 holds 123 Fast relays of the 2017 consensus: a bridge there keeps all of them off its paths."""
    netdir = real_netdir(FOLDER)
    now = netdir.consensus.valid_after + 1800.0
    line = parse_bridge_line(f"163.172.9.9:443 {rsa_id(identity_key(0)).hex()}")
    chooser = PathChooser(rng=random.Random(5), clock=lambda: now, bridges=BridgeSet([line]))
    chooser.set_netdir(netdir)
    learn(chooser, 0)
    hops = [chooser.choose_circuit_path(443, rng=random.Random(seed))[0] for seed in range(200)]
    assert all(bridge.address == "163.172.9.9" for bridge, _, _ in hops)
    assert not any(hop.address.startswith("163.172.") for _, middle, exit_ in hops for hop in (middle, exit_))
    relaxed = PathChooser(rng=random.Random(5), clock=lambda: now, bridges=BridgeSet([line]),
                          enforce_distinct_subnets=False)
    relaxed.set_netdir(netdir)
    assert relaxed.learned_bridge_descriptor(parse_router_descriptor(make_descriptor(identity_key(0))))
    hops = [relaxed.choose_circuit_path(443, rng=random.Random(seed))[0] for seed in range(200)]
    assert any(hop.address.startswith("163.172.") for _, middle, exit_ in hops for hop in (middle, exit_))


def test_onion_service_circuits_start_at_the_bridge_too():
    chooser, _ = bridge_chooser(1)
    with pytest.raises(NoGuardAvailableError):
        chooser.choose_onion_service_path(OnionServicePurpose.CLIENT_REND)
    learn(chooser, 0)
    consensus = chooser.netdir.consensus
    target = consensus.relays[0].rsa_id
    for seed in range(10):
        rng = random.Random(seed)
        rend, _ = chooser.choose_onion_service_path(OnionServicePurpose.CLIENT_REND, rng=rng)
        hsdir, choice = chooser.choose_onion_service_path(OnionServicePurpose.CLIENT_HSDIR, target, rng=rng)
        for path in (rend, hsdir):
            assert len(path) == 3 and path[0].nickname == "bridge0" and path[0].address == "10.0.0.1"
            assert all(consensus.relay_by_id(hop.rsa_id) is not None for hop in path[1:])
        assert target not in {hop.rsa_id for hop in hsdir} and choice.fingerprint == hsdir[0].fingerprint


def test_conflux_legs_start_at_bridges_another_bridge_where_one_fits_else_the_same():
    """conflux_launch_leg with bridges: every leg's first hop is a bridge (never a relay of the consensus), the
    set's exit lists Conflux=1, a second leg goes through the other bridge and middle when the first tier
    allows it, and through the same bridge when there is only one."""
    chooser, _ = bridge_chooser(2, folder=CONFLUX_FOLDER, enforce_distinct_subnets=False)
    with pytest.raises(NoGuardAvailableError, match="no bridge can start this circuit"):
        chooser.choose_conflux_path(443)
    learn(chooser, 0)
    learn(chooser, 1)
    bridges = {rsa_id(identity_key(index)) for index in range(2)}
    consensus = chooser.netdir.consensus
    for seed in range(10):
        chooser.rng = random.Random(seed)
        first, choice = chooser.choose_conflux_path(443)
        exit_id = first[-1].rsa_id
        assert first[0].rsa_id in bridges and choice.fingerprint == first[0].fingerprint
        assert consensus.relay_by_id(exit_id).supports_protocol("Conflux", 1)
        second, _ = chooser.choose_conflux_path(443, exit_id, exclude_tiers=(
            {first[0].rsa_id, first[1].rsa_id}, {first[1].rsa_id}, ()))
        assert second[-1].rsa_id == exit_id and second[0].rsa_id in bridges - {first[0].rsa_id}
        assert second[1].rsa_id != first[1].rsa_id
    single, _ = bridge_chooser(1, folder=CONFLUX_FOLDER, enforce_distinct_subnets=False)
    learn(single, 0)
    first, _ = single.choose_conflux_path(443)
    second, _ = single.choose_conflux_path(443, first[-1].rsa_id,
                                           exclude_tiers=({first[0].rsa_id, first[1].rsa_id}, {first[1].rsa_id}))
    assert first[0].rsa_id == second[0].rsa_id == rsa_id(identity_key(0)) and second[1].rsa_id != first[1].rsa_id
