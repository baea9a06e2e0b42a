"""SocksPort NoIPv4Traffic / NoIPv6Traffic / NoDNSRequest (and OnionTrafficOnly, which clears all three):
requests the port does not take are refused before any stream exists (tor's END_STREAM_REASON_ENTRYPOLICY)."""

from __future__ import annotations

import pytest

from oppy.config.options import DEFAULT_SOCKS_FLAGS
from oppy.socks.messages import Socks5Reply
from tests.unit.test_socks_onion import GOOD, RecordingConnector, client, reply_code, socks5_connect

ONION_ONLY = DEFAULT_SOCKS_FLAGS - {"IPv4Traffic", "IPv6Traffic", "DNSRequest"}


@pytest.mark.parametrize(("flags", "target"), [
    (ONION_ONLY, "example.com"),
    (ONION_ONLY, "192.0.2.7"),
    (ONION_ONLY, "2001:db8::7"),
    (DEFAULT_SOCKS_FLAGS - {"DNSRequest"}, "example.com"),
    (DEFAULT_SOCKS_FLAGS - {"IPv4Traffic"}, "192.0.2.7"),
    (DEFAULT_SOCKS_FLAGS - {"IPv6Traffic"}, "[2001:db8::7]"),
])
def test_traffic_the_port_does_not_take_never_reaches_the_manager(flags, target):
    protocol, transport, manager = client(flags)
    protocol.dataReceived(socks5_connect(target))
    assert reply_code(transport) == Socks5Reply.NOT_ALLOWED
    assert manager.requests == []


def test_onion_traffic_only_still_takes_onion_names():
    connector = RecordingConnector()
    protocol, transport, manager = client(ONION_ONLY, connector)
    protocol.dataReceived(socks5_connect(GOOD))
    assert [address.hostname for address, _, _ in connector.opened] == [GOOD]
    assert manager.requests == []
