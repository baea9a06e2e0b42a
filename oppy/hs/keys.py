"""Blinded keys, credentials and subcredentials (rend-spec-v3 2.1 [SUBCRED], appendix A.2 [KEYBLIND]).

Each time period the service signs with a key blinded from its identity key; a client derives the same
blinded *public* key from the address alone, asks the HSDirs for it, and checks the descriptor's signing
certificate against it. The subcredential ties the descriptor's encryption and the introduction
handshake to the identity key and the period. H is SHA3-256 throughout.
"""

from __future__ import annotations

import hashlib
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from oppy.hs.ed25519 import blind_public_key_with_param
from oppy.hs.timeperiod import TimePeriod

__all__ = [
    "BLIND_STRING",
    "ED25519_BASEPOINT_STRING",
    "blinding_param",
    "blinded_public_key",
    "credential",
    "subcredential",
    "verify_ed25519",
]

#: rend-spec-v3 A.2: BLIND_STRING = "Derive temporary signing key" | INT_1(0).
BLIND_STRING = b"Derive temporary signing key\x00"
#: rend-spec-v3 A.2: B written out as decimal coordinates.
ED25519_BASEPOINT_STRING = (
    b"(15112221349535400772501151409588531511454012693041857206046113283949847762202, "
    b"46316835694926478169428394003475163141307993866256225615783033603165251855960)")
#: rend-spec-v3 A.2: N = "key-blind" | INT_8(period-number) | INT_8(period_length).
KEYBLIND_NONCE_PREFIX = b"key-blind"
#: rend-spec-v3 2.1: the credential and subcredential prefixes.
CREDENTIAL_PREFIX = b"credential"
SUBCREDENTIAL_PREFIX = b"subcredential"


def _h(*parts: bytes) -> bytes:
    return hashlib.sha3_256(b"".join(parts)).digest()


def blinding_param(identity_key: bytes, period: TimePeriod, secret: bytes = b"") -> bytes:
    """h = H(BLIND_STRING | A | s | B | N), before clamping (tor ``build_blinded_key_param``)."""
    nonce = KEYBLIND_NONCE_PREFIX + struct.pack(">QQ", period.number, period.length)
    return _h(BLIND_STRING, identity_key, secret, ED25519_BASEPOINT_STRING, nonce)


def blinded_public_key(identity_key: bytes, period: TimePeriod, secret: bytes = b"") -> bytes:
    """A' = h A for the period: the key the descriptor is stored under and signed for
    (tor ``hs_build_blinded_pubkey``). BadPublicKey if the identity key is not a curve point."""
    return blind_public_key_with_param(identity_key, blinding_param(identity_key, period, secret))


def credential(identity_key: bytes) -> bytes:
    """N_hs_cred = H("credential" | public-identity-key)."""
    return _h(CREDENTIAL_PREFIX, identity_key)


def subcredential(identity_key: bytes, blinded_key: bytes) -> bytes:
    """N_hs_subcred = H("subcredential" | N_hs_cred | blinded-public-key) (tor ``hs_get_subcredential``)."""
    return _h(SUBCREDENTIAL_PREFIX, credential(identity_key), blinded_key)


def verify_ed25519(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is an Ed25519 signature of ``message`` by ``public_key``. A blinded key is an
    ordinary point (A.2: "regular Ed25519 with key pair (a', A')"), so the library checks it."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
