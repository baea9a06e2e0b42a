"""SOCKS wire helpers: reply encoders, END reason mapping, address checks, pure parsers."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oppy.cell.commands import EndReason
from oppy.socks.messages import (
    MAX_ADDRESS_LEN,
    AddressType,
    LocalEndReason,
    Socks4Reply,
    Socks5Method,
    Socks5Reply,
    SocksCommand,
    SocksEncodeError,
    SocksProtocolError,
    check_tor_socks_username,
    choose_socks5_method,
    encode_socks4_reply,
    encode_socks5_auth_status,
    encode_socks5_failure,
    encode_socks5_method_selection,
    encode_socks5_reply,
    is_private_address,
    is_valid_destination,
    is_valid_hostname,
    parse_socks4_request,
    parse_socks5_greeting,
    parse_socks5_request,
    parse_socks5_userpass_auth,
    socks5_reply_code_for_end_reason,
)

# --- constants --------------------------------------------------------------------------------


def test_rfc1928_reply_codes():
    assert [int(code) for code in list(Socks5Reply)[:9]] == list(range(9))
    assert Socks5Reply.COMMAND_NOT_SUPPORTED == 0x07
    assert Socks5Reply.ADDRESS_TYPE_NOT_SUPPORTED == 0x08
    assert Socks5Reply.ONION_DESCRIPTOR_NOT_FOUND == 0xF0
    assert Socks5Reply.ONION_INTRO_TIMED_OUT == 0xF7


def test_command_and_address_type_values():
    assert (SocksCommand.CONNECT, SocksCommand.BIND, SocksCommand.UDP_ASSOCIATE) == (1, 2, 3)
    assert (SocksCommand.RESOLVE, SocksCommand.RESOLVE_PTR) == (0xF0, 0xF1)
    assert (AddressType.IPV4, AddressType.HOSTNAME, AddressType.IPV6) == (1, 3, 4)
    assert (Socks4Reply.GRANTED, Socks4Reply.REJECTED) == (0x5A, 0x5B)


# --- END reason -> REP (C tor reasons.c, checklist section 8) ---------------------------------

END_REASON_TABLE = [
    (0, 0x00),
    (EndReason.MISC, 0x01),
    (EndReason.RESOLVEFAILED, 0x04),
    (EndReason.CONNECTREFUSED, 0x05),
    (EndReason.EXITPOLICY, 0x02),
    (EndReason.DESTROY, 0x01),
    (EndReason.DONE, 0x05),
    (EndReason.TIMEOUT, 0x06),
    (EndReason.NOROUTE, 0x04),
    (EndReason.HIBERNATING, 0x01),
    (EndReason.INTERNAL, 0x01),
    (EndReason.RESOURCELIMIT, 0x01),
    (EndReason.CONNRESET, 0x05),
    (EndReason.TORPROTOCOL, 0x01),
    (EndReason.NOTDIRECTORY, 0x01),
    (LocalEndReason.CANT_ATTACH, 0x01),
    (LocalEndReason.NET_UNREACHABLE, 0x03),
    (LocalEndReason.SOCKSPROTOCOL, 0x01),
    (LocalEndReason.PRIVATE_ADDR, 0x01),
    (LocalEndReason.ENTRYPOLICY, 0x02),
    (200, 0x01),
    (511, 0x01),
]


@pytest.mark.parametrize(("reason", "reply_code"), END_REASON_TABLE)
def test_end_reason_to_socks5_reply(reason, reply_code):
    assert socks5_reply_code_for_end_reason(reason) == reply_code


def test_end_reason_flag_bits_are_ignored():
    remote_flag = 512  # C tor END_STREAM_REASON_FLAG_REMOTE
    assert socks5_reply_code_for_end_reason(remote_flag | EndReason.TIMEOUT) == 0x06
    assert socks5_reply_code_for_end_reason(2048 | EndReason.EXITPOLICY) == 0x02


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=1 << 16))
def test_end_reason_mapping_is_total(reason):
    assert 0 <= socks5_reply_code_for_end_reason(reason) <= 8


# --- encoders ---------------------------------------------------------------------------------


def test_encode_method_selection_and_auth_status():
    assert encode_socks5_method_selection(Socks5Method.USERNAME_PASSWORD) == b"\x05\x02"
    assert encode_socks5_method_selection(Socks5Method.NO_ACCEPTABLE_METHODS) == b"\x05\xff"
    assert encode_socks5_auth_status(True) == b"\x01\x00"
    assert encode_socks5_auth_status(False) == b"\x01\x01"


def test_encode_socks5_reply_forms():
    assert encode_socks5_reply(0) == bytes.fromhex("05000001 00000000 0000")
    assert encode_socks5_failure(Socks5Reply.HOST_UNREACHABLE) == bytes.fromhex(
        "05040001 00000000 0000"
    )
    assert encode_socks5_reply(0, "192.0.2.7", 443) == bytes.fromhex("05000001 c0000207 01bb")
    assert encode_socks5_reply(0, "2001:db8::1") == bytes.fromhex(
        "05000004 20010db8000000000000000000000001 0000"
    )
    assert encode_socks5_reply(0, "[2001:db8::1]")[3] == AddressType.IPV6
    assert encode_socks5_reply(0, "example.com") == b"\x05\x00\x00\x03\x0bexample.com\x00\x00"
    assert encode_socks5_reply(0, b"\xffname") == b"\x05\x00\x00\x03\x05\xffname\x00\x00"


def test_encode_socks5_reply_refuses_unencodable_names():
    with pytest.raises(SocksEncodeError):
        encode_socks5_reply(0, b"")
    with pytest.raises(SocksEncodeError):
        encode_socks5_reply(0, b"a" * (MAX_ADDRESS_LEN + 1))
    with pytest.raises(SocksEncodeError):
        encode_socks5_reply(0, "exämple.com")
    assert len(encode_socks5_reply(0, b"a" * MAX_ADDRESS_LEN)) == 4 + 1 + 255 + 2


def test_encode_socks4_reply():
    assert encode_socks4_reply(True) == bytes.fromhex("005a 0000 00000000")
    assert encode_socks4_reply(False) == bytes.fromhex("005b 0000 00000000")
    assert encode_socks4_reply(True, ipv4="10.1.2.3") == bytes.fromhex("005a 0000 0a010203")


# --- method choice and prop 351 ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("methods", "prefer_no_auth", "chosen"),
    [
        (b"\x00", False, Socks5Method.NO_AUTHENTICATION),
        (b"\x02", False, Socks5Method.USERNAME_PASSWORD),
        (b"\x00\x02", False, Socks5Method.USERNAME_PASSWORD),
        (b"\x02\x00", False, Socks5Method.USERNAME_PASSWORD),
        (b"\x00\x02", True, Socks5Method.NO_AUTHENTICATION),
        (b"\x02", True, Socks5Method.USERNAME_PASSWORD),
        (b"\x01\x03\x80", False, Socks5Method.NO_ACCEPTABLE_METHODS),
        (b"", False, Socks5Method.NO_ACCEPTABLE_METHODS),
    ],
)
def test_choose_socks5_method(methods, prefer_no_auth, chosen):
    assert choose_socks5_method(methods, prefer_no_auth) is chosen


@pytest.mark.parametrize("username", [b"", b"alice", b"<torS0X>0", b"<tors0x>1", b"x<torS0X>1"])
def test_prop351_accepted_usernames(username):
    check_tor_socks_username(username)


@pytest.mark.parametrize("username", [b"<torS0X>", b"<torS0X>1", b"<torS0X>0x", b"<torS0X>00"])
def test_prop351_rejected_usernames(username):
    with pytest.raises(SocksProtocolError):
        check_tor_socks_username(username)


# --- addresses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["example.com", "example.com.", "a", "xn--bcher-kva.example", "under_score.example",
     "a-b.c-d", "3g2upl4pq6kufc4m.onion", "123.example"],
)
def test_valid_hostnames(name):
    assert is_valid_hostname(name)
    assert is_valid_destination(name)


@pytest.mark.parametrize(
    "name",
    ["", ".", "---", "-a.com", "_a.com", "a..com", "..", "a.com..", "exa mple.com",
     '"""""".com', "exämple.com", "a/b", "a\x00b", "host:80", "1.2.3.4"],
)
def test_invalid_hostnames(name):
    assert not is_valid_hostname(name)


@pytest.mark.parametrize("address", ["1.2.3.4", "::1", "[2001:db8::1]", "2001:db8::1"])
def test_ip_literals_are_valid_destinations(address):
    assert is_valid_destination(address)


@pytest.mark.parametrize("address", ["", "fe80::1%eth0", "[1.2.3.4]x", "1.2.3.4.5.6..", "[]"])
def test_invalid_destinations(address):
    assert not is_valid_destination(address)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "127.255.0.9", "10.0.0.1", "0.0.0.0", "0.1.2.3", "169.254.3.4",
     "172.16.0.1", "172.31.255.255", "192.168.1.1", "100.64.0.1", "100.127.255.255",
     "::", "::1", "[::1]", "fe80::1", "fc00::1", "fd12:3456::1", "fec0::1",
     "::ffff:127.0.0.1", "::ffff:192.168.0.1", "localhost", "LOCALHOST", "local",
     "printer.local", "x.LOCAL"],
)
def test_private_addresses(address):
    assert is_private_address(address)


@pytest.mark.parametrize(
    "address",
    ["1.1.1.1", "172.32.0.1", "172.15.255.255", "100.128.0.1", "192.169.0.1", "8.8.8.8",
     "2001:db8::1", "::2", "::ffff:8.8.8.8", "example.com", "localhost.example",
     "notlocal", "3g2upl4pq6kufc4m.onion"],
)
def test_public_addresses(address):
    assert not is_private_address(address)


# --- pure parsers -----------------------------------------------------------------------------


def test_parse_socks5_greeting():
    assert parse_socks5_greeting(b"\x05") is None
    assert parse_socks5_greeting(b"\x05\x02\x00") is None
    assert parse_socks5_greeting(b"\x05\x02\x00\x02rest") == (b"\x00\x02", 4)
    with pytest.raises(SocksProtocolError):
        parse_socks5_greeting(b"\x04\x01")


def test_parse_userpass_auth():
    assert parse_socks5_userpass_auth(b"\x01\x01a\x01") is None
    assert parse_socks5_userpass_auth(b"\x01\x00\x00") == ((b"", b""), 3)
    assert parse_socks5_userpass_auth(b"\x01\x01a\x02bcX") == ((b"a", b"bc"), 6)
    with pytest.raises(SocksProtocolError):
        parse_socks5_userpass_auth(b"\x02\x05hello\x05world")


def test_parse_socks5_request_framing():
    request, consumed = parse_socks5_request(bytes.fromhex("05010001 7f000001 1f90") + b"!")
    assert (request.address, request.port, consumed) == ("127.0.0.1", 8080, 10)
    assert parse_socks5_request(b"\x05\x01\x00\x03\x05abc") is None
    with pytest.raises(SocksProtocolError) as caught:
        parse_socks5_request(b"\x05\x01\x00\x02")
    assert caught.value.reply_code == Socks5Reply.ADDRESS_TYPE_NOT_SUPPORTED
    with pytest.raises(SocksProtocolError) as caught:
        parse_socks5_request(b"\x05\x01\x01")
    assert caught.value.reply_code == Socks5Reply.GENERAL_FAILURE


def test_parse_socks4_request():
    request, consumed = parse_socks4_request(bytes.fromhex("04010050 01020304") + b"me\x00tail")
    assert (request.address, request.port, request.userid, consumed) == ("1.2.3.4", 80, b"me", 11)
    assert parse_socks4_request(bytes.fromhex("04010050 00000001") + b"me\x00host") is None
    with pytest.raises(SocksProtocolError):
        parse_socks4_request(b"\x05\x01")


def test_encode_socks4_reply_refuses_non_ipv4():
    with pytest.raises(SocksEncodeError):
        encode_socks4_reply(True, ipv4="::1")


def test_errors_are_value_errors():
    assert issubclass(SocksProtocolError, ValueError)
    assert issubclass(SocksEncodeError, ValueError)
