"""Server descriptors ("router descriptors"), as a bridge serves its own at ``/tor/server/authority``.

A bridge is in no consensus, so its keys come from the descriptor it gives a client over BEGIN_DIR
(dir-spec "Router descriptors"; tor ``routerparse.c`` router_parse_entry_from_string). Only what a client
needs to build circuits through it is kept: the RSA identity (SHA-1 of ``signing-key``), the Ed25519
identity (``master-key-ed25519``), the ntor onion key, the address and the ORPort. The document is checked
before any of it is used: its ``router-signature`` by its own ``signing-key``, and the ``fingerprint`` line
against that key.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_der_public_key

from oppy.netdoc.documents import parse_ipv4, pem_object, signed_ascii_lines
from oppy.netdoc.errors import DirectoryError, DocumentParseError
from oppy.netdoc.fields import decode_base64, parse_decimal, parse_hex_digest, parse_time
from oppy.netdoc.relay import RelayTarget

__all__ = [
    "RouterDescriptor",
    "RouterDescriptorError",
    "RouterSignatureError",
    "MAX_ROUTER_DESCRIPTOR_SIZE",
    "parse_router_descriptor",
]

#: dir-spec: a descriptor is small (tor routerparse.c MAX_DESCRIPTOR_UPLOAD_SIZE is 20 KB); one that is
#: far larger is not a descriptor.
MAX_ROUTER_DESCRIPTOR_SIZE = 64 * 1024
#: tor-spec "Preliminaries": curve25519 and Ed25519 keys are 32 bytes.
_KEY_LENGTH = 32
_SIGNED_END = b"\nrouter-signature\n"


class RouterDescriptorError(DocumentParseError):
    """A server descriptor is malformed."""


class RouterSignatureError(DirectoryError):
    """A server descriptor's signature or fingerprint does not match its signing key."""


@dataclass(frozen=True, slots=True)
class RouterDescriptor:
    """The parts of a verified server descriptor a client builds circuits with."""

    nickname: str
    address: str
    or_port: int
    rsa_id: bytes
    ntor_onion_key: bytes
    ed25519_id: bytes | None
    published: int

    @property
    def fingerprint(self) -> str:
        return self.rsa_id.hex().upper()

    def target(self, address: str | None = None, or_port: int | None = None) -> RelayTarget:
        """The relay to build circuits through; a bridge is reached where its Bridge line says, which may
        differ from the address it publishes."""
        return RelayTarget(self.nickname, self.rsa_id, address or self.address, or_port or self.or_port,
                           self.ntor_onion_key, self.ed25519_id)


def _load_key(der: bytes) -> RSAPublicKey:
    try:
        key = load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise RouterDescriptorError(f"signing-key is not an RSA public key: {exc}") from None
    if not isinstance(key, RSAPublicKey):
        raise RouterDescriptorError("signing-key is not an RSA key")
    return key


def parse_router_descriptor(data: bytes) -> RouterDescriptor:
    """One server descriptor, verified against its own signing key. Raises :class:`RouterDescriptorError`
    when malformed, :class:`RouterSignatureError` when the signature or the fingerprint line is wrong."""
    error = RouterDescriptorError
    if len(data) > MAX_ROUTER_DESCRIPTOR_SIZE:
        raise error(f"a {len(data)}-byte server descriptor is larger than {MAX_ROUTER_DESCRIPTOR_SIZE} bytes")
    if not data.startswith(b"router "):
        raise error("a server descriptor starts with a 'router' line")
    signed, lines = signed_ascii_lines(data, _SIGNED_END, error, "the server descriptor")
    values: dict[str, object] = {}
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        keyword, _, rest = line.partition(" ")
        if keyword in ("router", "signing-key", "ntor-onion-key", "master-key-ed25519", "fingerprint",
                       "published", "router-signature") and keyword in values:
            raise error(f"more than one {keyword!r} line")
        if keyword == "router":
            words = rest.split(" ")
            if len(words) != 5:
                raise error(f"bad router line {line[:80]!r}")
            address = parse_ipv4(words[1], error, "router address")
            values[keyword] = (words[0], address, parse_decimal(words[2], error, "ORPort", 1, 65535))
        elif keyword in ("signing-key", "onion-key", "identity-ed25519", "onion-key-crosscert",
                         "ntor-onion-key-crosscert"):
            kinds = {"signing-key": ("RSA PUBLIC KEY",), "onion-key": ("RSA PUBLIC KEY",),
                     "identity-ed25519": ("ED25519 CERT",), "onion-key-crosscert": ("CROSSCERT",),
                     "ntor-onion-key-crosscert": ("ED25519 CERT",)}[keyword]
            values[keyword], index = pem_object(lines, index, kinds, error, keyword)
        elif keyword in ("ntor-onion-key", "master-key-ed25519"):
            key = decode_base64(rest.strip(), error, keyword)
            if len(key) != _KEY_LENGTH:
                raise error(f"{keyword} is {len(key)} bytes, not {_KEY_LENGTH}")
            values[keyword] = key
        elif keyword == "fingerprint":       # the hex digest in groups of four
            values[keyword] = bytes.fromhex(parse_hex_digest(rest.replace(" ", ""), error, "fingerprint"))
        elif keyword == "published":
            values[keyword] = parse_time(rest.strip(), error)
        elif keyword == "router-signature":
            values[keyword], index = pem_object(lines, index, ("SIGNATURE",), error, keyword)
            if any(rest_line.strip() for rest_line in lines[index:] if not rest_line.startswith("@")):
                raise error("data after the server descriptor's router-signature")
            break
    missing = [keyword for keyword in ("router", "signing-key", "ntor-onion-key", "published", "router-signature")
               if keyword not in values]
    if missing:
        raise error(f"the server descriptor lacks {', '.join(missing)}")
    der = values["signing-key"]
    assert isinstance(der, bytes)
    rsa_id = hashlib.sha1(der).digest()
    key = _load_key(der)
    signature = values["router-signature"]
    assert isinstance(signature, bytes)
    try:
        signed_digest = key.recover_data_from_signature(signature, PKCS1v15(), None)
    except (InvalidSignature, ValueError):
        signed_digest = None
    if signed_digest is None or not hmac.compare_digest(signed_digest, hashlib.sha1(signed).digest()):
        raise RouterSignatureError(f"the router-signature of ${rsa_id.hex().upper()} does not verify")
    claimed = values.get("fingerprint")
    if claimed is not None and claimed != rsa_id:
        raise RouterSignatureError(f"the fingerprint line ${claimed.hex().upper()} is not the signing key's "
                                   f"${rsa_id.hex().upper()}")
    nickname, address, or_port = values["router"]  # type: ignore[misc]
    return RouterDescriptor(nickname, address, or_port, rsa_id, values["ntor-onion-key"],  # type: ignore[arg-type]
                            values.get("master-key-ed25519"), values["published"])  # type: ignore[arg-type]
