"""tor's hashed control passwords: RFC 2440's iterated and salted S2K, and the HashedControlPassword format.

The configuration checks HashedControlPassword values with it, the control port checks AUTHENTICATE
passwords against them, and ``oppy --hash-password`` makes them; so it sits below all three.

References: RFC 2440 section 3.6.1.3 (iterated and salted S2K); control-spec "AUTHENTICATE"; C tor
crypto_s2k.c, control_auth.c (decode_hashed_passwords) and main.c (``tor --hash-password``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

__all__ = [
    "HASHED_PASSWORD_PREFIX",
    "S2K_SALT_LEN",
    "S2K_SPECIFIER_LEN",
    "S2K_DEFAULT_COUNT_BYTE",
    "HashedPasswordFormatError",
    "s2k_count",
    "s2k_rfc2440",
    "hash_password",
    "decode_hashed_password",
    "check_hashed_password",
]

# control-spec "AUTHENTICATE" / tor's decode_hashed_passwords: the prefix of a hex hash.
HASHED_PASSWORD_PREFIX = "16:"
# RFC 2440 3.6.1.3: an iterated and salted S2K specifier is salt(8) || count(1).
S2K_SALT_LEN = 8
S2K_SPECIFIER_LEN = S2K_SALT_LEN + 1
# crypto_s2k.c secret_to_key_rfc2440: count = (16 + (c & 15)) << ((c >> 4) + EXPBIAS).
S2K_EXPBIAS = 6
# main.c do_hash_password: tor --hash-password uses c = 96, i.e. 65536 bytes hashed.
S2K_DEFAULT_COUNT_BYTE = 96
SHA1_DIGEST_LEN = 20


class HashedPasswordFormatError(ValueError):
    """A HashedControlPassword value is neither ``16:`` + 58 hex digits nor 29 bytes of base64."""


def s2k_count(count_byte: int) -> int:
    """How many bytes of salt||secret RFC 2440's iterated S2K hashes for count byte ``c``."""
    return (16 + (count_byte & 15)) << ((count_byte >> 4) + S2K_EXPBIAS)


def s2k_rfc2440(secret: bytes, specifier: bytes) -> bytes:
    """SHA-1 of salt||secret repeated (and truncated) to the specifier's count, at least once."""
    if len(specifier) != S2K_SPECIFIER_LEN:
        raise ValueError(f"an S2K specifier is {S2K_SPECIFIER_LEN} bytes")
    block = specifier[:S2K_SALT_LEN] + secret
    # tor hashes exactly `count` bytes, even when that truncates a long salt||secret.
    repeats, remainder = divmod(s2k_count(specifier[S2K_SALT_LEN]), len(block))
    digest = hashlib.sha1()
    # Feeding a few large pieces is much faster than 65536/len(block) tiny updates.
    chunk_repeats = max(1, 8192 // len(block))
    chunk = block * chunk_repeats
    while repeats >= chunk_repeats:
        digest.update(chunk)
        repeats -= chunk_repeats
    digest.update(block * repeats)
    digest.update(block[:remainder])
    return digest.digest()


def _password_bytes(password: str | bytes) -> bytes:
    return password.encode("utf-8", "surrogateescape") if isinstance(password, str) else bytes(password)


def hash_password(password: str | bytes, salt: bytes | None = None, count_byte: int = S2K_DEFAULT_COUNT_BYTE) -> str:
    """The HashedControlPassword line for ``password``, formatted as ``tor --hash-password``
    prints it: ``16:`` and upper-case hex of salt(8) || count(1) || S2K digest(20)."""
    if salt is None:
        salt = os.urandom(S2K_SALT_LEN)
    if len(salt) != S2K_SALT_LEN:
        raise ValueError(f"the salt is {S2K_SALT_LEN} bytes")
    if not 0 <= count_byte <= 0xFF:
        raise ValueError("count_byte is one byte")
    specifier = bytes(salt) + bytes([count_byte])
    key = specifier + s2k_rfc2440(_password_bytes(password), specifier)
    return HASHED_PASSWORD_PREFIX + key.hex().upper()


def decode_hashed_password(hashed: str) -> tuple[bytes, bytes]:
    """Split a HashedControlPassword value into (S2K specifier, SHA-1 digest). Accepts tor's
    two spellings, ``16:`` + hex and bare base64."""
    expected_len = S2K_SPECIFIER_LEN + SHA1_DIGEST_LEN
    hashed = hashed.strip()
    try:
        if hashed.startswith(HASHED_PASSWORD_PREFIX):
            hex_part = hashed[len(HASHED_PASSWORD_PREFIX) :]
            if len(hex_part) != 2 * expected_len:
                raise HashedPasswordFormatError(f"expected {2 * expected_len} hex digits after 16:")
            raw = bytes.fromhex(hex_part)
        else:
            padded = hashed + "=" * (-len(hashed) % 4)
            raw = base64.b64decode(padded, validate=True)
    except (ValueError, binascii.Error) as exc:
        if isinstance(exc, HashedPasswordFormatError):
            raise
        raise HashedPasswordFormatError(f"cannot decode hashed password: {exc}") from None
    if len(raw) != expected_len:
        raise HashedPasswordFormatError(f"a hashed password holds {expected_len} bytes, not {len(raw)}")
    return raw[:S2K_SPECIFIER_LEN], raw[S2K_SPECIFIER_LEN:]


def check_hashed_password(hashed: str, password: str | bytes) -> bool:
    """True if ``password`` matches the HashedControlPassword value ``hashed``."""
    specifier, expected = decode_hashed_password(hashed)
    return hmac.compare_digest(s2k_rfc2440(_password_bytes(password), specifier), expected)
