"""The ControlPort listeners, kept in step with the configuration as tor keeps them (connection.c
retry_all_listeners): at start, and again whenever SETCONF changes ControlPort, listeners still configured stay
open, new ones are opened, and those no longer configured are closed, each logged at notice in tor's words
(the client ports have oppy.doors.listeners.FrontDoors, which builds a factory per port line).

Matching is by address and port; an ``auto`` line matches a listener opened for ``auto`` on the same address
(whatever port the system gave it). An update is all or nothing: when one new port cannot be bound, the ones
just opened are closed again and nothing else changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from twisted.internet import defer, error as twisted_error
from twisted.internet.interfaces import IListeningPort

from oppy.config import PortConfig
from oppy.doors.listeners import ListenError
from oppy.logs import notice

__all__ = ["ControlListeners"]

log = logging.getLogger(__name__)


def _key(port: PortConfig) -> tuple[str, int]:
    """What tor compares: the address, and the port number (0 for ``auto``)."""
    return port.address, port.port


class ControlListeners:
    """The open listeners of one ``kind`` (tor's name: "Control"). ``open_listener`` binds one configured port
    (``reactor.listenTCP``) and raises CannotListenError when it cannot."""

    def __init__(self, kind: str, open_listener: Callable[[PortConfig], IListeningPort]) -> None:
        self.kind = kind
        self.open_listener = open_listener
        self._open: dict[tuple[str, int], IListeningPort] = {}
        self._closing: list[defer.Deferred] = []

    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of every open listener, in the configured order."""
        return [(host.host, host.port) for host in (listener.getHost() for listener in self._open.values())]

    def update(self, ports: Sequence[PortConfig]) -> None:
        """Open the configured ports not open yet, then close those no longer configured."""
        wanted = {_key(port): port for port in ports}
        opened: dict[tuple[str, int], IListeningPort] = {}
        for key, port in wanted.items():
            if key in self._open:
                continue
            notice(log, "Opening %s listener on %s:%s", self.kind, port.address, "auto" if port.is_auto else port.port)
            try:
                listener = self.open_listener(port)
            except twisted_error.CannotListenError as exc:
                for undone in opened.values():
                    self._close(undone, quietly=True)
                raise ListenError(f"Could not bind to {port.address}:{port.port}: {exc.socketError}") from None
            opened[key] = listener
            host = listener.getHost()
            notice(log, "Opened %s listener connection (ready) on %s:%d", self.kind, host.host, host.port)
        for key in [key for key in self._open if key not in wanted]:
            self._close(self._open.pop(key))
        self._open.update(opened)
        self._open = {key: self._open[key] for key in wanted}  # in the configured order

    def _close(self, listener: IListeningPort, quietly: bool = False) -> None:
        if not quietly:
            host = listener.getHost()
            notice(log, "Closing no-longer-configured %s listener on %s:%d", self.kind, host.host, host.port)
        self._closing.append(defer.maybeDeferred(listener.stopListening))

    def close(self) -> defer.Deferred:
        """Close every listener (shutdown); fires once all are closed."""
        for listener in self._open.values():
            self._closing.append(defer.maybeDeferred(listener.stopListening))
        self._open = {}
        return self.closed()

    def closed(self) -> defer.Deferred:
        """Fires once every listener closed so far has released its socket."""
        return defer.gatherResults(list(self._closing), consumeErrors=True)
