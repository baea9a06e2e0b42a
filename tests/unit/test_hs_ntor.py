"""hs-ntor, client side, against a service side written here from rend-spec-v3 3.3.2 and 4.2.1 (it
shares no code with oppy.hs.ntor: hashlib, cryptography and the spec's formulas only), and arti's MAC
vectors (generated with tor's hs_ntor_ref.py)."""

from __future__ import annotations

import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from oppy.crypto.errors import HandshakeError
from oppy.hs.ntor import HsCircuitKeys, HsNtorClient, hs_mac

PROTOID = b"tor-hs-ntor-curve25519-sha3-256-1"


def _mac(key: bytes, message: bytes) -> bytes:
    return hashlib.sha3_256(struct.pack(">Q", len(key)) + key + message).digest()


def _raw(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class SpecService:
    """The service's half of hs-ntor for one introduction point, straight from the spec."""

    def __init__(self, subcredential: bytes) -> None:
        self.subcredential = subcredential
        self.b = X25519PrivateKey.from_private_bytes(bytes(range(32)))
        self.B = _raw(self.b)
        self.auth_key = bytes([0xA5]) * 32

    def open_introduce(self, cell_start: bytes, encrypted_section: bytes) -> tuple[bytes, bytes]:
        """(plaintext, X) of INTRODUCE2's ENCRYPTED section, or ValueError if the MAC is wrong."""
        client_pk, data, mac = encrypted_section[:32], encrypted_section[32:-32], encrypted_section[-32:]
        xb = self.b.exchange(X25519PublicKey.from_public_bytes(client_pk))
        secret = xb + self.auth_key + client_pk + self.B + PROTOID
        keys = hashlib.shake_256(secret + PROTOID + b":hs_key_extract" + PROTOID + b":hs_key_expand"
                                 + self.subcredential).digest(64)
        if _mac(keys[32:], cell_start + client_pk + data) != mac:
            raise ValueError("bad INTRODUCE MAC")
        plaintext = Cipher(algorithms.AES(keys[:32]), modes.CTR(bytes(16))).decryptor().update(data)
        return plaintext, client_pk

    def rendezvous(self, client_pk: bytes) -> tuple[bytes, bytes]:
        """(HANDSHAKE_INFO for RENDEZVOUS1, the 128 bytes of key material the service derives)."""
        y = X25519PrivateKey.from_private_bytes(bytes([7]) * 32)
        Y = _raw(y)
        X = X25519PublicKey.from_public_bytes(client_pk)
        secret = y.exchange(X) + self.b.exchange(X) + self.auth_key + self.B + client_pk + Y + PROTOID
        seed = _mac(secret, PROTOID + b":hs_key_extract")
        verify = _mac(secret, PROTOID + b":hs_verify")
        auth = _mac(verify + self.auth_key + self.B + Y + client_pk + PROTOID + b"Server", PROTOID + b":hs_mac")
        return Y + auth, hashlib.shake_256(seed + PROTOID + b":hs_key_expand").digest(128)


def test_arti_mac_vectors():
    # arti tor-proto hs_ntor.rs ntor_mac(), from tor's hs_ntor_ref.py
    assert hs_mac(b"who", b"knows?").hex() == "5e7da329630fdaa3eab7498bb1dc625bbb9ca968f10392b6af92d51d5db17473"
    assert hs_mac(b"gone", b"by").hex() == "90071aabb06d3f7c777db41542f4790c7dd9e2e7b2b842f54c9c42bbdb37e9a0"


def test_a_whole_introduction_and_rendezvous_with_the_spec_service():
    subcredential = bytes([ord("Z")]) * 32
    service = SpecService(subcredential)
    client = HsNtorClient(service.auth_key, service.B, subcredential, private_key=bytes([3]) * 32)
    cell_start = bytes(20) + b"\x02\x00\x20" + service.auth_key + b"\x00"
    plaintext = b"rendezvous cookie, extensions, onion key, link specifiers" + bytes(100)
    section = client.encrypt_introduce(cell_start, plaintext)
    assert section[:32] == client.client_public_key
    opened, client_pk = service.open_introduce(cell_start, section)
    assert opened == plaintext
    handshake_info, material = service.rendezvous(client_pk)
    keys = client.complete(handshake_info)
    assert keys == HsCircuitKeys(material[:32], material[32:64], material[64:96], material[96:128])


def test_the_mac_covers_the_cell_start_and_the_subcredential_matters():
    subcredential = bytes(32)
    service = SpecService(subcredential)
    client = HsNtorClient(service.auth_key, service.B, subcredential)
    section = client.encrypt_introduce(b"header", b"secret")
    with pytest.raises(ValueError):
        service.open_introduce(b"headeR", section)
    other = HsNtorClient(service.auth_key, service.B, bytes([1]) * 32)
    with pytest.raises(ValueError):
        service.open_introduce(b"header", other.encrypt_introduce(b"header", b"secret"))


def test_a_forged_or_truncated_rendezvous2_is_refused():
    service = SpecService(bytes(32))
    client = HsNtorClient(service.auth_key, service.B, bytes(32))
    _, client_pk = service.open_introduce(b"", client.encrypt_introduce(b"", b"x"))
    handshake_info, _ = service.rendezvous(client_pk)
    forged = handshake_info[:-1] + bytes([handshake_info[-1] ^ 1])
    with pytest.raises(HandshakeError, match="AUTH"):
        client.complete(forged)
    with pytest.raises(HandshakeError, match="64"):
        client.complete(handshake_info[:63])
    # another service's answer (a different intro key b) fails the AUTH check too
    stranger = SpecService(bytes(32))
    stranger.b = X25519PrivateKey.from_private_bytes(bytes([9]) * 32)
    stranger.B = _raw(stranger.b)
    with pytest.raises(HandshakeError):
        client.complete(stranger.rendezvous(client_pk)[0])


def test_degenerate_keys_are_refused():
    with pytest.raises(HandshakeError):
        HsNtorClient(bytes(32), bytes(32), bytes(32))   # the all-zero x25519 point
    with pytest.raises(HandshakeError):
        HsNtorClient(bytes(31), bytes([9]) + bytes(31), bytes(32))
