"""The client side of ntor v3 (CREATE2 htype 3), which carries encrypted extension messages.

Proposal 332 ("Ntor protocol with extra data, version 3"), instantiated as in its appendix A.1/A.2
and in tor-spec "The ntor-v3 handshake" (create-created-cells.md). The client message is encrypted
to the relay's onion key (without forward secrecy), the relay's reply message under the final
keys. The messages themselves are lists of extensions: NUM(1), then NUM times type(1) len(1) body.
Congestion control (prop 324) is negotiated with extension 01 (request) and 02 (response).
"""

import hashlib
import hmac
from collections.abc import Iterable
from typing import NamedTuple

from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.ciphers.modes import CTR

from oppy.crypto.errors import HandshakeError
from oppy.crypto.kdf import CIRCUIT_KEY_MATERIAL_LEN, CircuitKeys
from oppy.crypto.ntor import CURVE25519_KEY_LEN, new_ephemeral_key, x25519_exchange

__all__ = [
    "HTYPE_NTOR_V3",
    "CIRCUIT_EXTEND_VERIFICATION",
    "EXT_CC_REQUEST",
    "EXT_CC_RESPONSE",
    "EXT_SUBPROTO_REQUEST",
    "NtorV3ClientHandshake",
    "NtorV3Extension",
    "NtorV3Result",
    "encode_ntor_v3_extensions",
    "parse_ntor_v3_extensions",
    "congestion_control_request",
    "parse_congestion_control_response",
]

# tor-spec "CREATE and CREATE2 cells": handshake type of ntor v3.
HTYPE_NTOR_V3 = 3
# prop 332 A.2: protocol id, and the tweaks of A.1.
PROTOID = b"ntor3-curve25519-sha3_256-1"
T_MSGKDF = PROTOID + b":kdf_phase1"
T_MSGMAC = PROTOID + b":msg_mac"
T_KEY_SEED = PROTOID + b":key_seed"
T_VERIFY = PROTOID + b":verify"
T_FINAL = PROTOID + b":kdf_final"
T_AUTH = PROTOID + b":auth_final"
SERVER_STRING = b"Server"
# tor-spec "The ntor-v3 handshake": the verification string used for circuit extension.
CIRCUIT_EXTEND_VERIFICATION = b"circuit extend"
# prop 332 A.1: ID is an Ed25519 identity; every key, digest and MAC is 32 bytes.
ED25519_ID_LEN = 32
ENC_KEY_LEN = MAC_KEY_LEN = DIGEST_LEN = MAC_LEN = 32
# prop 332 "Server operation": the reply is Y | AUTH | encrypted message.
NTOR_V3_REPLY_MIN_LEN = CURVE25519_KEY_LEN + DIGEST_LEN
_ZERO_IV = bytes(16)

# Extension types (tor-spec "The ntor-v3 handshake"; prop 324 section 10).
EXT_CC_REQUEST = 1  # client -> relay, empty body: please use congestion control
EXT_CC_RESPONSE = 2  # relay -> client, body sendme_inc(1): congestion control is on
EXT_SUBPROTO_REQUEST = 3  # client -> relay, (protocol id, version) pairs
# Extension encoding limits: one-byte count, type and length.
_MAX_EXTENSIONS = 255
_MAX_EXTENSION_TYPE = 255
_MAX_EXTENSION_BODY = 255
# C tor congestion_control_validate_sendme_increment(): the relay's sendme_inc may differ from the
# consensus cc_sendme_inc (default 31) by at most one.
DEFAULT_CC_SENDME_INC = 31
CC_SENDME_INC_TOLERANCE = 1


def _encap(data: bytes) -> bytes:
    """prop 332 notation: ENCAP(s) = htonll(len(s)) | s."""
    return len(data).to_bytes(8, "big") + data


def _hash(data: bytes, tweak: bytes) -> bytes:
    """prop 332 A.1: H(s, t) = SHA3_256(ENCAP(t) | s)."""
    return hashlib.sha3_256(_encap(tweak) + data).digest()


def _mac(key: bytes, message: bytes, tweak: bytes) -> bytes:
    """prop 332 A.1: MAC(k, msg, t) = SHA3_256(ENCAP(t) | ENCAP(k) | msg)."""
    return hashlib.sha3_256(_encap(tweak) + _encap(key) + message).digest()


def _kdf(data: bytes, tweak: bytes, length: int) -> bytes:
    """prop 332 A.1: KDF(s, t) = SHAKE_256(ENCAP(t) | s), first `length` bytes."""
    return hashlib.shake_256(_encap(tweak) + data).digest(length)


def _aes256_ctr(key: bytes, data: bytes) -> bytes:
    """prop 332 A.1: ENC(k, m) = AES_256_CTR(k, m) with an all-zero IV; DEC is the same."""
    return Cipher(AES(key), CTR(_ZERO_IV)).encryptor().update(data)


class NtorV3Extension(NamedTuple):
    """One extension of an ntor-v3 client or server message."""

    ext_type: int
    body: bytes


class NtorV3Result(NamedTuple):
    """What a completed ntor-v3 handshake yields: circuit keys and the relay's message."""

    keys: CircuitKeys
    server_message: bytes


def encode_ntor_v3_extensions(extensions: Iterable[tuple[int, bytes]]) -> bytes:
    """NUM(1), then each extension as type(1) len(1) body, sorted by type (prop 332 A.2)."""
    ordered = sorted((int(ext_type), bytes(body)) for ext_type, body in extensions)
    if len(ordered) > _MAX_EXTENSIONS:
        raise ValueError(f"at most {_MAX_EXTENSIONS} extensions fit in an ntor-v3 message")
    encoded = bytearray((len(ordered),))
    for ext_type, body in ordered:
        if not 0 <= ext_type <= _MAX_EXTENSION_TYPE:
            raise ValueError(f"extension type {ext_type} does not fit in one byte")
        if len(body) > _MAX_EXTENSION_BODY:
            raise ValueError(f"extension {ext_type} body is {len(body)} bytes, at most 255 fit")
        encoded += bytes((ext_type, len(body))) + body
    return bytes(encoded)


def parse_ntor_v3_extensions(message: bytes) -> list[NtorV3Extension]:
    """Decode an extension list; HandshakeError if it is truncated.

    An empty message counts as no extensions, and bytes after the last extension are ignored,
    as C tor's trunnel parser does.
    """
    message = bytes(message)
    if not message:
        return []
    count = message[0]
    offset = 1
    extensions = []
    for index in range(count):
        if offset + 2 > len(message):
            raise HandshakeError(f"ntor-v3 message truncated in extension {index + 1}/{count}")
        ext_type, body_len = message[offset], message[offset + 1]
        offset += 2
        if offset + body_len > len(message):
            raise HandshakeError(f"ntor-v3 extension {ext_type} truncated")
        extensions.append(NtorV3Extension(ext_type, message[offset : offset + body_len]))
        offset += body_len
    return extensions


def congestion_control_request() -> bytes:
    """The client message asking for congestion control: one empty extension 01 (`01 01 00`)."""
    return encode_ntor_v3_extensions([(EXT_CC_REQUEST, b"")])


def parse_congestion_control_response(
    server_message: bytes, cc_sendme_inc: int = DEFAULT_CC_SENDME_INC
) -> int | None:
    """The relay's sendme_inc if it turned congestion control on, None if it did not.

    Only the first extension 02 counts (prop 332 A.2). Raises HandshakeError for a value C tor
    would refuse: zero, or more than one away from the consensus `cc_sendme_inc`.
    """
    for extension in parse_ntor_v3_extensions(server_message):
        if extension.ext_type != EXT_CC_RESPONSE:
            continue
        if not extension.body:
            raise HandshakeError("congestion control response has no sendme_inc")
        sendme_inc = extension.body[0]
        if sendme_inc == 0 or abs(sendme_inc - cc_sendme_inc) > CC_SENDME_INC_TOLERANCE:
            raise HandshakeError(
                f"relay chose sendme_inc {sendme_inc}, consensus says {cc_sendme_inc}"
            )
        return sendme_inc
    return None


class NtorV3ClientHandshake:
    """One client ntor-v3 handshake with one relay (htype 3).

    `relay_ed25519_id` is the relay's 32-byte Ed25519 identity, `ntor_onion_key` its curve25519
    ntor-onion-key, `client_message` the encoded extension list to send (send at least `00`: 0.4.9
    relays DESTROY an empty message). `ephemeral_private_key` is for test vectors only.
    """

    __slots__ = ("_relay_id", "_onion_key", "_verification", "_private", "_public", "_shared_xb",
                 "_client_mac", "onionskin")  # fmt: skip

    def __init__(
        self,
        relay_ed25519_id: bytes,
        ntor_onion_key: bytes,
        client_message: bytes,
        *,
        verification: bytes = CIRCUIT_EXTEND_VERIFICATION,
        ephemeral_private_key: bytes | None = None,
    ) -> None:
        if len(relay_ed25519_id) != ED25519_ID_LEN:
            raise ValueError(f"relay Ed25519 identity must be {ED25519_ID_LEN} bytes")
        if len(ntor_onion_key) != CURVE25519_KEY_LEN:
            raise ValueError(f"ntor onion key must be {CURVE25519_KEY_LEN} bytes")
        self._relay_id = bytes(relay_ed25519_id)
        self._onion_key = bytes(ntor_onion_key)
        self._verification = bytes(verification)
        self._private = new_ephemeral_key(ephemeral_private_key)
        self._public = self._private.public_key().public_bytes_raw()
        # prop 332 "Client operation, phase 1".
        self._shared_xb = x25519_exchange(self._private, self._onion_key)
        phase1_input = (
            self._shared_xb
            + self._relay_id
            + self._public
            + self._onion_key
            + PROTOID
            + _encap(self._verification)
        )
        phase1_keys = _kdf(phase1_input, T_MSGKDF, ENC_KEY_LEN + MAC_KEY_LEN)
        encrypted_message = _aes256_ctr(phase1_keys[:ENC_KEY_LEN], bytes(client_message))
        self._client_mac = _mac(
            phase1_keys[ENC_KEY_LEN:],
            self._relay_id + self._onion_key + self._public + encrypted_message,
            T_MSGMAC,
        )
        # NODEID | KEYID | CLIENT_PK | MSG | MAC
        self.onionskin: bytes = (
            self._relay_id + self._onion_key + self._public + encrypted_message + self._client_mac
        )

    def complete(self, reply: bytes) -> NtorV3Result:
        """Check the relay's reply (Y | AUTH | MSG), derive the keys and decrypt its message."""
        reply = bytes(reply)
        if len(reply) < NTOR_V3_REPLY_MIN_LEN:
            raise HandshakeError(
                f"ntor-v3 reply must be at least {NTOR_V3_REPLY_MIN_LEN} bytes, got {len(reply)}"
            )
        server_public = reply[:CURVE25519_KEY_LEN]
        server_auth = reply[CURVE25519_KEY_LEN:NTOR_V3_REPLY_MIN_LEN]
        encrypted_message = reply[NTOR_V3_REPLY_MIN_LEN:]
        shared_xy = x25519_exchange(self._private, server_public)
        secret_input = (
            shared_xy
            + self._shared_xb
            + self._relay_id
            + self._onion_key
            + self._public
            + server_public
            + PROTOID
            + _encap(self._verification)
        )
        key_seed = _hash(secret_input, T_KEY_SEED)
        verify = _hash(secret_input, T_VERIFY)
        auth_input = (
            verify
            + self._relay_id
            + self._onion_key
            + server_public
            + self._public
            + self._client_mac
            + _encap(encrypted_message)
            + PROTOID
            + SERVER_STRING
        )
        if not hmac.compare_digest(_hash(auth_input, T_AUTH), server_auth):
            raise HandshakeError("ntor-v3 reply failed authentication (AUTH mismatch)")
        stream = _kdf(key_seed, T_FINAL, ENC_KEY_LEN + CIRCUIT_KEY_MATERIAL_LEN)
        server_message = _aes256_ctr(stream[:ENC_KEY_LEN], encrypted_message)
        return NtorV3Result(CircuitKeys.from_key_material(stream[ENC_KEY_LEN:]), server_message)
