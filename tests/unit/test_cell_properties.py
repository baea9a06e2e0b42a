"""Property tests for the cell codecs.

Every decoder takes bytes from the network, so whatever it is given (here every truncation; random and
mutated bytes in tests/unit/fuzz/test_fuzz_cell.py) it must either return a value or raise
CellParseError: never IndexError, struct.error, UnicodeDecodeError and the like. Encoders and decoders
must round-trip, and CellReader must give the same cells however the stream is split.
"""

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oppy.cell import circuit_padding, link, relay
from oppy.cell.commands import (
    CELL_PAYLOAD_LEN,
    RELAY_PAYLOAD_LEN,
    CellCommand,
    EndReason,
    is_variable_length_command,
)
from oppy.cell.errors import CellParseError
from oppy.cell.framing import (
    LINK_VERSION_UNNEGOTIATED,
    Cell,
    CellReader,
    encode_cell,
    encode_versions_cell,
)

ROUND_TRIP = settings(max_examples=50, deadline=None)

RSA_ID = bytes(range(20))
ED_ID = bytes(range(32))

# Each decoder with a few well-formed inputs, from which truncated and corrupted ones are made.
DECODERS = {
    "versions": (link.decode_versions_body, [link.encode_versions_body([3, 4, 5])]),
    "netinfo": (
        link.decode_netinfo_body,
        [
            link.encode_netinfo_body("127.0.0.1"),
            link.encode_netinfo_body("2001:db8::1", 5, ["10.0.0.1", "2001:db8::2"]),
        ],
    ),
    "certs": (
        link.decode_certs_body,
        [link.encode_certs_body([link.CertsEntry(4, bytes(100)), link.CertsEntry(7, bytes(40))])],
    ),
    "auth_challenge": (link.decode_auth_challenge_body, [link.encode_auth_challenge_body(bytes(32), [1, 3])]),
    "padding_negotiate": (
        link.decode_padding_negotiate_body,
        [link.encode_padding_negotiate_body(link.PaddingNegotiateCommand.START, 1500, 9500)],
    ),
    "create2": (link.decode_create2_body, [link.encode_create2_body(link.HandshakeType.NTOR, bytes(84))]),
    "created2": (link.decode_created2_body, [link.encode_created2_body(bytes(64))]),
    "create_fast": (link.decode_create_fast_body, [link.encode_create_fast_body(bytes(20))]),
    "created_fast": (link.decode_created_fast_body, [link.encode_created_fast_body(bytes(20), bytes(20))]),
    "destroy": (link.decode_destroy_body, [link.encode_destroy_body(3)]),
    "relay_payload": (relay.decode_relay_payload, [bytes(relay.encode_relay_payload(2, 1, b"data"))]),
    "begin": (relay.decode_begin_body, [relay.encode_begin_body("example.com", 443, 1), b"[::1]:80\x00"]),
    "connected": (
        relay.decode_connected_body,
        [relay.encode_connected_body("192.0.2.1", 60), relay.encode_connected_body("2001:db8::1", 60)],
    ),
    "end": (
        relay.decode_end_body,
        [relay.encode_end_body(EndReason.DONE), relay.encode_end_body(EndReason.EXITPOLICY, "2001:db8::1", 9)],
    ),
    "resolve": (relay.decode_resolve_body, [relay.encode_resolve_body("example.com")]),
    "resolved": (
        relay.decode_resolved_body,
        [
            relay.encode_resolved_body(
                [
                    relay.ResolvedAnswer(4, IPv4Address("192.0.2.1"), 5),
                    relay.ResolvedAnswer(6, IPv6Address("2001:db8::1"), 5),
                    relay.ResolvedAnswer(0, "host.example", 5),
                ]
            )
        ],
    ),
    "sendme": (relay.decode_sendme_body, [relay.encode_sendme_body(bytes(20))]),
    "extend2": (
        relay.decode_extend2_body,
        [
            relay.encode_extend2_body(
                relay.link_specifiers_for_relay(RSA_ID, ("192.0.2.1", 9001), ("2001:db8::1", 9001), ED_ID),
                link.HandshakeType.NTOR,
                bytes(84),
            )
        ],
    ),
    "extended2": (relay.decode_extended2_body, [relay.encode_extended2_body(bytes(64))]),
    "truncated": (relay.decode_truncated_body, [relay.encode_truncated_body(8)]),
    "xoff": (relay.decode_xoff_body, [relay.encode_xoff_body()]),
    "xon": (relay.decode_xon_body, [relay.encode_xon_body(1000)]),
    "padding_negotiate": (
        circuit_padding.decode_padding_negotiate,
        [circuit_padding.encode_padding_negotiate(circuit_padding.PaddingNegotiate(
            circuit_padding.PaddingCommand.START, 1, 1))],
    ),
    "padding_negotiated": (
        circuit_padding.decode_padding_negotiated,
        [circuit_padding.encode_padding_negotiated(circuit_padding.PaddingNegotiated(
            circuit_padding.PaddingCommand.STOP, circuit_padding.PaddingResponse.OK, 0, 3))],
    ),
}


def decode_or_parse_error(decoder, data):
    """Run a decoder; CellParseError is an allowed outcome, any other exception fails the test."""
    try:
        decoder(data)
    except CellParseError:
        pass


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decoders_raise_only_cell_parse_error_on_every_truncation(name):
    decoder, examples = DECODERS[name]
    for example in examples:
        decoder(example)  # the untruncated example is well-formed
        for cut in range(len(example)):
            decode_or_parse_error(decoder, example[:cut])
            decode_or_parse_error(decoder, bytearray(example[:cut]))


# --- round trips --------------------------------------------------------------------------


@ROUND_TRIP
@given(
    command=st.integers(0, 255),
    stream_id=st.integers(0, 0xFFFF),
    data=st.binary(max_size=RELAY_PAYLOAD_LEN),
)
def test_relay_payload_round_trip(command, stream_id, data):
    payload = relay.encode_relay_payload(command, stream_id, data)
    assert len(payload) == CELL_PAYLOAD_LEN
    assert relay.decode_relay_payload(payload) == (command, stream_id, data)


cell_strategy = st.builds(
    Cell,
    circ_id=st.integers(0, 0xFFFF),
    command=st.integers(0, 255).filter(lambda c: c != CellCommand.VERSIONS),
    payload=st.binary(max_size=CELL_PAYLOAD_LEN),
)


@ROUND_TRIP
@given(
    cells=st.lists(cell_strategy, max_size=6),
    link_version=st.sampled_from([3, 4, 5]),
    cuts=st.lists(st.integers(0, 4000), max_size=6),
)
def test_reader_gives_the_same_cells_however_the_stream_is_split(cells, link_version, cuts):
    wire = encode_versions_cell([link_version]) + b"".join(
        encode_cell(c.circ_id, c.command, c.payload, link_version) for c in cells
    )
    expected = [Cell(0, CellCommand.VERSIONS, link.encode_versions_body([link_version]))] + [
        c if is_variable_length_command(c.command) else c._replace(payload=c.payload.ljust(CELL_PAYLOAD_LEN, b"\0"))
        for c in cells
    ]
    reader = CellReader()
    got = []
    bounds = [0, *sorted(min(cut, len(wire)) for cut in cuts), len(wire)]
    for start, end in zip(bounds, bounds[1:]):
        for cell in reader.feed(wire[start:end]):
            got.append(cell)
            if reader.link_version == LINK_VERSION_UNNEGOTIATED:
                got.extend(reader.set_link_version(link_version))
    assert got == expected
    assert reader.buffered == 0


hostnames = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}\.){0,3}[a-z]{1,10}", fullmatch=True)
ipv4s = st.builds(IPv4Address, st.integers(0, 2**32 - 1))
ipv6s = st.builds(IPv6Address, st.integers(0, 2**128 - 1))


@ROUND_TRIP
@given(
    host=st.one_of(hostnames, ipv4s.map(str), ipv6s.map(lambda a: a.compressed)),
    port=st.integers(1, 0xFFFF),
    flags=st.integers(0, 7),
)
def test_begin_round_trip(host, port, flags):
    assert relay.decode_begin_body(relay.encode_begin_body(host, port, flags)) == (host, port, flags)


@ROUND_TRIP
@given(
    reason=st.integers(0, 255),
    address=st.one_of(ipv4s, ipv6s),
    ttl=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
)
def test_end_round_trip(reason, address, ttl):
    if reason == EndReason.EXITPOLICY:
        assert relay.decode_end_body(relay.encode_end_body(reason, address, ttl)) == (reason, address, ttl)
    else:
        assert relay.decode_end_body(relay.encode_end_body(reason)) == (reason, None, None)


resolved_answers = st.one_of(
    st.builds(relay.ResolvedAnswer, st.just(relay.ResolvedType.IPV4), ipv4s, st.integers(0, 2**32 - 1)),
    st.builds(relay.ResolvedAnswer, st.just(relay.ResolvedType.IPV6), ipv6s, st.integers(0, 2**32 - 1)),
    st.builds(relay.ResolvedAnswer, st.just(relay.ResolvedType.HOSTNAME), hostnames, st.integers(0, 2**32 - 1)),
    st.builds(
        relay.ResolvedAnswer,
        st.sampled_from([relay.ResolvedType.ERROR_TRANSIENT, relay.ResolvedType.ERROR_NONTRANSIENT, 0x42]),
        st.binary(max_size=30),
        st.integers(0, 2**32 - 1),
    ),
)


@ROUND_TRIP
@given(answers=st.lists(resolved_answers, max_size=8))
def test_resolved_round_trip(answers):
    assert relay.decode_resolved_body(relay.encode_resolved_body(answers)) == answers


@ROUND_TRIP
@given(
    ipv4=st.one_of(st.none(), st.tuples(ipv4s, st.integers(1, 0xFFFF))),
    ipv6=st.one_of(st.none(), st.tuples(ipv6s, st.integers(1, 0xFFFF))),
    ed=st.one_of(st.none(), st.binary(min_size=32, max_size=32)),
    rsa=st.binary(min_size=20, max_size=20),
    handshake_type=st.integers(0, 0xFFFF),
    handshake=st.binary(max_size=300),
)
def test_extend2_round_trip(ipv4, ipv6, ed, rsa, handshake_type, handshake):
    if ipv4 is None and ipv6 is None:
        ipv4 = (IPv4Address("192.0.2.1"), 443)
    specs = relay.link_specifiers_for_relay(rsa, ipv4, ipv6, ed)
    body = relay.encode_extend2_body(specs, handshake_type, handshake)
    assert relay.decode_extend2_body(body) == (tuple(specs), handshake_type, handshake)


@ROUND_TRIP
@given(
    other=st.one_of(ipv4s, ipv6s),
    timestamp=st.integers(0, 2**32 - 1),
    mine=st.lists(st.one_of(ipv4s, ipv6s), max_size=10),
)
def test_netinfo_round_trip(other, timestamp, mine):
    body = link.encode_netinfo_body(other, timestamp, mine)
    padded = body.ljust(CELL_PAYLOAD_LEN, b"\0")
    assert link.decode_netinfo_body(padded) == (timestamp, other, tuple(mine))


@ROUND_TRIP
@given(certs=st.lists(st.builds(link.CertsEntry, st.integers(0, 255), st.binary(max_size=200)), max_size=5))
def test_certs_round_trip(certs):
    assert link.decode_certs_body(link.encode_certs_body(certs)) == certs


@ROUND_TRIP
@given(tag=st.one_of(st.none(), st.binary(min_size=20, max_size=20)))
def test_sendme_round_trip(tag):
    version = 0 if tag is None else 1
    assert relay.decode_sendme_body(relay.encode_sendme_body(tag)) == (version, tag)
