"""In-process micro-benchmark of the per-cell path, against the relays of tests.unit.relaysim.

    python -m tests.support.bench_cells [ROUNDS]

A real Channel, Circuit (three hops) and Stream; inbound: 20,000 DATA cells from the exit fed to the channel
in reads of 33 kB (decryption, routing, windows, SENDMEs, delivery); outbound: 20,000 cells' worth of stream
writes of 32 kB taken off the channel (cutting, encryption, framing); conflux: the inbound case over a linked
set of two congestion-controlled legs, each on its own Channel, the exit alternating between them in bursts
(with a SWITCH each time) and the two links' reads taking turns, so that about half the cells arrive before
the ones ahead of them (as a bulk download over a set does on the development network). Prints the CPU time
per cell (the process's own, so other load on the machine disturbs it less than wall time), median and range
over ROUNDS.
"""

from __future__ import annotations

import os
import sys
import time

from oppy.cell.commands import RelayCommand
from oppy.circuit.circuit import Circuit
from oppy.circuit.conflux import ConfluxLink, DesiredUX, encode_switch
from oppy.circuit.congestion import CongestionParams
from oppy.circuit.linked import ConfluxTunnel
from oppy.link.channel import Channel, ChannelState
from oppy.stream.stream import Stream
from tests.unit.relaysim import (
    CMD_CREATED2,
    CMD_RELAY,
    RELAY_CONNECTED,
    RELAY_DATA,
    RecordingCircuitOwner,
    fixed_cell,
    new_path,
    parse_cells,
)

CELLS = 20_000
READ_SIZE = 33 * 1024
WRITE_SIZE = 32 * 1024
CELL_LEN = 514
# The exit's bursts on one leg before it switches to the other (LowRTT fills a leg's cwnd, then the next).
CONFLUX_BURST = 200
NONCE = bytes(range(32))


class CountingSink:
    def __init__(self) -> None:
        self.received = 0

    def stream_connected(self, stream) -> None:
        pass

    def stream_resolved(self, stream, answers) -> None:
        pass

    def stream_data(self, stream, data: bytes) -> None:
        self.received += len(data)

    def stream_writable(self, stream, writable: bool) -> None:
        pass

    def stream_ended(self, stream, end) -> None:
        pass


def open_circuit(congestion: CongestionParams | None = None):
    """(channel, circuit, path): a three-hop circuit on an open channel (with congestion control when
    `congestion` is given)."""
    channel = Channel(b"\0" * 20, None, "127.0.0.1:1")
    channel.state = ChannelState.OPEN
    channel.link_version = 5
    channel._reader.set_link_version(5)
    channel.data_to_send()
    path = new_path(3, offers_congestion_control=congestion is not None)
    circuit = Circuit(channel, [relay.target for relay in path.relays], RecordingCircuitOwner(),
                      congestion=congestion)
    circuit.start()
    ((_, _, create2),) = parse_cells(channel.data_to_send())
    channel.receive_data(fixed_cell(circuit.circ_id, CMD_CREATED2, path.answer_create2(create2)))
    while len(path.hops) < 3:
        ((_, _, extend2),) = parse_cells(channel.data_to_send())
        channel.receive_data(fixed_cell(circuit.circ_id, CMD_RELAY, path.answer_extend2(path.receive(extend2))))
    return channel, circuit, path


def open_stream():
    """(channel, circuit, stream, path, sink): a stream CONNECTED over a three-hop circuit on an open channel."""
    channel, circuit, path = open_circuit()
    sink = CountingSink()
    stream = Stream(sink, "127.0.0.1", 80)
    stream.attach(circuit)
    for _, _, payload in parse_cells(channel.data_to_send()):
        path.receive(payload)
    channel.receive_data(fixed_cell(circuit.circ_id, CMD_RELAY, path.send(2, RELAY_CONNECTED, stream.stream_id)))
    channel.data_to_send()
    return channel, circuit, stream, path, sink


def inbound() -> float:
    channel, circuit, stream, path, sink = open_stream()
    wire = b"".join(fixed_cell(circuit.circ_id, CMD_RELAY, path.send(2, RELAY_DATA, stream.stream_id, os.urandom(498)))
                    for _ in range(CELLS))
    reads = [wire[offset:offset + READ_SIZE] for offset in range(0, len(wire), READ_SIZE)]
    started = time.process_time()
    for read in reads:
        channel.receive_data(read)
        channel.data_to_send()  # the SENDMEs
    elapsed = time.process_time() - started
    assert sink.received == CELLS * 498
    return elapsed / CELLS * 1e6


class TunnelOwner:
    def tunnel_linked(self, tunnel) -> None:
        pass

    def tunnel_closed(self, tunnel, error) -> None:
        raise AssertionError(f"conflux set closed: {error}")


def open_conflux_stream():
    """(legs, stream, sink): a stream CONNECTED over a linked set of two legs, each (channel, circuit, path)."""
    tunnel = ConfluxTunnel(NONCE, TunnelOwner())
    legs = [open_circuit(CongestionParams()) for _ in range(2)]
    for _, circuit, _ in legs:
        tunnel.add_leg(circuit)
    linked = ConfluxLink(NONCE, 0, 0, DesiredUX.MIN_LATENCY).encode()
    for channel, circuit, path in legs:
        channel.data_to_send()
        channel.receive_data(fixed_cell(circuit.circ_id, CMD_RELAY, path.send(2, RelayCommand.CONFLUX_LINKED, 0,
                                                                              linked)))
        channel.data_to_send()
    sink = CountingSink()
    stream = Stream(sink, "127.0.0.1", 80)
    stream.attach(tunnel)
    legs.sort(key=lambda leg: not leg[0].data_to_send())  # the leg that carried the BEGIN first
    channel, circuit, path = legs[0]
    channel.receive_data(fixed_cell(circuit.circ_id, CMD_RELAY, path.send(2, RELAY_CONNECTED, stream.stream_id)))
    return legs, stream, sink


def conflux_inbound() -> float:
    legs, stream, sink = open_conflux_stream()
    # The exit: CONNECTED was number 1 on the first leg; then bursts alternating between the legs.
    sent_on = [1, 0]
    wires: list[list[bytes]] = [[], []]
    sent = 1
    for burst_start in range(0, CELLS, CONFLUX_BURST):
        index = burst_start // CONFLUX_BURST % 2
        channel, circuit, path = legs[index]
        if sent_on[index] != sent:
            wires[index].append(fixed_cell(circuit.circ_id, CMD_RELAY, path.send(
                2, RelayCommand.CONFLUX_SWITCH, 0, encode_switch(sent - sent_on[index]))))
        count = min(CONFLUX_BURST, CELLS - burst_start)
        wires[index] += [fixed_cell(circuit.circ_id, CMD_RELAY, path.send(2, RELAY_DATA, stream.stream_id,
                                                                         os.urandom(498))) for _ in range(count)]
        sent = sent_on[index] = sent + count
    reads = [[wire[offset:offset + READ_SIZE] for offset in range(0, len(wire), READ_SIZE)]
             for wire in (b"".join(cells) for cells in wires)]
    turns = [(legs[index][0], read) for pair in zip(*reads) for index, read in enumerate(pair)]
    turns += [(legs[index][0], read) for index in range(2) for read in reads[index][len(turns) // 2:]]
    started = time.process_time()
    for channel, read in turns:
        channel.receive_data(read)
        channel.data_to_send()  # the SENDMEs
    elapsed = time.process_time() - started
    assert sink.received == CELLS * 498
    return elapsed / CELLS * 1e6


def outbound() -> float:
    channel, circuit, stream, path, sink = open_stream()
    # No exit acknowledges here: the windows are opened wide so that only the path's own work is measured.
    circuit.window.package = stream.window.package = 10 ** 9
    stream.send_buffer_limit = 10 ** 9
    data = os.urandom(WRITE_SIZE)
    written = sent = 0
    started = time.process_time()
    while written < CELLS * 498:
        stream.write(data)
        written += len(data)
        sent += len(channel.data_to_send())
    elapsed = time.process_time() - started
    return elapsed / (sent // CELL_LEN) * 1e6


def summary(name: str, samples: list[float]) -> str:
    samples = sorted(samples)
    return (f"{name} us/cell: median {samples[len(samples) // 2]:.2f} "
            f"[{samples[0]:.2f}-{samples[-1]:.2f}] over {len(samples)} rounds")


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    print(summary("inbound ", [inbound() for _ in range(rounds)]))
    print(summary("outbound", [outbound() for _ in range(rounds)]))
    print(summary("conflux inbound", [conflux_inbound() for _ in range(rounds)]))


if __name__ == "__main__":
    main()
