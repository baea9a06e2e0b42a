"""The control port's sessions and their hub, sans IO.

A :class:`ControlHub` is the control port of one oppy: it knows the backend (the live daemon, or a
test double), the authentication settings and every open :class:`ControlSession`, and broadcasts
events to the sessions that asked for them. A session is one controller connection: bytes in
(:meth:`ControlSession.feed`), bytes out (:meth:`ControlSession.data_to_send`). It frames commands
with the codec, lets the :class:`~oppy.control.auth.Authenticator` answer PROTOCOLINFO,
AUTHCHALLENGE, AUTHENTICATE and QUIT, and hands the others to :mod:`oppy.control.commands` and
:mod:`oppy.control.getinfo`. Events raised while a command runs go out after its reply, as tor
queues them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

from oppy import __version__
from oppy.config import parse_decimal
from oppy.control.auth import Authenticator
from oppy.control.codec import (
    ControlArguments,
    ControlCommand,
    ControlLineReader,
    ControlSyntaxError,
    FramingFailure,
    bad_arguments_reply,
    looks_like_http_request,
    parse_arguments,
    reply,
)
from oppy.control.commands import COMMANDS, INTERNAL_ERROR, UNRECOGNIZED_COMMAND, ControlBackend
from oppy.control.events import LOG_SEVERITIES, conf_changed_event, log_event, signal_event
from oppy.control.getinfo import run_getinfo
from oppy.control.status import CircuitEventTracker, StreamEventTracker

__all__ = ["TOR_COMPATIBLE_VERSION", "CONTROL_VERSION", "AuthSettings", "ControlHub", "ControlSession"]

log = logging.getLogger(__name__)

# What oppy says it is: a tor version stem accepts (>= 0.4.6.1 so its feature gates pass: notes
# section 1) with oppy's own version in parentheses, which stem's version pattern allows.
TOR_COMPATIBLE_VERSION = "0.4.9.11"
CONTROL_VERSION = f"{TOR_COMPATIBLE_VERSION} (oppy-{__version__})"

# control.c control_send_http_reject: a browser that took the control port for an HTTP proxy.
HTTP_REJECT = (
    b"HTTP/1.0 501 oppy ControlPort is not an HTTP proxy\r\n"
    b"Content-Type: text/html; charset=iso-8859-1\r\n\r\n"
    b"<html><head><title>This is oppy's ControlPort, not an HTTP proxy</title></head>\n"
    b"<body><h1>This is oppy's ControlPort, not an HTTP proxy</h1>\n"
    b"<p>Your browser is set up to use a Tor control port as its HTTP proxy. Point it at oppy's\n"
    b"SocksPort (a SOCKS proxy, 9050 by default) instead.</p></body></html>\n"
)
# tor's uint32 circuit and uint64 stream ids (control_cmd.c get_circ, get_stream).
MAX_CIRCUIT_ID = 0xFFFFFFFF
MAX_STREAM_ID = 0xFFFFFFFFFFFFFFFF
# The signals tor reports with a SIGNAL event (control_events.c control_event_signal).
REPORTED_SIGNALS = frozenset({"RELOAD", "DUMP", "DEBUG", "NEWNYM", "CLEARDNSCACHE", "HEARTBEAT", "ACTIVE",
                              "DORMANT"})


@dataclass(frozen=True)
class AuthSettings:
    """How controllers authenticate: the cookie (COOKIE, SAFECOOKIE), hashed passwords, or NULL."""

    cookie: bytes | None = None
    cookie_path: str | None = None
    hashed_passwords: tuple[str, ...] = ()

    def authenticator(self, version: str) -> Authenticator:
        return Authenticator(tor_version=version, cookie=self.cookie, cookie_path=self.cookie_path,
                             hashed_passwords=self.hashed_passwords)


# --------------------------------------------------------------------------- the hub


class ControlHub:
    """The control port of one oppy: its sessions, their event subscriptions, and the events."""

    def __init__(self, backend: ControlBackend, auth: AuthSettings = AuthSettings(),
                 version: str = CONTROL_VERSION,
                 on_subscriptions_changed: Callable[[frozenset[str]], None] = lambda events: None) -> None:
        self.backend = backend
        self.auth = auth
        self.version = version
        self.sessions: set[ControlSession] = set()
        self.circuit_events = CircuitEventTracker()
        self.stream_events = StreamEventTracker()
        #: Called when the union of subscribed events changed (the log observer's level follows it).
        self.on_subscriptions_changed = on_subscriptions_changed

    def open_session(self, wakeup: Callable[[], None] = lambda: None) -> "ControlSession":
        """A new session; ``wakeup`` is called when it has output outside of feed() (an event)."""
        session = ControlSession(self, wakeup)
        self.sessions.add(session)
        return session

    def close_session(self, session: "ControlSession") -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.subscriptions_changed()

    def subscribed(self) -> frozenset[str]:
        """Every event some session asked for."""
        events: set[str] = set()
        for session in self.sessions:
            events |= session.events
        return frozenset(events)

    def wants(self, name: str) -> bool:
        return any(name in session.events for session in self.sessions)

    def subscriptions_changed(self) -> None:
        self.on_subscriptions_changed(self.subscribed())

    def broadcast(self, name: str, payload: bytes) -> None:
        """Send an event to every authenticated session subscribed to ``name``."""
        if not payload:
            return
        for session in list(self.sessions):
            if name in session.events:
                session.deliver_event(payload)

    # ---------------------------------------------------------------- what oppy reports

    def circuit_changed(self, managed) -> None:
        events = self.circuit_events.update(managed)
        if self.wants("CIRC"):
            for event in events:
                self.broadcast("CIRC", event)

    def stream_changed(self, managed) -> None:
        events = self.stream_events.update(managed)
        if self.wants("STREAM"):
            for event in events:
                self.broadcast("STREAM", event)

    def stream_flow_changed(self, managed, status: str) -> None:
        """An XON or XOFF on a stream: ``STREAM ... XOFF_SENT`` (XOFF_RECV, XON_SENT, XON_RECV) as tor sends."""
        if self.wants("STREAM"):
            self.broadcast("STREAM", self.stream_events.flow_event(managed, status))

    def log_message(self, severity: str, message: str) -> None:
        """An oppy log record (tor severity in lower case) for the DEBUG/INFO/NOTICE/WARN/ERR events."""
        name = "WARN" if severity == "warn" else severity.upper()
        if name in LOG_SEVERITIES and self.wants(name):
            self.broadcast(name, log_event(name, message))

    def conf_changed(self, lines: Sequence[tuple[str, str | None]]) -> None:
        self.broadcast("CONF_CHANGED", conf_changed_event(lines))

    def signal_sent(self, name: str) -> None:
        if name in REPORTED_SIGNALS:
            self.broadcast("SIGNAL", signal_event(name))


# --------------------------------------------------------------------------- a session


class ControlSession:
    """One controller connection, sans IO."""

    def __init__(self, hub: ControlHub, wakeup: Callable[[], None] = lambda: None) -> None:
        self.hub = hub
        self.reader = ControlLineReader()
        self.authenticator = hub.auth.authenticator(hub.version)
        self.events: frozenset[str] = frozenset()
        self.should_close = False
        self.owning = False
        #: Called when output is ready outside of feed() (an event): the adapter writes it.
        self.wakeup = wakeup
        self._out: list[bytes] = []
        self._held_events: list[bytes] | None = None
        self._seen_bytes = b""
        self._commands_run = 0

    # ---------------------------------------------------------------- bytes

    def data_to_send(self) -> bytes:
        data = b"".join(self._out)
        self._out.clear()
        return data

    def feed(self, data: bytes) -> None:
        """Bytes from the controller; replies (and any events) wait in :meth:`data_to_send`."""
        if self.should_close or not data:
            return
        if not self.authenticator.authenticated and self._commands_run == 0 and len(self._seen_bytes) < 8:
            self._seen_bytes += data[:8]
            if looks_like_http_request(self._seen_bytes):
                self._out.append(HTTP_REJECT)
                log.info("Received HTTP request on ControlPort")
                self._close()
                return
        for item in self.reader.feed(data):
            if self.should_close:
                break
            if isinstance(item, FramingFailure):
                self._out.append(item.reply)
                self._close()
                break
            self._run(item)

    def deliver_event(self, payload: bytes) -> None:
        if self.should_close or not self.authenticator.authenticated:
            return
        if self._held_events is not None:
            self._held_events.append(payload)
            return
        self._out.append(payload)
        self.wakeup()

    def _close(self) -> None:
        self.should_close = True
        self.events = frozenset()

    # ---------------------------------------------------------------- commands

    def _run(self, command: ControlCommand) -> None:
        self._commands_run += 1
        self._held_events = []
        after: list[Callable[[], None]] = []
        try:
            try:
                outcome = self.authenticator.handle(command)
                if outcome is not None:
                    self._out.append(outcome.reply)
                    if outcome.close:
                        self._close()
                else:
                    self._out.append(self._dispatch(command, after))
            except Exception:  # a bug must not take the control port (or oppy) down
                log.exception("control command %s failed", command.keyword)
                self._out.append(reply(INTERNAL_ERROR, ["Internal error"]))
                if not self.authenticator.authenticated:
                    self._close()  # as tor does with bad input before authentication
            for action in after:
                action()
        finally:
            held, self._held_events = self._held_events, None
            if not self.should_close:
                self._out.extend(held)

    def _dispatch(self, command: ControlCommand, after: list[Callable[[], None]]) -> bytes:
        if command.data is not None:
            return reply(UNRECOGNIZED_COMMAND, [f'Unrecognized command "+{command.keyword}"'])
        handler = _HANDLERS.get(command.keyword)
        if handler is None:
            return reply(UNRECOGNIZED_COMMAND, [f'Unrecognized command "{command.keyword}"'])
        parse, run = handler
        try:
            arguments = parse(command.args)
        except ControlSyntaxError as error:
            return bad_arguments_reply(command.keyword, error)
        return run(self, arguments, after)

    # ---------------------------------------------------------------- lookups

    def find_circuit(self, text: str):
        """control_cmd.c get_circ: tor_parse_ulong(text, 10, 0, UINT32_MAX)."""
        number = parse_decimal(text, 0, MAX_CIRCUIT_ID)
        return None if number is None else self.hub.backend.manager.circuits.get(number)

    def find_stream(self, text: str):
        """control_cmd.c get_stream: tor_parse_uint64(text, 10, 0, UINT64_MAX)."""
        number = parse_decimal(text, 0, MAX_STREAM_ID)
        if number is None:
            return None
        managed = self.hub.backend.manager.streams.get(number)
        if managed is None or managed.stream.ended:
            return None
        return managed



# What a session runs after authentication: the command word -> (argument parser, command).
_HANDLERS: dict[str, tuple[Callable[[str], ControlArguments], Callable[..., bytes]]] = {
    "GETINFO": (parse_arguments, run_getinfo),
    **COMMANDS,
}
