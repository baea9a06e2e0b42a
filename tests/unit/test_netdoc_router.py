"""Server descriptors as a bridge serves its own: parsed, and verified against their own signing key.

The descriptors are written here from dir-spec "Router descriptors" with freshly generated keys and signed
with tests.unit.certfactory's raw PKCS#1 signer: nothing is shared with the parser under test.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from oppy.netdoc.fields import parse_time
from oppy.netdoc.router import (
    MAX_ROUTER_DESCRIPTOR_SIZE,
    RouterDescriptorError,
    RouterSignatureError,
    parse_router_descriptor,
)
from tests.unit.certfactory import raw_pkcs1_v15_sign

PUBLISHED = "2030-01-01 00:00:00"


@functools.cache
def identity_key(index: int = 0) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def rsa_der(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.PKCS1)


def rsa_id(key: rsa.RSAPrivateKey) -> bytes:
    return hashlib.sha1(rsa_der(key)).digest()


def ntor_key(seed: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(hashlib.sha256(seed).digest()).public_key().public_bytes_raw()


def _pem(kind: str, data: bytes) -> str:
    body = base64.b64encode(data).decode()
    return f"-----BEGIN {kind}-----\n" + "".join(body[i:i + 64] + "\n" for i in range(0, len(body), 64)) \
        + f"-----END {kind}-----\n"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def make_descriptor(key: rsa.RSAPrivateKey, nickname: str = "bridge0", address: str = "127.0.0.1",
                    or_port: int = 19800, *, ntor: bytes | None = None, ed25519_id: bytes | None = b"E" * 32,
                    fingerprint: bytes | None = None, extra: str = "",
                    signer: rsa.RSAPrivateKey | None = None) -> bytes:
    """A server descriptor signed by ``signer`` (its own key by default)."""
    printed = (fingerprint or rsa_id(key)).hex().upper()
    text = (f"router {nickname} {address} {or_port} 0 0\n"
            + (f"master-key-ed25519 {_b64(ed25519_id)}\n" if ed25519_id else "")
            + "platform Tor 0.4.9.11 on Linux\n"
            + f"published {PUBLISHED}\n"
            + "fingerprint " + " ".join(printed[i:i + 4] for i in range(0, 40, 4)) + "\n"
            + "bandwidth 1073741824 1073741824 0\n"
            + "onion-key\n" + _pem("RSA PUBLIC KEY", rsa_der(identity_key(9)))
            + "signing-key\n" + _pem("RSA PUBLIC KEY", rsa_der(key))
            + (f"ntor-onion-key {_b64(ntor if ntor is not None else ntor_key(nickname.encode()))}\n")
            + "reject *:*\n" + extra
            + "router-signature\n")
    digest = hashlib.sha1(text.encode()).digest()
    signature = raw_pkcs1_v15_sign(signer or key, digest)
    return text.encode() + _pem("SIGNATURE", signature).encode()


def test_a_bridge_descriptor_gives_its_keys_address_and_identity():
    key = identity_key()
    descriptor = parse_router_descriptor(make_descriptor(key))
    assert descriptor.rsa_id == rsa_id(key) and descriptor.fingerprint == rsa_id(key).hex().upper()
    assert (descriptor.nickname, descriptor.address, descriptor.or_port) == ("bridge0", "127.0.0.1", 19800)
    assert descriptor.ntor_onion_key == ntor_key(b"bridge0") and descriptor.ed25519_id == b"E" * 32
    assert descriptor.published == parse_time(PUBLISHED)
    target = descriptor.target("10.1.2.3", 443)      # reached where the Bridge line says
    assert (target.address, target.or_port, target.rsa_id, target.ntor_onion_key) == \
        ("10.1.2.3", 443, rsa_id(key), ntor_key(b"bridge0"))
    assert descriptor.target().address == "127.0.0.1"


def test_annotations_after_the_signature_are_allowed_and_ed25519_is_optional():
    data = make_descriptor(identity_key(), ed25519_id=None) + b"@downloaded-at 2030-01-01 00:00:00\n"
    assert parse_router_descriptor(data).ed25519_id is None


def test_a_changed_descriptor_or_another_signer_is_refused():
    key = identity_key()
    with pytest.raises(RouterSignatureError, match="router-signature .* does not verify"):
        parse_router_descriptor(make_descriptor(key).replace(b"router bridge0 127.0.0.1 19800",
                                                             b"router bridge0 127.0.0.2 19800"))
    with pytest.raises(RouterSignatureError, match="does not verify"):
        parse_router_descriptor(make_descriptor(key, signer=identity_key(1)))


def test_a_fingerprint_line_that_is_not_the_signing_keys_is_refused():
    key = identity_key()
    with pytest.raises(RouterSignatureError, match=f"fingerprint line \\${'AB' * 20} is not the signing key's"):
        parse_router_descriptor(make_descriptor(key, fingerprint=bytes.fromhex("AB" * 20)))


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "starts with a 'router' line"),
    (b"router x 127.0.0.1 1 0 0\n", "no 'router-signature' line"),
    (b"router x 127.0.0.1 1 0 0\nrouter-signature\n\xff", "not ASCII"),
    (b"router " + b"x" * MAX_ROUTER_DESCRIPTOR_SIZE, "larger than"),
])
def test_malformed_documents(data, reason):
    with pytest.raises(RouterDescriptorError, match=reason):
        parse_router_descriptor(data)


def test_a_descriptor_without_an_ntor_key_or_with_a_short_one_is_malformed():
    key = identity_key()
    good = make_descriptor(key)
    without = b"".join(line for line in good.splitlines(keepends=True) if not line.startswith(b"ntor-onion-key"))
    with pytest.raises(RouterDescriptorError, match="lacks ntor-onion-key"):
        parse_router_descriptor(without)
    with pytest.raises(RouterDescriptorError, match="ntor-onion-key is 16 bytes, not 32"):
        parse_router_descriptor(make_descriptor(key, ntor=b"x" * 16))
    with pytest.raises(RouterDescriptorError, match="bad router line"):
        parse_router_descriptor(good.replace(b" 19800 0 0\n", b" 19800 0\n"))
    with pytest.raises(RouterDescriptorError, match="more than one 'published' line"):
        parse_router_descriptor(make_descriptor(key, extra=f"published {PUBLISHED}\n"))


def test_a_fingerprint_line_that_is_not_hex_is_malformed():
    key = identity_key()
    good = make_descriptor(key)
    bad = re.sub(rb"fingerprint [0-9A-F ]+\n", b"fingerprint XYZ\n", good)
    with pytest.raises(RouterDescriptorError, match="bad fingerprint: 'XYZ' is not 40 hex digits"):
        parse_router_descriptor(bad)
