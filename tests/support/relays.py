"""The private network as a NetDir and its relays as RelayTargets: the consensus and microdescriptors
fetched from an authority's DirPort (a plain HTTP fetch, as a test helper; the daemon has its own
directory client)."""

from __future__ import annotations

import urllib.request

from oppy.netdoc.documents import parse_consensus, parse_microdescriptors
from oppy.netdoc.netdir import NetDir
from oppy.netdoc.relay import RelayTarget
from tests.support.network import TestNetwork

MICRODESCS_PER_REQUEST = 92  # dir-spec: at most 92 digests per request


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=20) as response:
        return response.read()


def network_netdir(network: TestNetwork) -> NetDir:
    """The network's current consensus with its microdescriptors (not verified: a test helper)."""
    authority = network.relays("authority")[0]
    base = f"http://127.0.0.1:{authority['ports']['dir']}"
    consensus = parse_consensus(fetch(f"{base}/tor/status-vote/current/consensus-microdesc"))
    digests = [r.microdesc_digest for r in consensus.relays]
    microdescs = {}
    for start in range(0, len(digests), MICRODESCS_PER_REQUEST):
        chunk = digests[start:start + MICRODESCS_PER_REQUEST]
        batch = parse_microdescriptors(fetch(f"{base}/tor/micro/d/{'-'.join(chunk)}"), wanted=set(chunk))
        microdescs.update(batch.microdescs)
    return NetDir(consensus, microdescs)


def relay_targets(network: TestNetwork) -> dict[str, RelayTarget]:
    """nickname -> RelayTarget for every relay of the network's current consensus."""
    netdir = network_netdir(network)
    return {relay.nickname: netdir.relay_target(relay.rsa_id) for relay in netdir.consensus.relays}
