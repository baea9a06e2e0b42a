"""Builds relay certificate sets (CERTS cell contents) from freshly generated keys, for tests.

Written from the formats in cert-spec.md and tor-spec "CERTS cells", independently of
oppy.crypto.certs: the encoders here share no code with the parsers they test. Everything a test
may want to break (expiry, signer, certified key, extensions) is a parameter.
"""

import datetime
import functools
import hashlib
import os
import struct
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

# tor-spec "CERTS cells" CertType values.
LINK_X509 = 1
RSA_IDENTITY_X509 = 2
ED_IDENTITY_TO_SIGNING = 4
ED_SIGNING_TO_LINK = 5
RSA_ED_CROSSCERT = 7
# cert-spec A.4 CERT_KEY_TYPE values.
KEY_TYPE_ED25519 = 1
KEY_TYPE_SHA256_OF_X509 = 3
# cert-spec 2.2.1 signed-with-ed25519-key extension, and the AFFECTS_VALIDATION flag.
EXT_SIGNED_WITH_KEY = 4
FLAG_AFFECTS_VALIDATION = 1
CROSSCERT_PREFIX = b"Tor TLS RSA/Ed25519 cross-certificate"

HOUR = 3600
DAY = 24 * HOUR


def raw_public(key) -> bytes:
    """32-byte raw form of an Ed25519 key (private or public)."""
    public = key.public_key() if isinstance(key, ed25519.Ed25519PrivateKey) else key
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def rsa_fingerprint(key) -> bytes:
    """SHA-1 of the DER PKCS#1 RSAPublicKey, computed here independently of oppy."""
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    return hashlib.sha1(public.public_bytes(Encoding.DER, PublicFormat.PKCS1)).digest()


def hours_from(timestamp: float) -> int:
    """An EXPIRATION_DATE value (hours since the epoch) no earlier than `timestamp`."""
    return -(-int(timestamp) // HOUR)


def encode_ed25519_cert(
    cert_type: int,
    expiration_hours: int,
    certified_key: bytes,
    signer: ed25519.Ed25519PrivateKey,
    *,
    key_type: int = KEY_TYPE_ED25519,
    include_signer: bool = True,
    extra_extensions: list[tuple[int, int, bytes]] = (),
    version: int = 1,
) -> bytes:
    """cert-spec 2.1: VERSION CERT_TYPE EXPIRATION KEY_TYPE KEY N_EXT EXT* SIGNATURE(64)."""
    extensions = []
    if include_signer:
        extensions.append((EXT_SIGNED_WITH_KEY, 0, raw_public(signer)))
    extensions.extend(extra_extensions)
    body = struct.pack(">BBIB", version, cert_type, expiration_hours, key_type) + certified_key
    body += bytes([len(extensions)])
    for ext_type, flags, data in extensions:
        body += struct.pack(">HBB", len(data), ext_type, flags) + data
    return body + signer.sign(body)


def raw_pkcs1_v15_sign(private_key: rsa.RSAPrivateKey, message: bytes) -> bytes:
    """PKCS#1 v1.5 type-1 signature over `message` itself (no DigestInfo), as in Tor's type 7."""
    numbers = private_key.private_numbers()
    modulus_len = (private_key.key_size + 7) // 8
    padding_len = modulus_len - 3 - len(message)
    encoded = b"\x00\x01" + b"\xff" * padding_len + b"\x00" + message
    signature = pow(int.from_bytes(encoded, "big"), numbers.d, numbers.public_numbers.n)
    return signature.to_bytes(modulus_len, "big")


def encode_crosscert(
    ed25519_identity: bytes, expiration_hours: int, rsa_signer: rsa.RSAPrivateKey
) -> bytes:
    """cert-spec 2.3: ED25519_KEY EXPIRATION_DATE SIGLEN SIGNATURE."""
    signed = ed25519_identity + struct.pack(">I", expiration_hours)
    signature = raw_pkcs1_v15_sign(rsa_signer, hashlib.sha256(CROSSCERT_PREFIX + signed).digest())
    return signed + bytes([len(signature)]) + signature


def _random_name() -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"www.{os.urandom(6).hex()}.net")])


def x509_cert_der(
    subject_key,
    issuer_key,
    not_before: float,
    not_after: float,
    *,
    hash_algorithm=None,
    self_signed: bool = True,
) -> bytes:
    """An X.509 certificate for `subject_key` signed by `issuer_key`, like C tor makes them."""
    subject = _random_name()
    issuer = subject if self_signed else _random_name()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(subject_key.public_key())
        .serial_number(int.from_bytes(os.urandom(8), "big") >> 1 or 1)
        .not_valid_before(datetime.datetime.fromtimestamp(not_before, datetime.timezone.utc))
        .not_valid_after(datetime.datetime.fromtimestamp(not_after, datetime.timezone.utc))
    )
    certificate = builder.sign(issuer_key, hash_algorithm or hashes.SHA256())
    return certificate.public_bytes(Encoding.DER)


def encode_certs_cell(entries: list[tuple[int, bytes]]) -> bytes:
    """tor-spec "CERTS cells": N, then N times CertType(1) CLEN(2) Certificate."""
    body = bytes([len(entries)])
    for cert_type, cert in entries:
        body += struct.pack(">BH", cert_type, len(cert)) + cert
    return body


@dataclass
class RelayKeys:
    """The long-term and link keys of one fake relay."""

    rsa_identity: rsa.RSAPrivateKey
    ed25519_identity: ed25519.Ed25519PrivateKey
    ed25519_signing: ed25519.Ed25519PrivateKey
    tls_key: rsa.RSAPrivateKey

    @property
    def rsa_id(self) -> bytes:
        return rsa_fingerprint(self.rsa_identity)

    @property
    def ed25519_id(self) -> bytes:
        return raw_public(self.ed25519_identity)


def new_relay_keys() -> RelayKeys:
    """Fresh keys: RSA-1024 identity, Ed25519 identity and signing keys, RSA-2048 TLS key."""
    return RelayKeys(
        rsa_identity=rsa.generate_private_key(public_exponent=65537, key_size=1024),
        ed25519_identity=ed25519.Ed25519PrivateKey.generate(),
        ed25519_signing=ed25519.Ed25519PrivateKey.generate(),
        tls_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


@functools.lru_cache(maxsize=4)
def cached_relay_keys(slot: int = 0) -> RelayKeys:
    """Keys generated once per test session per slot (RSA key generation is the slow part)."""
    return new_relay_keys()


@dataclass
class RelayCertSet:
    """A complete CERTS cell's worth of certificates plus the TLS certificate they bind to."""

    keys: RelayKeys
    tls_cert_der: bytes
    certs: dict[int, bytes]

    def certs_cell(self, order: list[int] | None = None) -> bytes:
        """The CERTS body, certificates in the order a relay sends them (1, 2, 4, 5, 7)."""
        order = order if order is not None else sorted(self.certs)
        return encode_certs_cell([(cert_type, self.certs[cert_type]) for cert_type in order])


def build_cert_set(
    keys: RelayKeys,
    now: float,
    *,
    rsa_cert_not_before: float | None = None,
    rsa_cert_not_after: float | None = None,
    identity_cert_expires: float | None = None,
    link_cert_expires: float | None = None,
    crosscert_expires: float | None = None,
    tls_cert_der: bytes | None = None,
) -> RelayCertSet:
    """A valid certificate set at time `now` unless a parameter says otherwise."""
    if tls_cert_der is None:
        tls_cert_der = x509_cert_der(
            keys.tls_key, keys.rsa_identity, now - DAY, now + 2 * DAY, self_signed=False
        )
    not_after = rsa_cert_not_after if rsa_cert_not_after is not None else now + 365 * DAY
    not_before = rsa_cert_not_before if rsa_cert_not_before is not None else not_after - 366 * DAY
    rsa_id_der = x509_cert_der(keys.rsa_identity, keys.rsa_identity, not_before, not_after)
    link_x509_der = x509_cert_der(
        keys.tls_key, keys.rsa_identity, now - DAY, now + 2 * DAY, self_signed=False
    )
    identity_to_signing = encode_ed25519_cert(
        ED_IDENTITY_TO_SIGNING,
        hours_from(identity_cert_expires if identity_cert_expires is not None else now + 30 * DAY),
        raw_public(keys.ed25519_signing),
        keys.ed25519_identity,
    )
    signing_to_link = encode_ed25519_cert(
        ED_SIGNING_TO_LINK,
        hours_from(link_cert_expires if link_cert_expires is not None else now + 2 * DAY),
        hashlib.sha256(tls_cert_der).digest(),
        keys.ed25519_signing,
        key_type=KEY_TYPE_SHA256_OF_X509,
        include_signer=False,
    )
    crosscert = encode_crosscert(
        keys.ed25519_id,
        hours_from(crosscert_expires if crosscert_expires is not None else now + 180 * DAY),
        keys.rsa_identity,
    )
    return RelayCertSet(
        keys=keys,
        tls_cert_der=tls_cert_der,
        certs={
            LINK_X509: link_x509_der,
            RSA_IDENTITY_X509: rsa_id_der,
            ED_IDENTITY_TO_SIGNING: identity_to_signing,
            ED_SIGNING_TO_LINK: signing_to_link,
            RSA_ED_CROSSCERT: crosscert,
        },
    )
