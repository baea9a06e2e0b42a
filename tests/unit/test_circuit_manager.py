"""The circuit manager's stream rules, with a fake clock and no network."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock

from oppy.cell.commands import EndReason, RelayCommand
from oppy.circuit.manager import (
    MAX_RESOLVE_FAILURES,
    NEW_CIRCUIT_PERIOD,
    CircuitManager,
    CircuitPurpose,
    ManagedCircuit,
)
from oppy.link.relay import RelayTarget
from oppy.stream.stream import StreamEnd, StreamState
from tests.support.streams import CollectingSink
from tests.unit.relaysim import (
    CMD_CREATE2,
    CMD_CREATED2,
    CMD_RELAY,
    RecordingChannel,
    SimulatedPath,
    SimulatedRelay,
)


def relay(name: str) -> RelayTarget:
    return RelayTarget(name, name.encode().ljust(20, b"\0"), "127.0.0.1", 1, bytes(32))


def manager_without_network(clock: Clock) -> CircuitManager:
    def no_path(port, exclude=frozenset()):
        raise RuntimeError("no path in this test")
    return CircuitManager(links=None, choose_path=no_path, reactor=clock, clock=clock.seconds,
                          unattached_timeout=120)


def test_a_stream_no_controller_attaches_expires_after_socks_timeout():
    clock = Clock()
    manager = manager_without_network(clock)
    manager.attach_automatically = False
    sink = CollectingSink()
    managed = manager.open_stream(sink, "example.test", 80)
    assert managed.awaiting_controller and not managed.stream.ended
    clock.advance(119)
    assert not managed.stream.ended
    clock.advance(2)
    assert managed.stream.ended and managed.stream.state is StreamState.FAILED
    assert sink.end.reason == EndReason.TIMEOUT and sink.end.before_connected
    sink.connected.addErrback(lambda failure: failure.trap(StreamEnd))


def test_without_a_path_the_application_hears_noroute():
    clock = Clock()
    manager = manager_without_network(clock)
    sink = CollectingSink()
    managed = manager.open_stream(sink, "example.test", 80)
    assert managed.stream.ended
    assert sink.end.reason == EndReason.NOROUTE
    sink.connected.addErrback(lambda failure: failure.trap(StreamEnd))


def test_retry_rules_follow_tor():
    clock = Clock()
    manager = manager_without_network(clock)
    sink = CollectingSink()
    manager.attach_automatically = False
    managed = manager.open_stream(sink, "example.test", 80)
    circuit = ManagedCircuit(1, [relay("g"), relay("m"), relay("x")], CircuitPurpose.GENERAL, 0, 0)
    managed.managed_circuit = circuit

    def end(reason):
        return StreamEnd("test", reason, remote=True, before_connected=True)

    managed.attempts = 1
    # Not retriable: the exit connected and was refused by the destination.
    assert manager._retry(managed, end(EndReason.CONNECTREFUSED)) is False
    # Exit policy: the exit is not asked again for this stream.
    assert manager._retry(managed, end(EndReason.EXITPOLICY)) is True
    assert relay("x").rsa_id in managed.excluded_exits
    # Resolve failures: retried on other circuits up to MAX_RESOLVE_FAILURES, the circuit retired.
    for _ in range(MAX_RESOLVE_FAILURES - 1):
        assert manager._retry(managed, end(EndReason.RESOLVEFAILED)) is True
    assert circuit.usable is False
    assert manager._retry(managed, end(EndReason.RESOLVEFAILED)) is False
    assert managed.last_end_reason == EndReason.RESOLVEFAILED


class OneChannelLinks:
    """A link pool whose every link is one recording channel, open at once."""

    def __init__(self) -> None:
        self.channel = RecordingChannel()

    def get(self, relay: RelayTarget) -> defer.Deferred:
        return defer.succeed(self.channel)


def answer_build(channel: RecordingChannel, path: SimulatedPath):
    """Play the relays of `path` for the circuit whose CREATE2 the channel holds; the built Circuit."""
    ((circ_id, command, payload),) = channel.take()
    assert command == CMD_CREATE2
    circuit = channel.circuits[circ_id]
    circuit.cell_received(CMD_CREATED2, path.answer_create2(payload))
    while len(path.hops) < len(path.relays):
        ((_, _, payload),) = channel.take()
        circuit.cell_received(CMD_RELAY, path.answer_extend2(path.receive(payload)))
    return circuit


def test_a_stream_refused_by_exit_policy_moves_to_a_new_circuit_without_waiting_for_the_reactor():
    clock = Clock()
    guard, middle, first_exit, second_exit = (SimulatedRelay(name) for name in ("guard", "middle", "x1", "x2"))

    def choose_path(port, exclude=frozenset()):
        exit_relay = second_exit if first_exit.rsa_id in exclude else first_exit
        return [guard.target, middle.target, exit_relay.target]

    links = OneChannelLinks()
    manager = CircuitManager(links, choose_path, reactor=clock, clock=clock.seconds, preemptive_circuits=0)
    sink = CollectingSink()
    managed = manager.open_stream(sink, "example.test", 80)
    first_path = SimulatedPath([guard, middle, first_exit])
    first = answer_build(links.channel, first_path)
    ((_, _, payload),) = links.channel.take()
    begin = first_path.receive(payload)
    assert begin.command == RelayCommand.BEGIN and managed.attempts == 1
    first.cell_received(CMD_RELAY, first_path.send(2, RelayCommand.END, begin.stream_id,
                                                   bytes([EndReason.EXITPOLICY])))
    # At once, with no reactor turn: the stream is off the first circuit and a circuit avoiding that exit is
    # being built for it.
    assert managed.stream.state is StreamState.DETACHED and first_exit.rsa_id in managed.excluded_exits
    second_path = SimulatedPath([guard, middle, second_exit])
    second = answer_build(links.channel, second_path)
    ((_, _, payload),) = links.channel.take()
    begin = second_path.receive(payload)
    assert begin.command == RelayCommand.BEGIN and managed.attempts == 2
    second.cell_received(CMD_RELAY, second_path.send(2, RelayCommand.CONNECTED, begin.stream_id))
    assert managed.stream.state is StreamState.SUCCEEDED and sink.connected.called
    assert managed.managed_circuit.circuit is second
    assert [call for call in clock.getDelayedCalls() if call.getTime() <= clock.seconds()] == []


class RealChannelLinks:
    """A link pool whose every link is one real, open `Channel` (its handshake skipped); `take` reads back
    the cells it queued, as `RecordingChannel.take` does. Once that channel is closed, a new link is being
    opened (a Deferred that does not fire), as LinkPool never hands out a closed channel."""

    CELL_LEN = 4 + 1 + 509  # link version 5: circuit id, command, payload

    def __init__(self) -> None:
        from oppy.link.channel import Channel, ChannelState

        self.channel = Channel(b"\0" * 20, None, "127.0.0.1:1")
        self.channel.state = ChannelState.OPEN
        self.channel.link_version = 5
        self.channel.data_to_send()  # our VERSIONS

    @property
    def circuits(self) -> dict:
        return self.channel.circuits

    def get(self, relay: RelayTarget) -> defer.Deferred:
        return defer.succeed(self.channel) if self.channel.is_open else defer.Deferred()

    def take(self) -> list[tuple[int, int, bytes]]:
        data = self.channel.data_to_send()
        cells = [data[offset:offset + self.CELL_LEN] for offset in range(0, len(data), self.CELL_LEN)]
        return [(int.from_bytes(cell[:4], "big"), cell[4], cell[5:]) for cell in cells]


def test_a_stream_retried_while_its_link_closes_avoids_the_other_circuits_of_that_link():
    """Channel.close tells its circuits one by one, and a stream on the first one told is retried at once:
    it must not be attached to a circuit of the same link that has not been told yet. (It was, the BEGIN
    raised out of Channel.close, the circuits after it were never told, and from then on every new stream
    was attached to that dead circuit: the SOCKS request failed and the stream was never forgotten.)"""
    clock = Clock()
    guard, middle, exit_relay = (SimulatedRelay(name) for name in ("guard", "middle", "exit"))
    links = RealChannelLinks()
    manager = CircuitManager(links, lambda port, exclude=frozenset(): [guard.target, middle.target, exit_relay.target],
                             reactor=clock, clock=clock.seconds, preemptive_circuits=0)
    first_sink = CollectingSink()
    waiting = manager.open_stream(first_sink, "example.test", 80)
    first = answer_build(links, SimulatedPath([guard, middle, exit_relay]))
    assert waiting.managed_circuit.circuit is first and waiting.stream.state is StreamState.SENTCONNECT
    links.take()  # the BEGIN
    second_managed = manager.launch(80)
    second = answer_build(links, SimulatedPath([guard, middle, exit_relay]))
    assert second_managed.is_open and list(links.circuits.values()) == [first, second]

    links.channel.close("the guard went away")

    assert not first_sink.ended.called  # retried, not failed: waiting for a circuit on a live link
    assert waiting.stream.state is StreamState.DETACHED and waiting in manager._stream_waiters
    assert not second_managed.is_open and second_managed.number not in manager.circuits
    # A new stream is not given a dead circuit either, and nothing is left behind once both end.
    later_sink = CollectingSink()
    later = manager.open_stream(later_sink, "example.test", 80)
    assert later.stream.state is StreamState.NEW
    for managed in (waiting, later):
        managed.stream.close(EndReason.DONE)
    assert manager.streams == {} and manager._managed_streams == {} and manager._stream_waiters == []
    for sink in (first_sink, later_sink):
        sink.connected.addErrback(lambda failure: failure.trap(StreamEnd))


def connect_stream(links: OneChannelLinks, path: SimulatedPath, managed) -> None:
    """Answer the BEGIN the channel holds with CONNECTED from the exit."""
    ((circ_id, _, payload),) = links.channel.take()
    begin = path.receive(payload)
    assert begin.command == RelayCommand.BEGIN
    links.channel.circuits[circ_id].cell_received(CMD_RELAY, path.send(2, RelayCommand.CONNECTED, begin.stream_id))
    assert managed.stream.state is StreamState.SUCCEEDED


def test_circuits_dirty_for_too_long_are_closed_once_their_streams_are_gone():
    """tor's circuit_expire_old_circuits_clientside (every NewCircuitPeriod): a circuit first used more than
    MaxCircuitDirtiness ago takes no new streams, and is closed once it carries none. Without it every
    MaxCircuitDirtiness a new circuit joined the old ones, which stayed open for the life of the process."""
    clock = Clock()
    guard, middle, exit_relay = (SimulatedRelay(name) for name in ("guard", "middle", "exit"))
    links = OneChannelLinks()
    manager = CircuitManager(links, lambda port, exclude=frozenset(): [guard.target, middle.target, exit_relay.target],
                             reactor=clock, clock=clock.seconds, preemptive_circuits=0, max_circuit_dirtiness=60)
    manager.start()
    for cycle in range(10):
        managed = manager.open_stream(CollectingSink(), "example.test", 80)
        path = SimulatedPath([guard, middle, exit_relay])
        answer_build(links.channel, path)
        connect_stream(links, path, managed)
        clock.advance(61)  # the circuit is now too dirty for new streams, but its stream goes on
        assert managed.managed_circuit.number in manager.circuits
        managed.stream.close(EndReason.DONE)
        links.channel.take()  # the END
        clock.advance(NEW_CIRCUIT_PERIOD)
        assert manager.circuits == {} and links.channel.circuits == {}, f"cycle {cycle}"
        assert links.channel.destroyed[-1][0] == managed.managed_circuit.circuit.circ_id
    assert len(links.channel.destroyed) == 10


def test_a_circuit_marked_unusable_is_closed_when_its_last_stream_ends():
    """A stream that got no CONNECTED in time makes its circuit unusable (tor
    mark_circuit_unusable_for_new_conns backdates its dirtiness): it is closed once its streams are gone."""
    clock = Clock()
    guard, middle, exit_relay = (SimulatedRelay(name) for name in ("guard", "middle", "exit"))
    links = OneChannelLinks()
    manager = CircuitManager(links, lambda port, exclude=frozenset(): [guard.target, middle.target, exit_relay.target],
                             reactor=clock, clock=clock.seconds, preemptive_circuits=0)
    manager.start()
    path = SimulatedPath([guard, middle, exit_relay])
    connected = manager.open_stream(CollectingSink(), "example.test", 80)
    first = answer_build(links.channel, path)
    connect_stream(links, path, connected)
    first_managed = connected.managed_circuit
    first_managed.usable = False  # as after a stream's connect timeout on it
    clock.advance(NEW_CIRCUIT_PERIOD)
    assert first_managed.number in manager.circuits  # a stream is still on it
    connected.stream.close(EndReason.DONE)
    clock.advance(NEW_CIRCUIT_PERIOD)
    assert first_managed.number not in manager.circuits and first.circ_id not in links.channel.circuits
