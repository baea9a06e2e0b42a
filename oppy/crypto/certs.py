"""Verifying a relay's CERTS cell: does the TLS peer hold the identity we meant to reach?

tor-spec "Negotiating and initializing channels" (negotiating-channels.md, "CERTS cells") lists
what an initiator must check to authenticate a responder with an Ed25519+RSA identity; the
certificate formats are in cert-spec.md. Behaviour follows C tor's
`or_handshake_certs_ed25519_ok()` (torcert.c), which is what 0.4.9 relays are tested against:

* type 2: self-signed X.509 RSA-1024 identity cert; RSA identity = SHA-1 of its DER PKCS#1 key;
* type 7: RSA->Ed25519 cross-cert, raw PKCS#1 v1.5 signature by the RSA identity;
* type 4: Ed25519 identity->signing cert, must carry the identity key in extension 04;
* type 5: signing->TLS link cert, certifying SHA-256 of the peer's TLS certificate;
* types 1, 3 and 6 are ignored (only the initiator-side Ed25519 path is used), as are unknown
  types.

Everything here is sans-IO: feed the CERTS body, the peer certificate DER and the clock.
"""

import base64
import hashlib
import hmac
import struct
import warnings
from datetime import datetime, timezone
from enum import IntEnum
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.utils import CryptographyDeprecationWarning

from oppy.cell.errors import CellParseError
from oppy.cell.link import CertsEntry, decode_certs_body
from oppy.crypto.errors import CertificateError, CertParseError

__all__ = [
    "CertType",
    "CertifiedKeyType",
    "CertsCellEntry",
    "Ed25519CertExtension",
    "Ed25519Certificate",
    "RsaEd25519CrossCert",
    "VerifiedRelayIdentity",
    "parse_certs_cell",
    "rsa_identity_fingerprint",
    "verify_relay_certs",
]


class CertType(IntEnum):
    """tor-spec "CERTS cells": CertType values (types 4-6 double as Ed25519 CERT_TYPE values)."""

    LINK_X509 = 1  # TLS link key certified by the RSA1024 identity
    RSA_IDENTITY_X509 = 2  # RSA1024 identity certificate, self-signed
    AUTH_X509 = 3  # RSA1024 AUTHENTICATE cell link certificate
    ED25519_IDENTITY_TO_SIGNING = 4  # Ed25519 signing key, signed with the identity key
    ED25519_SIGNING_TO_LINK = 5  # TLS link certificate, signed with the Ed25519 signing key
    ED25519_SIGNING_TO_AUTH = 6  # Ed25519 AUTHENTICATE key, signed with the signing key
    RSA_ED25519_CROSSCERT = 7  # Ed25519 identity, signed with the RSA identity


_CERT_TYPE_NAMES = {
    CertType.LINK_X509: "RSA link certificate (type 1)",
    CertType.RSA_IDENTITY_X509: "RSA identity certificate (type 2)",
    CertType.AUTH_X509: "RSA authentication certificate (type 3)",
    CertType.ED25519_IDENTITY_TO_SIGNING: "Ed25519 identity->signing certificate (type 4)",
    CertType.ED25519_SIGNING_TO_LINK: "Ed25519 signing->link certificate (type 5)",
    CertType.ED25519_SIGNING_TO_AUTH: "Ed25519 signing->auth certificate (type 6)",
    CertType.RSA_ED25519_CROSSCERT: "RSA->Ed25519 cross-certificate (type 7)",
}


class CertifiedKeyType(IntEnum):
    """cert-spec A.4: what the CERTIFIED_KEY field of an Ed25519 certificate holds."""

    ED25519 = 1
    SHA256_OF_RSA = 2
    SHA256_OF_X509 = 3


# cert-spec 2.1: the only Ed25519 certificate VERSION.
ED25519_CERT_VERSION = 1
# cert-spec 2.1: lengths of the fixed fields.
ED25519_KEY_LEN = 32
ED25519_SIGNATURE_LEN = 64
_ED25519_CERT_HEADER = struct.Struct(
    ">BBIB32sB"
)  # VERSION CERT_TYPE EXPIRATION KEY_TYPE KEY N_EXT
_ED25519_EXT_HEADER = struct.Struct(">HBB")  # ExtLength ExtType ExtFlags
# cert-spec 2.2.1: the signed-with-ed25519-key extension type.
EXT_SIGNED_WITH_ED25519_KEY = 4
# cert-spec 2.1: ExtFlags bit 1, AFFECTS_VALIDATION.
EXT_FLAG_AFFECTS_VALIDATION = 1

# cert-spec 2.3: the RSA->Ed25519 cross-certificate, signed over SHA-256 of this prefix |
# ED25519_KEY | EXP.
RSA_ED25519_CROSSCERT_PREFIX = b"Tor TLS RSA/Ed25519 cross-certificate"
_CROSSCERT_HEADER = struct.Struct(">32sIB")  # ED25519_KEY EXPIRATION_DATE SIGLEN
_SHA256_LEN = 32

# Expiration fields of Ed25519 and cross certificates count hours since the epoch (cert-spec 2.1,
# 2.3).
SECONDS_PER_HOUR = 3600
# tor-spec "CERTS cells": the identity key in the type-2 certificate is RSA-1024.
RSA_IDENTITY_KEY_BITS = 1024
# C tor x509.h TOR_X509_PAST_SLOP / TOR_X509_FUTURE_SLOP: clock skew tolerated on X.509 validity.
X509_PAST_SLOP_SECONDS = 2 * 24 * 60 * 60
X509_FUTURE_SLOP_SECONDS = 30 * 24 * 60 * 60


# One certificate carried in a CERTS cell, still encoded (the cell layer's framing of CERTS).
CertsCellEntry = CertsEntry


class Ed25519CertExtension(NamedTuple):
    """cert-spec 2.1: one extension of an Ed25519 certificate."""

    ext_type: int
    flags: int
    data: bytes


class VerifiedRelayIdentity(NamedTuple):
    """The identities a CERTS cell proved: RSA fingerprint (20 bytes), Ed25519 key (32 bytes)."""

    rsa_id: bytes
    ed25519_id: bytes


def _format_hours(hours: int) -> str:
    return _format_time(hours * SECONDS_PER_HOUR)


def _format_time(seconds: float) -> str:
    try:
        return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"{seconds:.0f} s since the epoch"


def _ed25519_hex_and_base64(key: bytes) -> str:
    return f"{key.hex().upper()} ({base64.b64encode(key).decode('ascii').rstrip('=')})"


class Ed25519Certificate:
    """cert-spec 2.1: a parsed Ed25519 certificate (form only; signatures are checked apart)."""

    __slots__ = (
        "cert_type",
        "expiration_hours",
        "certified_key_type",
        "certified_key",
        "extensions",
        "signing_key",
        "signed_part",
        "signature",
    )

    def __init__(
        self,
        cert_type: int,
        expiration_hours: int,
        certified_key_type: int,
        certified_key: bytes,
        extensions: tuple[Ed25519CertExtension, ...],
        signing_key: bytes | None,
        signed_part: bytes,
        signature: bytes,
    ) -> None:
        self.cert_type = cert_type
        self.expiration_hours = expiration_hours
        self.certified_key_type = certified_key_type
        self.certified_key = certified_key
        self.extensions = extensions
        # The key from the signed-with-ed25519-key extension, if the certificate carries one.
        self.signing_key = signing_key
        self.signed_part = signed_part
        self.signature = signature

    @classmethod
    def parse(cls, data: bytes) -> "Ed25519Certificate":
        """Decode an Ed25519 certificate; CertParseError on any malformation.

        Rejects trailing bytes, a wrong version, truncated extensions, a malformed or repeated
        extension 04, and any unknown extension flagged AFFECTS_VALIDATION (cert-spec 2.1).
        """
        data = bytes(data)
        if len(data) < _ED25519_CERT_HEADER.size + ED25519_SIGNATURE_LEN:
            raise CertParseError(f"Ed25519 certificate truncated: {len(data)} bytes")
        version, cert_type, expiration, key_type, certified_key, n_extensions = (
            _ED25519_CERT_HEADER.unpack_from(data)
        )
        if version != ED25519_CERT_VERSION:
            raise CertParseError(f"Ed25519 certificate has unknown version {version}")
        signature_start = len(data) - ED25519_SIGNATURE_LEN
        offset = _ED25519_CERT_HEADER.size
        extensions = []
        signing_key = None
        for _ in range(n_extensions):
            if offset + _ED25519_EXT_HEADER.size > signature_start:
                raise CertParseError("Ed25519 certificate truncated inside its extensions")
            ext_len, ext_type, ext_flags = _ED25519_EXT_HEADER.unpack_from(data, offset)
            offset += _ED25519_EXT_HEADER.size
            if offset + ext_len > signature_start:
                raise CertParseError(f"Ed25519 certificate extension {ext_type} is truncated")
            ext_data = data[offset : offset + ext_len]
            offset += ext_len
            if ext_type == EXT_SIGNED_WITH_ED25519_KEY:
                if ext_len != ED25519_KEY_LEN:
                    raise CertParseError(
                        f"signed-with-ed25519-key extension must hold {ED25519_KEY_LEN} bytes, "
                        f"got {ext_len}"
                    )
                if signing_key is not None:
                    raise CertParseError(
                        "Ed25519 certificate repeats the signed-with-key extension"
                    )
                signing_key = ext_data
            elif ext_flags & EXT_FLAG_AFFECTS_VALIDATION:
                raise CertParseError(
                    f"Ed25519 certificate has unknown extension type {ext_type} marked "
                    "AFFECTS_VALIDATION"
                )
            extensions.append(Ed25519CertExtension(ext_type, ext_flags, ext_data))
        if offset != signature_start:
            raise CertParseError(
                f"Ed25519 certificate has {signature_start - offset} stray bytes before its "
                "signature"
            )
        return cls(
            cert_type=cert_type,
            expiration_hours=expiration,
            certified_key_type=key_type,
            certified_key=certified_key,
            extensions=tuple(extensions),
            signing_key=signing_key,
            signed_part=data[:signature_start],
            signature=data[signature_start:],
        )

    @property
    def expires_at(self) -> int:
        """Expiry in seconds since the epoch."""
        return self.expiration_hours * SECONDS_PER_HOUR

    def is_expired(self, now: float) -> bool:
        """C tor (`tor_cert_checksig`): expired once now is past the expiration time."""
        return now > self.expires_at

    def signature_is_valid(self, public_key: bytes) -> bool:
        """Whether `public_key` (32-byte Ed25519) signed everything before the signature."""
        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(self.signature, self.signed_part)
        except (InvalidSignature, ValueError):
            return False
        return True


class RsaEd25519CrossCert:
    """cert-spec 2.3: the RSA->Ed25519 cross-certificate (CERTS type 7)."""

    __slots__ = ("ed25519_key", "expiration_hours", "signed_part", "signature")

    def __init__(
        self, ed25519_key: bytes, expiration_hours: int, signed_part: bytes, signature: bytes
    ) -> None:
        self.ed25519_key = ed25519_key
        self.expiration_hours = expiration_hours
        self.signed_part = signed_part
        self.signature = signature

    @classmethod
    def parse(cls, data: bytes) -> "RsaEd25519CrossCert":
        """Decode ED25519_KEY(32) EXPIRATION_DATE(4) SIGLEN(1) SIGNATURE(SIGLEN), nothing after."""
        data = bytes(data)
        if len(data) < _CROSSCERT_HEADER.size:
            raise CertParseError(f"RSA->Ed25519 cross-certificate truncated: {len(data)} bytes")
        ed25519_key, expiration, signature_len = _CROSSCERT_HEADER.unpack_from(data)
        signature_end = _CROSSCERT_HEADER.size + signature_len
        if len(data) != signature_end:
            raise CertParseError(
                f"RSA->Ed25519 cross-certificate is {len(data)} bytes, its SIGLEN says "
                f"{signature_end}"
            )
        return cls(
            ed25519_key=ed25519_key,
            expiration_hours=expiration,
            signed_part=data[: _CROSSCERT_HEADER.size - 1],
            signature=data[_CROSSCERT_HEADER.size :],
        )

    @property
    def expires_at(self) -> int:
        """Expiry in seconds since the epoch."""
        return self.expiration_hours * SECONDS_PER_HOUR

    def is_expired(self, now: float) -> bool:
        """C tor (`rsa_ed25519_crosscert_check`): expired once now is past the expiration time."""
        return now > self.expires_at

    def signature_is_valid(self, rsa_identity_key: RSAPublicKey) -> bool:
        """Whether the RSA identity signed SHA256(prefix | ED25519_KEY | EXPIRATION_DATE).

        The signature is raw PKCS#1 v1.5 type 1 over the bare digest, with no DigestInfo; C tor
        compares the first 32 recovered bytes with the digest.
        """
        digest = hashlib.sha256(RSA_ED25519_CROSSCERT_PREFIX + self.signed_part).digest()
        try:
            recovered = rsa_identity_key.recover_data_from_signature(
                self.signature, PKCS1v15(), None
            )
        except (InvalidSignature, ValueError, TypeError):
            return False
        return len(recovered) >= _SHA256_LEN and hmac.compare_digest(
            recovered[:_SHA256_LEN], digest
        )


def parse_certs_cell(body: bytes) -> list[CertsCellEntry]:
    """Split a CERTS cell body into its certificates; trailing bytes are ignored (tor-spec)."""
    try:
        return decode_certs_body(bytes(body))
    except CellParseError as exc:
        raise CertParseError(str(exc)) from None


def rsa_identity_fingerprint(public_key: RSAPublicKey) -> bytes:
    """tor-spec "Preliminaries": a relay's RSA identity is SHA-1 of the DER PKCS#1 RSAPublicKey."""
    der = public_key.public_bytes(Encoding.DER, PublicFormat.PKCS1)
    return hashlib.sha1(der).digest()


def _collect_known_certs(body: bytes) -> dict[int, bytes]:
    """Known certificate types -> body; duplicates are an error, unknown types are skipped."""
    known: dict[int, bytes] = {}
    for entry in parse_certs_cell(body):
        if entry.cert_type not in _CERT_TYPE_NAMES:
            continue  # C tor ignores unrecognized cert types.
        if entry.cert_type in known:
            raise CertificateError(
                f"CERTS cell has more than one {_CERT_TYPE_NAMES[CertType(entry.cert_type)]}"
            )
        known[entry.cert_type] = entry.body
    return known


def _require(known: dict[int, bytes], cert_type: CertType) -> bytes:
    body = known.get(cert_type)
    if body is None:
        raise CertificateError(f"CERTS cell lacks the {_CERT_TYPE_NAMES[cert_type]}")
    return body


def _verify_rsa_identity_cert(der: bytes, now: float) -> RSAPublicKey:
    """Check the type-2 certificate as C tor's `tor_tls_cert_is_valid(.., check_rsa_1024=1)`."""
    name = _CERT_TYPE_NAMES[CertType.RSA_IDENTITY_X509]
    try:
        with warnings.catch_warnings():
            # Odd-but-parseable input (e.g. a negative serial) only earns a deprecation warning.
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            certificate = x509.load_der_x509_certificate(der)
        public_key = certificate.public_key()
        not_before = certificate.not_valid_before_utc.timestamp()
        not_after = certificate.not_valid_after_utc.timestamp()
        hash_algorithm = certificate.signature_hash_algorithm
        signature = certificate.signature
        tbs = certificate.tbs_certificate_bytes
    except (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion) as exc:
        raise CertParseError(f"{name} is not a usable DER X.509 certificate: {exc}") from None
    if not isinstance(public_key, RSAPublicKey) or public_key.key_size != RSA_IDENTITY_KEY_BITS:
        raise CertificateError(f"{name} does not hold an RSA-{RSA_IDENTITY_KEY_BITS} key")
    if hash_algorithm is None:
        raise CertificateError(f"{name} uses an unsupported signature algorithm")
    try:
        public_key.verify(signature, tbs, PKCS1v15(), hash_algorithm)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        raise CertificateError(f"{name} is not correctly self-signed") from None
    if not_before > now + X509_FUTURE_SLOP_SECONDS:
        raise CertificateError(
            f"{name} is not valid until {_format_time(not_before)} (now {_format_time(now)})"
        )
    if not_after < now - X509_PAST_SLOP_SECONDS:
        raise CertificateError(
            f"{name} expired at {_format_time(not_after)} (now {_format_time(now)})"
        )
    return public_key


def _parse_ed25519_cert(known: dict[int, bytes], cert_type: CertType) -> Ed25519Certificate:
    name = _CERT_TYPE_NAMES[cert_type]
    try:
        certificate = Ed25519Certificate.parse(_require(known, cert_type))
    except CertParseError as exc:
        raise CertParseError(f"{name}: {exc}") from None
    if certificate.cert_type != cert_type:
        raise CertificateError(f"{name} carries CERT_TYPE {certificate.cert_type}")
    return certificate


def _check_ed25519_signed_by(
    certificate: Ed25519Certificate, signer: bytes, cert_type: CertType, now: float
) -> None:
    name = _CERT_TYPE_NAMES[cert_type]
    if certificate.signing_key is not None and not hmac.compare_digest(
        certificate.signing_key, signer
    ):
        raise CertificateError(f"{name} names a signing key other than the one expected")
    if not certificate.signature_is_valid(signer):
        raise CertificateError(f"{name} has a bad signature")
    if certificate.is_expired(now):
        raise CertificateError(
            f"{name} expired at {_format_hours(certificate.expiration_hours)} "
            f"(now {_format_time(now)})"
        )


def verify_relay_certs(
    certs_body: bytes,
    peer_tls_cert_der: bytes,
    expected_rsa_id: bytes | None,
    expected_ed25519_id: bytes | None,
    now: float,
) -> VerifiedRelayIdentity:
    """Authenticate the responder of a link handshake (tor-spec "CERTS cells", initiator side).

    `peer_tls_cert_der` is the DER of the relay's TLS leaf certificate, `expected_rsa_id` the
    20-byte fingerprint we dialled (None: any identity the certificates prove, as for a bridge whose
    Bridge line gives no fingerprint: tor connection_or_client_learned_peer_id), `expected_ed25519_id`
    the 32-byte Ed25519 identity if known, `now` seconds since the epoch. Raises CertificateError
    (CertParseError for malformed input) naming the failure.
    """
    known = _collect_known_certs(certs_body)
    for required in (
        CertType.RSA_IDENTITY_X509,
        CertType.ED25519_IDENTITY_TO_SIGNING,
        CertType.ED25519_SIGNING_TO_LINK,
        CertType.RSA_ED25519_CROSSCERT,
    ):
        _require(known, required)

    # RSA identity: self-signed RSA-1024, within its validity window, the one we dialled.
    rsa_identity_key = _verify_rsa_identity_cert(known[CertType.RSA_IDENTITY_X509], now)
    rsa_id = rsa_identity_fingerprint(rsa_identity_key)
    if expected_rsa_id is not None and not hmac.compare_digest(rsa_id, bytes(expected_rsa_id)):
        raise CertificateError(
            f"relay has RSA identity {rsa_id.hex().upper()}, "
            f"expected {bytes(expected_rsa_id).hex().upper()}"
        )

    # Ed25519 identity -> signing key, self-describing through extension 04.
    identity_cert = _parse_ed25519_cert(known, CertType.ED25519_IDENTITY_TO_SIGNING)
    identity_name = _CERT_TYPE_NAMES[CertType.ED25519_IDENTITY_TO_SIGNING]
    if identity_cert.signing_key is None:
        raise CertificateError(f"{identity_name} lacks the signed-with-ed25519-key extension")
    if identity_cert.certified_key_type != CertifiedKeyType.ED25519:
        raise CertificateError(
            f"{identity_name} certifies key type {identity_cert.certified_key_type}, not Ed25519"
        )
    ed25519_id = identity_cert.signing_key
    signing_key = identity_cert.certified_key
    _check_ed25519_signed_by(identity_cert, ed25519_id, CertType.ED25519_IDENTITY_TO_SIGNING, now)

    # Signing key -> TLS link certificate: must be the certificate this TLS connection presented.
    link_cert = _parse_ed25519_cert(known, CertType.ED25519_SIGNING_TO_LINK)
    link_name = _CERT_TYPE_NAMES[CertType.ED25519_SIGNING_TO_LINK]
    # cert-spec A.4: tor before 0.4.5.1-alpha wrote 01 here; accept it and infer the type.
    if link_cert.certified_key_type not in (
        CertifiedKeyType.SHA256_OF_X509,
        CertifiedKeyType.ED25519,
    ):
        raise CertificateError(
            f"{link_name} certifies key type {link_cert.certified_key_type}, not an X.509 digest"
        )
    _check_ed25519_signed_by(link_cert, signing_key, CertType.ED25519_SIGNING_TO_LINK, now)
    peer_digest = hashlib.sha256(bytes(peer_tls_cert_der)).digest()
    if not hmac.compare_digest(link_cert.certified_key, peer_digest):
        raise CertificateError(
            f"{link_name} certifies TLS certificate SHA-256 {link_cert.certified_key.hex()}, "
            f"but the TLS peer presented {peer_digest.hex()}"
        )

    # RSA identity -> Ed25519 identity cross-certificate.
    cross_name = _CERT_TYPE_NAMES[CertType.RSA_ED25519_CROSSCERT]
    try:
        cross_cert = RsaEd25519CrossCert.parse(known[CertType.RSA_ED25519_CROSSCERT])
    except CertParseError as exc:
        raise CertParseError(f"{cross_name}: {exc}") from None
    if not hmac.compare_digest(cross_cert.ed25519_key, ed25519_id):
        raise CertificateError(
            f"{cross_name} certifies Ed25519 key "
            f"{_ed25519_hex_and_base64(cross_cert.ed25519_key)}, "
            f"not the identity {_ed25519_hex_and_base64(ed25519_id)}"
        )
    if not cross_cert.signature_is_valid(rsa_identity_key):
        raise CertificateError(f"{cross_name} is not signed by the RSA identity key")
    if cross_cert.is_expired(now):
        raise CertificateError(
            f"{cross_name} expired at {_format_hours(cross_cert.expiration_hours)} "
            f"(now {_format_time(now)})"
        )

    if expected_ed25519_id is not None and not hmac.compare_digest(
        ed25519_id, bytes(expected_ed25519_id)
    ):
        raise CertificateError(
            f"relay has Ed25519 identity {_ed25519_hex_and_base64(ed25519_id)}, expected "
            f"{_ed25519_hex_and_base64(bytes(expected_ed25519_id))}"
        )
    return VerifiedRelayIdentity(rsa_id=rsa_id, ed25519_id=ed25519_id)
