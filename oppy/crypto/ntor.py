"""The client side of the ntor handshake (CREATE2 htype 2) and of CREATE_FAST.

tor-spec "The ntor handshake" and "CREATE_FAST/CREATED_FAST cells" (create-created-cells.md), keys
as in "Setting circuit keys" (setting-circuit-keys.md). Sans-IO: build the handshake object, put
`.onionskin` into a CREATE2/EXTEND2 (or CREATE_FAST) cell, feed the reply bytes to `.complete()`.
"""

import hmac
import os

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from oppy.crypto.errors import HandshakeError
from oppy.crypto.kdf import (
    CIRCUIT_KEY_MATERIAL_LEN,
    HASH_LEN,
    KEY_LEN,
    TOR1_KEY_MATERIAL_LEN,
    CircuitKeys,
    hkdf_sha256,
    kdf_tor,
)

__all__ = [
    "CircuitKeys",
    "CreateFastHandshake",
    "NtorClientHandshake",
    "HTYPE_NTOR",
    "NTOR_ONIONSKIN_LEN",
    "NTOR_REPLY_LEN",
    "CREATE_FAST_ONIONSKIN_LEN",
    "CREATE_FAST_REPLY_LEN",
]

# tor-spec "CREATE and CREATE2 cells": handshake type of ntor in CREATE2/EXTEND2.
HTYPE_NTOR = 2
# tor-spec "The ntor handshake": lengths of keys and of the two messages.
RSA_ID_LEN = 20  # SHA-1 of the relay's RSA identity key
CURVE25519_KEY_LEN = 32
NTOR_AUTH_LEN = 32  # HMAC-SHA256 output
NTOR_ONIONSKIN_LEN = RSA_ID_LEN + 2 * CURVE25519_KEY_LEN  # ID | B | X = 84
NTOR_REPLY_LEN = CURVE25519_KEY_LEN + NTOR_AUTH_LEN  # Y | AUTH = 64

# tor-spec "The ntor handshake": the protocol id and the tweaks derived from it.
PROTOID = b"ntor-curve25519-sha256-1"
T_MAC = PROTOID + b":mac"
T_KEY = PROTOID + b":key_extract"
T_VERIFY = PROTOID + b":verify"
M_EXPAND = PROTOID + b":key_expand"
SERVER_STRING = b"Server"

# tor-spec "CREATE_FAST/CREATED_FAST cells": X is HASH_LEN random bytes; the reply is Y | KH.
CREATE_FAST_ONIONSKIN_LEN = HASH_LEN
CREATE_FAST_REPLY_LEN = 2 * HASH_LEN

_ALL_ZERO_DH = bytes(CURVE25519_KEY_LEN)


def x25519_exchange(private_key: X25519PrivateKey, peer_public: bytes) -> bytes:
    """x25519(private, peer), raising HandshakeError for a degenerate (all-zero) shared secret.

    tor-spec "The ntor handshake": a party must reject a handshake whose DH output is the point at
    infinity; OpenSSL refuses to produce it, and we check again so the rule holds whatever the
    backend.
    """
    try:
        shared = private_key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise HandshakeError(f"degenerate curve25519 key from peer: {exc}") from None
    if hmac.compare_digest(shared, _ALL_ZERO_DH):
        raise HandshakeError("degenerate curve25519 key from peer: all-zero shared secret")
    return shared


def new_ephemeral_key(private_bytes: bytes | None) -> X25519PrivateKey:
    """A fresh curve25519 key, or the given one (test vectors fix the "random" key)."""
    if private_bytes is None:
        return X25519PrivateKey.generate()
    if len(private_bytes) != CURVE25519_KEY_LEN:
        raise ValueError(f"curve25519 private key must be {CURVE25519_KEY_LEN} bytes")
    return X25519PrivateKey.from_private_bytes(private_bytes)


class NtorClientHandshake:
    """One client ntor handshake with one relay (htype 2).

    `relay_rsa_id` is the relay's 20-byte RSA identity fingerprint, `ntor_onion_key` its 32-byte
    curve25519 ntor-onion-key from the microdescriptor. `ephemeral_private_key` is for test vectors
    only; normally a fresh key is generated.
    """

    __slots__ = ("_relay_rsa_id", "_onion_key", "_private", "_public", "onionskin")

    def __init__(
        self,
        relay_rsa_id: bytes,
        ntor_onion_key: bytes,
        *,
        ephemeral_private_key: bytes | None = None,
    ) -> None:
        if len(relay_rsa_id) != RSA_ID_LEN:
            raise ValueError(
                f"relay RSA identity must be {RSA_ID_LEN} bytes, got {len(relay_rsa_id)}"
            )
        if len(ntor_onion_key) != CURVE25519_KEY_LEN:
            raise ValueError(
                f"ntor onion key must be {CURVE25519_KEY_LEN} bytes, got {len(ntor_onion_key)}"
            )
        self._relay_rsa_id = bytes(relay_rsa_id)
        self._onion_key = bytes(ntor_onion_key)
        self._private = new_ephemeral_key(ephemeral_private_key)
        self._public = self._private.public_key().public_bytes_raw()
        # tor-spec "The ntor handshake": the client sends ID | B | X.
        self.onionskin: bytes = self._relay_rsa_id + self._onion_key + self._public

    def complete(self, reply: bytes) -> CircuitKeys:
        """Check the relay's CREATED2/EXTENDED2 HDATA (Y | AUTH) and derive the circuit keys."""
        if len(reply) != NTOR_REPLY_LEN:
            raise HandshakeError(f"ntor reply must be {NTOR_REPLY_LEN} bytes, got {len(reply)}")
        server_public = bytes(reply[:CURVE25519_KEY_LEN])
        server_auth = bytes(reply[CURVE25519_KEY_LEN:])
        # Compute both DH outputs before judging either, so a bad Y costs the same as a bad AUTH.
        shared_xy = x25519_exchange(self._private, server_public)
        shared_xb = x25519_exchange(self._private, self._onion_key)
        identity = self._relay_rsa_id + self._onion_key
        secret_input = shared_xy + shared_xb + identity + self._public + server_public + PROTOID
        verify = hmac.digest(T_VERIFY, secret_input, "sha256")
        auth_input = verify + identity + server_public + self._public + PROTOID + SERVER_STRING
        expected_auth = hmac.digest(T_MAC, auth_input, "sha256")
        if not hmac.compare_digest(expected_auth, server_auth):
            raise HandshakeError("ntor reply failed authentication (AUTH mismatch)")
        key_material = hkdf_sha256(secret_input, T_KEY, M_EXPAND, CIRCUIT_KEY_MATERIAL_LEN)
        return CircuitKeys.from_key_material(key_material)


class CreateFastHandshake:
    """The client side of CREATE_FAST: no public-key crypto, first hop only.

    tor-spec "CREATE_FAST/CREATED_FAST cells": the client sends X (HASH_LEN random bytes), the
    relay answers Y | KH; K = KDF-TOR(X | Y), KH = K[:HASH_LEN] must match, and the circuit keys
    follow it.
    """

    __slots__ = ("onionskin",)

    def __init__(self, *, client_material: bytes | None = None) -> None:
        if client_material is None:
            client_material = os.urandom(CREATE_FAST_ONIONSKIN_LEN)
        if len(client_material) != CREATE_FAST_ONIONSKIN_LEN:
            raise ValueError(f"CREATE_FAST material must be {CREATE_FAST_ONIONSKIN_LEN} bytes")
        self.onionskin: bytes = bytes(client_material)

    def complete(self, reply: bytes) -> CircuitKeys:
        """Check the CREATED_FAST payload (Y | KH, then cell padding) and derive the keys."""
        if len(reply) < CREATE_FAST_REPLY_LEN:
            raise HandshakeError(
                f"CREATED_FAST reply must be at least {CREATE_FAST_REPLY_LEN} bytes, "
                f"got {len(reply)}"
            )
        server_material = bytes(reply[:HASH_LEN])
        derivative_key = bytes(reply[HASH_LEN:CREATE_FAST_REPLY_LEN])
        stream = kdf_tor(self.onionskin + server_material, HASH_LEN + TOR1_KEY_MATERIAL_LEN)
        if not hmac.compare_digest(stream[:HASH_LEN], derivative_key):
            raise HandshakeError("CREATED_FAST reply failed authentication (KH mismatch)")
        kf_start = 3 * HASH_LEN
        return CircuitKeys(
            df=stream[HASH_LEN : 2 * HASH_LEN],
            db=stream[2 * HASH_LEN : kf_start],
            kf=stream[kf_start : kf_start + KEY_LEN],
            kb=stream[kf_start + KEY_LEN : kf_start + 2 * KEY_LEN],
            kh=stream[:HASH_LEN],
        )
