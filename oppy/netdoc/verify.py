"""Trust checks for authority key certificates and consensus documents.

Pure functions over bytes, parsed certificates and a caller-supplied ``now``
(POSIX seconds); no clock is read here. The rules are dir-spec's
(creating-key-certificates, consensus-formats "directory-signature",
client-operation) as C tor 0.4.9 applies them in
``networkstatus_check_consensus_signature``:

* a certificate counts only if its fingerprint is the SHA-1 of its identity key
  and is a configured authority's v3ident, it is within published..expires, its
  cross-certificate and its certification verify;
* a consensus needs good signatures from more than half of the configured v3
  authorities (``n // 2 + 1``), counted per distinct authority.

RSA signatures here are PKCS#1 v1.5 over a bare digest (no DigestInfo), so we
"recover" the signed bytes and compare them with the digest ourselves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_der_public_key

from oppy.netdoc.authorities import DirAuthority
from oppy.netdoc.documents import ConsensusHeader, KeyCertificate, parse_consensus_header
from oppy.netdoc.errors import (
    BadCertificationError,
    BadCrossCertificateError,
    BadSignatureError,
    CertificateError,
    CertificateExpiredError,
    CertificateFingerprintError,
    CertificateNotYetValidError,
    ConsensusNotLiveError,
    ConsensusParseError,
    NotEnoughSignaturesError,
    UnknownAuthorityError,
)
from oppy.netdoc.fields import decode_base64, format_time, parse_hex_digest

__all__ = [
    "REASONABLY_LIVE_TIME",
    "SignatureOutcome",
    "ConsensusVerification",
    "verify_key_certificate",
    "verify_consensus",
    "check_consensus_times",
    "signed_consensus_digests",
]

#: How long after valid-until tor still uses a consensus when nothing newer can
#: be had (tor ``networkstatus.c`` REASONABLY_LIVE_TIME, 24 hours).
REASONABLY_LIVE_TIME = 24 * 60 * 60

#: The signed part of a consensus ends with this keyword and its trailing space
#: (dir-spec consensus-formats, "directory-signature").
_SIGNATURE_KEYWORD = b"directory-signature "
_SIGNED_START = b"network-status-version"
#: Digest algorithms on ``directory-signature`` lines; absent means sha1.
_DIGESTS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}


def _load_rsa_key(der: bytes, what: str, error: type[Exception]) -> RSAPublicKey:
    try:
        key = load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise error(f"{what} is not a valid RSA public key: {exc}") from None
    if not isinstance(key, RSAPublicKey):
        raise error(f"{what} is not an RSA key")
    return key


def _raw_rsa_signed_data(key: RSAPublicKey, signature: bytes) -> bytes | None:
    """The bytes an RSA PKCS#1 v1.5 signature covers (no DigestInfo), or None."""
    try:
        return key.recover_data_from_signature(signature, PKCS1v15(), None)
    except (InvalidSignature, ValueError):
        return None


def verify_key_certificate(certificate: KeyCertificate, authorities: Iterable[DirAuthority],
                           now: float) -> None:
    """Check one key certificate; raise a :class:`CertificateError` subclass if it fails."""
    _verified_signing_key(certificate, {a.v3ident for a in authorities if a.v3ident}, now)


def _verified_signing_key(certificate: KeyCertificate, v3idents: set[str], now: float) -> RSAPublicKey:
    """Check a certificate and return its signing key."""
    identity_digest = hashlib.sha1(certificate.identity_key_der).digest()
    if identity_digest.hex().upper() != certificate.fingerprint:
        raise CertificateFingerprintError(
            f"certificate fingerprint {certificate.fingerprint} is not the SHA-1 of its "
            f"identity key ({identity_digest.hex().upper()})"
        )
    if certificate.fingerprint not in v3idents:
        raise UnknownAuthorityError(
            f"certificate fingerprint {certificate.fingerprint} is not the v3ident of any "
            f"configured authority"
        )
    if now < certificate.published:
        raise CertificateNotYetValidError(
            f"certificate {certificate.fingerprint} is published {format_time(certificate.published)}, "
            f"after now ({format_time(now)})"
        )
    if now > certificate.expires:
        raise CertificateExpiredError(
            f"certificate {certificate.fingerprint} expired {format_time(certificate.expires)} "
            f"(now {format_time(now)})"
        )
    # The identity key is pinned by the fingerprint, so check its certification of
    # the whole text first; only then touch the signing key it vouches for.
    identity_key = _load_rsa_key(certificate.identity_key_der, "dir-identity-key", BadCertificationError)
    certified_digest = hashlib.sha1(certificate.signed_text).digest()
    if _raw_rsa_signed_data(identity_key, certificate.certification) != certified_digest:
        raise BadCertificationError(
            f"certificate {certificate.fingerprint}: dir-key-certification is not the identity "
            f"key's signature of the certificate text"
        )
    signing_key = _load_rsa_key(certificate.signing_key_der, "dir-signing-key", BadCrossCertificateError)
    if _raw_rsa_signed_data(signing_key, certificate.crosscert) != identity_digest:
        raise BadCrossCertificateError(
            f"certificate {certificate.fingerprint}: dir-key-crosscert is not the signing key's "
            f"signature of the identity key digest"
        )
    return signing_key


@dataclass(frozen=True, slots=True)
class SignatureOutcome:
    """What became of one ``directory-signature`` block."""

    algorithm: str
    v3ident: str
    signing_key_digest: str
    #: "good", "bad", "no-certificate", "unknown-authority" or "unknown-algorithm".
    status: str
    detail: str


@dataclass(frozen=True, slots=True)
class ConsensusVerification:
    """A consensus that passed: who signed it, and the parsed header."""

    header: ConsensusHeader
    #: v3idents of the configured authorities with a good signature.
    good_authorities: frozenset[str]
    required: int
    outcomes: tuple[SignatureOutcome, ...]


@dataclass(frozen=True, slots=True)
class _SignatureBlock:
    algorithm: str
    v3ident: str
    signing_key_digest: str
    signature: bytes


def signed_consensus_digests(data: bytes) -> tuple[bytes, dict[str, bytes]]:
    """Return (signed bytes, {alg: digest}) for a consensus.

    The signed bytes run from ``network-status-version`` through the space
    after the first ``directory-signature``.
    """
    if not data.startswith(_SIGNED_START):
        raise ConsensusParseError("consensus does not start with 'network-status-version'")
    index = data.find(b"\n" + _SIGNATURE_KEYWORD)
    if index < 0:
        raise ConsensusParseError("consensus has no 'directory-signature' line")
    signed = data[:index + 1 + len(_SIGNATURE_KEYWORD)]
    return signed, {name: factory(signed).digest() for name, factory in _DIGESTS.items()}


def _parse_signature_blocks(data: bytes, start: int) -> list[_SignatureBlock]:
    try:
        lines = data[start:].decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise ConsensusParseError("consensus signature section is not ASCII") from None
    blocks = []
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.startswith("directory-signature "):
            if line.strip():
                raise ConsensusParseError(f"unexpected line {line[:60]!r} among the signatures")
            continue
        args = line.split()[1:]
        if len(args) == 2:
            algorithm, (v3ident, key_digest) = "sha1", args
        elif len(args) == 3:
            algorithm, v3ident, key_digest = args
        else:
            raise ConsensusParseError(f"bad directory-signature line {line!r}")
        v3ident = parse_hex_digest(v3ident, ConsensusParseError, "directory-signature identity")
        key_digest = parse_hex_digest(key_digest, ConsensusParseError, "directory-signature signing key digest")
        if index >= len(lines) or lines[index] != "-----BEGIN SIGNATURE-----":
            raise ConsensusParseError(f"directory-signature {v3ident} has no SIGNATURE object")
        chunks = []
        index += 1
        while index < len(lines) and lines[index] != "-----END SIGNATURE-----":
            chunks.append(lines[index])
            index += 1
        if index >= len(lines):
            raise ConsensusParseError(f"unterminated SIGNATURE object for {v3ident}")
        index += 1
        signature = decode_base64("".join(chunks), ConsensusParseError, "directory-signature")
        blocks.append(_SignatureBlock(algorithm, v3ident, key_digest, signature))
    return blocks


def check_consensus_times(header: ConsensusHeader, now: float, *, stale_tolerance: float = 0.0,
                          skew_tolerance: float = 0.0) -> None:
    """Raise :class:`ConsensusNotLiveError` unless
    ``valid-after - skew_tolerance <= now <= valid-until + stale_tolerance``."""
    if now < header.valid_after - skew_tolerance:
        raise ConsensusNotLiveError(
            f"consensus is not yet valid: valid-after {format_time(header.valid_after)}, "
            f"now {format_time(now)}"
        )
    if now > header.valid_until + stale_tolerance:
        raise ConsensusNotLiveError(
            f"consensus expired: valid-until {format_time(header.valid_until)}"
            f"{f' (+{stale_tolerance:g} s tolerated)' if stale_tolerance else ''}, "
            f"now {format_time(now)}"
        )


def verify_consensus(data: bytes, certificates: Iterable[KeyCertificate],
                     authorities: Iterable[DirAuthority], now: float, *,
                     stale_tolerance: float = 0.0, skew_tolerance: float = 0.0) -> ConsensusVerification:
    """Check a consensus's signatures and validity times.

    ``certificates`` may contain certificates of any authority, stale ones and
    several per authority: each is verified before use, and failures only make
    its signatures uncheckable. Raises :class:`BadSignatureError` when too few
    authorities signed well and some signature was bad,
    :class:`NotEnoughSignaturesError` when too few signed well otherwise, and
    :class:`ConsensusNotLiveError` when ``now`` is outside the validity window.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ConsensusParseError(f"consensus must be bytes, not {type(data).__name__}")
    data = bytes(data)
    authorities = tuple(authorities)
    configured = {a.v3ident: a for a in authorities if a.v3ident is not None}
    if not configured:
        raise NotEnoughSignaturesError("no v3 directory authorities are configured")
    required = len(configured) // 2 + 1

    header = parse_consensus_header(data)
    signed, digests = signed_consensus_digests(data)
    blocks = _parse_signature_blocks(data, len(signed) - len(_SIGNATURE_KEYWORD))
    needed = {(block.v3ident, block.signing_key_digest) for block in blocks}

    # Certificates by (v3ident, signing key digest); a failed check is remembered as the
    # reason. Only certificates that some signature names are checked.
    usable: dict[tuple[str, str], RSAPublicKey] = {}
    rejected: dict[tuple[str, str], str] = {}
    for certificate in certificates:
        slot = (certificate.fingerprint, certificate.signing_key_digest)
        if slot in usable or slot not in needed:
            continue
        try:
            usable[slot] = _verified_signing_key(certificate, set(configured), now)
        except CertificateError as exc:
            rejected.setdefault(slot, f"{type(exc).__name__}: {exc}")
            continue
        rejected.pop(slot, None)

    outcomes = []
    for block in blocks:
        slot = (block.v3ident, block.signing_key_digest)
        if block.algorithm not in digests:
            status, detail = "unknown-algorithm", f"digest algorithm {block.algorithm!r} ignored"
        elif block.v3ident not in configured:
            status, detail = "unknown-authority", "not a configured authority"
        elif slot not in usable:
            status = "no-certificate"
            detail = rejected.get(slot, "no certificate for this signing key")
        elif _raw_rsa_signed_data(usable[slot], block.signature) == digests[block.algorithm]:
            status, detail = "good", f"{block.algorithm} signature verified"
        else:
            status, detail = "bad", f"{block.algorithm} signature does not match the document"
        outcomes.append(SignatureOutcome(block.algorithm, block.v3ident, block.signing_key_digest,
                                         status, detail))

    good = frozenset(o.v3ident for o in outcomes if o.status == "good")
    if len(good) < required:
        bad = sorted({o.v3ident for o in outcomes if o.status == "bad"} - good)
        unsigned = sorted(set(configured) - {o.v3ident for o in outcomes})

        def name(v3ident: str) -> str:
            authority = configured.get(v3ident)
            return authority.nickname or v3ident if authority is not None else v3ident

        summary = "; ".join(f"{name(o.v3ident)}: {o.status} ({o.detail})" for o in outcomes)
        message = (
            f"consensus has good signatures from {len(good)} of {len(configured)} configured "
            f"authorities, needs {required}"
        )
        if bad:
            message += f"; {len(bad)} signature(s) did not verify ({', '.join(bad)})"
        if unsigned:
            message += f"; not signed by {', '.join(unsigned)}"
        message += f". Details: {summary}"
        raise (BadSignatureError if bad else NotEnoughSignaturesError)(message)

    check_consensus_times(header, now, stale_tolerance=stale_tolerance, skew_tolerance=skew_tolerance)
    return ConsensusVerification(header, good, required, tuple(outcomes))
