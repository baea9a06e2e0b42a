"""build_circuit with a fake clock: the timeout cancels the build's Deferred, which closes the circuit."""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from oppy.cell.commands import DestroyReason
from oppy.circuit.build import CircuitBuildError, build_circuit
from tests.unit.relaysim import CMD_CREATE2, CMD_CREATED2, RecordingChannel, RecordingCircuitOwner, new_path


class Links:
    """A link pool whose link to the guard opens when the test says so."""

    def __init__(self) -> None:
        self.channel = RecordingChannel()
        self.waiter: defer.Deferred = defer.Deferred()

    def get(self, relay) -> defer.Deferred:
        return self.waiter


def start_one_hop_build():
    """(clock, links, path, owner, building, circ_id, create2 payload): a one-hop build whose link is open and CREATE2 sent."""
    clock, links, path, owner = Clock(), Links(), new_path(1), RecordingCircuitOwner()
    building = build_circuit(links, [path.relays[0].target], timeout=60, reactor=clock, owner=owner)
    links.waiter.callback(links.channel)
    ((circ_id, command, payload),) = links.channel.take()
    assert command == CMD_CREATE2
    return clock, links, path, owner, building, circ_id, payload


def failure_of(deferred: defer.Deferred):
    failures = []
    deferred.addErrback(failures.append)
    assert failures, "the build has not failed"
    return failures[0].value


def test_the_build_times_out_from_the_moment_the_link_is_open():
    clock, links, path = Clock(), Links(), new_path(3)
    building = build_circuit(links, [relay.target for relay in path.relays], timeout=60, reactor=clock)
    clock.advance(100)  # the link takes its time: its own timeout covers that
    assert not building.called
    links.waiter.callback(links.channel)
    ((circ_id, command, payload),) = links.channel.take()
    assert command == CMD_CREATE2
    links.channel.circuits[circ_id].cell_received(CMD_CREATED2, path.answer_create2(payload))
    clock.advance(59)
    assert not building.called
    clock.advance(1)
    error = failure_of(building)
    assert isinstance(error, CircuitBuildError) and error.reason == DestroyReason.TIMEOUT
    assert str(error).startswith("timed out after 60s waiting for hop 2 (")
    assert links.channel.destroyed == [(circ_id, DestroyReason.NONE)]
    assert clock.getDelayedCalls() == []


def test_cancelling_a_build_closes_its_circuit_and_tells_no_owner():
    clock, links, path, owner, building, circ_id, _ = start_one_hop_build()
    building.cancel()
    error = failure_of(building)
    assert str(error).startswith("cancelled waiting for hop 1")
    assert links.channel.destroyed == [(circ_id, DestroyReason.NONE)]
    assert owner.built == owner.closed == [] and clock.getDelayedCalls() == []


def test_cancelling_while_the_link_opens_gives_up_without_a_circuit():
    clock, links, path = Clock(), Links(), new_path(1)
    building = build_circuit(links, [path.relays[0].target], timeout=60, reactor=clock)
    building.cancel()
    with pytest.raises(defer.CancelledError):
        raise failure_of(building)
    links.waiter.callback(links.channel)  # the link opens later: no circuit is made on it
    assert links.channel.take() == [] and links.channel.circuits == {}


def test_the_owner_hears_the_build_then_the_close():
    clock, links, path, owner, building, circ_id, payload = start_one_hop_build()
    circuit = links.channel.circuits[circ_id]
    circuit.cell_received(CMD_CREATED2, path.answer_create2(payload))
    assert building.result is circuit and owner.built == [circuit]
    circuit.close()
    assert len(owner.closed) == 1 and clock.getDelayedCalls() == []
