"""Key certificate and consensus verification against real directory documents.

"now" is always pinned inside the document's validity window; the documents are
long expired in wall-clock terms.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from oppy.netdoc.authorities import DEFAULT_AUTHORITIES, DirAuthority
from oppy.netdoc.documents import (
    ConsensusHeader,
    parse_consensus_header,
    parse_key_certificates,
)
from oppy.netdoc.errors import (
    BadCertificationError,
    BadCrossCertificateError,
    BadSignatureError,
    CertificateExpiredError,
    CertificateFingerprintError,
    CertificateNotYetValidError,
    ConsensusNotLiveError,
    ConsensusParseError,
    DirectoryError,
    NotEnoughSignaturesError,
    UnknownAuthorityError,
)
from oppy.netdoc.fields import parse_time
from oppy.netdoc.verify import (
    REASONABLY_LIVE_TIME,
    verify_consensus,
    verify_key_certificate,
)

from tests.support.testdata import REAL_DIRECTORY


@functools.cache
def read(folder: str, name: str) -> bytes:
    return (REAL_DIRECTORY / folder / name).read_bytes()


def authorities_from(header: ConsensusHeader) -> list[DirAuthority]:
    """Configure the authorities that voted (dir-source lines). The relay
    fingerprint is not in the consensus; the v3ident stands in for it."""
    return [DirAuthority(source.nickname, source.v3ident, source.v3ident, source.address,
                         source.dir_port, source.or_port) for source in header.dir_sources]


def mid_window(header: ConsensusHeader) -> int:
    return (header.valid_after + header.valid_until) // 2


def check(folder: str, name: str, authorities=None, certificates=None, now=None, **options):
    data = read(folder, name)
    header = parse_consensus_header(data)
    return verify_consensus(
        data,
        parse_key_certificates(read(folder, "cached-certs")) if certificates is None else certificates,
        authorities_from(header) if authorities is None else authorities,
        mid_window(header) if now is None else now,
        **options,
    )


# ---------------------------------------------------------------- good documents


@pytest.mark.parametrize("folder, name, n_configured, n_good, missing", [
    # tor26's and moria1's new-identity certificates are not in this cached-certs.
    ("2024-05-17-aziz", "cached-microdesc-consensus", 8, 6,
     {"2F3DF9CA0E5D36F2685A2DA67184EB8DCB8CBA8C", "F533C81CEF0BC0267857C99B2F471ADF249FA232"}),
    # dannenberg's certificate is missing.
    ("2017-03-10-bitnym", "cached-microdesc-consensus", 8, 7, {"0232AF901C31A04EE9848595AF9BB7620D4C5B2E"}),
    ("2022-11-19-safetor", "cached-microdesc-consensus", 9, 8, set()),
    ("2022-11-19-safetor", "cached-consensus", 9, 8, set()),          # ns flavour, sha1 signatures
    ("testnet-0.4.9.11", "cached-microdesc-consensus", 3, 3, set()),
    ("testnet-0.4.9.11", "cached-consensus", 3, 3, set()),
])
def test_real_consensus_verifies(folder, name, n_configured, n_good, missing):
    result = check(folder, name)
    assert len(result.good_authorities) == n_good
    assert result.required == n_configured // 2 + 1
    assert {o.v3ident for o in result.outcomes if o.status == "no-certificate"} == missing
    assert not [o for o in result.outcomes if o.status == "bad"]


def test_aziz_verifies_under_tor_049_default_authorities():
    result = check("2024-05-17-aziz", "cached-microdesc-consensus", authorities=DEFAULT_AUTHORITIES)
    assert result.required == 5            # nine v3 authorities; Serge signs nothing
    assert len(result.good_authorities) == 6


def test_2017_consensus_not_trusted_under_tor_049_authorities():
    # Signed by the old moria1/tor26 identities and Faravahar: only 4 of the nine
    # current authorities signed with a certificate we hold.
    with pytest.raises(NotEnoughSignaturesError, match="4 of 9"):
        check("2017-03-10-bitnym", "cached-microdesc-consensus", authorities=DEFAULT_AUTHORITIES)


def test_duplicate_certificates_are_harmless():
    certificates = parse_key_certificates(read("2022-11-19-safetor", "cached-certs"))
    result = check("2022-11-19-safetor", "cached-microdesc-consensus", certificates=certificates * 2)
    assert len(result.good_authorities) == 8


# ---------------------------------------------------------------- forged / insufficient


def test_one_byte_change_in_signed_text_is_rejected():
    data = bytearray(read("2022-11-19-safetor", "cached-microdesc-consensus"))
    index = data.index(b"\nw Bandwidth=38000\n") + len(b"\nw Bandwidth=")
    data[index] = ord("9")
    header = parse_consensus_header(bytes(data))
    with pytest.raises(BadSignatureError, match="0 of 9 configured authorities, needs 5"):
        verify_consensus(bytes(data), parse_key_certificates(read("2022-11-19-safetor", "cached-certs")),
                         authorities_from(header), mid_window(header))


def test_one_byte_change_in_header_is_rejected():
    data = read("testnet-0.4.9.11", "cached-microdesc-consensus").replace(b"known-flags Authority",
                                                                          b"known-flags Authoritz", 1)
    header = parse_consensus_header(data)
    with pytest.raises(BadSignatureError):
        verify_consensus(data, parse_key_certificates(read("testnet-0.4.9.11", "cached-certs")),
                         authorities_from(header), mid_window(header))


def test_one_bad_signature_among_enough_good_ones_passes():
    data = bytearray(read("2022-11-19-safetor", "cached-microdesc-consensus"))
    index = data.rindex(b"-----END SIGNATURE-----") - 10
    data[index] = ord("A") if data[index] != ord("A") else ord("B")
    header = parse_consensus_header(bytes(data))
    result = verify_consensus(bytes(data), parse_key_certificates(read("2022-11-19-safetor", "cached-certs")),
                              authorities_from(header), mid_window(header))
    assert len(result.good_authorities) == 7
    assert [o.status for o in result.outcomes].count("bad") == 1


@pytest.mark.parametrize("n_certificates, passes", [(4, False), (5, True)])
def test_threshold_is_more_than_half_of_configured(n_certificates, passes):
    certificates = parse_key_certificates(read("2022-11-19-safetor", "cached-certs"))
    signers = check("2022-11-19-safetor", "cached-microdesc-consensus").good_authorities
    chosen = [c for c in certificates if c.fingerprint in signers][:n_certificates]
    assert len(chosen) == n_certificates
    if passes:
        assert len(check("2022-11-19-safetor", "cached-microdesc-consensus",
                         certificates=chosen).good_authorities) == 5
    else:
        with pytest.raises(NotEnoughSignaturesError, match="4 of 9 configured authorities, needs 5"):
            check("2022-11-19-safetor", "cached-microdesc-consensus", certificates=chosen)


def test_signatures_count_per_distinct_authority():
    data = read("testnet-0.4.9.11", "cached-microdesc-consensus")
    first = data.index(b"\ndirectory-signature ") + 1
    second = data.index(b"\ndirectory-signature ", first) + 1
    one_block = data[first:second]
    forged = data[:first] + one_block * 3          # the same authority's signature three times
    header = parse_consensus_header(forged)
    with pytest.raises(NotEnoughSignaturesError, match="1 of 3"):
        verify_consensus(forged, parse_key_certificates(read("testnet-0.4.9.11", "cached-certs")),
                         authorities_from(header), mid_window(header))


def test_signatures_of_unconfigured_authorities_do_not_count():
    with pytest.raises(NotEnoughSignaturesError, match="0 of 9"):
        check("testnet-0.4.9.11", "cached-microdesc-consensus", authorities=DEFAULT_AUTHORITIES)


def test_unknown_digest_algorithm_is_ignored():
    data = read("testnet-0.4.9.11", "cached-microdesc-consensus")
    data = data.replace(b"directory-signature sha256 ", b"directory-signature sha512 ", 1)
    header = parse_consensus_header(data)
    result = verify_consensus(data, parse_key_certificates(read("testnet-0.4.9.11", "cached-certs")),
                              authorities_from(header), mid_window(header))
    assert len(result.good_authorities) == 2
    assert [o.status for o in result.outcomes].count("unknown-algorithm") == 1


# ---------------------------------------------------------------- validity times


@pytest.mark.parametrize("old, new", [
    (b"valid-after 2026-11-21 14:39:40", b"valid-after 0000-01-01 00:00:00"),
    (b"consensus-method 35", b"consensus-method " + b"3" * 5000),
])
def test_a_hostile_header_is_a_parse_error_before_any_signature_check(old, new):
    data = read("testnet-0.4.9.11", "cached-microdesc-consensus")
    assert old in data
    header = parse_consensus_header(data)
    with pytest.raises(ConsensusParseError):
        verify_consensus(data.replace(old, new, 1), parse_key_certificates(read("testnet-0.4.9.11", "cached-certs")),
                         authorities_from(header), mid_window(header))


def test_consensus_outside_validity_is_rejected():
    header = parse_consensus_header(read("2022-11-19-safetor", "cached-microdesc-consensus"))
    with pytest.raises(ConsensusNotLiveError, match="expired"):
        check("2022-11-19-safetor", "cached-microdesc-consensus", now=header.valid_until + 1)
    with pytest.raises(ConsensusNotLiveError, match="not yet valid"):
        check("2022-11-19-safetor", "cached-microdesc-consensus", now=header.valid_after - 1)
    # The edges are inclusive.
    check("2022-11-19-safetor", "cached-microdesc-consensus", now=header.valid_until)
    check("2022-11-19-safetor", "cached-microdesc-consensus", now=header.valid_after)


def test_stale_consensus_accepted_within_tolerance():
    header = parse_consensus_header(read("2022-11-19-safetor", "cached-microdesc-consensus"))
    stale = header.valid_until + REASONABLY_LIVE_TIME - 60
    result = check("2022-11-19-safetor", "cached-microdesc-consensus", now=stale,
                   stale_tolerance=REASONABLY_LIVE_TIME)
    assert len(result.good_authorities) == 8
    with pytest.raises(ConsensusNotLiveError):
        check("2022-11-19-safetor", "cached-microdesc-consensus", now=stale + 120,
              stale_tolerance=REASONABLY_LIVE_TIME)


def test_expired_certificates_make_signatures_uncheckable():
    with pytest.raises(NotEnoughSignaturesError, match="CertificateExpiredError"):
        check("2022-11-19-safetor", "cached-microdesc-consensus", now=parse_time("2030-01-01 00:00:00"),
              stale_tolerance=10**10)


# ---------------------------------------------------------------- key certificates

SAFETOR_NOW = parse_time("2022-11-19 10:30:00")


@functools.cache
def safetor_certificate_texts() -> list[str]:
    text = read("2022-11-19-safetor", "cached-certs").decode("ascii")
    return ["dir-key-certificate-version" + part for part in text.split("dir-key-certificate-version")[1:]]


def safetor_authorities() -> list[DirAuthority]:
    return authorities_from(parse_consensus_header(read("2022-11-19-safetor", "cached-microdesc-consensus")))


def block(text: str, keyword: str) -> str:
    match = re.search(keyword + r"\n-----BEGIN ([A-Z ]+)-----\n.*?-----END \1-----\n", text, re.S)
    assert match is not None
    return match.group(0)


def verify_text(text: str, now: float = SAFETOR_NOW, authorities=None) -> None:
    (certificate,) = parse_key_certificates(text.encode("ascii"))
    verify_key_certificate(certificate, safetor_authorities() if authorities is None else authorities, now)


def test_all_real_certificates_verify():
    for folder in ("2017-03-10-bitnym", "2022-11-19-safetor", "2024-05-17-aziz", "testnet-0.4.9.11"):
        certificates = parse_key_certificates(read(folder, "cached-certs"))
        configured = [DirAuthority(None, c.fingerprint, c.fingerprint, "127.0.0.1", 80, None)
                      for c in certificates]
        for certificate in certificates:
            verify_key_certificate(certificate, configured, (certificate.published + certificate.expires) / 2)


def test_certificate_from_unconfigured_authority():
    text = safetor_certificate_texts()[0]
    others = [a for a in safetor_authorities() if a.v3ident not in text]
    with pytest.raises(UnknownAuthorityError, match="not the v3ident of any configured authority"):
        verify_text(text, authorities=others)


def test_expired_and_future_certificates():
    text = safetor_certificate_texts()[0]
    (certificate,) = parse_key_certificates(text.encode())
    with pytest.raises(CertificateExpiredError, match="expired"):
        verify_text(text, now=certificate.expires + 1)
    with pytest.raises(CertificateNotYetValidError):
        verify_text(text, now=certificate.published - 1)


def test_forged_fingerprint():
    first, second = safetor_certificate_texts()[:2]
    other_fingerprint = re.search(r"^fingerprint (\S+)$", second, re.M).group(1)
    forged = re.sub(r"^fingerprint \S+$", f"fingerprint {other_fingerprint}", first, count=1, flags=re.M)
    with pytest.raises(CertificateFingerprintError, match="is not the SHA-1 of its identity key"):
        verify_text(forged)


def test_forged_crosscert_breaks_the_certification():
    # The crosscert lies inside the certified text, so a transplanted one is caught there.
    first, second = safetor_certificate_texts()[:2]
    forged = first.replace(block(first, "dir-key-crosscert"), block(second, "dir-key-crosscert"))
    with pytest.raises(BadCertificationError, match="dir-key-certification"):
        verify_text(forged)


def test_swapped_signing_key():
    first, second = safetor_certificate_texts()[:2]
    forged = first.replace(block(first, "dir-signing-key"), block(second, "dir-signing-key"))
    with pytest.raises(BadCertificationError):
        verify_text(forged)


def test_forged_certification():
    first, second = safetor_certificate_texts()[:2]
    forged = first.replace(block(first, "dir-key-certification"), block(second, "dir-key-certification"))
    with pytest.raises(BadCertificationError, match="dir-key-certification"):
        verify_text(forged)


def test_certified_text_changed():
    first = safetor_certificate_texts()[0]
    forged = re.sub(r"^dir-key-expires (\d{4})", lambda m: f"dir-key-expires {int(m.group(1)) + 5}",
                    first, count=1, flags=re.M)
    assert forged != first
    with pytest.raises(BadCertificationError):
        verify_text(forged)


# ---------------------------------------------------------------- synthetic certificates
# Certificates built here with fresh keys, so that each check can fail on its own
# while every other element is genuinely signed.


@functools.cache
def rsa_key(bits: int, index: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def raw_sign(key: rsa.RSAPrivateKey, digest: bytes) -> bytes:
    """PKCS#1 v1.5 type-1 padding over a bare digest (no DigestInfo), as tor signs."""
    size = (key.key_size + 7) // 8
    padded = b"\x00\x01" + b"\xff" * (size - 3 - len(digest)) + b"\x00" + digest
    numbers = key.private_numbers()
    return pow(int.from_bytes(padded, "big"), numbers.d, numbers.public_numbers.n).to_bytes(size, "big")


def pem(kind: str, data: bytes) -> str:
    body = base64.b64encode(data).decode()
    return f"-----BEGIN {kind}-----\n" + "".join(body[i:i + 64] + "\n" for i in range(0, len(body), 64)) + \
        f"-----END {kind}-----\n"


def der(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.PKCS1)


def build_certificate(identity=None, signing=None, *, fingerprint=None, crosscert_signer=None,
                      crosscert_digest=None, certification_signer=None,
                      published="2024-01-01 00:00:00", expires="2025-01-01 00:00:00") -> bytes:
    identity = identity or rsa_key(1536, 0)
    signing = signing or rsa_key(1024, 1)
    identity_digest = hashlib.sha1(der(identity)).digest()
    body = (
        "dir-key-certificate-version 3\n"
        f"fingerprint {fingerprint or identity_digest.hex().upper()}\n"
        f"dir-key-published {published}\n"
        f"dir-key-expires {expires}\n"
        "dir-identity-key\n" + pem("RSA PUBLIC KEY", der(identity)) +
        "dir-signing-key\n" + pem("RSA PUBLIC KEY", der(signing)) +
        "dir-key-crosscert\n" +
        pem("ID SIGNATURE", raw_sign(crosscert_signer or signing, crosscert_digest or identity_digest)) +
        "dir-key-certification\n"
    )
    certification = raw_sign(certification_signer or identity, hashlib.sha1(body.encode()).digest())
    return (body + pem("SIGNATURE", certification)).encode()


@functools.cache
def default_certificate() -> bytes:
    return build_certificate()


def synthetic_authorities() -> list[DirAuthority]:
    v3ident = hashlib.sha1(der(rsa_key(1536, 0))).hexdigest().upper()
    return [DirAuthority("synthetic", v3ident, v3ident, "127.0.0.1", 7000, 5000)]


SYNTHETIC_NOW = parse_time("2024-06-01 00:00:00")


def verify_synthetic(data: bytes, now: float = SYNTHETIC_NOW) -> None:
    (certificate,) = parse_key_certificates(data)
    verify_key_certificate(certificate, synthetic_authorities(), now)


def test_synthetic_certificate_verifies_and_signs_like_tor():
    verify_synthetic(build_certificate())
    with pytest.raises(CertificateExpiredError):
        verify_synthetic(build_certificate(), now=parse_time("2025-01-01 00:00:01"))


def test_synthetic_crosscert_by_the_wrong_key():
    # Certification genuine, but the signing key never signed the identity: only the crosscert fails.
    with pytest.raises(BadCrossCertificateError, match="dir-key-crosscert"):
        verify_synthetic(build_certificate(crosscert_signer=rsa_key(1024, 2)))
    with pytest.raises(BadCrossCertificateError):
        verify_synthetic(build_certificate(crosscert_digest=hashlib.sha1(b"something else").digest()))


def test_synthetic_certification_by_the_wrong_key():
    with pytest.raises(BadCertificationError, match="dir-key-certification"):
        verify_synthetic(build_certificate(certification_signer=rsa_key(1536, 3)))


def test_synthetic_identity_not_matching_fingerprint():
    with pytest.raises(CertificateFingerprintError):
        verify_synthetic(build_certificate(fingerprint=synthetic_authorities()[0].v3ident,
                                           identity=rsa_key(1536, 3)))


def test_synthetic_unconfigured_authority():
    with pytest.raises(UnknownAuthorityError):
        verify_synthetic(build_certificate(identity=rsa_key(1536, 3)))


# ---------------------------------------------------------------- hostile input


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mangled_certificates_fail_verification_with_directory_errors(data):
    original = default_certificate()
    mangled = bytearray(original)
    for _ in range(data.draw(st.integers(1, 3))):
        mangled[data.draw(st.integers(0, len(mangled) - 1))] = data.draw(st.integers(0, 255))
    try:
        verify_synthetic(bytes(mangled))
    except DirectoryError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mangled_consensus_raises_only_directory_errors(data):
    original = read("testnet-0.4.9.11", "cached-microdesc-consensus")
    certificates = parse_key_certificates(read("testnet-0.4.9.11", "cached-certs"))
    header = parse_consensus_header(original)
    authorities = authorities_from(header)
    mangled = bytearray(original[:data.draw(st.integers(0, len(original)))])
    for _ in range(data.draw(st.integers(0, 3))):
        if mangled:
            mangled[data.draw(st.integers(0, len(mangled) - 1))] = data.draw(st.integers(0, 255))
    try:
        verify_consensus(bytes(mangled), certificates, authorities, mid_window(header))
    except DirectoryError:
        pass
