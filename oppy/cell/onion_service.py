"""The relay messages of a client reaching an onion service (rend-spec-v3 3.2 and 4; tor's trunnel
cell_introduce1, cell_rendezvous): ESTABLISH_RENDEZVOUS / RENDEZVOUS_ESTABLISHED on the rendezvous circuit,
INTRODUCE1 / INTRODUCE_ACK on the introduction circuit, RENDEZVOUS2 back on the rendezvous circuit.

Sans-IO encoders and parsers; the hs-ntor encryption of INTRODUCE1's last part is the caller's (it covers
the bytes before it).
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import NamedTuple

from oppy.cell.errors import CellParseError
from oppy.cell.relay import RELAY_PAYLOAD_LEN, LinkSpecifier, encode_link_specifiers

__all__ = [
    "REND_COOKIE_LEN",
    "INTRODUCE1_EXT_CC_REQUEST",
    "HANDSHAKE_INFO_LEN",
    "IntroduceAckStatus",
    "IntroduceAck",
    "encode_establish_rendezvous_body",
    "encode_introduce1_head",
    "encode_introduce_plaintext",
    "introduce_padding",
    "decode_introduce_ack_body",
    "decode_rendezvous2_body",
]

#: rend-spec-v3 3.2.1 / 4.1: RENDEZVOUS_COOKIE, 20 random bytes.
REND_COOKIE_LEN = 20
#: rend-spec-v3 3.2.1: LEGACY_KEY_ID, 20 zero bytes in a v3 INTRODUCE1.
LEGACY_KEY_ID_LEN = 20
#: rend-spec-v3 3.2.1: AUTH_KEY_TYPE 02, an Ed25519 introduction-point authentication key.
AUTH_KEY_TYPE_ED25519 = 0x02
#: rend-spec-v3 3.3: ONION_KEY_TYPE 01, the rendezvous point's ntor (curve25519) onion key.
ONION_KEY_TYPE_NTOR = 0x01
#: rend-spec-v3 4.2: HANDSHAKE_INFO = SERVER_PK (32) | AUTH (32).
HANDSHAKE_INFO_LEN = 64
#: hs-ntor's part after the plaintext: CLIENT_PK (32) before it, MAC (32) after it.
_HS_NTOR_OVERHEAD = 32 + 32
#: tor hs_cell.c HS_CELL_INTRODUCE1_MIN_SIZE: the encrypted part is padded so the message reaches this size
#: (older relays refused shorter INTRODUCE1 messages).
INTRODUCE1_MIN_SIZE = 246

#: prop 324 9.2 (tor trunnel cell_introduce1 TRUNNEL_EXT_TYPE_CC_REQUEST): the extension of INTRODUCE1's
#: ENCRYPTED part by which the client asks the service for congestion control on the rendezvous circuit; no
#: body.
INTRODUCE1_EXT_CC_REQUEST = 0x01

_U16 = struct.Struct(">H")


class IntroduceAckStatus(IntEnum):
    """rend-spec-v3 3.2.2: INTRODUCE_ACK STATUS."""

    SUCCESS = 0x0000
    SERVICE_NOT_RECOGNIZED = 0x0001
    BAD_MESSAGE_FORMAT = 0x0002
    CANT_RELAY = 0x0003


class IntroduceAck(NamedTuple):
    status: int


def _extensions(*types: int) -> bytes:
    """N_EXTENSIONS and one empty extension (EXT_FIELD_TYPE, EXT_FIELD_LEN 0) per type (tor's
    trn_extension)."""
    return bytes((len(types),)) + b"".join(bytes((kind, 0)) for kind in types)


def encode_establish_rendezvous_body(cookie: bytes) -> bytes:
    """rend-spec-v3 4.1: ESTABLISH_RENDEZVOUS carries the RENDEZVOUS_COOKIE alone."""
    if len(cookie) != REND_COOKIE_LEN:
        raise ValueError(f"a rendezvous cookie is {REND_COOKIE_LEN} bytes, not {len(cookie)}")
    return bytes(cookie)


def encode_introduce1_head(auth_key: bytes) -> bytes:
    """INTRODUCE1 up to its ENCRYPTED part (rend-spec-v3 3.2.1): LEGACY_KEY_ID (zeros), AUTH_KEY_TYPE 02,
    AUTH_KEY_LEN, AUTH_KEY (the introduction point's from the descriptor), N_EXTENSIONS 0."""
    if len(auth_key) != 32:
        raise ValueError(f"an introduction point's Ed25519 auth key is 32 bytes, not {len(auth_key)}")
    return (bytes(LEGACY_KEY_ID_LEN) + bytes((AUTH_KEY_TYPE_ED25519,)) + _U16.pack(len(auth_key))
            + bytes(auth_key) + _extensions())


def introduce_padding(head_len: int, plaintext_len: int) -> int:
    """How many zero bytes PAD adds to the plaintext so that INTRODUCE1 is at least
    INTRODUCE1_MIN_SIZE (tor introduce1_set_encrypted_padding)."""
    return max(0, INTRODUCE1_MIN_SIZE - (head_len + _HS_NTOR_OVERHEAD + plaintext_len))


def encode_introduce_plaintext(cookie: bytes, onion_key: bytes, link_specifiers: list[LinkSpecifier],
                               head_len: int, congestion_control: bool = False) -> bytes:
    """The plaintext of INTRODUCE1's ENCRYPTED part (rend-spec-v3 3.3): RENDEZVOUS_COOKIE, N_EXTENSIONS and
    the extensions (the congestion-control request when `congestion_control`, else none), ONION_KEY_TYPE 01,
    ONION_KEY_LEN, ONION_KEY (the rendezvous point's ntor key), NSPEC and the rendezvous point's link
    specifiers, then PAD; `head_len` is the length of the message before the ENCRYPTED part."""
    if len(cookie) != REND_COOKIE_LEN:
        raise ValueError(f"a rendezvous cookie is {REND_COOKIE_LEN} bytes, not {len(cookie)}")
    if len(onion_key) != 32:
        raise ValueError(f"an ntor onion key is 32 bytes, not {len(onion_key)}")
    extensions = _extensions(INTRODUCE1_EXT_CC_REQUEST) if congestion_control else _extensions()
    plaintext = (bytes(cookie) + extensions + bytes((ONION_KEY_TYPE_NTOR,)) + _U16.pack(len(onion_key))
                 + bytes(onion_key) + encode_link_specifiers(link_specifiers))
    plaintext += bytes(introduce_padding(head_len, len(plaintext)))
    if head_len + _HS_NTOR_OVERHEAD + len(plaintext) > RELAY_PAYLOAD_LEN:
        raise ValueError("INTRODUCE1 does not fit in a relay message")
    return plaintext


def decode_introduce_ack_body(body: bytes) -> IntroduceAck:
    """rend-spec-v3 3.2.2: STATUS (2 bytes) then N_EXTENSIONS and the extensions (ignored)."""
    if len(body) < _U16.size + 1:
        raise CellParseError(f"INTRODUCE_ACK of {len(body)} bytes is too short")
    (status,) = _U16.unpack_from(body)
    offset, count = _U16.size + 1, body[_U16.size]
    for _ in range(count):
        if offset + 2 > len(body) or offset + 2 + body[offset + 1] > len(body):
            raise CellParseError("INTRODUCE_ACK extension truncated")
        offset += 2 + body[offset + 1]
    return IntroduceAck(status)


def decode_rendezvous2_body(body: bytes) -> bytes:
    """rend-spec-v3 4.2: RENDEZVOUS2 is HANDSHAKE_INFO (SERVER_PK | AUTH); what follows it is padding."""
    if len(body) < HANDSHAKE_INFO_LEN:
        raise CellParseError(f"RENDEZVOUS2 of {len(body)} bytes is shorter than its {HANDSHAKE_INFO_LEN}-byte "
                             f"HANDSHAKE_INFO")
    return bytes(body[:HANDSHAKE_INFO_LEN])
