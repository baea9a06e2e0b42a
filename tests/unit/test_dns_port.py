"""DNSPort: the DNS codec (oppy.dns.message), what each query gets (oppy.dns.server plan/answer, as tor's
dnsserv.c answers) and the virtual addresses of AutomapHostsOnResolve (oppy.circuit.addressmap)."""

from __future__ import annotations

import ipaddress
import logging
import random
import struct

import pytest

from oppy.cell.relay import ResolvedAnswer, ResolvedType
from oppy.circuit.addressmap import AddressMap
from oppy.dns.message import (
    FLAG_QR,
    FLAG_RA,
    FLAG_RD,
    HEADER,
    DnsFormatError,
    Question,
    Rcode,
    encode_name,
    parse_query,
    reverse_name_address,
)
from oppy.dns.server import MIN_TTL, Resolve, Respond, answer, plan
from oppy.logs import SCRUBBED
from oppy.stream.stream import StreamKind

A, PTR, AAAA, MX, TXT = 1, 12, 28, 15, 16


def query(*questions: tuple[str, int], ident: int = 0x1234, flags: int = FLAG_RD, qclass: int = 1) -> bytes:
    body = b"".join(encode_name(name) + struct.pack("!HH", qtype, qclass) for name, qtype in questions)
    return HEADER.pack(ident, flags, len(questions), 0, 0, 0) + body


def header(response: bytes) -> tuple[int, int, int, int]:
    ident, flags, qd, an, _, _ = HEADER.unpack_from(response)
    return ident, flags, qd, an


def rcode(response: bytes) -> int:
    return header(response)[1] & 0xF


def answers_of(response: bytes) -> list[tuple[int, int, bytes]]:
    """(type, ttl, rdata) of each answer record of a response oppy encoded (names uncompressed)."""
    _, _, qd, an = header(response)
    offset = HEADER.size
    for _ in range(qd):
        while response[offset]:
            offset += response[offset] + 1
        offset += 5
    records = []
    for _ in range(an):
        while response[offset]:
            offset += response[offset] + 1
        rtype, _, ttl, length = struct.unpack_from("!HHIH", response, offset + 1)
        offset += 11
        records.append((rtype, ttl, response[offset:offset + length]))
        offset += length
    return records


def test_a_query_is_read_and_its_id_rd_and_questions_are_echoed():
    parsed = parse_query(query(("Web.Test", A)))
    assert parsed.questions == (Question("Web.Test", A, 1),) and parsed.ident == 0x1234
    action = plan(parsed, AddressMap())
    assert action == Resolve(Question("Web.Test", A, 1), StreamKind.RESOLVE, "Web.Test")
    reply = answer(parsed, action.question, [ResolvedAnswer(ResolvedType.IPV4, ipaddress.ip_address("127.0.0.1"), 5)])
    assert header(reply) == (0x1234, FLAG_QR | FLAG_RA | FLAG_RD, 1, 1)
    assert reply[HEADER.size:HEADER.size + len(parsed.question_bytes)] == parsed.question_bytes  # case kept
    assert answers_of(reply) == [(A, MIN_TTL, bytes([127, 0, 0, 1]))]  # tor's TTL floor


def test_compressed_names_are_followed_and_loops_refused():
    packet = HEADER.pack(1, 0, 2, 0, 0, 0) + encode_name("web.test") + struct.pack("!HH", A, 1) \
        + b"\x03www\xc0\x0c" + struct.pack("!HH", AAAA, 1)
    assert [q.name for q in parse_query(packet).questions] == ["web.test", "www.web.test"]
    with pytest.raises(DnsFormatError, match="backwards"):
        parse_query(HEADER.pack(1, 0, 1, 0, 0, 0) + b"\xc0\x0c" + struct.pack("!HH", A, 1))


@pytest.mark.parametrize("packet, reason", [
    (b"\x12\x34\x01", "shorter than a DNS header"),
    (HEADER.pack(1, FLAG_QR, 1, 0, 0, 0) + encode_name("a.test") + b"\x00\x01\x00\x01", "a response"),
    (HEADER.pack(1, 0, 1, 0, 0, 0) + b"\x05web", "label runs past"),
    (HEADER.pack(1, 0, 1, 0, 0, 0) + encode_name("a.test") + b"\x00", "truncated question"),
    (HEADER.pack(1, 0, 1, 0, 0, 0) + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", "unknown label type"),
    (HEADER.pack(1, 0, 1, 0, 0, 0) + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01", "longer than 255"),
])
def test_malformed_packets_are_refused(packet, reason):
    with pytest.raises(DnsFormatError, match=reason):
        parse_query(packet)


def test_what_tor_answers_without_asking_an_exit():
    addresses = AddressMap()
    no_question = parse_query(query())
    assert rcode(plan(no_question, addresses).response) == Rcode.NOERROR
    assert rcode(plan(parse_query(query(("web.test", MX), ("web.test", TXT))), addresses).response) == Rcode.NOTIMP
    assert rcode(plan(parse_query(query(("web.test", A), qclass=3)), addresses).response) == Rcode.NOTIMP
    # The first supported question is the one answered.
    assert plan(parse_query(query(("web.test", MX), ("web.test", AAAA))), addresses).question.qtype == AAAA
    # An onion service name is never sent to an exit.
    onion = plan(parse_query(query(("x" * 56 + ".onion", A))), addresses)
    assert isinstance(onion, Respond) and rcode(onion.response) == Rcode.NXDOMAIN
    # An address literal is its own answer.
    literal = plan(parse_query(query(("10.1.2.3", A))), addresses).response
    assert answers_of(literal) == [(A, MIN_TTL, bytes([10, 1, 2, 3]))]
    assert rcode(plan(parse_query(query(("bad_.-name", A))), addresses).response) == Rcode.NXDOMAIN


def test_ptr_questions_go_to_the_exit_as_addresses():
    action = plan(parse_query(query(("1.0.0.127.in-addr.arpa", PTR))), AddressMap())
    assert action.kind is StreamKind.RESOLVE_PTR and action.target == "127.0.0.1"
    reply = answer(parse_query(query(("1.0.0.127.in-addr.arpa", PTR))), action.question,
                   [ResolvedAnswer(ResolvedType.HOSTNAME, "localhost", 3600)])
    assert answers_of(reply) == [(PTR, 3600, encode_name("localhost"))]
    assert reverse_name_address("1.0.0.127.in-addr.arpa.") == ipaddress.ip_address("127.0.0.1")
    nibbles = ".".join(reversed("20010db8" + "0" * 23 + "1")) + ".ip6.arpa"
    assert reverse_name_address(nibbles) == ipaddress.ip_address("2001:db8::1")
    assert reverse_name_address("1.2.3.in-addr.arpa") is None and reverse_name_address("web.test") is None


@pytest.mark.parametrize("answers, expected_rcode, records", [
    ([ResolvedAnswer(ResolvedType.ERROR_NONTRANSIENT, b"", 0)], Rcode.NXDOMAIN, 0),
    ([ResolvedAnswer(ResolvedType.ERROR_TRANSIENT, b"", 0)], Rcode.SERVFAIL, 0),
    ([], Rcode.SERVFAIL, 0),
    ([ResolvedAnswer(ResolvedType.IPV4, ipaddress.ip_address("127.0.0.1"), 600)], Rcode.NOERROR, 0),  # no IPv6
    ([ResolvedAnswer(ResolvedType.IPV6, ipaddress.ip_address("::1"), 600)], Rcode.NOERROR, 1),
])
def test_the_exits_answers_to_an_aaaa_question(answers, expected_rcode, records):
    parsed = parse_query(query(("web.test", AAAA)))
    reply = answer(parsed, parsed.questions[0], answers)
    assert rcode(reply) == expected_rcode and header(reply)[3] == records


def test_automapped_names_get_stable_virtual_addresses_and_ptr_answers_them():
    addresses = AddressMap(automap=True, suffixes=(".test",), rng=random.Random(7))
    first = plan(parse_query(query(("web.test", A))), addresses).response
    ((_, _, rdata),) = answers_of(first)
    virtual = ipaddress.IPv4Address(rdata)
    assert virtual in ipaddress.ip_network("127.192.0.0/10") and rdata[-1] not in (0, 255)
    assert addresses.name_of(str(virtual)) == "web.test"
    again = plan(parse_query(query(("WEB.test", A))), addresses).response
    assert answers_of(again)[0][2] == rdata
    ((_, _, rdata6),) = answers_of(plan(parse_query(query(("web.test", AAAA))), addresses).response)
    assert ipaddress.IPv6Address(rdata6) in ipaddress.ip_network("fe80::/10")
    reverse = ".".join(reversed(str(virtual).split("."))) + ".in-addr.arpa"
    assert answers_of(plan(parse_query(query((reverse, PTR))), addresses).response)[0][2] == encode_name("web.test")
    # Names without a suffix go to the exit; with automap off nothing is mapped.
    assert isinstance(plan(parse_query(query(("web.example", A))), addresses), Resolve)
    assert not AddressMap(suffixes=(".test",)).should_automap("web.test")
    assert AddressMap(automap=True, suffixes=(".",)).should_automap("anything.at.all")


def test_a_ptr_name_dns_cannot_carry_is_servfail():
    parsed = parse_query(query(("1.0.0.127.in-addr.arpa", PTR)))
    for name in ("x" * 64 + ".test", "caf\u00e9.test"):
        reply = answer(parsed, parsed.questions[0], [ResolvedAnswer(ResolvedType.HOSTNAME, name, 60)])
        assert rcode(reply) == Rcode.SERVFAIL and header(reply)[3] == 0


def test_a_full_address_map_answers_servfail_and_keeps_the_name_out_of_the_log(caplog):
    """SafeLogging 1 (the default): the name the application asked for is not in the log."""
    addresses = AddressMap(automap=True, suffixes=(".test",), ipv4_network="127.192.0.0/30", rng=random.Random(7))
    with caplog.at_level(logging.INFO, logger="oppy"):
        rcodes = [rcode(plan(parse_query(query((f"web{n}.test", A))), addresses).response) for n in range(8)]
    assert Rcode.SERVFAIL in rcodes
    full = [record.getMessage() for record in caplog.records]
    assert full and all("web" not in message and SCRUBBED in message for message in full)
