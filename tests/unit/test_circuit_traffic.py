"""A circuit's traffic counters and the CIRC_BW events made of them (control-spec "CIRC_BW").

The counts are checked against what the simulated relays (tests.unit.relaysim) sent and received, in tor's
units: READ/WRITTEN 509 bytes per relay cell, DELIVERED the relay bodies, OVERHEAD the rest of each 498.
"""

import io
from types import SimpleNamespace

import stem.response
import stem.socket

from oppy.cell.commands import RelayCommand
from oppy.circuit.circuit import Circuit, CircuitTraffic
from oppy.circuit.congestion import CongestionParams, VegasController
from oppy.control.backend import CircuitTrafficMeter
from tests.unit.relaysim import RELAY_CONNECTED, RELAY_DATA, RELAY_DROP, RELAY_SENDME, build_circuit
from tests.unit.test_circuit_core import RecordingStream

CELL = 509
BODY = 498
NOW = 1_796_000_000.25  # 2026-11-30T...: the wall clock the meter is handed


def parse_event(raw: bytes):
    message = stem.socket.recv_message(io.BytesIO(raw))
    stem.response.convert("EVENT", message)
    return message


def circuit_with_a_stream():
    """A built 3-hop circuit carrying one (recording) stream, what the build sent taken."""
    circuit, channel, path = build_circuit(Circuit, hops=3)
    channel.take()
    stream = RecordingStream(circuit.allocate_stream_id())
    circuit.attach_stream(stream)
    return circuit, channel, path, stream


def test_building_counts_extend2_and_extended2():
    circuit, channel, path = build_circuit(Circuit, hops=3)
    traffic = circuit.traffic
    # Two EXTEND2 out, two EXTENDED2 in (the CREATE2/CREATED2 of the first hop are not relay cells).
    assert (traffic.read, traffic.written) == (2 * CELL, 2 * CELL)
    assert traffic.delivered_read + traffic.overhead_read == 2 * BODY
    assert traffic.delivered_written + traffic.overhead_written == 2 * BODY
    assert traffic.delivered_written > 0 and traffic.delivered_read > 0


def test_stream_data_and_control_cells_are_counted_both_ways():
    circuit, channel, path, stream = circuit_with_a_stream()
    before = circuit.traffic
    circuit.send_relay(RelayCommand.BEGIN, stream.stream_id, b"example.com:80\x00")  # 15 bytes of body
    circuit.send_data_many(stream.stream_id, [b"x" * BODY, b"y" * 100])
    exit_hop = len(path.hops) - 1
    inbound = (path.send(exit_hop, RELAY_CONNECTED, stream.stream_id, b"\x7f\x00\x00\x01\x00\x00\x0e\x10")
               + path.send(exit_hop, RELAY_DATA, stream.stream_id, b"z" * 300)
               + path.send(exit_hop, RELAY_DATA, stream.stream_id, b"w" * BODY)
               + path.send(1, RELAY_DROP))
    circuit.relay_cells_received(inbound)
    after = circuit.traffic
    delta = CircuitTraffic(*(a - b for a, b in zip(after, before)))
    assert delta == CircuitTraffic(read=4 * CELL, written=3 * CELL,
                                   delivered_read=8 + 300 + BODY, overhead_read=4 * BODY - (8 + 300 + BODY),
                                   delivered_written=15 + BODY + 100, overhead_written=3 * BODY - (15 + BODY + 100))
    assert [command for command, _ in stream.received] == [RELAY_CONNECTED, RELAY_DATA, RELAY_DATA]


def test_meter_reports_each_circuit_with_traffic_since_its_last_event():
    circuit, channel, path = build_circuit(Circuit, hops=3)
    idle, _, _ = build_circuit(Circuit, hops=2)
    managed = [SimpleNamespace(number=7, circuit=circuit), SimpleNamespace(number=8, circuit=idle),
               SimpleNamespace(number=9, circuit=None)]
    meter = CircuitTrafficMeter()
    first = meter.events(managed, NOW)
    # Both built circuits have their EXTEND2/EXTENDED2 to report; one still building has nothing.
    assert [parse_event(raw).id for raw in first] == ["7", "8"]
    assert meter.events(managed, NOW + 1) == []  # nothing new: no event (tor skips idle circuits)

    circuit.send_data_many(0, [b"q" * 10])
    (raw,) = meter.events(managed, NOW + 2)
    event = parse_event(raw)
    assert isinstance(event, stem.response.events.CircuitBandwidthEvent)
    assert (event.id, event.read, event.written, event.delivered_written, event.overhead_written) == (
        "7", 0, CELL, 10, BODY - 10)
    assert (event.delivered_read, event.overhead_read) == (0, 0)
    assert event.time.year == 2026


def test_meter_adds_the_controllers_state_on_a_congestion_controlled_circuit():
    control = VegasController(CongestionParams(), 31)
    control.in_slow_start, control.cwnd, control.ewma_rtt_usec, control.min_rtt_usec = False, 186, 25_700, 9_100
    circuit = SimpleNamespace(traffic=CircuitTraffic(CELL, 0, 498, 0, 0, 0), congestion_control=control)
    (raw,) = CircuitTrafficMeter().events([SimpleNamespace(number=4, circuit=circuit)], NOW)
    assert raw.endswith(b" OVERHEAD_WRITTEN=0 SS=0 CWND=186 RTT=25 MIN_RTT=9\r\n")
    assert parse_event(raw).keyword_args["CWND"] == "186"


def test_the_circuit_sendmes_a_read_owes_count_as_delivered_written():
    circuit, channel, path, stream = circuit_with_a_stream()
    before = circuit.traffic
    circuit.relay_cells_received(b"".join(path.send(2, RELAY_DATA, stream.stream_id, b"s" * BODY)
                                          for _ in range(200)))
    sendmes = [path.receive(payload) for _, _, payload in channel.take()]
    assert [message.command for message in sendmes] == [RELAY_SENDME, RELAY_SENDME]
    after = circuit.traffic
    # Two SENDME v1 bodies (version, DATA_LEN, the 20-byte tag: 23 bytes each) out, 200 full cells in.
    assert (after.written - before.written, after.delivered_written - before.delivered_written) == (
        2 * CELL, 2 * 23)
    assert after.delivered_read - before.delivered_read == 200 * BODY
    assert after.overhead_read == before.overhead_read
