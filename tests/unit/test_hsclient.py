"""The onion-service client's pure helpers, on a descriptor the private network's C tor service published
(tests/unit/data/onion_service): the relay an introduction point names, and the descriptor ID of a fetch."""

from __future__ import annotations

import base64

from oppy.cell.relay import LinkSpecifierType
from oppy.hs.address import parse_onion_address
from oppy.hs.descriptor import decode_descriptor
from oppy.hs.keys import blinded_public_key
from oppy.hsclient.client import descriptor_id, relay_target_for_introduction_point
from tests.unit.test_hs_descriptor import CAPTURE, DATA, NOW, PERIOD, RELAY_FINGERPRINTS


def captured_introduction_points():
    identity = parse_onion_address(CAPTURE["plain"]["address"]).identity_key
    data = (DATA / CAPTURE["plain"]["descriptor"]).read_bytes()
    return decode_descriptor(data, identity, blinded_public_key(identity, PERIOD), NOW).introduction_points


def test_an_introduction_point_is_extended_to_by_its_link_specifiers_and_ntor_key():
    points = captured_introduction_points()
    assert points
    for point in points:
        target = relay_target_for_introduction_point(point)
        specifiers = {spec.spec_type: spec.data for spec in point.link_specifiers}
        assert target.fingerprint in RELAY_FINGERPRINTS
        assert target.rsa_id == specifiers[LinkSpecifierType.LEGACY_ID]
        assert target.ed25519_id == specifiers[LinkSpecifierType.ED25519_ID]
        assert (target.address, target.ntor_onion_key) == ("127.0.0.1", point.onion_key)
        assert 19000 <= target.or_port < 19100  # the private network's ORPorts


def test_the_descriptor_id_is_the_blinded_key_in_unpadded_base64():
    blinded = bytes(range(32))
    ident = descriptor_id(blinded)
    assert "=" not in ident and len(ident) == 43
    assert base64.b64decode(ident + "=") == blinded
