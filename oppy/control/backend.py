"""The control port's view of the running daemon: what commands read and change in oppy.

:class:`DaemonBackend` implements :class:`~oppy.control.commands.ControlBackend` over the daemon's
config, circuit manager, directory service and link pool; :class:`LinkTrafficMeter` counts the bytes
oppy's links read and write (for BW events, ``traffic/*`` and ``bw-event-cache``) and notices links
opening and closing (ORCONN events); :class:`CircuitTrafficMeter` turns the circuits' traffic counters
into CIRC_BW events. No sockets are opened here and nothing is scheduled: the
Twisted adapter (``oppy.control.server``) calls :meth:`DaemonBackend.tick` once a second.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from typing import Callable, Iterable, Sequence

from oppy.cell.commands import DestroyReason
from oppy.circuit.circuit import CircuitTraffic
from oppy.circuit.manager import CircuitManager, CircuitPurpose, ManagedCircuit, ManagedStream
from oppy.config import OPTION_NAMES, ConfigError, reload_config
from oppy.control.commands import BW_EVENT_CACHE_LEN, ControlBackend, SetconfError, apply_setconf
from oppy.control.events import circ_bw_event, format_path, orconn_event
from oppy.directory.service import DirectoryService
from oppy.doors.listeners import DoorKind
from oppy.link.connection import LinkEvent, LinkFailed, RelayConnection
from oppy.logs import configure_logging, notice
from oppy.netdoc.relay import RelayTarget

__all__ = ["CircuitTrafficMeter", "DaemonBackend", "LinkTrafficMeter"]

log = logging.getLogger(__name__)

# Options read once at start (listeners, where data lives): a RELOAD leaves them as they are.
_NOT_RELOADED = frozenset({"SocksPort", "ControlPort", "DataDirectory", "TestingTorNetwork"})
# control-spec GETINFO net/listeners/*: the kinds of client port oppy opens.
_DOOR_KIND_OF_LISTENERS = {"socks": DoorKind.SOCKS, "httptunnel": DoorKind.HTTP_TUNNEL, "dns": DoorKind.DNS}


def _link_identity(connection: RelayConnection) -> bytes:
    """The identity an open link proved (a bridge dialled without a fingerprint learns it there)."""
    channel = connection.channel
    return channel.identity.rsa_id if channel.identity is not None else channel.expected_rsa_id


class LinkTrafficMeter:
    """Samples the link pool: bytes moved since the last sample, and links opened or closed."""

    def __init__(self, links, name_of: Callable[[bytes], str | None] = lambda rsa_id: None) -> None:
        self.links = links
        self.name_of = name_of
        self.total_read = 0
        self.total_written = 0
        self._last: dict[object, tuple[int, int]] = {}
        self._ids: dict[object, int] = {}
        self._pending_ids: dict[bytes, int] = {}
        #: The ORCONN reason of each link that failed since the last connection_events().
        self._failure_reasons: dict[bytes, str] = {}
        self._next_id = 1

    def link_event(self, event: LinkEvent) -> None:
        """The link pool's events: a failed link's reason, for its ORCONN FAILED event (REASON=IDENTITY for a
        bridge that is not who its line says, TIMEOUT, ...)."""
        if isinstance(event, LinkFailed):
            self._failure_reasons[event.relay.rsa_id] = event.or_reason

    def _new_id(self) -> int:
        number, self._next_id = self._next_id, self._next_id + 1
        return number

    def _target(self, rsa_id: bytes) -> tuple[str, str | None]:
        return (rsa_id.hex().upper(), self.name_of(rsa_id))

    def sample(self) -> tuple[int, int]:
        """Bytes read and written since the previous sample."""
        read = written = 0
        current = {}
        for connection in self.links.connections():
            counts = current[connection] = (connection.bytes_read, connection.bytes_written)
            last_read, last_written = self._last.get(connection, (0, 0))
            read += max(0, counts[0] - last_read)
            written += max(0, counts[1] - last_written)
        self._last = current
        self.total_read += read
        self.total_written += written
        return read, written

    def connection_events(self) -> list[bytes]:
        """ORCONN events for links that started, opened, failed or closed since the last call."""
        events = []
        pending = set(self.links.pending_identities())
        open_connections = {connection: _link_identity(connection)
                            for connection in self.links.connections()}
        open_ids = set(open_connections.values())
        for rsa_id in pending - set(self._pending_ids):
            self._pending_ids[rsa_id] = self._new_id()
            events.append(orconn_event(self._target(rsa_id), "LAUNCHED", conn_id=self._pending_ids[rsa_id]))
        for connection, rsa_id in open_connections.items():
            if connection not in self._ids:
                number = self._pending_ids.pop(rsa_id, None) or self._new_id()
                self._ids[connection] = number
                events.append(orconn_event(self._target(rsa_id), "CONNECTED", conn_id=number))
        for rsa_id in list(self._pending_ids):
            if rsa_id not in pending and rsa_id not in open_ids:
                number = self._pending_ids.pop(rsa_id)
                reason = self._failure_reasons.pop(rsa_id, "CONNECTREFUSED")
                events.append(orconn_event(self._target(rsa_id), "FAILED", reason=reason, conn_id=number))
        for connection in list(self._ids):
            if connection not in open_connections:
                number = self._ids.pop(connection)
                events.append(orconn_event(self._target(_link_identity(connection)), "CLOSED",
                                           reason="DONE", conn_id=number))
        return events

    def status_lines(self) -> list[str]:
        lines = []
        for connection in self.links.connections():
            lines.append(f"{format_path([self._target(_link_identity(connection))])} CONNECTED")
        for rsa_id in self.links.pending_identities():
            lines.append(f"{format_path([self._target(rsa_id)])} LAUNCHED")
        return lines


class CircuitTrafficMeter:
    """CIRC_BW events: for each open circuit that read or wrote since the previous sample, its counts since
    then and, with congestion control, its controller's state (tor's control_event_circ_bandwidth_used,
    once a second; a circuit without new traffic is not reported)."""

    def __init__(self) -> None:
        self._last: dict[int, CircuitTraffic] = {}  # by circuit number

    def events(self, circuits: Iterable[ManagedCircuit], now: float) -> list[bytes]:
        """The events for `circuits` at wall-clock time `now`; circuits no longer listed are forgotten."""
        events = []
        current: dict[int, CircuitTraffic] = {}
        for managed in circuits:
            circuit = managed.circuit
            if circuit is None:
                continue
            traffic = current[managed.number] = circuit.traffic
            last = self._last.get(managed.number)
            delta = traffic if last is None else CircuitTraffic(*(now_ - then for now_, then in zip(traffic, last)))
            if delta.read or delta.written:
                control = circuit.congestion_control
                congestion = None if control is None else (
                    control.in_slow_start, control.cwnd, control.rtt_usec, control.min_rtt_usec)
                events.append(circ_bw_event(managed.number, now, *delta, congestion=congestion))
        self._last = current
        return events


class DaemonBackend(ControlBackend):
    """The running daemon as the control port sees and steers it."""

    def __init__(self, daemon, reactor, control_listeners: Callable[[], list[tuple[str, int]]] = list,
                 on_auth_options_changed: Callable[[], None] = lambda: None,
                 on_control_ports_changed: Callable[[], None] = lambda: None,
                 on_conf_reloaded: Callable[[list[tuple[str, str | None]]], None] = lambda lines: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.daemon = daemon
        self.reactor = reactor
        self.config = daemon.config
        self.manager: CircuitManager = daemon.manager
        self.directory: DirectoryService = daemon.directory
        self.paths = daemon.paths
        self.clock = clock
        self.control_listeners = control_listeners
        self.on_auth_options_changed = on_auth_options_changed
        self.on_control_ports_changed = on_control_ports_changed
        #: Reports the option lines a RELOAD changed (the service's CONF_CHANGED event).
        self.on_conf_reloaded = on_conf_reloaded
        self.meter = LinkTrafficMeter(daemon.links, self._nickname)
        self.circuit_meter = CircuitTrafficMeter()
        self.history: deque[tuple[int, int]] = deque(maxlen=BW_EVENT_CACHE_LEN)
        self.dormant = False

    def _nickname(self, rsa_id: bytes) -> str | None:
        """The relay's nickname in the consensus, or a bridge's from its descriptor (ORCONN names the bridge)."""
        netdir = self.directory.netdir
        relay = netdir.relay_by_id(rsa_id) if netdir is not None else None
        if relay is not None:
            return relay.nickname
        bridges = self.paths.bridges
        descriptor = bridges.descriptor(rsa_id.hex()) if bridges is not None else None
        return descriptor.nickname if descriptor is not None else None

    # ---------------------------------------------------------------- once a second

    def tick(self) -> tuple[int, int]:
        """Sample the links: returns the bytes read and written in the last second (the BW event)."""
        read, written = self.meter.sample()
        self.history.append((read, written))
        return read, written

    def circuit_bandwidth_events(self) -> list[bytes]:
        """CIRC_BW events for the circuits with traffic since the previous call (once a second)."""
        return self.circuit_meter.events(self.manager.circuits.values(), self.clock())

    # ---------------------------------------------------------------- circuits and streams

    def launch_circuit(self, path: list[RelayTarget] | None, purpose: str) -> int:
        managed = self.manager.launch(None, path=path, purpose=CircuitPurpose[purpose])
        return managed.number

    def extend_circuit(self, managed_circuit: ManagedCircuit, path: list[RelayTarget]) -> None:
        self.manager.extend_circuit(managed_circuit, path)

    def attach_stream(self, managed_stream: ManagedStream, managed_circuit: ManagedCircuit | None,
                      hop: int | None = None) -> None:
        self.manager.controller_attach(managed_stream, managed_circuit, hop)

    def close_stream(self, managed_stream: ManagedStream, reason: int) -> None:
        managed_stream.stream.close(reason)

    def close_circuit(self, number: int) -> None:
        self.manager.close_circuit(number, DestroyReason.REQUESTED)

    def find_relay(self, name: str) -> RelayTarget | None:
        netdir = self.directory.netdir
        return netdir.find_relay(name) if netdir is not None else None

    def microdesc_body(self, digest: str) -> str | None:
        body = self.directory.microdesc_body(digest)
        return body.decode("utf-8", "replace") if body is not None else None

    # ---------------------------------------------------------------- state

    def listeners(self, kind: str) -> list[tuple[str, int]]:
        """GETINFO net/listeners/``kind``: where the client ports of that kind listen."""
        if kind == "control":
            return self.control_listeners()
        door_kind = _DOOR_KIND_OF_LISTENERS.get(kind)
        doors = self.daemon.doors
        if door_kind is None or doors is None:
            return []
        return [door.address for door in doors.doors(door_kind)]

    def traffic(self) -> tuple[int, int]:
        return self.meter.total_read, self.meter.total_written

    def bandwidth_history(self) -> Sequence[tuple[int, int]]:
        return tuple(self.history)

    def orconn_lines(self) -> list[str]:
        return self.meter.status_lines()

    def uptime(self) -> int:
        return int(self.clock() - self.daemon.started_at)

    def config_file(self) -> str | None:
        path = self.config.source.torrc_path
        if path is None or path == "-":
            return None
        return os.path.abspath(path)

    def circuit_established(self) -> bool:
        return self.manager.circuit_established

    def is_dormant(self) -> bool:
        return self.dormant

    # ---------------------------------------------------------------- signals

    def signal(self, name: str) -> None:
        if name == "NEWNYM":
            log.info("Received NEWNYM: new streams get new circuits.")
            self.manager.newnym()
            self.daemon.onion_services.purge_state()
        elif name == "RELOAD":
            notice(log, "Received reload signal (hup). Reloading config and resetting internal state.")
            self._reload()
        elif name in ("SHUTDOWN", "HALT"):
            notice(log, "Caught signal %s from the controller, exiting cleanly.", name)
            # After the reply has been written: the daemon's shutdown trigger then runs.
            self.reactor.callLater(0.05, self.reactor.stop)
        elif name == "HEARTBEAT":
            read, written = self.traffic()
            open_circuits = sum(1 for managed in self.manager.circuits.values() if managed.is_open)
            notice(log, "Heartbeat: oppy's uptime is %d seconds, with %d circuits open. I've sent %d kB and "
                        "received %d kB.", self.uptime(), open_circuits, written // 1024, read // 1024)
        elif name == "DUMP":
            notice(log, "Dumping stats: %d circuits, %d streams, %d links open.", len(self.manager.circuits),
                   len(self.manager.streams), len(self.daemon.links.connections()))
        elif name == "DORMANT":
            self.dormant = True
            notice(log, "Going dormant at the controller's request (oppy keeps its circuits).")
        elif name == "ACTIVE":
            self.dormant = False
            notice(log, "Active again at the controller's request.")
        else:  # CLEARDNSCACHE (oppy caches no DNS answers), DEBUG
            log.info("Signal %s: nothing for oppy to do.", name)

    def _reload(self) -> None:
        try:
            fresh = reload_config(self.config)
        except (ConfigError, OSError) as exc:
            log.warning("Reloading config failed: %s. Keeping the old configuration.", exc)
            return
        pairs: list[tuple[str, str | None]] = []
        for name in OPTION_NAMES:
            if name in _NOT_RELOADED or name.startswith("__"):
                continue
            values = fresh.get_option(name)
            if values:
                pairs.extend((name, value) for value in values)
            else:
                pairs.append((name, None))
        try:
            lines = apply_setconf(self.config, pairs)
        except SetconfError as exc:
            log.warning("Reloading config failed: %s. Keeping the old configuration.", exc.message)
            return
        if lines:
            self.options_changed(list(dict.fromkeys(name for name, _ in lines)))
            self.on_conf_reloaded(lines)

    # ---------------------------------------------------------------- SETCONF

    def options_changed(self, names: Sequence[str]) -> None:
        config = self.config
        manager = self.manager
        changed = set(names)
        # Listeners first: a port that cannot be bound fails the SETCONF (ListenError) before anything else
        # follows the new options.
        doors = self.daemon.doors
        ports = {DoorKind.SOCKS: config.socks_ports, DoorKind.HTTP_TUNNEL: config.http_tunnel_ports,
                 DoorKind.DNS: config.dns_ports}
        for kind, configured in ports.items():
            if kind.option in changed and doors is not None:
                doors.set_ports(kind, configured)
        if "ControlPort" in changed:
            self.on_control_ports_changed()
        if "__LeaveStreamsUnattached" in changed:
            manager.attach_automatically = not config.leave_streams_unattached
            if manager.attach_automatically:
                for managed in list(manager.streams.values()):
                    if managed.awaiting_controller and not managed.stream.ended:
                        manager.controller_attach(managed, None)
        if "MaxCircuitDirtiness" in changed:
            manager.max_circuit_dirtiness = config.max_circuit_dirtiness
        if changed & {"CircuitBuildTimeout", "LearnCircuitBuildTimeout"}:
            manager.build_times.set_options(learn=config.learn_circuit_build_timeout,
                                            configured_timeout=config.circuit_build_timeout)
        if "MaxClientCircuitsPending" in changed:
            manager.max_pending = config.max_client_circuits_pending
        if changed & {"Log", "SafeLogging"}:
            try:
                configure_logging(config.logs, safe_logging=config.safe_logging)
            except OSError as exc:
                log.warning("Could not apply the new Log lines: %s", exc.strerror or exc)
        factory = self.daemon.socks_factory  # None until the SOCKS listeners are up
        if factory is not None:
            if "SocksTimeout" in changed:
                factory.handshake_timeout = config.socks_timeout
            if "MaxSocksConnections" in changed:
                factory.max_connections = config.max_socks_connections
            if "ClientRejectInternalAddresses" in changed:
                factory.allow_private_addresses = not config.client_reject_internal_addresses
            if "SafeSocks" in changed:
                factory.safe_socks = config.safe_socks
            if "TestSocks" in changed:
                factory.test_socks = config.test_socks
            if "AutomapHostsOnResolve" in changed:
                factory.addresses.automap = config.automap_hosts_on_resolve
            if "AutomapHostsSuffixes" in changed:
                factory.addresses.suffixes = tuple(suffix.lower() for suffix in config.automap_hosts_suffixes)
        if "EnforceDistinctSubnets" in changed:
            self.paths.enforce_distinct_subnets = config.enforce_distinct_subnets
        if changed & {"CookieAuthentication", "CookieAuthFile", "HashedControlPassword"}:
            self.on_auth_options_changed()
