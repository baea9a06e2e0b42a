"""The control listeners: ports opened and closed as the configuration changes, all or nothing, logged as tor logs."""

from __future__ import annotations

import logging

import pytest
from twisted.internet import error as twisted_error
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor

from oppy.config import config_from_torrc_text
from oppy.control.listeners import ControlListeners
from oppy.doors.listeners import ListenError


def socks_ports(*lines: str):
    return config_from_torrc_text("".join(f"SocksPort {line}\n" for line in lines)).socks_ports


class Opener:
    """Binds on a MemoryReactor; `busy` ports fail as a port in use does."""

    def __init__(self, busy=()) -> None:
        self.reactor = MemoryReactor()
        self.busy = set(busy)

    def __call__(self, port):
        if port.port in self.busy:
            raise twisted_error.CannotListenError(port.address, port.port, OSError(98, "Address already in use"))
        return self.reactor.listenTCP(port.port, Factory(), interface=port.address)


def test_update_keeps_opens_and_closes(caplog):
    opener = Opener()
    listeners = ControlListeners("Control", opener)
    with caplog.at_level(logging.INFO, logger="oppy"):
        listeners.update(socks_ports("9050", "9150"))
        kept = opener.reactor.tcpServers[0]
        listeners.update(socks_ports("9150", "127.0.0.1:9250"))
    # (a MemoryReactor's ports report 0.0.0.0 whatever interface they were given)
    assert [port for _, port in listeners.addresses()] == [9150, 9250]
    assert len(opener.reactor.tcpServers) == 3 and kept[0] == 9050
    messages = [record.getMessage() for record in caplog.records]
    assert "Opening Control listener on 127.0.0.1:9250" in messages
    assert any(message.startswith("Closing no-longer-configured Control listener on ") for message in messages)


def test_a_port_that_cannot_be_bound_changes_nothing():
    opener = Opener(busy={9999})
    listeners = ControlListeners("Control", opener)
    listeners.update(socks_ports("9050"))
    before = listeners.addresses()
    with pytest.raises(ListenError, match="Could not bind to 127.0.0.1:9999"):
        listeners.update(socks_ports("9150", "9999"))
    assert listeners.addresses() == before
    listeners.close()
    assert listeners.addresses() == []
