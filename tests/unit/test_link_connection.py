"""LinkPool over loopback TCP: connecting through endpoints, the handshake timeout, refused connections; padding
an idle link and closing a link left without circuits (against tests.unit.loopback_relay)."""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint

from oppy.circuit.build import build_circuit
from oppy.config import parse_bridge_line
from oppy.link.channel import ChannelState, LinkAuthenticationError, LinkError
from oppy.link.connection import LinkFailed, LinkPool
from oppy.link.padding import ConnectionPaddingOptions, PaddingPolicy
from oppy.netdoc.relay import RelayTarget
from tests.unit.loopback_relay import listen
from tests.unit.relaysim import (
    CMD_CREATE2,
    CMD_NETINFO,
    CMD_PADDING,
    CMD_PADDING_NEGOTIATE,
    CMD_RELAY_EARLY,
    PAYLOAD_LEN,
)


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
    events = []
    links = LinkPool(reactor, handshake_timeout=0.3, observers=[events.append])
    try:
        with pytest.raises(LinkError, match=r"link handshake with \$0101.*~silent timed out"):
            yield links.get(target(listener.getHost().port))
        assert [event.or_reason for event in events if isinstance(event, LinkFailed)] == ["TIMEOUT"]
        assert links.pending_identities() == [] and links.connections() == []
        yield until(lambda: not accepted)  # the handshake given up, the TCP connection is closed
    finally:
        yield listener.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_refused_connection_fails_every_waiter_with_link_error():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    events = []
    links = LinkPool(reactor, handshake_timeout=5, observers=[events.append])
    first, second = links.get(target(port)), links.get(target(port))
    assert links.pending_identities() == [b"\x01" * 20]
    for waiter in (first, second):
        with pytest.raises(LinkError, match=f"cannot connect to 127.0.0.1:{port}"):
            yield waiter
    assert links.pending_identities() == []
    assert [event.or_reason for event in events if isinstance(event, LinkFailed)] == ["CONNECTREFUSED"]


@pytest_twisted.inlineCallbacks
def test_a_relay_proving_another_identity_fails_with_reason_identity(tmp_path):
    relay = listen(tmp_path)
    events = []
    links = LinkPool(reactor, observers=[events.append])
    try:
        impostor = relay.path[0]._replace(rsa_id=b"\x02" * 20)
        with pytest.raises(LinkAuthenticationError, match="expected 0202"):
            yield links.get(impostor)
        assert [event.or_reason for event in events if isinstance(event, LinkFailed)] == ["IDENTITY"]
    finally:
        links.close_all()
        yield relay.port.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_link_dialled_without_an_identity_records_the_one_proved_and_is_shared_under_it(tmp_path):
    """A bridge whose Bridge line gives no fingerprint: any identity is taken, recorded by address and port,
    and circuits to that identity use the same link (one connection, listed once)."""
    relay = listen(tmp_path)
    first = relay.path[0]
    port = relay.port.getHost().port
    links = LinkPool(reactor)
    try:
        unknown = RelayTarget("Unnamed", b"", "127.0.0.1", port)
        assert links.proven_identity("127.0.0.1", port) is None
        channel = yield links.get(unknown)
        assert channel.identity.rsa_id == first.rsa_id
        assert links.proven_identity("127.0.0.1", port) == first.rsa_id
        assert (yield links.get(first)) is channel
        (connection,) = links.connections()
        assert connection.channel is channel and links.pending_identities() == []
        connection.close()
        yield until(lambda: links.connections() == [])
        again = yield links.get(first)          # gone under both keys: a new link, to the identity
        assert again is not channel and again.state is ChannelState.OPEN
    finally:
        links.close_all()
        yield relay.port.stopListening()


# ------------------------------------------------------------------------------------------------ padding

def fast_padding(connection_padding=None) -> PaddingPolicy:
    """Padding after 200-400 ms idle instead of 1.5-9.5 s, so that a test sees several cells."""
    padding = PaddingPolicy(ConnectionPaddingOptions(connection_padding))
    padding.update_consensus_params({"nf_ito_low": 200, "nf_ito_high": 400})
    return padding


@pytest_twisted.inlineCallbacks
def test_an_idle_link_in_use_for_full_circuits_is_padded(tmp_path):
    relay = listen(tmp_path, hops=2)
    links = LinkPool(reactor, padding=fast_padding())
    try:
        circuit = yield build_circuit(links, relay.path, timeout=10, reactor=reactor)
        built_at = reactor.seconds()
        yield task.deferLater(reactor, 3.5, lambda: None)
        (server,) = relay.servers
        commands = server.commands()
        assert commands[:3] == [CMD_NETINFO, CMD_CREATE2, CMD_RELAY_EARLY], "no STOP or START, as tor"
        pads = [(at, payload) for at, command, payload in server.received if command == CMD_PADDING]
        assert len(pads) >= 2, commands
        assert all(payload == bytes(PAYLOAD_LEN) for _, payload in pads)
        (connection,) = links.connections()
        assert connection.channel.padding.padding_cells_sent == len(pads)
        # Each pad came after at least nf_ito_low of silence on the link (the housekeeping runs once a second,
        # so a pad may also come later than nf_ito_high).
        times = [at for at, _, _ in server.received]
        for at, _ in pads:
            before = max(t for t in times if t < at)
            assert at - before >= 0.2 - 0.05
        assert pads[0][0] > built_at
        circuit.close()
    finally:
        links.close_all()
        yield relay.port.stopListening()


@pytest_twisted.inlineCallbacks
def test_links_send_small_writes_at_once(tmp_path):
    """TCP_NODELAY: a SENDME must not wait for Nagle's algorithm, congestion control times it."""
    relay = listen(tmp_path, hops=1)
    links = LinkPool(reactor)
    try:
        yield links.get(relay.path[0])
        (connection,) = links.connections()
        handle = connection.transport.getHandle()
        assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        links.close_all()
        yield relay.port.stopListening()


@pytest_twisted.inlineCallbacks
def test_connection_padding_0_sends_stop_after_netinfo_and_no_padding(tmp_path):
    relay = listen(tmp_path, hops=2)
    links = LinkPool(reactor, padding=fast_padding(connection_padding=False))
    try:
        circuit = yield build_circuit(links, relay.path, timeout=10, reactor=reactor)
        yield task.deferLater(reactor, 2.5, lambda: None)
        (server,) = relay.servers
        assert server.commands()[:2] == [CMD_NETINFO, CMD_PADDING_NEGOTIATE]
        assert server.received[1][2][:6] == bytes.fromhex("00 01 0000 0000")  # STOP
        assert CMD_PADDING not in server.commands()
        # The link counts the TCP bytes, TLS included, as the relay saw them (the control port's BW events).
        (connection,) = links.connections()
        assert (connection.bytes_read, connection.bytes_written) == (server.raw_written, server.raw_read)
        assert connection.bytes_written > 4 * 514
        circuit.close()
    finally:
        links.close_all()
        yield relay.port.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_link_left_without_circuits_closes_after_its_idle_timeout_and_a_new_one_opens(tmp_path):
    relay = listen(tmp_path)
    links = LinkPool(reactor)
    try:
        circuit = yield build_circuit(links, relay.path, timeout=10, reactor=reactor)
        (connection,) = links.connections()
        channel = connection.channel
        now = reactor.seconds()
        connection.housekeeping(now)
        circuit.close()
        connection.housekeeping(now + channel.padding.idle_timeout - 1)
        assert channel.state is ChannelState.OPEN
        connection.housekeeping(now + channel.padding.idle_timeout)
        assert channel.state is ChannelState.CLOSED
        yield until(lambda: links.connections() == [])
        yield until(lambda: not relay.servers[0].transport.connected)
        again = yield links.get(relay.relays[0].target)
        assert again is not channel and again.state is ChannelState.OPEN
    finally:
        links.close_all()
        yield relay.port.stopListening()


# ------------------------------------------------------------------------------------------------ bridges


class RecordingTransports:
    """A TransportEndpoints for tests: it provides ``obfs4`` by connecting straight to ``port`` (what a
    transport's SOCKS proxy does once it reached the bridge), and records what it was asked."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.asked: list[tuple] = []

    def provides(self, transport: str) -> bool:
        return transport == "obfs4"

    def endpoint(self, transport, address, port, args):
        self.asked.append((transport, address, port, args))
        return TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)


@pytest_twisted.inlineCallbacks
def test_a_transport_bridge_is_reached_through_the_transports_endpoint(tmp_path):
    relay = listen(tmp_path)
    first = relay.path[0]
    line = parse_bridge_line(f"obfs4 192.0.2.7:4443 {first.rsa_id.hex()} cert=abc iat-mode=0")
    transports = RecordingTransports(relay.port.getHost().port)
    links = LinkPool(reactor, bridges=[line], transports=transports)
    try:
        bridge = RelayTarget("bridge", first.rsa_id, "192.0.2.7", 4443, first.ntor_onion_key, first.ed25519_id)
        channel = yield links.get(bridge)
        assert channel.state is ChannelState.OPEN
        assert transports.asked == [("obfs4", "192.0.2.7", 4443, (("cert", "abc"), ("iat-mode", "0")))]
    finally:
        links.close_all()
        yield relay.port.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_transport_bridge_without_its_transport_is_refused_with_a_clear_error():
    line = parse_bridge_line(f"meek 192.0.2.7:443 {'AB' * 20} url=https://x/")
    for transports in (None, RecordingTransports(1)):
        events = []
        links = LinkPool(reactor, bridges=[line], transports=transports, observers=[events.append])
        with pytest.raises(LinkError, match="needs the pluggable transport 'meek', which no ClientTransportPlugin "
                                            "line provides"):
            yield links.get(RelayTarget("bridge", b"\xab" * 20, "192.0.2.7", 443))
        assert [event.or_reason for event in events if isinstance(event, LinkFailed)] == ["PT_MISSING"]
