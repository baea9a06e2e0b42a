"""Links over TLS with Twisted: the thin adapter around `Channel`, and the pool of open links.

TLS runs in this adapter over a plain TCP transport, with the standard library's `ssl` on memory BIOs:
each TCP read is decrypted whole (every TLS record it completes) and handed to the channel as one piece,
so the cell path works per read rather than per TLS record, and the per-record cost stays in C. Outgoing
cells are batched: cells queued while the reactor handles one event go out in a single TLS write at the
end of the iteration.

Backpressure toward a slow relay: the connection is a push producer registered with its transport. While
the transport's write buffer is full (Twisted pauses its producer above the buffer's size and resumes it
once drained), the connection stops taking cells from the channel; the channel's queue then grows past its
high watermark and the circuits on it stop packaging stream data (and their streams, once their own buffers
are full, stop reading from their SOCKS clients). When the transport drains, the queue goes out and the
circuits resume.

Padding and idle links (`oppy.link.padding`): the connection records when it last read and wrote; the pool
runs tor's once-a-second housekeeping over its open links, which closes a link left without circuits past its
idle timeout, sends keepalives, and starts a link's padding timer when its deadline is less than a second
away. When that timer fires, the link pads only if it stayed idle meanwhile.

Bridges with a pluggable transport (``Bridge obfs4 IP:PORT ...``): the pool reaches them through the
endpoint a :class:`TransportEndpoints` (the transport processes, :mod:`oppy.pt`) gives for the bridge's
transport, address and arguments, and runs TLS and the link handshake through it as over TCP.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

from twisted.internet import defer, error, protocol, reactor as default_reactor, task, tcp
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
)
from twisted.internet.interfaces import IPushProducer, IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from oppy.closing import OpenSet
from oppy.config.bridges import BridgeLine
from oppy.link.channel import QUEUE_HIGH_WATERMARK, Channel, ChannelState, LinkAuthenticationError, LinkError
from oppy.link.padding import HOUSEKEEPING_INTERVAL, Housekeeping, PaddingPolicy
from oppy.netdoc.relay import RSA_ID_LEN, RelayTarget

log = logging.getLogger(__name__)

# How long a TCP connect plus TLS plus the link handshake may take (C tor's non-primary guard connect
# timeout is 15 s, guard-spec "MAX_NONPRIMARY_GUARD_CONNECT_TIMEOUT"; the whole circuit has its own timeout).
LINK_HANDSHAKE_TIMEOUT = 15.0
# The largest plaintext one TLS record carries (RFC 8446 section 5.1): one read call returns at most this.
TLS_MAX_RECORD_PLAINTEXT = 16384
# The decrypted bytes of one read go into a buffer of this size, kept per link (it grows if a read ever
# brings more: Twisted reads at most 64 KiB from the socket at once).
PLAINTEXT_BUFFER_LEN = 96 * 1024


def write_now(transport) -> None:
    """Have Twisted hand what `transport` buffered to the socket now. Its `write` only buffers until the
    reactor polls for writability, which comes after the rest of this iteration's reads and the next poll's
    (each read of a busy link is up to 64 KiB of cells to decrypt): for the few writes somebody waits on. Not
    while closing: there doWrite's answer is what ends the connection, which only the reactor acts on."""
    if isinstance(transport, tcp.Connection) and not transport.disconnecting:
        transport.doWrite()


def tls_context() -> ssl.SSLContext:
    """TLS 1.2 or newer; no certificate verification (relays present self-signed certificates with random
    names; the link handshake's CERTS cell proves who they are), no session tickets, no compression."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION
    return context


@implementer(IPushProducer)
class RelayConnection(protocol.Protocol):
    """One TLS connection to one relay, carrying one Channel (whose `ChannelOwner` it is).

    `opened` fires with the connection once the link handshake is done, or fails with LinkError; cancelling
    it aborts the connection. `on_lost` is called once when the connection is gone.
    """

    def __init__(self, relay: RelayTarget, reactor, context: ssl.SSLContext | None = None,
                 on_lost: Callable[["RelayConnection"], None] = lambda connection: None,
                 queue_high_watermark: int = QUEUE_HIGH_WATERMARK, padding_policy: PaddingPolicy | None = None,
                 network_live: Callable[[], None] = lambda: None) -> None:
        self.relay = relay
        self.network_live = network_live
        #: Bytes this link read from and wrote to its relay, TLS included (the control port's BW events).
        self.bytes_read = 0
        self.bytes_written = 0
        self.channel = Channel(relay.rsa_id, relay.ed25519_id, _peer_address(relay), owner=self,
                               high_watermark=queue_high_watermark, padding_policy=padding_policy)
        self._padding = self.channel.padding
        self._padding_call = None
        self._circuits_allocated_seen = 0
        self.reactor = reactor
        self.on_lost = on_lost
        self.opened: defer.Deferred = defer.Deferred(canceller=self._cancel_opening)
        self._flush_call = None
        self._failure: LinkError | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = (context or tls_context()).wrap_bio(self._incoming, self._outgoing, server_side=False)
        self._tls_ready = False
        self._plaintext = bytearray(PLAINTEXT_BUFFER_LEN)
        # The transport's write buffer is full: cells stay queued in the channel.
        self._transport_paused = False

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's naming
        self.transport.registerProducer(self, True)
        # A SENDME is one small write that the relay's congestion control times as a round trip: Nagle's
        # algorithm would hold it until the previous write is acknowledged (up to the peer's delayed ACK),
        # which on a congestion-controlled circuit halved downloads. Writes are batched per reactor
        # iteration already.
        self.transport.setTcpNoDelay(True)
        self._continue_tls_handshake()

    # ------------------------------------------------------------------------------ TLS

    def _send_tls_output(self) -> None:
        if self._outgoing.pending and self.transport is not None:
            data = self._outgoing.read()
            self.bytes_written += len(data)
            self.transport.write(data)

    def _continue_tls_handshake(self) -> None:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._send_tls_output()
            return
        except (ssl.SSLError, OSError) as exc:
            self.fail(LinkError(f"TLS handshake with {self.channel.peer_address} failed: {exc}"))
            return
        self._tls_ready = True
        self.channel.peer_certificate_der = self._tls.getpeercert(binary_form=True)
        self._send_tls_output()
        self._flush()  # the VERSIONS cell, queued since the channel was made

    def _decrypt_available(self) -> int | None:
        """Decrypt every TLS record received so far into `_plaintext`; how many bytes it now holds (None
        after a TLS failure). The buffer is reused from read to read: no allocation per record, no join."""
        buffer = self._plaintext
        read = self._tls.read
        filled = 0
        try:
            while True:
                if len(buffer) - filled < TLS_MAX_RECORD_PLAINTEXT:
                    buffer.extend(bytes(len(buffer)))
                with memoryview(buffer) as view, view[filled:] as free:
                    count = read(TLS_MAX_RECORD_PLAINTEXT, free)
                if not count:
                    break
                filled += count
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            pass  # close_notify: the TCP close that follows ends the link
        except ssl.SSLError as exc:
            self.fail(LinkError(f"TLS error on the link to {self.channel.peer_address}: {exc}"))
            return None
        return filled

    # ------------------------------------------------------------------------------ cells

    def channel_data_pending(self) -> None:
        """ChannelOwner: cells were queued; they go out at the end of this reactor iteration."""
        if self._flush_call is None and self.transport is not None:
            self._flush_call = self.reactor.callLater(0, self._flush)

    def channel_data_urgent(self) -> None:
        """ChannelOwner: the cells just queued are timed by the relay (circuit SENDMEs, whose arrival the exit's
        congestion control takes as the end of a round trip) or waited for (a new stream's BEGIN and first
        DATA): TLS-encrypted and handed to the socket now, not after the rest of this read and the next reactor
        iteration's other reads."""
        if self.transport is None or self._transport_paused or self.channel.paused:
            return  # the scheduled flush takes them (a paused channel resumes its circuits there)
        if self._flush_call is not None:
            self._flush_call.cancel()
        self._flush()
        write_now(self.transport)

    def _flush(self, force: bool = False) -> None:
        self._flush_call = None
        if not self._tls_ready or self.transport is None:
            return  # the cells stay queued in the channel until TLS is up
        if self._transport_paused and not force:
            return  # resumeProducing flushes
        data = self.channel.data_to_send()
        if data:
            self._padding.last_written = self.reactor.seconds()
            try:
                self._tls.write(data)
            except ssl.SSLError as exc:
                self.fail(LinkError(f"TLS error on the link to {self.channel.peer_address}: {exc}"))
                return
            self._send_tls_output()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.bytes_read += len(data)
        self._padding.last_read = self.reactor.seconds()
        self._incoming.write(data)
        if not self._tls_ready:
            self._continue_tls_handshake()
            if not self._tls_ready:
                return
        filled = self._decrypt_available()
        if self._outgoing.pending:
            self._send_tls_output()  # TLS's own messages (key updates, alerts)
        if not filled:
            return
        self.network_live()
        channel = self.channel
        try:
            # The channel keeps nothing of the view: cells are copied out, an unfinished one too.
            with memoryview(self._plaintext) as view, view[:filled] as plaintext:
                events = channel.receive_data(plaintext)
        except LinkError as exc:
            self.fail(exc)
            return
        if events and not self.opened.called:
            self._flush()
            self.opened.callback(self)

    # ------------------------------------------------------------------------------ padding

    def _busy(self) -> bool:
        """Cells are waiting to be written: the link is not idle."""
        return self.channel.queued > 0 or self._transport_paused

    def housekeeping(self, now: float) -> None:
        """Once a second (the pool's loop): close the link if idle too long, send a keepalive or padding, or
        start the padding timer."""
        channel = self.channel
        if channel.state is not ChannelState.OPEN:
            return
        circuits = bool(channel.circuits) or channel.circuits_allocated != self._circuits_allocated_seen
        self._circuits_allocated_seen = channel.circuits_allocated
        result = self._padding.housekeeping(now, circuits, self._busy(), self._padding_call is not None)
        if result.action is Housekeeping.CLOSE_IDLE:
            reason = (f"no circuits on the link to {self.relay.describe()} for "
                      f"{now - self._padding.last_had_circuits:.0f} s (its idle timeout is "
                      f"{self._padding.idle_timeout} s)")
            log.info("Closing an idle link: %s.", reason)
            channel.close(reason)  # no longer handed out by the pool
            self.close()
        elif result.action is Housekeeping.SEND_KEEPALIVE:
            log.debug("Sending a keepalive to %s.", self.relay.describe())
            channel.send_padding()
        elif result.action is Housekeeping.SEND_PADDING:
            self._send_padding(now)
        elif result.action is Housekeeping.SCHEDULE_PADDING:
            self._padding_call = self.reactor.callLater(result.delay, self._padding_timer_fired)

    def _padding_timer_fired(self) -> None:
        self._padding_call = None
        if self.channel.state is ChannelState.OPEN and self._padding.padding_due(self._busy()):
            self._send_padding(self.reactor.seconds())

    def _send_padding(self, now: float) -> None:
        log.info("Sending netflow keepalive to %s after %.0f ms idle.", self.relay.describe(),
                 (now - self._padding.last_activity) * 1000)
        self.channel.send_padding()

    # ------------------------------------------------------------------------------ IPushProducer

    def pauseProducing(self) -> None:  # noqa: N802 - the transport's write buffer is full
        self._transport_paused = True

    def resumeProducing(self) -> None:  # noqa: N802 - it has drained
        self._transport_paused = False
        self._flush()

    def stopProducing(self) -> None:  # noqa: N802 - connectionLost follows
        pass

    # ------------------------------------------------------------------------------ closing

    def fail(self, exc: LinkError) -> None:
        """Close the link for a protocol violation: the reason goes to the circuits and the waiter."""
        self._failure = exc
        self.channel.close(str(exc))
        if not self.opened.called:
            self.opened.errback(exc)
        if self.transport is not None:
            self.transport.abortConnection()

    def _cancel_opening(self, _: defer.Deferred) -> None:
        self.fail(LinkError(f"the link to {self.relay.describe()} was given up during its handshake"))

    def close(self) -> None:
        """Close the link on purpose (the circuits on it have been destroyed already)."""
        self._flush(force=True)
        if self._tls_ready:
            try:
                self._tls.unwrap()  # close_notify; the relay's answer is not waited for
            except (ssl.SSLError, OSError):
                pass
            self._send_tls_output()
        if self.transport is not None:
            # A transport with a registered producer does not close once its buffer drains: it resumes
            # the producer instead.
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def connectionLost(self, reason) -> None:  # noqa: N802
        for call in (self._flush_call, self._padding_call):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._padding_call = None
        self.on_lost(self)
        message = str(self._failure) if self._failure else f"link to {self.channel.peer_address} closed"
        self.channel.close(message)
        if not self.opened.called:
            self.opened.errback(self._failure or LinkError(f"{message} during the handshake: "
                                                           f"{reason.getErrorMessage()}"))


def _peer_address(relay: RelayTarget) -> str:
    host = f"[{relay.address}]" if ":" in relay.address else relay.address
    return f"{host}:{relay.or_port}"


def relay_endpoint(reactor, relay: RelayTarget, timeout: float):
    """The client endpoint for a relay's ORPort: TCP over IPv4 or IPv6 for an address, else by name."""
    try:
        version = ipaddress.ip_address(relay.address).version
    except ValueError:
        return HostnameEndpoint(reactor, relay.address, relay.or_port, timeout=timeout)
    endpoint_class = TCP4ClientEndpoint if version == 4 else TCP6ClientEndpoint
    return endpoint_class(reactor, relay.address, relay.or_port, timeout=timeout)


class TransportEndpoints(Protocol):
    """Who connects to bridges through pluggable transports (the client transports oppy runs or is told
    of: ClientTransportPlugin)."""

    def provides(self, transport: str) -> bool:
        """Is ``transport`` configured (whether or not its proxy is up yet)?"""

    def endpoint(self, transport: str, address: str, port: int,
                 args: tuple[tuple[str, str], ...]) -> IStreamClientEndpoint:
        """An endpoint whose ``connect`` fires with the protocol connected, through the transport's proxy, to
        the bridge at ``address``:``port`` (the SOCKS handshake carrying ``args`` done), or fails saying
        why (the proxy is not up, refused, ...)."""


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """Something happened to the link to this relay."""

    relay: RelayTarget


@dataclass(frozen=True, slots=True)
class LinkLaunched(LinkEvent):
    """A TCP connection to a relay's ORPort is being made; to a bridge's pluggable ``transport`` (its name)
    when the bridge is reached through one (tor's bootstrap says conn_pt then, not conn)."""

    transport: str | None = None


@dataclass(frozen=True, slots=True)
class LinkConnected(LinkEvent):
    """The TCP connection is up; TLS and the link handshake begin."""


@dataclass(frozen=True, slots=True)
class LinkOpened(LinkEvent):
    """The link handshake is done (the relay proved its identity): circuits may be created on it."""


@dataclass(frozen=True, slots=True)
class LinkFailed(LinkEvent):
    """The link could not be opened; `reason` says why, `or_reason` is control-spec's ORCONN reason for it
    (CONNECTREFUSED, IDENTITY, TIMEOUT, NOROUTE, PT_MISSING or MISC), as tor's bootstrap problems name it."""

    reason: str
    or_reason: str = "MISC"


class LinkTimeoutError(LinkError):
    """TCP, TLS and the link handshake took longer than the handshake timeout (ORCONN reason TIMEOUT)."""


class LinkTransportError(LinkError):
    """No pluggable transport provides what a bridge's line names (ORCONN reason PT_MISSING)."""


def or_conn_reason(failure: Failure) -> str:
    """control-spec's ORCONN reason for a link that could not be opened (tor
    orconn_end_reason_to_control_string)."""
    for kinds, reason in (((LinkAuthenticationError,), "IDENTITY"), ((LinkTransportError,), "PT_MISSING"),
                          ((LinkTimeoutError, error.TimeoutError, defer.TimeoutError), "TIMEOUT"),
                          ((error.ConnectionRefusedError,), "CONNECTREFUSED"), ((error.NoRouteError,), "NOROUTE")):
        if failure.check(*kinds):
            return reason
    return "MISC"


def _link_key(relay: RelayTarget) -> bytes:
    """Links are shared by relay identity; a bridge dialled without one (its Bridge line gives no
    fingerprint) by its address and port, which no RSA identity can equal (not 20 bytes)."""
    return relay.rsa_id or f"@{relay.address}:{relay.or_port}".encode()


class LinkPool:
    """Open links by relay identity: circuits to the same first hop share one connection.

    Observers hear each link's progress as typed events (tor's OR connection states, which drive the
    bootstrap phases conn, conn_done, handshake and handshake_done)."""

    def __init__(self, reactor=None, handshake_timeout: float = LINK_HANDSHAKE_TIMEOUT,
                 queue_high_watermark: int = QUEUE_HIGH_WATERMARK, padding: PaddingPolicy | None = None,
                 network_live: Callable[[], None] = lambda: None,
                 observers: Iterable[Callable[[LinkEvent], None]] = (),
                 bridges: Iterable[BridgeLine] = (), transports: TransportEndpoints | None = None) -> None:
        """`network_live` is called whenever a relay's bytes arrive on any link (for the circuit build
        timeout's network liveness, circuitstats.c circuit_build_times_network_is_live). A link to one of
        the `bridges` that names a transport goes through `transports`."""
        self.reactor = reactor or default_reactor
        self.network_live = network_live
        self.handshake_timeout = handshake_timeout
        self.queue_high_watermark = queue_high_watermark
        # Shared by every link: the daemon updates its consensus parameters.
        self.padding = padding if padding is not None else PaddingPolicy()
        self._open: dict[bytes, RelayConnection] = {}
        self._pending: dict[bytes, list[defer.Deferred]] = {}
        # Every link whose socket may be open (connecting, handshaking or open), and their opening Deferreds:
        # close_all gives up the openings, and when_closed waits until no link is live.
        self._live: OpenSet[RelayConnection] = OpenSet()
        self._openings: dict[RelayConnection, defer.Deferred] = {}
        self._tls = tls_context()
        # tor's connection housekeeping, while any link is open.
        self._housekeeping = task.LoopingCall(self._housekeep)
        self._housekeeping.clock = self.reactor
        self._observers = list(observers)
        # By address and port, as tor matches a link to its Bridge line (bridges.c
        # get_configured_bridge_by_addr_port_digest): a line may give no fingerprint.
        self._transport_bridges = {(line.address, line.port): line for line in bridges
                                   if line.transport is not None}
        #: The RSA identity each link dialled without one (a bridge whose line gives no fingerprint) proved,
        #: by address and port: what the client learned of it (tor connection_or_client_learned_peer_id).
        self._proven: dict[tuple[str, int], bytes] = {}
        self.transports = transports

    def add_observer(self, observer: Callable[[LinkEvent], None]) -> None:
        self._observers.append(observer)

    def remove_observer(self, observer: Callable[[LinkEvent], None]) -> None:
        self._observers = [known for known in self._observers if known != observer]

    def _notify(self, event: LinkEvent) -> None:
        for observer in list(self._observers):
            try:
                observer(event)
            except Exception:  # an observer's bug must not break the link
                log.exception("link pool observer %r failed", observer)

    def connections(self) -> list[RelayConnection]:
        return list(dict.fromkeys(self._open.values()))     # (a bridge's link is there by address and identity)

    def pending_identities(self) -> list[bytes]:
        """RSA identities of the relays a link is being opened to (for ORCONN LAUNCHED); a bridge dialled
        without one is not named."""
        return [key for key in self._pending if len(key) == RSA_ID_LEN]

    def proven_identity(self, address: str, port: int) -> bytes | None:
        """The RSA identity the last link dialled at ``address:port`` without an expected identity proved."""
        return self._proven.get((address, port))

    def get(self, relay: RelayTarget) -> defer.Deferred:
        """A Deferred firing with an open Channel to `relay`, reusing an open link when there is one."""
        key = _link_key(relay)
        connection = self._open.get(key)
        if connection is not None and connection.channel.state is ChannelState.OPEN:
            return defer.succeed(connection.channel)
        waiter: defer.Deferred = defer.Deferred()
        if key in self._pending:
            self._pending[key].append(waiter)
            return waiter
        self._pending[key] = [waiter]
        self._connect(relay)
        return waiter

    def _connect(self, relay: RelayTarget) -> None:
        """TCP, TLS and the link handshake as one Deferred, given up (cancelled) after the handshake timeout."""
        connection = RelayConnection(relay, self.reactor, self._tls, on_lost=self._lost,
                                     queue_high_watermark=self.queue_high_watermark, padding_policy=self.padding,
                                     network_live=self.network_live)
        key = _link_key(relay)
        bridge = self._transport_bridges.get((relay.address, relay.or_port))
        self._notify(LinkLaunched(relay, bridge.transport if bridge is not None else None))
        try:
            endpoint = self._endpoint(relay)
        except LinkError as exc:
            opening: defer.Deferred = defer.fail(exc)
        else:
            opening = connectProtocol(endpoint, connection)
        self._live.add(connection)
        self._openings[connection] = opening

        def connected(_):
            self._notify(LinkConnected(relay))
            return connection.opened

        opening.addCallback(connected)

        def timed_out(result, timeout):
            return Failure(LinkTimeoutError(f"link handshake with {relay.describe()} timed out after {timeout:.0f}s"))

        opening.addTimeout(self.handshake_timeout, self.reactor, onTimeoutCancel=timed_out)

        def opened(_):
            self._open[key] = connection
            if not relay.rsa_id:
                identity = connection.channel.identity
                assert identity is not None
                self._proven[(relay.address, relay.or_port)] = identity.rsa_id
                # Circuits to the identity learned share the link (tor connection_or_set_identity_digest).
                self._open.setdefault(identity.rsa_id, connection)
                log.info("Bridge at %s:%d proved the identity $%s.", relay.address, relay.or_port,
                         identity.rsa_id.hex().upper())
            local = connection.transport.getHost()
            log.info("Link to %s open (link protocol %d) from %s:%d.", relay.describe(),
                     connection.channel.link_version, local.host, local.port)
            if not self._housekeeping.running:
                self._housekeeping.start(HOUSEKEEPING_INTERVAL, now=False)
            self._notify(LinkOpened(relay))
            for waiter in self._pending.pop(key, []):
                waiter.callback(connection.channel)

        def failed(failure):
            reason = or_conn_reason(failure)
            if not failure.check(LinkError):
                failure = Failure(LinkError(f"cannot connect to {connection.channel.peer_address}: "
                                            f"{failure.getErrorMessage()}"))
            if connection.transport is None:  # never connected: no socket to wait for
                self._gone(connection)
            log.info("link to %s failed: %s", relay.describe(), failure.getErrorMessage())
            self._notify(LinkFailed(relay, failure.getErrorMessage(), reason))
            for waiter in self._pending.pop(key, []):
                waiter.errback(failure)

        opening.addCallbacks(opened, failed)

    def _endpoint(self, relay: RelayTarget) -> IStreamClientEndpoint:
        """TCP to the relay's ORPort, or the transport's endpoint for a bridge that names one."""
        line = self._transport_bridges.get((relay.address, relay.or_port))
        if line is None:
            return relay_endpoint(self.reactor, relay, self.handshake_timeout)
        assert line.transport is not None
        if self.transports is None or not self.transports.provides(line.transport):
            raise LinkTransportError(f"bridge {relay.describe()} needs the pluggable transport '{line.transport}', "
                                     "which no ClientTransportPlugin line provides")
        return self.transports.endpoint(line.transport, line.address, line.port, line.args)

    def _housekeep(self) -> None:
        now = self.reactor.seconds()
        for connection in self.connections():
            connection.housekeeping(now)

    def _gone(self, connection: RelayConnection) -> None:
        self._openings.pop(connection, None)
        self._live.discard(connection)

    def when_closed(self) -> defer.Deferred:
        """A Deferred firing once no link has a socket open (after close_all: when the last one is closed)."""
        return self._live.when_empty()

    def _lost(self, connection: RelayConnection) -> None:
        self._gone(connection)
        for key in [key for key, known in self._open.items() if known is connection]:
            del self._open[key]
        if not self._open and self._housekeeping.running:
            self._housekeeping.stop()

    def close_all(self) -> None:
        """Close every open link and give up those still opening."""
        for connection in self.connections():
            connection.close()
        self._open.clear()
        for opening in list(self._openings.values()):
            opening.cancel()  # nothing happens to one that has opened
        if self._housekeeping.running:
            self._housekeeping.stop()


__all__ = ["LinkPool", "RelayConnection", "TransportEndpoints", "relay_endpoint", "tls_context", "LinkError",
           "error", "LinkEvent", "LinkLaunched", "LinkConnected", "LinkOpened", "LinkFailed", "LinkTimeoutError",
           "LinkTransportError", "or_conn_reason"]
