"""The daemon: wires configuration, directory, links, circuits and listeners together, and runs the reactor."""

from __future__ import annotations

import logging
import os
import time
import warnings

from twisted.internet import defer, error as twisted_error
from twisted.logger import LogBeginner, LogLevel, formatEvent, globalLogBeginner

from oppy import __version__
from oppy.circuit.manager import CircuitManager
from oppy.config import Config
from oppy.control.server import ControlService
from oppy.directory.authorities import DEFAULT_AUTHORITIES, parse_dir_authority_line
from oppy.directory.service import BootstrapPhase, DirectoryService
from oppy.link.connection import LinkPool
from oppy.logs import notice
from oppy.socks.server import SocksFactory

log = logging.getLogger("oppy")

#: Set by the test suite (and inherited by every oppy it starts): without DirAuthority lines oppy refuses to
#: start rather than reach the built-in public authorities, which these machines must never contact.
FORBID_PUBLIC_NETWORK_ENV = "OPPY_FORBID_PUBLIC_NETWORK"

# How long shutdown waits for END and DESTROY cells to reach the relays before the links close.
SHUTDOWN_FLUSH_DELAY = 0.3


class Daemon:
    """One running oppy: every long-lived object, and start and stop."""

    def __init__(self, config: Config, reactor) -> None:
        self.config = config
        self.reactor = reactor
        self.started_at = time.time()
        self.socks_listeners = []
        self.socks_factory: SocksFactory | None = None
        self.control: ControlService | None = None
        self.stopping = False
        self.links = LinkPool(reactor)
        data_directory = config.data_directory_path()
        data_directory.mkdir(parents=True, exist_ok=True)
        os.chmod(data_directory, 0o700)
        if config.dir_authorities:
            authorities = [parse_dir_authority_line(line) for line in config.dir_authorities]
        elif os.environ.get(FORBID_PUBLIC_NETWORK_ENV):
            raise SystemExit(f"{FORBID_PUBLIC_NETWORK_ENV} is set and no DirAuthority line is configured: "
                             "refusing to contact the public Tor network")
        else:
            authorities = list(DEFAULT_AUTHORITIES)
        self.directory = DirectoryService(authorities=authorities, data_directory=data_directory,
                                          links=self.links, testing_tor_network=config.testing_tor_network,
                                          reactor=reactor, clock=time.time)
        self.manager = CircuitManager(
            self.links, self.directory.choose_path, exit_allows=self.exit_allows, reactor=reactor,
            max_circuit_dirtiness=config.max_circuit_dirtiness, build_timeout=config.circuit_build_timeout,
            max_pending=config.max_client_circuits_pending, guard_result=self._guard_result,
            unattached_timeout=config.socks_timeout)
        self.manager.attach_automatically = not config.leave_streams_unattached
        self.manager.on_first_circuit = lambda managed: self.directory.report_bootstrap(BootstrapPhase.DONE)

    # ------------------------------------------------------------------------------ glue

    def exit_allows(self, rsa_id: bytes, port: int) -> bool:
        """The exit's microdescriptor policy summary allows `port`."""
        consensus = self.directory.consensus
        relay = consensus.relay_by_id(rsa_id) if consensus is not None else None
        microdesc = self.directory.microdescs.get(relay.microdesc_digest) if relay is not None else None
        return microdesc is not None and microdesc.exit_policy.allows_port(port)

    def _guard_result(self, rsa_id: bytes, reachable: bool) -> None:
        if reachable:
            self.directory.mark_guard_up(rsa_id)
        else:
            self.directory.mark_guard_down(rsa_id)

    # ------------------------------------------------------------------------------ start and stop

    def start(self) -> None:
        notice(log, "oppy %s starting (Python Tor client; Twisted reactor %s)", __version__,
               type(self.reactor).__name__)
        self._listen()
        self.directory.start()
        self.directory.when_enough_dir_info().addCallback(self._directory_ready)

    def _listen(self) -> None:
        self.socks_factory = SocksFactory(
            self.manager, self.reactor,
            allow_private_addresses=not self.config.client_reject_internal_addresses,
            handshake_timeout=self.config.socks_timeout, max_connections=self.config.max_socks_connections)
        for port_config in self.config.socks_ports:
            address = port_config.address
            notice(log, "Opening Socks listener on %s:%s", address, "auto" if port_config.is_auto else port_config.port)
            try:
                listener = self.reactor.listenTCP(0 if port_config.is_auto else port_config.port,
                                                  self.socks_factory, interface=address)
            except twisted_error.CannotListenError as exc:
                raise SystemExit(f"Could not bind to {address}:{port_config.port}: {exc.socketError}") from None
            self.socks_listeners.append(listener)
            host = listener.getHost()
            notice(log, "Opened Socks listener connection (ready) on %s:%d", host.host, host.port)
        self.control = ControlService(self, self.reactor)
        self.control.start()

    def _directory_ready(self, _=None) -> None:
        if self.stopping:
            return
        self.directory.report_bootstrap(BootstrapPhase.AP_CONN)
        self.manager.start()
        self.directory.report_bootstrap(BootstrapPhase.CIRCUIT_CREATE)

    def stop(self) -> defer.Deferred:
        """Clean shutdown: stop listening, END every stream, DESTROY every circuit, close the links."""
        if self.stopping:
            return defer.succeed(None)
        self.stopping = True
        notice(log, "Interrupt: exiting cleanly.")
        for listener in self.socks_listeners:
            listener.stopListening()
        if self.control is not None:
            self.control.stop()
        self.manager.close_all()
        if self.socks_factory is not None:
            self.socks_factory.close_all()
        flushed = defer.Deferred()

        def close_links():
            self.links.close_all()
            flushed.callback(None)

        self.reactor.callLater(SHUTDOWN_FLUSH_DELAY, close_links)
        # The directory's last cache and guard-state writes reach the disk too.
        return defer.gatherResults([flushed, self.directory.stop()], consumeErrors=True)


#: Twisted's own warnings and errors (an unhandled error in a Deferred, an exception in a protocol) go to oppy's
#: log at these severities; its chatter ("Starting factory ...") is dropped.
_TWISTED_LEVELS = {LogLevel.warn: logging.WARNING, LogLevel.error: logging.ERROR, LogLevel.critical: logging.ERROR}
_twisted_log = logging.getLogger("oppy.twisted")


def _forward_twisted_event(event: dict) -> None:
    level = _TWISTED_LEVELS.get(event.get("log_level"))
    if level is None:
        return
    message = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        message = f"{message} {failure.type.__name__}: {failure.getErrorMessage()}"
    _twisted_log.log(level, "%s", message)


def begin_twisted_logging(beginner: LogBeginner = globalLogBeginner) -> None:
    """Hand Twisted's log events to oppy's logging. Until someone begins Twisted's logging, it keeps its last
    200 events with everything they name: every link's "Starting factory" and "Stopping factory" held its
    connection (TLS state and read buffer) long after it closed. Python's warnings stay where they were
    (beginning Twisted's logging would take them over)."""
    showwarning = warnings.showwarning
    beginner.beginLoggingTo([_forward_twisted_event], redirectStandardIO=False)
    warnings.showwarning = showwarning


def run(config: Config) -> int:
    """Run oppy until SIGINT or SIGTERM; returns the process exit code (logging is set up by the caller)."""
    from twisted.internet import reactor

    begin_twisted_logging()
    daemon = Daemon(config, reactor)
    exit_code = [0]

    def start():
        try:
            daemon.start()
        except SystemExit as exc:
            log.error("%s", exc)
            exit_code[0] = 1
            reactor.stop()

    # SIGINT and SIGTERM stop the reactor (Twisted's handlers), which runs this clean shutdown first.
    reactor.addSystemEventTrigger("before", "shutdown", daemon.stop)
    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=True)
    return exit_code[0]
