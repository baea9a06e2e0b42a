"""Fuzz target for the onion-address parser: any text gets an OnionAddress or BadOnionAddress.

Seeds are valid addresses (with and without subdomains); mutations flip, insert and delete characters,
so most candidates keep the shape and fail on the checksum, version or key checks.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from oppy.hs.address import ONION_SUFFIX, parse_onion_address
from oppy.hs.errors import BadOnionAddress
from tests.unit.fuzz.budget import FUZZ
from tests.unit.fuzz.strategies import seeds_mutated_or_random

SEEDS = (
    b"25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkenl5sid.onion",
    b"www.pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion",
    b"SP3K262UWY4R2K3YCR5AWLUARYKDPAG6A7Y33JXOP4CS2LU5UZ5SSEQD.ONION",
)


@FUZZ
@given(seeds_mutated_or_random(SEEDS, max_random=120))
def test_onion_address_parser_answers_only_with_its_own_error(data):
    hostname = data.decode("latin-1")
    try:
        address = parse_onion_address(hostname)
    except BadOnionAddress:
        return
    assert hostname.lower().endswith(ONION_SUFFIX)
    assert address.label in hostname.lower()
    assert parse_onion_address(address.hostname) == address.__class__(address.identity_key)


@FUZZ
@given(st.text(max_size=80))
def test_onion_address_parser_takes_any_text(hostname):
    try:
        parse_onion_address(hostname + ONION_SUFFIX)
    except BadOnionAddress:
        pass
