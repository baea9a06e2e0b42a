"""The daemon: wires configuration, directory, links, circuits and listeners together, and runs the reactor."""

from __future__ import annotations

import logging
import os
import time
import warnings
from typing import TYPE_CHECKING

from twisted.internet import defer, threads
from twisted.logger import LogBeginner, LogLevel, formatEvent, globalLogBeginner

from oppy import __version__
from oppy.circuit.addressmap import AddressMap
from oppy.circuit.build_timeout import BuildTimesStateError, BuildTimesToSave, CircuitBuildTimes
from oppy.circuit.manager import CircuitBuilt, CircuitManager, CircuitPurpose, ManagerEvent
from oppy.circuit.memory import MemoryTracker, max_mem_in_queues, total_system_memory
from oppy.config import Config
from oppy.directory.cache import atomic_write
from oppy.directory.service import BootstrapPhase, DirectoryService
from oppy.hs.client_auth import read_client_auth_dir
from oppy.hs.errors import ClientAuthKeyError
from oppy.hsclient.client import OnionServiceClient
from oppy.doors.listeners import DoorKind, FrontDoors, ListenError
from oppy.link.connection import LinkPool, TransportEndpoints
from oppy.link.padding import PaddingPolicy
from oppy.logs import notice
from oppy.netdoc.authorities import (
    DEFAULT_AUTHORITIES,
    DEFAULT_FALLBACK_DIRS,
    DirAuthority,
    FallbackDir,
    parse_dir_authority_line,
    parse_fallback_dir_line,
)
from oppy.netdoc.netdir import NetDirChanged
from oppy.path.bridges import BridgeSet
from oppy.path.chooser import PathChooser
from oppy.pt.manager import PluggableTransports, TransportConnected, TransportEvent
from oppy.socks.server import SocksFactory

if TYPE_CHECKING:
    from oppy.control.server import ControlService

log = logging.getLogger("oppy")

#: Set by the test suite (and inherited by every oppy it starts): without DirAuthority lines oppy refuses to
#: start rather than reach the built-in public authorities, which these machines must never contact.
FORBID_PUBLIC_NETWORK_ENV = "OPPY_FORBID_PUBLIC_NETWORK"

# How long shutdown waits for END and DESTROY cells to reach the relays before the links close.
SHUTDOWN_FLUSH_DELAY = 0.3
# The circuit build-time history (path-spec 2.4.2), in the DataDirectory: tor keeps the same lines
# (TotalBuildTimes, CircuitBuildAbandonedCount, CircuitBuildTimeBin) in its state file.
BUILD_TIMES_FILE = "circuit-build-times"
# pt-spec TOR_PT_STATE_LOCATION: where the managed proxies keep their state (tor: DataDirectory/pt_state/).
PT_STATE_DIRECTORY = "pt_state"


def directory_servers(config: Config) -> tuple[list[DirAuthority], list[FallbackDir]]:
    """The authorities and fallback directories to bootstrap from, by tor's rule (config.c
    consider_adding_dir_servers): DirAuthority lines replace the built-in authorities; tor's built-in
    fallbacks are added only with the built-in authorities, no FallbackDir line and UseDefaultFallbackDirs 1
    (a test network with its own authorities has no fallback unless FallbackDir names some)."""
    if config.dir_authorities:
        authorities = [parse_dir_authority_line(line) for line in config.dir_authorities]
        fallbacks = []
    else:
        authorities = list(DEFAULT_AUTHORITIES)
        fallbacks = list(DEFAULT_FALLBACK_DIRS) if config.use_default_fallback_dirs and not config.fallback_dirs \
            else []
    fallbacks += [parse_fallback_dir_line(line) for line in config.fallback_dirs]
    return authorities, fallbacks


class Daemon:
    """One running oppy: every long-lived object, and start and stop."""

    def __init__(self, config: Config, reactor, transports: TransportEndpoints | None = None) -> None:
        """``transports`` connects to the bridges that name a pluggable transport; by default the transports
        of the ClientTransportPlugin lines, whose proxies the daemon starts and stops."""
        self.config = config
        self.reactor = reactor
        self.started_at = time.time()
        self.doors: FrontDoors | None = None
        self.control: ControlService | None = None
        self.stopping = False
        data_directory = config.data_directory_path()
        data_directory.mkdir(parents=True, exist_ok=True)
        os.chmod(data_directory, 0o700)
        self.build_times = CircuitBuildTimes(learn=config.learn_circuit_build_timeout,
                                             configured_timeout=config.circuit_build_timeout)
        self._build_times_path = data_directory / BUILD_TIMES_FILE
        self._build_times_writes: defer.Deferred = defer.succeed(None)
        self._load_build_times()
        self.build_times.add_observer(self._build_times_event)
        # The torrc's ConnectionPadding options, read live (SETCONF changes the config in place).
        self.padding = PaddingPolicy(config)
        bridges = config.bridges if config.use_bridges else ()
        self.bridges = bridges
        #: The proxies of the ClientTransportPlugin lines (None when the caller hands in its own transports).
        self.pluggable_transports: PluggableTransports | None = None
        if transports is None:
            self.pluggable_transports = PluggableTransports(
                config.client_transport_plugins, f"{data_directory / PT_STATE_DIRECTORY}/", reactor,
                observers=[self._transport_event])
            transports = self.pluggable_transports
        for bridge in bridges:
            if bridge.transport is not None and (transports is None or not transports.provides(bridge.transport)):
                raise SystemExit(f"Bridge {bridge.to_line()} uses the pluggable transport '{bridge.transport}', "
                                 "but no ClientTransportPlugin line provides it")
        self.links = LinkPool(reactor, padding=self.padding, network_live=self.build_times.network_is_live,
                              bridges=bridges, transports=transports)
        max_bytes, warning = max_mem_in_queues(config.max_mem_in_queues, total_system_memory(),
                                               config.testing_tor_network)
        if warning:
            log.warning("%s", warning)
        log.info("MaxMemInQueues is %d bytes", max_bytes)
        self.memory = MemoryTracker(max_bytes, queued_in_links=self._queued_in_links)
        if not config.dir_authorities and os.environ.get(FORBID_PUBLIC_NETWORK_ENV):
            raise SystemExit(f"{FORBID_PUBLIC_NETWORK_ENV} is set and no DirAuthority line is configured: "
                             "refusing to contact the public Tor network")
        authorities, fallbacks = directory_servers(config)
        self.paths = PathChooser(clock=time.time, enforce_distinct_subnets=config.enforce_distinct_subnets,
                                 long_lived_ports=config.long_lived_ports,
                                 vanguards_lite=config.vanguards_lite_enabled,
                                 bridges=BridgeSet(bridges) if bridges else None)
        self.manager = CircuitManager(
            self.links, self.paths, reactor=reactor, max_circuit_dirtiness=config.max_circuit_dirtiness,
            build_times=self.build_times, max_pending=config.max_client_circuits_pending,
            unattached_timeout=config.socks_timeout, queue_account=self.memory, padding_options=config,
            observers=[self._circuit_event], conflux_option=config.conflux_enabled,
            conflux_client_ux=config.conflux_client_ux)
        self.manager.attach_automatically = not config.leave_streams_unattached
        self.directory = DirectoryService(authorities=authorities, data_directory=data_directory,
                                          circuits=self.manager, fallback_dirs=fallbacks, links=self.links,
                                          testing_tor_network=config.testing_tor_network, reactor=reactor,
                                          clock=time.time, paths=self.paths)
        self.directory.add_netdir_observer(self._netdir_changed)
        self.onion_services = OnionServiceClient(self.manager, client_keys=self._client_auth_keys(config),
                                                 reactor=reactor, testing_network=config.testing_tor_network)

    # ------------------------------------------------------------------------------ glue

    @staticmethod
    def _client_auth_keys(config: Config) -> dict:
        """ClientOnionAuthDir's keys (tor reads them at start: a directory it cannot list is an error)."""
        if config.client_onion_auth_dir is None:
            return {}
        try:
            keys = read_client_auth_dir(os.path.expanduser(config.client_onion_auth_dir))
        except ClientAuthKeyError as exc:
            raise SystemExit(str(exc)) from None
        log.info("Loaded %d onion-service client authorization keys", len(keys))
        return keys

    def _netdir_changed(self, event: NetDirChanged) -> None:
        if event.new_consensus:
            self.padding.update_consensus_params(event.netdir.consensus.params)
            self.build_times.update_params(event.netdir.consensus.params)
            self.manager.update_consensus_params(event.netdir.consensus.params)

    def _queued_in_links(self) -> int:
        """Bytes of cells waiting in the links' queues toward the relays (they count for MaxMemInQueues)."""
        return sum(connection.channel.queued for connection in self.links.connections())

    def _transport_event(self, event: TransportEvent) -> None:
        """The TCP connection to a pluggable transport's local port is up: tor's conn_done_pt (its conn_pt
        comes with the link's launch)."""
        if isinstance(event, TransportConnected):
            self.directory.report_bootstrap(BootstrapPhase.CONN_DONE_PT)

    def _circuit_event(self, event: ManagerEvent) -> None:
        """The first circuit for client streams is built: tor's "Bootstrapped 100%"."""
        if isinstance(event, CircuitBuilt) and event.purpose is CircuitPurpose.GENERAL:
            self.directory.report_bootstrap(BootstrapPhase.DONE)

    # ------------------------------------------------------------------------------ build-time history

    def _load_build_times(self) -> None:
        """Read the build-time history; a broken one is kept aside as ``.broken`` and learning starts over."""
        path = self._build_times_path
        try:
            text = path.read_text(encoding="ascii")
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("Could not read %s: %s. Learning the circuit build timeout afresh.", path, exc)
            return
        try:
            self.build_times.load_state(text.splitlines())
        except BuildTimesStateError as exc:
            broken = path.with_name(path.name + ".broken")
            log.warning("Ignoring the circuit build times in %s (%s); keeping them as %s. Learning the circuit "
                        "build timeout afresh.", path, exc, broken.name)
            try:
                os.replace(path, broken)
            except OSError as move_error:
                log.warning("Could not rename %s: %s", path, move_error)

    def _build_times_event(self, event) -> None:
        if isinstance(event, BuildTimesToSave):
            self._save_build_times()

    def _save_build_times(self) -> defer.Deferred:
        """Write the history in a worker thread, one write after the other; fires when it is on disk."""
        data = ("# oppy's circuit build times (path-spec 2.4.2), as tor's state file keeps them\n"
                + "".join(line + "\n" for line in self.build_times.state_lines())).encode("ascii")

        def write(_):
            return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), atomic_write,
                                             self._build_times_path, data)

        def failed(failure):
            log.warning("Could not write the circuit build times to %s: %s", self._build_times_path,
                        failure.getErrorMessage())

        self._build_times_writes = self._build_times_writes.addCallback(write).addErrback(failed)
        done: defer.Deferred = defer.Deferred()
        self._build_times_writes.addBoth(lambda _: done.callback(None))
        return done

    # ------------------------------------------------------------------------------ start and stop

    def start(self) -> None:
        notice(log, "oppy %s starting (Python Tor client; Twisted reactor %s)", __version__,
               type(self.reactor).__name__)
        self._listen()
        if self.pluggable_transports is not None:
            # As tor does at startup: the proxies of the transports the bridges use, before the first link.
            self.pluggable_transports.launch(bridge.transport for bridge in self.bridges if bridge.transport)
        self.directory.start()
        self.directory.when_enough_dir_info().addCallback(self._directory_ready)

    @property
    def socks_factory(self) -> SocksFactory | None:
        """The SOCKS service behind every SocksPort (None until the listeners are up)."""
        return self.doors.socks if self.doors is not None else None

    @property
    def socks_listeners(self) -> list:
        """The SocksPort listeners (Twisted listening ports)."""
        return [door.listening for door in self.doors.doors(DoorKind.SOCKS)] if self.doors is not None else []

    def _listen(self) -> None:
        config = self.config
        socks = SocksFactory(
            self.manager, self.reactor, allow_private_addresses=not config.client_reject_internal_addresses,
            handshake_timeout=config.socks_timeout, max_connections=config.max_socks_connections,
            safe_socks=config.safe_socks, test_socks=config.test_socks,
            addresses=AddressMap(automap=config.automap_hosts_on_resolve, suffixes=config.automap_hosts_suffixes,
                                 ipv4_network=config.virtual_addr_network_ipv4,
                                 ipv6_network=config.virtual_addr_network_ipv6),
            onion_services=self.onion_services)
        self.doors = FrontDoors(self.manager, self.reactor, socks)
        try:
            self.doors.set_ports(DoorKind.SOCKS, config.socks_ports)
            self.doors.set_ports(DoorKind.HTTP_TUNNEL, config.http_tunnel_ports)
            self.doors.set_ports(DoorKind.DNS, config.dns_ports)
        except ListenError as exc:
            raise SystemExit(str(exc)) from None
        if config.control_ports:
            # Imported only with a ControlPort (about 0.7 MiB of RSS): without one the control layer has nothing
            # to do, since only SETCONF on a control connection could add a ControlPort.
            from oppy.control.server import ControlService

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
        if self.doors is not None:
            self.doors.close_all()
        if self.control is not None:
            self.control.stop()
        if self.pluggable_transports is not None:
            self.pluggable_transports.stop_restarting()
        # The directory first: its requests end quietly before the manager closes their circuits.
        directory_stopped = self.directory.stop()
        self.manager.close_all()
        flushed = defer.Deferred()

        def close_links():
            self.links.close_all()
            # The transports' proxies last: the links' final cells went out through them.
            if self.pluggable_transports is None:
                flushed.callback(None)
            else:
                self.pluggable_transports.stop().addBoth(lambda _: flushed.callback(None))

        self.reactor.callLater(SHUTDOWN_FLUSH_DELAY, close_links)
        # The directory's last cache and guard-state writes reach the disk too, and the build times.
        return defer.gatherResults([flushed, directory_stopped, self._save_build_times()], consumeErrors=True)

    def closed(self) -> defer.Deferred:
        """After stop(): fires once every listener and every socket (links, SOCKS and control clients) is
        closed, so that a program running oppy on its own reactor finds nothing of it left."""
        waits = [self.links.when_closed()]
        if self.doors is not None:
            waits.append(self.doors.closed())
        if self.control is not None:
            waits.append(self.control.closed())
        return defer.gatherResults(waits, consumeErrors=True)


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
