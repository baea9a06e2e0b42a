"""The circuit manager's stream rules, with a fake clock and no network."""

from __future__ import annotations

import random

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from oppy.cell.commands import DestroyReason, EndReason, RelayCommand
from oppy.circuit.build_timeout import CircuitBuildTimes
from oppy.circuit.circuit import MAX_STREAMS_PER_CIRCUIT, CircuitError, CircuitState
from oppy.circuit.manager import (
    MAX_RESOLVE_FAILURES,
    NEW_CIRCUIT_PERIOD,
    CircuitBuilt,
    CircuitClosed,
    CircuitExtended,
    CircuitFailed,
    CircuitGuardWait,
    CircuitLaunched,
    CircuitManager,
    CircuitPurpose,
    CircuitStatus,
    ManagedCircuit,
    StreamChanged,
)
from oppy.netdoc.relay import RelayTarget
from oppy.path.chooser import PathChooser
from oppy.path.guards import GuardSample
from oppy.stream.stream import StreamEnd, StreamState
from tests.support.streams import CollectingSink
from tests.unit.relaysim import (
    CMD_CREATE2,
    CMD_CREATE_FAST,
    CMD_CREATED2,
    CMD_CREATED_FAST,
    CMD_DESTROY,
    CMD_RELAY,
    RecordingChannel,
    SimulatedPath,
    SimulatedRelay,
)
from tests.unit.test_path_guards import HOUR, MINUTE, T0 as GUARDS_T0, one_primary_and_a_confirmed_spare


def not_learning(clock: Clock) -> CircuitBuildTimes:
    """Build times that learn nothing, so the manager launches no test circuits of its own."""
    return CircuitBuildTimes(learn=False, clock=clock.seconds)


class FixedPaths(PathChooser):
    """Every circuit takes the same path (the simulated relays')."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def choose_circuit_path(self, port=None, exclude=(), rng=None):
        return list(self.path), None


def relay(name: str) -> RelayTarget:
    return RelayTarget(name, name.encode().ljust(20, b"\0"), "127.0.0.1", 1, bytes(32))


def manager_without_network(clock: Clock) -> CircuitManager:
    """A manager whose path chooser has no NetDir: every path choice fails."""
    return CircuitManager(links=None, paths=PathChooser(), reactor=clock, clock=clock.seconds,
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


def test_streams_take_the_consensus_xon_xoff_parameters():
    clock = Clock()
    manager = manager_without_network(clock)
    manager.attach_automatically = False
    manager.update_consensus_params({"cc_xoff_client": 7, "cc_xon_change_pct": 500})
    managed = manager.open_stream(CollectingSink(), "example.test", 80)
    params = managed.stream.flow_params
    assert (params.xoff_client_bytes, params.xon_change_pct) == (7 * 498, 99)  # clamped as tor does
    managed.stream.close()


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
    managed.exit_relay = relay("m")  # a controller's ATTACHSTREAM HOP=2

    def end(reason):
        return StreamEnd("test", reason, remote=True, before_connected=True)

    managed.attempts = 1
    # Not retriable: the exit connected and was refused by the destination.
    assert manager._retry(managed, end(EndReason.CONNECTREFUSED)) is False
    # Exit policy: the relay the stream exited from is not asked again for this stream.
    assert manager._retry(managed, end(EndReason.EXITPOLICY)) is True
    assert managed.excluded_exits == {relay("m").rsa_id}
    managed.exit_relay = circuit.exit
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

    class SimulatedPaths(PathChooser):
        """Paths through the simulated relays: the first exit, or the second once the first is excluded."""

        def choose_circuit_path(self, port=None, exclude=(), rng=None):
            exit_relay = second_exit if first_exit.rsa_id in exclude else first_exit
            return [guard.target, middle.target, exit_relay.target], None

    links = OneChannelLinks()
    manager = CircuitManager(links, SimulatedPaths(), reactor=clock, clock=clock.seconds, preemptive_circuits=0)
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


# ------------------------------------------------------------------------------ the learned build timeout


def build_times_for(clock: Clock, **params) -> CircuitBuildTimes:
    times = CircuitBuildTimes(clock=clock.seconds, rng=random.Random(1))
    times.update_params(params)
    return times


def answer_create(channel: RecordingChannel, path: SimulatedPath) -> None:
    """Answer the one CREATE2 the channel holds, building the circuit's first hop."""
    ((circ_id, command, payload),) = channel.take()
    assert command == CMD_CREATE2
    channel.circuits[circ_id].cell_received(CMD_CREATED2, path.answer_create2(payload))


def test_only_the_three_hop_circuits_oppy_chose_teach_the_build_timeout():
    clock = Clock()
    guard, middle, exit_relay = (SimulatedRelay(name) for name in ("guard", "middle", "exit"))
    links = OneChannelLinks()
    times = build_times_for(clock)
    manager = CircuitManager(links, FixedPaths([guard.target, middle.target, exit_relay.target]),
                             reactor=clock, clock=clock.seconds, preemptive_circuits=0, build_times=times)
    manager.launch(80)
    clock.advance(0.25)
    answer_build(links.channel, SimulatedPath([guard, middle, exit_relay]))
    assert times.build_times == [250] and times.succeeded == 1
    for purpose in CircuitPurpose:  # EXTENDCIRCUIT, with any purpose
        chosen = manager.launch(path=[guard.target, middle.target, exit_relay.target], purpose=purpose)
        clock.advance(0.3)
        answer_build(links.channel, SimulatedPath([guard, middle, exit_relay]))
        assert chosen.is_open
    assert times.build_times == [250]


def test_a_build_past_its_timeout_is_waited_for_while_no_circuit_is_open():
    clock = Clock()
    relays = [SimulatedRelay(name) for name in ("guard", "middle", "exit")]
    links = OneChannelLinks()
    times = build_times_for(clock, cbtmincircs=3, cbtinitialtimeout=5000)
    for milliseconds in (100, 200, 2000):
        times.add_time(milliseconds)
    times.set_timeout()
    manager = CircuitManager(links, FixedPaths([relay.target for relay in relays]),
                             reactor=clock, clock=clock.seconds, preemptive_circuits=0, build_times=times)
    waited_for = manager.launch(80)
    answer_create(links.channel, SimulatedPath(relays))
    links.channel.take()  # its EXTEND2, never answered
    clock.advance(times.timeout + 0.01)
    assert waited_for.status is CircuitStatus.EXTENDED and times.timeouts == 1
    manager.launch(80)
    answer_build(links.channel, SimulatedPath(relays))
    measured = manager.launch(80)
    answer_create(links.channel, SimulatedPath(relays))
    clock.advance(times.timeout + 0.01)
    # A circuit is open now: the slow one fails for its users (and builds on, to be measured).
    assert measured.status is CircuitStatus.CLOSED and measured.number not in manager.circuits
    assert measured.error.reason == DestroyReason.TIMEOUT and times.timeouts == 2
    assert links.channel.destroyed == [] and waited_for.status is CircuitStatus.EXTENDED
    clock.advance(5)
    assert waited_for.status is CircuitStatus.CLOSED and len(links.channel.destroyed) == 2


def test_while_learning_test_circuits_are_built_and_unused_ones_retired():
    clock = Clock()
    relays = [SimulatedRelay(name) for name in ("guard", "middle", "exit")]
    links = OneChannelLinks()
    times = build_times_for(clock, cbtmincircs=4, cbttestfreq=5, cbtmaxopencircs=2, cbtlearntimeout=30)
    manager = CircuitManager(links, FixedPaths([relay.target for relay in relays]),
                             reactor=clock, clock=clock.seconds, preemptive_circuits=1, build_times=times)

    def built_now() -> None:
        clock.advance(0.1)
        answer_build(links.channel, SimulatedPath(relays))

    def open_numbers() -> list[int]:
        return sorted(number for number, managed in manager.circuits.items() if managed.is_open)

    manager.start()
    built_now()  # circuit 1, the preemptive one, at t=0
    clock.advance(5)
    assert open_numbers() == [1]
    clock.advance(1)  # more than cbttestfreq since the last launch: a test circuit
    built_now()
    assert open_numbers() == [1, 2]
    clock.advance(20)
    assert open_numbers() == [1, 2]  # cbtmaxopencircs clean circuits: no more
    clock.advance(5)  # circuit 1 unused for cbtlearntimeout: retired, and a test circuit takes its place
    assert links.channel.destroyed and 1 not in manager.circuits
    built_now()
    assert open_numbers() == [2, 3]
    clock.advance(6)  # circuit 2's turn
    built_now()
    assert open_numbers() == [3, 4] and times.enough_to_compute
    # Learned: unused circuits stay, and no more test circuits are built.
    clock.advance(300)
    assert open_numbers() == [3, 4] and links.channel.take() == []
    manager.close_all()
    assert not clock.getDelayedCalls()


def test_a_stream_beyond_the_cap_of_a_circuit_goes_on_a_new_circuit_without_an_error():
    clock = Clock()
    relays = [SimulatedRelay(name) for name in ("guard", "middle", "exit")]
    links = OneChannelLinks()
    manager = CircuitManager(links, FixedPaths([relay.target for relay in relays]), reactor=clock,
                             clock=clock.seconds, preemptive_circuits=0)
    sinks = [CollectingSink() for _ in range(MAX_STREAMS_PER_CIRCUIT + 1)]
    streams = [manager.open_stream(sink, "example.test", 80) for sink in sinks]
    assert len(manager.circuits) == 1  # they all wait for the one circuit being built
    first = answer_build(links.channel, SimulatedPath(relays))
    # 300 streams went on it; for the last one a second circuit is on its way.
    assert len(first.streams) == MAX_STREAMS_PER_CIRCUIT and not first.has_stream_room
    sent = links.channel.take()
    assert sum(command == CMD_RELAY for _, command, _ in sent) == MAX_STREAMS_PER_CIRCUIT
    (create2,) = [cell for cell in sent if cell[1] == CMD_CREATE2]
    links.channel.sent.append(create2)
    second = answer_build(links.channel, SimulatedPath(relays))
    assert streams[-1].stream.circuit is second and len(second.streams) == 1
    assert all(not sink.connected.called for sink in sinks) and not any(s.stream.ended for s in streams)
    # A controller may not put one more on the full circuit either.
    (full,) = [m for m in manager.circuits.values() if m.circuit is first]
    with pytest.raises(RuntimeError, match="as many streams as a circuit may"):
        manager.controller_attach(streams[-1], full)
    assert streams[-1].stream.circuit is second


class ThreeRelays(PathChooser):
    """A guard, a middle and an exit of relaysim, always chosen in that order; the ports asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.relays = [SimulatedRelay(name) for name in ("guard", "middle", "exit")]
        self.ports: list = []

    def choose_circuit_path(self, port=None, exclude=(), rng=None):
        self.ports.append(port)
        return [relay.target for relay in self.relays], None

    def answer(self, channel: RecordingChannel):
        return answer_build(channel, SimulatedPath(self.relays))


def test_observers_hear_typed_events_with_the_purpose_from_launch_to_close():
    clock = Clock()
    relays, links, events = ThreeRelays(), OneChannelLinks(), []
    manager = CircuitManager(links, relays, reactor=clock, clock=clock.seconds, preemptive_circuits=0,
                             observers=[events.append])
    later = []
    manager.add_observer(later.append)
    managed = manager.launch(443)
    circuit = relays.answer(links.channel)
    circuit.cell_received(CMD_DESTROY, bytes([DestroyReason.FINISHED]) + bytes(508))
    assert [type(event) for event in events] == [CircuitLaunched, CircuitExtended, CircuitExtended, CircuitBuilt,
                                                 CircuitClosed]
    assert all(event.circuit is managed and event.purpose is CircuitPurpose.GENERAL for event in events)
    assert [event.hops for event in events if isinstance(event, CircuitExtended)] == [1, 2]
    assert events[-1].error.remote and events[-1].error.reason == DestroyReason.FINISHED
    assert later == events and manager.circuit_established
    manager.remove_observer(later.append)
    manager.launch(443)
    assert len(later) == len(events) - 1


def test_a_failed_build_is_told_as_failed_then_closed():
    clock = Clock()
    relays, links, events = ThreeRelays(), OneChannelLinks(), []
    manager = CircuitManager(links, relays, reactor=clock, clock=clock.seconds, preemptive_circuits=0,
                             observers=[events.append])
    manager.launch(443)
    ((circ_id, _, _),) = links.channel.take()
    links.channel.circuits[circ_id].cell_received(CMD_DESTROY, bytes([DestroyReason.RESOURCELIMIT]) + bytes(508))
    assert [type(event) for event in events] == [CircuitLaunched, CircuitFailed, CircuitClosed]
    assert events[1].error is events[2].error and events[1].error.reason == DestroyReason.RESOURCELIMIT
    assert not manager.circuit_established and manager.circuits == {}


def test_a_preemptive_circuit_without_stable_relays_does_not_carry_a_long_lived_port():
    """circuituse.c circuit_is_acceptable: a stream to a long-lived port needs a circuit launched with
    need_uptime; the clean circuit built ahead for port 80 is not one."""
    clock = Clock()
    relays, links = ThreeRelays(), OneChannelLinks()
    manager = CircuitManager(links, relays, reactor=clock, clock=clock.seconds, preemptive_circuits=1)
    manager.start()
    preemptive = relays.answer(links.channel)
    (clean,) = manager.circuits.values()
    assert (clean.need_uptime, clean.build_flags) == (False, ("NEED_CAPACITY",))
    ssh = manager.open_stream(CollectingSink(), "example.test", 22)
    assert ssh.managed_circuit is None and relays.ports == [80, 22]
    relays.answer(links.channel)
    assert ssh.managed_circuit is not clean and ssh.managed_circuit.need_uptime
    assert ssh.managed_circuit.build_flags == ("NEED_CAPACITY", "NEED_UPTIME")
    assert clean.dirty_since is None and preemptive.streams == {}


def answer_create_fast(channel: RecordingChannel, relay: SimulatedRelay):
    """Play `relay` for the one circuit whose CREATE_FAST the channel holds; the built Circuit."""
    ((circ_id, command, payload),) = channel.take()
    assert command == CMD_CREATE_FAST
    circuit = channel.circuits[circ_id]
    circuit.cell_received(CMD_CREATED_FAST, SimulatedPath([relay]).answer_create_fast(payload))
    return circuit


def test_directory_circuits_are_one_hop_created_fast_shared_and_reused_while_fresh():
    clock = Clock()
    links, events = OneChannelLinks(), []
    manager = CircuitManager(links, ThreeRelays(), reactor=clock, clock=clock.seconds,
                             preemptive_circuits=0, observers=[events.append])
    cache = SimulatedRelay("fallback")
    target = cache.target._replace(ntor_onion_key=None, ed25519_id=None)      # known by its line only
    first, second = manager.directory_circuit(target), manager.directory_circuit(target)
    circuit = answer_create_fast(links.channel, cache)
    assert first.result is circuit and second.result is circuit and circuit.path == [target]
    (managed,) = manager.circuits.values()
    assert managed.purpose is CircuitPurpose.DIRECTORY and managed.build_flags == (
        "ONEHOP_TUNNEL", "IS_INTERNAL", "NEED_CAPACITY")
    assert [(type(event), event.purpose) for event in events] == [(CircuitLaunched, CircuitPurpose.DIRECTORY),
                                                                  (CircuitBuilt, CircuitPurpose.DIRECTORY)]
    assert not manager.circuit_established        # a directory circuit carries no client stream
    clock.advance(600)
    assert manager.directory_circuit(target).result is circuit
    clock.advance(1)                               # MaxCircuitDirtiness after its first use: a new one
    third = manager.directory_circuit(target)
    assert circuit.state is CircuitState.CLOSED and not third.called
    assert answer_create_fast(links.channel, cache) is third.result
    stream = manager.open_stream(CollectingSink(), "example.test", 80)   # never on a directory circuit
    assert stream.managed_circuit is None
    assert sorted(m.purpose.value for m in manager.circuits.values()) == ["directory", "general"]


def test_a_failed_directory_circuit_fails_every_caller_and_the_next_call_builds_anew():
    clock = Clock()
    links = OneChannelLinks()
    manager = CircuitManager(links, ThreeRelays(), reactor=clock, clock=clock.seconds,
                             preemptive_circuits=0)
    cache = SimulatedRelay("authority")
    waiting = [manager.directory_circuit(cache.target), manager.directory_circuit(cache.target)]
    ((circ_id, command, _),) = links.channel.take()
    assert command == CMD_CREATE2                  # its onion key is known: ntor
    links.channel.circuits[circ_id].cell_received(CMD_DESTROY, bytes([DestroyReason.HIBERNATING]) + bytes(508))
    for waiter in waiting:
        failure = waiter.result
        waiter.addErrback(lambda failure: None)
        assert failure.check(CircuitError) and failure.value.reason == DestroyReason.HIBERNATING
    assert manager.circuits == {}
    retry = manager.directory_circuit(cache.target)
    assert answer_build(links.channel, SimulatedPath([cache])) is retry.result


class SampledPaths(PathChooser):
    """oppy's path chooser on a given GuardSample (guard-spec 4.6-4.9), its clock the test's from `start`; the
    guard its sample picks, then a middle and an exit of relaysim."""

    def __init__(self, sample, clock: Clock, start: float) -> None:
        super().__init__(clock=lambda: start + clock.seconds())
        self.guards = sample
        self.relays = {guard.fingerprint: SimulatedRelay(guard.nickname) for guard in sample.guards}
        for fingerprint, relay in self.relays.items():
            relay.rsa_id = bytes.fromhex(fingerprint)
        self.middle, self.exit = SimulatedRelay("middle"), SimulatedRelay("exit")

    def relays_of(self, managed: ManagedCircuit) -> list[SimulatedRelay]:
        return [self.relays[managed.path[0].fingerprint], self.middle, self.exit]

    def choose_circuit_path(self, port=None, exclude=(), rng=None):
        choice = self.guards.pick(self.clock())
        return [self.relays[choice.fingerprint].target, self.middle.target, self.exit.target], choice


class ChannelPerRelay:
    """A link pool with one recording channel per relay, open at once unless the relay is in `refused`."""

    def __init__(self) -> None:
        self.channels: dict[bytes, RecordingChannel] = {}
        self.refused: set[bytes] = set()

    def get(self, relay: RelayTarget) -> defer.Deferred:
        if relay.rsa_id in self.refused:
            return defer.fail(ConnectionRefusedError(f"{relay.nickname} refuses"))
        return defer.succeed(self.channels.setdefault(relay.rsa_id, RecordingChannel()))

    def build(self, paths: SampledPaths, managed: ManagedCircuit) -> SimulatedPath:
        """Play the relays for the circuit's build; the network side of the built circuit."""
        path = SimulatedPath(paths.relays_of(managed))
        answer_build(self.channels[managed.path[0].rsa_id], path)
        return path


def guarded_manager(events: list):
    """A manager on a guard sample whose only primary guard just failed, with a confirmed spare (guard-spec
    tests' one_primary_and_a_confirmed_spare): every circuit goes through a non-primary guard."""
    clock = Clock()
    start = GUARDS_T0 + HOUR
    paths = SampledPaths(one_primary_and_a_confirmed_spare(start), clock, start)
    links = ChannelPerRelay()
    manager = CircuitManager(links, paths, reactor=clock, clock=clock.seconds, preemptive_circuits=0,
                             observers=[events.append])
    return clock, paths, links, manager


def test_a_circuit_through_a_non_primary_guard_waits_until_no_better_guard_can_be():
    events = []
    clock, paths, links, manager = guarded_manager(events)
    better, worse = manager.launch(443), manager.launch(443)
    assert (better.guard.guard, worse.guard.guard) == (paths.guards.guards[5], paths.guards.guards[1])
    clock.advance(3)
    network = links.build(paths, worse)            # the worse guard's circuit is built first: it waits
    assert worse.status is CircuitStatus.GUARD_WAIT and not worse.is_open
    assert isinstance(events[-1], CircuitGuardWait) and events[-1].circuit is worse
    sink = CollectingSink()
    stream = manager.open_stream(sink, "example.test", 443)
    assert stream.managed_circuit is None and len(manager.circuits) == 2     # waits, launches nothing
    clock.advance(11)
    assert worse.status is CircuitStatus.GUARD_WAIT     # the better guard may still answer
    clock.advance(1)                                    # NONPRIMARY_GUARD_CONNECT_TIMEOUT after it started
    assert worse.status is CircuitStatus.BUILT and isinstance(events[-2], CircuitBuilt)
    assert stream.managed_circuit is worse and manager.circuit_established
    ((_, _, payload),) = links.channels[worse.path[0].rsa_id].take()
    assert network.receive(payload).command == RelayCommand.BEGIN


def test_a_waiting_circuit_blocked_by_a_better_one_expires():
    events = []
    clock, paths, links, manager = guarded_manager(events)
    better, worse = manager.launch(443), manager.launch(443)
    links.build(paths, worse)
    clock.advance(1)
    links.build(paths, better)                     # both wait; the better one is taken, the other still waits
    assert better.status is CircuitStatus.BUILT and worse.status is CircuitStatus.GUARD_WAIT
    clock.advance(10 * MINUTE - 2)
    assert worse.status is CircuitStatus.GUARD_WAIT
    clock.advance(2)                               # NONPRIMARY_GUARD_IDLE_TIMEOUT since it waits: closed
    assert worse.status is CircuitStatus.CLOSED and worse.number not in manager.circuits
    assert isinstance(events[-1], CircuitClosed) and events[-1].circuit is worse
    assert clock.getDelayedCalls() == []           # nothing waits: no more checks


def test_a_circuit_failing_at_its_guard_marks_it_down_and_a_destroy_does_not():
    events = []
    clock, paths, links, manager = guarded_manager(events)
    spare = paths.guards.guards[5]
    links.refused.add(bytes.fromhex(spare.fingerprint))
    failed = manager.launch(443)
    assert failed.guard.guard is spare and failed.status is CircuitStatus.CLOSED and spare.is_down
    assert [type(event) for event in events] == [CircuitLaunched, CircuitFailed, CircuitClosed]
    destroyed = manager.launch(443)                # the next guard in sample order
    guard = destroyed.guard.guard
    ((circ_id, _, _),) = links.channels[destroyed.path[0].rsa_id].take()
    links.channels[destroyed.path[0].rsa_id].circuits[circ_id].cell_received(
        CMD_DESTROY, bytes([DestroyReason.RESOURCELIMIT]) + bytes(508))
    assert destroyed.status is CircuitStatus.CLOSED and not guard.is_down and not guard.is_pending


def one_bridge_manager(events: list):
    """A manager whose guard sample is one bridge (UseBridges with one Bridge line), its link refused (a dead
    pluggable transport) until the test clears `links.refused`; a circuit through it has just failed, so the
    bridge is down."""
    clock = Clock()
    start = GUARDS_T0 + HOUR
    sample = GuardSample(rng=random.Random(1))
    sample.use_bridges([("AA" * 20, "bridge")], start)
    paths = SampledPaths(sample, clock, start)
    links = ChannelPerRelay()
    links.refused.add(bytes.fromhex("AA" * 20))
    manager = CircuitManager(links, paths, reactor=clock, clock=clock.seconds, preemptive_circuits=0,
                             observers=[events.append], unattached_timeout=120)
    assert manager.launch(443).status is CircuitStatus.CLOSED and sample.guards[0].is_down
    events.clear()
    return clock, paths, links, manager


def test_a_stream_that_finds_every_guard_down_waits_and_is_attached_once_one_answers():
    """circuit_get_open_circ_or_launch: no guard can start a circuit (the only bridge failed through a dead
    transport) -- the stream is delayed, not failed, and goes out once the bridge answers again. (It was told
    NOROUTE at once, seen in CI after obfs4proxy was restarted.)"""
    events = []
    clock, paths, links, manager = one_bridge_manager(events)
    sink = CollectingSink()
    managed = manager.open_stream(sink, "example.test", 443)
    assert not managed.stream.ended and managed.managed_circuit is None
    assert not [event for event in events if not isinstance(event, StreamChanged)]   # no circuit launched
    assert not paths.guards.guards[0].is_down          # but the bridge is marked for a retry, as tor does
    links.refused.clear()                               # the transport is back
    clock.advance(1)
    (launched,) = manager.circuits.values()
    network = links.build(paths, launched)
    assert managed.managed_circuit is launched and managed.attempts == 1
    ((_, _, payload),) = links.channels[launched.path[0].rsa_id].take()
    begin = network.receive(payload)
    assert begin.command == RelayCommand.BEGIN
    launched.circuit.cell_received(CMD_RELAY, network.send(2, RelayCommand.CONNECTED, begin.stream_id))
    assert managed.stream.state is StreamState.SUCCEEDED and sink.connected.called


def test_a_stream_waiting_for_a_guard_is_tried_each_second_and_given_up_after_socks_timeout():
    events = []
    clock, paths, links, manager = one_bridge_manager(events)
    sink = CollectingSink()
    managed = manager.open_stream(sink, "example.test", 443)
    assert not managed.stream.ended
    clock.pump([0.5] * 120)
    launches = sum(isinstance(event, CircuitLaunched) for event in events)
    assert 30 <= launches <= 61                         # about once a second, not in a busy loop
    clock.pump([0.5] * 118)
    assert not managed.stream.ended
    clock.pump([0.5] * 2)
    assert managed.stream.ended and sink.end.reason == EndReason.TIMEOUT and sink.end.before_connected
    sink.connected.addErrback(lambda failure: failure.trap(StreamEnd))
    assert manager.circuits == {} and clock.getDelayedCalls() == []


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
    manager = CircuitManager(links, FixedPaths([guard.target, middle.target, exit_relay.target]),
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
    manager = CircuitManager(links, FixedPaths([guard.target, middle.target, exit_relay.target]),
                             reactor=clock, clock=clock.seconds, preemptive_circuits=0, max_circuit_dirtiness=60,
                             build_times=not_learning(clock))
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
    manager = CircuitManager(links, FixedPaths([guard.target, middle.target, exit_relay.target]),
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


def test_exit_circuits_ask_for_congestion_control_as_the_latest_consensus_says():
    clock = Clock()
    relays, links = ThreeRelays(), OneChannelLinks()
    relays.relays = [SimulatedRelay(name, offers_congestion_control=True) for name in ("guard", "middle", "exit")]
    manager = CircuitManager(links, relays, reactor=clock, clock=clock.seconds, preemptive_circuits=0)
    manager.launch(443)
    circuit = relays.answer(links.channel)
    assert circuit.congestion_control is not None and circuit.congestion_control.sendme_inc == 31
    assert relays.relays[2].client_extensions == [(1, b"")]  # the CC request, in ntor v3
    manager.update_consensus_params({"cc_alg": 0})
    relays.relays[2].client_extensions = None
    manager.launch(443)
    circuit = relays.answer(links.channel)
    assert circuit.congestion_control is None and relays.relays[2].client_extensions is None  # ntor
