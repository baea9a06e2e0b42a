"""build_circuit with a fake clock: the timeout cancels the build's Deferred, which closes the circuit."""

from __future__ import annotations

import random

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from oppy.cell.commands import DestroyReason
from oppy.circuit.build import CircuitBuildError, build_circuit
from oppy.circuit.build_timeout import CBT_BUILD_ABANDONED, CircuitBuildTimes
from tests.unit.relaysim import (
    CMD_CREATE2,
    CMD_CREATED2,
    CMD_RELAY,
    RecordingChannel,
    RecordingCircuitOwner,
    new_path,
)


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


# ------------------------------------------------------------------------------ learned timeouts (path-spec 2.4.4)


def learned_times(clock: Clock) -> CircuitBuildTimes:
    """An estimator that has learned from three builds: timeout about 1.29 s, close timeout 5 s."""
    times = CircuitBuildTimes(clock=clock.seconds, rng=random.Random(1))
    times.update_params({"cbtmincircs": 3, "cbtinitialtimeout": 5000})
    for milliseconds in (100, 200, 2000):
        times.add_time(milliseconds)
    times.set_timeout()
    assert 1.2 < times.timeout < 1.4 and times.close_timeout == 5.0
    return times


def start_learned_build(any_open: bool = True):
    """(clock, links, path, owner, times, building, circuit): a three-hop build with learned timeouts whose
    first hop is built (the relay answered, so the network is live)."""
    clock, links, path, owner = Clock(), Links(), new_path(3), RecordingCircuitOwner()
    times = learned_times(clock)
    attempt = times.start_build(3, True, lambda: any_open)
    building = build_circuit(links, [relay.target for relay in path.relays], reactor=clock, owner=owner,
                             attempt=attempt)
    links.waiter.callback(links.channel)
    ((circ_id, _, payload),) = links.channel.take()
    circuit = links.channel.circuits[circ_id]
    clock.advance(0.1)
    times.network_is_live()
    circuit.cell_received(CMD_CREATED2, path.answer_create2(payload))
    return clock, links, path, owner, times, building, circuit


def extend(circuit, links: Links, path) -> None:
    ((_, _, payload),) = links.channel.take()
    circuit.cell_received(CMD_RELAY, path.answer_extend2(path.receive(payload)))


def test_a_slow_build_fails_at_the_learned_timeout_but_builds_on_to_be_measured():
    clock, links, path, owner, times, building, circuit = start_learned_build()
    timeout = times.timeout
    clock.advance(timeout - 0.1)
    error = failure_of(building)
    assert isinstance(error, CircuitBuildError) and error.reason == DestroyReason.TIMEOUT
    assert str(error).startswith("timed out after 1.2") and "waiting for hop 2 (" in str(error)
    assert links.channel.destroyed == [] and times.timeouts == 1
    assert len(owner.extended) == 1  # the first hop, before the timeout
    clock.advance(1.0)
    extend(circuit, links, path)
    assert len(owner.extended) == 1  # the owner hears nothing more of a circuit it was told failed
    extend(circuit, links, path)
    # Built late: its time is recorded and the circuit, which nobody uses, is closed.
    assert times.build_times[-1] == round((timeout + 1.0) * 1000) and times.succeeded == 0
    assert links.channel.destroyed == [(circuit.circ_id, DestroyReason.NONE)]
    assert circuit.error.reason == DestroyReason.FINISHED
    assert owner.built == [] and owner.closed == [] and clock.getDelayedCalls() == []


def test_a_measured_build_still_unbuilt_at_the_close_timeout_is_abandoned():
    clock, links, path, owner, times, building, circuit = start_learned_build()
    clock.advance(times.timeout - 0.1)
    failure_of(building)
    clock.advance(5.0 - times.timeout - 0.01)
    assert links.channel.destroyed == []
    clock.advance(0.01)
    assert links.channel.destroyed == [(circuit.circ_id, DestroyReason.NONE)]
    assert str(circuit.error) == "timed out after 5s waiting for hop 2 (" + path.relays[1].target.describe() + ")"
    assert times.build_times[-1] == CBT_BUILD_ABANDONED and times.closed == 1
    assert owner.closed == [] and clock.getDelayedCalls() == []


def test_with_no_circuit_open_a_slow_build_is_waited_for_until_the_close_timeout():
    clock, links, path, owner, times, building, circuit = start_learned_build(any_open=False)
    clock.advance(times.timeout)
    assert not building.called and links.channel.destroyed == [] and times.timeouts == 1
    extend(circuit, links, path)
    extend(circuit, links, path)
    assert building.result is circuit and owner.built == [circuit]
    assert times.succeeded == 1 and clock.getDelayedCalls() == []


def test_with_no_circuit_open_a_build_unfinished_at_the_close_timeout_fails():
    clock, links, path, owner, times, building, circuit = start_learned_build(any_open=False)
    clock.advance(4.91)
    error = failure_of(building)
    assert str(error).startswith("timed out after 5s waiting for hop 2")
    assert times.build_times[-1] == CBT_BUILD_ABANDONED and times.timeouts == 1


def test_before_learning_the_build_is_closed_at_the_initial_timeout():
    clock, links, path = Clock(), Links(), new_path(3)
    times = CircuitBuildTimes(clock=clock.seconds, rng=random.Random(1), configured_timeout=20)
    building = build_circuit(links, [relay.target for relay in path.relays], reactor=clock,
                             attempt=times.start_build(3, True, lambda: True))
    clock.advance(30)  # the link takes its time: the build's clock starts when it is open
    links.waiter.callback(links.channel)
    clock.advance(19.9)
    assert not building.called
    clock.advance(0.1)
    assert str(failure_of(building)).startswith("timed out after 20s waiting for hop 1")
    assert times.timeouts == 0 and times.total_build_times == 0 and clock.getDelayedCalls() == []
