"""Fuzz targets for CERTS cells and the certificates in them: bytes from a relay before it is trusted.

Truncated, corrupted or random CERTS bodies and certificates, and mutations of a real relay's CERTS cell,
raise only CertificateError (CertParseError for the parsers), or verify to the same identities when a
change hit only what tor does not check.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oppy.crypto.certs import (
    CertType,
    Ed25519Certificate,
    RsaEd25519CrossCert,
    VerifiedRelayIdentity,
    parse_certs_cell,
    verify_relay_certs,
)
from oppy.crypto.errors import CertificateError, CertParseError
from tests.unit import certfactory as factory
from tests.unit.fuzz.budget import FUZZ
from tests.unit.fuzz.strategies import mutated
from tests.unit.test_crypto_certs import (
    NOW,
    REAL_CAPTURED_AT,
    REAL_CERTS_BODY,
    REAL_PEER_TLS_CERT,
    REAL_RSA_ID,
    verify,
    with_cert,
)


@pytest.fixture(scope="module")
def cert_set():
    return factory.build_cert_set(factory.cached_relay_keys(0), NOW)


@FUZZ
@given(body=mutated((REAL_CERTS_BODY,)))
def test_mutated_real_certs_cell_raises_only_certificate_errors(body):
    try:
        identity = verify_relay_certs(body, REAL_PEER_TLS_CERT, REAL_RSA_ID, None, REAL_CAPTURED_AT)
    except CertificateError:
        return
    assert identity.rsa_id == REAL_RSA_ID


@FUZZ
@given(data=st.data())
def test_truncated_certs_body_raises_only_certificate_errors(cert_set, data):
    body = cert_set.certs_cell()
    cut = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    with pytest.raises(CertificateError):
        verify(cert_set, body[:cut])


@FUZZ
@given(data=st.data())
def test_corrupted_certs_body_raises_only_certificate_errors(cert_set, data):
    body = bytearray(cert_set.certs_cell())
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        position = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
        body[position] ^= data.draw(st.integers(min_value=1, max_value=255))
    try:
        identity = verify(cert_set, bytes(body))
    except CertificateError:
        return
    # A flip that still verifies can only have hit what is not checked (e.g. the type-1 cert).
    assert identity == VerifiedRelayIdentity(cert_set.keys.rsa_id, cert_set.keys.ed25519_id)


@FUZZ
@given(data=st.data())
def test_corrupted_certificates_raise_only_certificate_errors(cert_set, data):
    cert_type = data.draw(st.sampled_from([2, 4, 5, 7]))
    cert = bytearray(cert_set.certs[cert_type])
    position = data.draw(st.integers(min_value=0, max_value=len(cert) - 1))
    cert[position] ^= data.draw(st.integers(min_value=1, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(cert)))
    with pytest.raises(CertificateError):
        verify(cert_set, with_cert(cert_set, cert_type, bytes(cert[:cut])))


@FUZZ
@given(st.binary(max_size=300))
def test_ed25519_certificate_parser_raises_only_parse_errors(blob):
    try:
        Ed25519Certificate.parse(blob)
    except CertParseError:
        pass


@FUZZ
@given(st.binary(max_size=300))
def test_cross_certificate_and_certs_cell_parsers_raise_only_parse_errors(blob):
    for parser in (RsaEd25519CrossCert.parse, parse_certs_cell):
        try:
            parser(blob)
        except CertParseError:
            pass


@FUZZ
@given(blob=st.binary(max_size=600))
def test_arbitrary_rsa_identity_cert_bytes_raise_only_certificate_errors(cert_set, blob):
    with pytest.raises(CertificateError):
        verify(cert_set, with_cert(cert_set, CertType.RSA_IDENTITY_X509, blob))


@FUZZ
@given(blob=st.binary(max_size=300), cert_type=st.sampled_from([4, 5, 7]))
def test_arbitrary_ed25519_cert_bytes_raise_only_certificate_errors(cert_set, blob, cert_type):
    with pytest.raises(CertificateError):
        verify(cert_set, with_cert(cert_set, cert_type, blob))
