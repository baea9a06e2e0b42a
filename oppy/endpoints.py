"""Twisted client endpoints that connect through oppy (the txtorcon way).

``TorClientEndpoint(host, port, tor=running_oppy)`` carries the connection as a stream of an oppy running in
this process (``oppy.launch``): the stream is opened through the circuit manager exactly as a SOCKS request
would open it, with no listener between. ``TorClientEndpoint(host, port, socks_endpoint=...)`` reaches an
oppy (or a tor) in another process through its SocksPort instead, speaking SOCKS5 with the hostname sent to
the exit (never resolved here). Either way ``username``/``password`` are the isolation credential, as the SOCKS
username and password are (tor's IsolateSOCKSAuth): streams with different credentials share no circuit.

``wrapClientTLS(creator, endpoint)`` gives TLS over either; ``clientFromString(reactor,
"oppy:host=example.com:port=443")`` builds one through the plugin in ``twisted/plugins/oppy_endpoints.py``.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet import defer, error as twisted_error
from twisted.internet.address import HostnameAddress
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IConsumer, IPushProducer, IStreamClientEndpoint, ITransport
from twisted.internet.protocol import Factory, Protocol as TwistedProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from oppy.cell.commands import EndReason, reason_name
from oppy.pt.endpoint import Socks5ProxyEndpoint
from oppy.pt.socks5 import Socks5ClientError
from oppy.stream.stream import Stream, StreamEnd, StreamKind

__all__ = ["TorClientEndpoint", "StreamOpener", "TorStreamError", "SocksError", "DEFAULT_SOCKS_PORT"]

#: tor's default SocksPort, where an external oppy or tor listens unless told otherwise.
DEFAULT_SOCKS_PORT = 9050
#: RFC 1929 section 2: ULEN and PLEN are one byte each.
MAX_CREDENTIAL_LEN = 255
#: What the control port shows as the source of a stream opened through this module (STREAM SOURCE_ADDR).
IN_PROCESS_SOURCE = "127.0.0.1:0"


class StreamOpener(Protocol):
    """What carries an in-process stream: a running oppy (``oppy.launch``) or its circuit manager."""

    reactor: object

    def open_stream(self, sink, host: str, port: int, kind: StreamKind = StreamKind.CONNECT,
                    credentials: object = None, source: str | None = None): ...


class TorStreamError(twisted_error.ConnectError):
    """The stream could not be opened: the exit refused it, no circuit could be had, or it timed out.
    ``reason`` is the END reason (tor-spec 6.3)."""

    def __init__(self, end: StreamEnd) -> None:
        self.reason = end.reason
        super().__init__(string=f"{reason_name(EndReason, end.reason)}: {end}")


class SocksError(twisted_error.ConnectError):
    """The SOCKS port refused the request; ``reply`` is the SOCKS5 reply code (RFC 1928 section 6)."""

    def __init__(self, message: str, reply: int | None = None) -> None:
        self.reply = reply
        super().__init__(string=message)


def isolation_credentials(username: str | bytes | None, password: str | bytes | None) -> tuple[bytes, bytes]:
    """The credential as a SOCKS request carries it (``SocksRequest.isolation_key``): both empty when none."""
    def as_bytes(value: str | bytes | None, what: str) -> bytes:
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value or b"")
        if len(data) > MAX_CREDENTIAL_LEN:
            raise ValueError(f"the isolation {what} is longer than SOCKS allows ({MAX_CREDENTIAL_LEN} bytes)")
        return data

    return as_bytes(username, "username"), as_bytes(password, "password")


# ---------------------------------------------------------------------------------------- in process


@implementer(ITransport, IPushProducer, IConsumer)
class StreamTransport:
    """A Twisted transport over one oppy stream, and that stream's sink.

    Backpressure runs both ways: a producer registered here (TLS, an HTTP body) is paused while the stream's
    send buffer is full; a protocol that pauses this transport stops the stream granting SENDMEs to the exit.
    As with a socket, ``connectionLost`` comes from the reactor, never from inside ``loseConnection``.
    """

    def __init__(self, reactor, factory: Factory, host: str, port: int, connecting: defer.Deferred) -> None:
        self.reactor = reactor
        self.factory = factory
        self.peer = HostnameAddress(host.encode("idna") if not host.isascii() else host.encode("ascii"), port)
        self.stream: Stream | None = None
        self.protocol: TwistedProtocol | None = None
        self.disconnecting = False
        self._connecting = connecting
        self._producer = None
        self._streaming = True
        self._writable = True

    # -------------------------------------------------------------------- ITransport

    def write(self, data: bytes) -> None:
        if self.stream is not None and not self.disconnecting:
            self.stream.write(bytes(data))
            self._pull()

    def writeSequence(self, data) -> None:  # noqa: N802 - Twisted's naming
        self.write(b"".join(data))

    def loseConnection(self) -> None:  # noqa: N802
        """END (DONE) once what was written has gone out."""
        if self.disconnecting or self.stream is None:
            return
        self.disconnecting = True
        self.stream.close(EndReason.DONE, flush_first=True)

    def abortConnection(self) -> None:  # noqa: N802
        """END (DONE) now; what was not sent yet is dropped."""
        self.disconnecting = True
        if self.stream is not None:
            self.stream.close(EndReason.DONE)

    def getPeer(self) -> HostnameAddress:  # noqa: N802
        return self.peer

    def getHost(self) -> HostnameAddress:  # noqa: N802
        return HostnameAddress(b"oppy", 0)

    # TLS over a stream forwards ITCPTransport's socket options here (HTTP asks for no Nagle): a stream has
    # no socket of its own; its cells go out as soon as the windows allow.
    def setTcpNoDelay(self, enabled: bool) -> None:  # noqa: N802
        """Nothing to set: no socket."""

    def getTcpNoDelay(self) -> bool:  # noqa: N802
        return True

    def setTcpKeepAlive(self, enabled: bool) -> None:  # noqa: N802
        """Nothing to set: no socket."""

    def getTcpKeepAlive(self) -> bool:  # noqa: N802
        return False

    # -------------------------------------------------------------------- IConsumer

    def registerProducer(self, producer, streaming: bool) -> None:  # noqa: N802
        if self._producer is not None:
            raise RuntimeError(f"{producer!r} registered on a stream transport that has {self._producer!r}")
        self._producer, self._streaming = producer, streaming
        if streaming:
            if not self._writable:
                producer.pauseProducing()
        else:
            self._pull()

    def unregisterProducer(self) -> None:  # noqa: N802
        self._producer = None

    def _pull(self) -> None:
        """A pull producer is asked for more while the stream takes it."""
        if self._producer is not None and not self._streaming and self._writable and not self.disconnecting:
            self._producer.resumeProducing()

    # -------------------------------------------------------------------- IPushProducer (our reading)

    def pauseProducing(self) -> None:  # noqa: N802 - the protocol cannot take more: no SENDMEs meanwhile
        if self.stream is not None:
            self.stream.pause_delivery()

    def resumeProducing(self) -> None:  # noqa: N802
        if self.stream is not None:
            self.stream.resume_delivery()

    def stopProducing(self) -> None:  # noqa: N802
        self.abortConnection()

    # -------------------------------------------------------------------- StreamSink

    def stream_connected(self, stream: Stream) -> None:
        if self._connecting.called:  # cancelled meanwhile
            return
        protocol = self.factory.buildProtocol(self.peer)
        if protocol is None:
            stream.close(EndReason.DONE)
            return
        self.protocol = protocol
        protocol.makeConnection(self)
        self._connecting.callback(protocol)

    def stream_resolved(self, stream: Stream, answers) -> None:
        """Never called: this transport opens CONNECT streams only."""

    def stream_data(self, stream: Stream, data: bytes) -> None:
        if self.protocol is not None:
            self.protocol.dataReceived(data)

    def stream_writable(self, stream: Stream, writable: bool) -> None:
        self._writable = writable
        if self._producer is None:
            return
        if not self._streaming:
            self._pull()
        elif writable:
            self._producer.resumeProducing()
        else:
            self._producer.pauseProducing()

    def stream_ended(self, stream: Stream, end: StreamEnd) -> None:
        self.disconnecting = True
        if self.protocol is None:
            if not self._connecting.called:
                self._connecting.errback(TorStreamError(end))
            return
        clean = end.reason == EndReason.DONE
        reason = twisted_error.ConnectionDone() if clean else twisted_error.ConnectionLost(str(end))
        protocol, self.protocol = self.protocol, None
        if self._producer is not None and self._streaming:
            self._producer.stopProducing()
        self._producer = None
        # Twisted's transports never call connectionLost from inside the protocol's own call.
        self.reactor.callLater(0, protocol.connectionLost, Failure(reason))


def _connect_in_process(opener: StreamOpener, factory: Factory, host: str, port: int,
                        credentials: tuple[bytes, bytes]) -> defer.Deferred:
    def cancel(_):
        if transport.stream is not None:
            transport.stream.close(EndReason.DONE)

    connecting: defer.Deferred = defer.Deferred(cancel)
    transport = StreamTransport(opener.reactor, factory, host, port, connecting)
    managed = opener.open_stream(transport, host, port, StreamKind.CONNECT, credentials=credentials,
                                 source=IN_PROCESS_SOURCE)
    if not managed.stream.ended:
        transport.stream = managed.stream
    return connecting


#: The oppys launched in this process, by reactor: where ``clientFromString(reactor, "oppy:...")`` without a
#: socksPort sends its streams (the string cannot name an object).
_in_process: dict[int, list[StreamOpener]] = {}


def register_in_process(reactor, opener: StreamOpener) -> None:
    """``opener`` runs on ``reactor`` until unregistered (``oppy.launch`` and ``stop`` do this)."""
    _in_process.setdefault(id(reactor), []).append(opener)


def unregister_in_process(reactor, opener: StreamOpener) -> None:
    running = _in_process.get(id(reactor), [])
    if opener in running:
        running.remove(opener)
    if not running:
        _in_process.pop(id(reactor), None)


def in_process(reactor) -> StreamOpener | None:
    """The oppy launched first among those running on ``reactor``, if any."""
    running = _in_process.get(id(reactor))
    return running[0] if running else None


# ---------------------------------------------------------------------------------------- over SOCKS5


def _connect_over_socks(socks_endpoint, factory: Factory, host: str, port: int,
                        credentials: tuple[bytes, bytes]) -> defer.Deferred:
    """SOCKS5 to ``socks_endpoint`` (oppy.pt's client, the one transports hear); a refusal is a SocksError."""
    endpoint = Socks5ProxyEndpoint(socks_endpoint, host, port, credentials if any(credentials) else None)

    def as_socks_error(failure: Failure):
        failure.trap(Socks5ClientError)
        raise SocksError(str(failure.value), failure.value.reply)

    return endpoint.connect(factory).addErrback(as_socks_error)


# ---------------------------------------------------------------------------------------- the endpoint


@implementer(IStreamClientEndpoint)
class TorClientEndpoint:
    """Connect to ``host``:``port`` through Tor: through ``tor`` (an oppy running in this process, from
    ``oppy.launch``) or through ``socks_endpoint`` (an oppy or tor's SocksPort; with ``reactor`` only,
    127.0.0.1:9050). The hostname is resolved by the exit. ``username``/``password``: the isolation
    credential (streams with different ones share no circuit)."""

    def __init__(self, host: str, port: int, *, tor: StreamOpener | None = None, socks_endpoint=None,
                 reactor=None, username: str | bytes | None = None, password: str | bytes | None = None) -> None:
        if isinstance(host, bytes):
            host = host.decode("ascii")
        if not host:
            raise ValueError("TorClientEndpoint needs a host")
        if not 0 < int(port) < 65536:
            raise ValueError(f"port {port} out of range (1-65535)")
        if tor is not None and socks_endpoint is not None:
            raise ValueError("give either tor (an oppy in this process) or socks_endpoint, not both")
        if tor is None and socks_endpoint is None:
            if reactor is None:
                raise ValueError("give tor (from oppy.launch), socks_endpoint, or a reactor for 127.0.0.1:9050")
            socks_endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", DEFAULT_SOCKS_PORT)
        self.host, self.port = host, int(port)
        self.tor = tor
        self.socks_endpoint = socks_endpoint
        self.credentials = isolation_credentials(username, password)

    def connect(self, protocol_factory: Factory) -> defer.Deferred:
        """A Deferred firing with the connected protocol, or failing with TorStreamError / SocksError."""
        try:
            if self.tor is not None:
                return _connect_in_process(self.tor, protocol_factory, self.host, self.port, self.credentials)
            return _connect_over_socks(self.socks_endpoint, protocol_factory, self.host, self.port,
                                       self.credentials)
        except Exception:  # noqa: BLE001 - IStreamClientEndpoint.connect reports failures in its Deferred
            return defer.fail()


def endpoint_from_string_arguments(reactor, *args: str, host: str | None = None, port: str | None = None,
                                   socksHost: str = "127.0.0.1", socksPort: str | None = None,  # noqa: N803
                                   username: str | None = None, password: str | None = None) -> TorClientEndpoint:
    """The ``oppy:`` string endpoint (``twisted/plugins/oppy_endpoints.py``): ``oppy:host=H:port=P`` or
    ``oppy:H:P``, with ``username=``/``password=`` (isolation) and ``socksPort=`` (``socksHost=``, default
    127.0.0.1) for an oppy or tor in another process. Without socksPort the streams go through the oppy
    launched in this process on ``reactor`` when there is one, else to 127.0.0.1:9050 as txtorcon's do."""
    positional = list(args)
    if host is None and positional:
        host = positional.pop(0)
    if port is None and positional:
        port = positional.pop(0)
    if positional:
        raise ValueError(f"oppy: endpoint strings take host and port only, not {positional!r}")
    if host is None or port is None:
        raise ValueError("oppy: endpoint strings need a host and a port (oppy:host=example.com:port=80)")
    try:
        port_number = int(port)
    except ValueError:
        raise ValueError(f"oppy: endpoint port {port!r} is not a number") from None
    tor = in_process(reactor) if socksPort is None else None
    socks_endpoint = None
    if tor is None:
        socks_endpoint = TCP4ClientEndpoint(reactor, socksHost, int(socksPort or DEFAULT_SOCKS_PORT))
    return TorClientEndpoint(host, port_number, tor=tor, socks_endpoint=socks_endpoint, username=username,
                             password=password)

