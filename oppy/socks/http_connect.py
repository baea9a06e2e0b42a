"""The server side of one HTTPTunnelPort client (HTTP CONNECT), as a sans-IO state machine.

It has the interface of :class:`~oppy.socks.protocol.SocksServerConnection`, so that one adapter serves both
kinds of client port: `feed` bytes, read `data_to_send`, get one event per connection (a request or a failure),
then `reply_connect_succeeded` or `reply_failed_for_end_reason`.

What tor does (connection_edge.c connection_ap_process_http_connect, reasons.c
end_reason_to_http_connect_response_line; torspec http-connect; proposal 365 as tor 0.4.9 has it): the request
head (request line and headers) ends with an empty line and holds at most 8192 bytes; a malformed one gets
``400 Bad Request``, a target of 256 bytes or more ``414``, and any method but CONNECT an explanatory ``405`` page.
The Proxy-Authorization header's value is the isolation "username" and Tor-Stream-Isolation's (or the older
X-Tor-Stream-Isolation's) the "password", as SOCKS credentials are. Success is ``HTTP/1.0 200 OK``; a failed
stream answers the status its END reason maps to, with a Tor-Request-Failed header naming the reason.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from oppy.cell.commands import EndReason
from oppy.socks.messages import (
    END_REASON_MASK,
    MAX_ADDRESS_LEN,
    AddressType,
    LocalEndReason,
    Socks5Reply,
    SocksCommand,
    is_valid_destination,
    parse_ip_address,
)
from oppy.socks.protocol import ClientHandshake, SocksFailure, SocksRequest, SocksState, SocksStateError

# connection_ap_process_http_connect: fetch_from_buf_http(..., 8192, ...): the longest request head.
MAX_HEAD_LEN = 8192
HEAD_END = b"\r\n\r\n"
# RFC 9110 9.3.6: the one method a tunnel serves.
CONNECT_METHOD = "CONNECT"
# Headers whose values isolate streams (tor(1) IsolateSOCKSAuth; proposal 365 renames X-Tor-Stream-Isolation).
PROXY_AUTHORIZATION = "proxy-authorization"
STREAM_ISOLATION = "tor-stream-isolation"
LEGACY_STREAM_ISOLATION = "x-tor-stream-isolation"
# Proposal 365: a failed request names why in this response header.
REQUEST_FAILED_HEADER = "Tor-Request-Failed"

BAD_REQUEST = b"HTTP/1.0 400 Bad Request\r\n\r\n"
URI_TOO_LONG = b"HTTP/1.0 414 Request-URI Too Long\r\n\r\n"
CONNECT_SUCCEEDED = b"HTTP/1.0 200 OK\r\n\r\n"
# connection_edge.c HTTP_CONNECT_IS_NOT_AN_HTTP_PROXY_MSG: the answer to a GET (or any method but CONNECT).
NOT_AN_HTTP_PROXY_RESPONSE = (
    b"HTTP/1.0 405 Method Not Allowed\r\n"
    b"Content-Type: text/html; charset=iso-8859-1\r\n\r\n"
    b"<html>\n"
    b"<head>\n"
    b"<title>This is an HTTP CONNECT tunnel, not a full HTTP Proxy</title>\n"
    b"</head>\n"
    b"<body>\n"
    b"<h1>This is an HTTP CONNECT tunnel, not an HTTP proxy.</h1>\n"
    b"<p>\n"
    b"It appears you have configured your web browser to use this Tor port as\n"
    b"an HTTP proxy.\n"
    b"</p><p>\n"
    b"This is not correct: This port is configured as a CONNECT tunnel, not\n"
    b"an HTTP proxy. Please configure your client accordingly.  You can also\n"
    b"use HTTPS; then the client should automatically use HTTP CONNECT."
    b"</p>\n"
    b"<p>\n"
    b"See <a href=\"https://www.torproject.org/documentation.html\">"
    b"https://www.torproject.org/documentation.html</a> for more "
    b"information.\n"
    b"</p>\n"
    b"</body>\n"
    b"</html>\n"
)

# reasons.c end_reason_to_http_connect_response_line, with torspec http-connect's codes and proposal 365's
# change (a failed resolve and no route are 503, not 404): END reason -> (status, reason phrase).
_STATUS_FOR_END_REASON: dict[int, tuple[int, str]] = {
    EndReason.MISC: (500, "Internal Server Error"),
    EndReason.RESOLVEFAILED: (503, "Service Unavailable (resolve failed)"),
    EndReason.NOROUTE: (503, "Service Unavailable (no route)"),
    EndReason.CONNECTREFUSED: (403, "Forbidden (connection refused)"),
    EndReason.EXITPOLICY: (503, "Service Unavailable (exit policy)"),
    EndReason.DESTROY: (502, "Bad Gateway (destroy cell received)"),
    EndReason.DONE: (502, "Bad Gateway (unexpected close)"),
    EndReason.TIMEOUT: (504, "Gateway Timeout"),
    EndReason.HIBERNATING: (502, "Bad Gateway (hibernating server)"),
    EndReason.INTERNAL: (502, "Bad Gateway (internal error)"),
    EndReason.RESOURCELIMIT: (502, "Bad Gateway (resource limit)"),
    EndReason.CONNRESET: (503, "Service Unavailable (connection reset)"),
    EndReason.TORPROTOCOL: (502, "Bad Gateway (tor protocol violation)"),
    LocalEndReason.ENTRYPOLICY: (403, "Forbidden (entry policy violation)"),
}
_OTHER_END_REASON = (500, "Internal Server Error (weird end reason)")
# The END reasons behind the SOCKS5 replies the adapter refuses with (reasons.c, read backwards).
_END_REASON_FOR_SOCKS_REPLY = {
    Socks5Reply.NOT_ALLOWED: LocalEndReason.ENTRYPOLICY,
    Socks5Reply.NETWORK_UNREACHABLE: EndReason.NOROUTE,
    Socks5Reply.HOST_UNREACHABLE: EndReason.RESOLVEFAILED,
    Socks5Reply.CONNECTION_REFUSED: EndReason.CONNECTREFUSED,
    Socks5Reply.TTL_EXPIRED: EndReason.TIMEOUT,
}


def _reason_keyword(reason: int) -> str:
    for kind in (EndReason, LocalEndReason):
        try:
            return kind(reason).name
        except ValueError:
            continue
    return "MISC"


def failure_response(reason: int) -> bytes:
    """The response to a CONNECT whose stream failed for END (or local) `reason`."""
    reason &= END_REASON_MASK
    status, phrase = _STATUS_FOR_END_REASON.get(reason, _OTHER_END_REASON)
    return (f"HTTP/1.0 {status} {phrase}\r\n{REQUEST_FAILED_HEADER}: {_reason_keyword(reason)}\r\n\r\n"
            ).encode("ascii")


class HttpConnectError(ValueError):
    """A request this port refuses; `response` is what the client is told."""

    def __init__(self, message: str, response: bytes) -> None:
        super().__init__(message)
        self.response = response


@dataclass(frozen=True, slots=True)
class HttpConnectHead:
    """A parsed CONNECT request: its target, and the isolation headers' values (empty when absent)."""

    host: str
    port: int
    proxy_authorization: bytes
    stream_isolation: bytes


def _split_target(target: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (tor_addr_port_split); the port is required."""
    if target.startswith("["):
        close = target.find("]")
        if close < 0 or target[close + 1 : close + 2] != ":":
            raise HttpConnectError("malformed CONNECT target", BAD_REQUEST)
        host, port_text = target[1:close], target[close + 2 :]
        if not isinstance(parse_ip_address(host), ipaddress.IPv6Address):
            raise HttpConnectError("malformed IPv6 CONNECT target", BAD_REQUEST)
    else:
        host, colon, port_text = target.rpartition(":")
        if not colon or ":" in host:
            raise HttpConnectError("CONNECT target without a port", BAD_REQUEST)
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5 and 0 < int(port_text) < 65536):
        raise HttpConnectError("bad port in the CONNECT target", BAD_REQUEST)
    if len(host) > MAX_ADDRESS_LEN:
        raise HttpConnectError("CONNECT target too long", URI_TOO_LONG)
    if not is_valid_destination(host):
        raise HttpConnectError("malformed CONNECT target host", BAD_REQUEST)
    return host, int(port_text)


def parse_request_head(head: bytes) -> HttpConnectHead:
    """Parse a request head (without the final empty line); raises HttpConnectError with tor's answer."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise HttpConnectError("non-ASCII request head", BAD_REQUEST) from None
    request_line, *header_lines = text.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2].startswith("HTTP/"):
        raise HttpConnectError("malformed request line", BAD_REQUEST)
    method, target, _ = parts
    headers: dict[str, str] = {}
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise HttpConnectError("malformed header line", BAD_REQUEST)
        headers.setdefault(name.lower(), value.strip(" \t"))
    if method.upper() != CONNECT_METHOD:
        raise HttpConnectError(f"{method} request on an HTTP CONNECT port", NOT_AN_HTTP_PROXY_RESPONSE)
    host, port = _split_target(target)
    isolation = headers.get(STREAM_ISOLATION, headers.get(LEGACY_STREAM_ISOLATION, ""))
    return HttpConnectHead(host, port, headers.get(PROXY_AUTHORIZATION, "").encode("ascii"),
                           isolation.encode("ascii"))


class HttpConnectServerConnection(ClientHandshake):
    """One HTTP CONNECT client: the request head, then the tunnel's bytes (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._buffer = bytearray()

    @property
    def buffered_head_bytes(self) -> int:
        """How many bytes of an incomplete request head are held (bounded by MAX_HEAD_LEN and one read)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[SocksRequest | SocksFailure]:
        """Take bytes from the client; never raises. Bytes after the head are the tunnel's first data."""
        if self._state is SocksState.CLOSING:
            return []
        if self._state is not SocksState.HANDSHAKE:
            self._trailing += data
            return []
        self._buffer += data
        end = self._buffer.find(HEAD_END)
        if end < 0:
            if len(self._buffer) > MAX_HEAD_LEN:
                return [self._fail(HttpConnectError("request head too long", BAD_REQUEST))]
            return []
        if end > MAX_HEAD_LEN:
            return [self._fail(HttpConnectError("request head too long", BAD_REQUEST))]
        try:
            head = parse_request_head(bytes(self._buffer[:end]))
        except HttpConnectError as error:
            return [self._fail(error)]
        ip = parse_ip_address(head.host)
        address_type = AddressType.HOSTNAME if ip is None else (
            AddressType.IPV4 if ip.version == 4 else AddressType.IPV6)
        self._request = SocksRequest(0, SocksCommand.CONNECT, head.host if ip is None else str(ip), address_type,
                                     head.port, head.proxy_authorization, head.stream_isolation)
        self._trailing += self._buffer[end + len(HEAD_END):]
        self._buffer.clear()
        self._state = SocksState.REQUEST_RECEIVED
        return [self._request]

    def _fail(self, error: HttpConnectError) -> SocksFailure:
        self._outgoing += error.response
        self._buffer.clear()
        self._state = SocksState.CLOSING
        return SocksFailure(reason=str(error), reply=error.response, version=None)

    def _require_request(self) -> None:
        if self._state is not SocksState.REQUEST_RECEIVED:
            raise SocksStateError(f"no CONNECT request awaiting a reply (state {self._state.name})")

    def reply_connect_succeeded(self) -> None:
        self._require_request()
        self._outgoing += CONNECT_SUCCEEDED
        self._state = SocksState.ESTABLISHED

    def reply_failed(self, reply_code: int) -> None:
        """A refusal the adapter words as a SOCKS5 reply code: the status of the END reason it stands for."""
        self.reply_failed_for_end_reason(_END_REASON_FOR_SOCKS_REPLY.get(reply_code, EndReason.MISC))

    def reply_failed_for_end_reason(self, reason: int) -> None:
        self._require_request()
        self._outgoing += failure_response(reason)
        self._state = SocksState.CLOSING
