"""Links over TLS with Twisted: the thin adapter around `Channel`, and the pool of open links.

The adapter moves bytes between the TLS transport and the sans-IO channel and batches outgoing cells: cells
queued while the reactor handles one event go out in a single TLS write at the end of the iteration.
"""

from __future__ import annotations

import logging

from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import defer, error, protocol, reactor as default_reactor
from twisted.internet.ssl import CertificateOptions, TLSVersion

from oppy.link.channel import Channel, ChannelState, LinkError
from oppy.link.relay import RelayTarget

log = logging.getLogger(__name__)

# How long a TCP connect plus TLS plus the link handshake may take (C tor's non-primary guard connect
# timeout is 15 s, guard-spec "MAX_NONPRIMARY_GUARD_CONNECT_TIMEOUT"; the whole circuit has its own timeout).
LINK_HANDSHAKE_TIMEOUT = 15.0


def tls_options() -> CertificateOptions:
    """TLS 1.2 or newer; no certificate verification (relays present self-signed certificates with random
    names; the link handshake's CERTS cell proves who they are), no session tickets, no compression."""
    return CertificateOptions(verify=False, raiseMinimumTo=TLSVersion.TLSv1_2, enableSessionTickets=False)


class RelayConnection(protocol.Protocol):
    """One TLS connection to one relay, carrying one Channel."""

    def __init__(self, channel: Channel, reactor) -> None:
        self.channel = channel
        self.reactor = reactor
        self.opened: defer.Deferred = defer.Deferred()
        self._flush_call = None
        self._failure: LinkError | None = None
        channel.wakeup = self._schedule_flush

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's naming
        self._flush()

    def _schedule_flush(self) -> None:
        if self._flush_call is None and self.transport is not None:
            self._flush_call = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        data = self.channel.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        channel = self.channel
        if channel.state is ChannelState.HANDSHAKING and channel.peer_certificate_der is None:
            certificate = self.transport.getPeerCertificate()
            if certificate is not None:
                channel.peer_certificate_der = certificate.to_cryptography().public_bytes(Encoding.DER)
        try:
            events = channel.receive_data(data)
        except LinkError as exc:
            self.fail(exc)
            return
        if events and not self.opened.called:
            self._flush()
            self.opened.callback(self)

    def fail(self, exc: LinkError) -> None:
        """Close the link for a protocol violation: the reason goes to the circuits and the waiter."""
        self._failure = exc
        self.channel.close(str(exc))
        if not self.opened.called:
            self.opened.errback(exc)
        if self.transport is not None:
            self.transport.abortConnection()

    def close(self) -> None:
        """Close the link on purpose (the circuits on it have been destroyed already)."""
        self._flush()
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason) -> None:  # noqa: N802
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        message = str(self._failure) if self._failure else f"link to {self.channel.peer_address} closed"
        self.channel.close(message)
        if not self.opened.called:
            self.opened.errback(self._failure or LinkError(f"{message} during the handshake: "
                                                           f"{reason.getErrorMessage()}"))


class _ConnectionFactory(protocol.ClientFactory):
    def __init__(self, connection: RelayConnection) -> None:
        self.connection = connection

    def buildProtocol(self, addr):  # noqa: N802
        return self.connection

    def clientConnectionFailed(self, connector, reason):  # noqa: N802
        if not self.connection.opened.called:
            self.connection.opened.errback(LinkError(
                f"cannot connect to {self.connection.channel.peer_address}: {reason.getErrorMessage()}"))


class LinkPool:
    """Open links by relay identity: circuits to the same first hop share one connection."""

    def __init__(self, reactor=None, handshake_timeout: float = LINK_HANDSHAKE_TIMEOUT) -> None:
        self.reactor = reactor or default_reactor
        self.handshake_timeout = handshake_timeout
        self._open: dict[bytes, RelayConnection] = {}
        self._pending: dict[bytes, list[defer.Deferred]] = {}
        self._tls = tls_options()

    def connections(self) -> list[RelayConnection]:
        return list(self._open.values())

    def get(self, relay: RelayTarget) -> defer.Deferred:
        """A Deferred firing with an open Channel to `relay`, reusing an open link when there is one."""
        connection = self._open.get(relay.rsa_id)
        if connection is not None and connection.channel.state is ChannelState.OPEN:
            return defer.succeed(connection.channel)
        waiter: defer.Deferred = defer.Deferred()
        if relay.rsa_id in self._pending:
            self._pending[relay.rsa_id].append(waiter)
            return waiter
        self._pending[relay.rsa_id] = [waiter]
        self._connect(relay)
        return waiter

    def _connect(self, relay: RelayTarget) -> None:
        channel = Channel(relay.rsa_id, relay.ed25519_id, f"{relay.address}:{relay.or_port}")
        connection = RelayConnection(channel, self.reactor)
        connector = self.reactor.connectSSL(relay.address, relay.or_port, _ConnectionFactory(connection),
                                            self._tls, timeout=self.handshake_timeout)
        timeout = self.reactor.callLater(
            self.handshake_timeout, lambda: connection.opened.called or (
                connector.disconnect(),
                connection.fail(LinkError(f"link handshake with {relay.describe()} timed out "
                                          f"after {self.handshake_timeout:.0f}s"))))

        def opened(_):
            timeout.active() and timeout.cancel()
            self._open[relay.rsa_id] = connection
            connection.opened.addBoth(lambda r: None)
            for waiter in self._pending.pop(relay.rsa_id, []):
                waiter.callback(channel)

        def failed(failure):
            timeout.active() and timeout.cancel()
            log.info("link to %s failed: %s", relay.describe(), failure.getErrorMessage())
            for waiter in self._pending.pop(relay.rsa_id, []):
                waiter.errback(failure)

        connection.opened.addCallbacks(opened, failed)
        original_lost = connection.connectionLost

        def lost(reason):
            if self._open.get(relay.rsa_id) is connection:
                del self._open[relay.rsa_id]
            original_lost(reason)

        connection.connectionLost = lost

    def close_all(self) -> None:
        for connection in list(self._open.values()):
            connection.close()
        self._open.clear()


__all__ = ["LinkPool", "RelayConnection", "tls_options", "LinkError", "error"]
