"""NetDir: the immutable snapshot of a consensus and its microdescriptors, on the real 2017 directory."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pytest

from oppy.netdoc.documents import Consensus, MicrodescRecord, parse_consensus
from oppy.netdoc.netdir import NetDir, NetDirChanged
from oppy.netdoc.relay import rsa_id_of
from oppy.netdoc.verify import REASONABLY_LIVE_TIME
from tests.support.testdata import REAL_DIRECTORY, real_netdir

FOLDER = "2017-03-10-bitnym"


def directory_2017() -> tuple[Consensus, Mapping[str, MicrodescRecord]]:
    netdir = real_netdir(FOLDER)
    return netdir.consensus, netdir.microdescs


@pytest.fixture
def netdir() -> NetDir:
    consensus, microdescs = directory_2017()
    return NetDir(consensus, microdescs)


def test_a_netdir_never_changes(netdir):
    consensus, microdescs = directory_2017()
    with pytest.raises(dataclasses.FrozenInstanceError):
        netdir.consensus = None
    with pytest.raises(TypeError):
        netdir.microdescs["x"] = next(iter(microdescs.values()))
    source = dict(microdescs)
    copied = NetDir(consensus, source)
    source.clear()                          # the caller's store moves on; the snapshot does not
    assert len(copied.microdescs) == 7326


def test_more_microdescriptors_make_a_new_netdir_sharing_the_consensus(netdir):
    consensus, microdescs = directory_2017()
    empty = NetDir(consensus)
    fuller = empty.with_microdescs(microdescs)
    assert fuller is not empty and len(empty.microdescs) == 0 and len(fuller.microdescs) == 7326
    assert fuller.consensus is consensus and fuller.bandwidth is empty.bandwidth
    event = NetDirChanged(fuller, empty)
    assert not event.new_consensus and NetDirChanged(empty, None).new_consensus
    assert NetDirChanged(fuller, NetDir(parse_consensus((REAL_DIRECTORY / FOLDER / "cached-microdesc-consensus").read_bytes()))
                         ).new_consensus


def test_derived_values_are_built_once_per_netdir_and_key(netdir):
    built = []

    def build():
        built.append(1)
        return object()

    first = netdir.derived("selector", build)
    assert netdir.derived("selector", build) is first and len(built) == 1
    assert netdir.derived(("selector", False), build) is not first and len(built) == 2
    assert NetDir(netdir.consensus, netdir.microdescs).derived("selector", build) is not first


def test_relay_lookups_by_identity_and_nickname(netdir):
    relay = netdir.relay_by_nickname("calyxinstitute14")
    assert relay is not None and relay.fingerprint == "0011BD2485AD45D984EC4159C88FC066E5E3300E"
    fingerprint = relay.fingerprint
    target = netdir.relay_target(relay.rsa_id)
    assert (target.nickname, target.rsa_id, target.address, target.or_port) == \
        (relay.nickname, relay.rsa_id, relay.address, relay.or_port)
    assert target.ntor_onion_key == netdir.microdesc_of(relay).ntor_onion_key
    for name in (f"${fingerprint}", f"${fingerprint}~CalyxInstitute14", f"${fingerprint}=x", fingerprint.lower(),
                 "CalyxInstitute14", " calyxinstitute14 "):
        assert netdir.find_relay(name) == target, name
    assert netdir.find_relay("$CalyxInstitute14") is None           # $ means a fingerprint
    assert netdir.find_relay("00" * 20) is None and netdir.find_relay("nobody-has-this-name") is None
    assert netdir.relay_target("nonsense") is None and netdir.relay_target(b"\0" * 20) is None
    assert netdir.relay_by_fingerprint("$" + fingerprint) is relay
    # Exactly 40 hex digits (bytes.fromhex would skip the blanks and give 19 bytes), one "$", ASCII case only.
    assert rsa_id_of(fingerprint[:38] + "  ") is None and rsa_id_of("$$" + fingerprint) is None
    assert rsa_id_of(" " + fingerprint) is None and rsa_id_of(fingerprint + "~nick") == relay.rsa_id
    assert netdir.relay_by_nickname("calyxinstitute14".replace("i", "\u0130", 1)) is None


def test_a_relay_without_its_microdescriptor_has_no_keys(netdir):
    relay = netdir.relay_by_nickname("CalyxInstitute14")
    without = netdir.with_microdescs({digest: md for digest, md in netdir.microdescs.items()
                                      if digest != relay.microdesc_digest})
    target = without.relay_target(relay.rsa_id)
    assert target.ntor_onion_key is None and target.ed25519_id is None and target.or_port == relay.or_port
    assert netdir.exit_allows(relay.rsa_id, 80) and not without.exit_allows(relay.rsa_id, 80)


def test_exit_allows_reads_the_policy_summary(netdir):
    relay = netdir.relay_by_nickname("AwwwShiiit")           # accept 22,53,80,443
    assert [port for port in (22, 25, 53, 80, 443, 8080) if netdir.exit_allows(relay.rsa_id, port)] == \
        [22, 53, 80, 443]
    assert not netdir.exit_allows(b"\0" * 20, 80)


def test_enough_directory_information_follows_tors_rule(netdir):
    consensus = netdir.consensus
    now = consensus.valid_after + 1800
    info = netdir.dir_info(now)
    assert info.enough and info.status == ("We have enough directory information (100% of guards bw, 100% of "
                                           "midpoint bw, and 100% of exit bw = 100% of path bw).")
    assert netdir.paths_needed() == 0.6
    # Past valid-until plus tor's REASONABLY_LIVE_TIME the consensus no longer counts.
    assert netdir.dir_info(consensus.valid_until + REASONABLY_LIVE_TIME).enough
    stale = netdir.dir_info(consensus.valid_until + REASONABLY_LIVE_TIME + 1)
    assert not stale.enough and stale.status == "We have no recent usable consensus."


def test_too_few_microdescriptors_for_the_weighted_paths(netdir):
    consensus, microdescs = directory_2017()
    guards = {relay.microdesc_digest for relay in consensus.relays if "Guard" in relay.flags}
    without_guards = netdir.with_microdescs({d: md for d, md in microdescs.items() if d not in guards})
    asked = []
    info = without_guards.dir_info(consensus.valid_after, lambda: asked.append(1) or ([], 3))
    assert not info.enough and asked == []           # the guards are asked only once the paths are enough
    assert info.status == (f"We need more microdescriptors: we have {7326 - len(guards)}/7326, and can only "
                           f"build 0% of likely paths. (We have 0% of guards bw, 28% of midpoint bw, and 20% of "
                           f"exit bw = 0% of path bw.)")
    # tor's quirk: when no exit has a microdescriptor, the middles' share stands in for the exits'.
    exits = {relay.microdesc_digest for relay in consensus.relays if "Exit" in relay.flags}
    without_exits = netdir.with_microdescs({d: md for d, md in microdescs.items() if d not in exits})
    assert without_exits.path_fraction()[1].endswith("and 99% of end bw (no exits in consensus, using mid) = "
                                                     "99% of path bw")
    # min_paths_for_circs_pct, clamped to tor's [25, 95]
    low = NetDir(dataclasses.replace(consensus, params={**consensus.params, "min_paths_for_circs_pct": 5}))
    high = NetDir(dataclasses.replace(consensus, params={**consensus.params, "min_paths_for_circs_pct": 99}))
    assert (low.paths_needed(), high.paths_needed()) == (0.25, 0.95)


def test_the_primary_guards_need_their_microdescriptors(netdir):
    consensus, microdescs = directory_2017()
    guards = [relay for relay in consensus.relays if "Guard" in relay.flags][:3]
    lacking = netdir.with_microdescs({d: md for d, md in microdescs.items() if d != guards[1].microdesc_digest})
    fingerprints = [guard.fingerprint for guard in guards]
    info = lacking.dir_info(consensus.valid_after, lambda: (fingerprints, 3))
    assert not info.enough
    assert info.status == ("We're missing descriptors for 1/3 of our primary entry guards (total "
                           "microdescriptors: 7325/7326).")
    assert netdir.dir_info(consensus.valid_after, lambda: (fingerprints, 3)).enough
