"""A conflux set (oppy/circuit/linked.py) over two real Circuits built through simulated relays
(tests/unit/relaysim.py) that negotiated congestion control: the linking handshake as the exit sees it, a
stream's cells reordered across the legs, and what a leg's failure does. The exit's conflux bodies are laid
out here by hand from conflux.trunnel (version, nonce, u64 last_seqno_sent, u64 last_seqno_recv, u8
desired_ux; SWITCH: u32)."""

from __future__ import annotations

import random
import struct
from unittest import mock

import pytest

from oppy.cell.commands import DestroyReason, EndReason, RelayCommand
from oppy.circuit import circuit as circuit_module
from oppy.circuit.circuit import Circuit, CircuitState
from oppy.circuit.conflux import OOO_CELL_COST, ConfluxAlgorithm
from oppy.circuit.linked import ConfluxTunnel, TunnelState
from oppy.circuit.memory import MemoryTracker
from oppy.stream.stream import Stream
from tests.unit.relaysim import CMD_DESTROY, CMD_RELAY, RELAY_CONNECTED, RELAY_DATA, RELAY_DATA_LEN, build_circuit
from tests.unit.test_circuit_congestion import PARAMS, Clock
from tests.unit.test_circuit_memory import Download
from tests.unit.test_stream_core import RecordingSink

NONCE = bytes(range(100, 132))
EXIT = 2
LINK, LINKED, LINKED_ACK, SWITCH = 19, 20, 21, 22
UX_MIN_LATENCY, UX_HIGH_THROUGHPUT = 1, 3


def linked_body(nonce=NONCE, sent=0, received=0, ux=UX_MIN_LATENCY) -> bytes:
    return b"\x01" + nonce + struct.pack(">QQB", sent, received, ux)


class Owner:
    def __init__(self):
        self.linked = []
        self.closed = []

    def tunnel_linked(self, tunnel):
        self.linked.append(tunnel)

    def tunnel_closed(self, tunnel, error):
        self.closed.append(error)


class Leg:
    """A congestion-controlled three-hop circuit and its simulated exit's view."""

    def __init__(self, clock):
        self.circuit, self.channel, self.path = build_circuit(
            Circuit, circuit_options={"congestion": PARAMS, "clock": clock}, offers_congestion_control=True)
        assert self.circuit.congestion_control is not None

    def received(self):
        return [self.path.receive(payload) for _, command, payload in self.channel.take() if command == CMD_RELAY]

    def send(self, command, stream_id=0, data=b"", hop=EXIT):
        self.circuit.cell_received(CMD_RELAY, self.path.send(hop, command, stream_id, data))


def linking_set(**tunnel_options):
    """A tunnel with two legs that sent LINK; nothing answered yet."""
    clock = Clock()
    owner = Owner()
    tunnel = ConfluxTunnel(NONCE, owner, clock=clock, **tunnel_options)
    a, b = Leg(clock), Leg(clock)
    tunnel.add_leg(a.circuit)
    tunnel.add_leg(b.circuit)
    return tunnel, owner, a, b, clock


def new_set(ux_from_exit=UX_MIN_LATENCY, account=None):
    tunnel, owner, a, b, clock = linking_set(account=account)
    clock.now += 0.040
    a.received()
    a.send(LINKED, data=linked_body(ux=ux_from_exit))
    clock.now += 0.030
    b.received()
    b.send(LINKED, data=linked_body(ux=ux_from_exit))
    a.received(), b.received()
    return tunnel, owner, a, b, clock


def test_link_carries_the_nonce_and_zero_sequence_numbers_and_linked_is_acknowledged():
    tunnel, owner, a, b, clock = linking_set()
    for leg in (a, b):
        (message,) = leg.received()
        assert (message.hop, message.command, message.stream_id) == (EXIT, LINK, 0)
        assert message.data == b"\x01" + NONCE + bytes(16) + bytes([UX_HIGH_THROUGHPUT])
    clock.now += 0.050
    a.send(LINKED, data=linked_body())
    (ack,) = a.received()
    assert (ack.hop, ack.command, ack.data) == (EXIT, LINKED_ACK, b"")
    assert tunnel.state is TunnelState.LINKING and owner.linked == []  # b still links
    b.send(LINKED, data=linked_body())
    assert [message.command for message in b.received()] == [LINKED_ACK]
    assert tunnel.state is TunnelState.LINKED and owner.linked == [tunnel]
    assert tunnel.rtt_ms == [50, 50]
    # We send by our own UX (throughput: LowRTT), whatever the exit's LINKED asks (tor's: MIN_LATENCY).
    assert tunnel.conflux.algorithm is ConfluxAlgorithm.LOW_RTT


def test_the_latency_ux_sends_by_min_rtt():
    tunnel, owner, a, b, clock = linking_set(desired_ux=UX_MIN_LATENCY)
    assert tunnel.conflux.algorithm is ConfluxAlgorithm.MIN_RTT
    (link,) = a.received()
    assert link.data[-1] == UX_MIN_LATENCY


@pytest.mark.parametrize("body, why", [
    (linked_body(nonce=bytes(32)), "another set's nonce"),
    (b"\x02" + NONCE + bytes(17), "malformed CONFLUX_LINKED"),
    (linked_body(sent=5), "data loss"),
])
def test_a_bad_linked_closes_its_leg_and_the_other_leg_carries_the_set(body, why):
    tunnel, owner, a, b, clock = linking_set()
    a.send(LINKED, data=body)
    assert a.circuit.state is CircuitState.CLOSED and why in str(a.circuit.error)
    assert a.circuit.error.reason == DestroyReason.PROTOCOL
    tunnel.leg_closed(a.circuit, a.circuit.error)  # what the manager passes on
    b.send(LINKED, data=linked_body())
    assert tunnel.state is TunnelState.LINKED and tunnel.legs == [b.circuit]


def test_linked_on_a_leg_not_linking_is_a_protocol_error():
    tunnel, owner, a, b, clock = new_set()
    a.send(LINKED, data=linked_body())
    assert a.circuit.state is CircuitState.CLOSED and a.circuit.error.reason == DestroyReason.PROTOCOL


def open_stream(tunnel, a, b):
    sink = RecordingSink()
    stream = Stream(sink, "example.com", 80)
    stream.attach(tunnel)
    begins = [(leg, message) for leg in (a, b) for message in leg.received() if message.command == 1]
    ((leg, begin),) = begins
    leg.send(RELAY_CONNECTED, begin.stream_id, b"")
    assert sink.events[-1] == "connected"
    return stream, sink, leg, begin.stream_id


def test_a_stream_begins_on_the_lowest_rtt_leg_and_gets_its_cells_in_sequence_order():
    tunnel, owner, a, b, clock = new_set()
    stream, sink, first, stream_id = open_stream(tunnel, a, b)
    assert first is a  # a's LINKED came back 40 ms after its LINK, b's after 70 ms
    other = b
    # The exit: CONNECTED (1) and DATA 2-4 on a, SWITCH to b (relative 4), DATA 5-6 there; b's arrive first.
    other.send(SWITCH, data=struct.pack(">I", 4))
    other.send(RELAY_DATA, stream_id, b"five ")
    other.send(RELAY_DATA, stream_id, b"six")
    assert sink.data == []
    assert tunnel.conflux.queued_bytes == 2 * OOO_CELL_COST
    for word in (b"two ", b"three ", b"four "):
        first.send(RELAY_DATA, stream_id, word)
    assert b"".join(sink.data) == b"two three four five six"
    assert tunnel.conflux.queued_bytes == 0


def test_a_legs_traffic_counts_what_it_received_for_the_set():
    """CIRC_BW on a leg: the cells recognized there are its DELIVERED_READ plus OVERHEAD_READ, as on any
    circuit (a leg's count of recognized cells once stayed 0, and OVERHEAD_READ with it)."""
    tunnel, owner, a, b, clock = new_set()
    stream, sink, first, stream_id = open_stream(tunnel, a, b)
    before = first.circuit.traffic
    first.send(RELAY_DATA, stream_id, b"x" * 100)
    after = first.circuit.traffic
    assert after.delivered_read - before.delivered_read == 100
    assert after.overhead_read - before.overhead_read == RELAY_DATA_LEN - 100


def test_uploads_take_the_schedulers_leg_and_a_switch_moves_the_sequence():
    tunnel, owner, a, b, clock = new_set()  # LowRTT: fill a, then b
    stream, sink, first, stream_id = open_stream(tunnel, a, b)
    room_a = a.circuit.package_room
    stream.write(b"x" * 498 * (room_a + 3))
    on_a = a.received()
    on_b = b.received()
    assert [m.command for m in on_a] == [RELAY_DATA] * room_a  # every cell a's cwnd had room for
    assert on_b[0].command == SWITCH and on_b[0].stream_id == 0
    (relative,) = struct.unpack(">I", on_b[0].data[:4])
    assert relative == 1 + room_a  # BEGIN and the DATA cells a carried
    assert [m.command for m in on_b[1:]] == [RELAY_DATA] * 3


def test_a_leg_closing_while_it_carries_the_stream_tears_the_set_down_cleanly():
    tunnel, owner, a, b, clock = new_set()
    stream, sink, first, stream_id = open_stream(tunnel, a, b)
    stream.write(b"y" * 498 * 5)  # in flight on a, the current leg
    assert first is a
    a.circuit.cell_received(CMD_DESTROY, bytes([DestroyReason.CHANNEL_CLOSED]))
    tunnel.leg_closed(a.circuit, a.circuit.error)
    assert tunnel.state is TunnelState.CLOSED and len(owner.closed) == 1
    assert b.circuit.state is CircuitState.CLOSED  # the other leg is destroyed too
    (end,) = sink.ends
    assert "conflux leg" in str(end) and "destroyed" in str(end) and stream.ended


def test_an_idle_leg_closing_leaves_the_set_and_its_stream_standing():
    tunnel, owner, a, b, clock = new_set()
    stream, sink, first, stream_id = open_stream(tunnel, a, b)
    b.circuit.close(DestroyReason.FINISHED, "test")
    tunnel.leg_closed(b.circuit, b.circuit.error)
    assert tunnel.state is TunnelState.LINKED and tunnel.legs == [a.circuit]
    a.send(RELAY_DATA, stream_id, b"still here")
    assert sink.data == [b"still here"] and not stream.ended


def test_a_leg_opening_for_a_set_that_carried_a_stream_is_closed_without_link():
    """tor links new legs only to sets not yet in use: the exit would check the LINK's numbers against what
    it delivered and tear the whole set down for cells still on their way ("Data loss detected while trying
    to add a conflux leg", seen on the network's exits when oppy linked legs to sets in use)."""
    tunnel, owner, a, b, clock = new_set()
    stream, sink, first, stream_id = open_stream(tunnel, a, b)
    b.circuit.close(DestroyReason.FINISHED, "test")
    tunnel.leg_closed(b.circuit, b.circuit.error)
    c = Leg(clock)
    tunnel.add_leg(c.circuit)
    assert c.received() == [] and c.circuit.state is CircuitState.CLOSED
    assert tunnel.state is TunnelState.LINKED and tunnel.legs == [a.circuit] and tunnel.pending_legs == []
    a.send(RELAY_DATA, stream_id, b"still here")
    assert sink.data == [b"still here"] and not stream.ended


def test_an_overflowing_out_of_order_queue_ends_the_stream_with_resourcelimit():
    tunnel, owner, a, b, clock = new_set()
    tunnel.conflux.max_ooo_bytes = 3 * OOO_CELL_COST
    stream, sink, first, stream_id = open_stream(tunnel, a, b)
    b.send(SWITCH, data=struct.pack(">I", 50))
    for _ in range(4):
        b.send(RELAY_DATA, stream_id, b"early")
    assert tunnel.state is TunnelState.CLOSED
    assert owner.closed[0].reason == DestroyReason.RESOURCELIMIT
    assert sink.data == [] and stream.ended


def test_a_stream_cell_from_a_middle_hop_closes_the_leg():
    tunnel, owner, a, b, clock = new_set()
    stream, sink, first, stream_id = open_stream(tunnel, a, b)
    a.send(RELAY_DATA, stream_id, b"forged", hop=1)
    assert a.circuit.state is CircuitState.CLOSED and "conflux leg" in str(a.circuit.error)
    assert sink.data == []


def test_a_leg_whose_link_took_longer_than_the_build_timeout_is_refused():
    tunnel, owner, a, b, clock = linking_set(max_link_rtt=1.5)
    clock.now += 0.2
    b.send(LINKED, data=linked_body())
    clock.now += 1.4
    a.send(LINKED, data=linked_body())  # 1.6 s after its LINK
    assert a.circuit.state is CircuitState.CLOSED and a.circuit.error.reason == DestroyReason.TIMEOUT
    assert "above the circuit build timeout" in str(a.circuit.error)
    assert [message.command for message in a.received()] == [LINK]  # no LINKED_ACK
    assert tunnel.state is TunnelState.LINKED and tunnel.legs == [b.circuit]


def test_a_leg_without_linked_in_time_is_closed_as_stalled():
    tunnel, owner, a, b, clock = linking_set()
    a.send(LINKED, data=linked_body())
    tunnel.link_timed_out(a.circuit, 60.0)  # a linked in time: nothing happens
    assert a.circuit.state is CircuitState.OPEN
    tunnel.link_timed_out(b.circuit, 60.0)
    assert b.circuit.state is CircuitState.CLOSED and "no CONFLUX_LINKED within 60.0 s" in str(b.circuit.error)
    assert tunnel.state is TunnelState.LINKED and tunnel.legs == [a.circuit]


def test_the_out_of_order_queue_counts_against_max_mem_in_queues():
    memory = MemoryTracker(10 * OOO_CELL_COST)
    tunnel, owner, a, b, clock = new_set(account=memory)
    memory.clock = clock
    stream, sink, first, stream_id = open_stream(tunnel, a, b)
    # CONNECTED was number 1 on a; the exit sent 2 on a, switched to b (relative 2) and sent 3-5 there.
    b.send(SWITCH, data=struct.pack(">I", 2))
    for _ in range(3):
        b.send(RELAY_DATA, stream_id, b"early")
    assert memory.queued_in_streams == 3 * OOO_CELL_COST
    a.send(RELAY_DATA, stream_id, b"x")  # number 2: the three queued ones follow it out
    assert memory.queued_in_streams == 0
    assert b"".join(sink.data) == b"xearlyearlyearly"
    b.send(SWITCH, data=struct.pack(">I", 100))
    for _ in range(10):  # the tenth reaches MaxMemInQueues: the handler closes the set
        b.send(RELAY_DATA, stream_id, b"late")
    assert tunnel.state is TunnelState.CLOSED and memory.circuits_closed == 1
    assert owner.closed[0].reason == DestroyReason.RESOURCELIMIT and "out of memory" in str(owner.closed[0])
    assert stream.ended and memory.queued_in_streams == 0



def attached_stream(tunnel, a, b, memory):
    """A stream on the set counted by `memory`, CONNECTED (sequence number 1) by the exit on the leg that
    carried its BEGIN; that leg and the other one."""
    stream = Stream(RecordingSink(), "example.com", 80, account=memory)
    stream.attach(tunnel)
    ((first, begin),) = [(leg, message) for leg in (a, b) for message in leg.received() if message.command == 1]
    first.send(RELAY_CONNECTED, begin.stream_id, b"")
    return stream, begin.stream_id, first, b if first is a else a


def test_out_of_memory_ages_a_set_by_its_streams_not_its_out_of_order_queue(caplog):
    """circuits_handle_oom ages a circuit by its cell queues and stream buffers; the conflux out-of-order queue
    counts toward the bytes freed, not the age. A set whose reorder queue has held a cell for long is not older
    than a stalled stream elsewhere."""
    memory = MemoryTracker(400 * RELAY_DATA_LEN)
    tunnel, owner, a, b, clock = new_set(account=memory)
    memory.clock = clock
    stream, stream_id, first, other = attached_stream(tunnel, a, b, memory)
    other.send(SWITCH, data=struct.pack(">I", 2))
    other.send(RELAY_DATA, stream_id, b"early")  # number 3 waits for 2 from now on
    clock.now += 1
    offender = Download(memory)  # a client that stopped reading, a second later
    offender.receive_cells(100)
    clock.now += 4
    with caplog.at_level("NOTICE", logger="oppy.circuit.memory"):
        offender.receive_cells(300)
    (line,) = [record.getMessage() for record in caplog.records if "low on memory" in record.getMessage()]
    assert f"circuit {offender.circuit.circ_id:#x}" in line and "the oldest queued 4.0 s ago" in line
    assert offender.circuit.state is CircuitState.CLOSED
    assert tunnel.state is TunnelState.LINKED and not stream.ended and memory.queued_in_streams == OOO_CELL_COST


def test_out_of_memory_closes_a_set_counting_its_streams_and_their_age(caplog):
    """The set's line counts the set's streams (its reorder queue is none of them) and ages the set by its
    stalled stream; the set goes as one circuit, its streams with it, and nothing else goes."""
    memory = MemoryTracker(300 * RELAY_DATA_LEN)
    tunnel, owner, a, b, clock = new_set(account=memory)
    memory.clock = clock
    stream, stream_id, first, other = attached_stream(tunnel, a, b, memory)
    stream.pause_delivery()
    for _ in range(100):  # numbers 2 to 101, queued for the client from now on
        first.send(RELAY_DATA, stream_id, b"d" * RELAY_DATA_LEN)
    clock.now += 3
    other.send(SWITCH, data=struct.pack(">I", 102))
    other.send(RELAY_DATA, stream_id, b"early")  # number 103 waits for 102
    young = Download(memory)
    young.receive_cells(100)
    clock.now += 1
    circ_id = tunnel.circ_id
    with caplog.at_level("NOTICE", logger="oppy.circuit.memory"):
        young.receive_cells(100)
    (line,) = [record.getMessage() for record in caplog.records if "low on memory" in record.getMessage()]
    assert (f"closing circuit {circ_id:#x}, which held {100 * RELAY_DATA_LEN + OOO_CELL_COST} bytes in 1 of its 1 "
            f"stream(s), the oldest queued 4.0 s ago") in line
    assert tunnel.state is TunnelState.CLOSED and stream.end.reason == EndReason.RESOURCELIMIT
    assert young.circuit.state is CircuitState.OPEN and not young.stream.ended


# ----------------------------------------------------------------------------- runs and single cells
# A read from a link brings a leg's cells as a run: the leg numbers its multiplexed cells at once, hands those
# in sequence to their streams as views of the read and copies only those that came early into the queue. The
# same cells fed one at a time must do exactly the same.

RELAY_END, RELAY_DROP = 3, 10


class World:
    """A linked set carrying two streams that wait for CONNECTED, and what has happened to it so far."""

    def __init__(self, max_ooo_cells=None, max_memory=10 ** 9):
        self.memory = MemoryTracker(max_memory)
        self.tunnel, self.owner, a, b, clock = new_set(account=self.memory)
        self.memory.clock = clock
        if max_ooo_cells is not None:
            self.tunnel.conflux.max_ooo_bytes = max_ooo_cells * OOO_CELL_COST
        self.legs = (a, b)
        self.sinks = [RecordingSink(), RecordingSink()]
        self.streams = [Stream(sink, "example.com", 80, account=self.memory) for sink in self.sinks]
        for stream in self.streams:
            stream.attach(self.tunnel)
        self.sendmes = ([], [])
        self.take_sendmes()

    def take_sendmes(self):
        """Our circuit SENDMEs so far on each leg, as the positions among the exit's cells of the cell each one
        acknowledges (its tag is the exit's digest right after that cell)."""
        for leg, sent in zip(self.legs, self.sendmes):
            tags = leg.path.hops[EXIT].backward_tags
            sent += [tags.index(message.data[3:]) for message in leg.received()
                     if message.command == RelayCommand.SENDME and message.stream_id == 0]

    def snapshot(self):
        """What the streams, the memory tracker and the exit have seen so far. (A leg closed in the middle of
        a read has counted the read's later cells in its windows, where one fed cell by cell stopped: as on a
        single circuit, which counts a run before it delivers it; nothing of them reaches a stream.)"""
        self.take_sendmes()
        tunnel, conflux = self.tunnel, self.tunnel.conflux
        legs = [(leg.circuit.state,) if leg.circuit.state is CircuitState.CLOSED else
                (leg.circuit.state, leg.circuit.window.deliver, leg.circuit.bytes_read, list(sent),
                 conflux.leg(leg.circuit).last_seq_recv, conflux.leg(leg.circuit).cells_received)
                for leg, sent in zip(self.legs, self.sendmes)]
        streams = [(b"".join(sink.data), [event if isinstance(event, str) else (event[0], getattr(
            event[1], "reason", event[1])) for event in sink.events]) for sink in self.sinks]
        return (tunnel.state, conflux.last_seq_delivered, conflux.queued_bytes, self.memory.queued_in_streams,
                [error.reason for error in self.owner.closed], legs, streams)


def exit_script(rng, stream_ids, cells=160, switch_error=False, bulk=False):
    """What the exit sends on each leg, in order: CONNECTED for both streams, then DATA of random lengths for
    both, an END for the second stream and DATA after it, and DROP padding now and then (per leg, no number),
    on the legs in bursts, each move to the other leg announced with a SWITCH. `switch_error`: one SWITCH
    claims one cell less than it should (the exit repeats a number). `bulk`: the DATA cells nearly all for the
    first stream, most of them full (reads of them alone take the path without a step per cell)."""
    first, second = stream_ids
    messages = [(RELAY_CONNECTED, first, b""), (RELAY_CONNECTED, second, b"")]
    for index in range(cells):
        if index == cells // 2:
            messages.append((RELAY_END, second, bytes([EndReason.DONE])))
        if bulk:
            stream_id = first if rng.random() < 0.97 else second
            length = RELAY_DATA_LEN if rng.random() < 0.9 else rng.randint(1, RELAY_DATA_LEN)
            messages.append((RELAY_DATA, stream_id, rng.randbytes(length)))
            continue
        stream_id = rng.choice(stream_ids)
        messages.append((RELAY_DATA, stream_id, rng.randbytes(rng.choice([RELAY_DATA_LEN, RELAY_DATA_LEN, 1, 77]))))
    per_leg = ([], [])
    sent = 0
    last_on = [0, 0]
    leg = 0
    switches = 0
    while sent < len(messages):
        if last_on[leg] != sent:
            relative = sent - last_on[leg]
            switches += 1
            if switch_error and switches == 3:
                relative -= 1
            per_leg[leg].append((SWITCH, 0, struct.pack(">I", relative)))
        for command, stream_id, data in messages[sent:sent + rng.randint(1, 40)]:
            per_leg[leg].append((command, stream_id, data))
            if rng.random() < 0.05:
                per_leg[leg].append((RELAY_DROP, 0, b""))
            sent += 1
        last_on[leg] = sent
        leg = 1 - leg
    return per_leg


def arrival_order(rng, per_leg):
    """The legs' cells interleaved as two links might deliver them: each leg's in order, in turns of random
    length (the leg behind then gets its cells after the other's later ones)."""
    left = [len(messages) for messages in per_leg]
    order = []
    while any(left):
        leg = rng.choice([index for index in (0, 1) if left[index]])
        count = min(left[leg], rng.randint(1, 60))
        order.append((leg, count))
        left[leg] -= count
    return order


def compare_runs_and_single_cells(seed, switch_error=False, bulk=False, **world_options):
    """The cells fed one at a time take the per-cell loop alone (the path for DATA runs is switched off for
    them: a lone DATA cell would take it too)."""
    rng = random.Random(seed)
    batched, single = World(**world_options), World(**world_options)
    stream_ids = [stream.stream_id for stream in batched.streams]
    assert stream_ids == [stream.stream_id for stream in single.streams]
    script = exit_script(rng, stream_ids, switch_error=switch_error, bulk=bulk)
    cells = [[[leg.path.send(EXIT, *message) for message in messages] for leg, messages in zip(world.legs, script)]
             for world in (batched, single)]
    taken = [0, 0]
    snapshots = []
    for leg, count in arrival_order(rng, script):
        start, taken[leg] = taken[leg], taken[leg] + count
        run = cells[0][leg][start:start + count]
        while run:  # reads of random size
            size = rng.randint(1, 25)
            if batched.legs[leg].circuit.state is CircuitState.OPEN:
                batched.legs[leg].circuit.relay_cells_received(b"".join(run[:size]))
            run = run[size:]
        with mock.patch.object(circuit_module, "_data_run", lambda cells, hop: None):
            for cell in cells[1][leg][start:start + count]:
                if single.legs[leg].circuit.state is CircuitState.OPEN:
                    single.legs[leg].circuit.cell_received(CMD_RELAY, cell)
        snapshots.append(batched.snapshot())
        assert snapshots[-1] == single.snapshot()
    return batched, snapshots


@pytest.mark.parametrize("seed", range(6))
def test_cells_in_reads_do_what_they_do_one_at_a_time(seed):
    """Reordering across the legs, SWITCHes, CONNECTED and END among the DATA of a read, per-leg DROPs
    cutting reads, our SENDMEs, and what the queue holds and the memory tracker counts after each turn."""
    world, snapshots = compare_runs_and_single_cells(seed)
    assert world.tunnel.state is TunnelState.LINKED
    assert max(snapshot[2] for snapshot in snapshots) > 0  # cells did wait in the queue
    assert world.tunnel.conflux.queued_bytes == 0 and world.memory.queued_in_streams == 0
    first, second = world.sinks
    assert first.events[0] == "connected" and second.events[0] == "connected"
    assert second.ends[0].reason == EndReason.DONE and not world.streams[0].ended
    assert len(b"".join(first.data)) > 0 and world.legs[0].circuit.bytes_read + world.legs[1].circuit.bytes_read \
        > len(b"".join(first.data)) + len(b"".join(second.data))  # the second stream's late DATA was dropped


@pytest.mark.parametrize("seed", range(4))
def test_reads_of_data_for_one_stream_do_what_the_cells_do_one_at_a_time(seed):
    """A bulk download's reads: most are DATA cells for one stream alone, counted and cut without a step per
    cell; the SENDMEs they owe echo the same cells' tags."""
    world, snapshots = compare_runs_and_single_cells(seed, bulk=True)
    assert world.tunnel.state is TunnelState.LINKED
    assert sum(len(sent) for sent in world.sendmes) >= 4 and max(snapshot[2] for snapshot in snapshots) > 0


@pytest.mark.parametrize("seed", range(3))
def test_a_repeated_number_in_a_read_tears_the_set_down_as_one_at_a_time(seed):
    world, snapshots = compare_runs_and_single_cells(seed, switch_error=True)
    assert world.tunnel.state is TunnelState.CLOSED
    assert world.owner.closed[0].reason == DestroyReason.PROTOCOL and "conflux" in str(world.owner.closed[0])


@pytest.mark.parametrize("seed", range(3))
def test_an_out_of_order_queue_overflowing_in_a_read_is_what_it_is_one_at_a_time(seed):
    world, snapshots = compare_runs_and_single_cells(seed, max_ooo_cells=12)
    assert world.tunnel.state is TunnelState.CLOSED
    assert world.owner.closed[0].reason == DestroyReason.RESOURCELIMIT


@pytest.mark.parametrize("seed", range(3))
def test_max_mem_in_queues_closes_the_set_after_the_same_cells_in_reads(seed):
    world, snapshots = compare_runs_and_single_cells(seed, max_memory=15 * OOO_CELL_COST)
    assert world.tunnel.state is TunnelState.CLOSED and world.memory.circuits_closed == 1
    assert world.memory.queued_in_streams == 0


def test_cells_that_came_early_are_copies_not_views_of_the_read():
    """The queue is counted per cell: a queued cell must not keep its whole read alive."""
    tunnel, owner, a, b, clock = new_set()
    stream, sink, first, stream_id = open_stream(tunnel, a, b)
    other = b if first is a else a
    other.circuit.relay_cells_received(b"".join([other.path.send(EXIT, SWITCH, 0, struct.pack(">I", 2))] + [
        other.path.send(EXIT, RELAY_DATA, stream_id, bytes([n]) * 10) for n in range(3)]))
    (queued,) = tunnel.conflux._ooo_items
    assert [(command, type(chunk)) for command, _, data in queued for chunk in data] == [(RELAY_DATA, bytes)] * 3
    first.send(RELAY_DATA, stream_id, b"x")
    assert b"".join(sink.data) == b"x" + bytes(10) + bytes([1]) * 10 + bytes([2]) * 10


def test_a_new_streams_begin_and_first_data_are_written_at_once_on_the_set_and_later_data_is_not():
    """Under load each reactor iteration reads up to 64 KiB per leg: a cell left to the end of the iteration
    waits behind that work. The cells a new stream's application waits on (BEGIN, then its request) are
    written at once; the stream's later data is batched per iteration as before."""
    tunnel, owner, a, b, clock = new_set()
    urgent = a.channel.urgent_cells + b.channel.urgent_cells
    stream, sink, first, stream_id = open_stream(tunnel, a, b)
    assert a.channel.urgent_cells + b.channel.urgent_cells == urgent + 1  # the BEGIN
    stream.write(b"GET / HTTP/1.1\r\n\r\n")
    assert [m.command for m in first.received()] == [RELAY_DATA]
    assert a.channel.urgent_cells + b.channel.urgent_cells == urgent + 2
    stream.write(b"more")
    assert [m.command for m in first.received()] == [RELAY_DATA]
    assert a.channel.urgent_cells + b.channel.urgent_cells == urgent + 2
