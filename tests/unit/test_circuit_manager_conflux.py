"""The circuit manager's conflux sets (tor's conflux_pool.c) over simulated relays (tests/unit/relaysim.py)
that offer congestion control: a set's legs go to one exit through other guards and middles, link, carry an
exit stream; a leg lost before the set carried a stream is replaced, one lost after is not."""

from __future__ import annotations

import logging

from twisted.internet.task import Clock

from oppy.cell.commands import DestroyReason
from oppy.circuit.conflux import ConfluxParams
from oppy.circuit.isolation import StreamIsolation
from oppy.circuit.linked import TunnelState
from oppy.circuit.manager import CircuitManager, CircuitPurpose
from oppy.path.chooser import PathChooser
from tests.support.streams import CollectingSink
from tests.unit.relaysim import CMD_CREATE2, CMD_CREATED2, CMD_DESTROY, CMD_RELAY, SimulatedPath, SimulatedRelay
from tests.unit.test_circuit_manager import OneChannelLinks, not_learning

LINK, LINKED, BEGIN = 19, 20, 1
EXIT = 2


class ConfluxPaths(PathChooser):
    """Conflux legs through simulated relays: the first guard and middle not excluded by the first tier."""

    def __init__(self, guards, middles, exit_relay):
        super().__init__()
        self.guards, self.middles, self.exit_relay = guards, middles, exit_relay
        self.calls = []

    def choose_conflux_path(self, port=None, exit_id=None, exclude_tiers=((),)):
        excluded = set(next(iter(exclude_tiers)))
        self.calls.append((exit_id, excluded))
        guard = next(relay for relay in self.guards if relay.rsa_id not in excluded)
        middle = next(relay for relay in self.middles if relay.rsa_id not in excluded)
        return [guard.target, middle.target, self.exit_relay.target], None

    def choose_circuit_path(self, port=None, exclude=(), rng=None):
        """A single exit circuit: the last guard and middle, which no conflux leg takes first."""
        return [self.guards[-1].target, self.middles[-1].target, self.exit_relay.target], None

    def exit_allows(self, rsa_id, port):
        return True


def build_legs(links, relays_by_guard) -> dict:
    """Answer every CREATE2 in the channel as the simulated relays of its guard would, and every EXTEND2 after
    it: {circuit: its SimulatedPath}."""
    built = {}
    channel = links.channel
    while True:
        creates = [cell for cell in channel.sent if cell[1] == CMD_CREATE2]
        if not creates:
            return built
        channel.sent.remove(creates[0])
        circ_id, _, payload = creates[0]
        circuit = channel.circuits[circ_id]
        path = SimulatedPath(relays_by_guard[circuit.path[0].rsa_id])
        circuit.cell_received(CMD_CREATED2, path.answer_create2(payload))
        while len(path.hops) < 3:
            (cell,) = [cell for cell in channel.sent if cell[0] == circ_id]
            channel.sent.remove(cell)
            circuit.cell_received(CMD_RELAY, path.answer_extend2(path.receive(cell[2])))
        built[circuit] = path


def received(links, circuit, path):
    cells = [cell for cell in links.channel.sent if cell[0] == circuit.circ_id]
    for cell in cells:
        links.channel.sent.remove(cell)
    return [path.receive(payload) for _, _, payload in cells]


def link_legs(links, circuits: dict) -> None:
    """Every leg's LINK answered with a LINKED of the same nonce and numbers 0."""
    for circuit, path in circuits.items():
        (link,) = received(links, circuit, path)
        assert (link.hop, link.command) == (EXIT, LINK)
        assert link.data[33:49] == bytes(16)  # nothing sent or delivered yet
        circuit.cell_received(CMD_RELAY, path.send(EXIT, LINKED, 0, link.data[:1] + link.data[1:33] + bytes(17)))


def test_a_set_links_two_legs_to_one_exit_replaces_a_lost_leg_until_it_carries_a_stream(caplog):
    clock = Clock()
    exit_relay = SimulatedRelay("exit", offers_congestion_control=True)
    guards = [SimulatedRelay(f"guard{i}") for i in range(4)]
    middles = [SimulatedRelay(f"middle{i}") for i in range(4)]
    relays_by_guard = {guard.rsa_id: [guard, middle, exit_relay] for guard, middle in zip(guards, middles)}
    paths = ConfluxPaths(guards, middles, exit_relay)
    links = OneChannelLinks()
    manager = CircuitManager(links, paths, reactor=clock, clock=clock.seconds, preemptive_circuits=0,
                             build_times=not_learning(clock))
    manager.conflux_params = ConfluxParams(exit_conflux_ratio=1.0)

    record = manager.launch_conflux_set()
    assert [call[0] for call in paths.calls] == [None, exit_relay.rsa_id]  # the second leg to the first's exit
    assert paths.calls[1][1] == {guards[0].rsa_id, middles[0].rsa_id}       # through another guard and middle
    built = build_legs(links, relays_by_guard)
    assert len(built) == 2 and {circuit.path[0].rsa_id for circuit in built} == {guards[0].rsa_id, guards[1].rsa_id}
    link_legs(links, built)
    assert record.tunnel.state is TunnelState.LINKED
    assert {leg.purpose for leg in record.legs} == {CircuitPurpose.CONFLUX_LINKED}
    assert all(leg.conflux_status[0] == record.conflux_id for leg in record.legs)

    # A leg lost before any stream: a new one to the set's exit, avoiding the guard and middle of the other.
    lost, kept = built
    launches = record.launches
    lost.cell_received(CMD_DESTROY, bytes([DestroyReason.CHANNEL_CLOSED]))
    assert record.tunnel.state is TunnelState.LINKED and record.tunnel.legs == [kept]
    assert record.launches == launches + 1
    assert (exit_relay.rsa_id, {kept.path[0].rsa_id, kept.path[1].rsa_id}) in paths.calls
    simulated = build_legs(links, relays_by_guard)  # the replacement and any other set's legs
    link_legs(links, simulated)
    simulated.update(built)
    assert len(record.tunnel.legs) == 2 and record.tunnel.state is TunnelState.LINKED
    # The new leg is a linked leg of the set as the first two were (its purpose, CONFLUX_ID on the control port).
    assert {leg.purpose for leg in record.legs} == {CircuitPurpose.CONFLUX_LINKED}
    assert all(leg.conflux_status[0] == record.conflux_id for leg in record.legs)

    stream = manager.open_stream(CollectingSink(), "example.com", 80).stream
    assert stream.circuit is record.tunnel
    # The set is in use now: cfx_max_prebuilt_set (3) clean ones are launched ahead of the next demand.
    assert len(manager.conflux_sets) == 1 + 3
    begins = [(circuit, m) for circuit in record.tunnel.legs for m in received(links, circuit, simulated[circuit])
              if m.command == BEGIN]
    assert len(begins) == 1
    (carrier, _), = begins

    # An idle leg lost now: the set goes on with the other and links no new leg (tor links legs only to sets
    # not in use: an exit tears a set down for a LINK ahead of cells still on their way).
    caplog.set_level(logging.INFO, logger="oppy.circuit.manager")
    launches = record.launches
    idle = next(circuit for circuit in record.tunnel.legs if circuit is not carrier)
    idle.cell_received(CMD_DESTROY, bytes([DestroyReason.CHANNEL_CLOSED]))
    assert record.tunnel.state is TunnelState.LINKED and record.tunnel.legs == [carrier]
    assert not stream.ended
    assert record.launches == launches and [leg.circuit for leg in record.legs] == [carrier]
    lost_line = [r.getMessage() for r in caplog.records if "the set goes on" in r.getMessage()][-1]
    assert lost_line.startswith(f"Conflux set {record.conflux_id[:16]}: leg ") and "CHANNEL_CLOSED" in lost_line
    assert lost_line.endswith("for its streams only.") and not record.usable  # no new streams; goes after these


def conflux_manager(relays: int):
    """A manager with conflux on, `relays` guards and middles to one exit offering congestion control."""
    clock = Clock()
    exit_relay = SimulatedRelay("exit", offers_congestion_control=True)
    guards = [SimulatedRelay(f"guard{i}") for i in range(relays)]
    middles = [SimulatedRelay(f"middle{i}") for i in range(relays)]
    relays_by_guard = {guard.rsa_id: [guard, middle, exit_relay] for guard, middle in zip(guards, middles)}
    links = OneChannelLinks()
    manager = CircuitManager(links, ConfluxPaths(guards, middles, exit_relay), reactor=clock,
                             clock=clock.seconds, preemptive_circuits=0, build_times=not_learning(clock))
    manager.conflux_params = ConfluxParams(exit_conflux_ratio=1.0)
    return clock, links, relays_by_guard, manager


def test_a_set_that_lost_a_leg_takes_new_streams_only_once_another_has_linked():
    # The exit may still send on the lost leg until it hears of it, and then closes the whole set: a stream
    # that took the set in that moment failed (seen when the leg-kill integration test's next request took a
    # set whose other leg went through the killed relay).
    clock, links, relays_by_guard, manager = conflux_manager(4)
    record = manager.launch_conflux_set()
    link_legs(links, build_legs(links, relays_by_guard))
    lost = record.tunnel.legs[1]
    lost.cell_received(CMD_DESTROY, bytes([DestroyReason.CHANNEL_CLOSED]))
    assert record.tunnel.state is TunnelState.LINKED and record.usable
    replacement = build_legs(links, relays_by_guard)  # built and sent LINK, not linked yet
    early = manager.open_stream(CollectingSink(), "example.com", 80).stream
    assert early.circuit is not record.tunnel
    link_legs(links, replacement)
    assert len(record.tunnel.legs) == 2
    later = manager.open_stream(CollectingSink(), "example.org", 80).stream
    assert later.circuit is record.tunnel
    manager.close_all()


def test_shutdown_leaves_no_leg_waiting_for_its_linked_timer():
    # A leg that sent LINK has a timer for its LINKED; close_all cancels it (oppy.launch's stop() checks
    # that nothing of oppy is left on the caller's reactor).
    clock, links, relays_by_guard, manager = conflux_manager(2)
    manager.launch_conflux_set()
    assert len(build_legs(links, relays_by_guard)) == 2
    assert any("link_timed_out" in repr(call) for call in clock.getDelayedCalls())
    manager.close_all()
    assert not any("link_timed_out" in repr(call) for call in clock.getDelayedCalls())


def test_a_set_torn_down_before_linking_holds_back_the_next_prebuilt_set():
    # A dead first hop (a killed transport) fails every leg at once: without a pause the manager launched a
    # new set within milliseconds, about 20 in a row, each failure telling the only bridge it was down.
    clock, links, relays_by_guard, manager = conflux_manager(4)
    record = manager.launch_conflux_set()
    launched = 0
    for _ in range(30):  # every leg, replacement (cfx_max_unlinked_leg_retry) and prebuilt set fails
        if not manager.conflux_sets:
            break
        launched = max(launched, len(manager.conflux_sets))
        for circuit in build_legs(links, relays_by_guard):
            circuit.cell_received(CMD_DESTROY, bytes([DestroyReason.CONNECTFAILED]))
    assert record.tunnel.state is TunnelState.CLOSED and not manager.conflux_sets
    assert launched <= 3  # the set and cfx_max_prebuilt_set's others, not one after each failure
    manager.open_stream(CollectingSink(), "example.com", 80)   # demand: the manager tops up its circuits
    assert not manager.conflux_sets
    clock.advance(60.1)  # the pause is over: prebuilding resumes by itself
    assert manager.conflux_sets
    manager.close_all()
    assert not any("_top_up" in repr(call) for call in clock.getDelayedCalls())



def test_a_linked_set_takes_the_next_stream_even_when_its_isolation_mates_ride_a_single_circuit():
    # tor's circuit_get_open_circ_or_launch asks conflux_get_circ_for_conn before circuit_get_best: once a set
    # has linked, it takes the next stream, also when the streams before it (come while the sets were still
    # linking) ride a single circuit. oppy once kept such streams together, and then a client whose first
    # request came at startup never used a set.
    clock, links, relays_by_guard, manager = conflux_manager(4)
    first = manager.open_stream(CollectingSink(), "example.com", 80).stream
    built = build_legs(links, relays_by_guard)  # its circuit, and the legs of the sets the demand launched
    single = first.circuit
    assert single in built
    del built[single]
    link_legs(links, built)
    linked = [record for record in manager.conflux_sets.values() if record.tunnel.state is TunnelState.LINKED]
    assert linked
    second = manager.open_stream(CollectingSink(), "example.org", 80).stream
    assert second.circuit in {record.tunnel for record in linked}
    # Isolation still holds between sets: other SOCKS credentials never share the second stream's set.
    alice = StreamIsolation().with_credentials(b"alice", b"pw")
    third = manager.open_stream(CollectingSink(), "example.org", 80, isolation=alice).stream
    assert third.circuit is not None and third.circuit not in (second.circuit, single)
    manager.close_all()
