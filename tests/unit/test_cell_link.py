"""Link-level cell bodies (tor-spec "Negotiating channels", "CREATE and CREATED cells", §5.4, §7.2)."""

from ipaddress import IPv4Address, IPv6Address

import pytest

from oppy.cell.commands import CELL_PAYLOAD_LEN, CellCommand, DestroyReason
from oppy.cell.errors import CellParseError
from oppy.cell.framing import CellReader, encode_cell, encode_versions_cell
from oppy.cell.link import (
    AuthChallenge,
    CertsEntry,
    Create2,
    CreatedFast,
    HandshakeType,
    Netinfo,
    PaddingNegotiate,
    PaddingNegotiateCommand,
    decode_auth_challenge_body,
    decode_certs_body,
    decode_create2_body,
    decode_create_fast_body,
    decode_created2_body,
    decode_created_fast_body,
    decode_destroy_body,
    decode_netinfo_body,
    decode_padding_negotiate_body,
    decode_versions_body,
    encode_auth_challenge_body,
    encode_certs_body,
    encode_create2_body,
    encode_create_fast_body,
    encode_created2_body,
    encode_created_fast_body,
    encode_destroy_body,
    encode_netinfo_body,
    encode_padding_negotiate_body,
    encode_versions_body,
)


def pad(body: bytes) -> bytes:
    """The payload a fixed-length cell carries: the body zero-padded to 509 bytes."""
    return body + bytes(CELL_PAYLOAD_LEN - len(body))


def through_the_wire(command, body):
    """Frame a body as a link-4 cell and read it back, as a peer would."""
    reader = CellReader()
    reader.feed(encode_versions_cell([4]))
    reader.set_link_version(4)
    (cell,) = reader.feed(encode_cell(0x80000002, command, body, 4))
    assert cell.command == command
    return cell.payload


def test_handshake_type_numbers():
    assert (HandshakeType.TAP, HandshakeType.NTOR, HandshakeType.NTOR_V3) == (0, 2, 3)


# --- VERSIONS -----------------------------------------------------------------------------


def test_versions_round_trip():
    body = encode_versions_body([3, 4, 5])
    assert body == bytes.fromhex("0003 0004 0005")
    assert decode_versions_body(through_the_wire(CellCommand.VERSIONS, body)) == [3, 4, 5]


def test_versions_empty_body_offers_nothing():
    assert decode_versions_body(b"") == []


def test_versions_odd_length_is_malformed():
    with pytest.raises(CellParseError):
        decode_versions_body(b"\x00\x03\x00")


# --- NETINFO ------------------------------------------------------------------------------


def test_client_netinfo_bytes_for_an_ipv4_relay():
    assert encode_netinfo_body("127.0.0.1") == bytes.fromhex("00000000 04 04 7f000001 00")


def test_client_netinfo_bytes_for_an_ipv6_relay():
    body = encode_netinfo_body(IPv6Address("2001:db8::1"))
    assert body == bytes.fromhex("00000000 06 10 20010db8000000000000000000000001 00")


def test_netinfo_round_trip_with_my_addresses():
    body = encode_netinfo_body(
        IPv4Address("10.0.0.1"), timestamp=1_700_000_000, my_addresses=["192.0.2.7", "2001:db8::7"]
    )
    decoded = decode_netinfo_body(through_the_wire(CellCommand.NETINFO, body))
    assert decoded == Netinfo(
        1_700_000_000, IPv4Address("10.0.0.1"), (IPv4Address("192.0.2.7"), IPv6Address("2001:db8::7"))
    )


def test_netinfo_skips_unknown_types_and_wrong_lengths():
    body = bytes.fromhex(
        "5f5e1000"  # time
        "04 03 010203"  # other address: IPv4 type with the wrong length -> ignored
        "04"  # four of my addresses
        "07 02 abcd"  # unknown type 7 -> skipped
        "04 04 c0000201"  # 192.0.2.1
        "06 04 01020304"  # IPv6 type with the wrong length -> ignored
        "06 10 20010db8000000000000000000000002"
    )
    decoded = decode_netinfo_body(pad(body))
    assert decoded.timestamp == 0x5F5E1000
    assert decoded.other_address is None
    assert decoded.my_addresses == (IPv4Address("192.0.2.1"), IPv6Address("2001:db8::2"))


@pytest.mark.parametrize(
    "body",
    [
        "",
        "000000",
        "00000000",
        "00000000 04",
        "00000000 04 04 7f0000",
        "00000000 04 04 7f000001",  # no NMYADDR
        "00000000 04 04 7f000001 01 04 04 7f",  # my address truncated
    ],
)
def test_netinfo_truncated_is_malformed(body):
    with pytest.raises(CellParseError):
        decode_netinfo_body(bytes.fromhex(body))


def test_netinfo_refuses_unencodable_values():
    with pytest.raises(ValueError):
        encode_netinfo_body("not an address")
    with pytest.raises(ValueError):
        encode_netinfo_body("127.0.0.1", timestamp=2**32)


# --- CERTS --------------------------------------------------------------------------------


def test_certs_round_trip():
    certs = [CertsEntry(4, b"ed cert"), CertsEntry(2, b"\x30\x82" + bytes(300)), CertsEntry(7, b"")]
    body = encode_certs_body(certs)
    assert body[:4] == bytes.fromhex("03 04 0007")
    assert decode_certs_body(through_the_wire(CellCommand.CERTS, body + b"extra")) == certs


@pytest.mark.parametrize("body", ["", "01", "01 04 00", "01 04 0005 aabbccdd", "02 04 0001 aa"])
def test_certs_truncated_is_malformed(body):
    with pytest.raises(CellParseError):
        decode_certs_body(bytes.fromhex(body))


# --- AUTH_CHALLENGE -----------------------------------------------------------------------


def test_auth_challenge_as_sent_by_0_4_9():
    challenge = bytes(range(32))
    body = challenge + bytes.fromhex("0001 0003") + b"ignored"
    assert decode_auth_challenge_body(body) == AuthChallenge(challenge, (3,))


def test_auth_challenge_round_trip():
    body = encode_auth_challenge_body(b"\x11" * 32, [1, 3])
    assert decode_auth_challenge_body(through_the_wire(CellCommand.AUTH_CHALLENGE, body)) == AuthChallenge(
        b"\x11" * 32, (1, 3)
    )


@pytest.mark.parametrize("length", [0, 31, 33])
def test_auth_challenge_truncated_is_malformed(length):
    with pytest.raises(CellParseError):
        decode_auth_challenge_body(bytes(length))


def test_auth_challenge_with_missing_methods_is_malformed():
    with pytest.raises(CellParseError):
        decode_auth_challenge_body(bytes(32) + bytes.fromhex("0002 0003"))


# --- PADDING_NEGOTIATE --------------------------------------------------------------------


def test_padding_negotiate_stop_bytes():
    assert encode_padding_negotiate_body(PaddingNegotiateCommand.STOP) == bytes.fromhex("00 01 0000 0000")


def test_padding_negotiate_round_trip():
    body = encode_padding_negotiate_body(PaddingNegotiateCommand.START, 1500, 9500)
    assert body == bytes.fromhex("00 02 05dc 251c")
    payload = through_the_wire(CellCommand.PADDING_NEGOTIATE, body)
    assert decode_padding_negotiate_body(payload) == PaddingNegotiate(0, 2, 1500, 9500)


def test_padding_negotiate_truncated_is_malformed():
    with pytest.raises(CellParseError):
        decode_padding_negotiate_body(bytes(5))


def test_padding_negotiate_out_of_range_is_refused():
    with pytest.raises(ValueError):
        encode_padding_negotiate_body(PaddingNegotiateCommand.START, 70000, 0)


@pytest.mark.parametrize("command", [0, 3, 255])
def test_padding_negotiate_command_other_than_stop_or_start_is_refused(command):
    with pytest.raises(ValueError, match="STOP"):
        encode_padding_negotiate_body(command)


def test_padding_negotiate_stop_cell_on_link_5():
    # tor-spec "Cell packet format" and §7.2: CircID 0 (4 bytes), command 12, Version 0, Command 1, two zero
    # timeouts, then zeros to 509 bytes.
    body = encode_padding_negotiate_body(PaddingNegotiateCommand.STOP)
    cell = encode_cell(0, CellCommand.PADDING_NEGOTIATE, body, 5)
    assert cell == bytes.fromhex("00000000 0c 00 01 0000 0000") + bytes(503)


@pytest.mark.parametrize("body", ["01 02 0000 0000", "00 00 0000 0000", "00 03 05dc 251c"])
def test_padding_negotiate_with_another_version_or_command_is_malformed(body):
    with pytest.raises(CellParseError):
        decode_padding_negotiate_body(bytes.fromhex(body))


# --- CREATE2 / CREATED2 -------------------------------------------------------------------


def test_create2_ntor_layout():
    onionskin = bytes(range(84))
    body = encode_create2_body(HandshakeType.NTOR, onionskin)
    assert body[:4] == bytes.fromhex("0002 0054")
    assert decode_create2_body(through_the_wire(CellCommand.CREATE2, body)) == Create2(2, onionskin)


def test_create2_largest_handshake_fits_exactly():
    body = encode_create2_body(HandshakeType.NTOR_V3, b"\x01" * 505)
    assert len(body) == CELL_PAYLOAD_LEN
    with pytest.raises(ValueError):
        encode_create2_body(HandshakeType.NTOR_V3, b"\x01" * 506)


def test_create2_handshake_type_out_of_range_is_refused():
    with pytest.raises(ValueError):
        encode_create2_body(0x10000, b"")


def test_create2_hlen_beyond_payload_is_malformed():
    with pytest.raises(CellParseError):
        decode_create2_body(pad(bytes.fromhex("0002 01fe")))  # 510 > 505 available
    with pytest.raises(CellParseError):
        decode_create2_body(b"\x00\x02\x00")


def test_created2_layouts_from_c_tor_tests():
    reply = bytes(range(64))
    assert decode_created2_body(pad(bytes.fromhex("0040") + reply)) == reply
    biggest = bytes(496)
    assert decode_created2_body(pad(bytes.fromhex("01f0") + biggest)) == biggest
    with pytest.raises(CellParseError):
        decode_created2_body(pad(bytes.fromhex("02ff")))


def test_created2_round_trip():
    reply = b"\x42" * 64
    assert decode_created2_body(through_the_wire(CellCommand.CREATED2, encode_created2_body(reply))) == reply
    with pytest.raises(ValueError):
        encode_created2_body(bytes(508))


def test_created2_truncated_is_malformed():
    with pytest.raises(CellParseError):
        decode_created2_body(b"\x00")


# --- CREATE_FAST / CREATED_FAST -----------------------------------------------------------


def test_create_fast_round_trip():
    x = bytes(range(20))
    assert encode_create_fast_body(x) == x
    assert decode_create_fast_body(through_the_wire(CellCommand.CREATE_FAST, x)) == x
    with pytest.raises(ValueError):
        encode_create_fast_body(bytes(19))
    with pytest.raises(CellParseError):
        decode_create_fast_body(bytes(19))


def test_created_fast_round_trip():
    y, kh = b"\x01" * 20, b"\x02" * 20
    body = encode_created_fast_body(y, kh)
    assert body == y + kh
    assert decode_created_fast_body(through_the_wire(CellCommand.CREATED_FAST, body)) == CreatedFast(y, kh)
    with pytest.raises(ValueError):
        encode_created_fast_body(y, b"")
    with pytest.raises(CellParseError):
        decode_created_fast_body(bytes(39))


# --- DESTROY ------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", list(DestroyReason))
def test_destroy_round_trip_for_every_reason(reason):
    body = encode_destroy_body(reason)
    assert body == bytes([reason])
    decoded = decode_destroy_body(through_the_wire(CellCommand.DESTROY, body))
    assert decoded is reason


def test_client_destroy_defaults_to_none():
    assert encode_destroy_body() == b"\x00"


def test_destroy_unknown_reason_stays_an_int():
    decoded = decode_destroy_body(pad(b"\x63"))
    assert decoded == 99
    assert not isinstance(decoded, DestroyReason)


def test_destroy_empty_and_out_of_range():
    with pytest.raises(CellParseError):
        decode_destroy_body(b"")
    with pytest.raises(ValueError):
        encode_destroy_body(256)
