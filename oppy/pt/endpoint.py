"""A Twisted client endpoint that reaches its target through a SOCKS5 proxy: how oppy connects to a bridge
through a pluggable transport (the transport's CMETHOD address is the proxy, the bridge is the target).

The adapter around :class:`~oppy.pt.socks5.Socks5ClientHandshake`: it connects to the proxy, runs the
handshake, and only then builds the caller's protocol, which from there on owns the TCP transport (its
producer registration, writes, close) as if it had connected directly; the bytes the proxy relayed after
its reply are handed to it first. ``connect()``'s Deferred fails with :class:`~oppy.pt.socks5.Socks5ClientError`
when the proxy refuses, and cancelling it aborts the connection.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from oppy.pt.socks5 import Socks5ClientError, Socks5ClientHandshake

__all__ = ["Socks5ProxyEndpoint"]


class _Socks5ClientProtocol(protocol.Protocol):
    """The SOCKS5 handshake on a fresh connection to the proxy, then a pass-through to the caller's protocol."""

    def __init__(self, handshake: Socks5ClientHandshake, factory: protocol.Factory, done: defer.Deferred,
                 proxy_connected: Callable[[], None]) -> None:
        self.handshake = handshake
        self.target_factory = factory
        self.done = done
        self.proxy_connected = proxy_connected
        self.wrapped: protocol.Protocol | None = None

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's naming
        self.proxy_connected()
        self.transport.write(self.handshake.greeting())

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.wrapped is not None:
            self.wrapped.dataReceived(data)
            return
        try:
            progress = self.handshake.receive(data)
        except Socks5ClientError as exc:
            self._fail(exc)
            return
        if progress.send:
            self.transport.write(progress.send)
        if progress.finished:
            self._hand_over(progress.remainder)

    def _hand_over(self, remainder: bytes) -> None:
        wrapped = self.target_factory.buildProtocol(self.transport.getPeer())
        if wrapped is None:
            self._fail(Socks5ClientError("the connection's factory refused to build a protocol"))
            return
        self.wrapped = wrapped
        wrapped.makeConnection(self.transport)
        done, self.done = self.done, None
        done.callback(wrapped)
        if remainder and self.wrapped is not None:
            wrapped.dataReceived(remainder)

    def _fail(self, exc: Exception) -> None:
        done, self.done = self.done, None
        self.transport.abortConnection()
        if done is not None:
            done.errback(Failure(exc))

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        if self.wrapped is not None:
            self.wrapped.connectionLost(reason)
        elif self.done is not None:
            done, self.done = self.done, None
            done.errback(Failure(Socks5ClientError(f"the proxy closed the connection during the SOCKS5 handshake "
                                                   f"({reason.getErrorMessage()})")))


@implementer(IStreamClientEndpoint)
class Socks5ProxyEndpoint:
    """``host``:``port`` reached through the SOCKS5 proxy at ``proxy_host``:``proxy_port`` (an IP address),
    authenticating with ``credentials`` (the bridge's packed arguments) if given. ``proxy_connected`` is
    called when the TCP connection to the proxy is up (tor's bootstrap phase conn_done_pt)."""

    def __init__(self, reactor, proxy_host: str, proxy_port: int, host: str, port: int,
                 credentials: tuple[bytes, bytes] | None = None, timeout: float = 30,
                 proxy_connected: Callable[[], None] = lambda: None) -> None:
        self.reactor = reactor
        self.proxy_host = proxy_host
        self.proxy_port = proxy_port
        self.host = host
        self.port = port
        self.credentials = credentials
        self.timeout = timeout
        self.proxy_connected = proxy_connected

    def __repr__(self) -> str:
        return f"<Socks5ProxyEndpoint {self.host}:{self.port} via {self.proxy_host}:{self.proxy_port}>"

    def connect(self, factory: protocol.Factory) -> defer.Deferred:
        endpoint_class = TCP6ClientEndpoint if ":" in self.proxy_host else TCP4ClientEndpoint
        proxy = endpoint_class(self.reactor, self.proxy_host, self.proxy_port, timeout=self.timeout)
        connection: list[_Socks5ClientProtocol] = []

        def cancel(_: defer.Deferred) -> None:
            connecting.cancel()
            if connection and connection[0].transport is not None:
                connection[0].done = None
                connection[0].transport.abortConnection()

        done = defer.Deferred(canceller=cancel)

        def build() -> _Socks5ClientProtocol:
            made = _Socks5ClientProtocol(Socks5ClientHandshake(self.host, self.port, self.credentials), factory, done,
                                         self.proxy_connected)
            connection.append(made)
            return made

        connecting = proxy.connect(protocol.Factory.forProtocol(build))

        def not_connected(failure: Failure) -> None:
            if not done.called:
                done.errback(failure)

        connecting.addErrback(not_connected)
        return done
