"""The SOCKS listener: a thin Twisted protocol around `SocksServerConnection`.

Each accepted client gets a `SocksClientProtocol`: bytes go into the sans-IO parser until the request is
complete, then into a Stream opened by the circuit manager (which owns the stream and hears of its progress
from it; this protocol is the stream's sink). Backpressure runs both ways through Twisted's
producer/consumer interfaces: when the stream cannot take more bytes we stop reading from the client, and
when the client stops reading what we write we stop granting stream SENDMEs to the exit.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, replace
from typing import Protocol

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from oppy.cell.commands import EndReason, reason_name
from oppy.cell.relay import ResolvedType
from oppy.circuit.addressmap import AddressMap
from oppy.circuit.isolation import ClientProtocol, StreamIsolation
from oppy.circuit.manager import ManagedStream
from oppy.closing import OpenSet
from oppy.config.options import DEFAULT_SOCKS_FLAGS
from oppy.hs.address import OnionAddress, is_onion_hostname, parse_onion_address
from oppy.hs.errors import BadOnionAddress
from oppy.link.connection import write_now
from oppy.logs import notice, safe_address
from oppy.socks.http_connect import HttpConnectServerConnection
from oppy.socks.messages import (
    LocalEndReason,
    Socks5Reply,
    SocksCommand,
    SocksEncodeError,
    is_private_address,
)
from oppy.socks.protocol import SocksFailure, SocksRequest, SocksServerConnection
from oppy.stream.stream import StreamEnd, StreamKind

log = logging.getLogger(__name__)

# C tor's SocksTimeout: how long a client may take to finish its SOCKS handshake.
DEFAULT_HANDSHAKE_TIMEOUT = 120.0
# How many SOCKS connections may be open at once before new ones are refused (oppy's own limit; C tor
# has ConnLimit for sockets in general).
DEFAULT_MAX_CONNECTIONS = 4096
# SocksPort flags this layer acts on (tor(1) SocksPort): .onion names allowed on the port, and proposal 304's
# extended onion-service error codes in SOCKS5 replies.
FLAG_ONION_TRAFFIC = "OnionTraffic"
FLAG_EXTENDED_ERRORS = "ExtendedErrors"
# proto_socks.c SOCKS_WARN_INTERVAL: the SafeSocks warning is logged at most once in this many seconds.
SOCKS_WARN_INTERVAL = 5.0
# proto_socks.c log_unsafe_socks_warning and process_socks*_request: tor's words for SafeSocks and TestSocks.
UNSAFE_SOCKS_WARNING = (
    "Your application (using socks%d to port %d) is giving Tor only an IP address. Applications that do DNS "
    "resolves themselves may leak information. Consider using Socks4A (e.g. via privoxy or socat) instead. For "
    "more information, please see https://2019.www.torproject.org/docs/faq.html.en"
    "#WarningsAboutSOCKSandDNSInformationLeaks.%s")
SAFE_SOCKS_NOTICE = ("Your application (using %s to port %d) instructed Tor to take care of the DNS resolution "
                     "itself if necessary. This is good.")


class OnionServiceConnector(Protocol):
    """Who opens streams to onion services (the onion-service client): the stream it returns is attached to a
    rendezvous circuit once one is ready, or fails with the onion-service error as `extended_error`."""

    def open_stream(self, sink, address: OnionAddress, port: int, isolation: StreamIsolation,
                    source: str | None = None) -> ManagedStream: ...


@dataclass(frozen=True, slots=True)
class SocksPortSettings:
    """What one SocksPort line says about its clients: how their streams are isolated (flags and session
    group; the client's address, protocol and credentials are added per connection), PreferSOCKSNoAuth, and
    PreferIPv6Automap (an automapped RESOLVE answers an IPv6 virtual address)."""

    isolation: StreamIsolation = StreamIsolation()
    prefer_no_auth: bool = False
    prefer_ipv6_automap: bool = True
    flags: frozenset[str] = DEFAULT_SOCKS_FLAGS  # all of the line's flags (OnionTraffic, ExtendedErrors ...)


@implementer(IPushProducer)
class SocksClientProtocol(protocol.Protocol):
    """One SOCKS client connection."""

    #: What the client speaks: the log lines' name for it.
    door_name = "SOCKS"

    def __init__(self, factory: "SocksFactory", settings: SocksPortSettings = SocksPortSettings()) -> None:
        self.factory = factory
        self.settings = settings
        self.flags = settings.flags  # the flags of the port this client came in on
        self.socks = self._handshake()
        self.managed_stream = None
        self.stream = None
        self._timeout = None
        self._closed = False
        # The stream's first data has been written (see stream_data).
        self._answered = False

    # ------------------------------------------------------------------------------ client side

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's naming
        if not self.factory.admit(self):
            self._closed = True
            self.transport.abortConnection()
            return
        self._timeout = self.factory.reactor.callLater(self.factory.handshake_timeout, self._handshake_timed_out)

    def _handshake(self) -> SocksServerConnection | HttpConnectServerConnection:
        return SocksServerConnection(prefer_no_auth=self.settings.prefer_no_auth)

    def _client_protocol(self, request: SocksRequest) -> ClientProtocol:
        return ClientProtocol.SOCKS4 if request.version == 4 else ClientProtocol.SOCKS5

    def _refused_by_safe_socks(self, request: SocksRequest, virtual: bool) -> bool:
        if virtual or self.factory.socks_type_allowed(request):
            return False
        self.socks.reply_failed(Socks5Reply.NOT_ALLOWED)
        return True

    def _handshake_timed_out(self) -> None:
        self._timeout = None
        log.info("%s client stalled in its handshake for %.0fs; closing it", self.door_name,
                 self.factory.handshake_timeout)
        self.transport.abortConnection()

    def _cancel_timeout(self) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.stream is not None:
            self.stream.write(data)
            return
        if self.managed_stream is not None or self._closed:
            return  # a resolve in progress, or closing: nothing more is read
        events = self.socks.feed(data)
        self._send_replies()
        for event in events:
            if isinstance(event, SocksRequest):
                self._cancel_timeout()
                self._request(event)
            elif isinstance(event, SocksFailure):
                log.info("%s request refused: %s", self.door_name, event.reason)
        if self.socks.should_close:
            self._close()

    def _send_replies(self) -> None:
        """The handshake's replies, handed to the socket now: the client waits on each."""
        data = self.socks.data_to_send()
        if data:
            self.transport.write(data)
            write_now(self.transport)

    def _close(self) -> None:
        self._closed = True
        self._cancel_timeout()
        # A transport with a registered producer never closes after loseConnection: when its buffer drains
        # while the producer is paused, Twisted resumes the producer instead of disconnecting (the client
        # then waits forever for the end of a download that has been delivered in full).
        if self.stream is not None:
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _refuse(self, reply: int) -> None:
        self.socks.reply_failed(reply)
        self._send_replies()
        self._close()

    def _refuse_for(self, reason: int, extended_error: int = 0) -> None:
        self._reply_failure(reason, extended_error)
        self._send_replies()
        self._close()

    def _reply_failure(self, reason: int, extended_error: int = 0) -> None:
        """Answer that the request failed for END (or local) `reason`: proposal 304's extended code instead when
        there is one and the port asked for them (tor connection_ap_handshake_socks_reply)."""
        if extended_error and FLAG_EXTENDED_ERRORS in self.flags:
            self.socks.reply_failed(extended_error)
        else:
            self.socks.reply_failed_for_end_reason(reason)

    def _onion_request(self, request: SocksRequest, hostname: str) -> None:
        """A `.onion` name (`hostname`: the request's, or the one its virtual address stands for): it never
        reaches an exit's resolver or any DNS (tor connection_ap_handshake_rewrite_and_attach and
        parse_extended_hostname)."""
        if request.command is not SocksCommand.CONNECT:
            # tor: "Resolve requests to hidden services not allowed": a RESOLVED error, HOST_UNREACHABLE.
            log.warning("Resolve requests to onion services are not allowed; refusing one")
            self._refuse(Socks5Reply.HOST_UNREACHABLE)
            return
        try:
            address = parse_onion_address(hostname)
        except BadOnionAddress as exc:
            # tor: END_STREAM_REASON_TORPROTOCOL (GENERAL_FAILURE), F6 with ExtendedErrors.
            log.warning("Invalid onion hostname; rejecting it: %s", safe_address(exc))
            self._refuse_for(EndReason.TORPROTOCOL, Socks5Reply.ONION_BAD_ADDRESS)
            return
        if FLAG_ONION_TRAFFIC not in self.flags:
            log.warning("Onion address requested from a SocksPort with NoOnionTraffic; refusing it")
            self._refuse_for(LocalEndReason.ENTRYPOLICY)
            return
        connector = self.factory.onion_services
        if connector is None:
            log.warning("oppy cannot reach onion services in this configuration; refusing %s",
                        safe_address(address.hostname))
            self._refuse(Socks5Reply.GENERAL_FAILURE)
            return
        peer = self.transport.getPeer()
        self._open(lambda: connector.open_stream(self, address, request.port, self._isolation(request, peer),
                                                 source=f"{peer.host}:{peer.port}"), StreamKind.CONNECT)

    def _refused_traffic(self, target: str) -> str | None:
        """Why the port's NoIPv4Traffic, NoIPv6Traffic or NoDNSRequest (OnionTrafficOnly clears all three)
        refuses `target`, or None (tor connection_ap_handshake_rewrite_and_attach: END_STREAM_REASON_ENTRYPOLICY)."""
        try:
            version = ipaddress.ip_address(target.strip("[]")).version
        except ValueError:
            return None if "DNSRequest" in self.flags else "the port does not take hostnames (NoDNSRequest)"
        if version == 4 and "IPv4Traffic" not in self.flags:
            return "the port does not take IPv4 addresses (NoIPv4Traffic)"
        if version == 6 and "IPv6Traffic" not in self.flags:
            return "the port does not take IPv6 addresses (NoIPv6Traffic)"
        return None

    def _isolation(self, request: SocksRequest, peer) -> StreamIsolation:
        """The stream's isolation: the port's flags and session group, the client's address, protocol and
        credentials."""
        return replace(self.settings.isolation, client_address=peer.host, protocol=self._client_protocol(request),
                       username=request.username, password=request.password)

    def _request(self, request: SocksRequest) -> None:
        factory = self.factory
        # An address AutomapHostsOnResolve handed out stands for its name (addressmap_rewrite); the application
        # resolved nothing itself, so SafeSocks lets it through (addressmap_have_mapping).
        mapped = factory.addresses.name_of(request.address) if request.command is SocksCommand.CONNECT else None
        target = mapped or request.address
        if request.command is SocksCommand.RESOLVE and factory.addresses.should_automap(request.address):
            # connection_ap_handshake_rewrite: AutomapHostsOnResolve answers with a virtual address at once.
            # An IPv6 one for SOCKS5 when the port has PreferIPv6Automap (on by default), as tor does.
            version = 6 if request.version == 5 and self.settings.prefer_ipv6_automap else 4
            self.socks.reply_resolved_address(str(factory.addresses.virtual_address(request.address, version)))
            self._send_replies()
            self._close()
            return
        if is_onion_hostname(target):
            self._onion_request(request, target)
            return
        refused = self._refused_traffic(target)
        if refused is not None:
            log.warning("Refusing a %s request: %s", self.door_name, refused)
            self._refuse_for(LocalEndReason.ENTRYPOLICY)
            return
        if self._refused_by_safe_socks(request, mapped is not None):
            self._send_replies()
            self._close()
            return
        if request.command is SocksCommand.CONNECT and not factory.allow_private_addresses \
                and is_private_address(target):
            log.info("refusing a SOCKS request for a private address (set TestingTorNetwork or "
                     "ClientRejectInternalAddresses 0 to allow it)")
            self._refuse_for(LocalEndReason.PRIVATE_ADDR)
            return
        kind = {SocksCommand.CONNECT: StreamKind.CONNECT, SocksCommand.RESOLVE: StreamKind.RESOLVE,
                SocksCommand.RESOLVE_PTR: StreamKind.RESOLVE_PTR}[request.command]
        peer = self.transport.getPeer()
        isolation = self._isolation(request, peer)
        self._open(lambda: factory.manager.open_stream(self, target, request.port, kind, isolation=isolation,
                                                       source=f"{peer.host}:{peer.port}",
                                                       original_address=request.address), kind)

    def _open(self, open_stream, kind: StreamKind) -> None:
        try:
            self.managed_stream = open_stream()
        except Exception as exc:
            log.warning("cannot open a stream: %s", exc)
            self._refuse_for(EndReason.MISC)
            return
        if kind is StreamKind.CONNECT and not self._closed:  # not failed at once
            self.stream = self.managed_stream.stream
            optimistic = self.socks.take_trailing_data()
            if optimistic:
                self.stream.write(optimistic)
            self.transport.registerProducer(self, True)

    def connectionLost(self, reason) -> None:  # noqa: N802
        self.factory.connection_lost(self)
        self._cancel_timeout()
        self._closed = True
        if self.managed_stream is not None:
            # The application closed: its last bytes still go out, then END (DONE).
            self.managed_stream.stream.close(EndReason.DONE, flush_first=True)

    # ------------------------------------------------------------------------------ IPushProducer

    def pauseProducing(self) -> None:  # noqa: N802 - the client's socket is full: stop granting SENDMEs
        if self.stream is not None:
            self.stream.pause_delivery()

    def resumeProducing(self) -> None:  # noqa: N802
        if self.stream is not None:
            self.stream.resume_delivery()

    def stopProducing(self) -> None:  # noqa: N802
        pass

    # ------------------------------------------------------------------------------ StreamSink

    def stream_connected(self, stream) -> None:
        if self._closed:
            return
        self.socks.reply_connect_succeeded()
        self._send_replies()

    def stream_resolved(self, stream, answers) -> None:
        if self._closed:
            return
        if not answers or answers[0].answer_type in (ResolvedType.ERROR_TRANSIENT, ResolvedType.ERROR_NONTRANSIENT):
            self.socks.reply_failed(Socks5Reply.HOST_UNREACHABLE)
        else:
            answer = answers[0]
            try:
                if answer.answer_type == ResolvedType.HOSTNAME:
                    self.socks.reply_resolved_hostname(answer.value)
                else:
                    self.socks.reply_resolved_address(str(answer.value))
            except SocksEncodeError:  # an answer no SOCKS reply can carry (not an IP address)
                self.socks.reply_failed(Socks5Reply.GENERAL_FAILURE)
        self._send_replies()
        self._close()

    def stream_data(self, stream, data: bytes) -> None:
        self.transport.write(data)
        if not self._answered:
            # The answer's first bytes (time to first byte) go to the socket now; the rest as Twisted writes.
            self._answered = True
            write_now(self.transport)

    def stream_writable(self, stream, writable: bool) -> None:
        if self._closed:
            return
        if writable:
            self.transport.resumeProducing()
        else:
            self.transport.pauseProducing()

    def stream_ended(self, stream, end: StreamEnd) -> None:
        if self._closed:
            return
        if end.reason == EndReason.RESOURCELIMIT and not end.remote:
            # oppy dropped the stream to stay within its memory limits (the reason is logged where that was
            # decided): reset the connection, so that the client sees an error, not a clean end of the
            # data, and what the transport still buffers for it is freed too.
            self._closed = True
            self.transport.abortConnection()
            return
        if end.before_connected:
            log.info("stream failed: %s", end)
            if stream.kind is not StreamKind.CONNECT and end.reason == EndReason.DONE:
                self.socks.reply_failed(Socks5Reply.HOST_UNREACHABLE)
            else:
                self._reply_failure(end.reason, end.extended_error)
            self._send_replies()
        elif end.remote and end.reason != EndReason.DONE:
            log.info("stream ended by the exit: %s", reason_name(EndReason, end.reason))
        self._close()


class HttpTunnelClientProtocol(SocksClientProtocol):
    """One HTTPTunnelPort client: an HTTP CONNECT request instead of a SOCKS handshake, the rest alike."""

    door_name = "HTTP CONNECT"

    def _handshake(self) -> HttpConnectServerConnection:
        return HttpConnectServerConnection()

    def _client_protocol(self, request: SocksRequest) -> ClientProtocol:
        return ClientProtocol.HTTPCONNECT

    def _refused_by_safe_socks(self, request: SocksRequest, virtual: bool) -> bool:
        return False  # SafeSocks is about SOCKS (proto_socks.c); a tunnel's target is the client's own choice


class SocksPortFactory(protocol.Factory):
    """The factory of one client port (a SocksPort, or an HTTPTunnelPort with `protocol_class`
    HttpTunnelClientProtocol): its clients get the port's settings and the shared service."""

    def __init__(self, service: "SocksFactory", settings: SocksPortSettings,
                 protocol_class: type[SocksClientProtocol] = SocksClientProtocol) -> None:
        self.service = service
        self.settings = settings
        self.protocol_class = protocol_class

    def buildProtocol(self, addr):  # noqa: N802
        return self.protocol_class(self.service, self.settings)


class SocksFactory(protocol.Factory):
    """The SOCKS service: settings shared by every SocksPort (SafeSocks, TestSocks, timeouts, the connection
    limit) and the set of open client connections. Listening on it directly gives default port settings;
    :meth:`for_port` makes the factory of one configured port."""

    def __init__(self, manager, reactor, allow_private_addresses: bool = False,
                 handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, safe_socks: bool = False,
                 test_socks: bool = False, addresses: AddressMap | None = None,
                 onion_services: OnionServiceConnector | None = None) -> None:
        self.manager = manager
        self.onion_services = onion_services
        # The virtual addresses handed out for names (AutomapHostsOnResolve), shared with the DNSPorts.
        self.addresses = addresses if addresses is not None else AddressMap()
        self.reactor = reactor
        self.allow_private_addresses = allow_private_addresses
        self.handshake_timeout = handshake_timeout
        self.max_connections = max_connections
        self.safe_socks = safe_socks
        self.test_socks = test_socks
        self.open_connections: OpenSet[SocksClientProtocol] = OpenSet()
        self._refusing = False
        self._last_unsafe_warning: float | None = None

    def buildProtocol(self, addr):  # noqa: N802
        return SocksClientProtocol(self)

    def for_port(self, settings: SocksPortSettings,
                 protocol_class: type[SocksClientProtocol] = SocksClientProtocol) -> SocksPortFactory:
        return SocksPortFactory(self, settings, protocol_class)

    def socks_type_allowed(self, request: SocksRequest) -> bool:
        """SafeSocks and TestSocks (proto_socks.c process_socks4_request, process_socks5_client_request): a
        request with an IP address the application resolved itself is refused under SafeSocks, with tor's
        warning at most every SOCKS_WARN_INTERVAL; under TestSocks the others are noted as good."""
        if request.resolved_locally:
            if not self.safe_socks:
                return True
            now = self.reactor.seconds()
            if self._last_unsafe_warning is None or now - self._last_unsafe_warning >= SOCKS_WARN_INTERVAL:
                self._last_unsafe_warning = now
                log.warning(UNSAFE_SOCKS_WARNING, request.version, request.port, " Rejecting.")
            return False
        if self.test_socks and (request.version == 5 or not request.ip_on_the_wire):
            notice(log, SAFE_SOCKS_NOTICE, "socks4a" if request.version == 4 else "socks5", request.port)
        return True

    def admit(self, connection: SocksClientProtocol) -> bool:
        """Take a new client, unless MaxSocksConnections are open: then it is refused, and that is logged
        once until a client leaves (a flood of connections makes one line, not one per connection)."""
        if len(self.open_connections) >= self.max_connections:
            if not self._refusing:
                self._refusing = True
                log.warning("Refusing new SOCKS connections: %d are open, as many as MaxSocksConnections "
                            "allows (not logged again until one closes)", len(self.open_connections))
            return False
        self.open_connections.add(connection)
        return True

    def connection_lost(self, connection: SocksClientProtocol) -> None:
        if connection in self.open_connections:
            self.open_connections.discard(connection)
            self._refusing = False

    def when_closed(self) -> defer.Deferred:
        """A Deferred firing once no client connection is open (after close_all: once the last has closed)."""
        return self.open_connections.when_empty()

    def close_all(self) -> None:
        for connection in list(self.open_connections):
            connection.transport.loseConnection()
