"""Links over TLS with Twisted: the thin adapter around `Channel`, and the pool of open links.

TLS runs in this adapter over a plain TCP transport, with the standard library's `ssl` on memory BIOs:
each TCP read is decrypted whole (every TLS record it completes) and handed to the channel as one piece,
so the cell path works per read rather than per TLS record, and the per-record cost stays in C. Outgoing
cells are batched: cells queued while the reactor handles one event go out in a single TLS write at the
end of the iteration.
"""

from __future__ import annotations

import logging
import ssl

from twisted.internet import defer, error, protocol, reactor as default_reactor

from oppy.link.channel import Channel, ChannelState, LinkError
from oppy.link.relay import RelayTarget

log = logging.getLogger(__name__)

# How long a TCP connect plus TLS plus the link handshake may take (C tor's non-primary guard connect
# timeout is 15 s, guard-spec "MAX_NONPRIMARY_GUARD_CONNECT_TIMEOUT"; the whole circuit has its own timeout).
LINK_HANDSHAKE_TIMEOUT = 15.0
# The largest plaintext one TLS record carries (RFC 8446 section 5.1): one read call returns at most this.
TLS_MAX_RECORD_PLAINTEXT = 16384
# The decrypted bytes of one read go into a buffer of this size, kept per link (it grows if a read ever
# brings more: Twisted reads at most 64 KiB from the socket at once).
PLAINTEXT_BUFFER_LEN = 96 * 1024


def tls_context() -> ssl.SSLContext:
    """TLS 1.2 or newer; no certificate verification (relays present self-signed certificates with random
    names; the link handshake's CERTS cell proves who they are), no session tickets, no compression."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION
    return context


class RelayConnection(protocol.Protocol):
    """One TLS connection to one relay, carrying one Channel."""

    def __init__(self, channel: Channel, reactor, context: ssl.SSLContext | None = None) -> None:
        self.channel = channel
        self.reactor = reactor
        self.opened: defer.Deferred = defer.Deferred()
        self._flush_call = None
        self._failure: LinkError | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = (context or tls_context()).wrap_bio(self._incoming, self._outgoing, server_side=False)
        self._tls_ready = False
        self._plaintext = bytearray(PLAINTEXT_BUFFER_LEN)
        channel.wakeup = self._schedule_flush

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's naming
        self._continue_tls_handshake()

    # ------------------------------------------------------------------------------ TLS

    def _send_tls_output(self) -> None:
        if self._outgoing.pending and self.transport is not None:
            self.transport.write(self._outgoing.read())

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

    def _schedule_flush(self) -> None:
        if self._flush_call is None and self.transport is not None:
            self._flush_call = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        if not self._tls_ready or self.transport is None:
            return  # the cells stay queued in the channel until TLS is up
        data = self.channel.data_to_send()
        if data:
            try:
                self._tls.write(data)
            except ssl.SSLError as exc:
                self.fail(LinkError(f"TLS error on the link to {self.channel.peer_address}: {exc}"))
                return
            self._send_tls_output()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
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
        if self._tls_ready:
            try:
                self._tls.unwrap()  # close_notify; the relay's answer is not waited for
            except (ssl.SSLError, OSError):
                pass
            self._send_tls_output()
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
        self._tls = tls_context()

    def connections(self) -> list[RelayConnection]:
        return list(self._open.values())

    def pending_identities(self) -> list[bytes]:
        """RSA identities of the relays a link is being opened to (for ORCONN LAUNCHED)."""
        return list(self._pending)

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
        connection = RelayConnection(channel, self.reactor, self._tls)
        connector = self.reactor.connectTCP(relay.address, relay.or_port, _ConnectionFactory(connection),
                                            timeout=self.handshake_timeout)
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


__all__ = ["LinkPool", "RelayConnection", "tls_context", "LinkError", "error"]
