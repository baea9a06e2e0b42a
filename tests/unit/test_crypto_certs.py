"""CERTS cell verification: a real relay's cell, a generated certificate set, ways to break it."""

import base64
import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from oppy.crypto.certs import (
    CertType,
    Ed25519Certificate,
    RsaEd25519CrossCert,
    VerifiedRelayIdentity,
    parse_certs_cell,
    rsa_identity_fingerprint,
    verify_relay_certs,
)
from oppy.crypto.errors import CertificateError, CertParseError
from tests.unit import certfactory as factory
from tests.unit.certfactory import DAY, HOUR

NOW = 1_800_000_000.0

# A real CERTS cell and TLS certificate, captured from Debian's tor 0.4.9.11 running as a relay on
# 127.0.0.1 (link protocol 5) at REAL_CAPTURED_AT; its identities are as tor logged them.
REAL_CAPTURED_AT = 1795278415.0
REAL_RSA_ID = bytes.fromhex("01D2E0111BB7D7DDC7E2170B75F4A8A65C066344")
REAL_ED25519_ID_BASE64 = "pkcekupttALLwgTFOIEKMlGw17HlXuyvqp6suVsTJ9A"
REAL_CERTS_BODY = bytes.fromhex(
    "050102433082023f308201a8a00302010202085e0a23a99bbb62ca300d06092a864886f70d01010b0500301f311d301b"
    "06035504030c147777772e72727a3437727a616e7367762e636f6d301e170d3236313031313030303030305a170d3237"
    "303330373233353935395a3021311f301d06035504030c167777772e6171727068366c32356474786f612e6e65743082"
    "0122300d06092a864886f70d01010105000382010f003082010a0282010100b56b1965688687d1de5ea94b2244964416"
    "0d801a1252937118f9e52d044aa43bff05da1b4a6b80f3b544c1219080f7dd4c8986bf956d19ac7b595d8085734932e5"
    "0b794e9f7192cd3f2373d369bf2c7b0d3961ad54d914dfc94ef80746caadfa38af89a432609f903ed84f056e2aeaef66"
    "9444ef3b0deb58d8cdecbec429f371c48cd9051aa97e11a182e58263be33c6cbb7a21d14697bb3eee110d5e3d789fbd9"
    "ff496ec3e6fa04255276c195b9449aca49f807a6e62a5988f0c22496d0348e0c0183df3da8caa30a394e3e387c9763ea"
    "b7bd5ef01540dc3f22752627f5cac86fd75df64e56a5a252de49392baf07a98bbba1347dd58b64b113e1b56ec59eff02"
    "03010001300d06092a864886f70d01010b0500038181002394cfb0048f2256f1cf7847a36a6469c7442b1167e9557161"
    "6a09592537d4f96b7c480712077e7b3abfc1014d8b01b613013714e1bd32d3817b00fb6410f0c4a6f8808f4165a6714b"
    "fed8b1656f6f2644101f1db259d34a3166e72cba2586fac87c5f21df6b4b54aa50ab0daa666693f7509309b07e718176"
    "76e4d5f5a95cd70201bd308201b930820122a00302010202084b7cae5a0bb9c43d300d06092a864886f70d01010b0500"
    "301f311d301b06035504030c147777772e72727a3437727a616e7367762e636f6d301e170d3236313130373030303030"
    "305a170d3237313130373030303030305a301f311d301b06035504030c147777772e72727a3437727a616e7367762e63"
    "6f6d30819f300d06092a864886f70d010101050003818d0030818902818100cf47b017f35a6c70b0324306eaec01d942"
    "e1e2ce27a687cedfaaa012a10368f519576f17cb24189dba6a87de1da3be7ae8ce610e29ba578567119bbd17d283d829"
    "1b3f4a2fb0395bf346ba43bd57671e509e6099b91672129a8fc6464bfcf09127bef6a89d41c68031bf5582c637140d09"
    "877b88490a5c8b38213fac61e939fb0203010001300d06092a864886f70d01010b0500038181006caca54629f567db0f"
    "f028088f922511b1b4bd10df2b2ec551020ba0470dea37487f221351c8acc6116d82ade8a8043983465708491c31f2c9"
    "875028b191195857aba37360d9e63a2013fa10e7f3edfb8b9a6fb0f5a1146c103a5fe248fee38882e22f2df63bd47dde"
    "89fcd621705b0a94b479539393568d537c9b8c8fdbf37504008c010400079ed10182d57442283c1ecfcdaf09078a020e"
    "129e42a6e471a65df0eee00ad95ac3da860100200400a6471e92ea6db402cbc204c538810a3251b0d7b1e55eecafaa9e"
    "acb95b1327d0b1c54915238565185e8d885d56bdff44dc2cd94030e3e94b1181525e36ea2b765ceade4b1f79a02fc133"
    "fcf214840ea36ae9334b17802ff050c5caf8c1c7f804050068010500079c31034d8c5f165def07076169803ea3aebc99"
    "fb322af8171803f7c0db9281c8c72996004fb7500af8aded5cf17d1339eb09495d84ba3c07103e18abfbd819c9d13883"
    "887eaed56e0a14fbd742a529f7fb3d0ebffb6084a8eaa878d6ea560b65aa89cd0a0700a5a6471e92ea6db402cbc204c5"
    "38810a3251b0d7b1e55eecafaa9eacb95b1327d00007ace180c4c7e5350365e76539890bc600dcf5b3a261b100482751"
    "f4c9eb044f4be2e96210758eac3bc95a44078374128f265566fcf73653a99d4e661847e91ba029c043c1574a2acc342d"
    "c1abf9b70f4025dfdc3b96276818340fb6ba81c0f2100d7331eaed9343d98a9de521997784d9ec84d1e5b8028e916f42"
    "629995b3a0fa575910"
)
REAL_PEER_TLS_CERT = bytes.fromhex(
    "3082023f308201a8a00302010202085e0a23a99bbb62ca300d06092a864886f70d01010b0500301f311d301b06035504"
    "030c147777772e72727a3437727a616e7367762e636f6d301e170d3236313031313030303030305a170d323730333037"
    "3233353935395a3021311f301d06035504030c167777772e6171727068366c32356474786f612e6e657430820122300d"
    "06092a864886f70d01010105000382010f003082010a0282010100b56b1965688687d1de5ea94b22449644160d801a12"
    "52937118f9e52d044aa43bff05da1b4a6b80f3b544c1219080f7dd4c8986bf956d19ac7b595d8085734932e50b794e9f"
    "7192cd3f2373d369bf2c7b0d3961ad54d914dfc94ef80746caadfa38af89a432609f903ed84f056e2aeaef669444ef3b"
    "0deb58d8cdecbec429f371c48cd9051aa97e11a182e58263be33c6cbb7a21d14697bb3eee110d5e3d789fbd9ff496ec3"
    "e6fa04255276c195b9449aca49f807a6e62a5988f0c22496d0348e0c0183df3da8caa30a394e3e387c9763eab7bd5ef0"
    "1540dc3f22752627f5cac86fd75df64e56a5a252de49392baf07a98bbba1347dd58b64b113e1b56ec59eff0203010001"
    "300d06092a864886f70d01010b0500038181002394cfb0048f2256f1cf7847a36a6469c7442b1167e95571616a095925"
    "37d4f96b7c480712077e7b3abfc1014d8b01b613013714e1bd32d3817b00fb6410f0c4a6f8808f4165a6714bfed8b165"
    "6f6f2644101f1db259d34a3166e72cba2586fac87c5f21df6b4b54aa50ab0daa666693f7509309b07e71817676e4d5f5"
    "a95cd7"
)


def real_ed25519_id() -> bytes:
    return base64.b64decode(REAL_ED25519_ID_BASE64 + "=")


# ---------------------------------------------------------------------------------------------
# The real relay


def test_real_relay_certs_verify():
    identity = verify_relay_certs(
        REAL_CERTS_BODY, REAL_PEER_TLS_CERT, REAL_RSA_ID, real_ed25519_id(), REAL_CAPTURED_AT
    )
    assert identity == VerifiedRelayIdentity(REAL_RSA_ID, real_ed25519_id())
    # The relay sends types 1, 2, 4, 5, 7 (as the checklist observed).
    assert [entry.cert_type for entry in parse_certs_cell(REAL_CERTS_BODY)] == [1, 2, 4, 5, 7]


def test_real_relay_certs_fail_for_other_tls_cert_identity_or_time():
    with pytest.raises(CertificateError, match="TLS"):
        verify_relay_certs(
            REAL_CERTS_BODY, REAL_PEER_TLS_CERT + b"\0", REAL_RSA_ID, None, REAL_CAPTURED_AT
        )
    with pytest.raises(CertificateError, match="RSA identity"):
        verify_relay_certs(REAL_CERTS_BODY, REAL_PEER_TLS_CERT, bytes(20), None, REAL_CAPTURED_AT)
    with pytest.raises(CertificateError, match="expired"):
        verify_relay_certs(
            REAL_CERTS_BODY, REAL_PEER_TLS_CERT, REAL_RSA_ID, None, REAL_CAPTURED_AT + 60 * DAY
        )


# ---------------------------------------------------------------------------------------------
# A generated certificate set


@pytest.fixture(scope="module")
def keys():
    return factory.cached_relay_keys(0)


@pytest.fixture(scope="module")
def other_keys():
    return factory.cached_relay_keys(1)


@pytest.fixture(scope="module")
def cert_set(keys):
    return factory.build_cert_set(keys, NOW)


def verify(cert_set, body=None, *, tls=None, rsa_id=None, ed_id=None, now=NOW):
    return verify_relay_certs(
        cert_set.certs_cell() if body is None else body,
        cert_set.tls_cert_der if tls is None else tls,
        cert_set.keys.rsa_id if rsa_id is None else rsa_id,
        ed_id,
        now,
    )


def with_cert(cert_set, cert_type, body):
    certs = dict(cert_set.certs)
    certs[cert_type] = body
    return factory.encode_certs_cell(sorted(certs.items()))


def test_valid_set_yields_both_identities(cert_set, keys):
    expected = VerifiedRelayIdentity(keys.rsa_id, keys.ed25519_id)
    assert verify(cert_set) == expected
    assert verify(cert_set, ed_id=keys.ed25519_id) == expected


def test_certificate_order_unknown_types_and_trailing_bytes_do_not_matter(cert_set, keys):
    entries = [
        (7, cert_set.certs[7]),
        (200, b"whatever"),
        (5, cert_set.certs[5]),
        (4, cert_set.certs[4]),
        (2, cert_set.certs[2]),
    ]
    body = factory.encode_certs_cell(entries) + b"trailing junk"
    assert verify(cert_set, body).rsa_id == keys.rsa_id


def test_rsa_fingerprint_is_sha1_of_pkcs1_der(keys):
    assert rsa_identity_fingerprint(keys.rsa_identity.public_key()) == factory.rsa_fingerprint(
        keys.rsa_identity
    )


def test_wrong_rsa_identity_names_both_fingerprints(cert_set, other_keys):
    with pytest.raises(CertificateError) as caught:
        verify(cert_set, rsa_id=other_keys.rsa_id)
    message = str(caught.value)
    assert cert_set.keys.rsa_id.hex().upper() in message
    assert other_keys.rsa_id.hex().upper() in message


def test_wrong_ed25519_identity_names_both_keys(cert_set, other_keys):
    with pytest.raises(CertificateError) as caught:
        verify(cert_set, ed_id=other_keys.ed25519_id)
    message = str(caught.value)
    assert cert_set.keys.ed25519_id.hex().upper() in message
    assert other_keys.ed25519_id.hex().upper() in message


def test_complete_set_from_another_relay_is_rejected(keys, other_keys):
    impostor = factory.build_cert_set(other_keys, NOW)
    with pytest.raises(CertificateError, match="RSA identity"):
        verify_relay_certs(impostor.certs_cell(), impostor.tls_cert_der, keys.rsa_id, None, NOW)


def test_forged_cross_certificate_is_rejected(cert_set, keys, other_keys):
    forged = factory.encode_crosscert(
        keys.ed25519_id, factory.hours_from(NOW + 180 * DAY), other_keys.rsa_identity
    )
    with pytest.raises(CertificateError, match="not signed by the RSA identity"):
        verify(cert_set, with_cert(cert_set, CertType.RSA_ED25519_CROSSCERT, forged))


def test_cross_certificate_for_another_ed25519_key_is_rejected(cert_set, keys, other_keys):
    crosscert = factory.encode_crosscert(
        other_keys.ed25519_id, factory.hours_from(NOW + 180 * DAY), keys.rsa_identity
    )
    with pytest.raises(CertificateError, match=r"\(type 7\) certifies Ed25519 key"):
        verify(cert_set, with_cert(cert_set, CertType.RSA_ED25519_CROSSCERT, crosscert))


def test_cross_certificate_with_tampered_expiry_is_rejected(cert_set):
    crosscert = bytearray(cert_set.certs[CertType.RSA_ED25519_CROSSCERT])
    crosscert[35] ^= 1  # last byte of EXPIRATION_DATE: signature no longer matches
    with pytest.raises(CertificateError, match="not signed"):
        verify(cert_set, with_cert(cert_set, CertType.RSA_ED25519_CROSSCERT, bytes(crosscert)))


def test_tls_certificate_not_matching_type_5_is_rejected(cert_set, keys):
    other_tls = factory.x509_cert_der(
        keys.tls_key, keys.rsa_identity, NOW - DAY, NOW + DAY, self_signed=False
    )
    with pytest.raises(CertificateError, match="TLS peer presented"):
        verify(cert_set, tls=other_tls)


def test_link_certificate_signed_by_identity_instead_of_signing_key(cert_set, keys):
    link = factory.encode_ed25519_cert(
        factory.ED_SIGNING_TO_LINK,
        factory.hours_from(NOW + DAY),
        hashlib.sha256(cert_set.tls_cert_der).digest(),
        keys.ed25519_identity,
        key_type=factory.KEY_TYPE_SHA256_OF_X509,
        include_signer=False,
    )
    with pytest.raises(CertificateError, match=r"type 5\) has a bad signature"):
        verify(cert_set, with_cert(cert_set, CertType.ED25519_SIGNING_TO_LINK, link))
    # Naming the wrong signer in extension 04 is caught before the signature check.
    link = factory.encode_ed25519_cert(
        factory.ED_SIGNING_TO_LINK,
        factory.hours_from(NOW + DAY),
        hashlib.sha256(cert_set.tls_cert_der).digest(),
        keys.ed25519_identity,
        key_type=factory.KEY_TYPE_SHA256_OF_X509,
    )
    with pytest.raises(CertificateError, match="signing key other than"):
        verify(cert_set, with_cert(cert_set, CertType.ED25519_SIGNING_TO_LINK, link))


def test_link_certificate_with_legacy_key_type_01_is_accepted(cert_set, keys):
    # cert-spec A.4: tor before 0.4.5.1-alpha wrote 01 for every certified key type.
    link = factory.encode_ed25519_cert(
        factory.ED_SIGNING_TO_LINK,
        factory.hours_from(NOW + DAY),
        hashlib.sha256(cert_set.tls_cert_der).digest(),
        keys.ed25519_signing,
        key_type=factory.KEY_TYPE_ED25519,
        include_signer=True,
    )
    assert verify(cert_set, with_cert(cert_set, CertType.ED25519_SIGNING_TO_LINK, link))


def test_identity_cert_signed_by_a_key_other_than_its_extension(cert_set, keys, other_keys):
    body = bytearray(
        factory.encode_ed25519_cert(
            factory.ED_IDENTITY_TO_SIGNING,
            factory.hours_from(NOW + DAY),
            factory.raw_public(keys.ed25519_signing),
            other_keys.ed25519_identity,
        )
    )
    # Replace the extension-04 key (bytes 44..76) by the real identity: the signature then fails.
    body[44:76] = keys.ed25519_id
    with pytest.raises(CertificateError, match=r"type 4\) has a bad signature"):
        verify(cert_set, with_cert(cert_set, CertType.ED25519_IDENTITY_TO_SIGNING, bytes(body)))


def test_identity_cert_without_signed_with_key_extension_is_rejected(cert_set, keys):
    body = factory.encode_ed25519_cert(
        factory.ED_IDENTITY_TO_SIGNING,
        factory.hours_from(NOW + DAY),
        factory.raw_public(keys.ed25519_signing),
        keys.ed25519_identity,
        include_signer=False,
    )
    with pytest.raises(CertificateError, match="lacks the signed-with-ed25519-key extension"):
        verify(cert_set, with_cert(cert_set, CertType.ED25519_IDENTITY_TO_SIGNING, body))


def test_ed25519_cert_in_the_wrong_slot_is_rejected(cert_set):
    body = with_cert(
        cert_set,
        CertType.ED25519_SIGNING_TO_LINK,
        cert_set.certs[CertType.ED25519_IDENTITY_TO_SIGNING],
    )
    with pytest.raises(CertificateError, match="CERT_TYPE 4"):
        verify(cert_set, body)


def test_unknown_extension_affecting_validation_is_rejected(cert_set, keys):
    def identity_cert(flags):
        return factory.encode_ed25519_cert(
            factory.ED_IDENTITY_TO_SIGNING,
            factory.hours_from(NOW + DAY),
            factory.raw_public(keys.ed25519_signing),
            keys.ed25519_identity,
            extra_extensions=[(0x42, flags, b"future")],
        )

    assert verify(cert_set, with_cert(cert_set, 4, identity_cert(0)))
    with pytest.raises(CertParseError, match="AFFECTS_VALIDATION"):
        verify(cert_set, with_cert(cert_set, 4, identity_cert(factory.FLAG_AFFECTS_VALIDATION)))


@pytest.mark.parametrize(
    ("cert_type", "name"),
    [
        (2, "RSA identity certificate"),
        (4, "identity->signing"),
        (5, "signing->link"),
        (7, "cross-certificate"),
    ],
)
def test_missing_certificate_types_are_named(cert_set, cert_type, name):
    certs = {t: body for t, body in cert_set.certs.items() if t != cert_type}
    with pytest.raises(CertificateError, match=f"lacks the .*{name}"):
        verify(cert_set, factory.encode_certs_cell(sorted(certs.items())))


@pytest.mark.parametrize("cert_type", [1, 2, 4, 5, 7])
def test_duplicated_certificate_types_are_rejected(cert_set, cert_type):
    entries = sorted(cert_set.certs.items()) + [(cert_type, cert_set.certs[cert_type])]
    with pytest.raises(CertificateError, match="more than one"):
        verify(cert_set, factory.encode_certs_cell(entries))


def test_rsa_identity_cert_validity_window_uses_c_tor_slop(keys):
    # Expired one day ago: within the 2-day past slop, accepted; three days ago: rejected.
    assert verify(factory.build_cert_set(keys, NOW, rsa_cert_not_after=NOW - DAY))
    with pytest.raises(CertificateError, match=r"RSA identity certificate \(type 2\) expired"):
        verify(factory.build_cert_set(keys, NOW, rsa_cert_not_after=NOW - 3 * DAY))
    # Valid from 29 days in the future: within the 30-day future slop; 31 days: rejected.
    assert verify(factory.build_cert_set(keys, NOW, rsa_cert_not_before=NOW + 29 * DAY))
    with pytest.raises(CertificateError, match="not valid until"):
        verify(factory.build_cert_set(keys, NOW, rsa_cert_not_before=NOW + 31 * DAY))


@pytest.mark.parametrize(
    ("parameter", "name"),
    [
        ("identity_cert_expires", "type 4"),
        ("link_cert_expires", "type 5"),
        ("crosscert_expires", "type 7"),
    ],
)
def test_expired_ed25519_and_cross_certificates_are_rejected(keys, parameter, name):
    expired = factory.build_cert_set(keys, NOW, **{parameter: NOW - 2 * HOUR})
    with pytest.raises(CertificateError, match=rf"{name}\) expired at"):
        verify(expired)
    # The expiry is an hour boundary: valid up to and including that instant.
    boundary = factory.hours_from(NOW + HOUR) * HOUR
    at_boundary = factory.build_cert_set(keys, NOW, **{parameter: boundary})
    assert verify(at_boundary, now=boundary)
    with pytest.raises(CertificateError, match="expired"):
        verify(at_boundary, now=boundary + 1)


def test_rsa_identity_key_must_be_1024_bits(keys):
    big_key = rsa.generate_private_key(public_exponent=65537, key_size=1536)
    der = factory.x509_cert_der(big_key, big_key, NOW - DAY, NOW + DAY)
    cert_set = factory.build_cert_set(keys, NOW)
    with pytest.raises(CertificateError, match="RSA-1024"):
        verify(
            cert_set,
            with_cert(cert_set, CertType.RSA_IDENTITY_X509, der),
            rsa_id=factory.rsa_fingerprint(big_key),
        )


def test_rsa_identity_cert_must_be_self_signed(keys, other_keys):
    der = factory.x509_cert_der(keys.rsa_identity, other_keys.rsa_identity, NOW - DAY, NOW + DAY)
    cert_set = factory.build_cert_set(keys, NOW)
    with pytest.raises(CertificateError, match="self-signed"):
        verify(cert_set, with_cert(cert_set, CertType.RSA_IDENTITY_X509, der))


def test_rsa_identity_cert_that_is_not_der_is_a_parse_error(cert_set):
    with pytest.raises(CertParseError, match="RSA identity"):
        verify(cert_set, with_cert(cert_set, CertType.RSA_IDENTITY_X509, b"\x30\x03junk"))


def test_rsa_identity_cert_with_unknown_x509_version_is_a_parse_error(cert_set):
    der = cert_set.certs[CertType.RSA_IDENTITY_X509]
    version_field = bytes.fromhex("a003020102")  # [0] EXPLICIT INTEGER 2 (X.509 v3)
    assert version_field in der
    broken = der.replace(version_field, bytes.fromhex("a00302017b"), 1)
    with pytest.raises(CertParseError, match="not a usable DER X.509"):
        verify(cert_set, with_cert(cert_set, CertType.RSA_IDENTITY_X509, broken))


# ---------------------------------------------------------------------------------------------
# Parsers on their own


def test_ed25519_certificate_fields(cert_set, keys):
    certificate = Ed25519Certificate.parse(cert_set.certs[CertType.ED25519_IDENTITY_TO_SIGNING])
    assert certificate.cert_type == 4
    assert certificate.certified_key == factory.raw_public(keys.ed25519_signing)
    assert certificate.signing_key == keys.ed25519_id
    assert certificate.expires_at == factory.hours_from(NOW + 30 * DAY) * HOUR
    assert certificate.signature_is_valid(keys.ed25519_id)
    assert not certificate.signature_is_valid(factory.raw_public(keys.ed25519_signing))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b"\x02" + b[1:], "version"),
        (lambda b: b + b"\0", "stray"),
        (lambda b: b[:-1], "stray|truncated"),
        (lambda b: b[:39] + b"\x05" + b[40:], "truncated"),
        (lambda b: b[:40] + struct.pack(">H", 31) + b[42:], "must hold 32"),
    ],
)
def test_malformed_ed25519_certificates(cert_set, mutate, message):
    body = cert_set.certs[CertType.ED25519_IDENTITY_TO_SIGNING]
    with pytest.raises(CertParseError, match=message):
        Ed25519Certificate.parse(mutate(body))


def test_repeated_signed_with_key_extension_is_rejected(keys):
    body = factory.encode_ed25519_cert(
        4,
        1,
        bytes(32),
        keys.ed25519_identity,
        extra_extensions=[(factory.EXT_SIGNED_WITH_KEY, 0, keys.ed25519_id)],
    )
    with pytest.raises(CertParseError, match="repeats"):
        Ed25519Certificate.parse(body)


def test_cross_certificate_parse_checks_length(cert_set):
    body = cert_set.certs[CertType.RSA_ED25519_CROSSCERT]
    assert RsaEd25519CrossCert.parse(body).ed25519_key == cert_set.keys.ed25519_id
    for broken in (body[:-1], body + b"\0", body[:36]):
        with pytest.raises(CertParseError):
            RsaEd25519CrossCert.parse(broken)


def test_certs_cell_parse_errors():
    with pytest.raises(CertParseError, match="empty"):
        parse_certs_cell(b"")
    with pytest.raises(CertParseError, match="header"):
        parse_certs_cell(b"\x01\x02\x00")
    with pytest.raises(CertParseError, match="inside certificate 1/1"):
        parse_certs_cell(b"\x01\x02\x00\x05abcd")
    assert parse_certs_cell(b"\x00garbage") == []


def test_ed25519_signature_check_rejects_bad_keys(cert_set):
    certificate = Ed25519Certificate.parse(cert_set.certs[CertType.ED25519_IDENTITY_TO_SIGNING])
    assert not certificate.signature_is_valid(b"\xff" * 32)
    assert not certificate.signature_is_valid(b"short")
