"""Production path choice (PathChooser.choose_path) on the real 2017 directory, "now" pinned."""

from __future__ import annotations

import random
import shutil
from collections import Counter

import pytest
from twisted.internet import defer, task

from oppy.directory.cache import DirectoryCache
from oppy.directory.service import DirectoryService
from oppy.netdoc.authorities import DirAuthority
from oppy.netdoc.documents import parse_consensus_header
from oppy.path.chooser import PathChooser
from oppy.path.guards import GuardCircuitState, GuardSample, NoGuardAvailableError, choose_path
from oppy.path.selection import LONG_LIVED_PORTS, PathSelector

from tests.support.testdata import REAL_DIRECTORY, real_netdir

SOURCE = REAL_DIRECTORY / "2017-03-10-bitnym"
#: tor's LongLivedPorts default (config.c).
TOR_LONG_LIVED_PORTS = {21, 22, 706, 1863, 5050, 5190, 5222, 5223, 6523, 6667, 6697, 8300}


@pytest.fixture
def service_2017(tmp_path):
    """A DirectoryService that loaded the 2017 consensus, certificates and microdescriptors from its
    cache, 30 minutes after valid-after; nothing is fetched (the authorities point at a closed port)."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("cached-certs", "cached-microdesc-consensus", "cached-microdescs", "cached-microdescs.new"):
        shutil.copy(SOURCE / name, data / name)
    header = parse_consensus_header((SOURCE / "cached-microdesc-consensus").read_bytes())
    authorities = [DirAuthority(s.nickname, s.v3ident, s.v3ident, "127.0.0.1", 9, None) for s in header.dir_sources]
    now = header.valid_after + 30 * 60
    service = DirectoryService(authorities, data, circuits=None, reactor=task.Clock(), clock=lambda: now,
                               run_in_thread=lambda function, *args: defer.maybeDeferred(function, *args),
                               rng=random.Random(2017))
    started = service.start()
    assert started.called and service.enough_dir_info and len(service.netdir.microdescs) == 7326
    yield service
    service.stop()


def flags_of(service, target) -> frozenset[str]:
    return service.netdir.consensus.relay_by_id(target.rsa_id).flags


def test_long_lived_ports_are_tors_default():
    assert LONG_LIVED_PORTS == TOR_LONG_LIVED_PORTS


@pytest.mark.parametrize("port", [6667, 22, 6523])
def test_long_lived_port_gets_stable_relays_on_every_hop_2017(service_2017, port):
    # Before, only the exit had to be Stable: about 8% of the middles for 6667 were not.
    rng = random.Random(port)
    for _ in range(1500):
        for hop in service_2017.paths.choose_path(port, rng=rng):
            assert "Stable" in flags_of(service_2017, hop)


def test_other_ports_do_not_need_stable_2017(service_2017):
    rng = random.Random(80)
    middles = [service_2017.paths.choose_path(80, rng=rng)[1] for _ in range(1500)]
    assert sum("Stable" not in flags_of(service_2017, middle) for middle in middles) > 50


def real_selector(folder: str) -> PathSelector:
    netdir = real_netdir(folder)
    return PathSelector(netdir.consensus, netdir.microdescs)


def test_circuits_use_the_first_two_usable_primaries_2022():
    # guard-n-primary-guards-to-use=2: before, every circuit went through the first primary.
    selector = real_selector("2022-11-19-safetor")
    consensus = selector.consensus
    now = consensus.valid_after + 1800
    sample = GuardSample(rng=random.Random(7))
    sample.update_from_consensus(consensus, now)
    # Only 1722 of the 6088 microdescriptors are in this set: a primary without one is skipped
    # (this seed samples two primaries that have one).
    usable = [g.fingerprint for g in sample.primary_guards() if selector.node(g.fingerprint) is not None]
    assert len(usable) == 2
    rng = random.Random(22)
    guards = Counter(choose_path(selector, sample, now, rng, 443)[0].guard.fingerprint for _ in range(3000))
    assert guards[usable[0]] + guards[usable[1]] >= 2950           # the rest: exit conflicts
    assert abs(guards[usable[0]] / 3000 - 0.5) < 0.04 and abs(guards[usable[1]] / 3000 - 0.5) < 0.04


def test_the_guard_fits_the_exit_and_the_avoided_relays_2017(service_2017):
    selector, sample, now = service_2017.paths.selector, service_2017.paths.guards, service_2017.clock()
    first = sample.primary_guards()[0]
    node = selector.node(first.fingerprint)
    rng = random.Random(1)
    path, choice = choose_path(selector, sample, now, rng, 443)
    assert path.guard is node and choice.guard is first          # 2017: one primary in use
    assert choice.state is GuardCircuitState.USABLE_ON_COMPLETION
    path, _ = choose_path(selector, sample, now, rng, 443, avoid={node.relay.rsa_id})
    assert path.guard.fingerprint == sample.primary_guards()[1].fingerprint
    assert node.relay.rsa_id not in {hop.relay.rsa_id for hop in path.hops}
    every = {selector.node(g.fingerprint).relay.rsa_id for g in sample.guards if g.listed}
    with pytest.raises(NoGuardAvailableError, match="is excluded"):
        choose_path(selector, sample, now, rng, 443, avoid=every)
    # The production wrapper returns the same hops as RelayTargets.
    targets = service_2017.paths.choose_path(443, rng=random.Random(5))
    path, _ = choose_path(selector, sample, now, random.Random(5), 443)
    assert [t.rsa_id for t in targets] == [node.relay.rsa_id for node in path.hops]


def test_outcomes_reach_the_guard_state_and_the_state_file_2017(service_2017):
    # The circuit manager reports a guard's outcome by its identity (mark_guard_up/down): a guard
    # that worked is confirmed and written to DataDirectory/state; one that failed is skipped.
    sample, now = service_2017.paths.guards, service_2017.clock()
    primaries = sample.primary_guards()
    service_2017.paths.mark_guard_down(bytes.fromhex(primaries[0].fingerprint))
    assert primaries[0].is_down
    assert service_2017.paths.choose_path(443)[0].fingerprint == primaries[1].fingerprint
    service_2017.paths.mark_guard_up(bytes.fromhex(primaries[1].fingerprint))
    assert primaries[1].confirmed_idx == 0 and sample.primary_guards(now)[0] is primaries[0]
    state = DirectoryCache(service_2017.data_directory).read_state()["guards"]
    assert state["version"] == 2
    saved = {entry["fingerprint"]: entry for entry in state["guards"]}
    assert saved[primaries[1].fingerprint]["confirmed_idx"] == 0
    assert saved[primaries[0].fingerprint]["confirmed_idx"] is None


def test_long_lived_ports_option_replaces_tors_list_2017():
    # torrc LongLivedPorts 80: port 80 gets Stable relays on every hop, 6667 no longer needs them.
    netdir = real_netdir("2017-03-10-bitnym")
    chooser = PathChooser(rng=random.Random(7), clock=lambda: netdir.consensus.valid_after + 1800,
                          long_lived_ports={80})
    chooser.set_netdir(netdir)
    assert chooser.needs_stable(80) and not chooser.needs_stable(6667) and not chooser.needs_stable(None)
    flags = netdir.consensus.relay_by_id
    for _ in range(300):
        assert all("Stable" in flags(hop.rsa_id).flags for hop in chooser.choose_path(80))
    middles = [chooser.choose_path(6667)[1] for _ in range(1500)]
    assert sum("Stable" not in flags(middle.rsa_id).flags for middle in middles) > 50
