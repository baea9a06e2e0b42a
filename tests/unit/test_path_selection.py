"""Bandwidth-weighted path selection and its constraints.

The statistical tests use fixed seeds, so they are deterministic; the stated
tolerances are what a correct implementation meets with a wide margin (a
chi-square bound at p = 0.001 and a 10% per-bucket relative error over 20000
draws, about 3 standard deviations), and what uniform or unweighted choice fails.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import random
from collections import Counter
from types import MappingProxyType

import pytest

from oppy.netdoc.documents import (
    REJECT_ALL_PORTS,
    Consensus,
    MicrodescRecord,
    RelayRecord,
    parse_microdescriptor,
    parse_microdescriptors,
    parse_port_policy,
)
from oppy.netdoc.weights import Position, bandwidth_weight_table, relay_weight
from oppy.path.selection import LONG_LIVED_PORTS, NoPathError, PathSelector

from tests.support.testdata import REAL_DIRECTORY, real_netdir

#: Chi-square critical values at p = 0.001 by degrees of freedom.
CHI2_CRITICAL_P001 = {19: 43.82}
N_DRAWS = 20000
N_BUCKETS = 20


@functools.cache
def real_selector(folder: str, enforce_distinct_subnets: bool = True) -> PathSelector:
    netdir = real_netdir(folder)
    return PathSelector(netdir.consensus, netdir.microdescs, enforce_distinct_subnets=enforce_distinct_subnets)


def assert_draws_follow_weights(selector: PathSelector, position: Position, draw, port=None) -> None:
    """Group candidates into buckets of about equal expected mass and compare counts."""
    candidates = selector.candidates(position, port)
    weights = [selector.weight(node, position) for node in candidates]
    total = sum(weights)
    order = sorted(range(len(candidates)), key=lambda i: -weights[i])
    bucket_of = {}
    bucket_mass = [0.0] * N_BUCKETS
    running = 0.0
    for i in order:
        bucket = min(int(running / total * N_BUCKETS), N_BUCKETS - 1)
        bucket_of[candidates[i].fingerprint] = bucket
        bucket_mass[bucket] += weights[i] / total
        running += weights[i]
    rng = random.Random(20240517)
    counts = Counter(bucket_of[draw(rng).fingerprint] for _ in range(N_DRAWS))
    used = [b for b in range(N_BUCKETS) if bucket_mass[b] > 0]
    chi2 = sum((counts[b] - N_DRAWS * bucket_mass[b]) ** 2 / (N_DRAWS * bucket_mass[b]) for b in used)
    assert len(used) == N_BUCKETS
    assert chi2 < CHI2_CRITICAL_P001[len(used) - 1], (chi2, counts)
    for b in used:
        expected = N_DRAWS * bucket_mass[b]
        assert abs(counts[b] - expected) / expected < 0.10, (b, counts[b], expected)


# ---------------------------------------------------------------- weights


def test_weight_tables_from_real_consensus():
    consensus = real_selector("2022-11-19-safetor").consensus
    # Wgg=9611 Wgm=9611 Wgd=0; Wmg=389 Wmm=10000 Wme=0 Wmd=0; Weg=Wee=Wed=Wem=10000; W*b=10000
    assert bandwidth_weight_table(consensus, Position.GUARD) == (0.9611, 0.9611, 0.0, 0.0, 1, 1, 1, 1)
    assert bandwidth_weight_table(consensus, Position.MIDDLE) == (0.0389, 1.0, 0.0, 0.0, 1, 1, 1, 1)
    assert bandwidth_weight_table(consensus, Position.EXIT) == (1.0, 1.0, 1.0, 1.0, 1, 1, 1, 1)
    assert bandwidth_weight_table(consensus, Position.DIRECTORY) == (0.0389, 1.0, 0.0, 0.0, 1, 1, 1, 1)
    titamon = consensus.relay_by_fingerprint("0011254CC8444369B20EF11156B8990438221A54")
    assert titamon is not None and titamon.nickname == "titamon3"    # Exit Guard V2Dir, 38000
    assert relay_weight(titamon, bandwidth_weight_table(consensus, Position.EXIT)) == 38000
    assert relay_weight(titamon, bandwidth_weight_table(consensus, Position.MIDDLE)) == 0
    assert relay_weight(titamon, bandwidth_weight_table(consensus, Position.GUARD)) == 0


def make_relay(index: int, flags: str, bandwidth: int | None = 1000, address: str | None = None,
               ipv6: tuple = ()) -> RelayRecord:
    return RelayRecord(
        nickname=f"relay{index}",
        rsa_id=bytes([index]) * 20,
        address=address or f"10.{index}.0.1",
        or_port=9001,
        dir_port=0,
        ipv6_or_addresses=ipv6,
        flags=frozenset(flags.split()),
        bandwidth=bandwidth,
        unmeasured=False,
        protocols=MappingProxyType({}),
        microdesc_digest=f"md{index}",
    )


def make_microdesc(index: int, policy: str | None = None, family=(), family_ids=(),
                   family_nicknames=()) -> MicrodescRecord:
    return MicrodescRecord(
        digest=f"md{index}",
        ntor_onion_key=bytes(32),
        ed25519_id=None,
        ipv6_or_addresses=(),
        family=frozenset(bytes([i]).hex().upper() * 20 for i in family),
        family_ids=frozenset(family_ids),
        exit_policy=parse_port_policy(policy) if policy else REJECT_ALL_PORTS,
        exit_policy_v6=REJECT_ALL_PORTS,
        family_nicknames=frozenset(name.lower() for name in family_nicknames),
    )


def make_consensus(relays, weights=None, params=None) -> Consensus:
    return Consensus(
        flavor="microdesc", consensus_method=35, valid_after=0, fresh_until=3600, valid_until=10800,
        known_flags=(), params=MappingProxyType(params or {}),
        recommended_client_protocols=MappingProxyType({}), required_client_protocols=MappingProxyType({}),
        recommended_relay_protocols=MappingProxyType({}), required_relay_protocols=MappingProxyType({}),
        dir_sources=(), bandwidth_weights=MappingProxyType(weights or {}), relays=tuple(relays),
    )


RUNNING = "Running Valid Fast "


def test_missing_or_negative_weights_mean_plain_bandwidth():
    relays = [make_relay(1, RUNNING + "Guard", 100), make_relay(2, RUNNING, 300)]
    for weights in ({}, {"Wgg": 5000, "Wgm": -1}):
        consensus = make_consensus(relays, weights)
        table = bandwidth_weight_table(consensus, Position.MIDDLE)
        assert table == (1.0,) * 8
        assert [relay_weight(r, table) for r in relays] == [100, 300]


def test_bad_exit_counts_as_non_exit_and_missing_bandwidth_default():
    weights = {"Wmg": 1000, "Wmm": 10000, "Wme": 0, "Wmd": 0, "Wgb": 10000, "Wmb": 5000, "Web": 10000,
               "Wdb": 10000}
    table = bandwidth_weight_table(make_consensus([], weights), Position.MIDDLE)
    assert relay_weight(make_relay(1, RUNNING + "Exit", 100), table) == 0
    assert relay_weight(make_relay(1, RUNNING + "Exit BadExit", 100), table) == 100
    assert relay_weight(make_relay(1, RUNNING + "V2Dir", 100), table) == 50       # Wmm * Wmb
    assert relay_weight(make_relay(1, RUNNING, None), table) == 30                # C tor's 30 kB


def test_all_zero_weights_choose_uniformly():
    relays = [make_relay(i, RUNNING, 0) for i in range(1, 5)]
    selector = PathSelector(make_consensus(relays), {f"md{i}": make_microdesc(i) for i in range(1, 5)})
    rng = random.Random(1)
    counts = Counter(selector.choose_middle(rng).nickname for _ in range(4000))
    assert set(counts) == {"relay1", "relay2", "relay3", "relay4"}
    assert all(abs(count - 1000) < 150 for count in counts.values())


# ---------------------------------------------------------------- distribution on real data


def test_middle_choice_follows_weights_2017():
    selector = real_selector("2017-03-10-bitnym")
    assert len(selector.nodes) == 7326
    assert_draws_follow_weights(selector, Position.MIDDLE, lambda rng: selector.choose_middle(rng))


def test_guard_choice_follows_weights_2017():
    selector = real_selector("2017-03-10-bitnym")
    assert_draws_follow_weights(selector, Position.GUARD, lambda rng: selector.choose_guard(rng))


def test_exit_choice_follows_weights_2017():
    selector = real_selector("2017-03-10-bitnym")
    assert_draws_follow_weights(selector, Position.EXIT, lambda rng: selector.choose_exit(rng, 443), port=443)


def test_exits_without_the_exit_flag_are_candidates_2017():
    # C tor never tests the Exit flag for an exit (choose_good_exit_server_general): relays
    # whose policy summary accepts 6667 but that lack the flag hold about 14% of the exit
    # weight for that port in the 2017 consensus, and are drawn in proportion (with Wem).
    selector = real_selector("2017-03-10-bitnym")
    candidates = selector.candidates(Position.EXIT, 6667)
    unflagged = [node for node in candidates if "Exit" not in node.flags]
    total = sum(selector.weight(node, Position.EXIT) for node in candidates)
    share = sum(selector.weight(node, Position.EXIT) for node in unflagged) / total
    assert len(unflagged) == 88 and 0.14 < share < 0.15
    assert all(node.microdesc.exit_policy.allows_port(6667) and "Stable" in node.flags for node in unflagged)
    assert_draws_follow_weights(selector, Position.EXIT, lambda rng: selector.choose_exit(rng, 6667), port=6667)
    rng = random.Random(6667)
    drawn = sum("Exit" not in selector.choose_exit(rng, 6667).flags for _ in range(N_DRAWS))
    assert abs(drawn / N_DRAWS - share) < 0.01


def test_port_served_only_by_unflagged_relays_is_reachable():
    weights = {"Wem": 7000, "Wee": 10000, "Weg": 10000, "Wed": 10000,
               "Wgb": 10000, "Wmb": 10000, "Web": 10000, "Wdb": 10000}
    relays = [make_relay(1, RUNNING + "Exit", 1000), make_relay(2, RUNNING, 1000),
              make_relay(3, RUNNING + "Exit BadExit", 1000)]
    microdescs = {"md1": make_microdesc(1, "accept 80,443"), "md2": make_microdesc(2, "accept 9999"),
                  "md3": make_microdesc(3, "accept 1-65535")}
    selector = PathSelector(make_consensus(relays, weights), microdescs)
    assert selector.choose_exit(random.Random(1), 9999).nickname == "relay2"
    assert selector.weight(selector.node("02" * 20), Position.EXIT) == 700          # Wem, not Wee
    assert [n.nickname for n in selector.candidates(Position.EXIT)] == ["relay1", "relay2"]


def test_zero_weight_classes_never_chosen_2022():
    # Wmd = Wme = 0: exits never in the middle; Wgd = 0: guard+exits never as guard.
    selector = real_selector("2022-11-19-safetor")
    assert len(selector.nodes) == 1722 and selector.missing_microdescs > 4000
    rng = random.Random(5)
    middles = [selector.choose_middle(rng) for _ in range(3000)]
    assert not any("Exit" in node.flags and "BadExit" not in node.flags for node in middles)
    guards = [selector.choose_guard(rng) for _ in range(3000)]
    assert all("Guard" in n.flags and "Fast" in n.flags for n in guards)
    # BadExit relays are weighted as non-exits, so a BadExit guard can be chosen.
    assert not any("Exit" in n.flags and "BadExit" not in n.flags for n in guards)
    assert any("BadExit" in n.flags for n in guards)


# ---------------------------------------------------------------- constraints on real data


def test_paths_never_break_rules_2017():
    selector = real_selector("2017-03-10-bitnym")
    rng = random.Random(99)
    ports = [80, 443, 22, 25, 6667, 8080, 53, 5222, None]
    for i in range(3000):
        port = ports[i % len(ports)]
        path = selector.select_path(rng, port)
        guard, middle, exit_node = path.hops
        assert len({n.fingerprint for n in path.hops}) == 3
        for a, b in ((guard, middle), (guard, exit_node), (middle, exit_node)):
            assert not (a.fingerprint in b.microdesc.family and b.fingerprint in a.microdesc.family)
            assert not (a.microdesc.family_ids & b.microdesc.family_ids)
            assert a.relay.address.split(".")[:2] != b.relay.address.split(".")[:2]
        for node in path.hops:
            assert {"Running", "Valid"} <= node.flags and len(node.microdesc.ntor_onion_key) == 32
        assert {"Guard", "Fast"} <= guard.flags and "MiddleOnly" not in guard.flags
        assert "Fast" in middle.flags
        assert "BadExit" not in exit_node.flags and "Fast" in exit_node.flags
        if port is None:
            assert exit_node.microdesc.exit_policy.allows_any_port()
        else:
            assert exit_node.microdesc.exit_policy.allows_port(port)
        if port in LONG_LIVED_PORTS:
            assert all("Stable" in node.flags for node in path.hops)


def test_real_families_are_avoided():
    selector = real_selector("2017-03-10-bitnym")
    by_fp = {node.fingerprint: node for node in selector.nodes}
    # A mutual family pair where both can be exit and middle.
    pair = None
    for node in selector.nodes:
        if not selector.eligible(node, Position.EXIT, 443):
            continue
        for member in node.microdesc.family:
            other = by_fp.get(member)
            if other is not None and node.fingerprint in other.microdesc.family and "Fast" in other.flags:
                pair = (node, other)
                break
        if pair:
            break
    assert pair is not None
    exit_node, relative = pair
    assert selector.in_same_family(exit_node, relative)
    assert "same family" in selector.conflicts(relative, (exit_node,))
    rng = random.Random(3)
    assert all(selector.choose_middle(rng, exclude=(exit_node,)) is not relative for _ in range(2000))


# ---------------------------------------------------------------- synthetic constraints


def small_network(**selector_options) -> PathSelector:
    relays = [
        make_relay(1, RUNNING + "Guard Stable V2Dir", 5000, "1.1.0.1"),
        make_relay(2, RUNNING + "Guard Stable", 5000, "2.2.0.1"),
        make_relay(3, RUNNING + "Exit Stable", 5000, "3.3.0.1"),
        make_relay(4, RUNNING + "Exit", 5000, "4.4.0.1"),          # not Stable
        make_relay(5, RUNNING, 5000, "5.5.0.1"),
        make_relay(6, RUNNING, 5000, "3.3.9.9"),                   # same /16 as relay 3
        make_relay(7, "Running Fast", 9000, "7.7.0.1"),            # not Valid
        make_relay(8, RUNNING + "Exit BadExit", 9000, "8.8.0.1"),
        make_relay(9, RUNNING + "Guard MiddleOnly", 9000, "9.9.0.1"),
    ]
    microdescs = {
        "md1": make_microdesc(1, family=[5], family_ids=["ed25519:shared"]),
        "md2": make_microdesc(2),
        "md3": make_microdesc(3, "accept 80,443", family=[4]),
        "md4": make_microdesc(4, "accept 1-65535", family=[3]),
        "md5": make_microdesc(5, family=[1]),
        "md6": make_microdesc(6, family_ids=["ed25519:shared"]),
        "md7": make_microdesc(7),
        "md8": make_microdesc(8, "accept 1-65535"),
        "md9": make_microdesc(9),
    }
    return PathSelector(make_consensus(relays), microdescs, **selector_options)


def test_synthetic_candidates():
    selector = small_network()
    names = lambda nodes: sorted(n.nickname for n in nodes)  # noqa: E731
    assert names(selector.candidates(Position.GUARD)) == ["relay1", "relay2"]
    assert names(selector.candidates(Position.GUARD, directory_guard=True)) == ["relay1"]
    assert names(selector.candidates(Position.EXIT, 443)) == ["relay3", "relay4"]
    assert names(selector.candidates(Position.EXIT, 8080)) == ["relay4"]
    assert "relay7" not in names(selector.candidates(Position.MIDDLE))
    assert "relay9" in names(selector.candidates(Position.MIDDLE))


def test_long_lived_port_needs_stable_exit():
    selector = small_network()
    assert [n.nickname for n in selector.candidates(Position.EXIT, 22)] == []   # 3 rejects 22, 4 not Stable
    # Like C tor, when no Stable exit fits, fall back to the others.
    assert selector.choose_exit(random.Random(1), 22).nickname == "relay4"


def test_long_lived_port_needs_stable_middle():
    selector = small_network()
    assert "relay5" in [n.nickname for n in selector.candidates(Position.MIDDLE)]
    stable_middles = sorted(n.nickname for n in selector.candidates(Position.MIDDLE, stable=True))
    assert stable_middles == ["relay1", "relay2", "relay3"]
    rng = random.Random(4)
    for _ in range(200):
        path = selector.select_path(rng, 6667)        # exit relay4 (the only one for 6667): not Stable
        assert path.exit.nickname == "relay4" and "Stable" in path.middle.flags and "Stable" in path.guard.flags
    # No Stable middle fits: like C tor, fall back to the others.
    stable = [n.relay.rsa_id for n in selector.nodes if n.nickname in stable_middles]
    assert selector.choose_middle(rng, avoid=stable, stable=True).nickname in \
        ("relay4", "relay5", "relay6", "relay8", "relay9")


def test_family_and_subnet_rules():
    selector = small_network()
    node = {n.nickname: n for n in selector.nodes}
    assert selector.in_same_family(node["relay1"], node["relay5"])         # mutual $FP
    assert selector.in_same_family(node["relay3"], node["relay4"])
    assert selector.in_same_family(node["relay1"], node["relay6"])         # shared family-ids
    assert not selector.in_same_family(node["relay1"], node["relay2"])
    assert "/16" in selector.conflicts(node["relay6"], (node["relay3"],))
    assert not small_network(enforce_distinct_subnets=False).conflicts(node["relay6"], (node["relay3"],))
    rng = random.Random(11)
    for _ in range(300):
        path = selector.select_path(rng, 443)
        names = {n.nickname for n in path.hops}
        assert not {"relay3", "relay4"} <= names and not {"relay1", "relay5"} <= names
        assert not {"relay1", "relay6"} <= names and not {"relay3", "relay6"} <= names


def test_family_params_can_switch_sources_off():
    relays = [make_relay(1, RUNNING, 10), make_relay(2, RUNNING, 10)]
    microdescs = {"md1": make_microdesc(1, family=[2], family_ids=["x"]),
                  "md2": make_microdesc(2, family=[1])}
    a, b = PathSelector(make_consensus(relays), microdescs).nodes
    off = PathSelector(make_consensus(relays, params={"use-family-lists": 0, "use-family-ids": 0}),
                       microdescs)
    assert PathSelector(make_consensus(relays), microdescs).in_same_family(a, b)
    assert not off.in_same_family(*off.nodes)


def test_no_path_errors_say_why():
    selector = small_network()
    with pytest.raises(NoPathError, match="port 25"):
        selector.choose_exit(random.Random(1), 25, ipv6=True)
    only_exits = [n for n in selector.nodes if n.nickname in ("relay3", "relay4")]
    with pytest.raises(NoPathError, match="conflict"):
        selector.choose_exit(random.Random(1), 443, exclude=only_exits)


def test_testnet_needs_distinct_subnets_off():
    strict = real_selector("testnet-0.4.9.11")
    with pytest.raises(NoPathError, match="conflict"):
        strict.select_path(random.Random(1), 80)
    relaxed = real_selector("testnet-0.4.9.11", enforce_distinct_subnets=False)
    rng = random.Random(1)
    for _ in range(200):
        path = relaxed.select_path(rng, 80)
        assert path.exit.nickname.startswith("exit")
        assert len({n.fingerprint for n in path.hops}) == 3
    # Test-net exits lack Stable; a long-lived port still finds one (C tor's fallback).
    assert relaxed.choose_exit(rng, 22).nickname.startswith("exit")


# ---------------------------------------------------------------- families named by nickname


#: The hexow relays' microdescriptors before the ones the 2017 consensus lists (still in
#: cached-microdescs.new): each named the other two by nickname only.
HEXOW_EARLIER_MICRODESCS = {"hexowa": "hA6xZXlLjlLJTKuy71uAvoIRE0cFlamoH30wQJ8U+28",
                            "hexowb": "IyiFX8KJ+JTr+QT7YOxzaoBcs4z1rQ6xxz329Gh9P7Y",
                            "hexowc": "H2w5139EjI0BSHXt6F2pafAIEncrguwnGATxtGW75/Y"}


def test_family_members_named_by_nickname_are_kept_2017():
    directory = REAL_DIRECTORY / "2017-03-10-bitnym"
    microdescs = {}
    for path in sorted(directory.glob("cached-microdescs*")):
        microdescs.update(parse_microdescriptors(path.read_bytes(), set(HEXOW_EARLIER_MICRODESCS.values())).microdescs)
    families = {name: microdescs[digest] for name, digest in HEXOW_EARLIER_MICRODESCS.items()}
    assert families["hexowa"].family_nicknames == {"hexowb", "hexowc"} and families["hexowa"].family == frozenset()
    assert families["hexowc"].family_nicknames == {"hexowa", "hexowb"}


def test_families_named_by_nickname_are_avoided_2017():
    # tor nodefamily_contains_node: a family line names a relay by identity or by nickname. The
    # 2017 consensus with the hexow relays' earlier microdescriptors: no $FP member is left.
    consensus = real_selector("2017-03-10-bitnym").consensus
    relays = [dataclasses.replace(relay, microdesc_digest=HEXOW_EARLIER_MICRODESCS[relay.nickname])
              if relay.nickname in HEXOW_EARLIER_MICRODESCS else relay for relay in consensus.relays]
    consensus = dataclasses.replace(consensus, relays=tuple(relays))
    microdescs = {}
    for path in sorted((REAL_DIRECTORY / "2017-03-10-bitnym").glob("cached-microdescs*")):
        microdescs.update(parse_microdescriptors(path.read_bytes(), consensus.microdesc_digests()).microdescs)
    selector = PathSelector(consensus, microdescs)
    hexow = {name: next(n for n in selector.nodes if n.nickname == name) for name in HEXOW_EARLIER_MICRODESCS}
    assert not hexow["hexowa"].microdesc.family
    assert selector.in_same_family(hexow["hexowa"], hexow["hexowb"])
    assert selector.in_same_family(hexow["hexowc"], hexow["hexowa"])
    assert "same family" in selector.conflicts(hexow["hexowb"], (hexow["hexowc"],))
    # hexowa is the only middle left: it may not follow its family member hexowb.
    others = {node.relay.rsa_id for node in selector.nodes if node is not hexow["hexowa"]}
    with pytest.raises(NoPathError, match="conflict"):
        selector.choose_middle(random.Random(8), exclude=(hexow["hexowb"],), avoid=others)


def test_family_nicknames_parse_and_match_like_tor():
    fp2 = "02" * 20
    body = (b"onion-key\nntor-onion-key " + base64.b64encode(bytes(32)) + b"\n"
            b"family Relay2 $" + fp2.encode() + b"=relay2 " + ("03" * 20).encode() + b" $" + ("04" * 20).encode()
            + b"~bad-nick twentycharacternick1 relay-5 $0505\n")
    md = parse_microdescriptor(body)
    assert md.family == {fp2, "03" * 20}                     # "$" optional, "=nick" allowed
    assert md.family_nicknames == {"relay2"}                 # lower-cased; malformed members dropped
    relays = [make_relay(1, RUNNING, 10), make_relay(2, RUNNING, 10), make_relay(3, RUNNING, 10)]
    microdescs = {"md1": make_microdesc(1, family_nicknames=["RELAY2", "relay3"]),
                  "md2": make_microdesc(2, family_nicknames=["Relay1"]), "md3": make_microdesc(3)}
    selector = PathSelector(make_consensus(relays), microdescs)
    one, two, three = selector.nodes
    assert selector.in_same_family(one, two) and selector.in_same_family(two, one)
    assert not selector.in_same_family(one, three)           # listed one way only
    off = PathSelector(make_consensus(relays, params={"use-family-lists": 0}), microdescs)
    assert not off.in_same_family(*off.nodes[:2])


def test_a_relay_is_in_the_subnet_of_a_bridges_address():
    """A bridge is in no consensus: its address alone is compared (IPv4 /16, IPv6 /32)."""
    netdir = real_netdir("2017-03-10-bitnym")
    selector = PathSelector(netdir.consensus, netdir.microdescs)
    node = next(node for node in (selector.node(relay.fingerprint) for relay in netdir.consensus.relays)
                if node is not None)
    first, second, third, fourth = node.relay.address.split(".")
    assert node.in_subnet_of(f"{first}.{second}.250.250")
    assert not node.in_subnet_of(f"{first}.{(int(second) + 1) % 256}.{third}.{fourth}")
    assert not node.in_subnet_of("2001:db8::1")
