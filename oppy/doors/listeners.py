"""Opening and closing the listeners of the client ports.

:class:`FrontDoors` turns a port line (a :class:`~oppy.config.options.PortConfig`) of one :class:`DoorKind` into
a listening socket whose clients get the line's isolation flags and session group, and closes it again. The
daemon opens the configured ones at start; :meth:`FrontDoors.set_ports` does what tor's retry_listener_ports
does when a controller changes a port option: keep the listeners still configured, open the new ones, close
the rest.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from twisted.internet import defer, error as twisted_error
from twisted.internet.interfaces import IListeningPort

from oppy.circuit.addressmap import AddressMap
from oppy.circuit.isolation import SESSION_GROUP_FIRST_AUTO, StreamIsolation, isolation_flags
from oppy.config.options import ISOLATION_FLAGS, PortConfig
from oppy.dns.server import DnsPortProtocol
from oppy.logs import notice
from oppy.socks.server import HttpTunnelClientProtocol, SocksClientProtocol, SocksFactory, SocksPortSettings

log = logging.getLogger(__name__)


class DoorKind(enum.Enum):
    """A kind of client port: its torrc option and the name tor's log lines give its listeners."""

    SOCKS = ("SocksPort", "Socks")
    HTTP_TUNNEL = ("HTTPTunnelPort", "HTTP tunnel")
    DNS = ("DNSPort", "DNS")

    def __init__(self, option: str, log_name: str) -> None:
        self.option = option
        self.log_name = log_name


class ListenError(Exception):
    """A configured port could not be opened (tor: "Could not bind to ...")."""


@dataclass(eq=False)
class OpenDoor:
    """One listening client port."""

    kind: DoorKind
    config: PortConfig
    isolation: StreamIsolation
    listening: IListeningPort

    @property
    def address(self) -> tuple[str, int]:
        host = self.listening.getHost()
        return host.host, host.port


class FrontDoors:
    """Every open client port, and the services behind them: the SOCKS service shared by the SocksPorts and
    HTTPTunnelPorts, and the virtual addresses (AutomapHostsOnResolve) shared by every port."""

    def __init__(self, manager, reactor, socks: SocksFactory) -> None:
        self.manager = manager
        self.reactor = reactor
        self.socks = socks
        self.open_doors: list[OpenDoor] = []
        self._closing: list[defer.Deferred] = []
        # connection.c global_next_session_group: each port without SessionGroup=N is a group of its own.
        self._next_session_group = SESSION_GROUP_FIRST_AUTO

    @property
    def addresses(self) -> AddressMap:
        return self.socks.addresses

    def doors(self, kind: DoorKind) -> list[OpenDoor]:
        return [door for door in self.open_doors if door.kind is kind]

    def port_isolation(self, config: PortConfig) -> StreamIsolation:
        """The isolation every stream of a port starts from: its flags and its session group."""
        group = config.session_group
        if group is None:
            group = self._next_session_group
            self._next_session_group -= 1
        return StreamIsolation(flags=isolation_flags(config.flags & ISOLATION_FLAGS), session_group=group)

    def _factory(self, kind: DoorKind, config: PortConfig, isolation: StreamIsolation):
        settings = SocksPortSettings(isolation=isolation, prefer_no_auth="PreferSOCKSNoAuth" in config.flags,
                                     prefer_ipv6_automap="PreferIPv6Automap" in config.flags, flags=config.flags)
        protocol_class = HttpTunnelClientProtocol if kind is DoorKind.HTTP_TUNNEL else SocksClientProtocol
        return self.socks.for_port(settings, protocol_class)

    def open(self, kind: DoorKind, config: PortConfig) -> OpenDoor:
        """Listen on `config`'s address and port (``auto``: one the system picks), with tor's notice lines."""
        port_text = "auto" if config.is_auto else str(config.port)
        notice(log, "Opening %s listener on %s:%s", kind.log_name, config.address, port_text)
        isolation = self.port_isolation(config)
        try:
            if kind is DoorKind.DNS:
                listening = self.reactor.listenUDP(config.port, DnsPortProtocol(self.manager, self.addresses,
                                                                                isolation), interface=config.address)
            else:
                listening = self.reactor.listenTCP(config.port, self._factory(kind, config, isolation),
                                                   interface=config.address)
        except twisted_error.CannotListenError as exc:
            raise ListenError(f"Could not bind to {config.address}:{port_text}: {exc.socketError}") from None
        door = OpenDoor(kind, config, isolation, listening)
        self.open_doors.append(door)
        host, port = door.address
        notice(log, "Opened %s listener connection (ready) on %s:%d", kind.log_name, host, port)
        return door

    def close(self, door: OpenDoor) -> defer.Deferred:
        """Stop listening on `door` (its clients already connected stay)."""
        host, port = door.address
        notice(log, "Closing %s listener on %s:%d", door.kind.log_name, host, port)
        self.open_doors.remove(door)
        closing = defer.maybeDeferred(door.listening.stopListening)
        self._closing.append(closing)
        return closing

    def set_ports(self, kind: DoorKind, configs: tuple[PortConfig, ...]) -> list[OpenDoor]:
        """Make the listeners of `kind` be those of `configs` (tor retry_listener_ports): an open one whose line
        is still configured stays, the others close, the new lines open. Returns the listeners opened. If one
        cannot be opened, those opened by this call are closed again and ListenError is raised."""
        wanted = list(configs)
        unwanted = []
        for door in self.doors(kind):
            if door.config in wanted:
                wanted.remove(door.config)
            else:
                unwanted.append(door)
        opened: list[OpenDoor] = []
        try:
            for config in wanted:
                opened.append(self.open(kind, config))
        except ListenError:
            for door in opened:
                self.close(door)
            raise
        # Only once every new port is open: a SETCONF that fails leaves the old listeners as they were.
        for door in unwanted:
            self.close(door)
        return opened

    def close_all(self) -> None:
        """Stop listening everywhere and close every client connection."""
        for door in list(self.open_doors):
            self.close(door)
        self.socks.close_all()

    def closed(self) -> defer.Deferred:
        """After close_all: fires once every listener closed so far has released its socket and every client
        connection is gone (a program running oppy on its own reactor finds nothing of it left)."""
        return defer.gatherResults([*self._closing, self.socks.when_closed()], consumeErrors=True)
