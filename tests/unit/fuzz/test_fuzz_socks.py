"""Fuzz targets for SOCKS4, 4a and 5: the message parsers and SocksServerConnection.

Bytes from a local application, cut anywhere: the connection ends in exactly one outcome (a request or
a failure whose reply is already queued) or still waits, never raises, never buffers more than one
handshake message, and the outcome does not depend on how the bytes were cut.
"""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from oppy.socks.messages import (
    MAX_HANDSHAKE_MESSAGE_LEN,
    SocksEncodeError,
    SocksProtocolError,
    parse_socks4_request,
    parse_socks5_greeting,
    parse_socks5_request,
    parse_socks5_userpass_auth,
)
from oppy.socks.protocol import SocksFailure, SocksRequest, SocksServerConnection, SocksState, SocksStateError
from tests.unit.fuzz.budget import FUZZ
from tests.unit.fuzz.strategies import chunked, cuts, seeds_mutated_or_random

NO_AUTH = b"\x05\x01\x00"
USER_PASS = b"\x05\x01\x02"
BOTH = b"\x05\x02\x00\x02"


def _userpass(username: bytes, password: bytes) -> bytes:
    return bytes((1, len(username))) + username + bytes((len(password),)) + password


def _socks5(command: int, atyp: int, address: bytes, port: int) -> bytes:
    return bytes((5, command, 0, atyp)) + address + struct.pack("!H", port)


# Well-formed conversations of every kind the server accepts (and tor's RESOLVE/RESOLVE_PTR).
SEED_CONVERSATIONS: tuple[bytes, ...] = (
    NO_AUTH + _socks5(0x01, 3, b"\x0bexample.com", 443),
    NO_AUTH + _socks5(0x01, 1, bytes((93, 184, 216, 34)), 80) + b"GET / HTTP/1.0\r\n\r\n",
    NO_AUTH + _socks5(0x01, 4, bytes(15) + b"\x01", 22),
    NO_AUTH + _socks5(0xF0, 3, b"\x0bexample.com", 0),
    NO_AUTH + _socks5(0xF1, 1, bytes((1, 2, 3, 4)), 0),
    USER_PASS + _userpass(b"user", b"secret") + _socks5(0x01, 3, b"\x08host.onion", 80),
    BOTH + _userpass(b"<torS0X>0", b"") + _socks5(0x01, 3, b"\x04a.b.", 80),
    b"\x04\x01\x00\x50\x01\x02\x03\x04userid\x00",
    b"\x04\x01\x01\xbb\x00\x00\x00\x01\x00example.com\x00",
    b"\x04\xf0\x00\x00\x00\x00\x00\x01id\x00example.com\x00",
    b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
)
conversations = seeds_mutated_or_random(SEED_CONVERSATIONS, max_random=700)


def _run(pieces: list[bytes], prefer_no_auth: bool):
    """Feed ``pieces``; check the invariants after each; return (events, replies, trailing data)."""
    connection = SocksServerConnection(prefer_no_auth=prefer_no_auth)
    events, replies = [], b""
    for piece in pieces:
        new_events = connection.feed(piece)
        assert all(isinstance(event, (SocksRequest, SocksFailure)) for event in new_events)
        events += new_events
        assert connection.buffered_handshake_bytes <= MAX_HANDSHAKE_MESSAGE_LEN
        replies += connection.data_to_send()
    assert len(events) <= 1
    if not events:
        assert connection.state is SocksState.HANDSHAKE
    elif isinstance(events[0], SocksFailure):
        assert connection.should_close and replies.endswith(events[0].reply)
    else:
        assert connection.state is SocksState.REQUEST_RECEIVED and connection.request == events[0]
    return connection, events, replies


@FUZZ
@given(data=conversations, cut_points=cuts, prefer_no_auth=st.booleans())
def test_connection_ends_in_one_outcome_however_the_bytes_are_cut(data, cut_points, prefer_no_auth):
    whole, events, replies = _run([data], prefer_no_auth)
    cut, cut_events, cut_replies = _run(chunked(data, cut_points), prefer_no_auth)
    assert cut_events == events and cut_replies == replies
    assert cut.trailing_data == whole.trailing_data


@FUZZ
@given(data=conversations, outcome=st.sampled_from(["connected", "address", "hostname", "failed", "end"]),
       answer=st.one_of(st.sampled_from(["1.2.3.4", "::1", "example.com"]), st.text(max_size=20)),
       reason=st.integers(min_value=0, max_value=300))
def test_replies_to_whatever_was_received_raise_only_their_own_errors(data, outcome, answer, reason):
    connection, events, _ = _run([data], prefer_no_auth=False)
    has_request = bool(events) and isinstance(events[0], SocksRequest)
    try:
        if outcome == "connected":
            connection.reply_connect_succeeded()
        elif outcome == "address":
            connection.reply_resolved_address(answer)
        elif outcome == "hostname":
            connection.reply_resolved_hostname(answer)
        elif outcome == "failed":
            connection.reply_failed(reason % 256)
        else:
            connection.reply_failed_for_end_reason(reason)
    except SocksStateError:  # no request, or a reply that does not fit its command
        assert not has_request or outcome in ("connected", "address", "hostname")
        return
    except SocksEncodeError:  # a resolved "address" that is not one
        assert outcome == "address"
        return
    assert has_request and connection.data_to_send()


@FUZZ
@given(st.binary(max_size=600))
def test_message_parsers_raise_only_their_own_error(data):
    for parser, version in ((parse_socks4_request, b"\x04"), (parse_socks5_greeting, b"\x05"),
                            (parse_socks5_userpass_auth, b"\x01"), (parse_socks5_request, b"\x05")):
        for message in (data, version + data):
            try:
                result = parser(message)
            except SocksProtocolError:
                continue
            if result is not None:
                _parsed, consumed = result
                assert 0 < consumed <= len(message)
