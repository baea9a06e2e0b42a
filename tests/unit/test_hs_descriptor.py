"""v3 descriptors: the two descriptors the private network's C tor 0.4.9 services published (a plain one
and one with client authorization, tests/unit/data/onion_service, "now" pinned to their capture), tor's
test_hs_descriptor.inc document, and the failures a client must tell apart (SOCKS F1, F4, F5)."""

from __future__ import annotations

import base64
import calendar
import json
import re
import time
from pathlib import Path

import pytest

from oppy.cell.relay import LinkSpecifierType
from oppy.hs.address import parse_onion_address
from oppy.hs.client_auth import parse_client_auth_line
from oppy.hs.descriptor import (
    ENCRYPTED_CONSTANT,
    SUPERENCRYPTED_CONSTANT,
    PowParams,
    decode_descriptor,
    decrypt_layer,
    parse_first_layer,
    parse_outer_descriptor,
    parse_second_layer,
)
from oppy.hs.errors import ClientAuthMissing, ClientAuthWrong, InvalidDescriptor
from oppy.hs.keys import blinded_public_key, subcredential
from oppy.hs.timeperiod import TimePeriod, consensus_time_period, time_period_at
from oppy.netdoc.documents import parse_consensus_header

DATA = Path(__file__).resolve().parent / "data" / "onion_service"
CAPTURE = json.loads((DATA / "capture.json").read_text())
#: The capture time; the descriptors' certificates are valid for 54 hours from their signing.
NOW = calendar.timegm(time.strptime(CAPTURE["captured_at"], "%Y-%m-%dT%H:%M:%SZ"))
#: The test network votes every 20 s: 8-minute periods offset by 240 s. The service's first descriptor
#: at 17:50 is the one for the period that began before the latest SRV run (rend-spec-v3 2.2.4.2.1).
PERIOD = TimePeriod(3742692, 8, 240)
#: The private network's relays the introduction points are on (scripts/testnet env).
RELAY_FINGERPRINTS = {
    "13AB57925C9A92937A508C08A95D8CE90AD761AB", "FECFC7CAD1BC04AE794E5EAB85FE3AB62F7ECAA4",
    "D5042E8F11E7CDE6E5BA3885B50E5608D45F5D3D", "2D24780D74FF12F9B6D9182E746E14CFCD32DAD6",
}


def _service(name: str) -> tuple[bytes, bytes, bytes]:
    """(descriptor bytes, identity key, blinded key for PERIOD)."""
    identity = parse_onion_address(CAPTURE[name]["address"]).identity_key
    return (DATA / CAPTURE[name]["descriptor"]).read_bytes(), identity, blinded_public_key(identity, PERIOD)


def _client_key(line_name: str) -> bytes:
    return parse_client_auth_line(CAPTURE["auth"][line_name]).private_key


def _plaintexts(name: str) -> tuple[bytes, bytes, bytes]:
    """(first layer plaintext, second layer plaintext, signing key) of a service's descriptor."""
    data, identity, blinded = _service(name)
    outer = parse_outer_descriptor(data, NOW)
    sub = subcredential(identity, blinded)
    first = decrypt_layer(outer.superencrypted, blinded, sub, outer.revision_counter, SUPERENCRYPTED_CONSTANT)
    second = decrypt_layer(parse_first_layer(first).encrypted, blinded, sub, outer.revision_counter,
                           ENCRYPTED_CONSTANT)
    return first, second, outer.signing_key


def test_the_capture_period_is_the_one_the_service_signed_for():
    data, identity, blinded = _service("plain")
    # the consensus of the capture (valid-after 17:50:00, 20-second votes) is in the next period
    assert time_period_at(calendar.timegm((2026, 12, 5, 17, 50, 0)), 8, 20) == PERIOD.next()
    assert parse_outer_descriptor(data, NOW).blinded_key == blinded
    assert blinded_public_key(identity, PERIOD.next()) != blinded


def test_the_plain_service_descriptor_decodes():
    data, identity, blinded = _service("plain")
    descriptor = decode_descriptor(data, identity, blinded, NOW)
    assert descriptor.revision_counter == 28374927
    assert descriptor.lifetime == 180 * 60
    assert descriptor.outer.blinded_key == blinded
    assert descriptor.subcredential == subcredential(identity, blinded)
    assert descriptor.first_layer.auth_type == "x25519"
    assert len(descriptor.first_layer.auth_clients) == 16        # fake entries hide client auth (2.5.1.4)
    second = descriptor.second_layer
    assert second.create2_formats == (2,)
    assert second.flow_control == ("1-2", 31)
    assert (second.intro_auth_required, second.single_onion_service, second.pow_params) == ((), False, None)
    assert len(descriptor.introduction_points) == 3
    for point in descriptor.introduction_points:
        kinds = [spec.spec_type for spec in point.link_specifiers]
        assert kinds == [LinkSpecifierType.TLS_TCP_IPV4, LinkSpecifierType.LEGACY_ID, LinkSpecifierType.ED25519_ID]
        assert point.link_specifiers[0].data[:4] == bytes((127, 0, 0, 1))
        assert point.link_specifiers[1].data.hex().upper() in RELAY_FINGERPRINTS
        assert point.auth_key == point.auth_key_cert.certified_key
        assert len(point.onion_key) == len(point.enc_key) == 32
        assert point.auth_key_cert.signing_key == descriptor.outer.signing_key


def test_the_client_auth_descriptor_needs_the_key_and_tells_missing_from_wrong():
    data, identity, blinded = _service("auth")
    with pytest.raises(ClientAuthMissing):
        decode_descriptor(data, identity, blinded, NOW)
    with pytest.raises(ClientAuthWrong):
        decode_descriptor(data, identity, blinded, NOW, client_key=_client_key("wrong_client_key_line"))
    descriptor = decode_descriptor(data, identity, blinded, NOW, client_key=_client_key("client_key_line"))
    assert descriptor.revision_counter == 28431797
    assert len(descriptor.introduction_points) == 3


def test_a_client_key_does_not_hurt_a_service_without_client_auth():
    data, identity, blinded = _service("plain")
    descriptor = decode_descriptor(data, identity, blinded, NOW, client_key=_client_key("client_key_line"))
    assert len(descriptor.introduction_points) == 3


def test_a_descriptor_for_another_blinded_key_or_service_is_refused():
    data, identity, blinded = _service("plain")
    with pytest.raises(InvalidDescriptor, match="blinded key"):
        decode_descriptor(data, identity, blinded_public_key(identity, PERIOD.next()), NOW)
    _, other_identity, other_blinded = _service("auth")
    with pytest.raises(InvalidDescriptor, match="blinded key"):
        decode_descriptor(data, other_identity, other_blinded, NOW)


def test_an_expired_signing_certificate_is_refused():
    data, identity, blinded = _service("plain")
    expires = parse_outer_descriptor(data, NOW).signing_key_cert.expires_at
    decode_descriptor(data, identity, blinded, expires)
    with pytest.raises(InvalidDescriptor, match="expired"):
        decode_descriptor(data, identity, blinded, expires + 1)


@pytest.mark.parametrize("old, new", [
    (b"revision-counter 28374927", b"revision-counter 28374928"),   # signed: the signature breaks
    (b"descriptor-lifetime 180", b"descriptor-lifetime 181"),
    (b"\nsuperencrypted\n-----BEGIN MESSAGE-----\npmUvf", b"\nsuperencrypted\n-----BEGIN MESSAGE-----\npmUvg"),
])
def test_a_changed_byte_breaks_the_signature(old, new):
    data, identity, blinded = _service("plain")
    assert old in data
    with pytest.raises(InvalidDescriptor, match="signature"):
        decode_descriptor(data.replace(old, new, 1), identity, blinded, NOW)


def test_tors_test_descriptor_verifies_once_its_stray_space_is_gone():
    # tor test_hs_descriptor.inc HS_DESC_BAD_SIG: " signature ..." has a leading space, so the
    # signature line is malformed; without it, the document's certificate and signature check out.
    text = (DATA / "tor_bad_sig.desc").read_text()
    now = 1502661600 - 3600                                    # an hour before its certificate expires
    with pytest.raises(InvalidDescriptor):
        parse_outer_descriptor(text, now)
    outer = parse_outer_descriptor(text.replace("\n signature", "\nsignature"), now)
    assert outer.revision_counter == 42
    assert outer.lifetime_minutes == 180


def _edit(data: bytes, pattern: bytes, replacement: bytes) -> bytes:
    edited = re.sub(pattern, replacement, data, count=1, flags=re.M)
    assert edited != data
    return edited


@pytest.mark.parametrize("pattern, replacement, message", [
    (rb"^hs-descriptor 3", b"hs-descriptor 4", "version"),
    (rb"^hs-descriptor 3\n", b"", "start with"),
    (rb"^descriptor-lifetime 180", b"descriptor-lifetime 721", "descriptor-lifetime"),
    (rb"^descriptor-lifetime 180", b"descriptor-lifetime 180\ndescriptor-lifetime 180", "2 times"),
    (rb"^revision-counter 28374927", b"revision-counter 18446744073709551616", "revision-counter"),
    (rb"^revision-counter 28374927", b"revision-counter -1", "revision-counter"),
    (rb"^revision-counter 28374927\n", b"", "0 times"),
    (rb"^signature (\S+)", rb"signature \1A", "86"),
    (rb"^signature (\S+)\n?", rb"signature \1\nextra-line\n", "end with"),
    (rb"-----END ED25519 CERT-----", b"-----END ED25519 CERTS-----", "unterminated"),
    (rb"^superencrypted\n", b"superencrypted x\n", "arguments"),
    (rb"^revision-counter 28374927", "revision-counter 2837492\u0667".encode(), "ASCII"),
])
def test_malformed_outer_documents(pattern, replacement, message):
    data, identity, blinded = _service("plain")
    with pytest.raises(InvalidDescriptor, match=message):
        decode_descriptor(_edit(data, pattern, replacement), identity, blinded, NOW)


def test_unknown_outer_lines_are_ignored_but_signed():
    data, _, _ = _service("plain")
    with pytest.raises(InvalidDescriptor, match="signature"):
        parse_outer_descriptor(_edit(data, rb"^revision-counter", b"future-field 1\nrevision-counter"), NOW)


def test_oversized_descriptors_are_refused():
    data, _, _ = _service("plain")
    with pytest.raises(InvalidDescriptor, match="50000"):
        parse_outer_descriptor(data + b"x" * 50000, NOW)


def test_a_wrong_mac_leaves_the_layer_closed():
    data, identity, blinded = _service("plain")
    outer = parse_outer_descriptor(data, NOW)
    sub = subcredential(identity, blinded)
    blob = outer.superencrypted
    assert decrypt_layer(blob, blinded, sub, outer.revision_counter, SUPERENCRYPTED_CONSTANT) is not None
    tampered = blob[:20] + bytes([blob[20] ^ 1]) + blob[21:]
    assert decrypt_layer(tampered, blinded, sub, outer.revision_counter, SUPERENCRYPTED_CONSTANT) is None
    assert decrypt_layer(blob, blinded, sub, outer.revision_counter + 1, SUPERENCRYPTED_CONSTANT) is None
    assert decrypt_layer(blob, blinded, sub, outer.revision_counter, ENCRYPTED_CONSTANT) is None


@pytest.mark.parametrize("pattern, replacement, message", [
    (rb"^desc-auth-type x25519", b"desc-auth-type x448", "desc-auth-type"),
    (rb"^desc-auth-type x25519\n", b"", "start with"),
    (rb"^desc-auth-ephemeral-key (\S+)", b"desc-auth-ephemeral-key AAAA", "ephemeral-key"),
    (rb"^auth-client (\S+) ", b"auth-client AAAA ", "auth-client id"),
    (rb"^auth-client (\S+) (\S+) (\S+)", rb"auth-client \1 \2", "arguments"),
    (rb"^encrypted\n", b"encrypted-not\n", "0 times"),
])
def test_malformed_first_layers(pattern, replacement, message):
    first, _, _ = _plaintexts("plain")
    with pytest.raises(InvalidDescriptor, match=message):
        parse_first_layer(_edit(first, pattern, replacement))


def test_the_first_layer_may_lack_its_final_newline():
    first, _, _ = _plaintexts("plain")
    assert not first.endswith(b"\n")                 # C tor writes it so (rend-spec-v3 2.5.1.2)
    assert len(parse_first_layer(first + b"\n").auth_clients) == 16


@pytest.mark.parametrize("pattern, replacement, message", [
    (rb"^create2-formats 2", b"create2-formats 3", "ntor"),
    (rb"^create2-formats 2\n", b"", "0 times"),
    (rb"^create2-formats 2", b"create2-formats 2\nintro-auth-required rsa", "known type"),
    (rb"^create2-formats 2", b"create2-formats 2\nsingle-onion-service\nsingle-onion-service", "2 times"),
    (rb"^flow-control 1-2 31", b"flow-control 1-2 0", "sendme_inc"),
    (rb"^flow-control 1-2 31", b"flow-control 1-2", "arguments"),
])
def test_malformed_second_layers(pattern, replacement, message):
    _, second, signing_key = _plaintexts("plain")
    with pytest.raises(InvalidDescriptor, match=message):
        parse_second_layer(_edit(second, pattern, replacement), signing_key, NOW)


def test_second_layer_options_are_read():
    _, second, signing_key = _plaintexts("plain")
    seed = base64.b64encode(bytes(range(32)))
    edited = _edit(second, rb"^create2-formats 2", b"create2-formats x 3 2 99999\nintro-auth-required ed25519\n"
                                                   b"single-onion-service\npow-params v1 " + seed
                                                   + b" 10 2026-12-05T18:00:00")
    layer = parse_second_layer(edited, signing_key, NOW)
    assert layer.create2_formats == (3, 2)
    assert layer.intro_auth_required == ("ed25519",)
    assert layer.single_onion_service
    assert layer.pow_params == PowParams("v1", bytes(range(32)), 10, calendar.timegm((2026, 12, 5, 18, 0, 0)))


@pytest.mark.parametrize("line", [
    # tor 0.4.8 decode_pow_params: each of these makes the whole descriptor invalid
    b"pow-params v2 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= 10 2026-12-05T18:00:00",
    b"pow-params v1 AAEC 10 2026-12-05T18:00:00",
    b"pow-params v1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= -1 2026-12-05T18:00:00",
    b"pow-params v1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= 10 2026-12-05 18:00:00",
    b"pow-params v1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= 10",
    b"pow-params v1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= 10 2026-12-05T18:00:00\n"
    b"pow-params v1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= 10 2026-12-05T18:00:00",
])
def test_malformed_pow_params(line):
    _, second, signing_key = _plaintexts("plain")
    with pytest.raises(InvalidDescriptor, match="pow-params"):
        parse_second_layer(_edit(second, rb"^create2-formats 2", b"create2-formats 2\n" + line), signing_key, NOW)


@pytest.mark.parametrize("pattern, replacement", [
    (rb"^introduction-point \S+", b"introduction-point blah"),                    # tor: invalid link specifiers
    (rb"^introduction-point \S+", b"introduction-point " + base64.b64encode(b"\x01\x00\x05abcde")),
    (rb"^onion-key ntor \S+", b"onion-key ntor AAAA"),
    (rb"^onion-key ntor", b"onion-key x448"),
    (rb"^enc-key ntor", b"enc-key x448"),
    (rb"^auth-key\n-----BEGIN ED25519 CERT-----\nAQk", b"auth-key\n-----BEGIN ED25519 CERT-----\nAQs"),
    (rb"^enc-key-cert\n", b"enc-key-certificate\n"),
])
def test_a_malformed_introduction_point_is_skipped_and_the_others_kept(pattern, replacement):
    _, second, signing_key = _plaintexts("plain")
    layer = parse_second_layer(_edit(second, pattern, replacement), signing_key, NOW)
    assert len(layer.introduction_points) == 2


def test_introduction_points_signed_by_another_key_or_expired_are_skipped():
    _, second, signing_key = _plaintexts("plain")
    assert parse_second_layer(second, bytes(32), NOW).introduction_points == ()
    expires = parse_second_layer(second, signing_key, NOW).introduction_points[0].auth_key_cert.expires_at
    assert parse_second_layer(second, signing_key, expires + 1).introduction_points == ()


def test_more_than_twenty_introduction_points_are_refused():
    _, second, signing_key = _plaintexts("plain")
    first_point = second.index(b"introduction-point ")
    points = second[first_point:].rstrip(b"\n") + b"\n"
    with pytest.raises(InvalidDescriptor, match="21 introduction points"):
        parse_second_layer(second[:first_point] + points * 7, signing_key, NOW)
    assert len(parse_second_layer(second[:first_point] + points * 6, signing_key, NOW).introduction_points) == 18


@pytest.mark.parametrize("capture_file", ["hsfetch.json", "hsfetch_previous_srv.json"])
def test_the_descriptors_a_c_tor_client_fetched_decode(capture_file):
    # tests/unit/data/onion_service/hsfetch*.json: the same services' descriptors for later periods, as a
    # C tor client fetched them from the HSDirs, with the consensus it used.
    capture = json.loads((DATA / capture_file).read_text())
    consensus = parse_consensus_header(capture["consensus"].encode())
    period = consensus_time_period(consensus, testing_network=True)
    for name, client_key in (("plain", None), ("auth", _client_key("client_key_line"))):
        address = CAPTURE[name]["address"]
        identity = parse_onion_address(address).identity_key
        encoded = capture["descriptors"][address.removesuffix(".onion")].encode()
        descriptor = decode_descriptor(encoded, identity, blinded_public_key(identity, period), consensus.valid_after,
                                       client_key=client_key)
        assert len(descriptor.introduction_points) == 3
        assert descriptor.outer.signing_key != parse_outer_descriptor(_service(name)[0], NOW).signing_key
