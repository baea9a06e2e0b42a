"""Relay cells (v0 layout) and relay message bodies (tor-spec §6, §5.1.2, §7.3.1; prop 324).

Several byte layouts below are the vectors of C tor's src/test/test_cell_formats.c.
"""

from ipaddress import IPv4Address, IPv6Address

import pytest

from oppy.cell.commands import (
    CELL_PAYLOAD_LEN,
    RELAY_PAYLOAD_LEN,
    DestroyReason,
    EndReason,
    RelayCommand,
)
from oppy.cell.errors import CellParseError
from oppy.cell.link import HandshakeType
from oppy.cell.relay import (
    RELAY_DATA_OFFSET,
    RELAY_DIGEST_LEN,
    RELAY_DIGEST_OFFSET,
    RELAY_LENGTH_OFFSET,
    RELAY_RECOGNIZED_LEN,
    RELAY_RECOGNIZED_OFFSET,
    RELAY_STREAM_ID_OFFSET,
    Begin,
    BeginFlags,
    Connected,
    End,
    Extend2,
    LinkSpecifier,
    LinkSpecifierType,
    RelayCell,
    ResolvedAnswer,
    ResolvedType,
    Sendme,
    SendmeVersion,
    decode_begin_body,
    decode_connected_body,
    decode_end_body,
    decode_extend2_body,
    decode_extended2_body,
    decode_relay_payload,
    decode_resolve_body,
    decode_resolved_body,
    decode_sendme_body,
    decode_truncated_body,
    decode_xoff_body,
    decode_xon_body,
    encode_begin_body,
    encode_connected_body,
    encode_end_body,
    encode_extend2_body,
    encode_extended2_body,
    encode_relay_payload,
    encode_resolve_body,
    encode_resolved_body,
    encode_reverse_resolve_body,
    encode_sendme_body,
    encode_truncated_body,
    encode_xoff_body,
    encode_xon_body,
    ipv4_link_specifier,
    ipv6_link_specifier,
    legacy_id_link_specifier,
    link_specifiers_for_relay,
)

# --- the relay cell itself ----------------------------------------------------------------


def test_relay_payload_layout():
    cell = encode_relay_payload(RelayCommand.DATA, 0x1234, b"hello")
    assert isinstance(cell, bytearray)
    assert len(cell) == CELL_PAYLOAD_LEN
    assert cell[:RELAY_DATA_OFFSET] == bytes.fromhex("02 0000 1234 00000000 0005")
    assert cell[RELAY_DATA_OFFSET : RELAY_DATA_OFFSET + 5] == b"hello"
    assert cell[RELAY_DATA_OFFSET + 5 : RELAY_DATA_OFFSET + 9] == bytes(4)  # 4 zero bytes first


def test_header_offsets_name_the_right_fields():
    cell = encode_relay_payload(RelayCommand.END, 0xABCD, b"\x06")
    assert cell[RELAY_RECOGNIZED_OFFSET : RELAY_RECOGNIZED_OFFSET + RELAY_RECOGNIZED_LEN] == b"\x00\x00"
    assert cell[RELAY_STREAM_ID_OFFSET : RELAY_STREAM_ID_OFFSET + 2] == b"\xab\xcd"
    assert cell[RELAY_DIGEST_OFFSET : RELAY_DIGEST_OFFSET + RELAY_DIGEST_LEN] == bytes(4)
    assert cell[RELAY_LENGTH_OFFSET : RELAY_LENGTH_OFFSET + 2] == b"\x00\x01"
    assert RELAY_DATA_OFFSET == RELAY_LENGTH_OFFSET + 2 == 11


def test_padding_after_the_zero_bytes_is_random():
    paddings = {bytes(encode_relay_payload(RelayCommand.DROP, 0, b"")[15:]) for _ in range(50)}
    assert len(paddings) == 50
    assert all(len(p) == CELL_PAYLOAD_LEN - 15 for p in paddings)


def test_padding_stays_fresh_across_many_pool_refills():
    # 1200 x 494 bytes is more than two refills of the padding pool.
    paddings = [bytes(encode_relay_payload(RelayCommand.DROP, 0, b"")[15:]) for _ in range(1200)]
    assert len(set(paddings)) == len(paddings)


@pytest.mark.parametrize("length", [494, 495, 496, 497, 498])
def test_short_padding_is_all_zero(length):
    cell = encode_relay_payload(RelayCommand.DATA, 1, b"\xff" * length)
    assert len(cell) == CELL_PAYLOAD_LEN
    assert cell[RELAY_DATA_OFFSET + length :] == bytes(RELAY_PAYLOAD_LEN - length)


def test_too_much_data_is_refused():
    with pytest.raises(ValueError):
        encode_relay_payload(RelayCommand.DATA, 1, bytes(499))


@pytest.mark.parametrize(("command", "stream_id"), [(256, 1), (-1, 1), (2, 0x10000), (2, -1)])
def test_header_out_of_range_is_refused(command, stream_id):
    with pytest.raises(ValueError):
        encode_relay_payload(command, stream_id, b"")


def test_decode_c_tor_relay_header_vector():
    data = bytes(range(256)) + b"xyz"
    payload = b"\x03" b"\x00\x00" b"\x21\x22" b"ABCD" b"\x01\x03" + data
    payload += bytes(CELL_PAYLOAD_LEN - len(payload))
    assert decode_relay_payload(payload) == RelayCell(3, 0x2122, data)


@pytest.mark.parametrize("command", [*RelayCommand, 0, 99, 255])
def test_relay_payload_round_trip_for_every_command(command):
    data = bytes([command]) * (command % 50)
    cell = encode_relay_payload(command, 77, data)
    decoded = decode_relay_payload(cell)
    assert decoded == RelayCell(command, 77, data)
    assert type(decoded.data) is bytes


def test_decode_accepts_memoryview_and_full_length():
    data = b"\x5a" * RELAY_PAYLOAD_LEN
    assert decode_relay_payload(memoryview(encode_relay_payload(2, 9, data))) == (2, 9, data)


@pytest.mark.parametrize("length", [0, 11, 508, 510])
def test_decode_refuses_wrong_payload_size(length):
    with pytest.raises(CellParseError):
        decode_relay_payload(bytes(length))


def test_decode_refuses_length_over_498():
    payload = bytearray(CELL_PAYLOAD_LEN)
    payload[RELAY_LENGTH_OFFSET : RELAY_LENGTH_OFFSET + 2] = (499).to_bytes(2, "big")
    with pytest.raises(CellParseError):
        decode_relay_payload(payload)


# --- BEGIN --------------------------------------------------------------------------------


def test_begin_hostname_without_flags():
    assert encode_begin_body("Example.COM", 443) == b"example.com:443\x00"


def test_begin_ipv6_goes_in_brackets_and_flags_are_big_endian():
    body = encode_begin_body("2620:0:6B0:B:1a1a:0:26e5:480e", 80, BeginFlags.IPV6_OK | BeginFlags.IPV6_PREFERRED)
    assert body == b"[2620:0:6b0:b:1a1a:0:26e5:480e]:80\x00" + bytes.fromhex("00000005")


def test_begin_bracketed_ipv6_and_ipv4_literals():
    assert encode_begin_body("[::1]", 22) == b"[::1]:22\x00"
    assert encode_begin_body("18.9.22.169", 80) == b"18.9.22.169:80\x00"


@pytest.mark.parametrize(
    ("host", "port", "flags"),
    [("a.b", 9, 0), ("here-is-a-nice-long.hostname.com", 65535, 0), ("2001:db8::5", 1, 7), ("x", 8080, 1)],
)
def test_begin_round_trip(host, port, flags):
    assert decode_begin_body(encode_begin_body(host, port, flags)) == Begin(host, port, flags)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"a.b:9\x00", Begin("a.b", 9, 0)),
        (b"[2620::6b0:b:1a1a:0:26e5:480e]:80\x00", Begin("2620::6b0:b:1a1a:0:26e5:480e", 80, 0)),
        (b"another.example.com:80\x00\x01\x02", Begin("another.example.com", 80, 0)),
        (b"another.example.com:443\x00\x01\x02\x03\x04", Begin("another.example.com", 443, 0x01020304)),
        (b"a-further.example.com:22\x00\xee\xaa\x00\xffHi mom", Begin("a-further.example.com", 22, 0xEEAA00FF)),
        (b"a.b:80\x00\x42\x43\x44", Begin("a.b", 80, 0)),  # three flag bytes: no flags (#41245)
    ],
)
def test_begin_decode_c_tor_vectors(body, expected):
    assert decode_begin_body(body) == expected


@pytest.mark.parametrize(
    "body", [b"", b"a.b\x00", b"a.b:\x00", b"a.b:xyz\x00", b"a.b:100000\x00", b"a.b:80", b":80\x00", b"a.b:0\x00"]
)
def test_begin_decode_c_tor_bad_vectors(body):
    with pytest.raises(CellParseError):
        decode_begin_body(body)


@pytest.mark.parametrize(
    ("host", "port"),
    [("a.b", 0), ("a.b", 65536), ("", 80), ("a:b", 80), ("nul\x00", 80), ("bücher.de", 80), ("x" * 495, 80)],
)
def test_begin_refuses_bad_targets(host, port):
    with pytest.raises(ValueError):
        encode_begin_body(host, port)


# --- CONNECTED ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("", Connected(None, None)),
        ("20304050", Connected(IPv4Address("32.48.64.80"), None)),
        ("1112131415", Connected(IPv4Address("17.18.19.20"), None)),
        ("02030405 00000e10", Connected(IPv4Address("2.3.4.5"), 3600)),
        ("02030405 f0000000", Connected(IPv4Address("2.3.4.5"), 0xF0000000)),
        (
            "00000000 06 2607f8b0400c0c020000000000000068 00000258",
            Connected(IPv6Address("2607:f8b0:400c:c02::68"), 600),
        ),
    ],
)
def test_connected_c_tor_vectors(body, expected):
    assert decode_connected_body(bytes.fromhex(body)) == expected


@pytest.mark.parametrize(
    "body",
    [
        "000102",  # bogus size 3
        "00000000 07 2607f8b0400c0c020000000000000068 90000258",  # bogus family 7
        "00000000 06 2607f8b0400c0c020000000000000068 000002",  # truncated IPv6
        "00000000",
    ],
)
def test_connected_c_tor_bad_vectors(body):
    with pytest.raises(CellParseError):
        decode_connected_body(bytes.fromhex(body))


def test_connected_encodings_match_c_tor():
    assert encode_connected_body("30.40.50.60", 1024) == bytes.fromhex("1e28323c 00000400")
    assert encode_connected_body("2620::6b0:b:1a1a:0:26e5:480e", 3600) == bytes.fromhex(
        "00000000 06 2620000006b0000b1a1a000026e5480e 00000e10"
    )
    assert encode_connected_body() == b""


@pytest.mark.parametrize("address", [None, IPv4Address("192.0.2.1"), IPv6Address("2001:db8::1")])
def test_connected_round_trip(address):
    ttl = None if address is None else 300
    assert decode_connected_body(encode_connected_body(address, ttl or 0)) == Connected(address, ttl)


DOC_IPV6 = IPv6Address("2001:db8::1")


# --- END ----------------------------------------------------------------------------------


def test_empty_end_means_misc():
    assert decode_end_body(b"") == End(EndReason.MISC)


@pytest.mark.parametrize("reason", list(EndReason))
def test_end_round_trip_for_every_reason(reason):
    body = encode_end_body(reason)
    assert body == bytes([reason])
    decoded = decode_end_body(body)
    assert decoded == End(reason)
    assert decoded.reason is reason


def test_end_unknown_reason_stays_an_int():
    decoded = decode_end_body(b"\x0f")
    assert decoded.reason == 15 and not isinstance(decoded.reason, EndReason)


def test_end_extra_bytes_after_a_plain_reason_are_ignored():
    assert decode_end_body(b"\x06\x01\x02\x03\x04") == End(EndReason.DONE)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("04 c0000201 00000e10", End(EndReason.EXITPOLICY, IPv4Address("192.0.2.1"), 3600)),
        ("04 c0000201", End(EndReason.EXITPOLICY, IPv4Address("192.0.2.1"), None)),
        ("04 20010db8000000000000000000000001 0000003c", End(EndReason.EXITPOLICY, DOC_IPV6, 60)),
        ("04 20010db8000000000000000000000001", End(EndReason.EXITPOLICY, DOC_IPV6, None)),
        ("04", End(EndReason.EXITPOLICY)),
        ("04 c00002", End(EndReason.EXITPOLICY)),  # wrong length: processed without the address
    ],
)
def test_end_exitpolicy_forms(body, expected):
    assert decode_end_body(bytes.fromhex(body)) == expected


@pytest.mark.parametrize(
    ("address", "ttl"),
    [(IPv4Address("198.51.100.9"), 7), (IPv6Address("2001:db8::9"), 0xFFFFFFFF), (IPv4Address("1.2.3.4"), None)],
)
def test_end_exitpolicy_round_trip(address, ttl):
    body = encode_end_body(EndReason.EXITPOLICY, address, ttl)
    assert decode_end_body(body) == End(EndReason.EXITPOLICY, address, ttl)


def test_end_refuses_unencodable_values():
    with pytest.raises(ValueError):
        encode_end_body(256)
    with pytest.raises(ValueError):
        encode_end_body(EndReason.DONE, "1.2.3.4", 5)
    with pytest.raises(ValueError):
        encode_end_body(EndReason.EXITPOLICY, None, 5)


# --- RESOLVE / RESOLVED -------------------------------------------------------------------


def test_resolve_forward():
    assert encode_resolve_body("www.example.com") == b"www.example.com\x00"
    assert decode_resolve_body(b"www.example.com\x00") == "www.example.com"


def test_resolve_reverse_ipv4_uses_in_addr_arpa():
    assert encode_reverse_resolve_body("1.2.3.4") == b"4.3.2.1.in-addr.arpa\x00"


def test_resolve_reverse_ipv6_uses_nibbles_under_ip6_arpa():
    body = encode_reverse_resolve_body(IPv6Address("2001:db8::567:89ab"))
    assert body == (
        b"b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa\x00"
    )


@pytest.mark.parametrize("hostname", ["", "a\x00b", "ünïcode", "x" * 498])
def test_resolve_refuses_bad_names(hostname):
    with pytest.raises(ValueError):
        encode_resolve_body(hostname)


@pytest.mark.parametrize("body", [b"", b"\x00", b"no-nul", b"\xff\x00"])
def test_resolve_decode_refuses_bad_bodies(body):
    with pytest.raises(CellParseError):
        decode_resolve_body(body)


def test_resolved_c_tor_ipv4_vector():
    body = bytes.fromhex("04 04 7f00020a 00000100")
    assert decode_resolved_body(body) == [ResolvedAnswer(ResolvedType.IPV4, IPv4Address("127.0.2.10"), 256)]


def test_resolved_empty_has_no_answers():
    assert decode_resolved_body(b"") == []


def test_resolved_round_trip_of_mixed_answers():
    answers = [
        ResolvedAnswer(ResolvedType.IPV4, IPv4Address("192.0.2.3"), 60),
        ResolvedAnswer(ResolvedType.IPV6, IPv6Address("2001:db8::3"), 120),
        ResolvedAnswer(ResolvedType.HOSTNAME, "host.example.org", 30),
        ResolvedAnswer(0x77, b"unknown type kept raw", 1),
    ]
    assert decode_resolved_body(encode_resolved_body(answers)) == answers


@pytest.mark.parametrize("error_type", [ResolvedType.ERROR_TRANSIENT, ResolvedType.ERROR_NONTRANSIENT])
def test_resolved_error_answers(error_type):
    body = bytes([error_type, 24]) + b"Error resolving hostname" + bytes.fromhex("00000000")
    (answer,) = decode_resolved_body(body)
    assert answer.answer_type is error_type
    assert answer.ttl == 0


@pytest.mark.parametrize(
    "body",
    [
        "04",  # truncated header
        "04 04 7f000001",  # no TTL
        "04 04 7f000001 000000",  # short TTL
        "04 05 7f00000101 00000000",  # IPv4 with length 5
        "06 04 7f000001 00000000",  # IPv6 with length 4
        "00 00 00000000",  # empty hostname
        "04 04 7f000001 00000000 06",  # second answer truncated
    ],
)
def test_resolved_malformed(body):
    with pytest.raises(CellParseError):
        decode_resolved_body(bytes.fromhex(body))


# --- SENDME -------------------------------------------------------------------------------


def test_sendme_v1_layout():
    tag = bytes(range(20))
    body = encode_sendme_body(tag)
    assert body == bytes.fromhex("01 0014") + tag
    assert decode_sendme_body(body) == Sendme(SendmeVersion.AUTHENTICATED, tag)


def test_stream_sendme_is_empty_v0():
    assert encode_sendme_body() == b""
    assert decode_sendme_body(b"") == Sendme(SendmeVersion.UNAUTHENTICATED, None)


def test_sendme_v0_ignores_the_rest():
    assert decode_sendme_body(b"\x00\xff\xff junk") == Sendme(0, None)


def test_sendme_v1_longer_data_uses_the_first_20_bytes():
    body = bytes.fromhex("01 0015") + bytes(range(21))
    assert decode_sendme_body(body) == Sendme(1, bytes(range(20)))


def test_sendme_unknown_version_is_reported_not_parsed():
    assert decode_sendme_body(b"\x02\x00\x00") == Sendme(2, None)


@pytest.mark.parametrize("body", ["01", "01 00", "01 0013" + "00" * 19, "01 0014" + "00" * 19])
def test_sendme_v1_malformed(body):
    with pytest.raises(CellParseError):
        decode_sendme_body(bytes.fromhex(body))


def test_sendme_tag_must_be_20_bytes():
    with pytest.raises(ValueError):
        encode_sendme_body(bytes(16))


# --- EXTEND2 / EXTENDED2 ------------------------------------------------------------------

RSA_ID = b"anthropomorphization"
IPV4_SPEC = bytes.fromhex("00 06 12f40001 f0f1")  # 18.244.0.1:61681
ANARCHO_SPEC = b"\x02\x14anarchoindividualist"
ED_ID = b"brownshoesdontmakeit/brownshoesd"


def test_extend2_c_tor_vector_with_all_four_specifiers_in_spec_order():
    handshake = bytes(range(99))
    specs = link_specifiers_for_relay(
        RSA_ID, ipv4=("18.244.0.1", 61681), ipv6=("2002::f0:c51e", 4370), ed25519_identity=ED_ID
    )
    assert [s.spec_type for s in specs] == [0x00, 0x02, 0x03, 0x01]
    body = encode_extend2_body(specs, 0x0105, handshake)
    assert body == bytes.fromhex(
        "04"
        "0006 12f40001 f0f1"
        "0214 616e7468726f706f6d6f727068697a6174696f6e"
        "0320 62726f776e73686f6573646f6e746d616b6569742f62726f776e73686f657364"
        "0112 20020000000000000000000000f0c51e 1112"
        "0105 0063"
    ) + handshake
    assert decode_extend2_body(body) == Extend2(tuple(specs), 0x0105, handshake)


def test_extend2_c_tor_minimal_ntor_vector_decodes():
    onionskin = bytes(84)
    body = b"\x02" + IPV4_SPEC + ANARCHO_SPEC + bytes.fromhex("0002 0054") + onionskin
    decoded = decode_extend2_body(body)
    assert decoded.link_specifiers == (
        ipv4_link_specifier("18.244.0.1", 61681),
        legacy_id_link_specifier(b"anarchoindividualist"),
    )
    assert (decoded.handshake_type, decoded.handshake_data) == (HandshakeType.NTOR, onionskin)


def test_extend2_header_for_ipv4_rsa_ed_is_69_bytes():
    specs = link_specifiers_for_relay(RSA_ID, ipv4=("127.0.0.1", 5000), ed25519_identity=ED_ID)
    assert len(encode_extend2_body(specs, HandshakeType.NTOR, b"")) == 69


def test_extend2_keeps_unknown_specifiers():
    specs = [LinkSpecifier(0xF0, b"upupdowndownleftrightleftrightba"), legacy_id_link_specifier(RSA_ID)]
    decoded = decode_extend2_body(encode_extend2_body(specs, HandshakeType.NTOR_V3, b"hs"))
    assert decoded.link_specifiers == tuple(specs)
    assert decoded.link_specifiers[1].spec_type is LinkSpecifierType.LEGACY_ID


def test_extend2_too_large_is_refused():
    specs = link_specifiers_for_relay(RSA_ID, ipv4=("127.0.0.1", 5000), ed25519_identity=ED_ID)
    encode_extend2_body(specs, HandshakeType.NTOR_V3, bytes(498 - 69))
    with pytest.raises(ValueError):
        encode_extend2_body(specs, HandshakeType.NTOR_V3, bytes(498 - 68))


def test_link_specifier_helpers_refuse_bad_values():
    with pytest.raises(ValueError):
        link_specifiers_for_relay(RSA_ID)  # no address
    with pytest.raises(ValueError):
        legacy_id_link_specifier(bytes(19))
    with pytest.raises(ValueError):
        link_specifiers_for_relay(RSA_ID, ipv4=("127.0.0.1", 1), ed25519_identity=bytes(31))
    with pytest.raises(ValueError):
        ipv4_link_specifier("::1", 80)
    with pytest.raises(ValueError):
        ipv6_link_specifier("127.0.0.1", 80)
    with pytest.raises(ValueError):
        ipv4_link_specifier("127.0.0.1", 0)


def pad_relay(body: bytes) -> bytes:
    return body + bytes(RELAY_PAYLOAD_LEN - len(body))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        # a too-long handshake
        pad_relay(b"\x02" + IPV4_SPEC + ANARCHO_SPEC + bytes.fromhex("ffff 01d0")),
        # IPv4 specifiers of length 7 and 5
        pad_relay(bytes.fromhex("02 0007 12f40001 f0f1ff") + ANARCHO_SPEC + bytes.fromhex("ffff 0010")),
        pad_relay(bytes.fromhex("02 0005 12f40001 f0") + ANARCHO_SPEC + bytes.fromhex("ffff 0010")),
        # IPv6 specifiers of length 19 and 17
        pad_relay(b"\x03" + IPV4_SPEC + ANARCHO_SPEC + b"\x01\x13" + b"x" * 19),
        pad_relay(b"\x03" + IPV4_SPEC + ANARCHO_SPEC + b"\x01\x11" + b"x" * 17),
        # running out of space in the specifiers
        pad_relay(bytes.fromhex("05 0aff") + bytes(255) + bytes.fromhex("0aff")),
        bytes.fromhex("01 02 14") + bytes(10),
        bytes.fromhex("00 0002"),
    ],
)
def test_extend2_malformed(body):
    with pytest.raises(CellParseError):
        decode_extend2_body(body)


def test_extended2_c_tor_vectors():
    reply = bytes(range(42))
    assert encode_extended2_body(reply) == b"\x00\x2a" + reply
    assert decode_extended2_body(b"\x00\x2a" + reply) == reply
    assert len(decode_extended2_body(pad_relay(b"\x01\xf0"))) == 496
    with pytest.raises(CellParseError):
        decode_extended2_body(pad_relay(b"\x01\xf1"))


# --- TRUNCATED ----------------------------------------------------------------------------


@pytest.mark.parametrize("reason", list(DestroyReason))
def test_truncated_round_trip(reason):
    assert decode_truncated_body(encode_truncated_body(reason)) is reason


def test_truncated_empty_reads_as_none_and_unknown_stays_int():
    assert decode_truncated_body(b"") is DestroyReason.NONE
    assert decode_truncated_body(b"\x80") == 128
    with pytest.raises(ValueError):
        encode_truncated_body(300)


# --- XON / XOFF ---------------------------------------------------------------------------


def test_xoff_round_trip():
    assert encode_xoff_body() == b"\x00"
    assert decode_xoff_body(b"\x00") is None


def test_xon_round_trip():
    assert encode_xon_body(0) == bytes.fromhex("00 00000000")
    assert encode_xon_body(0x01020304) == bytes.fromhex("00 01020304")
    assert decode_xon_body(encode_xon_body(123456)) == 123456
    with pytest.raises(ValueError):
        encode_xon_body(2**32)


@pytest.mark.parametrize("body", [b"", b"\x01"])
def test_xoff_malformed(body):
    with pytest.raises(CellParseError):
        decode_xoff_body(body)


@pytest.mark.parametrize("body", [b"", b"\x00\x00\x00\x00", b"\x01\x00\x00\x00\x00"])
def test_xon_malformed(body):
    with pytest.raises(CellParseError):
        decode_xon_body(body)


def test_begin_longest_hostname_that_fits():
    body = encode_begin_body("x" * 494, 80)  # 494 + ":80" + NUL = 498 bytes
    assert len(body) == RELAY_PAYLOAD_LEN
    assert decode_begin_body(body) == Begin("x" * 494, 80, 0)
