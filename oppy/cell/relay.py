"""Relay cells (the v0 "tor1" format) and the bodies of the relay messages a client uses.

A relay cell is the 509-byte payload of a RELAY or RELAY_EARLY cell (tor-spec "Relay cells",
tor-spec.txt §6.1):

    Command(1) Recognized(2)=0 StreamID(2) Digest(4) Length(2) Data(Length) Padding

Padding is 4 zero bytes followed by random bytes (proposal 289), so that an exit cannot
predict the SENDME tag of a short cell. The relay crypto layer fills in Digest (at
RELAY_DIGEST_OFFSET) and encrypts the bytearray in place.

Message bodies follow `opening-streams.md`, `closing-streams.md`, `remote-hostname-lookup.md`,
`flow-control.md`, `create-created-cells.md` (EXTEND2) and proposal 324 (XON/XOFF).
Decoders raise only :class:`CellParseError`; encoders raise ValueError for values that
cannot be encoded.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from enum import IntEnum, IntFlag
from typing import NamedTuple

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from oppy.cell.commands import (
    CELL_PAYLOAD_LEN,
    RELAY_HEADER_LEN,
    RELAY_PAYLOAD_LEN,
    DestroyReason,
    EndReason,
)
from oppy.cell.errors import CellParseError
from oppy.cell.link import (
    HASH_LEN,
    HandshakeType,
    decode_created2_body,
    encode_created2_body,
    enum_or_int,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# ---------------------------------------------------------------------------------------------
# The relay header (tor-spec §6.1 "Relay cells"): where each field sits in the 509 bytes.

RELAY_COMMAND_OFFSET = 0
RELAY_RECOGNIZED_OFFSET = 1
RELAY_RECOGNIZED_LEN = 2
RELAY_STREAM_ID_OFFSET = 3
RELAY_DIGEST_OFFSET = 5
RELAY_DIGEST_LEN = 4
RELAY_LENGTH_OFFSET = 9
RELAY_DATA_OFFSET = RELAY_HEADER_LEN  # 11
# tor-spec §6.1: padding starts with this many zero bytes, then random bytes.
RELAY_PADDING_ZERO_LEN = 4

_RELAY_HEADER = struct.Struct(">BHHIH")  # command recognized stream_id digest length
assert _RELAY_HEADER.size == RELAY_HEADER_LEN
_PADDING_ZEROS = bytes(RELAY_PADDING_ZERO_LEN)

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class _PaddingRandomPool:
    """Unpredictable padding bytes, made in bulk.

    os.urandom per cell costs about 1.7 us for 494 bytes; an AES-256-CTR keystream under a
    fresh os.urandom key per 256 KiB costs about 0.1 us per cell. Each key is used once. Not
    thread-safe: relay cells are built on the reactor thread.
    """

    POOL_LEN = 256 * 1024
    KEY_LEN = 32  # AES-256
    _ZEROS = bytes(POOL_LEN)
    _IV = bytes(16)  # the key is fresh for every refill, so a fixed counter start is safe

    __slots__ = ("_view", "_offset")

    def __init__(self) -> None:
        self._view = memoryview(b"")
        self._offset = 0

    def take(self, length: int) -> memoryview:
        if self._offset + length > len(self._view):
            key = os.urandom(self.KEY_LEN)
            encryptor = Cipher(algorithms.AES(key), modes.CTR(self._IV)).encryptor()
            self._view = memoryview(encryptor.update(self._ZEROS))
            self._offset = 0
        start = self._offset
        self._offset = start + length
        return self._view[start : start + length]


_padding_pool = _PaddingRandomPool()
# A forked child must not reuse the parent's unread padding bytes.
os.register_at_fork(after_in_child=_padding_pool.__init__)
# NamedTuple's generated __new__ is a Python function; building through tuple.__new__ skips
# it on the per-cell path (about 100 ns per cell).
_new_tuple = tuple.__new__


class RelayCell(NamedTuple):
    """A decoded relay cell; `command` stays a plain int so unknown commands survive."""

    command: int
    stream_id: int
    data: bytes


def encode_relay_payload(command: int, stream_id: int, data: bytes) -> bytearray:
    """The 509-byte plaintext of a relay cell, with Recognized=0 and Digest=0.

    Returns a bytearray so the crypto layer can write the digest and encrypt in place.
    """
    length = len(data)
    if length > RELAY_PAYLOAD_LEN:
        raise ValueError(f"relay data is {length} bytes, at most {RELAY_PAYLOAD_LEN} fit")
    try:
        cell = bytearray(_RELAY_HEADER.pack(command, 0, stream_id, 0, length))
    except struct.error:
        raise ValueError(
            f"relay command {command!r} or stream id {stream_id!r} out of range"
        ) from None
    cell += data
    padding_len = RELAY_PAYLOAD_LEN - length
    if padding_len > RELAY_PADDING_ZERO_LEN:
        cell += _PADDING_ZEROS
        cell += _padding_pool.take(padding_len - RELAY_PADDING_ZERO_LEN)
    elif padding_len:
        cell += _PADDING_ZEROS[:padding_len]
    return cell


def decode_relay_payload(payload: bytes | bytearray | memoryview) -> RelayCell:
    """Command, stream id and data of a recognized (decrypted, digest-checked) relay cell."""
    if len(payload) != CELL_PAYLOAD_LEN:
        raise CellParseError(f"relay payload is {len(payload)} bytes, not {CELL_PAYLOAD_LEN}")
    command, _recognized, stream_id, _digest, length = _RELAY_HEADER.unpack_from(payload, 0)
    if length > RELAY_PAYLOAD_LEN:
        raise CellParseError(f"relay Length {length} exceeds {RELAY_PAYLOAD_LEN}")
    data = bytes(payload[RELAY_DATA_OFFSET : RELAY_DATA_OFFSET + length])
    return _new_tuple(RelayCell, (command, stream_id, data))


def _ip(value: IPAddress | str) -> IPAddress:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    return ipaddress.ip_address(value)


def _pack_u32(value: int, what: str) -> bytes:
    try:
        return _U32.pack(value)
    except struct.error:
        raise ValueError(f"{what} out of range: {value!r}") from None


# ---------------------------------------------------------------------------------------------
# BEGIN (tor-spec §6.2 "Opening streams and transferring data")


class BeginFlags(IntFlag):
    """tor-spec §6.2: FLAGS of RELAY_BEGIN; "bit 1" is the least significant bit."""

    IPV6_OK = 1 << 0
    IPV4_NOT_OK = 1 << 1
    IPV6_PREFERRED = 1 << 2


class Begin(NamedTuple):
    host: str  # hostname or address, IPv6 without brackets
    port: int
    flags: int


_MIN_PORT = 1
_MAX_PORT = 0xFFFF
_NUL = b"\x00"


def _check_port(port: int) -> None:
    if not _MIN_PORT <= port <= _MAX_PORT:
        raise ValueError(f"port must be between 1 and 65535, not {port!r}")


def encode_begin_body(host: str, port: int, flags: BeginFlags | int = 0) -> bytes:
    """`ADDRESS:PORT\\0` then FLAGS(4); FLAGS is left out when 0, as C tor does.

    The host is sent lower-case (avoids fingerprinting); an IPv6 address goes in brackets.
    """
    _check_port(port)
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.IPv6Address(bare)
    except ValueError:
        address = None
    if address is not None:
        text = f"[{address.compressed}]"
    else:
        text = host.lower()
        if not text or ":" in text or "[" in text or "]" in text or "\x00" in text:
            raise ValueError(f"not a valid hostname or address for BEGIN: {host!r}")
    try:
        addrport = f"{text}:{port}".encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"BEGIN host must be ASCII (IDNA-encode it first): {host!r}") from None
    body = addrport + _NUL
    if flags:
        body += _pack_u32(flags, "BEGIN flags")
    if len(body) > RELAY_PAYLOAD_LEN:
        raise ValueError(f"BEGIN body of {len(body)} bytes does not fit in a relay cell")
    return body


def encode_onion_begin_body(port: int) -> bytes:
    """BEGIN on a rendezvous circuit: the address is empty, ``:PORT\\0`` (rend-spec-v3 4.2, "the client
    sends a BEGIN cell with an empty address"; tor connection_ap_handshake_send_begin)."""
    _check_port(port)
    return f":{port}".encode("ascii") + _NUL


def decode_begin_body(body: bytes) -> Begin:
    """Parse a BEGIN body (an exit's job; here for tests and symmetry)."""
    body = bytes(body)
    nul = body.find(_NUL)
    if nul < 0:
        raise CellParseError("BEGIN ADDRPORT is not NUL-terminated")
    try:
        addrport = body[:nul].decode("ascii")
    except UnicodeDecodeError:
        raise CellParseError("BEGIN ADDRPORT is not ASCII") from None
    host, colon, port_text = addrport.rpartition(":")
    if not colon or not host:
        raise CellParseError(f"BEGIN ADDRPORT has no host:port form: {addrport!r}")
    port_ok = port_text.isdigit() and len(port_text) <= 5 and int(port_text) >= _MIN_PORT
    if not port_ok or int(port_text) > _MAX_PORT:
        raise CellParseError(f"BEGIN port is not in 1-65535: {port_text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    flags_start = nul + 1
    flags = _U32.unpack_from(body, flags_start)[0] if len(body) - flags_start >= 4 else 0
    return Begin(host, int(port_text), flags)


# ---------------------------------------------------------------------------------------------
# CONNECTED (tor-spec §6.2)

# tor-spec §6.2: the IPv6 form starts with four zero bytes and address type 6.
CONNECTED_IPV6_ADDRESS_TYPE = 6
_IPV4_LEN = 4
_IPV6_LEN = 16
_TTL_LEN = 4
_CONNECTED_IPV6_LEN = _IPV4_LEN + 1 + _IPV6_LEN + _TTL_LEN  # 25


class Connected(NamedTuple):
    """A decoded CONNECTED. Both fields are None for the empty form (BEGIN_DIR, onion services)."""

    address: IPAddress | None
    ttl: int | None  # seconds, as sent (C tor treats values above 2**31-1 as absent)


def encode_connected_body(address: IPAddress | str | None = None, ttl: int = 0) -> bytes:
    """An exit's CONNECTED body (for tests and symmetry): empty, IPv4+TTL or the IPv6 form."""
    if address is None:
        return b""
    address = _ip(address)
    if address.version == 4:
        return address.packed + _pack_u32(ttl, "TTL")
    ipv6_prefix = bytes(_IPV4_LEN) + bytes((CONNECTED_IPV6_ADDRESS_TYPE,))
    return ipv6_prefix + address.packed + _pack_u32(ttl, "TTL")


def decode_connected_body(body: bytes) -> Connected:
    """Parse CONNECTED the way C tor's connected_cell_parse does.

    Streams opened with BEGIN_DIR must ignore the body (§6.2.1); do not call this for them.
    """
    length = len(body)
    if length == 0:
        return Connected(None, None)
    if length < _IPV4_LEN:
        raise CellParseError(f"CONNECTED body of {length} bytes is too short")
    (ipv4,) = _U32.unpack_from(body, 0)
    if ipv4:
        ttl = _U32.unpack_from(body, _IPV4_LEN)[0] if length >= _IPV4_LEN + _TTL_LEN else None
        return Connected(ipaddress.IPv4Address(ipv4), ttl)
    if length < _CONNECTED_IPV6_LEN:
        raise CellParseError(f"CONNECTED IPv6 form needs {_CONNECTED_IPV6_LEN} bytes, got {length}")
    if body[_IPV4_LEN] != CONNECTED_IPV6_ADDRESS_TYPE:
        raise CellParseError(f"CONNECTED has an unknown address type {body[_IPV4_LEN]}")
    address_start = _IPV4_LEN + 1
    address = ipaddress.IPv6Address(bytes(body[address_start : address_start + _IPV6_LEN]))
    (ttl,) = _U32.unpack_from(body, address_start + _IPV6_LEN)
    return Connected(address, ttl)


# ---------------------------------------------------------------------------------------------
# END (tor-spec §6.3 "Closing streams")


class End(NamedTuple):
    """A decoded END. `address`/`ttl` are set only for a well-formed EXITPOLICY body."""

    reason: EndReason | int  # unknown codes stay plain ints
    address: IPAddress | None = None
    ttl: int | None = None  # None when absent; §6.3 says treat as 0xFFFFFFFF


def encode_end_body(
    reason: EndReason | int = EndReason.MISC,
    address: IPAddress | str | None = None,
    ttl: int | None = None,
) -> bytes:
    """`reason(1)`, plus `address(4|16) TTL(4)` for EXITPOLICY. Clients send MISC (or DONE)."""
    try:
        body = _U8.pack(reason)
    except struct.error:
        raise ValueError(f"END reason out of range: {reason!r}") from None
    if address is not None:
        if reason != EndReason.EXITPOLICY:
            raise ValueError("only an EXITPOLICY END carries an address")
        body += _ip(address).packed
        if ttl is not None:
            body += _pack_u32(ttl, "TTL")
    elif ttl is not None:
        raise ValueError("an END TTL needs an address")
    return body


# C tor (connection_ap_process_end_not_open) reads the address only at these exact lengths.
_EXITPOLICY_FORMS = {
    _IPV4_LEN: False,
    _IPV4_LEN + _TTL_LEN: True,
    _IPV6_LEN: False,
    _IPV6_LEN + _TTL_LEN: True,
}


def decode_end_body(body: bytes) -> End:
    """Parse END. An empty body means MISC (§6.3); a malformed EXITPOLICY address is dropped."""
    if not body:
        return End(EndReason.MISC)
    reason = enum_or_int(EndReason, body[0])
    if reason != EndReason.EXITPOLICY:
        return End(reason)
    rest = bytes(body[1:])
    has_ttl = _EXITPOLICY_FORMS.get(len(rest))
    if has_ttl is None:
        return End(reason)
    address_len = len(rest) - _TTL_LEN if has_ttl else len(rest)
    address = ipaddress.ip_address(rest[:address_len])
    ttl = _U32.unpack_from(rest, address_len)[0] if has_ttl else None
    return End(reason, address, ttl)


# ---------------------------------------------------------------------------------------------
# RESOLVE / RESOLVED (tor-spec §6.4 "Remote hostname lookup")


def encode_resolve_body(hostname: str) -> bytes:
    """`hostname\\0` for a forward lookup."""
    if not hostname or "\x00" in hostname:
        raise ValueError(f"not a valid hostname to resolve: {hostname!r}")
    try:
        body = hostname.encode("ascii") + _NUL
    except UnicodeEncodeError:
        raise ValueError(
            f"RESOLVE hostname must be ASCII (IDNA-encode it first): {hostname!r}"
        ) from None
    if len(body) > RELAY_PAYLOAD_LEN:
        raise ValueError("RESOLVE hostname does not fit in a relay cell")
    return body


def encode_reverse_resolve_body(address: IPAddress | str) -> bytes:
    """A reverse (PTR) lookup: `d.c.b.a.in-addr.arpa\\0`, or the nibble `.ip6.arpa` form."""
    return encode_resolve_body(_ip(address).reverse_pointer)


def decode_resolve_body(body: bytes) -> str:
    """The name in a RESOLVE body (an exit's job; here for tests and symmetry)."""
    body = bytes(body)
    nul = body.find(_NUL)
    if nul <= 0:
        raise CellParseError("RESOLVE hostname is empty or not NUL-terminated")
    try:
        return body[:nul].decode("ascii")
    except UnicodeDecodeError:
        raise CellParseError("RESOLVE hostname is not ASCII") from None


class ResolvedType(IntEnum):
    """tor-spec §6.4: the Type of a RESOLVED answer."""

    HOSTNAME = 0x00
    IPV4 = 0x04
    IPV6 = 0x06
    ERROR_TRANSIENT = 0xF0
    ERROR_NONTRANSIENT = 0xF1


class ResolvedAnswer(NamedTuple):
    """One RESOLVED answer.

    `value` is an IPv4Address/IPv6Address, a str for HOSTNAME, and the raw bytes for the
    error types (whose content must be ignored) and for types the spec does not list.
    """

    answer_type: ResolvedType | int
    value: IPAddress | str | bytes
    ttl: int


_RESOLVED_ADDRESS_LENGTHS = {ResolvedType.IPV4: _IPV4_LEN, ResolvedType.IPV6: _IPV6_LEN}


def encode_resolved_body(answers: list[ResolvedAnswer] | tuple[ResolvedAnswer, ...]) -> bytes:
    """An exit's RESOLVED body (for tests and symmetry): `type(1) len(1) value ttl(4)` each."""
    parts = []
    for answer_type, value, ttl in answers:
        if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            raw = value.packed
        elif isinstance(value, str):
            raw = value.encode("utf-8")
        else:
            raw = bytes(value)
        try:
            parts.append(bytes((answer_type, len(raw))))
        except ValueError:
            raise ValueError(
                f"RESOLVED answer type or value length out of range: {answer_type!r}"
            ) from None
        parts.append(raw)
        parts.append(_pack_u32(ttl, "TTL"))
    body = b"".join(parts)
    if len(body) > RELAY_PAYLOAD_LEN:
        raise ValueError("RESOLVED answers do not fit in a relay cell")
    return body


def decode_resolved_body(body: bytes) -> list[ResolvedAnswer]:
    """Every answer of a RESOLVED body, in order (C tor's resolved_cell_parse rules).

    An IPv4 answer must be 4 bytes, IPv6 16 bytes and a hostname non-empty.
    """
    body = bytes(body)
    end = len(body)
    offset = 0
    answers = []
    while offset < end:
        if end - offset < 2:
            raise CellParseError("RESOLVED answer truncated before its type and length")
        answer_type = body[offset]
        value_len = body[offset + 1]
        value_start = offset + 2
        value_end = value_start + value_len
        if value_end + _TTL_LEN > end:
            raise CellParseError("RESOLVED answer truncated")
        raw = body[value_start:value_end]
        (ttl,) = _U32.unpack_from(body, value_end)
        expected_len = _RESOLVED_ADDRESS_LENGTHS.get(answer_type)
        if expected_len is not None:
            if value_len != expected_len:
                raise CellParseError(
                    f"RESOLVED address of type {answer_type} has length {value_len}"
                )
            value: IPAddress | str | bytes = ipaddress.ip_address(raw)
        elif answer_type == ResolvedType.HOSTNAME:
            if not value_len:
                raise CellParseError("RESOLVED hostname is empty")
            value = raw.decode("utf-8", errors="replace")
        else:
            value = raw
        answers.append(ResolvedAnswer(enum_or_int(ResolvedType, answer_type), value, ttl))
        offset = value_end + _TTL_LEN
    return answers


# ---------------------------------------------------------------------------------------------
# SENDME (tor-spec §7.3.1 "SENDME Cell Format"; proposal 289)


class SendmeVersion(IntEnum):
    """tor-spec §7.3.1: VERSION of a SENDME body."""

    UNAUTHENTICATED = 0
    AUTHENTICATED = 1


SENDME_TAG_LEN = HASH_LEN  # §7.3.1: DIGEST [20 bytes] for tor1 (SHA-1)
_SENDME_HEADER = struct.Struct(">BH")  # VERSION(1) DATA_LEN(2)


class Sendme(NamedTuple):
    """A decoded SENDME: `tag` is the 20-byte digest for v1, None otherwise."""

    version: int
    tag: bytes | None


def encode_sendme_body(tag: bytes | None = None) -> bytes:
    """v1 `01 || 00 14 || tag(20)` when given a tag; the empty v0 body (stream SENDMEs) without."""
    if tag is None:
        return b""
    if len(tag) != SENDME_TAG_LEN:
        raise ValueError(f"SENDME tag must be {SENDME_TAG_LEN} bytes, not {len(tag)}")
    return _SENDME_HEADER.pack(SendmeVersion.AUTHENTICATED, SENDME_TAG_LEN) + bytes(tag)


def decode_sendme_body(body: bytes) -> Sendme:
    """Parse SENDME. Empty means v0; unknown versions come back with tag None (the caller
    closes the circuit, §7.3.1)."""
    if not body:
        return Sendme(SendmeVersion.UNAUTHENTICATED, None)
    version = body[0]
    if version != SendmeVersion.AUTHENTICATED:
        # v0: "the rest of the payload should be ignored"; unknown versions: caller decides.
        return Sendme(enum_or_int(SendmeVersion, version), None)
    if len(body) < _SENDME_HEADER.size:
        raise CellParseError("SENDME v1 truncated before DATA_LEN")
    (data_len,) = _U16.unpack_from(body, 1)
    if data_len < SENDME_TAG_LEN:
        raise CellParseError(f"SENDME v1 DATA_LEN {data_len} is shorter than the tag")
    if _SENDME_HEADER.size + data_len > len(body):
        raise CellParseError(f"SENDME v1 DATA_LEN {data_len} exceeds the body")
    tag_start = _SENDME_HEADER.size
    return Sendme(SendmeVersion.AUTHENTICATED, bytes(body[tag_start : tag_start + SENDME_TAG_LEN]))


# ---------------------------------------------------------------------------------------------
# EXTEND2 / EXTENDED2 (tor-spec §5.1.2 "EXTEND and EXTENDED cells")


class LinkSpecifierType(IntEnum):
    """tor-spec §5.1.2: LSTYPE of an EXTEND2 link specifier."""

    TLS_TCP_IPV4 = 0x00  # addr(4) port(2)
    TLS_TCP_IPV6 = 0x01  # addr(16) port(2)
    LEGACY_ID = 0x02  # SHA-1 of the RSA identity key (20)
    ED25519_ID = 0x03  # Ed25519 identity key (32)


ED25519_ID_LEN = 32
_LINK_SPECIFIER_LENGTHS = {
    LinkSpecifierType.TLS_TCP_IPV4: _IPV4_LEN + 2,
    LinkSpecifierType.TLS_TCP_IPV6: _IPV6_LEN + 2,
    LinkSpecifierType.LEGACY_ID: HASH_LEN,
    LinkSpecifierType.ED25519_ID: ED25519_ID_LEN,
}


class LinkSpecifier(NamedTuple):
    """One link specifier, still encoded: LSTYPE and LSPEC."""

    spec_type: int
    data: bytes


def ipv4_link_specifier(address: ipaddress.IPv4Address | str, port: int) -> LinkSpecifier:
    address = _ip(address)
    if address.version != 4:
        raise ValueError(f"not an IPv4 address: {address}")
    _check_port(port)
    return LinkSpecifier(LinkSpecifierType.TLS_TCP_IPV4, address.packed + _U16.pack(port))


def ipv6_link_specifier(address: ipaddress.IPv6Address | str, port: int) -> LinkSpecifier:
    address = _ip(address)
    if address.version != 6:
        raise ValueError(f"not an IPv6 address: {address}")
    _check_port(port)
    return LinkSpecifier(LinkSpecifierType.TLS_TCP_IPV6, address.packed + _U16.pack(port))


def legacy_id_link_specifier(rsa_identity: bytes) -> LinkSpecifier:
    if len(rsa_identity) != HASH_LEN:
        raise ValueError(f"RSA identity fingerprint must be {HASH_LEN} bytes")
    return LinkSpecifier(LinkSpecifierType.LEGACY_ID, bytes(rsa_identity))


def ed25519_id_link_specifier(ed25519_identity: bytes) -> LinkSpecifier:
    if len(ed25519_identity) != ED25519_ID_LEN:
        raise ValueError(f"Ed25519 identity must be {ED25519_ID_LEN} bytes")
    return LinkSpecifier(LinkSpecifierType.ED25519_ID, bytes(ed25519_identity))


def link_specifiers_for_relay(
    rsa_identity: bytes,
    ipv4: tuple[ipaddress.IPv4Address | str, int] | None = None,
    ipv6: tuple[ipaddress.IPv6Address | str, int] | None = None,
    ed25519_identity: bytes | None = None,
) -> list[LinkSpecifier]:
    """The link specifiers for one relay, in the spec's order 00, 02, 03, 01.

    0.4.9 relays need the legacy ID and at least one address.
    """
    if ipv4 is None and ipv6 is None:
        raise ValueError("EXTEND2 needs an IPv4 or IPv6 link specifier")
    specs = []
    if ipv4 is not None:
        specs.append(ipv4_link_specifier(*ipv4))
    specs.append(legacy_id_link_specifier(rsa_identity))
    if ed25519_identity is not None:
        specs.append(ed25519_id_link_specifier(ed25519_identity))
    if ipv6 is not None:
        specs.append(ipv6_link_specifier(*ipv6))
    return specs


def encode_link_specifiers(link_specifiers: list[LinkSpecifier] | tuple[LinkSpecifier, ...]) -> bytes:
    """`NSPEC {LSTYPE LSLEN LSPEC}*` (tor-spec 5.1.2), as EXTEND2 and INTRODUCE1's encrypted part carry them."""
    parts = [_U8.pack(len(link_specifiers))]
    for spec_type, data in link_specifiers:
        parts.append(bytes((spec_type, len(data))))
        parts.append(bytes(data))
    return b"".join(parts)


class Extend2(NamedTuple):
    link_specifiers: tuple[LinkSpecifier, ...]
    handshake_type: int
    handshake_data: bytes


_EXTEND2_HANDSHAKE_HEADER = struct.Struct(">HH")  # HTYPE(2) HLEN(2)


def encode_extend2_body(
    link_specifiers: list[LinkSpecifier] | tuple[LinkSpecifier, ...],
    handshake_type: HandshakeType | int,
    handshake_data: bytes,
) -> bytes:
    """`NSPEC {LSTYPE LSLEN LSPEC}* HTYPE HLEN HDATA`, specifiers in the order given.

    Build the list with :func:`link_specifiers_for_relay` to get the spec's order.
    """
    try:
        parts = [encode_link_specifiers(link_specifiers),
                 _EXTEND2_HANDSHAKE_HEADER.pack(handshake_type, len(handshake_data))]
    except (struct.error, ValueError):
        raise ValueError("EXTEND2 field out of range") from None
    parts.append(bytes(handshake_data))
    body = b"".join(parts)
    if len(body) > RELAY_PAYLOAD_LEN:
        raise ValueError(f"EXTEND2 body is {len(body)} bytes, at most {RELAY_PAYLOAD_LEN} fit")
    return body


def _decode_link_specifiers(data: bytes, what: str) -> tuple[tuple[LinkSpecifier, ...], int]:
    """``NSPEC {LSTYPE LSLEN LSPEC}*`` from the start of ``data``: (the specifiers, the offset after them).

    Known specifier types must have their spec length; unknown ones are kept as they are.
    """
    end = len(data)
    if not end:
        raise CellParseError(f"{what} link specifier list is empty")
    offset = 1
    specs = []
    for _ in range(data[0]):
        if end - offset < 2:
            raise CellParseError(f"{what} link specifier truncated before its type and length")
        spec_type = data[offset]
        spec_len = data[offset + 1]
        data_end = offset + 2 + spec_len
        if data_end > end:
            raise CellParseError(f"{what} link specifier truncated")
        expected = _LINK_SPECIFIER_LENGTHS.get(spec_type)
        if expected is not None and expected != spec_len:
            raise CellParseError(f"{what} link specifier type {spec_type} has length {spec_len}")
        specs.append(LinkSpecifier(enum_or_int(LinkSpecifierType, spec_type), data[offset + 2 : data_end]))
        offset = data_end
    return tuple(specs), offset


def decode_link_specifier_list(data: bytes) -> tuple[LinkSpecifier, ...]:
    """A whole link specifier block (rend-spec-v3 [BUILDING-BLOCKS]: an onion-service descriptor's
    ``introduction-point`` line, INTRODUCE2's rendezvous point), nothing after it (tor's trunnel
    ``link_specifier_list_parse``)."""
    data = bytes(data)
    specs, offset = _decode_link_specifiers(data, "link specifier list")
    if offset != len(data):
        raise CellParseError(f"{len(data) - offset} bytes after the link specifier list")
    return specs


def decode_extend2_body(body: bytes) -> Extend2:
    """Parse EXTEND2 (a relay's job; here for tests and symmetry).

    Known specifier types must have their spec length; unknown ones are kept as they are.
    """
    body = bytes(body)
    end = len(body)
    if not end:
        raise CellParseError("EXTEND2 body is empty")
    specs, offset = _decode_link_specifiers(body, "EXTEND2")
    if end - offset < _EXTEND2_HANDSHAKE_HEADER.size:
        raise CellParseError("EXTEND2 truncated before HTYPE/HLEN")
    handshake_type, handshake_len = _EXTEND2_HANDSHAKE_HEADER.unpack_from(body, offset)
    data_start = offset + _EXTEND2_HANDSHAKE_HEADER.size
    if data_start + handshake_len > end:
        raise CellParseError(f"EXTEND2 HLEN {handshake_len} exceeds the body")
    return Extend2(tuple(specs), handshake_type, body[data_start : data_start + handshake_len])


def encode_extended2_body(handshake_data: bytes) -> bytes:
    """EXTENDED2 has the CREATED2 body `HLEN(2) HDATA` (for tests and symmetry)."""
    return encode_created2_body(handshake_data)


def decode_extended2_body(body: bytes) -> bytes:
    """The server handshake data of an EXTENDED2 (same layout as CREATED2)."""
    return decode_created2_body(body)


# ---------------------------------------------------------------------------------------------
# TRUNCATED (tor-spec §5.4 "Tearing down circuits")


def encode_truncated_body(reason: DestroyReason | int) -> bytes:
    """`reason(1)` (a relay's message; here for tests and symmetry)."""
    try:
        return _U8.pack(reason)
    except struct.error:
        raise ValueError(f"TRUNCATED reason out of range: {reason!r}") from None


def decode_truncated_body(body: bytes) -> DestroyReason | int:
    """The DESTROY-style reason of a TRUNCATED; an empty body reads as NONE (as in C tor,
    which reads the zero padding)."""
    if not body:
        return DestroyReason.NONE
    return enum_or_int(DestroyReason, body[0])


# ---------------------------------------------------------------------------------------------
# XON / XOFF (proposal 324 §4.1 "Stream Flow Control Without Windows")

FLOW_CONTROL_VERSION = 0  # prop 324: `u8 version IN [0x00]`
_XON = struct.Struct(">BI")  # version kbps_ewma


def encode_xoff_body() -> bytes:
    """`version=0`: ask the other end to stop sending on this stream."""
    return _U8.pack(FLOW_CONTROL_VERSION)


def decode_xoff_body(body: bytes) -> None:
    """Check an XOFF body; other versions are a protocol violation (prop 324)."""
    if not body:
        raise CellParseError("XOFF body is empty")
    if body[0] != FLOW_CONTROL_VERSION:
        raise CellParseError(f"XOFF has unknown version {body[0]}")


def encode_xon_body(kbps_ewma: int = 0) -> bytes:
    """`version=0 kbps_ewma(4)`: resume sending; 0 means no rate limit."""
    try:
        return _XON.pack(FLOW_CONTROL_VERSION, kbps_ewma)
    except struct.error:
        raise ValueError(f"XON rate out of range: {kbps_ewma!r}") from None


def decode_xon_body(body: bytes) -> int:
    """The advisory drain rate of an XON body, in kilobytes (1000 bytes) per second; 0 = no advice."""
    if len(body) < _XON.size:
        raise CellParseError(f"XON body of {len(body)} bytes is truncated")
    version, kbps_ewma = _XON.unpack_from(body, 0)
    if version != FLOW_CONTROL_VERSION:
        raise CellParseError(f"XON has unknown version {version}")
    return kbps_ewma
