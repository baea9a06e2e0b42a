"""Stream isolation by tor's rules (connection_edge.c connection_edge_compatible_with_circuit and
connection_edge_update_circuit_isolation), and the circuit manager honouring it."""

from __future__ import annotations

from dataclasses import replace

import pytest
from twisted.internet.task import Clock

from oppy.circuit.isolation import (
    ISO_DEFAULT,
    CircuitIsolation,
    ClientProtocol,
    IsolationFlag,
    IsolationValues,
    StreamIsolation,
    isolation_flags,
)
from oppy.circuit.manager import CircuitManager
from oppy.config.options import ISOLATION_FLAGS, config_from_torrc_text
from tests.support.streams import CollectingSink
from tests.unit.relaysim import CMD_CREATE2, SimulatedPath, SimulatedRelay
from tests.unit.test_circuit_manager import FixedPaths, OneChannelLinks, answer_build

BASE = IsolationValues(ISO_DEFAULT, "example.test", 80, (b"", b""), ClientProtocol.SOCKS5, "127.0.0.1", -4, 0)

# Each isolated property, and a stream differing from BASE in that property alone.
DIFFERING = {
    IsolationFlag.DESTPORT: replace(BASE, dest_port=443),
    IsolationFlag.DESTADDR: replace(BASE, dest_address="other.test"),
    IsolationFlag.SOCKSAUTH: replace(BASE, credentials=(b"alice", b"")),
    IsolationFlag.CLIENTPROTO: replace(BASE, protocol=ClientProtocol.SOCKS4),
    IsolationFlag.CLIENTADDR: replace(BASE, client_address="127.0.0.2"),
    IsolationFlag.SESSIONGRP: replace(BASE, session_group=-5),
    IsolationFlag.NYM_EPOCH: replace(BASE, nym_epoch=1),
}


def circuit_with(*streams: IsolationValues) -> CircuitIsolation:
    circuit = CircuitIsolation()
    for stream in streams:
        circuit.add(stream, attached=True)
    return circuit


@pytest.mark.parametrize("flag", list(DIFFERING))
def test_a_stream_differing_in_an_isolated_property_does_not_fit(flag):
    other = DIFFERING[flag]
    assert other.differences(BASE) == flag
    assert not circuit_with(BASE).compatible(replace(other, flags=other.flags | flag))
    assert circuit_with(BASE).compatible(replace(other, flags=other.flags & ~flag))
    # The same values always fit, whatever the flags.
    assert circuit_with(BASE).compatible(replace(BASE, flags=ISO_DEFAULT | flag))


def test_a_circuit_with_mixed_values_takes_no_stream_isolated_by_that_property():
    """Two streams not isolated by port shared a circuit: a stream isolated by port fits it no more, even with
    the first stream's port (it would share the circuit with the second)."""
    circuit = circuit_with(BASE, DIFFERING[IsolationFlag.DESTPORT])
    assert circuit.mixed == IsolationFlag.DESTPORT
    assert not circuit.compatible(replace(BASE, flags=ISO_DEFAULT | IsolationFlag.DESTPORT))
    assert circuit.compatible(replace(BASE, dest_port=8080))


def test_destination_addresses_are_compared_without_case():
    assert circuit_with(BASE).compatible(replace(BASE, flags=IsolationFlag.DESTADDR, dest_address="EXAMPLE.test"))


def test_an_unused_circuit_takes_anything_and_hypothetical_marks_are_cleared():
    circuit = CircuitIsolation()
    assert circuit.compatible(DIFFERING[IsolationFlag.SOCKSAUTH]) and not circuit.is_set
    circuit.add(BASE, attached=False)
    assert not circuit.compatible(DIFFERING[IsolationFlag.SOCKSAUTH])
    circuit.clear_if_unused()
    assert circuit.compatible(DIFFERING[IsolationFlag.SOCKSAUTH]) and not circuit.is_set
    circuit.add(BASE, attached=True)
    circuit.clear_if_unused()  # it carried a stream: its values stay
    assert not circuit.compatible(DIFFERING[IsolationFlag.SOCKSAUTH])


def test_port_flags_from_the_torrc():
    (port,) = config_from_torrc_text("SocksPort 9150 IsolateDestPort IsolateClientProtocol NoIsolateSOCKSAuth\n"
                                     ).socks_ports
    flags = isolation_flags(port.flags & ISOLATION_FLAGS)
    assert flags == (IsolationFlag.DESTPORT | IsolationFlag.CLIENTPROTO | IsolationFlag.CLIENTADDR
                     | IsolationFlag.SESSIONGRP | IsolationFlag.NYM_EPOCH)
    (default,) = config_from_torrc_text("SocksPort 9150\n").socks_ports
    assert isolation_flags(default.flags & ISOLATION_FLAGS) == ISO_DEFAULT


def launched_circuits(streams) -> tuple[CircuitManager, OneChannelLinks, list, list]:
    clock = Clock()
    relays = [SimulatedRelay(name) for name in ("guard", "middle", "exit")]
    links = OneChannelLinks()
    manager = CircuitManager(links, FixedPaths([relay.target for relay in relays]), reactor=clock,
                             clock=clock.seconds, preemptive_circuits=0)
    opened = [manager.open_stream(CollectingSink(), host, port, isolation=isolation)
              for host, port, isolation in streams]
    return manager, links, opened, relays


def build_all(links: OneChannelLinks, relays) -> list:
    """Answer every CREATE2 sent, one circuit at a time (other cells are dropped); the built circuits."""
    built, creates = [], []
    while True:
        creates += [cell for cell in links.channel.take() if cell[1] == CMD_CREATE2]
        if not creates:
            return built
        links.channel.sent.append(creates.pop(0))
        built.append(answer_build(links.channel, SimulatedPath(relays)))


def test_the_manager_launches_a_circuit_for_an_isolated_stream_and_keeps_them_apart():
    isolated = StreamIsolation(flags=ISO_DEFAULT | IsolationFlag.DESTADDR)
    manager, links, (first, second, third), relays = launched_circuits(
        [("a.test", 80, isolated), ("b.test", 80, isolated), ("a.test", 80, isolated)])
    assert len(manager.circuits) == 2  # the second stream cannot wait for the first one's circuit
    build_all(links, relays)
    assert first.stream.circuit is third.stream.circuit
    assert second.stream.circuit is not None and second.stream.circuit is not first.stream.circuit
    manager.close_all()


def test_without_the_flag_streams_to_two_hosts_share_one_circuit():
    manager, links, (first, second), relays = launched_circuits(
        [("a.test", 80, StreamIsolation()), ("b.test", 80, StreamIsolation())])
    assert len(manager.circuits) == 1
    build_all(links, relays)
    assert first.stream.circuit is second.stream.circuit is not None
    manager.close_all()
