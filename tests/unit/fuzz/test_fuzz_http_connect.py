"""Fuzz target for the HTTPTunnelPort parser: whatever a local application sends, cut anywhere, the connection
never raises, ends in at most one outcome whose answer is queued, never holds more than one request head, and the
outcome does not depend on how the bytes were cut."""

from __future__ import annotations

from hypothesis import given

from oppy.socks.http_connect import MAX_HEAD_LEN, HttpConnectServerConnection
from oppy.socks.protocol import SocksFailure, SocksRequest
from tests.unit.fuzz.budget import FUZZ
from tests.unit.fuzz.strategies import chunked, cuts, seeds_mutated_or_random

SEEDS = [
    b"CONNECT web.test:80 HTTP/1.1\r\nHost: web.test:80\r\n\r\n",
    b"CONNECT [::1]:443 HTTP/1.0\r\nProxy-Authorization: Basic eC10b3I6cHc=\r\nTor-Stream-Isolation: a\r\n\r\nxyz",
    b"GET http://web.test/ HTTP/1.1\r\nHost: web.test\r\n\r\n",
    b"CONNECT web.test HTTP/1.1\r\n\r\n",
]


def outcome(pieces: list[bytes]):
    connection = HttpConnectServerConnection()
    events = []
    for piece in pieces:
        events += connection.feed(piece)
        assert connection.buffered_head_bytes <= MAX_HEAD_LEN + len(piece)
    assert len(events) <= 1
    if events and isinstance(events[0], SocksFailure):
        assert connection.should_close and connection.data_to_send() == events[0].reply != b""
    elif events:
        assert isinstance(events[0], SocksRequest) and not connection.should_close
    return events, connection.take_trailing_data()


@FUZZ
@given(data=seeds_mutated_or_random(SEEDS, max_random=600), cut_points=cuts)
def test_any_bytes_any_cuts_one_outcome(data, cut_points):
    assert outcome(chunked(data, cut_points)) == outcome([data])
