"""Fuzz target for the DNSPort: any packet is either a query, whose every answer oppy gives is itself a well-formed
response to it, or a DnsFormatError; nothing else is raised."""

from __future__ import annotations

import struct

from hypothesis import given

from oppy.circuit.addressmap import AddressMap
from oppy.dns.message import FLAG_QR, HEADER, DnsFormatError, encode_name, parse_query
from oppy.dns.server import Respond, answer, plan
from tests.unit.fuzz.budget import FUZZ
from tests.unit.fuzz.strategies import seeds_mutated_or_random

SEEDS = [HEADER.pack(7, 0x0100, 1, 0, 0, 1) + encode_name(name) + struct.pack("!HH", qtype, 1)
         + b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00"  # dig's EDNS OPT record
         for name, qtype in (("web.test", 1), ("web.test", 28), ("1.0.0.127.in-addr.arpa", 12), ("x.onion", 1))]


@FUZZ
@given(seeds_mutated_or_random(SEEDS, max_random=600))
def test_any_packet_is_a_query_or_a_format_error(packet):
    try:
        query = parse_query(packet)
    except DnsFormatError:
        return
    action = plan(query, AddressMap(automap=True, suffixes=(".onion",)))
    response = action.response if isinstance(action, Respond) else answer(query, action.question, [])
    ident, flags, qdcount, _, _, _ = HEADER.unpack_from(response)
    assert ident == query.ident and flags & FLAG_QR and qdcount == len(query.questions)
    assert response[HEADER.size:].startswith(query.question_bytes)
