"""The client side of SOCKS5, sans-IO: toward a pluggable transport, with the bridge's arguments as
credentials, and toward a SocksPort (``oppy.endpoints.TorClientEndpoint``, with the isolation credential).

A bridge line's ``k=v`` arguments (the obfs4 ``cert=`` and ``iat-mode=``) reach the transport in the
SOCKS5 username and password (pt-spec 3.5 "Pluggable Transport Client Per-Connection Arguments"):
each key and value is escaped (backslash before ``\\``, ``=`` and ``;``), the pairs are joined with
``;``, and the string is split over the RFC 1929 username (the first 255 bytes) and password (the
rest); when it fits in the username, the password is a single NUL (tor connection.c does the same).

:class:`Socks5ClientHandshake` is the whole handshake (RFC 1928 greeting, RFC 1929 authentication,
CONNECT): ``greeting()`` is what to send first, then every ``receive(data)`` returns a
:class:`Socks5Progress` with what to send next and, at the end, the bytes that followed the reply.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "MAX_SOCKS5_AUTH_FIELD_SIZE",
    "MAX_SOCKS5_AUTH_SIZE_TOTAL",
    "SocksArgumentsError",
    "Socks5ClientError",
    "escape_argument",
    "encode_arguments",
    "socks5_credentials",
    "Socks5Progress",
    "Socks5ClientHandshake",
]

#: RFC 1929: ULEN and PLEN are one byte each (tor or.h MAX_SOCKS5_AUTH_FIELD_SIZE).
MAX_SOCKS5_AUTH_FIELD_SIZE = 255
#: tor or.h MAX_SOCKS5_AUTH_SIZE_TOTAL: the most arguments a username and a password carry together
#: (tor refuses a Bridge line with more).
MAX_SOCKS5_AUTH_SIZE_TOTAL = 2 * MAX_SOCKS5_AUTH_FIELD_SIZE
# RFC 1928 section 3 and 6, RFC 1929 section 2.
SOCKS5_VERSION = 0x05
SOCKS5_AUTH_NONE = 0x00
SOCKS5_AUTH_USERNAME_PASSWORD = 0x02
SOCKS5_NO_ACCEPTABLE_METHODS = 0xFF
RFC1929_VERSION = 0x01
RFC1929_SUCCESS = 0x00
SOCKS5_CONNECT = 0x01
SOCKS5_RESERVED = 0x00
SOCKS5_ATYP_IPV4 = 0x01
SOCKS5_ATYP_HOSTNAME = 0x03
SOCKS5_ATYP_IPV6 = 0x04
#: RFC 1928 section 5: a DOMAINNAME is one length byte and at most 255 octets.
MAX_SOCKS5_HOSTNAME_LEN = 255
#: pt-spec 3.5: the characters escaped with a backslash in keys and values.
_ESCAPED = "\\=;"


class SocksArgumentsError(ValueError):
    """Bridge arguments that cannot be passed to a transport (too long for SOCKS5, or not K=V)."""


class Socks5ClientError(ConnectionError):
    """The proxy refused or broke the SOCKS5 handshake; ``reply`` is its RFC 1928 REP code, if any."""

    def __init__(self, message: str, reply: int | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class Socks5Reply(enum.IntEnum):
    """RFC 1928 section 6 REP codes, and proposal 304's onion-service extended errors (what a SocksPort with
    ExtendedErrors answers this client)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08
    # Proposal 304: only with the SocksPort ExtendedErrors flag, only for onion services.
    ONION_DESCRIPTOR_NOT_FOUND = 0xF0
    ONION_DESCRIPTOR_INVALID = 0xF1
    ONION_INTRO_FAILED = 0xF2
    ONION_REND_FAILED = 0xF3
    ONION_CLIENT_AUTH_MISSING = 0xF4
    ONION_CLIENT_AUTH_WRONG = 0xF5
    ONION_BAD_ADDRESS = 0xF6
    ONION_INTRO_TIMED_OUT = 0xF7


def escape_argument(text: str) -> str:
    """pt-spec 3.5: a backslash before every backslash, equal sign and semicolon."""
    return "".join("\\" + char if char in _ESCAPED else char for char in text)


def encode_arguments(arguments: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
    """The bridge's ``k=v`` arguments, escaped and joined with ``;`` (pt-spec 3.5), as bytes (UTF-8)."""
    pairs = arguments.items() if isinstance(arguments, Mapping) else arguments
    encoded = []
    for key, value in pairs:
        if not key:
            raise SocksArgumentsError(f"a bridge argument needs a key: {key}={value}")
        encoded.append(f"{escape_argument(key)}={escape_argument(value)}")
    # surrogateescape: a torrc's undecodable bytes (kept as surrogates by the config reader) go out as they were.
    return ";".join(encoded).encode("utf-8", "surrogateescape")


def socks5_credentials(arguments: Mapping[str, str] | Iterable[tuple[str, str]]) -> tuple[bytes, bytes] | None:
    """The RFC 1929 (username, password) that carry ``arguments``, or None when there are none (then no
    authentication is offered). Raises :class:`SocksArgumentsError` past 510 bytes."""
    encoded = encode_arguments(arguments)
    if not encoded:
        return None
    if len(encoded) > MAX_SOCKS5_AUTH_SIZE_TOTAL:
        raise SocksArgumentsError(f"the bridge's arguments take {len(encoded)} bytes escaped; SOCKS5 carries at "
                                  f"most {MAX_SOCKS5_AUTH_SIZE_TOTAL} (pt-spec 3.5)")
    if len(encoded) <= MAX_SOCKS5_AUTH_FIELD_SIZE:
        return encoded, b"\0"
    return encoded[:MAX_SOCKS5_AUTH_FIELD_SIZE], encoded[MAX_SOCKS5_AUTH_FIELD_SIZE:]


@dataclass(frozen=True, slots=True)
class Socks5Progress:
    """What one ``receive`` produced: bytes to send now; once ``finished``, the bytes received after the
    CONNECT reply (they belong to the connection the proxy now carries)."""

    send: bytes = b""
    finished: bool = False
    remainder: bytes = b""


class _Step(enum.Enum):
    METHOD = "method selection"
    AUTHENTICATION = "authentication"
    CONNECT = "connect reply"
    DONE = "done"
    FAILED = "failed"


class Socks5ClientHandshake:
    """One SOCKS5 CONNECT to ``host``:``port`` (an IP address or a host name, sent as given for the proxy to
    resolve) through a proxy, offering only username/password authentication when ``credentials`` are given
    (so the bridge's arguments cannot be dropped by a proxy that picks "no authentication"), only "no
    authentication" otherwise."""

    def __init__(self, host: str, port: int, credentials: tuple[bytes, bytes] | None = None) -> None:
        if not 0 < port <= 0xFFFF:
            raise ValueError(f"bad port {port}")
        # RFC 1929 asks for 1 to 255 bytes; tor's SOCKS server also takes an empty password (IsolateSOCKSAuth).
        if credentials is not None and not all(len(field) <= MAX_SOCKS5_AUTH_FIELD_SIZE for field in credentials):
            raise SocksArgumentsError("a SOCKS5 username and password are at most 255 bytes each (RFC 1929)")
        self.host = host
        self.port = port
        self.credentials = credentials
        self._step = _Step.METHOD
        self._buffer = bytearray()

    @property
    def finished(self) -> bool:
        return self._step is _Step.DONE

    def greeting(self) -> bytes:
        """RFC 1928 section 3: VER NMETHODS METHODS."""
        method = SOCKS5_AUTH_NONE if self.credentials is None else SOCKS5_AUTH_USERNAME_PASSWORD
        return bytes((SOCKS5_VERSION, 1, method))

    def _connect_request(self) -> bytes:
        """RFC 1928 section 4: VER CMD RSV ATYP DST.ADDR DST.PORT."""
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            name = self.host.encode("ascii") if self.host.isascii() else self.host.encode("idna")
            if not 0 < len(name) <= MAX_SOCKS5_HOSTNAME_LEN:
                raise Socks5ClientError(f"a host name of {len(name)} bytes cannot be sent over SOCKS5") from None
            target = bytes((SOCKS5_ATYP_HOSTNAME, len(name))) + name
        else:
            target = bytes((SOCKS5_ATYP_IPV4 if address.version == 4 else SOCKS5_ATYP_IPV6,)) + address.packed
        return bytes((SOCKS5_VERSION, SOCKS5_CONNECT, SOCKS5_RESERVED)) + target + struct.pack("!H", self.port)

    def _fail(self, message: str, reply: int | None = None) -> Socks5ClientError:
        self._step = _Step.FAILED
        return Socks5ClientError(message, reply)

    def receive(self, data: bytes) -> Socks5Progress:
        """Bytes from the proxy; raises :class:`Socks5ClientError` if it refuses or breaks the protocol."""
        if self._step in (_Step.DONE, _Step.FAILED):
            raise Socks5ClientError(f"SOCKS5 handshake already {self._step.value}")
        self._buffer += data
        send = b""
        while True:
            if self._step is _Step.METHOD:
                if len(self._buffer) < 2:
                    return Socks5Progress(send)
                version, method = self._buffer[0], self._buffer[1]
                del self._buffer[:2]
                if version != SOCKS5_VERSION:
                    raise self._fail(f"the proxy answered SOCKS version {version}, not 5")
                if method == SOCKS5_NO_ACCEPTABLE_METHODS or method != self.greeting()[2]:
                    raise self._fail(f"the proxy accepted no offered authentication method (chose {method:#04x})")
                if method == SOCKS5_AUTH_USERNAME_PASSWORD:
                    username, password = self.credentials
                    send += bytes((RFC1929_VERSION, len(username))) + username + bytes((len(password),)) + password
                    self._step = _Step.AUTHENTICATION
                else:
                    send += self._connect_request()
                    self._step = _Step.CONNECT
            elif self._step is _Step.AUTHENTICATION:
                if len(self._buffer) < 2:
                    return Socks5Progress(send)
                version, status = self._buffer[0], self._buffer[1]
                del self._buffer[:2]
                if version != RFC1929_VERSION or status != RFC1929_SUCCESS:
                    raise self._fail(f"the proxy refused the username and password (RFC 1929 status {status})")
                send += self._connect_request()
                self._step = _Step.CONNECT
            else:
                return self._connect_reply(send)

    def _connect_reply(self, send: bytes) -> Socks5Progress:
        """RFC 1928 section 6: VER REP RSV ATYP BND.ADDR BND.PORT."""
        if len(self._buffer) < 5:
            return Socks5Progress(send)
        version, reply, _, address_type = self._buffer[:4]
        if version != SOCKS5_VERSION:
            raise self._fail(f"the proxy answered SOCKS version {version}, not 5")
        if reply != Socks5Reply.SUCCEEDED:
            try:
                name = Socks5Reply(reply).name
            except ValueError:
                name = f"reply {reply}"
            raise self._fail(f"the proxy could not connect to the target: {name}", reply)
        address_lengths = {SOCKS5_ATYP_IPV4: 4, SOCKS5_ATYP_IPV6: 16, SOCKS5_ATYP_HOSTNAME: 1 + self._buffer[4]}
        if address_type not in address_lengths:
            raise self._fail(f"the proxy's reply has an unknown address type {address_type}")
        length = 4 + address_lengths[address_type] + 2
        if len(self._buffer) < length:
            return Socks5Progress(send)
        remainder = bytes(self._buffer[length:])
        self._buffer.clear()
        self._step = _Step.DONE
        return Socks5Progress(send, True, remainder)
