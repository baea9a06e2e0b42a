"""The HSDir hash ring: tor's test_hs_indexes vectors, the shared random values of real consensuses, the
disaster value on the test network's (which has none), the ring on the real 2022 directory checked
against a brute-force reading of rend-spec-v3 2.2.3 written here, and the private network's ring as a
C tor 0.4.9 client computed it (every HSDIR_INDEX and responsible HSDir it named)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import struct
from pathlib import Path
from types import MappingProxyType

import pytest

from oppy.control.events import hs_desc_event
from oppy.hs.address import parse_onion_address
from oppy.hs.hashring import (
    HsDirRing,
    disaster_srv,
    fetch_ring,
    fetch_srv,
    hs_index,
    hsdir_index,
    responsible_hsdirs,
)
from oppy.hs.keys import blinded_public_key
from oppy.hs.timeperiod import TimePeriod, consensus_time_period
from oppy.netdoc.documents import (
    ConsensusParseError,
    SharedRandomValue,
    parse_consensus,
    parse_consensus_header,
    parse_microdescriptors,
)
from oppy.netdoc.netdir import NetDir
from oppy.netdoc.relay import RelayTarget
from tests.support.testdata import REAL_DIRECTORY, real_netdir

CONSENSUS_2024 = REAL_DIRECTORY / "2024-05-17-aziz" / "cached-microdesc-consensus"


def test_tor_hs_index_vectors():
    # tor test_hs_common.c test_hs_indexes: key 32 x 0x42, SRV 32 x 0x43, period 42 of 1440 minutes.
    period = TimePeriod(42, 1440, 43200)
    assert hs_index(b"\x42" * 32, 1, period).hex() == \
        "37e5cbbd56a22823714f18f1623ece5983a0d64c78495a8cfab854245e5f9a8a"
    assert hsdir_index(b"\x42" * 32, b"\x43" * 32, period).hex() == \
        "db475361014a09965e7e5e4d4a25b8f8d4b8f16cb1d8a7e95eed50249cc1a2d5"


def test_disaster_srv_is_the_spec_hash():
    period = TimePeriod(3742692, 8, 240)
    assert disaster_srv(period) == hashlib.sha3_256(
        b"shared-random-disaster" + struct.pack(">QQ", 8, 3742692)).digest()
    assert disaster_srv(period) != disaster_srv(period.next())


def test_the_consensus_lists_its_shared_random_values():
    header = parse_consensus_header(CONSENSUS_2024.read_bytes())
    assert header.shared_random_current == SharedRandomValue(
        8, bytes.fromhex("4285a3fd98739d4eb89f0f0c3335f212ca9f40882259e03a78702eedf2dc0b00"))
    assert header.shared_random_previous.num_reveals == 8
    assert header.shared_random_previous.value.hex().startswith("83447f65")


@pytest.mark.parametrize("line, expected", [
    # a value that does not decode is ignored, as tor's sr_parse_srv ignores it
    ("shared-rand-current-value 8 notbase64!", None),
    ("shared-rand-current-value 8 QoWj/ZhznU64nw8MMzXyEsqfQIgiWeA6eHAu7fLcCw==", None),
    ("shared-rand-current-value x QoWj/ZhznU64nw8MMzXyEsqfQIgiWeA6eHAu7fLcCwA=", None),
    ("shared-rand-current-value 3 QoWj/ZhznU64nw8MMzXyEsqfQIgiWeA6eHAu7fLcCwA=",
     SharedRandomValue(3, bytes.fromhex("4285a3fd98739d4eb89f0f0c3335f212ca9f40882259e03a78702eedf2dc0b00"))),
])
def test_shared_random_value_lines(line, expected):
    data = CONSENSUS_2024.read_bytes().replace(
        b"shared-rand-current-value 8 QoWj/ZhznU64nw8MMzXyEsqfQIgiWeA6eHAu7fLcCwA=", line.encode())
    assert parse_consensus_header(data).shared_random_current == expected


@pytest.mark.parametrize("line", [
    # tor's tokenizer: exactly two arguments, at most one line of each
    b"shared-rand-current-value 8",
    b"shared-rand-current-value 8 QoWj/ZhznU64nw8MMzXyEsqfQIgiWeA6eHAu7fLcCwA= extra",
    b"shared-rand-current-value 8 QoWj/ZhznU64nw8MMzXyEsqfQIgiWeA6eHAu7fLcCwA=\n"
    b"shared-rand-current-value 8 QoWj/ZhznU64nw8MMzXyEsqfQIgiWeA6eHAu7fLcCwA=",
])
def test_malformed_shared_random_lines_are_errors(line):
    data = CONSENSUS_2024.read_bytes().replace(
        b"shared-rand-current-value 8 QoWj/ZhznU64nw8MMzXyEsqfQIgiWeA6eHAu7fLcCwA=", line)
    with pytest.raises(ConsensusParseError):
        parse_consensus_header(data)


def test_the_client_fetches_with_the_current_srv_between_a_new_period_and_the_next_srv():
    header = parse_consensus_header(CONSENSUS_2024.read_bytes())
    # valid-after 2024-05-17 17:00: period 19860 began at 12:00, the next SRV comes at 00:00
    period = consensus_time_period(header)
    assert period.number == 19860
    assert fetch_srv(header, period) == header.shared_random_current.value
    # at 01:00 the next day (after the SRV, before the period turns at 12:00): the previous SRV
    after_srv = dataclasses.replace(header, valid_after=header.valid_after + 8 * 3600,
                                    fresh_until=header.fresh_until + 8 * 3600)
    assert fetch_srv(after_srv, consensus_time_period(after_srv)) == header.shared_random_previous.value


def test_without_shared_random_values_the_disaster_value_is_used():
    netdir = real_netdir("testnet-0.4.9.11")
    assert netdir.consensus.shared_random_current is None
    ring = fetch_ring(netdir, testing_network=True)
    assert ring.period.length == 8
    assert ring.srv == disaster_srv(ring.period)


def _expected_ring(netdir: NetDir, srv: bytes, period: TimePeriod) -> list[tuple[bytes, bytes]]:
    """(index, RSA id) of every v3 HSDir, sorted, from the spec's formula."""
    entries = []
    for relay in netdir.consensus.relays:
        microdesc = netdir.microdesc_of(relay)
        if "HSDir" not in relay.flags or 2 not in relay.protocols.get("HSDir", ()) \
                or microdesc is None or microdesc.ed25519_id is None:
            continue
        index = hashlib.sha3_256(b"node-idx" + microdesc.ed25519_id + srv
                                 + period.number.to_bytes(8, "big") + period.length.to_bytes(8, "big")).digest()
        entries.append((index, relay.rsa_id))
    return sorted(entries)


def test_the_ring_of_the_real_2022_directory():
    netdir = real_netdir("2022-11-19-safetor")
    ring = fetch_ring(netdir)
    assert fetch_ring(netdir) is ring                        # once per NetDir
    # valid-after 2022-11-19 10:00: period 19314 (from 2022-11-18 12:00), after the SRV: the previous one
    assert ring.period == TimePeriod(19314, 1440, 43200)
    assert ring.srv == netdir.consensus.shared_random_previous.value
    expected = _expected_ring(netdir, ring.srv, ring.period)
    assert len(expected) > 600
    assert [target.rsa_id for target in ring.relays] == [rsa_id for _, rsa_id in expected]

    blinded = bytes(range(32))
    chosen = responsible_hsdirs(netdir, blinded)
    wanted: list[bytes] = []
    for replica in (1, 2):
        start = hs_index(blinded, replica, ring.period)
        order = [rsa_id for index, rsa_id in expected if index >= start] + \
                [rsa_id for index, rsa_id in expected if index < start]
        wanted += [rsa_id for rsa_id in order if rsa_id not in wanted][:3]
    assert [target.rsa_id for target in chosen] == wanted
    assert len(set(wanted)) == 6
    assert all(target.ntor_onion_key is not None for target in chosen)


def _tiny_ring(count: int, n_replicas: int = 2, spread: int = 3) -> HsDirRing:
    period = TimePeriod(1, 1440, 43200)
    targets = tuple(RelayTarget(f"r{n}", bytes([n]) * 20, "127.0.0.1", 9000 + n) for n in range(count))
    indices = tuple(bytes([n * 40]) + bytes(31) for n in range(count))
    return HsDirRing(period, bytes(32), indices, targets, n_replicas, spread)


def test_replicas_skip_relays_already_chosen_and_a_small_ring_is_used_whole():
    ring = _tiny_ring(4)
    chosen = ring.responsible(bytes(32))
    assert len(chosen) == 4 and len(set(chosen)) == 4
    assert ring.responsible(bytes(32), spread=1) != []
    assert _tiny_ring(0).responsible(bytes(32)) == []


def test_consensus_parameters_set_replicas_and_spread_within_tors_bounds():
    netdir = real_netdir("testnet-0.4.9.11")
    params = dict(netdir.consensus.params, hsdir_n_replicas=1, hsdir_spread_fetch=500)
    consensus = dataclasses.replace(netdir.consensus, params=MappingProxyType(params))
    ring = fetch_ring(NetDir(consensus, netdir.microdescs), testing_network=True)
    assert (ring.n_replicas, ring.spread_fetch) == (1, 128)
    assert len(ring.responsible(bytes(32))) == len(ring.relays) == 10


def _hsfetch_capture(name: str) -> tuple[dict, NetDir]:
    """A C tor 0.4.9 client's HSFETCH walk over every responsible HSDir, with the consensus it used."""
    capture = json.loads((Path(__file__).resolve().parent / "data" / "onion_service" / name).read_text())
    consensus = parse_consensus(capture["consensus"].encode())
    microdescs = parse_microdescriptors(capture["microdescs"].encode(), consensus.microdesc_digests()).microdescs
    return capture, NetDir(consensus, microdescs)


@pytest.mark.parametrize("capture_file, srv", [("hsfetch.json", "current"), ("hsfetch_previous_srv.json", "previous")])
@pytest.mark.parametrize("address", [
    "3eqe6bz7i7fffkn55didvjh7szwyhpkcwnbwujeo4alm5xqv62nbssyd",
    "deng2aefzn7mxh6tzaib5eecnairjirotrgp4krcs32klajtj2t2z3yd",
])
def test_the_ring_is_c_tors_on_the_private_network(capture_file, srv, address):
    capture, netdir = _hsfetch_capture(capture_file)
    ring = fetch_ring(netdir, testing_network=True)
    assert ring.srv == getattr(netdir.consensus, f"shared_random_{srv}").value   # real SRVs, not the disaster one
    blinded = blinded_public_key(parse_onion_address(address + ".onion").identity_key, ring.period)
    # HS_DESC REQUESTED <address> NO_AUTH $FP~nick <descriptor id> HSDIR_INDEX=<hex>
    requested = [event.split() for event in capture["events"] if event.split()[2] == address]
    assert {fields[5] for fields in requested} == {base64.b64encode(blinded).decode().rstrip("=")}
    tor_indices = {fields[4][1:41]: fields[6].removeprefix("HSDIR_INDEX=") for fields in requested}
    ours = {target.fingerprint: index.hex().upper() for index, target in zip(ring.indices, ring.relays)}
    assert {fingerprint: ours[fingerprint] for fingerprint in tor_indices} == tor_indices
    assert {target.fingerprint for target in ring.responsible(blinded)} == set(tor_indices)


@pytest.mark.parametrize("capture_file", ["hsfetch.json", "hsfetch_previous_srv.json"])
def test_hs_desc_requested_is_c_tors_event_with_its_hsdir_index(capture_file):
    capture, netdir = _hsfetch_capture(capture_file)
    ring = fetch_ring(netdir, testing_network=True)
    requested = [event for event in capture["events"] if event.startswith("HS_DESC REQUESTED ")]
    assert requested
    for event in requested:
        _, _, address, _, hsdir, ident, _ = event.split()
        index = ring.index_of(bytes.fromhex(hsdir[1:41]))
        assert hs_desc_event("REQUESTED", address, hsdir, ident, hsdir_index=index) == f"650 {event}\r\n".encode()
    assert ring.index_of(bytes(20)) is None
