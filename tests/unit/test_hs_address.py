"""v3 onion addresses: rend-spec-v3 section 6's examples and tor's test_hs_common.c vectors."""

from __future__ import annotations

import base64
import hashlib

import pytest

from oppy.hs.address import (
    OnionAddress,
    encode_onion_address,
    is_onion_hostname,
    parse_onion_address,
)
from oppy.hs.errors import BadOnionAddress

#: rend-spec-v3 section 6: "Here are a few example addresses".
SPEC_EXAMPLES = (
    "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion",
    "sp3k262uwy4r2k3ycr5awluarykdpag6a7y33jxop4cs2lu5uz5sseqd.onion",
    "xa4r2iadxm55fbnqgwwi5mymqdcofiu3w6rpbtqn7b2dyn7mgwj64jyd.onion",
)
#: tor test_hs_common.c test_build_address: hs_build_address.py's key and address.
TOR_KEY = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
TOR_ADDRESS = "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkenl5sid"


def _address_of(key: bytes, version: int = 3, checksum: bytes | None = None) -> str:
    """An address built by hand from the spec's formula (independent of the module's encoder)."""
    if checksum is None:
        checksum = hashlib.sha3_256(b".onion checksum" + key + bytes((version,))).digest()[:2]
    return base64.b32encode(key + checksum + bytes((version,))).decode().lower() + ".onion"


@pytest.mark.parametrize("hostname", SPEC_EXAMPLES)
def test_the_spec_examples_parse_and_round_trip(hostname):
    address = parse_onion_address(hostname)
    assert address.hostname == hostname
    assert encode_onion_address(address.identity_key) == hostname
    assert address.subdomain == ""


def test_tor_build_address_vector():
    assert encode_onion_address(TOR_KEY) == TOR_ADDRESS + ".onion"
    assert parse_onion_address(TOR_ADDRESS + ".onion") == OnionAddress(TOR_KEY)


def test_subdomains_and_upper_case_name_the_same_service():
    address = parse_onion_address("WWW.Media." + TOR_ADDRESS.upper() + ".onion")
    assert address.identity_key == TOR_KEY
    assert address.subdomain == "www.media"
    assert address.hostname == TOR_ADDRESS + ".onion"


@pytest.mark.parametrize("hostname, message", [
    # tor test_validate_address: too short, too long, bad checksums (from prop224), not base32.
    ("blah.onion", "56 characters"),
    ("p3xnclpu4mu22dwaurjtsybyqk4xfjmcfz6z62yl24uwmhjatiwnlnadb.onion", "56 characters"),
    ("l5satjgud6gucryazcyvyvhuxhr74u6ygigiuyixe3a6ysis67ororad.onion", "checksum"),
    ("btojiu7nu5y5iwut64eufevogqdw4wmqzugnoluw232r4t3ecsfv37ad.onion", "checksum"),
    ("?" * 56 + ".onion", "base32"),
    # a v2 address, a bare 56-character label, an empty subdomain label
    ("expyuzz4wqqyqhjn.onion", "56 characters"),
    (TOR_ADDRESS, "does not end"),
    ("a.." + TOR_ADDRESS + ".onion", "empty label"),
    ("é" * 56 + ".onion", "base32"),
])
def test_tor_invalid_addresses(hostname, message):
    with pytest.raises(BadOnionAddress, match=message):
        parse_onion_address(hostname)


def test_a_wrong_version_is_refused_even_with_its_own_checksum():
    with pytest.raises(BadOnionAddress, match="version 4"):
        parse_onion_address(_address_of(TOR_KEY, version=4))


def test_a_changed_checksum_byte_is_refused():
    good = hashlib.sha3_256(b".onion checksum" + TOR_KEY + b"\x03").digest()[:2]
    with pytest.raises(BadOnionAddress, match="checksum"):
        parse_onion_address(_address_of(TOR_KEY, checksum=bytes((good[0] ^ 1, good[1]))))


@pytest.mark.parametrize("key, message", [
    # the identity point (0, 1) and the order-2 point (0, -1): small order, all torsion
    (bytes([1]) + bytes(31), "torsion"),
    (bytes.fromhex("ec" + "ff" * 30 + "7f"), "torsion"),
    # not on the curve (tor test_crypto_ed25519_blinding_fail's bad key)
    (bytes.fromhex("e19c65de75c68cf3b7643ea732ba9eb1a3d20d6d57ba223c2ece1df66feb5af0"), "not a point"),
    # y = p + 1: a non-canonical encoding of (0, 1)
    ((2**255 - 18).to_bytes(32, "little"), "non-canonical"),
])
def test_keys_with_torsion_or_off_the_curve_are_refused(key, message):
    with pytest.raises(BadOnionAddress, match=message):
        parse_onion_address(_address_of(key))


def test_onion_hostnames_are_recognized_valid_or_not():
    assert is_onion_hostname("anything.ONION")
    assert is_onion_hostname("blah.onion")
    assert not is_onion_hostname("onion.example.com")
    assert not is_onion_hostname("example.onion.com")


def test_encoding_wants_a_32_byte_key():
    with pytest.raises(ValueError):
        encode_onion_address(bytes(31))
