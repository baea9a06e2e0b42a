"""The server side of one SOCKS client connection, as a sans-IO state machine.

One `SocksServerConnection` per accepted client. It never touches a socket; the adapter (a
Twisted protocol, a test) moves bytes in and out:

    connection = SocksServerConnection()
    events = connection.feed(data)          # any fragment of what the client sent
    transport.write(connection.data_to_send())   # handshake replies queued so far
    for event in events:
        if isinstance(event, SocksRequest):
            ...  # open a stream / resolve; connection.take_trailing_data() is optimistic data
        elif isinstance(event, SocksFailure):
            ...  # nothing to do: the reply (if any) is already queued
    if connection.should_close:
        transport.loseConnection()          # after writing data_to_send()

Later, when the outcome is known, the adapter calls one of `reply_connect_succeeded`,
`reply_resolved_address`, `reply_resolved_hostname`, `reply_failed` (or
`reply_failed_for_end_reason`), writes `data_to_send()`, and closes if `should_close`.

The method choice (`05 00`/`05 02`) and the username/password acknowledgement (`01 00`) are
queued without an event: they depend only on what the client sent. Events are only the
outcome of the handshake, exactly one per connection: `SocksRequest` or `SocksFailure`.

Bytes that arrive after the request (optimistic data, torspec socks-extensions section 5),
whether in the same fragment or in later `feed` calls, are kept in `trailing_data` unparsed.
The adapter should take them, and stop reading (or feed the stream directly) once it has the
request, since that buffer is the adapter's to bound. The handshake buffer itself never
exceeds `MAX_HANDSHAKE_MESSAGE_LEN` bytes: endless garbage fails the connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto

from oppy.socks.messages import (
    HTTP_REQUEST_FIRST_BYTES,
    MAX_HANDSHAKE_MESSAGE_LEN,
    NOT_AN_HTTP_PROXY_RESPONSE,
    SOCKS4_VERSION,
    SOCKS5_USERPASS_AUTH_VERSION,
    SOCKS5_VERSION,
    AddressType,
    ParsedRequest,
    Socks5Method,
    Socks5Reply,
    SocksCommand,
    SocksEncodeError,
    SocksProtocolError,
    check_tor_socks_username,
    choose_socks5_method,
    encode_socks4_reply,
    encode_socks5_auth_status,
    encode_socks5_failure,
    encode_socks5_method_selection,
    encode_socks5_reply,
    parse_ip_address,
    parse_socks4_request,
    parse_socks5_greeting,
    parse_socks5_request,
    parse_socks5_userpass_auth,
    socks5_reply_code_for_end_reason,
    validate_request,
)


@dataclass(frozen=True, slots=True)
class SocksRequest:
    """A complete, acceptable SOCKS request.

    `address` is a hostname (never resolved here; the exit resolves it), or canonical IPv4 or
    IPv6 text without brackets, as `address_type` says. An IP literal sent in a hostname
    field (SOCKS4a, ATYP 3) is reported as that IP. `username`/`password` are the raw
    isolation credentials: SOCKS5 RFC 1929 fields, or the SOCKS4 USERID with an empty
    password; both empty when the client sent none (C tor treats empty and absent alike).
    """

    version: int
    command: SocksCommand
    address: str
    address_type: AddressType
    port: int
    username: bytes = b""
    password: bytes = b""
    #: The client gave an IP address instead of a name (SOCKS4, SOCKS5 ATYP 1/4): see SafeSocks. How the target
    #: was spelled, not what it is: left out of comparisons.
    ip_on_the_wire: bool = field(default=False, compare=False)

    @property
    def resolved_locally(self) -> bool:
        """proto_socks.c: the application did its own DNS (an IP address other than RESOLVE_PTR's), which
        leaks what it visits; SafeSocks refuses such requests and TestSocks says which kind each one is."""
        return self.ip_on_the_wire and self.command is not SocksCommand.RESOLVE_PTR

    @property
    def isolation_key(self) -> tuple[bytes, bytes]:
        """What IsolateSOCKSAuth compares: streams with different keys share no circuit."""
        return (self.username, self.password)


@dataclass(frozen=True, slots=True)
class SocksFailure:
    """The handshake failed; `reply` (possibly empty) is already queued and the connection
    should close once it is written. `version` is 4 or 5 when known."""

    reason: str
    reply: bytes
    version: int | None


SocksEvent = SocksRequest | SocksFailure


class SocksStateError(RuntimeError):
    """The caller asked for something the connection's state does not allow (a bug)."""


class SocksState(Enum):
    """Where a connection is in its life."""

    HANDSHAKE = auto()  # reading greeting / auth / request
    REQUEST_RECEIVED = auto()  # SocksRequest delivered, waiting for the caller's reply
    ESTABLISHED = auto()  # CONNECT succeeded: bytes now belong to the stream
    CLOSING = auto()  # failed, or a RESOLVE was answered: write what is queued, then close


class _Expecting(Enum):
    """Which client message the handshake waits for next."""

    FIRST_MESSAGE = auto()  # version byte decides: SOCKS4 request, SOCKS5 greeting, or junk
    SOCKS5_AUTH = auto()  # username/password was chosen: RFC 1929 message
    SOCKS5_REQUEST = auto()  # the request (or an unrequested RFC 1929 message, as C tor allows)


class ClientHandshake:
    """What every client port's handshake (SOCKS, HTTP CONNECT) shares: its state, the reply bytes queued for
    the client and the bytes that came after the request. The adapter serves any of them alike."""

    def __init__(self) -> None:
        self._state = SocksState.HANDSHAKE
        self._outgoing = bytearray()
        self._trailing = bytearray()
        self._request: SocksRequest | None = None

    @property
    def state(self) -> SocksState:
        return self._state

    @property
    def should_close(self) -> bool:
        """True once the connection must be closed after `data_to_send()` is written."""
        return self._state is SocksState.CLOSING

    @property
    def request(self) -> SocksRequest | None:
        """The request, once received."""
        return self._request

    @property
    def trailing_data(self) -> bytes:
        """Bytes the client sent after its request (optimistic data), not yet taken."""
        return bytes(self._trailing)

    def take_trailing_data(self) -> bytes:
        """Return and forget the optimistic data received so far."""
        data = bytes(self._trailing)
        self._trailing.clear()
        return data

    def data_to_send(self) -> bytes:
        """Return and forget the reply bytes queued for the client."""
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data


class SocksServerConnection(ClientHandshake):
    """SOCKS4/4a/5 server handshake for one client, with Tor's RESOLVE and RESOLVE_PTR."""

    def __init__(self, prefer_no_auth: bool = False) -> None:
        super().__init__()
        # C tor's PreferSOCKSNoAuth: pick no-auth over username/password when both offered.
        self._prefer_no_auth = prefer_no_auth
        self._expecting = _Expecting.FIRST_MESSAGE
        self._version: int | None = None
        self._handshake_buffer = bytearray()
        self._have_credentials = False
        self._username = b""
        self._password = b""

    # -- state the adapter reads --------------------------------------------------------------

    @property
    def version(self) -> int | None:
        """4 or 5 once the first byte has told, else None."""
        return self._version

    @property
    def buffered_handshake_bytes(self) -> int:
        """How many bytes of an incomplete handshake message are held (bounded)."""
        return len(self._handshake_buffer)

    # -- input ------------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[SocksEvent]:
        """Take bytes from the client; return the events they complete (often none).

        Never raises on any input: malformed or refused input becomes a `SocksFailure`.
        After a failure further input is ignored; after the request it is kept as
        `trailing_data`.
        """
        if self._state is SocksState.CLOSING:
            return []
        if self._state is not SocksState.HANDSHAKE:
            self._trailing += data
            return []
        self._handshake_buffer += data
        try:
            event = self._advance_handshake()
        except SocksProtocolError as error:
            return [self._fail(str(error), self._failure_reply(error))]
        if event is None and len(self._handshake_buffer) > MAX_HANDSHAKE_MESSAGE_LEN:
            # Parsers bound every message already; this guards the buffer regardless.
            error = SocksProtocolError("SOCKS handshake message too long")
            return [self._fail(str(error), self._failure_reply(error))]
        return [] if event is None else [event]

    def _advance_handshake(self) -> SocksEvent | None:
        """Consume every complete message in the buffer; stop at the outcome or a partial one."""
        buffer = self._handshake_buffer
        while buffer:
            if self._expecting is _Expecting.FIRST_MESSAGE:
                first_byte = buffer[0]
                if first_byte == SOCKS4_VERSION:
                    self._version = 4
                    parsed = parse_socks4_request(buffer)
                    if parsed is None:
                        return None
                    request, consumed = parsed
                    return self._accept_request(request, consumed)
                if first_byte == SOCKS5_VERSION:
                    self._version = 5
                    greeting = parse_socks5_greeting(buffer)
                    if greeting is None:
                        return None
                    methods, consumed = greeting
                    del buffer[:consumed]
                    failure = self._choose_method(methods)
                    if failure is not None:
                        return failure
                    continue
                if first_byte in HTTP_REQUEST_FIRST_BYTES:
                    return self._fail(
                        "HTTP request on a SOCKS port", NOT_AN_HTTP_PROXY_RESPONSE
                    )
                return self._fail(f"unknown SOCKS version {first_byte:#04x}", b"")

            if self._expecting is _Expecting.SOCKS5_AUTH or (
                buffer[0] == SOCKS5_USERPASS_AUTH_VERSION and not self._have_credentials
            ):
                self._expecting = _Expecting.SOCKS5_AUTH
                auth = parse_socks5_userpass_auth(buffer)
                if auth is None:
                    return None
                (username, password), consumed = auth
                check_tor_socks_username(username)
                del buffer[:consumed]
                self._username, self._password = username, password
                self._have_credentials = True
                self._outgoing += encode_socks5_auth_status(success=True)
                self._expecting = _Expecting.SOCKS5_REQUEST
                continue

            parsed = parse_socks5_request(buffer)
            if parsed is None:
                return None
            request, consumed = parsed
            return self._accept_request(request, consumed)
        return None

    def _choose_method(self, methods: bytes) -> SocksFailure | None:
        method = choose_socks5_method(methods, self._prefer_no_auth)
        reply = encode_socks5_method_selection(method)
        if method is Socks5Method.NO_ACCEPTABLE_METHODS:
            return self._fail("no acceptable SOCKS5 authentication method", reply)
        self._outgoing += reply
        if method is Socks5Method.USERNAME_PASSWORD:
            self._expecting = _Expecting.SOCKS5_AUTH
        else:
            self._expecting = _Expecting.SOCKS5_REQUEST
        return None

    def _accept_request(self, parsed: ParsedRequest, consumed: int) -> SocksRequest:
        validate_request(parsed)
        if parsed.version == 4:
            username, password = parsed.userid, b""
        else:
            username, password = self._username, self._password
        request = SocksRequest(
            version=parsed.version,
            command=SocksCommand(parsed.command),
            address=parsed.address,
            address_type=parsed.address_type,
            port=parsed.port,
            username=username,
            password=password,
            ip_on_the_wire=parsed.ip_on_the_wire,
        )
        self._trailing += self._handshake_buffer[consumed:]
        self._handshake_buffer.clear()
        self._request = request
        self._state = SocksState.REQUEST_RECEIVED
        return request

    def _failure_reply(self, error: SocksProtocolError) -> bytes:
        """The refusal in the format the client is waiting for at this step."""
        if self._version == 4:
            return encode_socks4_reply(granted=False)
        if self._expecting is _Expecting.SOCKS5_AUTH:
            return encode_socks5_auth_status(success=False)
        if self._expecting is _Expecting.SOCKS5_REQUEST:
            return encode_socks5_failure(error.reply_code)
        return b""

    def _fail(self, reason: str, reply: bytes) -> SocksFailure:
        self._outgoing += reply
        self._handshake_buffer.clear()
        self._state = SocksState.CLOSING
        return SocksFailure(reason=reason, reply=reply, version=self._version)

    # -- replies the caller asks for -------------------------------------------------------

    def _require_request(self, *commands: SocksCommand) -> SocksRequest:
        if self._state is not SocksState.REQUEST_RECEIVED or self._request is None:
            raise SocksStateError(f"no SOCKS request awaiting a reply (state {self._state.name})")
        if commands and self._request.command not in commands:
            raise SocksStateError(f"reply does not fit a {self._request.command.name} request")
        return self._request

    def reply_connect_succeeded(self) -> None:
        """CONNECT worked: `05 00 00 01 0.0.0.0 0` or `00 5A 0 0.0.0.0` (C tor zeroes both)."""
        request = self._require_request(SocksCommand.CONNECT)
        if request.version == 4:
            self._outgoing += encode_socks4_reply(granted=True)
        else:
            self._outgoing += encode_socks5_reply(Socks5Reply.SUCCEEDED)
        self._state = SocksState.ESTABLISHED

    def reply_resolved_address(self, address: str) -> None:
        """RESOLVE answered with an IP (text). SOCKS4 can only carry IPv4; an IPv6 answer to a
        SOCKS4 client is a failure, as in C tor. The connection then closes."""
        request = self._require_request(SocksCommand.RESOLVE, SocksCommand.RESOLVE_PTR)
        ip = parse_ip_address(address)
        if ip is None:
            raise SocksEncodeError(f"resolved address {address!r} is not an IP address")
        if request.version == 4:
            if ip.version == 4:
                self._outgoing += encode_socks4_reply(granted=True, ipv4=str(ip))
            else:
                self._outgoing += encode_socks4_reply(granted=False)
        else:
            self._outgoing += encode_socks5_reply(Socks5Reply.SUCCEEDED, str(ip))
        self._state = SocksState.CLOSING

    def reply_resolved_hostname(self, hostname: str | bytes) -> None:
        """RESOLVE_PTR answered with a name: SOCKS5 `05 00 00 03 len name 0000`. SOCKS4 has no
        way to carry a name, and a name over 255 bytes fits nowhere: both become REP 04
        (C tor). The connection then closes."""
        request = self._require_request(SocksCommand.RESOLVE, SocksCommand.RESOLVE_PTR)
        if request.version == 4:
            self._outgoing += encode_socks4_reply(granted=False)
        else:
            try:
                name = hostname.encode("ascii") if isinstance(hostname, str) else bytes(hostname)
                self._outgoing += encode_socks5_reply(Socks5Reply.SUCCEEDED, name)
            except (UnicodeEncodeError, SocksEncodeError):
                self._outgoing += encode_socks5_failure(Socks5Reply.HOST_UNREACHABLE)
        self._state = SocksState.CLOSING

    def reply_failed(self, reply_code: int = Socks5Reply.GENERAL_FAILURE) -> None:
        """The request failed: SOCKS5 `05 REP 00 01 0.0.0.0 0`, SOCKS4 `00 5B ...`; then close.

        For a failed RESOLVE pass `Socks5Reply.HOST_UNREACHABLE` (C tor's resolve failure).
        """
        request = self._require_request()
        if request.version == 4:
            self._outgoing += encode_socks4_reply(granted=False)
        else:
            self._outgoing += encode_socks5_failure(reply_code)
        self._state = SocksState.CLOSING

    def reply_failed_for_end_reason(self, reason: int) -> None:
        """`reply_failed` with the REP C tor maps the END (or local) `reason` to."""
        self.reply_failed(socks5_reply_code_for_end_reason(reason))
