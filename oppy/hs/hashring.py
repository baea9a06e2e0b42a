"""The HSDir hash ring (rend-spec-v3 2.2.3 [WHERE-HSDESC], 2.2.4.1 [CLIENTFETCH], 2.3.1).

Each relay with the HSDir flag that speaks HSDir=2 and has an Ed25519 identity (from its microdescriptor)
gets an index ``H("node-idx" | ed25519-id | SRV | INT_8(period_num) | INT_8(period_length))``; a service's
descriptor for replica r lives at the relays following ``H("store-at-idx" | blinded-key | INT_8(r) |
INT_8(period_length) | INT_8(period_num))``, the first ``hsdir_spread_fetch`` of them for a client,
relays already chosen for a lower replica skipped (tor ``hs_get_responsible_hsdirs``). A client uses the
current time period and, after a new period began but before the next SRV, the current SRV, else the
previous one (tor ``node_set_hsdir_index``); with no SRV in the consensus, the disaster value.
"""

from __future__ import annotations

import hashlib
import struct
from bisect import bisect_left
from dataclasses import dataclass

from oppy.hs.timeperiod import TimePeriod, consensus_time_period, in_period_between_tp_and_srv
from oppy.netdoc.documents import ConsensusHeader, RelayRecord
from oppy.netdoc.netdir import NetDir
from oppy.netdoc.relay import RelayTarget, relay_target

__all__ = [
    "HSDIR_N_REPLICAS",
    "HSDIR_SPREAD_FETCH",
    "HSDIR_SPREAD_STORE",
    "HSDIR_PROTOCOL",
    "hs_index",
    "hsdir_index",
    "disaster_srv",
    "fetch_srv",
    "HsDirRing",
    "fetch_ring",
    "responsible_hsdirs",
]

#: rend-spec-v3 2.2.3: (consensus parameter, tor's default, low, high); tor HS_DEFAULT_HSDIR_*.
HSDIR_N_REPLICAS = ("hsdir_n_replicas", 2, 1, 16)
HSDIR_SPREAD_FETCH = ("hsdir_spread_fetch", 3, 1, 128)
HSDIR_SPREAD_STORE = ("hsdir_spread_store", 4, 1, 128)
#: rend-spec-v3 2: descriptors go to relays with the HSDir flag and HSDir=2 (tor PROTOVER_HSDIR_V3).
HSDIR_FLAG = "HSDir"
HSDIR_PROTOCOL = ("HSDir", 2)
#: rend-spec-v3 2.2.3 and 2.3.1: the hash prefixes.
HS_INDEX_PREFIX = b"store-at-idx"
HSDIR_INDEX_PREFIX = b"node-idx"
DISASTER_SRV_PREFIX = b"shared-random-disaster"


def _sha3(*parts: bytes) -> bytes:
    return hashlib.sha3_256(b"".join(parts)).digest()


def hs_index(blinded_key: bytes, replica: int, period: TimePeriod) -> bytes:
    """hs_service_index(replica) (tor ``hs_build_hs_index``)."""
    return _sha3(HS_INDEX_PREFIX, blinded_key, struct.pack(">QQQ", replica, period.length, period.number))


def hsdir_index(ed25519_id: bytes, srv: bytes, period: TimePeriod) -> bytes:
    """hs_relay_index(node) (tor ``hs_build_hsdir_index``: period number before length)."""
    return _sha3(HSDIR_INDEX_PREFIX, ed25519_id, srv, struct.pack(">QQ", period.number, period.length))


def disaster_srv(period: TimePeriod) -> bytes:
    """rend-spec-v3 2.3.1: H("shared-random-disaster" | INT_8(period_length) | INT_8(period_num))."""
    return _sha3(DISASTER_SRV_PREFIX, struct.pack(">QQ", period.length, period.number))


def fetch_srv(consensus: ConsensusHeader, period: TimePeriod, testing_network: bool = False) -> bytes:
    """The SRV a client fetches with in ``period``: current between a new period and the next SRV, else
    previous; the disaster value for the period when the consensus lacks that one."""
    if in_period_between_tp_and_srv(consensus, testing_network):
        listed = consensus.shared_random_current
    else:
        listed = consensus.shared_random_previous
    return listed.value if listed is not None else disaster_srv(period)


def _param(netdir: NetDir, spec: tuple[str, int, int, int]) -> int:
    name, default, low, high = spec
    return netdir.param(name, default, low, high)


def _is_v3_hsdir(relay: RelayRecord) -> bool:
    return HSDIR_FLAG in relay.flags and relay.supports_protocol(*HSDIR_PROTOCOL)


@dataclass(frozen=True, slots=True)
class HsDirRing:
    """The HSDirs of one NetDir sorted by their index for one period and SRV."""

    period: TimePeriod
    srv: bytes
    indices: tuple[bytes, ...]
    relays: tuple[RelayTarget, ...]
    n_replicas: int
    spread_fetch: int

    def index_of(self, rsa_id: bytes) -> bytes | None:
        """The hsdir_index of the relay with this identity on the ring, None if it is not on it."""
        for index, relay in zip(self.indices, self.relays):
            if relay.rsa_id == rsa_id:
                return index
        return None

    def responsible(self, blinded_key: bytes, spread: int | None = None) -> list[RelayTarget]:
        """For each replica, the first ``spread`` (default ``hsdir_spread_fetch``) relays at or after
        its hs_index, wrapping around, skipping relays a lower replica chose."""
        spread = self.spread_fetch if spread is None else spread
        chosen: list[RelayTarget] = []
        taken: set[int] = set()
        count = len(self.relays)
        for replica in range(1, self.n_replicas + 1):
            start = bisect_left(self.indices, hs_index(blinded_key, replica, self.period))
            position = start % count if count else 0
            added = 0
            for step in range(count):
                if added >= spread:
                    break
                slot = (position + step) % count
                if slot not in taken:
                    taken.add(slot)
                    chosen.append(self.relays[slot])
                    added += 1
        return chosen


def fetch_ring(netdir: NetDir, testing_network: bool = False) -> HsDirRing:
    """The ring a client fetches descriptors from with this NetDir (built once per NetDir)."""
    return netdir.derived(("hs.fetch_ring", testing_network), lambda: _build_ring(netdir, testing_network))


def _build_ring(netdir: NetDir, testing_network: bool) -> HsDirRing:
    consensus = netdir.consensus
    period = consensus_time_period(consensus, testing_network)
    srv = fetch_srv(consensus, period, testing_network)
    entries = []
    for relay in consensus.relays:
        if not _is_v3_hsdir(relay):
            continue
        microdesc = netdir.microdesc_of(relay)
        if microdesc is None or microdesc.ed25519_id is None:
            continue   # tor node_has_hsdir_index: no index without the descriptor's Ed25519 identity
        entries.append((hsdir_index(microdesc.ed25519_id, srv, period), relay_target(relay, microdesc)))
    entries.sort(key=lambda entry: entry[0])
    return HsDirRing(period, srv, tuple(index for index, _ in entries), tuple(target for _, target in entries),
                     _param(netdir, HSDIR_N_REPLICAS), _param(netdir, HSDIR_SPREAD_FETCH))


def responsible_hsdirs(netdir: NetDir, blinded_key: bytes, testing_network: bool = False) -> list[RelayTarget]:
    """The HSDirs a client may ask for the descriptor under ``blinded_key``, in ring order (replica 1's
    first); the caller picks among them and retries the others."""
    return fetch_ring(netdir, testing_network).responsible(blinded_key)
