"""v3 onion addresses (rend-spec-v3 section 6, "Encoding onion addresses", and 2.2.7).

``base32(PUBKEY | CHECKSUM | VERSION) + ".onion"``, where CHECKSUM is the first two bytes of
``SHA3-256(".onion checksum" | PUBKEY | VERSION)``. A hostname may carry subdomains
(``www.<56 characters>.onion``, tor ``parse_extended_hostname``); they name the same service. A client
must also refuse a key with a torsion component (2.2.7), as tor's ``hs_address_is_valid`` does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from oppy.hs.ed25519 import ED25519_KEY_LEN, validate_public_key
from oppy.hs.errors import BadOnionAddress, BadPublicKey

__all__ = [
    "ONION_SUFFIX",
    "ONION_ADDRESS_VERSION",
    "ONION_ADDRESS_LEN_BASE32",
    "OnionAddress",
    "is_onion_hostname",
    "parse_onion_address",
    "encode_onion_address",
]

#: The pseudo-TLD of onion services (RFC 7686).
ONION_SUFFIX = ".onion"
#: rend-spec-v3 6: VERSION is one byte, 3 for these addresses.
ONION_ADDRESS_VERSION = 3
#: rend-spec-v3 6: the checksum's hash prefix and its truncated length.
CHECKSUM_PREFIX = b".onion checksum"
CHECKSUM_LEN = 2
#: 32 + 2 + 1 bytes, base32 without padding (tor HS_SERVICE_ADDR_LEN_BASE32).
ONION_ADDRESS_LEN = ED25519_KEY_LEN + CHECKSUM_LEN + 1
ONION_ADDRESS_LEN_BASE32 = 56


def _checksum(public_key: bytes, version: int) -> bytes:
    return hashlib.sha3_256(CHECKSUM_PREFIX + public_key + bytes((version,))).digest()[:CHECKSUM_LEN]


@dataclass(frozen=True, slots=True)
class OnionAddress:
    """A checked v3 onion address: the service's identity key and the subdomain it was named with."""

    identity_key: bytes
    #: The labels before the address proper (``"www"``), lower case; empty if none.
    subdomain: str = ""

    @property
    def label(self) -> str:
        """The 56 base32 characters (lower case) that name the service, without ``.onion``."""
        return encode_onion_address(self.identity_key)[: -len(ONION_SUFFIX)]

    @property
    def hostname(self) -> str:
        """The service's address, ``<56 characters>.onion`` (subdomain dropped)."""
        return self.label + ONION_SUFFIX


def is_onion_hostname(hostname: str) -> bool:
    """Whether a hostname is in ``.onion`` (case-insensitive): such a name must never reach an exit's
    resolver or local DNS, valid or not."""
    return hostname.lower().endswith(ONION_SUFFIX)


def encode_onion_address(identity_key: bytes) -> str:
    """``<56 characters>.onion`` for a 32-byte Ed25519 identity key (tor ``hs_build_address``)."""
    if len(identity_key) != ED25519_KEY_LEN:
        raise ValueError(f"an onion service identity key is {ED25519_KEY_LEN} bytes, got {len(identity_key)}")
    version = bytes((ONION_ADDRESS_VERSION,))
    raw = identity_key + _checksum(identity_key, ONION_ADDRESS_VERSION) + version
    return base64.b32encode(raw).decode("ascii").lower() + ONION_SUFFIX


def parse_onion_address(hostname: str) -> OnionAddress:
    """The service a ``.onion`` hostname names; BadOnionAddress unless its last label before
    ``.onion`` is a v3 address with the right version, checksum and a torsion-free key."""
    if not isinstance(hostname, str):
        raise BadOnionAddress(f"onion address must be text, not {type(hostname).__name__}")
    lowered = hostname.lower()
    if not lowered.endswith(ONION_SUFFIX):
        raise BadOnionAddress(f"{hostname[:80]!r} does not end in {ONION_SUFFIX}")
    subdomain, _, label = lowered[: -len(ONION_SUFFIX)].rpartition(".")
    if subdomain and not all(subdomain.split(".")):
        raise BadOnionAddress(f"{hostname[:120]!r} has an empty label")
    if len(label) != ONION_ADDRESS_LEN_BASE32:
        raise BadOnionAddress(
            f"{hostname[:120]!r}: a v3 onion address has {ONION_ADDRESS_LEN_BASE32} characters, "
            f"not {len(label)}")
    try:
        raw = base64.b32decode(label.upper().encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise BadOnionAddress(f"{hostname[:120]!r} is not base32") from None
    identity_key, checksum, version = (raw[:ED25519_KEY_LEN], raw[ED25519_KEY_LEN:-1], raw[-1])
    if version != ONION_ADDRESS_VERSION:
        raise BadOnionAddress(f"{hostname[:120]!r} has version {version}, not {ONION_ADDRESS_VERSION}")
    if checksum != _checksum(identity_key, version):
        raise BadOnionAddress(f"{hostname[:120]!r} has a bad checksum")
    try:
        validate_public_key(identity_key)
    except BadPublicKey as exc:
        raise BadOnionAddress(f"{hostname[:120]!r}: {exc}") from None
    return OnionAddress(identity_key, subdomain)
