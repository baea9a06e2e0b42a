"""The transports oppy uses: managed proxies it runs (``ClientTransportPlugin ... exec``) and external ones
(``... socks5 IP:PORT``), and the endpoints through which the link layer reaches a bridge.

:class:`PluggableTransports` is the one object the rest of oppy holds. ``endpoint(transport, host, port,
args)`` gives a Twisted client endpoint for a bridge behind a transport (this is the link layer's
``TransportEndpoints``, oppy.link.connection); connecting through it starts the transport's proxy if it is
not running yet, waits until the proxy has reported where the transport listens (CMETHOD), then speaks SOCKS5 to it
with the bridge's arguments. ``launch(transports)`` starts the proxies of the transports the bridges use
at bootstrap, as tor does, so the first connection does not wait for a process start.

A managed proxy (:class:`ManagedProxy`) is launched once with pt-spec's environment, its stdout read by
:class:`~oppy.pt.protocol.ManagedProxyConfiguration`, its LOG lines forwarded to oppy's log at their
severity and its stderr at info (tor transports.c). If it exits, fails to start, or breaks the protocol,
one warning says why and it is started again after a delay that doubles from 1 s to 60 s (tor 0.4.8
restarts a dead proxy at once, every time; the backoff keeps a binary that dies at start from spinning).
While it is down, connections through its transports fail at once with :class:`TransportUnavailable`
naming the reason, so the bridge layer retries on its own schedule. ``stop()`` closes each proxy's stdin
(pt-spec 3.4), then sends SIGTERM and finally SIGKILL to one that does not exit.

Observers hear typed events (:class:`TransportEvent`): a process launched, ready or failed, and each
connection to a transport's local port being started and made (tor's bootstrap phases conn_pt and conn_done_pt).
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from twisted.internet import defer, error, protocol, reactor as default_reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from oppy.logs import NOTICE
from oppy.pt.endpoint import Socks5ProxyEndpoint
from oppy.pt.plugin import PluginKind, TransportPlugin
from oppy.pt.protocol import (
    ClientMethod,
    ClientMethodError,
    LogMessage,
    MalformedLine,
    ManagedProxyConfiguration,
    ProxyBroken,
    ProxyConfigured,
    SocksVersion,
    StatusMessage,
    managed_proxy_environment,
    shown,
)
from oppy.pt.socks5 import SocksArgumentsError, socks5_credentials

log = logging.getLogger(__name__)

__all__ = [
    "TransportUnavailable",
    "TransportEvent",
    "TransportLaunched",
    "TransportReady",
    "TransportFailed",
    "TransportConnecting",
    "TransportConnected",
    "ManagedProxy",
    "ProxyState",
    "PluggableTransports",
    "RESTART_DELAY_INITIAL",
    "RESTART_DELAY_MAX",
]

#: The first restart of a managed proxy that died comes after this many seconds ...
RESTART_DELAY_INITIAL = 1.0
#: ... each further one after twice as long, up to this.
RESTART_DELAY_MAX = 60.0
#: A proxy that ran this long since it was configured starts from the initial delay again.
STABLE_RUN = 60.0
#: pt-spec 3.4: after closing stdin, how long a proxy has to exit before SIGTERM, and then before SIGKILL.
STOP_GRACE = 2.0
#: How long the TCP connection to a transport's local port may take (the link layer's handshake timeout
#: bounds the SOCKS5 handshake and all that follows).
PROXY_CONNECT_TIMEOUT = 15.0
#: The most of one stderr line of a managed proxy kept while its end has not come (a binary writing without
#: newlines cannot grow oppy's memory).
MAX_STDERR_LINE = 4096


class TransportUnavailable(ConnectionError):
    """No usable proxy for a transport right now (none configured, not running, or it refused it)."""


# ------------------------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class TransportEvent:
    """Something happened to the proxy of these transports."""

    transports: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TransportLaunched(TransportEvent):
    """A managed proxy's process was started."""

    argv: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TransportReady(TransportEvent):
    """A managed proxy finished its configuration: where each of its transports listens."""

    methods: tuple[ClientMethod, ...]


@dataclass(frozen=True, slots=True)
class TransportFailed(TransportEvent):
    """A managed proxy could not be started, exited or broke the protocol; it starts again in ``retry_in`` s."""

    reason: str
    retry_in: float


@dataclass(frozen=True, slots=True)
class TransportConnecting(TransportEvent):
    """A connection to a transport's local port, for the bridge at ``bridge`` (tor's conn_pt)."""

    bridge: str


@dataclass(frozen=True, slots=True)
class TransportConnected(TransportEvent):
    """That connection is up; the SOCKS5 handshake to the bridge begins (tor's conn_done_pt)."""

    bridge: str


# ------------------------------------------------------------------------------------ one managed proxy


class _ProxyProcess(protocol.ProcessProtocol):
    """The Twisted side of one launch: stdout to the configuration, stderr lines to the log, the exit to the owner."""

    def __init__(self, owner: "ManagedProxy", configuration: ManagedProxyConfiguration) -> None:
        self.owner = owner
        self.configuration = configuration
        self._stderr = bytearray()
        self.ended: defer.Deferred = defer.Deferred()

    def outReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's naming
        self.owner.proxy_events(self, self.configuration.feed(data))

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self._stderr += data
        *lines, rest = self._stderr.split(b"\n")
        self._stderr = bytearray(rest[-MAX_STDERR_LINE:])
        for line in lines:
            log.info('Managed proxy "%s" reported via standard error: %s', self.owner.name,
                     line.rstrip(b"\r").decode("utf-8", "backslashreplace"))

    def processExited(self, reason: Failure) -> None:  # noqa: N802
        """The process is gone (its children may still hold the pipes: closing its stdin asks them to leave)."""
        if isinstance(reason.value, error.ProcessTerminated):
            status = (f"by signal {reason.value.signal}" if reason.value.signal is not None
                      else f"with status code {reason.value.exitCode}")
        else:
            status = "with status code 0"
        self.transport.closeStdin()
        self.owner.process_ended(self, status)
        self.ended.callback(None)


class ProxyState(enum.Enum):
    """Where a managed proxy is in its life (the value is how a log line says it)."""

    IDLE = "not started"
    LAUNCHING = "starting"
    READY = "running"
    WAITING = "waiting to restart"
    STOPPED = "stopped"


class ManagedProxy:
    """One ``ClientTransportPlugin ... exec`` line: its process, started on first need, kept running."""

    def __init__(self, plugin: TransportPlugin, state_location: str, reactor, notify: Callable[[TransportEvent], None],
                 environment: dict[str, str] | None = None, stop_grace: float = STOP_GRACE) -> None:
        self.plugin = plugin
        self.transports = plugin.transports
        self.name = plugin.argv[0]
        self.state_location = state_location
        self.reactor = reactor
        self.notify = notify
        self.environment = environment
        self.stop_grace = stop_grace
        self.state = ProxyState.IDLE
        self.methods: dict[str, ClientMethod] = {}
        self.errors: dict[str, str] = {}
        #: Why the proxy is not running (the last failure), for the bootstrap and error messages.
        self.failure: str | None = None
        self._process: _ProxyProcess | None = None
        self._waiters: list[tuple[str, defer.Deferred]] = []
        self._restart_delay = RESTART_DELAY_INITIAL
        self._restart_call = None
        self._configured_at: float | None = None
        self._last_warning: str | None = None
        self._restarts_allowed = True

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.transport.pid if process is not None and process.transport is not None else None

    def describe_wait(self) -> str:
        """What a connection through this proxy waits for, in words."""
        what = f'managed proxy "{self.name}" for {",".join(self.transports)}'
        if self.state is ProxyState.WAITING:
            return f"{what} ({self.failure}; restarting)"
        return f"{what} ({self.state.value})"

    # ----------------------------------------------------------------- launching

    def launch(self) -> None:
        """Start the process unless it is running, starting, or waiting for its restart."""
        if self.state is ProxyState.IDLE:
            self._launch()

    def _launch(self) -> None:
        self._restart_call = None
        self.state = ProxyState.LAUNCHING
        self.methods, self.errors = {}, {}
        executable = shutil.which(self.name) if "/" not in self.name else self.name
        if executable is None or not os.access(executable, os.X_OK) or os.path.isdir(executable):
            reason = ("no such file" if executable is None or not os.path.exists(executable)
                      else "not an executable file")
            self._failed(f"cannot launch {self.name}: {reason}")
            return
        try:
            os.makedirs(self.state_location, mode=0o700, exist_ok=True)
        except OSError as exc:
            self._failed(f"cannot create its state directory {self.state_location}: {exc.strerror or exc}")
            return
        process = _ProxyProcess(self, ManagedProxyConfiguration(self.transports))
        environment = managed_proxy_environment(self.transports, self.state_location, inherited=self.environment)
        self._process = process
        # Announced first: a process that exits at once is reaped inside spawnProcess.
        log.info('Launching managed proxy "%s" for %s.', self.name, ",".join(self.transports))
        self.notify(TransportLaunched(self.transports, self.plugin.argv))
        try:
            self.reactor.spawnProcess(process, executable, list(self.plugin.argv), env=environment,
                                      childFDs={0: "w", 1: "r", 2: "r"})
        except OSError as exc:
            self._process = None
            self._failed(f"cannot launch {self.name}: {exc.strerror or exc}")

    def method(self, transport: str) -> defer.Deferred:
        """A Deferred firing with the CMETHOD of ``transport`` once the proxy is configured (launching it if
        needed), or failing with :class:`TransportUnavailable` if it is down or did not start ``transport``."""
        if self.state is ProxyState.READY:
            return self._answer(transport)
        if self.state is ProxyState.WAITING:
            return defer.fail(TransportUnavailable(f"pluggable transport {transport} is not running: "
                                                   f"{self.describe_wait()}"))
        if self.state is ProxyState.STOPPED:
            return defer.fail(TransportUnavailable(f"pluggable transport {transport}: oppy is shutting down"))
        waiter: defer.Deferred = defer.Deferred(canceller=self._forget)
        self._waiters.append((transport, waiter))
        self.launch()
        return waiter

    def _forget(self, waiter: defer.Deferred) -> None:
        self._waiters = [(name, known) for name, known in self._waiters if known is not waiter]

    def _answer(self, transport: str) -> defer.Deferred:
        method = self.methods.get(transport)
        if method is not None and method.socks is SocksVersion.SOCKS5:
            return defer.succeed(method)
        if method is not None:
            reason = f"it offers {transport} over {method.socks.value}; oppy speaks socks5 to transports"
        else:
            reason = self.errors.get(transport, "it did not report that transport")
        return defer.fail(TransportUnavailable(f'managed proxy "{self.name}" cannot provide {transport}: {reason}'))

    def _release_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for transport, waiter in waiters:
            self._answer(transport).chainDeferred(waiter)

    # ----------------------------------------------------------------- what the process says

    def proxy_events(self, process: _ProxyProcess, events: Iterable) -> None:
        if process is not self._process:
            return
        for event in events:
            if isinstance(event, LogMessage):
                log.log(event.level, 'Managed proxy "%s": %s', self.name, event.message)
            elif isinstance(event, StatusMessage):
                log.info('Managed proxy "%s" status: TRANSPORT=%s %s', self.name, event.transport,
                         " ".join(f"{key}={shown(value)}" for key, value in event.values))
            elif isinstance(event, MalformedLine):
                log.log(NOTICE, 'Managed proxy "%s" wrote a line oppy ignores: %s (%s)', self.name,
                        shown(event.line), event.reason)
            elif isinstance(event, ClientMethod):
                log.info('Transport %s at %s:%d with %s, from managed proxy "%s".', event.transport, event.host,
                         event.port, event.socks.value, self.name)
            elif isinstance(event, ClientMethodError):
                log.warning('Managed proxy "%s" could not start transport %s: %s', self.name, event.transport,
                            event.message)
            elif isinstance(event, ProxyConfigured):
                self._configured(event)
            elif isinstance(event, ProxyBroken):
                self._broken(event.reason)

    def _configured(self, event: ProxyConfigured) -> None:
        self.methods, self.errors = dict(event.methods), dict(event.errors)
        self.state = ProxyState.READY
        self.failure = None
        self._last_warning = None
        self._configured_at = self.reactor.seconds()
        usable = [method for method in self.methods.values() if method.transport in self.transports]
        if not usable:
            log.warning('Managed proxy "%s" runs but provides none of %s.', self.name, ",".join(self.transports))
        else:
            log.log(NOTICE, 'Managed proxy "%s" is ready: %s.', self.name,
                    ", ".join(f"{method.transport} at {method.host}:{method.port}" for method in usable))
        self.notify(TransportReady(self.transports, tuple(usable)))
        self._release_waiters()

    def _broken(self, reason: str) -> None:
        process = self._process
        self._failed(f"it failed the configuration protocol: {reason}")
        if process is not None and process.transport is not None:
            _signal(process, "KILL")

    def process_ended(self, process: _ProxyProcess, status: str) -> None:
        if process is not self._process:
            return
        self._process = None
        if self.state is ProxyState.STOPPED:
            return
        ran = self.reactor.seconds() - self._configured_at if self._configured_at is not None else 0.0
        self._configured_at = None
        if ran >= STABLE_RUN:
            self._restart_delay = RESTART_DELAY_INITIAL
        self._failed(f"its process terminated {status}")

    def _failed(self, reason: str) -> None:
        if self.state in (ProxyState.WAITING, ProxyState.STOPPED):
            return
        if not self._restarts_allowed:
            log.info('Managed proxy "%s" is gone while oppy shuts down: %s.', self.name, reason)
            self.stop()
            return
        self._process = None
        self.state = ProxyState.WAITING
        self.methods, self.errors = {}, {}
        self.failure = reason
        delay = self._restart_delay
        self._restart_delay = min(self._restart_delay * 2, RESTART_DELAY_MAX)
        # One warning per distinct reason: a binary that keeps failing the same way is not a flood.
        level = logging.WARNING if reason != self._last_warning else logging.INFO
        self._last_warning = reason
        log.log(level, 'Managed proxy "%s" for %s is down: %s. Restarting it in %.0f s.', self.name,
                ",".join(self.transports), reason, delay)
        # Scheduled before anyone hears of the failure: a waiter's errback may stop the proxy, which must find
        # the restart to cancel it.
        self._restart_call = self.reactor.callLater(delay, self._launch)
        self.notify(TransportFailed(self.transports, reason, delay))
        waiters, self._waiters = self._waiters, []
        for transport, waiter in waiters:
            waiter.errback(TransportUnavailable(f"pluggable transport {transport} is not running: "
                                                f"{self.describe_wait()}"))

    # ----------------------------------------------------------------- stopping

    def stop_restarting(self) -> None:
        """oppy is shutting down: the process keeps running (the last cells of the links go through it), but
        if it exits now (a Ctrl-C reaches the whole process group) it is not started again."""
        self._restarts_allowed = False
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()

    def stop(self) -> defer.Deferred:
        """pt-spec 3.4: close stdin, wait, SIGTERM, wait, SIGKILL. Fires once the process is gone."""
        self.state = ProxyState.STOPPED
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        waiters, self._waiters = self._waiters, []
        for transport, waiter in waiters:
            waiter.errback(TransportUnavailable(f"pluggable transport {transport}: oppy is shutting down"))
        process, self._process = self._process, None
        if process is None or process.transport is None or process.ended.called:
            return defer.succeed(None)
        process.transport.closeStdin()
        term = self.reactor.callLater(self.stop_grace, _signal, process, "TERM")
        kill = self.reactor.callLater(2 * self.stop_grace, _signal, process, "KILL")

        def gone(_):
            for call in (term, kill):
                if call.active():
                    call.cancel()
            log.info('Managed proxy "%s" stopped.', self.name)

        return process.ended.addCallback(gone)


def _signal(process: _ProxyProcess, signal: str) -> None:
    try:
        process.transport.signalProcess(signal)
    except error.ProcessExitedAlready:
        pass


# ------------------------------------------------------------------------------------ all of them


@implementer(IStreamClientEndpoint)
class _TransportEndpoint:
    """The endpoint :meth:`PluggableTransports.endpoint` returns: it finds the transport's address when it
    connects (a restarted proxy listens elsewhere), then connects through it."""

    def __init__(self, owner: "PluggableTransports", transport: str, host: str, port: int,
                 args: Sequence[tuple[str, str]]) -> None:
        self.owner = owner
        self.transport = transport
        self.host = host
        self.port = port
        self.args = tuple(args)

    def __repr__(self) -> str:
        return f"<bridge {self.host}:{self.port} via pluggable transport {self.transport}>"

    def connect(self, factory: protocol.Factory) -> defer.Deferred:
        bridge = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        plugin_transports = self.owner.transports_of(self.transport)
        try:
            credentials = socks5_credentials(self.args)
        except SocksArgumentsError as exc:
            return defer.fail(exc)
        finding = self.owner.address_of(self.transport)
        connecting: list[defer.Deferred] = []

        def found(address: tuple[str, int]) -> defer.Deferred:
            self.owner.notify(TransportConnecting(plugin_transports, bridge))
            endpoint_class = TCP6ClientEndpoint if ":" in address[0] else TCP4ClientEndpoint
            proxy = endpoint_class(self.owner.reactor, address[0], address[1], timeout=PROXY_CONNECT_TIMEOUT)
            endpoint = Socks5ProxyEndpoint(
                proxy, self.host, self.port, credentials,
                proxy_connected=lambda: self.owner.notify(TransportConnected(plugin_transports, bridge)))
            connecting.append(endpoint.connect(factory))
            return connecting[0]

        def cancel(_: defer.Deferred) -> None:
            (connecting[0] if connecting else finding).cancel()

        result = defer.Deferred(canceller=cancel)
        finding.addCallback(found).chainDeferred(result)
        return result


class PluggableTransports:
    """Every ClientTransportPlugin line: one :class:`ManagedProxy` per ``exec`` line, the address of each
    external proxy; the link layer's ``TransportEndpoints``."""

    def __init__(self, plugins: Iterable[TransportPlugin], state_location: str, reactor=None,
                 observers: Iterable[Callable[[TransportEvent], None]] = (),
                 environment: dict[str, str] | None = None, stop_grace: float = STOP_GRACE) -> None:
        """``state_location`` is DataDirectory/pt_state/ (pt-spec TOR_PT_STATE_LOCATION); ``environment`` the
        environment the proxies inherit (oppy's own by default); ``stop_grace`` how long ``stop`` waits
        after closing a proxy's stdin before SIGTERM, and again before SIGKILL."""
        self.reactor = reactor or default_reactor
        self._observers = list(observers)
        self._managed: dict[str, ManagedProxy] = {}
        self._external: dict[str, TransportPlugin] = {}
        for plugin in plugins:
            if plugin.kind is PluginKind.EXEC:
                proxy = ManagedProxy(plugin, state_location, self.reactor, self.notify, environment, stop_grace)
                for name in plugin.transports:
                    self._managed.setdefault(name, proxy)  # tor: the first line naming a transport wins
            else:
                for name in plugin.transports:
                    if name not in self._managed:
                        self._external.setdefault(name, plugin)

    def add_observer(self, observer: Callable[[TransportEvent], None]) -> None:
        self._observers.append(observer)

    def remove_observer(self, observer: Callable[[TransportEvent], None]) -> None:
        self._observers = [known for known in self._observers if known != observer]

    def notify(self, event: TransportEvent) -> None:
        for observer in list(self._observers):
            try:
                observer(event)
            except Exception:  # noqa: BLE001 - an observer's bug must not stop a transport
                log.exception("pluggable transport observer %r failed", observer)

    @property
    def proxies(self) -> list[ManagedProxy]:
        """The managed proxies, each once."""
        return list({id(proxy): proxy for proxy in self._managed.values()}.values())

    def provides(self, transport: str) -> bool:
        return transport in self._managed or transport in self._external

    def transports_of(self, transport: str) -> tuple[str, ...]:
        proxy = self._managed.get(transport)
        return proxy.transports if proxy is not None else (transport,)

    def launch(self, transports: Iterable[str]) -> None:
        """Start the managed proxies of ``transports`` (those the configured bridges use), as tor does at
        bootstrap; a transport no line names is skipped (the bridge layer reports it)."""
        for name in transports:
            proxy = self._managed.get(name)
            if proxy is not None:
                proxy.launch()

    def address_of(self, transport: str) -> defer.Deferred:
        """A Deferred firing with the (IP, port) where ``transport``'s SOCKS5 proxy listens."""
        plugin = self._external.get(transport)
        if plugin is not None:
            if plugin.kind is not PluginKind.SOCKS5:
                return defer.fail(TransportUnavailable(f"transport {transport} is a {plugin.kind.value} proxy; oppy "
                                                       f"speaks socks5 to transports"))
            return defer.succeed((plugin.host, plugin.port))
        proxy = self._managed.get(transport)
        if proxy is None:
            return defer.fail(TransportUnavailable(f"no ClientTransportPlugin line provides transport {transport}"))
        return proxy.method(transport).addCallback(lambda method: (method.host, method.port))

    def endpoint(self, transport: str, host: str, port: int,
                 args: Sequence[tuple[str, str]] = ()) -> IStreamClientEndpoint:
        """The bridge at ``host``:``port`` through ``transport``; ``args`` (the Bridge line's k=v) go in the
        SOCKS5 credentials (``connect`` fails with :class:`~oppy.pt.socks5.SocksArgumentsError` if they cannot)."""
        return _TransportEndpoint(self, transport, host, port, args)

    def stop_restarting(self) -> None:
        """Shutdown begins: no managed proxy is started again (see :meth:`ManagedProxy.stop_restarting`)."""
        for proxy in self.proxies:
            proxy.stop_restarting()

    def stop(self) -> defer.Deferred:
        """Stop every managed proxy; fires when all are gone."""
        return defer.DeferredList([proxy.stop() for proxy in self.proxies], consumeErrors=True)
