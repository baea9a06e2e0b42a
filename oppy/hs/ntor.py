"""The client side of the hs-ntor handshake (rend-spec-v3 3.3.2 [NTOR-WITH-EXTRA-DATA], 4.2.1).

The client encrypts the inner part of INTRODUCE1 to the introduction point's encryption key B (keys from
EXP(B,x), the intro point's AUTH_KEY and the service's subcredential), and later checks the service's
RENDEZVOUS2 (SERVER_PK Y, AUTH) to obtain the key material of the virtual hop to the service: relay
crypto with SHA3-256 digests and AES-256-CTR instead of tor1's SHA-1 and AES-128. Sans-IO: the caller
builds the cells; tor's hs_ntor.c and hs_cell.c do the same.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.ciphers.modes import CTR
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from oppy.crypto.errors import HandshakeError
from oppy.crypto.ntor import new_ephemeral_key, x25519_exchange

__all__ = [
    "PROTOID",
    "HS_NTOR_KEY_LEN",
    "HS_NTOR_MAC_LEN",
    "RENDEZVOUS_HANDSHAKE_LEN",
    "HsCircuitKeys",
    "IntroduceKeys",
    "HsNtorClient",
    "hs_mac",
    "shake256_kdf",
    "aes256_ctr",
]

#: rend-spec-v3 3.3.2: the protocol id and the tweaks derived from it.
PROTOID = b"tor-hs-ntor-curve25519-sha3-256-1"
T_HSENC = PROTOID + b":hs_key_extract"
T_HSVERIFY = PROTOID + b":hs_verify"
T_HSMAC = PROTOID + b":hs_mac"
M_HSEXPAND = PROTOID + b":hs_key_expand"
SERVER_STRING = b"Server"
#: rend-spec-v3 0.3: S_KEY_LEN (AES-256), MAC_LEN and HASH_LEN (SHA3-256), PK_PUBKEY_LEN (x25519).
HS_NTOR_KEY_LEN = 32
HS_NTOR_MAC_LEN = 32
HS_HASH_LEN = 32
CURVE25519_KEY_LEN = 32
#: rend-spec-v3 4.2: HANDSHAKE_INFO of RENDEZVOUS2 is SERVER_PK (32) | AUTH (32).
RENDEZVOUS_HANDSHAKE_LEN = CURVE25519_KEY_LEN + HS_NTOR_MAC_LEN
_AES_BLOCK_LEN = 16


def hs_mac(key: bytes, message: bytes) -> bytes:
    """rend-spec-v3 0.3: MAC(key, message) = SHA3-256(htonll(len(key)) | key | message)."""
    return hashlib.sha3_256(struct.pack(">Q", len(key)) + key + message).digest()


def shake256_kdf(data: bytes, length: int) -> bytes:
    """rend-spec-v3 0.3: KDF(message, n) is the first n bytes of SHAKE-256."""
    return hashlib.shake_256(data).digest(length)


def aes256_ctr(key: bytes, data: bytes, iv: bytes = bytes(_AES_BLOCK_LEN)) -> bytes:
    """AES-256-CTR (STREAM in rend-spec-v3 0.3) from counter block ``iv``, zero unless given (tor
    ``crypto_cipher_new_with_bits``); encrypting and decrypting are the same."""
    return Cipher(AES(key), CTR(iv)).encryptor().update(data)


class IntroduceKeys(NamedTuple):
    """rend-spec-v3 3.3.2: ENC_KEY for ENCRYPTED_DATA and MAC_KEY for the INTRODUCE1 MAC."""

    enc_key: bytes
    mac_key: bytes


class HsCircuitKeys(NamedTuple):
    """rend-spec-v3 4.2.1: the virtual hop's keys. df/db seed the forward/backward running SHA3-256
    digests, kf/kb key the forward/backward AES-256-CTR streams (client side: send with Kf, Df)."""

    df: bytes
    db: bytes
    kf: bytes
    kb: bytes

    @classmethod
    def from_key_seed(cls, ntor_key_seed: bytes) -> HsCircuitKeys:
        """K = KDF(NTOR_KEY_SEED | m_hsexpand, HASH_LEN * 2 + S_KEY_LEN * 2), split Df Db Kf Kb."""
        material = shake256_kdf(ntor_key_seed + M_HSEXPAND, 2 * HS_HASH_LEN + 2 * HS_NTOR_KEY_LEN)
        kf_start = 2 * HS_HASH_LEN
        return cls(df=material[:HS_HASH_LEN], db=material[HS_HASH_LEN:kf_start],
                   kf=material[kf_start:kf_start + HS_NTOR_KEY_LEN],
                   kb=material[kf_start + HS_NTOR_KEY_LEN:])


def _public_bytes(private_key: X25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class HsNtorClient:
    """One introduction attempt: the client's ephemeral x25519 key and what it derives.

    ``auth_key`` is the introduction point's Ed25519 ``auth-key`` (from the descriptor's certificate),
    ``enc_key`` its x25519 ``enc-key ntor`` B, ``subcredential`` the service's for the period.
    ``private_key`` fixes x for tests; by default a fresh key is drawn.
    """

    __slots__ = ("auth_key", "enc_key", "subcredential", "_private_key", "client_public_key", "_xb",
                 "introduce_keys")

    def __init__(self, auth_key: bytes, enc_key: bytes, subcredential: bytes,
                 private_key: bytes | None = None) -> None:
        if len(auth_key) != 32 or len(enc_key) != CURVE25519_KEY_LEN or len(subcredential) != HS_HASH_LEN:
            raise HandshakeError("hs-ntor needs a 32-byte auth key, encryption key and subcredential")
        self.auth_key = bytes(auth_key)
        self.enc_key = bytes(enc_key)
        self.subcredential = bytes(subcredential)
        self._private_key = new_ephemeral_key(private_key)
        #: X, sent as CLIENT_PK.
        self.client_public_key = _public_bytes(self._private_key)
        self._xb = x25519_exchange(self._private_key, self.enc_key)
        # intro_secret_hs_input = EXP(B,x) | AUTH_KEY | X | B | PROTOID; info = m_hsexpand | N_hs_subcred
        secret_input = self._xb + self.auth_key + self.client_public_key + self.enc_key + PROTOID
        material = shake256_kdf(secret_input + T_HSENC + M_HSEXPAND + self.subcredential,
                                HS_NTOR_KEY_LEN + HS_NTOR_MAC_LEN)
        self.introduce_keys = IntroduceKeys(material[:HS_NTOR_KEY_LEN], material[HS_NTOR_KEY_LEN:])

    def encrypt_introduce(self, cell_start: bytes, plaintext: bytes) -> bytes:
        """The ENCRYPTED section of INTRODUCE1: CLIENT_PK | ENCRYPTED_DATA | MAC.

        ``cell_start`` is the encoded INTRODUCE1 body before this section (LEGACY_KEY_ID through the
        extensions): the MAC covers it and everything up to the MAC (tor ``compute_introduce_mac``).
        """
        encrypted = self.client_public_key + aes256_ctr(self.introduce_keys.enc_key, plaintext)
        return encrypted + hs_mac(self.introduce_keys.mac_key, cell_start + encrypted)

    def complete(self, handshake_info: bytes) -> HsCircuitKeys:
        """Check RENDEZVOUS2's HANDSHAKE_INFO (SERVER_PK | AUTH) and return the virtual hop's keys;
        HandshakeError if it is malformed or AUTH is not the service's proof."""
        if len(handshake_info) != RENDEZVOUS_HANDSHAKE_LEN:
            raise HandshakeError(f"RENDEZVOUS2 handshake info is {len(handshake_info)} bytes, "
                                 f"not {RENDEZVOUS_HANDSHAKE_LEN}")
        server_public = bytes(handshake_info[:CURVE25519_KEY_LEN])
        auth = bytes(handshake_info[CURVE25519_KEY_LEN:])
        xy = x25519_exchange(self._private_key, server_public)
        # rend_secret_hs_input = EXP(X,y) | EXP(X,b) | AUTH_KEY | B | X | Y | PROTOID
        secret_input = (xy + self._xb + self.auth_key + self.enc_key + self.client_public_key
                        + server_public + PROTOID)
        key_seed = hs_mac(secret_input, T_HSENC)
        verify = hs_mac(secret_input, T_HSVERIFY)
        auth_input = (verify + self.auth_key + self.enc_key + server_public + self.client_public_key
                      + PROTOID + SERVER_STRING)
        if not hmac.compare_digest(hs_mac(auth_input, T_HSMAC), auth):
            raise HandshakeError("RENDEZVOUS2 AUTH does not match: not the service we introduced to")
        return HsCircuitKeys.from_key_seed(key_seed)
