"""SocksServerConnection: every handshake from bytes in any fragmentation, every refusal with
its exact reply bytes, the caller's replies, and property tests on hostile input."""

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oppy.cell.commands import EndReason
from oppy.socks.messages import (
    MAX_HANDSHAKE_MESSAGE_LEN,
    NOT_AN_HTTP_PROXY_RESPONSE,
    AddressType,
    LocalEndReason,
    Socks5Reply,
    SocksCommand,
    SocksEncodeError,
)
from oppy.socks.protocol import (
    SocksFailure,
    SocksRequest,
    SocksServerConnection,
    SocksState,
    SocksStateError,
)
from tests.unit.fuzz.strategies import chunked

# --- a test-side SOCKS client: builds the bytes a real client would send ----------------------

CONNECT, RESOLVE, RESOLVE_PTR = 0x01, 0xF0, 0xF1
BIND, UDP_ASSOCIATE = 0x02, 0x03


def socks4(command, port, ip, userid=b""):
    return struct.pack("!BBH", 4, command, port) + ipaddress.IPv4Address(ip).packed + userid + b"\0"


def socks4a(command, port, hostname, userid=b"", marker=1):
    header = struct.pack("!BBHI", 4, command, port, marker)
    return header + userid + b"\0" + hostname + b"\0"


def greeting(*methods):
    return bytes((5, len(methods), *methods))


def userpass(username, password):
    return bytes((1, len(username))) + username + bytes((len(password),)) + password


def socks5(command, atyp, address, port):
    if atyp == 1:
        body = ipaddress.IPv4Address(address).packed
    elif atyp == 4:
        body = ipaddress.IPv6Address(address).packed
    elif atyp == 3:
        body = bytes((len(address),)) + address
    else:
        body = address
    return bytes((5, command, 0, atyp)) + body + struct.pack("!H", port)


NO_AUTH = greeting(0)
USER_PASS = greeting(2)
ZEROS = b"\x00\x00\x00\x00\x00\x00"
SOCKS4_REJECTED = b"\x00\x5b" + ZEROS


def socks5_failure(code):
    return bytes((5, code, 0, 1)) + ZEROS


def request(version, command, address, address_type, port, username=b"", password=b""):
    return SocksRequest(
        version, SocksCommand(command), address, AddressType(address_type), port, username,
        password,
    )


# (name, client bytes, expected event, expected reply bytes, expected trailing data)
HANDSHAKES = [
    ("socks4 connect ipv4 with userid",
     socks4(CONNECT, 80, "93.184.216.34", b"alice"),
     request(4, CONNECT, "93.184.216.34", 1, 80, b"alice"), b"", b""),
    ("socks4 connect empty userid",
     socks4(CONNECT, 443, "1.2.3.4"),
     request(4, CONNECT, "1.2.3.4", 1, 443), b"", b""),
    ("socks4 resolve ipv4",
     socks4(RESOLVE, 0, "1.2.3.4"),
     request(4, RESOLVE, "1.2.3.4", 1, 0), b"", b""),
    ("socks4a connect hostname with userid",
     socks4a(CONNECT, 80, b"example.com", b"bob"),
     request(4, CONNECT, "example.com", 3, 80, b"bob"), b"", b""),
    ("socks4a connect hostname, marker 0.0.0.255",
     socks4a(CONNECT, 80, b"example.com", marker=255),
     request(4, CONNECT, "example.com", 3, 80), b"", b""),
    ("socks4a resolve hostname port 0",
     socks4a(RESOLVE, 0, b"torproject.org", b"id"),
     request(4, RESOLVE, "torproject.org", 3, 0, b"id"), b"", b""),
    ("socks4a ipv6 literal as hostname",
     socks4a(CONNECT, 22, b"[2001:DB8::1]"),
     request(4, CONNECT, "2001:db8::1", 4, 22), b"", b""),
    ("socks4 with optimistic data",
     socks4a(CONNECT, 80, b"example.com") + b"GET / HTTP/1.0\r\n\r\n",
     request(4, CONNECT, "example.com", 3, 80), b"", b"GET / HTTP/1.0\r\n\r\n"),
    ("socks5 no-auth connect ipv4",
     NO_AUTH + socks5(CONNECT, 1, "198.51.100.7", 80),
     request(5, CONNECT, "198.51.100.7", 1, 80), b"\x05\x00", b""),
    ("socks5 no-auth connect ipv6",
     NO_AUTH + socks5(CONNECT, 4, "2001:db8::7", 443),
     request(5, CONNECT, "2001:db8::7", 4, 443), b"\x05\x00", b""),
    ("socks5 no-auth connect hostname",
     NO_AUTH + socks5(CONNECT, 3, b"www.example.org", 8080),
     request(5, CONNECT, "www.example.org", 3, 8080), b"\x05\x00", b""),
    ("socks5 hostname that is an ipv4 literal",
     NO_AUTH + socks5(CONNECT, 3, b"10.0.0.1", 80),
     request(5, CONNECT, "10.0.0.1", 1, 80), b"\x05\x00", b""),
    ("socks5 user/pass connect",
     USER_PASS + userpass(b"user", b"secret") + socks5(CONNECT, 3, b"example.com", 443),
     request(5, CONNECT, "example.com", 3, 443, b"user", b"secret"), b"\x05\x02\x01\x00", b""),
    ("socks5 user/pass both empty",
     USER_PASS + userpass(b"", b"") + socks5(CONNECT, 1, "1.2.3.4", 80),
     request(5, CONNECT, "1.2.3.4", 1, 80), b"\x05\x02\x01\x00", b""),
    ("socks5 user/pass empty username",
     USER_PASS + userpass(b"", b"pw") + socks5(CONNECT, 1, "1.2.3.4", 80),
     request(5, CONNECT, "1.2.3.4", 1, 80, b"", b"pw"), b"\x05\x02\x01\x00", b""),
    ("socks5 user/pass empty password, binary username",
     USER_PASS + userpass(b"\x00\xff", b"") + socks5(CONNECT, 1, "1.2.3.4", 80),
     request(5, CONNECT, "1.2.3.4", 1, 80, b"\x00\xff", b""), b"\x05\x02\x01\x00", b""),
    ("socks5 max-length credentials",
     USER_PASS + userpass(b"u" * 255, b"p" * 255) + socks5(CONNECT, 1, "1.2.3.4", 80),
     request(5, CONNECT, "1.2.3.4", 1, 80, b"u" * 255, b"p" * 255), b"\x05\x02\x01\x00", b""),
    ("socks5 offers both methods, tor picks user/pass",
     greeting(0, 1, 2) + userpass(b"a", b"b") + socks5(CONNECT, 1, "1.2.3.4", 80),
     request(5, CONNECT, "1.2.3.4", 1, 80, b"a", b"b"), b"\x05\x02\x01\x00", b""),
    ("socks5 prop 351 format 0 username",
     USER_PASS + userpass(b"<torS0X>0", b"isolation") + socks5(CONNECT, 1, "1.2.3.4", 80),
     request(5, CONNECT, "1.2.3.4", 1, 80, b"<torS0X>0", b"isolation"), b"\x05\x02\x01\x00",
     b""),
    ("socks5 unrequested user/pass after no-auth (C tor allows)",
     NO_AUTH + userpass(b"late", b"pw") + socks5(CONNECT, 1, "1.2.3.4", 80),
     request(5, CONNECT, "1.2.3.4", 1, 80, b"late", b"pw"), b"\x05\x00\x01\x00", b""),
    ("socks5 resolve hostname",
     NO_AUTH + socks5(RESOLVE, 3, b"torproject.org", 0),
     request(5, RESOLVE, "torproject.org", 3, 0), b"\x05\x00", b""),
    ("socks5 resolve_ptr ipv4",
     NO_AUTH + socks5(RESOLVE_PTR, 1, "192.0.2.1", 0),
     request(5, RESOLVE_PTR, "192.0.2.1", 1, 0), b"\x05\x00", b""),
    ("socks5 resolve_ptr ipv6",
     NO_AUTH + socks5(RESOLVE_PTR, 4, "2001:db8::53", 0),
     request(5, RESOLVE_PTR, "2001:db8::53", 4, 0), b"\x05\x00", b""),
    ("socks5 resolve_ptr ip literal in hostname field",
     NO_AUTH + socks5(RESOLVE_PTR, 3, b"192.0.2.1", 0),
     request(5, RESOLVE_PTR, "192.0.2.1", 1, 0), b"\x05\x00", b""),
    ("socks5 with optimistic data",
     NO_AUTH + socks5(CONNECT, 3, b"example.com", 80) + b"\x05\x01\x00GET",
     request(5, CONNECT, "example.com", 3, 80), b"\x05\x00", b"\x05\x01\x00GET"),
]


def feed_in_pieces(pieces):
    """Feed `pieces` one by one; return (events, all reply bytes, connection)."""
    connection = SocksServerConnection()
    events, replies = [], b""
    for piece in pieces:
        events += connection.feed(piece)
        replies += connection.data_to_send()
    return events, replies, connection


def splits(data):
    """Every way to cut `data` in two, plus one byte at a time."""
    for cut in range(len(data) + 1):
        yield [data[:cut], data[cut:]]
    yield [data[i : i + 1] for i in range(len(data))]


@pytest.mark.parametrize(("name", "data", "event", "reply", "trailing"), HANDSHAKES,
                         ids=[case[0] for case in HANDSHAKES])
def test_handshake_at_every_split(name, data, event, reply, trailing):
    for pieces in splits(data):
        events, replies, connection = feed_in_pieces(pieces)
        assert events == [event], pieces
        assert replies == reply
        assert connection.trailing_data == trailing
        assert connection.request == event
        assert connection.state is SocksState.REQUEST_RECEIVED
        assert not connection.should_close
        assert connection.buffered_handshake_bytes == 0


@pytest.mark.parametrize(("name", "data", "event", "reply", "trailing"), HANDSHAKES,
                         ids=[case[0] for case in HANDSHAKES])
def test_truncated_handshake_waits(name, data, event, reply, trailing):
    for cut in range(len(data) - len(trailing)):
        connection = SocksServerConnection()
        assert connection.feed(data[:cut]) == []
        assert not connection.should_close
        assert connection.state is SocksState.HANDSHAKE


# (name, client bytes, reply bytes the client must see in total)
REFUSALS = [
    ("socks5 bind", NO_AUTH + socks5(BIND, 1, "1.2.3.4", 80), b"\x05\x00" + socks5_failure(7)),
    ("socks5 udp associate", NO_AUTH + socks5(UDP_ASSOCIATE, 1, "0.0.0.0", 0),
     b"\x05\x00" + socks5_failure(7)),
    ("socks5 unknown command", NO_AUTH + socks5(0x04, 3, b"example.com", 80),
     b"\x05\x00" + socks5_failure(7)),
    ("socks5 bad atyp", NO_AUTH + b"\x05\x01\x00\x02", b"\x05\x00" + socks5_failure(8)),
    ("socks5 atyp 0x23 (C tor test)", NO_AUTH + b"\x05\x01\x00\x23\x02\x02\x02\x02\x11\x11",
     b"\x05\x00" + socks5_failure(8)),
    ("socks5 resolve_ptr of a hostname", NO_AUTH + socks5(RESOLVE_PTR, 3, b"torproject.org", 0),
     b"\x05\x00" + socks5_failure(8)),
    ("socks5 reserved byte not zero", NO_AUTH + b"\x05\x01\x01\x01\x01\x02\x03\x04\x00\x50",
     b"\x05\x00" + socks5_failure(1)),
    ("socks5 request with wrong version", NO_AUTH + socks4(CONNECT, 80, "1.2.3.4"),
     b"\x05\x00" + socks5_failure(1)),
    ("socks5 empty hostname", NO_AUTH + socks5(CONNECT, 3, b"", 80),
     b"\x05\x00" + socks5_failure(1)),
    ("socks5 malformed hostname", NO_AUTH + socks5(CONNECT, 3, b"---", 80),
     b"\x05\x00" + socks5_failure(1)),
    ("socks5 quotes hostname (C tor test)", NO_AUTH + socks5(CONNECT, 3, b'"""""".com', 80),
     b"\x05\x00" + socks5_failure(1)),
    ("socks5 non-ascii hostname", NO_AUTH + socks5(CONNECT, 3, "bücher.de".encode(), 80),
     b"\x05\x00" + socks5_failure(1)),
    ("socks5 control char hostname", NO_AUTH + socks5(CONNECT, 3, b"exa\nmple.com", 80),
     b"\x05\x00" + socks5_failure(1)),
    ("socks5 nul in hostname", NO_AUTH + socks5(CONNECT, 3, b"example.com\x00.evil", 80),
     b"\x05\x00" + socks5_failure(1)),
    ("socks5 connect port 0", NO_AUTH + socks5(CONNECT, 1, "1.2.3.4", 0),
     b"\x05\x00" + socks5_failure(1)),
    ("socks5 no acceptable method", greeting(1, 3), b"\x05\xff"),
    ("socks5 zero methods", greeting(), b"\x05\xff"),
    ("socks5 prop 351 format 1", USER_PASS + userpass(b"<torS0X>1", b"rpc"),
     b"\x05\x02\x01\x01"),
    ("socks5 prop 351 bare prefix", USER_PASS + userpass(b"<torS0X>", b""), b"\x05\x02\x01\x01"),
    ("socks5 prop 351 format 0 with suffix", USER_PASS + userpass(b"<torS0X>0abc", b""),
     b"\x05\x02\x01\x01"),
    ("socks5 request instead of required auth", USER_PASS + socks5(CONNECT, 1, "1.2.3.4", 80),
     b"\x05\x02\x01\x01"),
    ("socks5 auth version 2", USER_PASS + b"\x02\x05hello\x05world", b"\x05\x02\x01\x01"),
    ("auth before negotiation", b"\x01\x02me\x02me", b""),
    ("unknown version 6", b"\x06\x01\x00", b""),
    ("version 0", b"\x00\x00", b""),
    ("tls client hello", b"\x16\x03\x01\x02\x00", b""),
    ("http get", b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", NOT_AN_HTTP_PROXY_RESPONSE),
    ("http post", b"POST /x HTTP/1.1\r\n", NOT_AN_HTTP_PROXY_RESPONSE),
    ("http head", b"HEAD / HTTP/1.0\r\n", NOT_AN_HTTP_PROXY_RESPONSE),
    ("http connect", b"CONNECT example.com:443 HTTP/1.1\r\n", NOT_AN_HTTP_PROXY_RESPONSE),
    ("socks4 bind", socks4(BIND, 80, "1.2.3.4"), SOCKS4_REJECTED),
    ("socks4 resolve_ptr", socks4(RESOLVE_PTR, 0, "1.2.3.4"), SOCKS4_REJECTED),
    ("socks4 unknown command", socks4(0x07, 80, "1.2.3.4"), SOCKS4_REJECTED),
    ("socks4 zero ip", socks4(CONNECT, 80, "0.0.0.0"), SOCKS4_REJECTED),
    ("socks4 connect port 0", socks4(CONNECT, 0, "1.2.3.4"), SOCKS4_REJECTED),
    ("socks4a connect port 0", socks4a(CONNECT, 0, b"example.com"), SOCKS4_REJECTED),
    ("socks4a empty hostname", socks4a(CONNECT, 80, b""), SOCKS4_REJECTED),
    ("socks4a malformed hostname", socks4a(CONNECT, 80, b"bad host"), SOCKS4_REJECTED),
    ("socks4a non-ascii hostname", socks4a(CONNECT, 80, b"\xff.com"), SOCKS4_REJECTED),
    ("socks4 userid too long", b"\x04\x01\x00\x50\x01\x02\x03\x04" + b"u" * 600, SOCKS4_REJECTED),
    ("socks4a hostname too long", socks4a(CONNECT, 80, b"a" * 300), SOCKS4_REJECTED),
]


@pytest.mark.parametrize(("name", "data", "reply"), REFUSALS, ids=[case[0] for case in REFUSALS])
def test_refusal_at_every_split(name, data, reply):
    for pieces in splits(data):
        events, replies, connection = feed_in_pieces(pieces)
        assert len(events) == 1 and isinstance(events[0], SocksFailure), pieces
        assert replies == reply
        assert replies.endswith(events[0].reply)
        assert connection.should_close
        assert connection.state is SocksState.CLOSING
        assert connection.request is None
        assert connection.buffered_handshake_bytes == 0


def test_failure_reports_version_and_reason():
    connection = SocksServerConnection()
    [failure] = connection.feed(NO_AUTH + socks5(BIND, 1, "1.2.3.4", 80))
    assert failure.version == 5
    assert failure.reply == socks5_failure(Socks5Reply.COMMAND_NOT_SUPPORTED)
    assert "not supported" in failure.reason
    [failure] = SocksServerConnection().feed(b"GET / HTTP/1.0\r\n")
    assert failure.version is None
    assert failure.reply.startswith(b"HTTP/1.0 501 ")


def test_bad_atyp_fails_without_waiting_for_more():
    connection = SocksServerConnection()
    assert connection.feed(NO_AUTH) == []
    [failure] = connection.feed(b"\x05\x01\x00\x09")
    assert failure.reply == socks5_failure(8)


def test_input_after_failure_is_ignored():
    connection = SocksServerConnection()
    connection.feed(b"\x06")
    connection.data_to_send()
    assert connection.feed(b"\x05\x01\x00") == []
    assert connection.data_to_send() == b""
    assert connection.trailing_data == b""


def test_bytes_after_a_refusal_are_dropped():
    connection = SocksServerConnection()
    [failure] = connection.feed(NO_AUTH + socks5(BIND, 1, "1.2.3.4", 80) + b"more data")
    assert isinstance(failure, SocksFailure)
    assert connection.trailing_data == b""
    assert connection.buffered_handshake_bytes == 0


def test_prefer_no_auth_option():
    connection = SocksServerConnection(prefer_no_auth=True)
    connection.feed(greeting(0, 2))
    assert connection.data_to_send() == b"\x05\x00"


# --- replies the caller sends -----------------------------------------------------------------


def connected(data, **kwargs):
    connection = SocksServerConnection(**kwargs)
    [event] = connection.feed(data)
    assert isinstance(event, SocksRequest)
    connection.data_to_send()
    return connection


def test_socks5_connect_success_reply():
    connection = connected(NO_AUTH + socks5(CONNECT, 3, b"example.com", 80))
    connection.reply_connect_succeeded()
    assert connection.data_to_send() == bytes.fromhex("05000001 00000000 0000")
    assert connection.state is SocksState.ESTABLISHED
    assert not connection.should_close


def test_socks4_connect_success_reply():
    connection = connected(socks4a(CONNECT, 80, b"example.com"))
    connection.reply_connect_succeeded()
    assert connection.data_to_send() == bytes.fromhex("005a 0000 00000000")
    assert not connection.should_close


@pytest.mark.parametrize(
    ("data", "answer", "reply"),
    [
        (NO_AUTH + socks5(RESOLVE, 3, b"example.com", 0), "93.184.216.34",
         bytes.fromhex("05000001 5db8d822 0000")),
        (NO_AUTH + socks5(RESOLVE, 3, b"example.com", 0), "2606:2800:220:1::1",
         bytes.fromhex("05000004 26062800022000010000000000000001 0000")),
        (socks4a(RESOLVE, 0, b"example.com"), "93.184.216.34",
         bytes.fromhex("005a 0000 5db8d822")),
        (socks4a(RESOLVE, 0, b"example.com"), "2606:2800:220:1::1", SOCKS4_REJECTED),
    ],
)
def test_resolve_replies(data, answer, reply):
    connection = connected(data)
    connection.reply_resolved_address(answer)
    assert connection.data_to_send() == reply
    assert connection.should_close


def test_resolve_ptr_reply_carries_the_name():
    connection = connected(NO_AUTH + socks5(RESOLVE_PTR, 1, "192.0.2.1", 0))
    connection.reply_resolved_hostname("host.example")
    assert connection.data_to_send() == b"\x05\x00\x00\x03\x0chost.example\x00\x00"
    assert connection.should_close


@pytest.mark.parametrize("name", [b"x" * 256, b"", "exämple"])
def test_resolve_ptr_unencodable_name_is_host_unreachable(name):
    connection = connected(NO_AUTH + socks5(RESOLVE_PTR, 1, "192.0.2.1", 0))
    connection.reply_resolved_hostname(name)
    assert connection.data_to_send() == socks5_failure(Socks5Reply.HOST_UNREACHABLE)


def test_resolve_reply_with_a_non_ip_is_a_caller_error():
    connection = connected(NO_AUTH + socks5(RESOLVE, 3, b"example.com", 0))
    with pytest.raises(SocksEncodeError):
        connection.reply_resolved_address("example.com")


@pytest.mark.parametrize("code", list(range(1, 9)))
def test_socks5_failure_replies(code):
    connection = connected(NO_AUTH + socks5(CONNECT, 3, b"example.com", 80))
    connection.reply_failed(code)
    assert connection.data_to_send() == socks5_failure(code)
    assert connection.should_close


def test_socks4_failure_reply_whatever_the_code():
    connection = connected(socks4(CONNECT, 80, "1.2.3.4"))
    connection.reply_failed(Socks5Reply.CONNECTION_REFUSED)
    assert connection.data_to_send() == SOCKS4_REJECTED
    assert connection.should_close


@pytest.mark.parametrize(
    ("reason", "code"),
    [(EndReason.EXITPOLICY, 2), (EndReason.TIMEOUT, 6), (EndReason.RESOLVEFAILED, 4),
     (LocalEndReason.NET_UNREACHABLE, 3), (LocalEndReason.PRIVATE_ADDR, 1)],
)
def test_failure_reply_for_end_reason(reason, code):
    connection = connected(NO_AUTH + socks5(CONNECT, 3, b"example.com", 80))
    connection.reply_failed_for_end_reason(reason)
    assert connection.data_to_send() == socks5_failure(code)


def test_reply_before_request_is_a_state_error():
    connection = SocksServerConnection()
    with pytest.raises(SocksStateError):
        connection.reply_connect_succeeded()
    connection.feed(NO_AUTH)
    with pytest.raises(SocksStateError):
        connection.reply_failed()


def test_reply_that_does_not_fit_the_command_is_a_state_error():
    connection = connected(NO_AUTH + socks5(RESOLVE, 3, b"example.com", 0))
    with pytest.raises(SocksStateError):
        connection.reply_connect_succeeded()
    connection = connected(NO_AUTH + socks5(CONNECT, 3, b"example.com", 80))
    with pytest.raises(SocksStateError):
        connection.reply_resolved_address("1.2.3.4")


def test_only_one_reply():
    connection = connected(NO_AUTH + socks5(CONNECT, 3, b"example.com", 80))
    connection.reply_connect_succeeded()
    with pytest.raises(SocksStateError):
        connection.reply_failed()


def test_trailing_data_accumulates_until_taken():
    connection = SocksServerConnection()
    connection.feed(NO_AUTH + socks5(CONNECT, 3, b"example.com", 80) + b"abc")
    assert connection.feed(b"def") == []
    assert connection.take_trailing_data() == b"abcdef"
    assert connection.trailing_data == b""
    connection.reply_connect_succeeded()
    assert connection.feed(b"ghi") == []
    assert connection.take_trailing_data() == b"ghi"


def test_isolation_key():
    connection = connected(USER_PASS + userpass(b"u", b"p") + socks5(CONNECT, 1, "1.2.3.4", 80))
    assert connection.request.isolation_key == (b"u", b"p")
    connection = connected(socks4(CONNECT, 80, "1.2.3.4", b"id"))
    assert connection.request.isolation_key == (b"id", b"")


# --- property tests ---------------------------------------------------------------------------

def check_invariants(pieces, connection):
    events = []
    for piece in pieces:
        new_events = connection.feed(piece)
        assert all(isinstance(event, (SocksRequest, SocksFailure)) for event in new_events)
        events += new_events
        assert connection.buffered_handshake_bytes <= MAX_HANDSHAKE_MESSAGE_LEN
        connection.data_to_send()
    assert len(events) <= 1
    if events and isinstance(events[0], SocksFailure):
        assert connection.should_close
    if events and isinstance(events[0], SocksRequest):
        assert connection.state is SocksState.REQUEST_RECEIVED
    if not events:
        assert connection.state is SocksState.HANDSHAKE
    return events


@settings(max_examples=200)
@given(body=st.binary(min_size=1, max_size=64), repeats=st.integers(min_value=1, max_value=60))
def test_endless_garbage_is_failed_not_buffered(body, repeats):
    socks4_userid = b"\x04\x01\x00\x50\x01\x02\x03\x04"
    socks4a_hostname = b"\x04\x01\x00\x50\x00\x00\x00\x01x\x00"
    # (prefix, total length at which C tor's limits fail the request)
    for prefix, limit in ((socks4_userid, 512), (socks4a_hostname, len(socks4a_hostname) + 256)):
        connection = SocksServerConnection()
        for piece in [prefix] + [body.replace(b"\x00", b"a")] * repeats:
            connection.feed(piece)
            assert connection.buffered_handshake_bytes <= MAX_HANDSHAKE_MESSAGE_LEN
        total = len(prefix) + len(body) * repeats
        assert connection.should_close == (total >= limit)
        if connection.should_close:
            assert connection.data_to_send() == SOCKS4_REJECTED


hostname_labels = st.tuples(
    st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789"),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789_-", max_size=20),
).map("".join)
hostnames = st.lists(hostname_labels, min_size=1, max_size=4).map(".".join).filter(
    lambda name: not name.replace(".", "").isdigit()
)
credentials = st.binary(max_size=255).filter(lambda user: not user.startswith(b"<torS0X>"))
ports = st.integers(min_value=1, max_value=65535)


@settings(max_examples=200)
@given(
    target=st.one_of(
        hostnames.map(lambda name: (3, name.encode(), name, AddressType.HOSTNAME)),
        st.ip_addresses(v=4).map(lambda ip: (1, str(ip), str(ip), AddressType.IPV4)),
        st.ip_addresses(v=6).map(lambda ip: (4, str(ip), str(ip), AddressType.IPV6)),
    ),
    port=ports,
    auth=st.one_of(st.none(), st.tuples(credentials, st.binary(max_size=255))),
    command=st.sampled_from([CONNECT, RESOLVE]),
    cuts=st.lists(st.integers(min_value=0, max_value=1200), max_size=4),
)
def test_socks5_round_trip(target, port, auth, command, cuts):
    atyp, wire_address, address, address_type = target
    if auth is None:
        data, username, password = NO_AUTH, b"", b""
    else:
        username, password = auth
        data = USER_PASS + userpass(username, password)
    data += socks5(command, atyp, wire_address, port)
    events = check_invariants(chunked(data, cuts), connection := SocksServerConnection())
    assert events == [request(5, command, address, address_type, port, username, password)]
    assert connection.trailing_data == b""


@settings(max_examples=200)
@given(
    hostname=hostnames,
    userid=st.binary(max_size=100).map(lambda raw: raw.replace(b"\x00", b"")),
    port=ports,
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=4),
)
def test_socks4a_round_trip(hostname, userid, port, cuts):
    data = socks4a(CONNECT, port, hostname.encode(), userid)
    events = check_invariants(chunked(data, cuts), SocksServerConnection())
    assert events == [request(4, CONNECT, hostname, AddressType.HOSTNAME, port, userid)]
