"""A Twisted client endpoint that reaches its target through a SOCKS5 proxy: how oppy connects to a bridge
through a pluggable transport (the transport's CMETHOD address is the proxy, the bridge is the target), and
how ``oppy.endpoints.TorClientEndpoint`` reaches a SocksPort.

The adapter around :class:`~oppy.pt.socks5.Socks5ClientHandshake`: it connects to the proxy, runs the
handshake, and only then builds the caller's protocol, which from there on owns the TCP transport (its
producer registration, writes, close) as if it had connected directly; the bytes the proxy relayed after
its reply are handed to it first. ``connect()``'s Deferred fails with :class:`~oppy.pt.socks5.Socks5ClientError`
when the proxy refuses, and cancelling it aborts the connection.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer, protocol
from twisted.internet.address import HostnameAddress
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
        host = self.handshake.host
        target = HostnameAddress(host.encode("ascii") if host.isascii() else host.encode("idna"), self.handshake.port)
        wrapped = self.target_factory.buildProtocol(target)
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
    """``host``:``port`` reached through the SOCKS5 proxy that ``proxy`` connects to, authenticating with
    ``credentials`` (a bridge's packed arguments, or an isolation credential) if given. ``proxy_connected`` is
    called when the connection to the proxy is up (tor's bootstrap phase conn_done_pt)."""

    def __init__(self, proxy: IStreamClientEndpoint, host: str, port: int,
                 credentials: tuple[bytes, bytes] | None = None,
                 proxy_connected: Callable[[], None] = lambda: None) -> None:
        self.proxy = proxy
        self.host = host
        self.port = port
        self.credentials = credentials
        self.proxy_connected = proxy_connected

    def __repr__(self) -> str:
        return f"<Socks5ProxyEndpoint {self.host}:{self.port} via {self.proxy!r}>"

    def connect(self, factory: protocol.Factory) -> defer.Deferred:
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

        connecting = self.proxy.connect(protocol.Factory.forProtocol(build))

        def not_connected(failure: Failure) -> None:
            if not done.called:
                done.errback(failure)

        connecting.addErrback(not_connected)
        return done
