"""Bodies of link-level cells: the payloads of VERSIONS, NETINFO, CERTS, AUTH_CHALLENGE,
PADDING_NEGOTIATE, CREATE2/CREATED2, CREATE_FAST/CREATED_FAST and DESTROY.

Sans-IO: every function maps bytes to values or back. Encoders return the body without the
zero padding of fixed-length cells (:func:`oppy.cell.framing.encode_cell` adds it). Decoders
accept the padded 509-byte payload, ignore trailing bytes where the spec says so, and raise
:class:`CellParseError` on anything malformed.

Spec: torspec `spec/tor-spec/negotiating-channels.md` (tor-spec.txt §4),
`create-created-cells.md` (§5.1), "Tearing down circuits" (§5.4), `flow-control.md` (§7.2).
"""

from __future__ import annotations

import ipaddress
import struct
from enum import IntEnum
from typing import NamedTuple

from oppy.cell.commands import CELL_PAYLOAD_LEN, DestroyReason
from oppy.cell.errors import CellParseError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class HandshakeType(IntEnum):
    """tor-spec "CREATE and CREATED cells" (§5.1): the HTYPE of CREATE2 and EXTEND2."""

    TAP = 0  # §5.1.3; 0.4.9 relays answer DESTROY(PROTOCOL)
    NTOR = 2  # §5.1.4 "The ntor handshake"
    NTOR_V3 = 3  # proposal 332 / tor-spec "The ntor-v3 handshake"


# ---------------------------------------------------------------------------------------------
# VERSIONS (tor-spec §4.1 "Negotiating versions with VERSIONS cells")

# Each version is a big-endian two-byte integer.
VERSION_LEN = 2


def encode_versions_body(versions: list[int] | tuple[int, ...]) -> bytes:
    """The VERSIONS payload: each version as a 2-byte big-endian integer, no padding."""
    try:
        return b"".join(_U16.pack(version) for version in versions)
    except struct.error:
        raise ValueError(f"link versions must fit in 2 bytes: {list(versions)!r}") from None


def decode_versions_body(payload: bytes) -> list[int]:
    """The versions a peer offers; an odd length is malformed and closes the link (§4.1)."""
    if len(payload) % VERSION_LEN:
        raise CellParseError(f"VERSIONS payload has odd length {len(payload)}")
    return [version for (version,) in _U16.iter_unpack(payload)]


# ---------------------------------------------------------------------------------------------
# NETINFO (tor-spec §4.5 "NETINFO cells")


class NetinfoAddressType(IntEnum):
    """tor-spec §4.5: ATYPE of a NETINFO address."""

    IPV4 = 0x04
    IPV6 = 0x06


# §4.5: ALEN MUST be 4 for IPv4 and 16 for IPv6.
_NETINFO_ADDRESS_LENGTHS = {NetinfoAddressType.IPV4: 4, NetinfoAddressType.IPV6: 16}
# TIME(4) ATYPE(1) ALEN(1) before OTHERADDR's value.
_NETINFO_TIME_LEN = 4


class Netinfo(NamedTuple):
    """A decoded NETINFO body. Addresses of unknown type or wrong length are left out."""

    timestamp: int  # seconds since the epoch; clients send 0
    other_address: IPAddress | None  # the address the sender sees us at
    my_addresses: tuple[IPAddress, ...]  # the sender's own addresses


def _encode_netinfo_address(address: IPAddress | str) -> bytes:
    address = ipaddress.ip_address(address)
    packed = address.packed
    address_type = NetinfoAddressType.IPV4 if address.version == 4 else NetinfoAddressType.IPV6
    return bytes((address_type, len(packed))) + packed


def encode_netinfo_body(
    other_address: IPAddress | str,
    timestamp: int = 0,
    my_addresses: tuple[IPAddress | str, ...] | list[IPAddress | str] = (),
) -> bytes:
    """A NETINFO body. A client sends TIME=0, the relay's IP as OTHERADDR and NMYADDR=0.

    0.4.9 relays close the link unless OTHERADDR is a well-formed IPv4 or IPv6 address.
    """
    try:
        parts = [_U32.pack(timestamp), _encode_netinfo_address(other_address)]
        parts.append(_U8.pack(len(my_addresses)))
    except struct.error:
        raise ValueError("NETINFO timestamp or address count out of range") from None
    parts.extend(_encode_netinfo_address(address) for address in my_addresses)
    body = b"".join(parts)
    if len(body) > CELL_PAYLOAD_LEN:
        raise ValueError(f"NETINFO body of {len(body)} bytes does not fit in a cell")
    return body


def _decode_netinfo_address(payload: bytes, offset: int) -> tuple[IPAddress | None, int]:
    """One `ATYPE ALEN AVAL` entry at `offset`: (address or None if unusable, next offset)."""
    if offset + 2 > len(payload):
        raise CellParseError("NETINFO address truncated before its type and length")
    address_type = payload[offset]
    address_len = payload[offset + 1]
    value_start = offset + 2
    value_end = value_start + address_len
    if value_end > len(payload):
        raise CellParseError("NETINFO address value truncated")
    if _NETINFO_ADDRESS_LENGTHS.get(address_type) != address_len:
        # §4.5: unknown types, and known types with the wrong length, are ignored.
        return None, value_end
    return ipaddress.ip_address(bytes(payload[value_start:value_end])), value_end


def decode_netinfo_body(payload: bytes) -> Netinfo:
    """Parse a NETINFO payload; trailing bytes (padding) are ignored as §4.5 requires."""
    if len(payload) < _NETINFO_TIME_LEN:
        raise CellParseError("NETINFO truncated before its timestamp")
    (timestamp,) = _U32.unpack_from(payload, 0)
    other_address, offset = _decode_netinfo_address(payload, _NETINFO_TIME_LEN)
    if offset >= len(payload):
        raise CellParseError("NETINFO truncated before NMYADDR")
    count = payload[offset]
    offset += 1
    my_addresses = []
    for _ in range(count):
        address, offset = _decode_netinfo_address(payload, offset)
        if address is not None:
            my_addresses.append(address)
    return Netinfo(timestamp, other_address, tuple(my_addresses))


# ---------------------------------------------------------------------------------------------
# CERTS (tor-spec §4.2 "CERTS cells"): only the framing; checking certificates is crypto's job.


class CertsEntry(NamedTuple):
    """One certificate of a CERTS cell, still encoded."""

    cert_type: int
    body: bytes


def encode_certs_body(certs: list[CertsEntry] | tuple[CertsEntry, ...]) -> bytes:
    """A CERTS body: N(1), then N times `CertType(1) CLEN(2) Certificate`."""
    try:
        parts = [_U8.pack(len(certs))]
        for cert_type, body in certs:
            parts.append(struct.pack(">BH", cert_type, len(body)))
            parts.append(bytes(body))
    except struct.error:
        raise ValueError("CERTS entry count, type or length out of range") from None
    return b"".join(parts)


def decode_certs_body(payload: bytes) -> list[CertsEntry]:
    """Split a CERTS payload into its certificates; extra bytes at the end are ignored (§4.2)."""
    if not payload:
        raise CellParseError("CERTS payload is empty")
    count = payload[0]
    offset = 1
    certs = []
    for index in range(count):
        if offset + 3 > len(payload):
            raise CellParseError(f"CERTS cell truncated in the header of certificate {index + 1}/{count}")
        cert_type = payload[offset]
        (cert_len,) = _U16.unpack_from(payload, offset + 1)
        offset += 3
        if offset + cert_len > len(payload):
            raise CellParseError(f"CERTS cell truncated inside certificate {index + 1}/{count} "
                                 f"(type {cert_type}, {cert_len} bytes announced)")
        certs.append(CertsEntry(cert_type, bytes(payload[offset : offset + cert_len])))
        offset += cert_len
    return certs


# ---------------------------------------------------------------------------------------------
# AUTH_CHALLENGE (tor-spec §4.3 "AUTH_CHALLENGE cells")

AUTH_CHALLENGE_LEN = 32  # Challenge [32 octets]


class AuthChallenge(NamedTuple):
    """A decoded AUTH_CHALLENGE. A client that does not authenticate ignores it."""

    challenge: bytes
    methods: tuple[int, ...]


def encode_auth_challenge_body(challenge: bytes, methods: tuple[int, ...] | list[int]) -> bytes:
    """An AUTH_CHALLENGE body (relays send it; here for tests and symmetry)."""
    if len(challenge) != AUTH_CHALLENGE_LEN:
        raise ValueError(f"AUTH_CHALLENGE challenge must be {AUTH_CHALLENGE_LEN} bytes")
    try:
        return bytes(challenge) + _U16.pack(len(methods)) + b"".join(_U16.pack(m) for m in methods)
    except struct.error:
        raise ValueError("AUTH_CHALLENGE method out of range") from None


def decode_auth_challenge_body(payload: bytes) -> AuthChallenge:
    """Parse an AUTH_CHALLENGE; unexpected bytes at the end are ignored (§4.3)."""
    methods_start = AUTH_CHALLENGE_LEN + 2
    if len(payload) < methods_start:
        raise CellParseError("AUTH_CHALLENGE truncated before N_Methods")
    (count,) = _U16.unpack_from(payload, AUTH_CHALLENGE_LEN)
    methods_end = methods_start + 2 * count
    if methods_end > len(payload):
        raise CellParseError(f"AUTH_CHALLENGE lists {count} methods but is truncated")
    methods = tuple(m for (m,) in _U16.iter_unpack(payload[methods_start:methods_end]))
    return AuthChallenge(bytes(payload[:AUTH_CHALLENGE_LEN]), methods)


# ---------------------------------------------------------------------------------------------
# PADDING_NEGOTIATE (tor-spec §7.2 "Link padding"; padding-spec)

PADDING_NEGOTIATE_VERSION = 0  # §7.2: only version 0 is defined


class PaddingNegotiateCommand(IntEnum):
    """tor-spec §7.2: the Command field of PADDING_NEGOTIATE."""

    STOP = 1
    START = 2


class PaddingNegotiate(NamedTuple):
    version: int
    command: int
    ito_low_ms: int
    ito_high_ms: int


_PADDING_NEGOTIATE = struct.Struct(">BBHH")
_PADDING_NEGOTIATE_COMMANDS = frozenset(PaddingNegotiateCommand)


def encode_padding_negotiate_body(
    command: PaddingNegotiateCommand | int, ito_low_ms: int = 0, ito_high_ms: int = 0
) -> bytes:
    """`Version=0 Command ito_low_ms(2) ito_high_ms(2)`; a client sends STOP to refuse padding, and START
    with zero timeouts to take the consensus's again (padding-spec §2.5)."""
    if command not in _PADDING_NEGOTIATE_COMMANDS:
        raise ValueError(f"PADDING_NEGOTIATE command must be STOP (1) or START (2), not {command!r}")
    try:
        return _PADDING_NEGOTIATE.pack(PADDING_NEGOTIATE_VERSION, command, ito_low_ms, ito_high_ms)
    except struct.error:
        raise ValueError("PADDING_NEGOTIATE field out of range") from None


def decode_padding_negotiate_body(payload: bytes) -> PaddingNegotiate:
    """Parse a PADDING_NEGOTIATE (only relays receive it; a client closes the link on one). Like tor's
    parser (trunnel channelpadding_negotiate), another version or command is malformed."""
    if len(payload) < _PADDING_NEGOTIATE.size:
        raise CellParseError("PADDING_NEGOTIATE truncated")
    negotiate = PaddingNegotiate(*_PADDING_NEGOTIATE.unpack_from(payload, 0))
    if negotiate.version != PADDING_NEGOTIATE_VERSION:
        raise CellParseError(f"PADDING_NEGOTIATE version {negotiate.version}; only 0 is defined")
    if negotiate.command not in _PADDING_NEGOTIATE_COMMANDS:
        raise CellParseError(f"PADDING_NEGOTIATE command {negotiate.command} is neither STOP nor START")
    return negotiate


# ---------------------------------------------------------------------------------------------
# CREATE2 / CREATED2 (tor-spec §5.1 "CREATE and CREATED cells")

_CREATE2_HEADER = struct.Struct(">HH")  # HTYPE(2) HLEN(2)
# The most handshake data that fits in a fixed cell after the header.
CREATE2_MAX_HANDSHAKE_LEN = CELL_PAYLOAD_LEN - _CREATE2_HEADER.size  # 505
CREATED2_MAX_HANDSHAKE_LEN = CELL_PAYLOAD_LEN - _U16.size  # 507


class Create2(NamedTuple):
    handshake_type: int
    handshake_data: bytes


def encode_create2_body(handshake_type: HandshakeType | int, handshake_data: bytes) -> bytes:
    """`HTYPE(2) HLEN(2) HDATA`; HDATA may be at most 505 bytes."""
    if len(handshake_data) > CREATE2_MAX_HANDSHAKE_LEN:
        raise ValueError(
            f"CREATE2 handshake data is {len(handshake_data)} bytes, "
            f"at most {CREATE2_MAX_HANDSHAKE_LEN} fit"
        )
    try:
        header = _CREATE2_HEADER.pack(handshake_type, len(handshake_data))
    except struct.error:
        raise ValueError(f"CREATE2 handshake type out of range: {handshake_type!r}") from None
    return header + bytes(handshake_data)


def decode_create2_body(payload: bytes) -> Create2:
    """Parse a CREATE2 payload (a relay's job; here for tests and symmetry)."""
    if len(payload) < _CREATE2_HEADER.size:
        raise CellParseError("CREATE2 truncated before HLEN")
    handshake_type, length = _CREATE2_HEADER.unpack_from(payload, 0)
    end = _CREATE2_HEADER.size + length
    if end > len(payload):
        raise CellParseError(f"CREATE2 HLEN {length} exceeds the payload")
    return Create2(handshake_type, bytes(payload[_CREATE2_HEADER.size : end]))


def encode_created2_body(handshake_data: bytes) -> bytes:
    """`HLEN(2) HDATA` (a relay's reply; here for tests and symmetry)."""
    if len(handshake_data) > CREATED2_MAX_HANDSHAKE_LEN:
        raise ValueError(f"CREATED2 handshake data is {len(handshake_data)} bytes, too long")
    return _U16.pack(len(handshake_data)) + bytes(handshake_data)


def decode_created2_body(payload: bytes) -> bytes:
    """The server handshake data (HDATA) of a CREATED2 payload."""
    if len(payload) < _U16.size:
        raise CellParseError("CREATED2 truncated before HLEN")
    (length,) = _U16.unpack_from(payload, 0)
    end = _U16.size + length
    if end > len(payload):
        raise CellParseError(f"CREATED2 HLEN {length} exceeds the payload")
    return bytes(payload[_U16.size : end])


# ---------------------------------------------------------------------------------------------
# CREATE_FAST / CREATED_FAST (tor-spec §5.1.5)

HASH_LEN = 20  # tor-spec §0.2: the length of SHA-1 output


class CreatedFast(NamedTuple):
    key_material: bytes  # Y
    derivative_key_data: bytes  # KH, checked against KDF-TOR output


def encode_create_fast_body(key_material: bytes) -> bytes:
    """`X(20)`: the client's random key material."""
    if len(key_material) != HASH_LEN:
        raise ValueError(f"CREATE_FAST key material must be {HASH_LEN} bytes")
    return bytes(key_material)


def decode_create_fast_body(payload: bytes) -> bytes:
    """The X of a CREATE_FAST payload (for tests and symmetry)."""
    if len(payload) < HASH_LEN:
        raise CellParseError("CREATE_FAST truncated")
    return bytes(payload[:HASH_LEN])


def encode_created_fast_body(key_material: bytes, derivative_key_data: bytes) -> bytes:
    """`Y(20) KH(20)` (a relay's reply; here for tests and symmetry)."""
    if len(key_material) != HASH_LEN or len(derivative_key_data) != HASH_LEN:
        raise ValueError(f"CREATED_FAST fields must be {HASH_LEN} bytes each")
    return bytes(key_material) + bytes(derivative_key_data)


def decode_created_fast_body(payload: bytes) -> CreatedFast:
    """`Y(20) KH(20)` from a CREATED_FAST payload."""
    if len(payload) < 2 * HASH_LEN:
        raise CellParseError("CREATED_FAST truncated")
    return CreatedFast(bytes(payload[:HASH_LEN]), bytes(payload[HASH_LEN : 2 * HASH_LEN]))


# ---------------------------------------------------------------------------------------------
# DESTROY (tor-spec §5.4 "Tearing down circuits")


def enum_or_int(enum_type: type[IntEnum], value: int) -> IntEnum | int:
    """The enum member for a code the spec lists; the plain int for any other (kept, not refused)."""
    try:
        return enum_type(value)
    except ValueError:
        return value


def encode_destroy_body(reason: DestroyReason | int = DestroyReason.NONE) -> bytes:
    """`reason(1)`. A client always sends NONE for its own DESTROY cells (§5.4)."""
    try:
        return _U8.pack(reason)
    except struct.error:
        raise ValueError(f"DESTROY reason out of range: {reason!r}") from None


def decode_destroy_body(payload: bytes) -> DestroyReason | int:
    """The reason byte of a DESTROY; codes the spec does not list come back as plain ints."""
    if not payload:
        raise CellParseError("DESTROY payload is empty")
    return enum_or_int(DestroyReason, payload[0])
