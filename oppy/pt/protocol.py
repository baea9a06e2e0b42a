"""The managed-proxy protocol (torspec pt-spec, version 1) as a sans-IO core: environment out, lines in.

oppy launches a client transport ("managed proxy") with the environment of
:func:`managed_proxy_environment` and feeds whatever it writes on stdout to a
:class:`ManagedProxyConfiguration`, which returns typed events: the transports it serves
(:class:`ClientMethod`), the ones it could not start (:class:`ClientMethodError`), when it is done
(:class:`ProxyConfigured`), its log lines and status reports (:class:`LogMessage`, :class:`StatusMessage`),
and, if it breaks the protocol, :class:`ProxyBroken` once (after which the adapter stops it).

What counts as broken follows tor's ``handle_proxy_line`` (transports.c): a message out of order, a
malformed VERSION/CMETHOD, VERSION-ERROR, ENV-ERROR and PROXY-ERROR. A malformed LOG or STATUS line is
reported (:class:`MalformedLine`) but breaks nothing; a line with an unknown keyword is ignored
(pt-spec 3.3: "The parent process MUST ignore lines received from PT proxies with unknown keywords"),
and reported once, so that a binary printing something else entirely is visible in the log.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from oppy.cstring import CStringError, unescape_cstring
from oppy.logs import NOTICE

__all__ = [
    "PT_PROTOCOL_VERSION",
    "TransportProtocolError",
    "is_transport_name",
    "managed_proxy_environment",
    "parse_kvline",
    "Version",
    "FatalMessage",
    "VersionError",
    "EnvError",
    "ProxyDone",
    "ProxyError",
    "ClientMethod",
    "ClientMethodError",
    "ClientMethodsDone",
    "LogMessage",
    "StatusMessage",
    "UnknownLine",
    "ProxyMessage",
    "parse_line",
    "split_address",
    "shown",
    "MalformedLine",
    "ProxyConfigured",
    "ProxyBroken",
    "ProxyEvent",
    "ManagedProxyConfiguration",
    "MAX_LINE_LENGTH",
]

#: pt-spec 3.2.1 "TOR_PT_MANAGED_TRANSPORT_VER": the one version this document (and oppy) speaks.
PT_PROTOCOL_VERSION = "1"
#: pt-spec 3.1: transport names are C identifiers.
_TRANSPORT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: pt-spec 3.3 <KeywordChar>: US-ASCII alphanumerics, dash and underscore.
_KEYWORD = re.compile(r"[A-Za-z0-9_-]+")
#: No managed proxy writes a line anywhere near this long; one that does is garbage, not a message.
MAX_LINE_LENGTH = 64 * 1024
#: pt-spec 3.3.4: LOG severities -> Python levels (tor transports.c managed_proxy_severity_parse).
LOG_SEVERITIES = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": NOTICE,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# tor kvline.c: what separates K=V items.
_KVLINE_SPACE = " \t\r\v\n"


class TransportProtocolError(ValueError):
    """A line from a managed proxy that does not follow pt-spec (or a name that is no transport name)."""


def is_transport_name(name: str) -> bool:
    """pt-spec 3.1: "[a-zA-Z_][a-zA-Z0-9_]*"."""
    return _TRANSPORT_NAME.fullmatch(name) is not None


def managed_proxy_environment(transports: Sequence[str], state_location: str, *,
                              inherited: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a client managed proxy (pt-spec 3.2.1 and 3.2.2; tor transports.c
    create_managed_proxy_environment): oppy's own environment plus the TOR_PT_ variables.

    ``state_location`` is DataDirectory/pt_state/ (tor passes it with the trailing slash); stdin stays
    open and its close asks the proxy to exit (TOR_PT_EXIT_ON_STDIN_CLOSE=1, pt-spec 3.4).
    """
    for name in transports:
        if not is_transport_name(name):
            raise TransportProtocolError(f"'{name}' is not a transport name (pt-spec 3.1: a C identifier)")
    environment = dict(os.environ if inherited is None else inherited)
    environment.update({
        "TOR_PT_MANAGED_TRANSPORT_VER": PT_PROTOCOL_VERSION,
        "TOR_PT_STATE_LOCATION": state_location,
        "TOR_PT_CLIENT_TRANSPORTS": ",".join(transports),
        "TOR_PT_EXIT_ON_STDIN_CLOSE": "1",
    })
    # pt-spec 3.2.2: MUST be omitted without an upstream proxy, and oppy has no Socks5Proxy/HTTPSProxy option.
    environment.pop("TOR_PT_PROXY", None)
    return environment


# ------------------------------------------------------------------------------------ quoted values


def parse_kvline(text: str) -> list[tuple[str, str]]:
    """Space-separated ``K=V`` / ``K="quoted"`` items, as tor's kvline_parse(KV_QUOTED) reads LOG and STATUS
    lines: every item needs a non-empty key; an unquoted value ends at white space; a quoted one is a CString
    (oppy.cstring) without NUL."""
    items = []
    position = 0
    while True:
        while position < len(text) and text[position] in _KVLINE_SPACE:
            position += 1
        if position >= len(text):
            return items
        equals = position
        while equals < len(text) and text[equals] not in _KVLINE_SPACE and text[equals] != "=":
            equals += 1
        if equals >= len(text) or text[equals] != "=" or equals == position:
            raise TransportProtocolError(f"expected KEY=VALUE at {shown(text[position:])}")
        key = text[position:equals]
        position = equals + 1
        if position < len(text) and text[position] == '"':
            try:
                raw, position = unescape_cstring(text, position)
            except CStringError as exc:
                raise TransportProtocolError(str(exc)) from None
            if b"\0" in raw:  # tor kvline.c: "The string contains a NUL"
                raise TransportProtocolError(f"a NUL in the quoted value of {key}")
            value = raw.decode("utf-8", "backslashreplace")
        else:
            end = position
            while end < len(text) and text[end] not in _KVLINE_SPACE:
                end += 1
            value, position = text[position:end], end
        items.append((key, value))


def shown(text: str, limit: int = 120) -> str:
    """``text`` as a log line shows it: repr-quoted, cut to ``limit`` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


# ------------------------------------------------------------------------------------ messages


@dataclass(frozen=True, slots=True)
class Version:
    """pt-spec 3.3.1 "VERSION <ProtocolVersion>"."""

    version: str


@dataclass(frozen=True, slots=True)
class FatalMessage:
    """A message after which the proxy exits (pt-spec: it MUST terminate); ``message`` is its reason."""

    message: str
    #: The message's keyword, and what it means for oppy, in words.
    keyword: ClassVar[str] = ""
    meaning: ClassVar[str] = ""


class VersionError(FatalMessage):
    """pt-spec 3.3.1 "VERSION-ERROR <ErrorMessage>": no common version."""

    __slots__ = ()
    keyword = "VERSION-ERROR"
    meaning = "it supports no version we speak"


class EnvError(FatalMessage):
    """pt-spec 3.3.1 "ENV-ERROR <ErrorMessage>": the proxy could not use its environment."""

    __slots__ = ()
    keyword = "ENV-ERROR"
    meaning = "it could not use the environment we gave it"


class ProxyError(FatalMessage):
    """pt-spec 3.3.2 "PROXY-ERROR <ErrorMessage>": the upstream proxy of TOR_PT_PROXY is unusable."""

    __slots__ = ()
    keyword = "PROXY-ERROR"
    meaning = "it cannot use the upstream proxy"


@dataclass(frozen=True, slots=True)
class ProxyDone:
    """pt-spec 3.3.2 "PROXY DONE": the upstream proxy of TOR_PT_PROXY is accepted."""


class SocksVersion(enum.Enum):
    """The proxy protocol a CMETHOD line names."""

    SOCKS4 = "socks4"
    SOCKS5 = "socks5"


@dataclass(frozen=True, slots=True)
class ClientMethod:
    """pt-spec 3.3.2 "CMETHOD <transport> <'socks4','socks5'> <address:port>": where a transport listens."""

    transport: str
    socks: SocksVersion
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class ClientMethodError:
    """pt-spec 3.3.2 "CMETHOD-ERROR <transport> <ErrorMessage>": that transport could not be launched."""

    transport: str
    message: str


@dataclass(frozen=True, slots=True)
class ClientMethodsDone:
    """pt-spec 3.3.2 "CMETHODS DONE": every transport is up or has failed."""


@dataclass(frozen=True, slots=True)
class LogMessage:
    """pt-spec 3.3.4 "LOG SEVERITY=Severity MESSAGE=Message"; ``level`` is the Python level it maps to."""

    severity: str
    level: int
    message: str


@dataclass(frozen=True, slots=True)
class StatusMessage:
    """pt-spec 3.3.5 "STATUS TRANSPORT=Transport <K_1>=<V_1> [<K_2>=<V_2> ...]"."""

    transport: str
    values: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class UnknownLine:
    """A well-formed line with a keyword pt-spec does not define (ignored, pt-spec 3.3)."""

    keyword: str
    line: str


ProxyMessage = (Version | VersionError | EnvError | ProxyDone | ProxyError | ClientMethod | ClientMethodError
                | ClientMethodsDone | LogMessage | StatusMessage | UnknownLine)


def split_address(text: str) -> tuple[str, int]:
    """"127.0.0.1:5555" or "[::1]:5555": an IP address (pt-spec 3.3.2 names no host names) and a port."""
    host, colon, port_text = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise TransportProtocolError(f"expected IP:PORT, got {shown(text)}") from None
    if not colon or (address.version == 6) != bracketed:
        raise TransportProtocolError(f"expected IP:PORT ([IPv6]:PORT), got {shown(text)}")
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) <= 0xFFFF:
        raise TransportProtocolError(f"bad port in {shown(text)}")
    return host, int(port_text)


def _transport(name: str) -> str:
    if not is_transport_name(name):
        raise TransportProtocolError(f"transport name {shown(name)} is not a C identifier (pt-spec 3.1)")
    return name


def _required_message(keyword: str, rest: str) -> str:
    if not rest:
        raise TransportProtocolError(f"{keyword} without a message")
    return rest


def _parse_log(rest: str) -> LogMessage:
    values = dict(parse_kvline(rest))
    if "SEVERITY" not in values or "MESSAGE" not in values:
        raise TransportProtocolError(f"LOG line without SEVERITY= and MESSAGE=: {shown(rest)}")
    severity = values["SEVERITY"]
    if severity not in LOG_SEVERITIES:
        raise TransportProtocolError(f"LOG line with an unknown severity {shown(severity)}")
    return LogMessage(severity, LOG_SEVERITIES[severity], values["MESSAGE"])


def _parse_status(rest: str) -> StatusMessage:
    items = parse_kvline(rest)
    transports = [value for key, value in items if key == "TRANSPORT"]
    others = tuple((key, value) for key, value in items if key != "TRANSPORT")
    if len(transports) != 1 or not others:
        raise TransportProtocolError(f"STATUS line needs one TRANSPORT= and at least one other K=V: {shown(rest)}")
    return StatusMessage(transports[0], others)


_FATAL_MESSAGES = {kind.keyword: kind for kind in (VersionError, EnvError, ProxyError)}


def parse_line(line: str) -> ProxyMessage:
    """One line a managed proxy wrote (without its newline) as a message; raises
    :class:`TransportProtocolError` if it breaks the line format of pt-spec 3.3 or of its message."""
    if "\0" in line or not line.isascii() and not line.startswith(("LOG ", "STATUS ")):
        raise TransportProtocolError(f"not a pt-spec line (NUL or non-ASCII): {shown(line)}")
    keyword, _, rest = line.partition(" ")
    if not _KEYWORD.fullmatch(keyword):
        raise TransportProtocolError(f"not a pt-spec line: {shown(line)}")
    words = rest.split()
    if keyword == "VERSION":
        if len(words) != 1:
            raise TransportProtocolError(f"malformed VERSION line: {shown(line)}")
        return Version(words[0])
    fatal = _FATAL_MESSAGES.get(keyword)
    if fatal is not None:
        return fatal(_required_message(keyword, rest.strip()))
    if keyword == "PROXY" and words == ["DONE"]:
        return ProxyDone()
    if keyword == "CMETHODS" and words == ["DONE"]:
        return ClientMethodsDone()
    if keyword == "CMETHOD":
        # tor's parse_method_line_helper reads the first three words and ignores any further ones.
        if len(words) < 3:
            raise TransportProtocolError(f"CMETHOD line with too few arguments: {shown(line)}")
        try:
            socks = SocksVersion(words[1])
        except ValueError:
            raise TransportProtocolError(f"CMETHOD with an unknown proxy protocol {shown(words[1])}") from None
        host, port = split_address(words[2])
        return ClientMethod(_transport(words[0]), socks, host, port)
    if keyword == "CMETHOD-ERROR":
        if len(words) < 2:
            raise TransportProtocolError(f"CMETHOD-ERROR line without a transport and a message: {shown(line)}")
        return ClientMethodError(_transport(words[0]), rest.strip().split(None, 1)[1])
    if keyword == "LOG":
        return _parse_log(rest)
    if keyword == "STATUS":
        return _parse_status(rest)
    return UnknownLine(keyword, line)


# ------------------------------------------------------------------------------------ the state machine


class _State(enum.Enum):
    """tor transports.c pt_proto_state, the client half."""

    LAUNCHED = "launched"                    # waiting for VERSION
    ACCEPTING_METHODS = "accepting methods"  # PROXY DONE, CMETHOD(-ERROR) until CMETHODS DONE
    CONFIGURED = "configured"
    BROKEN = "broken"


@dataclass(frozen=True, slots=True)
class MalformedLine:
    """A LOG or STATUS line (or an unknown one, the first time) that the log should show; nothing broke."""

    line: str
    reason: str


@dataclass(frozen=True, slots=True)
class ProxyConfigured:
    """CMETHODS DONE: the transports the proxy serves (by name) and those it reported it could not start."""

    methods: Mapping[str, ClientMethod]
    errors: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ProxyBroken:
    """The proxy broke the protocol or reported a fatal error; it cannot be used and should be stopped."""

    reason: str


ProxyEvent = (ClientMethod | ClientMethodError | LogMessage | StatusMessage | MalformedLine | ProxyConfigured
              | ProxyBroken)


class ManagedProxyConfiguration:
    """One launch of a managed proxy, from its first byte on stdout: bytes in, :data:`ProxyEvent` out.

    ``transports`` are the names asked for in TOR_PT_CLIENT_TRANSPORTS. TOR_PT_PROXY is never set, so a
    PROXY DONE (pt-spec 3.3.2) is out of place.
    """

    def __init__(self, transports: Sequence[str]) -> None:
        self.transports = tuple(transports)
        self._state = _State.LAUNCHED
        self._buffer = bytearray()
        self._methods: dict[str, ClientMethod] = {}
        self._errors: dict[str, str] = {}
        self._unknown_reported = False

    @property
    def configured(self) -> bool:
        return self._state is _State.CONFIGURED

    @property
    def broken(self) -> bool:
        return self._state is _State.BROKEN

    def feed(self, data: bytes) -> list[ProxyEvent]:
        """Any fragment of the proxy's stdout; the events of every line it completes."""
        if self.broken:
            return []
        self._buffer += data
        events: list[ProxyEvent] = []
        while not self.broken:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                if len(self._buffer) > MAX_LINE_LENGTH:
                    events.append(self._break(f"a line longer than {MAX_LINE_LENGTH} bytes"))
                break
            raw = bytes(self._buffer[:newline])
            del self._buffer[:newline + 1]
            events.extend(self.receive_line(raw.rstrip(b"\r").decode("utf-8", "backslashreplace")))
        return events

    def receive_line(self, line: str) -> list[ProxyEvent]:
        """One complete line (without its newline)."""
        if self.broken:
            return []
        try:
            message = parse_line(line)
        except TransportProtocolError as exc:
            if line.startswith(("LOG ", "STATUS ")):
                return [MalformedLine(line, str(exc))]  # tor: a warning, the proxy stays
            return [self._break(str(exc))]
        return self._receive(message, line)

    def _break(self, reason: str) -> ProxyBroken:
        self._state = _State.BROKEN
        self._buffer.clear()
        return ProxyBroken(reason)

    def _out_of_order(self, line: str) -> ProxyBroken:
        return self._break(f"{shown(line)} is out of order (while {self._state.value})")

    def _receive(self, message: ProxyMessage, line: str) -> list[ProxyEvent]:
        state = self._state
        if isinstance(message, (LogMessage, StatusMessage)):
            return [message]
        if isinstance(message, UnknownLine):
            if self._unknown_reported:
                return []
            self._unknown_reported = True
            return [MalformedLine(line, f"unknown keyword {shown(message.keyword)} (ignored)")]
        if isinstance(message, FatalMessage):
            return [self._break(f"{message.meaning} ({message.keyword} {message.message})")]
        if isinstance(message, Version):
            if state is not _State.LAUNCHED:
                return [self._out_of_order(line)]
            if message.version != PT_PROTOCOL_VERSION:
                return [self._break(f"it chose version {shown(message.version)}; we only speak version 1")]
            self._state = _State.ACCEPTING_METHODS
            return []
        if state is not _State.ACCEPTING_METHODS:
            return [self._out_of_order(line)]
        if isinstance(message, ProxyDone):
            return [self._break("it sent PROXY DONE but was given no upstream proxy")]
        if isinstance(message, ClientMethod):
            self._methods[message.transport] = message
            return [message]
        if isinstance(message, ClientMethodError):
            self._errors[message.transport] = message.message
            return [message]
        assert isinstance(message, ClientMethodsDone)
        self._state = _State.CONFIGURED
        return [ProxyConfigured(dict(self._methods), dict(self._errors))]
