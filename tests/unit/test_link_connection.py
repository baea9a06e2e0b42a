"""LinkPool over loopback TCP: connecting through endpoints, the handshake timeout, refused connections."""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, task

from oppy.link.channel import LinkError
from oppy.link.connection import LinkPool
from oppy.netdoc.relay import RelayTarget


def target(port: int) -> RelayTarget:
    return RelayTarget("silent", b"\x01" * 20, "127.0.0.1", port)


@defer.inlineCallbacks
def until(condition, timeout: float = 5.0):
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        yield task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("the condition never held")


@pytest_twisted.inlineCallbacks
def test_a_relay_that_never_answers_the_handshake_times_out_and_is_disconnected():
    accepted = []

    class Silent(protocol.Protocol):
        def connectionMade(self):  # noqa: N802
            accepted.append(self)

        def connectionLost(self, reason):  # noqa: N802
            accepted.remove(self)

    listener = reactor.listenTCP(0, protocol.Factory.forProtocol(Silent), interface="127.0.0.1")
    links = LinkPool(reactor, handshake_timeout=0.3)
    try:
        with pytest.raises(LinkError, match=r"link handshake with \$0101.*~silent timed out"):
            yield links.get(target(listener.getHost().port))
        assert links.pending_identities() == [] and links.connections() == []
        yield until(lambda: not accepted)  # the handshake given up, the TCP connection is closed
    finally:
        yield listener.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_refused_connection_fails_every_waiter_with_link_error():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    links = LinkPool(reactor, handshake_timeout=5)
    first, second = links.get(target(port)), links.get(target(port))
    assert links.pending_identities() == [b"\x01" * 20]
    for waiter in (first, second):
        with pytest.raises(LinkError, match=f"cannot connect to 127.0.0.1:{port}"):
            yield waiter
    assert links.pending_identities() == []
