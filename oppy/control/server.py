"""The control port with Twisted: listeners, one thin protocol per controller, the once-a-second tick.

Each accepted connection gets a :class:`ControlProtocol`, which moves bytes between its transport and
a sans-IO :class:`~oppy.control.commands.ControlSession`. :class:`ControlService` opens the
``ControlPort`` listeners, writes the authentication cookie, and feeds the hub what oppy does: the
circuit manager's notifications (CIRC, STREAM), log records (DEBUG ... ERR), bootstrap progress and
new consensuses (STATUS_CLIENT, NEWCONSENSUS), and once a second the links' byte counts (BW), the
circuits' (CIRC_BW) and link changes (ORCONN).
"""

from __future__ import annotations

import logging
import os
from collections import deque

from twisted.internet import defer, protocol, task
from twisted.internet.interfaces import IPushProducer
from twisted.python import threadable
from zope.interface import implementer

from oppy.circuit.build_timeout import BuildTimeoutSet
from oppy.circuit.manager import (
    CircuitBuilt,
    CircuitPurpose,
    CircuitPurposeChanged,
    ManagerEvent,
    StreamChanged,
    StreamFlowChanged,
)
from oppy.closing import OpenSet
from oppy.config import PortConfig
from oppy.control.auth import CookieFileError, write_cookie_file
from oppy.control.backend import DaemonBackend
from oppy.control.commands import event_for_new_consensus
from oppy.control.listeners import ControlListeners
from oppy.control.session import AuthSettings, ControlHub
from oppy.control.events import LOG_SEVERITIES, bw_event, hs_desc_event, transport_launched_event
from oppy.control.codec import encode_event
from oppy.control.status import bootstrap_phase_text, purpose_changed_event
from oppy.directory.service import BootstrapProblem
from oppy.hsclient.client import DescriptorEvent
from oppy.doors.listeners import ListenError
from oppy.logs import add_log_observer, notice, remove_log_observer
from oppy.netdoc.netdir import NetDirChanged
from oppy.pt.manager import TransportEvent, TransportReady

__all__ = ["ControlProtocol", "ControlFactory", "ControlService"]

log = logging.getLogger(__name__)

# control-spec "BW": tor sends one BW event every second.
BW_INTERVAL = 1.0
# oppy's own limits (tor has none for controllers but ConnLimit on all sockets): how many controllers may be
# connected at once, and how many bytes of replies and events may wait for one that does not read (well
# above the largest reply, GETINFO md/all on the full network: about 5 MB).
MAX_CONTROL_CONNECTIONS = 64
MAX_CONTROL_OUTPUT_QUEUED = 16 * 1024 * 1024


@implementer(IPushProducer)
class ControlProtocol(protocol.Protocol):
    """One controller connection: bytes to the session, its replies and events back.

    Output goes to the transport while the controller reads; while it does not (the transport paused this
    producer), replies and events wait here, and a controller that lets more than the factory's
    `max_output` wait is disconnected with one log line.
    """

    def __init__(self, factory: "ControlFactory") -> None:
        self.factory = factory
        self.session = None
        self._output: deque[bytes] = deque()
        self._output_queued = 0
        self._paused = False

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's naming
        if not self.factory.admit(self):
            self.transport.abortConnection()
            return
        # connection.c connection_handle_listener_read: tor logs every controller at notice.
        notice(log, "New control connection opened from %s.", self.transport.getPeer().host)
        self.session = self.factory.hub.open_session(wakeup=self._flush)
        self.transport.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.session is None:
            return
        self.session.feed(data)
        self._flush()

    def _flush(self) -> None:
        if self.transport is None or self.session is None:
            return
        data = self.session.data_to_send()
        if data:
            self._output.append(data)
            self._output_queued += len(data)
        if self.session.should_close:
            self.close()
            return
        if self._output_queued > self.factory.max_output:
            log.warning("Closing a controller connection that does not read what it is sent: %d bytes of "
                        "replies and events wait for it (the limit is %d)", self._output_queued,
                        self.factory.max_output)
            self._drop()
            return
        self._write_output()

    def _write_output(self) -> None:
        """Hand queued output to the transport while it takes more (writing may pause us at once)."""
        while self._output and not self._paused:
            data = self._output.popleft()
            self._output_queued -= len(data)
            self.transport.write(data)

    def close(self) -> None:
        """Close once what waits has been sent. A transport with a registered producer would not close once
        drained (it resumes the producer instead), so the producer goes first."""
        if self.transport is None:
            return
        self.transport.unregisterProducer()
        self.transport.write(b"".join(self._output))
        self._output.clear()
        self._output_queued = 0
        self.transport.loseConnection()

    def _drop(self) -> None:
        self._output.clear()
        self._output_queued = 0
        self._close_session()
        self.transport.abortConnection()

    def _close_session(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            self.factory.hub.close_session(session)
            if session.owning:
                self.factory.owner_left()

    # ------------------------------------------------------------------------------ IPushProducer

    def pauseProducing(self) -> None:  # noqa: N802 - the controller's socket is full
        self._paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self._paused = False
        self._write_output()

    def stopProducing(self) -> None:  # noqa: N802
        pass

    def connectionLost(self, reason) -> None:  # noqa: N802
        self.factory.connection_lost(self)
        self._close_session()


class ControlFactory(protocol.Factory):
    """The control listeners' factory: the hub, and the limits on connections and on unread output."""

    def __init__(self, hub: ControlHub, owner_left=lambda: None,
                 max_connections: int = MAX_CONTROL_CONNECTIONS,
                 max_output: int = MAX_CONTROL_OUTPUT_QUEUED) -> None:
        self.hub = hub
        self.owner_left = owner_left
        self.max_connections = max_connections
        self.max_output = max_output
        self.connections: OpenSet[ControlProtocol] = OpenSet()
        self._refusing = False

    def buildProtocol(self, addr):  # noqa: N802
        return ControlProtocol(self)

    def admit(self, connection: ControlProtocol) -> bool:
        """Take a new connection, unless `max_connections` are open: then it is refused (logged once until
        a connection closes)."""
        if len(self.connections) >= self.max_connections:
            if not self._refusing:
                self._refusing = True
                log.warning("Refusing new control connections: %d are open, the most oppy accepts (not "
                            "logged again until one closes)", len(self.connections))
            return False
        self.connections.add(connection)
        return True

    def connection_lost(self, connection: ControlProtocol) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            self._refusing = False

    def when_closed(self) -> defer.Deferred:
        """A Deferred firing once no controller is connected."""
        return self.connections.when_empty()


class ControlService:
    """The control port of a running daemon: start() opens it, stop() closes it."""

    def __init__(self, daemon, reactor) -> None:
        self.daemon = daemon
        self.reactor = reactor
        self.config = daemon.config
        self.listeners = ControlListeners("Control", self._open_listener)
        self._serving = False
        self.backend = DaemonBackend(daemon, reactor, control_listeners=self.bound_addresses,
                                     on_auth_options_changed=self._refresh_auth,
                                     on_control_ports_changed=self.control_ports_changed,
                                     on_conf_reloaded=self._conf_reloaded)
        self.hub = ControlHub(self.backend, on_subscriptions_changed=self._subscriptions_changed)
        self.factory = ControlFactory(self.hub, owner_left=self._owner_left)
        self._tick_loop = None
        self._log_level: str | None = None
        self._announced_circuit = False
        self._orconn_poll = None

    # ---------------------------------------------------------------- authentication

    def _auth_settings(self) -> AuthSettings:
        config = self.config
        cookie = cookie_path = None
        if config.cookie_authentication:
            path = config.cookie_auth_file_path()
            cookie = write_cookie_file(path)
            cookie_path = os.path.abspath(path)
        return AuthSettings(cookie=cookie, cookie_path=cookie_path,
                            hashed_passwords=tuple(config.hashed_control_passwords))

    def _conf_reloaded(self, lines: list[tuple[str, str | None]]) -> None:
        """A RELOAD changed these option lines: controllers hear CONF_CHANGED."""
        self.hub.conf_changed(lines)

    def _refresh_auth(self) -> None:
        """Authentication options changed: new connections use the new settings."""
        try:
            self.hub.auth = self._auth_settings()
        except (OSError, CookieFileError) as exc:
            log.warning("Could not write the control port authentication cookie: %s", exc)

    # ---------------------------------------------------------------- start and stop

    @property
    def enabled(self) -> bool:
        return bool(self.config.control_ports)

    def start(self) -> None:
        if not self.enabled:
            return
        try:
            self.listeners.update(self.config.control_ports)
        except ListenError as exc:
            raise SystemExit(str(exc)) from None
        self._serve()

    def _serve(self) -> None:
        """The first control listener is open: controllers hear what oppy does from now on."""
        try:
            self.hub.auth = self._auth_settings()
        except (OSError, CookieFileError) as exc:
            raise SystemExit(f"Could not write the control port authentication cookie: {exc}") from None
        self._serving = True
        self.daemon.manager.add_observer(self._manager_event)
        self.daemon.directory.bootstrap.add_observer(self._bootstrap_progress)
        self.daemon.directory.bootstrap.add_problem_observer(self._bootstrap_problem)
        self.daemon.links.add_observer(self.backend.meter.link_event)
        self.daemon.directory.add_netdir_observer(self._netdir_changed)
        self.daemon.build_times.add_observer(self._build_times_event)
        self.daemon.onion_services.add_observer(self._descriptor_event)
        if self.daemon.pluggable_transports is not None:
            self.daemon.pluggable_transports.add_observer(self._transport_event)
        self._tick_loop = task.LoopingCall(self._tick)
        self._tick_loop.clock = self.reactor
        self._tick_loop.start(BW_INTERVAL, now=False)

    def control_ports_changed(self) -> None:
        """SETCONF ControlPort: open and close listeners as tor does (controllers already connected stay).
        Raises ListenError, changing nothing, when a new port cannot be bound."""
        self.listeners.update(self.config.control_ports)
        if self.config.control_ports and not self._serving:
            self._serve()

    def stop(self) -> None:
        self.listeners.close()
        if not self._serving:
            return
        self._serving = False
        if self._tick_loop is not None and self._tick_loop.running:
            self._tick_loop.stop()
        if self._orconn_poll is not None and self._orconn_poll.active():
            self._orconn_poll.cancel()
        self._orconn_poll = None
        self.daemon.manager.remove_observer(self._manager_event)
        self.daemon.directory.bootstrap.remove_observer(self._bootstrap_progress)
        self.daemon.directory.bootstrap.remove_problem_observer(self._bootstrap_problem)
        self.daemon.links.remove_observer(self.backend.meter.link_event)
        self.daemon.directory.remove_netdir_observer(self._netdir_changed)
        self.daemon.build_times.remove_observer(self._build_times_event)
        self.daemon.onion_services.remove_observer(self._descriptor_event)
        if self.daemon.pluggable_transports is not None:
            self.daemon.pluggable_transports.remove_observer(self._transport_event)
        self._set_log_level(None)
        for connection in list(self.factory.connections):
            connection.close()

    def closed(self) -> defer.Deferred:
        """After stop(): fires once the listeners and every controller connection are closed."""
        return defer.gatherResults([self.listeners.closed(), self.factory.when_closed()], consumeErrors=True)

    def bound_addresses(self) -> list[tuple[str, int]]:
        return self.listeners.addresses()

    def _open_listener(self, port: PortConfig):
        return self.reactor.listenTCP(0 if port.is_auto else port.port, self.factory, interface=port.address)

    def _owner_left(self) -> None:
        notice(log, "Owning controller connection has closed -- exiting now.")
        self.reactor.callLater(0, self.reactor.stop)

    # ---------------------------------------------------------------- what oppy reports

    def _manager_event(self, event: ManagerEvent) -> None:
        if isinstance(event, StreamChanged):
            self.hub.stream_changed(event.stream)
            return
        if isinstance(event, StreamFlowChanged):
            self.hub.stream_flow_changed(event.stream, event.event.value)
            return
        if isinstance(event, CircuitPurposeChanged):
            self.hub.broadcast("CIRC_MINOR", purpose_changed_event(event.circuit, event.old_purpose.controller_name,
                                                                   event.old_hs_state))
            return
        self.hub.circuit_changed(event.circuit)
        if isinstance(event, CircuitBuilt) and event.purpose is CircuitPurpose.GENERAL \
                and not self._announced_circuit:
            self._announced_circuit = True
            self.hub.broadcast("STATUS_CLIENT", encode_event("STATUS_CLIENT NOTICE CIRCUIT_ESTABLISHED"))
        if self._orconn_poll is None and self.hub.wants("ORCONN"):
            # Once the build has asked the link pool for its first hop: LAUNCHED, or CONNECTED.
            self._orconn_poll = self.reactor.callLater(0, self._orconn_events)

    def _bootstrap_progress(self, percent: int, tag: str, summary: str) -> None:
        self.hub.broadcast("STATUS_CLIENT", encode_event("STATUS_CLIENT " + bootstrap_phase_text(percent, tag, summary)))

    def _bootstrap_problem(self, problem: BootstrapProblem) -> None:
        """STATUS_CLIENT WARN BOOTSTRAP ... WARNING=... (tor control_event_bootstrap_problem)."""
        phase = self.daemon.directory.bootstrap_phase
        self.hub.broadcast("STATUS_CLIENT", encode_event("STATUS_CLIENT " + bootstrap_phase_text(*phase, problem)))

    def _netdir_changed(self, event: NetDirChanged) -> None:
        if event.new_consensus and self.hub.wants("NEWCONSENSUS"):
            self.hub.broadcast("NEWCONSENSUS", event_for_new_consensus(event.netdir.consensus.relays))

    def _build_times_event(self, event) -> None:
        if isinstance(event, BuildTimeoutSet):
            self.hub.broadcast("BUILDTIMEOUT_SET", encode_event("BUILDTIMEOUT_SET " + event.control_arguments()))

    def _descriptor_event(self, event: DescriptorEvent) -> None:
        self.hub.broadcast("HS_DESC", hs_desc_event(event.action, event.address, event.hsdir.describe(),
                                                    event.descriptor_id, event.reason, event.hsdir_index))

    def _transport_event(self, event: TransportEvent) -> None:
        """A managed proxy (started, or started again) listens for its transports: TRANSPORT_LAUNCHED each."""
        if isinstance(event, TransportReady):
            for method in event.methods:
                self.hub.broadcast("TRANSPORT_LAUNCHED",
                                   transport_launched_event("client", method.transport, method.host, method.port))

    def _orconn_events(self) -> None:
        self._orconn_poll = None
        for event in self.backend.meter.connection_events():
            self.hub.broadcast("ORCONN", event)

    def _tick(self) -> None:
        # A LoopingCall stops for good when its function raises: a bug here must not end the BW events.
        try:
            read, written = self.backend.tick()
            self.hub.broadcast("BW", bw_event(read, written))
            if self.hub.wants("CIRC_BW"):
                for event in self.backend.circuit_bandwidth_events():
                    self.hub.broadcast("CIRC_BW", event)
            self._orconn_events()
        except Exception:
            log.exception("control port: the once-a-second update failed")

    # ---------------------------------------------------------------- log events

    def _subscriptions_changed(self, events: frozenset[str]) -> None:
        wanted = [severity for severity in LOG_SEVERITIES if severity in events]
        self._set_log_level(wanted[0].lower() if wanted else None)

    def _set_log_level(self, level: str | None) -> None:
        """Observe oppy's log at the lowest severity a controller asked for (none: no observer)."""
        if level == self._log_level:
            return
        if self._log_level is not None:
            remove_log_observer(self._log_record)
        self._log_level = level
        if level is not None:
            add_log_observer(self._log_record, level)

    def _log_record(self, severity: str, message: str) -> None:
        if threadable.isInIOThread():
            self.hub.log_message(severity, message)
        else:  # a worker thread (directory parsing) logged: deliver from the reactor thread
            self.reactor.callFromThread(self.hub.log_message, severity, message)
