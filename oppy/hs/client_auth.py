"""Client authorization keys as tor keeps them in ``ClientOnionAuthDir`` (tor-spec's client-auth files,
rend-spec-v3 1.9.1 [CLIENT-AUTH]; tor ``hs_client.c`` ``parse_auth_file_content``).

Each ``*.auth_private`` file holds one line ``<56-char address>:descriptor:x25519:<base32 private key>``:
the x25519 key that opens the descriptor cookie of that service's descriptors. Files with another
extension are not keys (tor ignores them with a notice); a malformed file is skipped with a warning and
the others are kept.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from pathlib import Path

from oppy.hs.address import ONION_SUFFIX, parse_onion_address
from oppy.hs.errors import BadOnionAddress, ClientAuthKeyError

__all__ = [
    "AUTH_PRIVATE_SUFFIX",
    "ClientAuthKey",
    "parse_client_auth_line",
    "read_client_auth_dir",
]

log = logging.getLogger(__name__)

#: tor ``auth_key_filename_is_valid``: the only files read from ClientOnionAuthDir.
AUTH_PRIVATE_SUFFIX = ".auth_private"
#: The only authorization and key types tor knows.
AUTH_TYPE = "descriptor"
KEY_TYPE = "x25519"
#: A 32-byte x25519 key as unpadded base32 (tor BASE32_NOPAD_LEN(CURVE25519_SECKEY_LEN)).
_KEY_LEN = 32
_KEY_BASE32_LEN = 52


@dataclass(frozen=True, slots=True)
class ClientAuthKey:
    """One service's client-authorization key: the service's identity key and our x25519 private key."""

    identity_key: bytes
    private_key: bytes

    def __repr__(self) -> str:   # the private key stays out of logs and tracebacks
        return f"ClientAuthKey(identity_key={self.identity_key.hex()}, private_key=<hidden>)"


def parse_client_auth_line(text: str) -> ClientAuthKey:
    """``<address>:descriptor:x25519:<base32 key>`` (blanks around the fields allowed, as tor's
    SPLIT_SKIP_SPACE allows them); ClientAuthKeyError if anything is off."""
    fields = [field.strip() for field in text.strip().split(":")]
    if len(fields) != 4:
        raise ClientAuthKeyError(f"client authorization line has {len(fields)} fields, not 4")
    address, auth_type, key_type, encoded = fields
    if auth_type != AUTH_TYPE or key_type != KEY_TYPE:
        raise ClientAuthKeyError(f"client authorization type {auth_type[:20]!r}:{key_type[:20]!r} is not "
                                 f"{AUTH_TYPE}:{KEY_TYPE}")
    if len(encoded) != _KEY_BASE32_LEN:
        raise ClientAuthKeyError(f"client authorization key has {len(encoded)} base32 characters, "
                                 f"not {_KEY_BASE32_LEN}")
    try:
        private_key = base64.b32decode(encoded.upper() + "====")
    except (binascii.Error, ValueError):
        raise ClientAuthKeyError("client authorization key is not base32") from None
    if len(private_key) != _KEY_LEN or not any(private_key):
        raise ClientAuthKeyError("client authorization key is not a usable 32-byte x25519 key")
    try:
        onion = parse_onion_address(address + ONION_SUFFIX)
    except BadOnionAddress as exc:
        raise ClientAuthKeyError(f"client authorization names a bad onion address: {exc}") from None
    if onion.subdomain:
        raise ClientAuthKeyError("client authorization onion address must be the bare 56 characters")
    return ClientAuthKey(onion.identity_key, private_key)


def read_client_auth_dir(directory: Path | str) -> dict[bytes, ClientAuthKey]:
    """Every usable key in a ClientOnionAuthDir, by service identity key. A file that cannot be read or
    parsed is logged and skipped; a later file for the same service replaces an earlier one (sorted by
    name). ClientAuthKeyError if the directory itself cannot be listed."""
    try:
        paths = sorted(Path(directory).iterdir())
    except OSError as exc:
        raise ClientAuthKeyError(f"cannot read ClientOnionAuthDir {directory}: {exc.strerror}") from None
    keys: dict[bytes, ClientAuthKey] = {}
    for path in paths:
        if not path.name.endswith(AUTH_PRIVATE_SUFFIX):
            log.info("Client authorization unrecognized filename %s. File must end in %s. Ignoring.",
                     path.name, AUTH_PRIVATE_SUFFIX)
            continue
        try:
            key = parse_client_auth_line(path.read_text(encoding="ascii"))
        except (OSError, UnicodeDecodeError, ClientAuthKeyError) as exc:
            log.warning("Client authorization file %s skipped: %s", path.name, exc)
            continue
        keys[key.identity_key] = key
    return keys
