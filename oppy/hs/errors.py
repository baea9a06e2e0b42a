"""The exceptions raised by oppy's onion-service layer.

Each failure a SOCKS client must be told apart (proposal 304's extended errors) has its own class:
a bad address (F6), an invalid descriptor (F1), a descriptor that needs client authorization we lack
(F4) or that our key does not open (F5). All derive from :class:`OnionServiceError`, a ``ValueError``.
"""

from __future__ import annotations

__all__ = [
    "OnionServiceError",
    "BadOnionAddress",
    "BadPublicKey",
    "InvalidDescriptor",
    "ClientAuthMissing",
    "ClientAuthWrong",
    "ClientAuthKeyError",
]


class OnionServiceError(ValueError):
    """Base class of every onion-service error."""


class BadOnionAddress(OnionServiceError):
    """A ``.onion`` hostname is not a valid v3 address (length, base32, version, checksum, key)."""


class BadPublicKey(OnionServiceError):
    """32 bytes that are not a usable Ed25519 point (not on the curve, or with a torsion part)."""


class InvalidDescriptor(OnionServiceError):
    """A v3 onion-service descriptor is malformed, badly signed, or fails to decrypt (SOCKS F1)."""


class ClientAuthMissing(OnionServiceError):
    """The descriptor is for authorized clients only and we hold no key for it (SOCKS F4)."""


class ClientAuthWrong(OnionServiceError):
    """The descriptor is for authorized clients only and our key opens none of its entries (SOCKS F5)."""


class ClientAuthKeyError(OnionServiceError):
    """A client-authorization key file (tor's ``ClientOnionAuthDir`` ``.auth_private``) is malformed."""
