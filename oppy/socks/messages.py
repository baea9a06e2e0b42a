"""SOCKS4, SOCKS4a and SOCKS5 wire formats, as a Tor client's SOCKS port speaks them.

Pure functions and constants only: parsers that take the bytes a client sent so far and either
return a complete message, return ``None`` (wait for more bytes), or raise `SocksProtocolError`;
and encoders for every reply the server sends. The state machine that strings them together is
`oppy.socks.protocol.SocksServerConnection`.

References: RFC 1928 (SOCKS5), RFC 1929 (username/password), the SOCKS4 and SOCKS4a notes,
torspec ``socks-extensions`` (RESOLVE 0xF0, RESOLVE_PTR 0xF1), proposal 351 (``<torS0X>``
usernames), proposal 304 (extended error codes), and C tor's ``proto_socks.c``,
``connection_edge.c`` and ``reasons.c`` for the behaviour the specs leave open.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import IntEnum

from oppy.cell.commands import EndReason
# The REP codes are shared with oppy's SOCKS5 client (toward transports and SocksPorts), a layer below.
from oppy.pt.socks5 import Socks5Reply

# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------

# RFC 1928 section 3 / SOCKS4: the first byte of every client message names the version.
SOCKS4_VERSION = 0x04
SOCKS5_VERSION = 0x05
# RFC 1929 section 2: the version byte of the username/password subnegotiation.
SOCKS5_USERPASS_AUTH_VERSION = 0x01
# SOCKS4: the reply's first byte is a null "reply version".
SOCKS4_REPLY_VERSION = 0x00
# RFC 1928 section 4: the reserved byte after CMD must be zero.
SOCKS5_RESERVED = 0x00
# RFC 1929 section 2: STATUS 0 is success; any other value is failure and the server closes.
SOCKS5_USERPASS_STATUS_SUCCESS = 0x00
SOCKS5_USERPASS_STATUS_FAILURE = 0x01

# SOCKS4: VN(1) CD(1) DSTPORT(2) DSTIP(4) before the NUL-terminated USERID.
SOCKS4_HEADER_LEN = 8
# C tor proto_socks.c MAX_SOCKS_MESSAGE_LEN: a SOCKS4/4a request that is still incomplete at
# this many bytes is refused (USERID and the 4a hostname are NUL-terminated, so unbounded).
SOCKS4_MAX_REQUEST_LEN = 512
# C tor or.h MAX_SOCKS_ADDR_LEN (256, including the NUL): the longest target address string.
MAX_ADDRESS_LEN = 255
# RFC 1929: VER(1) ULEN(1) UNAME(<=255) PLEN(1) PASSWD(<=255), the longest handshake message.
SOCKS5_MAX_AUTH_LEN = 1 + 1 + 255 + 1 + 255
# The most handshake bytes a server ever holds while waiting for a message to complete.
MAX_HANDSHAKE_MESSAGE_LEN = max(SOCKS4_MAX_REQUEST_LEN, SOCKS5_MAX_AUTH_LEN)

# Proposal 351: usernames starting with this mark carry a format code in the next byte.
TOR_SOCKS_EXTENSION_PREFIX = b"<torS0X>"
# Proposal 351 format "0": legacy isolation by (username, password). The only format C tor
# 0.4.9 accepts; any other `<torS0X>` username is refused.
TOR_SOCKS_EXTENSION_FORMAT_0 = TOR_SOCKS_EXTENSION_PREFIX + b"0"

# SOCKS4 and SOCKS4a: a DSTIP of 0.0.0.x with x != 0 announces a hostname after the USERID.
SOCKS4A_ADDRESS_MAX = 0xFF


class SocksCommand(IntEnum):
    """RFC 1928 section 4 CMD and SOCKS4 CD, plus Tor's RESOLVE extensions (socks-extensions)."""

    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03
    RESOLVE = 0xF0
    RESOLVE_PTR = 0xF1


class AddressType(IntEnum):
    """RFC 1928 section 4/5 ATYP; also names what kind of target a request carries."""

    IPV4 = 0x01
    HOSTNAME = 0x03
    IPV6 = 0x04


class Socks5Method(IntEnum):
    """RFC 1928 section 3: authentication METHOD values."""

    NO_AUTHENTICATION = 0x00
    GSSAPI = 0x01
    USERNAME_PASSWORD = 0x02
    NO_ACCEPTABLE_METHODS = 0xFF


class Socks4Reply(IntEnum):
    """SOCKS4 reply CD codes (C tor only ever sends GRANTED or REJECTED)."""

    GRANTED = 0x5A
    REJECTED = 0x5B


class LocalEndReason(IntEnum):
    """Reasons a stream fails inside the client, before or without any RELAY_END.

    The numbers are C tor's (or.h END_STREAM_REASON_*): they never go on the wire, but keeping
    them apart from `EndReason` lets one mapping function take either.
    """

    ENTRYPOLICY = 15  # refused by the client's own entry policy
    CANT_ATTACH = 257  # no circuit could carry the stream
    NET_UNREACHABLE = 258  # no directory/network at all, streams killed early
    SOCKSPROTOCOL = 259  # the application misused SOCKS
    PRIVATE_ADDR = 262  # target is a private/loopback address and that is not allowed


# C tor or.h END_STREAM_REASON_MASK: the low 9 bits hold the reason, higher bits are flags.
END_REASON_MASK = 0x1FF

# C tor reasons.c stream_end_reason_to_socks5_response(); checklist section 8.
_REPLY_CODE_FOR_END_REASON: dict[int, Socks5Reply] = {
    0: Socks5Reply.SUCCEEDED,
    EndReason.MISC: Socks5Reply.GENERAL_FAILURE,
    EndReason.RESOLVEFAILED: Socks5Reply.HOST_UNREACHABLE,
    EndReason.CONNECTREFUSED: Socks5Reply.CONNECTION_REFUSED,
    EndReason.EXITPOLICY: Socks5Reply.NOT_ALLOWED,
    EndReason.DESTROY: Socks5Reply.GENERAL_FAILURE,
    # DONE before CONNECTED: the far side closed before saying the connection was complete.
    EndReason.DONE: Socks5Reply.CONNECTION_REFUSED,
    EndReason.TIMEOUT: Socks5Reply.TTL_EXPIRED,
    EndReason.NOROUTE: Socks5Reply.HOST_UNREACHABLE,
    EndReason.HIBERNATING: Socks5Reply.GENERAL_FAILURE,
    EndReason.INTERNAL: Socks5Reply.GENERAL_FAILURE,
    EndReason.RESOURCELIMIT: Socks5Reply.GENERAL_FAILURE,
    EndReason.CONNRESET: Socks5Reply.CONNECTION_REFUSED,
    EndReason.TORPROTOCOL: Socks5Reply.GENERAL_FAILURE,
    LocalEndReason.ENTRYPOLICY: Socks5Reply.NOT_ALLOWED,
    LocalEndReason.CANT_ATTACH: Socks5Reply.GENERAL_FAILURE,
    LocalEndReason.NET_UNREACHABLE: Socks5Reply.NETWORK_UNREACHABLE,
    LocalEndReason.SOCKSPROTOCOL: Socks5Reply.GENERAL_FAILURE,
    LocalEndReason.PRIVATE_ADDR: Socks5Reply.GENERAL_FAILURE,
}


def socks5_reply_code_for_end_reason(reason: int) -> int:
    """The SOCKS5 REP to send when a stream ends (or never opens) for `reason`.

    `reason` is a RELAY_END reason (`EndReason`), a `LocalEndReason`, or 0 for success. Flag
    bits above `END_REASON_MASK` are ignored, as C tor does; unknown reasons map to 01.
    """
    return _REPLY_CODE_FOR_END_REASON.get(reason & END_REASON_MASK, Socks5Reply.GENERAL_FAILURE)


# torspec socks-extensions "HTTP-resistance": C tor looks only at the first byte ('G'ET,
# 'H'EAD, 'P'OST/PUT, 'C'ONNECT) and answers with a short web page instead of a SOCKS reply.
HTTP_REQUEST_FIRST_BYTES = frozenset(b"GHPC")
NOT_AN_HTTP_PROXY_RESPONSE = (
    b"HTTP/1.0 501 Tor is not an HTTP Proxy\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"This is a SOCKS proxy, not an HTTP proxy.\n"
    b"Your application is configured to use this port as an HTTP proxy.\n"
    b"Configure it to use a SOCKS proxy (SOCKS5 or SOCKS4a, with remote DNS) instead.\n"
)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class SocksProtocolError(ValueError):
    """A client sent a SOCKS message we refuse.

    `reply_code` is the SOCKS5 REP that describes the refusal (SOCKS4 maps every refusal to
    REJECTED); the state machine turns it into the reply bytes for the current step.
    """

    def __init__(self, message: str, reply_code: int = Socks5Reply.GENERAL_FAILURE) -> None:
        super().__init__(message)
        self.reply_code = reply_code


class SocksEncodeError(ValueError):
    """A reply cannot be encoded (an address that is neither an IP nor a short hostname)."""


# ---------------------------------------------------------------------------------------------
# Addresses
# ---------------------------------------------------------------------------------------------


def _strip_brackets(text: str) -> str:
    if len(text) >= 2 and text[0] == "[" and text[-1] == "]":
        return text[1:-1]
    return text


def parse_ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address `text` spells (IPv6 optionally in brackets), or None for anything else.

    Stricter than `ipaddress.ip_address`: no IPv6 zone ids (`%eth0`), which a relay could not
    use and C tor's parser refuses.
    """
    candidate = _strip_brackets(text)
    if "%" in candidate:
        return None
    try:
        return ipaddress.ip_address(candidate)
    except ValueError:
        return None


def _is_hostname_label_char(char: str) -> bool:
    return char.isascii() and (char.isalnum() or char in "-_")


def is_valid_hostname(name: str) -> bool:
    """C tor's `string_is_valid_nonrfc_hostname`: dot-separated labels of [A-Za-z0-9_-].

    Labels are non-empty and do not start with '-' or '_'; one trailing dot is allowed. Being
    lenient about '_' matches real DNS zones that C tor found in the wild. An IPv4 literal
    is not a hostname.
    """
    if not name or not name.isascii():
        return False
    if isinstance(parse_ip_address(name), ipaddress.IPv4Address):
        return False
    if name.endswith("."):
        name = name[:-1]
    for label in name.split("."):
        if not label or label[0] in "-_":
            return False
        if not all(_is_hostname_label_char(char) for char in label):
            return False
    return True


def is_valid_destination(address: str) -> bool:
    """C tor's `string_is_valid_dest`: a non-empty IPv4/IPv6 literal or a valid hostname."""
    if not address:
        return False
    return parse_ip_address(address) is not None or is_valid_hostname(address)


# C tor address.c tor_addr_hostname_is_local(): names that always mean this machine/LAN.
_LOCAL_HOSTNAMES = ("localhost", "local")
_LOCAL_HOSTNAME_SUFFIX = ".local"

# C tor address.c tor_addr_is_internal(): 100.64/10 (RFC 6598 shared space) counts as internal.
_IPV4_SHARED_ADDRESS_SPACE = ipaddress.IPv4Network("100.64.0.0/10")
# RFC 1918 private blocks (10/8 is checked by first octet with 0/8 and 127/8).
_IPV4_PRIVATE_172 = ipaddress.IPv4Network("172.16.0.0/12")
_IPV4_PRIVATE_192 = ipaddress.IPv4Network("192.168.0.0/16")
# RFC 3879: deprecated IPv6 site-local fec0::/10, still treated as internal by C tor.
_IPV6_SITE_LOCAL = ipaddress.IPv6Network("fec0::/10")
# RFC 4193 unique local fc00::/7.
_IPV6_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
# RFC 4291 link-local fe80::/10.
_IPV6_LINK_LOCAL = ipaddress.IPv6Network("fe80::/10")


def _is_internal_ipv4(address: ipaddress.IPv4Address) -> bool:
    first_octet = address.packed[0]
    return (
        first_octet in (0, 10, 127)
        or address in _IPV4_SHARED_ADDRESS_SPACE
        or address.is_link_local  # 169.254/16
        or address in _IPV4_PRIVATE_172
        or address in _IPV4_PRIVATE_192
    )


def is_private_address(address: str) -> bool:
    """True if `address` names this host or a private network (C tor `tor_addr_is_internal`).

    Covers IPv4 0/8, 10/8, 127/8, 100.64/10, 169.254/16, 172.16/12, 192.168/16; IPv6 ::,
    ::1, fc00::/7, fe80::/10, fec0::/10 and IPv4-mapped forms of the IPv4 ranges; and the
    hostnames "localhost", "local" and "*.local". Other hostnames are not private: they are
    never resolved here. Whether to refuse such targets is the caller's policy (C tor's
    ClientRejectInternalAddresses, off on a TestingTorNetwork); refusing maps to
    `LocalEndReason.PRIVATE_ADDR`.
    """
    ip = parse_ip_address(address)
    if ip is None:
        lowered = address.lower()
        return lowered in _LOCAL_HOSTNAMES or lowered.endswith(_LOCAL_HOSTNAME_SUFFIX)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _is_internal_ipv4(ip.ipv4_mapped)
        return (
            int(ip) <= 1  # :: and ::1
            or ip in _IPV6_UNIQUE_LOCAL
            or ip in _IPV6_LINK_LOCAL
            or ip in _IPV6_SITE_LOCAL
        )
    return _is_internal_ipv4(ip)


def _classify_hostname_field(name: str) -> tuple[str, AddressType]:
    """Tell an IP literal given as a hostname (SOCKS4a, ATYP 3) from a real hostname.

    IP literals come back in canonical text without brackets, so later layers (exit policy,
    private-address checks, BEGIN formatting) see one spelling per address.
    """
    ip = parse_ip_address(name)
    if ip is None:
        return name, AddressType.HOSTNAME
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ip), AddressType.IPV6
    return str(ip), AddressType.IPV4


def _decode_hostname(raw: bytes) -> str:
    """ASCII text of a hostname field, refusing bytes a hostname can never hold."""
    if not raw:
        raise SocksProtocolError("empty hostname")
    if not raw.isascii():
        raise SocksProtocolError("hostname has non-ASCII bytes")
    text = raw.decode("ascii")
    if not text.isprintable():
        raise SocksProtocolError("hostname has control characters")
    return text


# ---------------------------------------------------------------------------------------------
# Parsed client messages
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """A SOCKS4/4a/5 request as read off the wire, before policy checks."""

    version: int
    command: int
    address: str
    address_type: AddressType
    port: int
    userid: bytes = b""  # SOCKS4 only
    # The client gave an IP address, not a name (SOCKS4 without 4a, SOCKS5 ATYP 1 or 4): it resolved the
    # name itself, which SafeSocks refuses (an IP literal in a hostname field is not this).
    ip_on_the_wire: bool = False


def parse_socks4_request(data: bytes) -> tuple[ParsedRequest, int] | None:
    """Parse a SOCKS4/4a request at the start of `data`.

    Returns (request, bytes consumed), or None while incomplete. Raises `SocksProtocolError`
    for a malformed request (C tor: zero DSTIP, or a message still incomplete at 512 bytes),
    or for an unsupported one (commands other than CONNECT and RESOLVE; SOCKS4 has no
    RESOLVE_PTR). CONNECT to port 0 is refused as in C tor.
    """
    if not data:
        return None
    if data[0] != SOCKS4_VERSION:
        raise SocksProtocolError(f"not a SOCKS4 request (version {data[0]:#04x})")
    if len(data) >= 2:
        command = data[1]
        if command not in (SocksCommand.CONNECT, SocksCommand.RESOLVE):
            raise SocksProtocolError(
                f"SOCKS4 command {command:#04x} not supported",
                Socks5Reply.COMMAND_NOT_SUPPORTED,
            )
    if len(data) < SOCKS4_HEADER_LEN:
        return None
    command = data[1]
    port = int.from_bytes(data[2:4], "big")
    destination_ip = int.from_bytes(data[4:8], "big")
    if destination_ip == 0:
        raise SocksProtocolError("SOCKS4 destination IP is zero")
    if port == 0 and command == SocksCommand.CONNECT:
        raise SocksProtocolError("SOCKS4 CONNECT to port 0")

    userid_end = data.find(b"\x00", SOCKS4_HEADER_LEN, SOCKS4_MAX_REQUEST_LEN)
    if userid_end < 0:
        if len(data) >= SOCKS4_MAX_REQUEST_LEN:
            raise SocksProtocolError("SOCKS4 user id too long")
        return None
    userid = bytes(data[SOCKS4_HEADER_LEN:userid_end])
    consumed = userid_end + 1

    if destination_ip > SOCKS4A_ADDRESS_MAX:
        address = str(ipaddress.IPv4Address(destination_ip))
        return ParsedRequest(4, command, address, AddressType.IPV4, port, userid, True), consumed

    # SOCKS4a: the hostname follows the USERID, also NUL-terminated.
    hostname_limit = min(consumed + MAX_ADDRESS_LEN + 1, SOCKS4_MAX_REQUEST_LEN)
    hostname_end = data.find(b"\x00", consumed, hostname_limit)
    if hostname_end < 0:
        if len(data) >= hostname_limit:
            raise SocksProtocolError("SOCKS4a hostname too long")
        return None
    hostname = _decode_hostname(bytes(data[consumed:hostname_end]))
    address, address_type = _classify_hostname_field(hostname)
    return ParsedRequest(4, command, address, address_type, port, userid), hostname_end + 1


def parse_socks5_greeting(data: bytes) -> tuple[bytes, int] | None:
    """Parse RFC 1928 section 3 `05 NMETHODS METHODS...`; returns (methods, consumed)."""
    if len(data) < 2:
        return None
    if data[0] != SOCKS5_VERSION:
        raise SocksProtocolError(f"not a SOCKS5 greeting (version {data[0]:#04x})")
    end = 2 + data[1]
    if len(data) < end:
        return None
    return bytes(data[2:end]), end


def choose_socks5_method(methods: bytes, prefer_no_auth: bool = False) -> Socks5Method:
    """C tor's choice: username/password if offered (isolation), else no-auth, else none.

    With `prefer_no_auth` (C tor's PreferSOCKSNoAuth) no-auth wins when both are offered.
    """
    offers_userpass = Socks5Method.USERNAME_PASSWORD in methods
    offers_no_auth = Socks5Method.NO_AUTHENTICATION in methods
    if offers_userpass and not (offers_no_auth and prefer_no_auth):
        return Socks5Method.USERNAME_PASSWORD
    if offers_no_auth:
        return Socks5Method.NO_AUTHENTICATION
    return Socks5Method.NO_ACCEPTABLE_METHODS


def parse_socks5_userpass_auth(data: bytes) -> tuple[tuple[bytes, bytes], int] | None:
    """Parse RFC 1929 `01 ULEN UNAME PLEN PASSWD`; returns ((username, password), consumed).

    Empty fields are accepted (C tor tolerates clients that send them, against the RFC).
    """
    if not data:
        return None
    if data[0] != SOCKS5_USERPASS_AUTH_VERSION:
        raise SocksProtocolError(f"bad username/password auth version {data[0]:#04x}")
    if len(data) < 2:
        return None
    username_end = 2 + data[1]
    if len(data) < username_end + 1:
        return None
    password_end = username_end + 1 + data[username_end]
    if len(data) < password_end:
        return None
    username = bytes(data[2:username_end])
    password = bytes(data[username_end + 1 : password_end])
    return (username, password), password_end


def check_tor_socks_username(username: bytes) -> None:
    """Proposal 351: a username starting with `<torS0X>` must be exactly `<torS0X>0`.

    Other formats (e.g. Arti's RPC object ids, format "1") are not supported and are refused.
    """
    if username.startswith(TOR_SOCKS_EXTENSION_PREFIX) and username != TOR_SOCKS_EXTENSION_FORMAT_0:
        raise SocksProtocolError("unsupported <torS0X> SOCKS username format")


# RFC 1928 section 4: VER CMD RSV ATYP, then the address, then DST.PORT(2).
_SOCKS5_REQUEST_HEADER_LEN = 4
_PORT_LEN = 2
_IPV4_LEN = 4
_IPV6_LEN = 16


def parse_socks5_request(data: bytes) -> tuple[ParsedRequest, int] | None:
    """Parse RFC 1928 section 4 `05 CMD 00 ATYP DST.ADDR DST.PORT`.

    Only framing is checked here (version, reserved byte, ATYP, lengths, hostname bytes);
    `validate_request` decides whether the command and target are acceptable. An unknown
    ATYP fails at once with REP 08, since the rest of the message cannot be framed.
    """
    if not data:
        return None
    if data[0] != SOCKS5_VERSION:
        raise SocksProtocolError(f"not a SOCKS5 request (version {data[0]:#04x})")
    if len(data) >= 3 and data[2] != SOCKS5_RESERVED:
        raise SocksProtocolError("SOCKS5 request reserved byte is not zero")
    if len(data) < _SOCKS5_REQUEST_HEADER_LEN:
        return None
    command = data[1]
    atyp = data[3]
    offset = _SOCKS5_REQUEST_HEADER_LEN
    if atyp == AddressType.IPV4:
        address_end = offset + _IPV4_LEN
        if len(data) < address_end + _PORT_LEN:
            return None
        address = str(ipaddress.IPv4Address(bytes(data[offset:address_end])))
        address_type = AddressType.IPV4
    elif atyp == AddressType.IPV6:
        address_end = offset + _IPV6_LEN
        if len(data) < address_end + _PORT_LEN:
            return None
        address = str(ipaddress.IPv6Address(bytes(data[offset:address_end])))
        address_type = AddressType.IPV6
    elif atyp == AddressType.HOSTNAME:
        if len(data) < offset + 1:
            return None
        address_end = offset + 1 + data[offset]
        if len(data) < address_end + _PORT_LEN:
            return None
        hostname = _decode_hostname(bytes(data[offset + 1 : address_end]))
        address, address_type = _classify_hostname_field(hostname)
    else:
        raise SocksProtocolError(
            f"SOCKS5 address type {atyp:#04x} not supported",
            Socks5Reply.ADDRESS_TYPE_NOT_SUPPORTED,
        )
    port = int.from_bytes(data[address_end : address_end + _PORT_LEN], "big")
    request = ParsedRequest(5, command, address, address_type, port,
                            ip_on_the_wire=atyp in (AddressType.IPV4, AddressType.IPV6))
    return request, address_end + _PORT_LEN


def validate_request(request: ParsedRequest) -> None:
    """Refuse what C tor refuses once a request is framed; raises `SocksProtocolError`.

    - BIND, UDP ASSOCIATE and unknown commands: REP 07.
    - RESOLVE_PTR of something that is not an IP address: REP 08 (C tor).
    - A target that is not a valid IP literal or hostname: REP 01.
    - CONNECT to port 0: REP 01 (C tor refuses it with END reason TORPROTOCOL).
    """
    if request.command not in (
        SocksCommand.CONNECT,
        SocksCommand.RESOLVE,
        SocksCommand.RESOLVE_PTR,
    ):
        raise SocksProtocolError(
            f"SOCKS command {request.command:#04x} not supported",
            Socks5Reply.COMMAND_NOT_SUPPORTED,
        )
    if request.command == SocksCommand.RESOLVE_PTR and request.address_type == AddressType.HOSTNAME:
        raise SocksProtocolError(
            "RESOLVE_PTR needs an IP address", Socks5Reply.ADDRESS_TYPE_NOT_SUPPORTED
        )
    if not is_valid_destination(request.address):
        raise SocksProtocolError("malformed target hostname")
    if request.command == SocksCommand.CONNECT and request.port == 0:
        raise SocksProtocolError("CONNECT to port 0")


# ---------------------------------------------------------------------------------------------
# Reply encoders
# ---------------------------------------------------------------------------------------------

# C tor zeroes the bound address and port of every CONNECT reply.
_ZERO_IPV4 = b"\x00" * _IPV4_LEN
_ZERO_PORT = b"\x00" * _PORT_LEN


def encode_socks5_method_selection(method: int) -> bytes:
    """RFC 1928 section 3 `05 METHOD`."""
    return bytes((SOCKS5_VERSION, method))


def encode_socks5_auth_status(success: bool) -> bytes:
    """RFC 1929 section 2 `01 STATUS`."""
    status = SOCKS5_USERPASS_STATUS_SUCCESS if success else SOCKS5_USERPASS_STATUS_FAILURE
    return bytes((SOCKS5_USERPASS_AUTH_VERSION, status))


def encode_socks5_reply(
    reply_code: int,
    bound_address: str | bytes | None = None,
    bound_port: int = 0,
) -> bytes:
    """RFC 1928 section 6 `05 REP 00 ATYP BND.ADDR BND.PORT`.

    `bound_address` None gives C tor's zeroed IPv4 form `01 0.0.0.0`. A str that is an IP
    literal is encoded as ATYP 1 or 4; any other str, or bytes, as a hostname (ATYP 3), which
    is how RESOLVE_PTR answers travel. Raises `SocksEncodeError` for a hostname that is empty
    or longer than 255 bytes.
    """
    header = bytes((SOCKS5_VERSION, reply_code, SOCKS5_RESERVED))
    port = bound_port.to_bytes(_PORT_LEN, "big")
    if bound_address is None:
        return header + bytes((AddressType.IPV4,)) + _ZERO_IPV4 + port
    if isinstance(bound_address, str):
        ip = parse_ip_address(bound_address)
        if ip is not None:
            atyp = AddressType.IPV4 if ip.version == 4 else AddressType.IPV6
            return header + bytes((atyp,)) + ip.packed + port
        try:
            bound_address = bound_address.encode("ascii")
        except UnicodeEncodeError as error:
            raise SocksEncodeError("hostname in a SOCKS5 reply must be ASCII") from error
    if not 0 < len(bound_address) <= MAX_ADDRESS_LEN:
        raise SocksEncodeError(f"hostname of {len(bound_address)} bytes cannot go in a reply")
    return header + bytes((AddressType.HOSTNAME, len(bound_address))) + bound_address + port


def encode_socks5_failure(reply_code: int) -> bytes:
    """A SOCKS5 failure reply as C tor sends it: `05 REP 00 01 00000000 0000`."""
    return encode_socks5_reply(reply_code)


def encode_socks4_reply(granted: bool, port: int = 0, ipv4: str | None = None) -> bytes:
    """SOCKS4 `00 5A|5B DSTPORT DSTIP`; C tor zeroes port and address except for RESOLVE."""
    code = Socks4Reply.GRANTED if granted else Socks4Reply.REJECTED
    try:
        address = _ZERO_IPV4 if ipv4 is None else ipaddress.IPv4Address(ipv4).packed
    except ValueError as error:
        raise SocksEncodeError(f"{ipv4!r} is not an IPv4 address") from error
    return bytes((SOCKS4_REPLY_VERSION, code)) + port.to_bytes(_PORT_LEN, "big") + address
