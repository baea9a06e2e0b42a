"""Congestion control on a circuit against simulated relays (tests/unit/relaysim.py, written from the spec):
who is asked for it, what turns it on, and the SENDMEs every sendme_inc DATA cells both ways; on a rendezvous
circuit, the virtual hop to the onion service running the controller INTRODUCE1 asked the service for."""

from __future__ import annotations

import os

import pytest

from oppy.cell.flow_control import CIRCWINDOW_INCREMENT, CIRCWINDOW_START, STREAMWINDOW_START
from oppy.circuit.circuit import Circuit, CircuitError, CircuitState
from oppy.circuit.congestion import CongestionParams, VegasController
from oppy.crypto.relay_crypto import Tor1Hop
from oppy.stream.stream import Stream, StreamKind
from tests.unit.relaysim import (
    CMD_RELAY,
    EXT_CC_REQUEST,
    HTYPE_NTOR,
    HTYPE_NTOR_V3,
    RELAY_DATA,
    RELAY_SENDME,
    RecordingChannel,
    RecordingCircuitOwner,
    ServiceHopCrypto,
    build_circuit,
    new_path,
    parse_extend2,
    sendme_v1_body,
)

PARAMS = CongestionParams()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def extend_types(params, offers=True, hops=3):
    """The HTYPE of each EXTEND2 of a build, and the exit's view of the client message."""
    channel = RecordingChannel()
    path = new_path(hops, offers_congestion_control=offers)
    circuit = Circuit(channel, [relay.target for relay in path.relays], RecordingCircuitOwner(), congestion=params)
    circuit.start()
    ((_, _, payload),) = channel.take()
    circuit.cell_received(11, path.answer_create2(payload))
    htypes = []
    while len(path.hops) < hops:
        ((_, _, payload),) = channel.take()
        message = path.receive(payload)
        htypes.append(parse_extend2(message.data).handshake_type)
        circuit.cell_received(CMD_RELAY, path.answer_extend2(message))
    assert circuit.state is CircuitState.OPEN
    return circuit, htypes, path.relays[-1].client_extensions


def cc_circuit(clock=None, **relay_options):
    return build_circuit(Circuit, circuit_options={"congestion": PARAMS, "clock": clock or Clock()},
                         offers_congestion_control=True, **relay_options)


def test_only_the_exit_offering_it_gets_ntor_v3_with_the_cc_request():
    circuit, htypes, extensions = extend_types(PARAMS)
    assert htypes == [HTYPE_NTOR, HTYPE_NTOR_V3]
    assert extensions == [(EXT_CC_REQUEST, b"")]
    controller = circuit.congestion_control
    assert isinstance(controller, VegasController)
    assert (controller.sendme_inc, controller.cwnd, controller.inflight, controller.in_slow_start) == (31, 124, 0,
                                                                                                         True)
    assert circuit.package_room == 124


@pytest.mark.parametrize("params, offers, hops", [
    (PARAMS, False, 3),                                    # no FlowCtrl=2 / Relay=4
    (CongestionParams.from_consensus({"cc_alg": 0}), True, 3),  # the consensus has it off
    (None, True, 3),                                       # a circuit not for exit streams
    (PARAMS, True, 1),                                     # one hop: a directory circuit
])
def test_others_keep_ntor_and_the_fixed_windows(params, offers, hops):
    circuit, htypes, extensions = extend_types(params, offers, hops)
    assert htypes == [HTYPE_NTOR] * (hops - 1) and extensions is None
    assert circuit.congestion_control is None
    assert circuit.package_room == CIRCWINDOW_START and circuit.window.increment == CIRCWINDOW_INCREMENT


def test_an_exit_that_does_not_turn_it_on_leaves_the_fixed_windows():
    circuit, channel, path = cc_circuit(cc_sendme_inc=None)
    assert path.relays[-1].client_extensions == [(EXT_CC_REQUEST, b"")]
    assert circuit.state is CircuitState.OPEN and circuit.congestion_control is None
    assert circuit.package_room == CIRCWINDOW_START


@pytest.mark.parametrize("sendme_inc", [0, 29, 33, 100])
def test_an_exit_choosing_a_sendme_inc_tor_refuses_fails_the_circuit(sendme_inc):
    channel = RecordingChannel()
    path = new_path(3, offers_congestion_control=True, cc_sendme_inc=sendme_inc)
    owner = RecordingCircuitOwner()
    circuit = Circuit(channel, [relay.target for relay in path.relays], owner, congestion=PARAMS)
    circuit.start()
    ((_, _, payload),) = channel.take()
    circuit.cell_received(11, path.answer_create2(payload))
    for _ in range(2):
        ((_, _, payload),) = channel.take()
        circuit.cell_received(CMD_RELAY, path.answer_extend2(path.receive(payload)))
    assert circuit.state is CircuitState.CLOSED
    (error,) = owner.closed
    assert error.hop == 2 and "sendme_inc" in str(error)


@pytest.mark.parametrize("sendme_inc", [30, 31, 32])
def test_a_sendme_inc_one_away_from_the_consensus_is_taken(sendme_inc):
    circuit, channel, path = cc_circuit(cc_sendme_inc=sendme_inc)
    assert circuit.congestion_control.sendme_inc == sendme_inc == circuit.window.increment


def test_downloads_get_a_sendme_every_sendme_inc_data_cells_with_the_exit_digest():
    circuit, channel, path = cc_circuit()
    for _ in range(30):
        circuit.cell_received(CMD_RELAY, path.send(2, RELAY_DATA, 5, b"x"))
    assert channel.take() == []
    for round_ in range(40):  # far past the 1000 cells of a fixed window
        circuit.cell_received(CMD_RELAY, path.send(2, RELAY_DATA, 5, b"x"))
        ((_, _, payload),) = channel.take()
        message = path.receive(payload)
        assert (message.hop, message.command, message.stream_id) == (2, RELAY_SENDME, 0)
        assert message.data == sendme_v1_body(path.hops[2].backward_tags[-1])
        for _ in range(30):
            circuit.cell_received(CMD_RELAY, path.send(2, RELAY_DATA, 5, b"x"))
        assert channel.take() == []
    assert circuit.state is CircuitState.OPEN


class WakeCounter:
    """A stream that only counts how often the circuit's window opened for it."""

    stream_id = 1

    def __init__(self) -> None:
        self.woken = 0
        self.closed = []

    def circuit_window_opened(self) -> None:
        self.woken += 1

    def circuit_closed(self, error) -> None:
        self.closed.append(error)


def send(circuit, path, count):
    circuit.send_data_many(1, [b"d" * 498] * count)
    cells = circuit.channel.take()
    assert len(cells) == count
    return [path.receive(payload).tag for _, _, payload in cells]


def test_uploads_obey_the_cwnd_and_each_sendme_is_a_round_trip():
    clock = Clock()
    circuit, channel, path = cc_circuit(clock)
    controller = circuit.congestion_control
    stream = WakeCounter()
    circuit.attach_stream(stream)
    tags = send(circuit, path, 100) + send(circuit, path, 24)
    assert (controller.inflight, circuit.package_room) == (124, 0)
    with pytest.raises(CircuitError):
        circuit.send_data_many(1, [b"over"])
    clock.now += 0.040
    # The exit's SENDME echoes the digest after our 31st DATA cell; the RTT is 40 ms.
    circuit.cell_received(CMD_RELAY, path.send(2, RELAY_SENDME, 0, sendme_v1_body(tags[30])))
    assert (controller.rtt_usec, controller.min_rtt_usec) == (40_000, 40_000)
    # Slow start with a full window: cwnd 124 + 31; inflight 124 - 31.
    assert (controller.cwnd, controller.inflight, circuit.package_room) == (155, 93, 62)
    assert stream.woken == 1
    # A SENDME for a cell that was not the 62nd closes the circuit, as an exit's would.
    circuit.cell_received(CMD_RELAY, path.send(2, RELAY_SENDME, 0, sendme_v1_body(tags[60])))
    assert circuit.state is CircuitState.CLOSED


def test_streams_on_a_congestion_controlled_circuit_send_no_stream_sendmes():
    circuit, channel, path = cc_circuit()

    class Sink:
        def __init__(self):
            self.data = b""

        def stream_connected(self, stream): pass

        def stream_data(self, stream, data): self.data += data

        def stream_writable(self, stream, writable): pass

        def stream_ended(self, stream, end): pass

    sink = Sink()
    stream = Stream(sink, "example.com", 80, StreamKind.CONNECT)
    stream.attach(circuit)
    (begin,) = channel.take()
    path.receive(begin[2])
    circuit.cell_received(CMD_RELAY, path.send(2, 4, stream.stream_id, b""))  # CONNECTED
    for _ in range(600):  # more than a stream window of 500
        circuit.cell_received(CMD_RELAY, path.send(2, RELAY_DATA, stream.stream_id, b"y" * 100))
    sent = [path.receive(payload) for _, _, payload in channel.take()]
    # Only circuit SENDMEs (every 31 cells), none for the stream.
    assert [(m.command, m.stream_id) for m in sent] == [(RELAY_SENDME, 0)] * (600 // 31)
    assert len(sink.data) == 60_000 and not stream.ended


def test_the_sendmes_of_one_read_carry_each_its_own_trigger_tag():
    circuit, channel, path = cc_circuit()
    cells = b"".join(path.send(2, RELAY_DATA, 5, bytes([n]) * 10) for n in range(100))
    circuit.relay_cells_received(cells)
    sent = [path.receive(payload) for _, _, payload in channel.take()]
    exit_tags = path.hops[2].backward_tags
    assert [(m.hop, m.command, m.data) for m in sent] == [
        (2, RELAY_SENDME, sendme_v1_body(exit_tags[index])) for index in (30, 61, 92)]
    assert circuit.window.deliver == CIRCWINDOW_START - 100 + 3 * 31


def test_the_sendmes_a_read_owes_are_written_at_once_before_its_data_reaches_a_stream():
    """The exit's Vegas times each SENDME from the cell that triggered it: every moment it waits on our side
    (the read's data delivered first, the link's write left to the end of the reactor iteration) shrinks
    the exit's window. So the SENDMEs go out urgent (the link writes them at once), and before the data of the
    read is delivered to the stream that follows the trigger."""
    circuit, channel, path = cc_circuit()
    seen = []

    class Sink:
        def stream_connected(self, stream): pass

        def stream_data(self, stream, data):
            seen.append((stream.stream_id, len(data), channel.urgent_cells))

        def stream_writable(self, stream, writable): pass

        def stream_ended(self, stream, end): pass

    streams = []
    for _ in range(2):
        stream = Stream(Sink(), "example.com", 80, StreamKind.CONNECT)
        stream.attach(circuit)
        (begin,) = channel.take()
        path.receive(begin[2])
        circuit.cell_received(CMD_RELAY, path.send(2, 4, stream.stream_id, b""))  # CONNECTED
        streams.append(stream)
    first, second = (stream.stream_id for stream in streams)
    opening = channel.urgent_cells  # the BEGINs went out urgent too
    # One read: 40 DATA cells for the first stream (the 31st triggers a SENDME), 40 for the second (its 22nd,
    # the read's 62nd, triggers the next).
    cells = b"".join(path.send(2, RELAY_DATA, stream_id, b"z" * 100) for stream_id in [first] * 40 + [second] * 40)
    circuit.relay_cells_received(cells)
    assert seen == [(first, 4000, opening + 1), (second, 4000, opening + 2)]
    sent = [path.receive(payload) for _, _, payload in channel.take()]
    exit_tags = path.hops[2].backward_tags
    assert [(m.command, m.data) for m in sent] == [(RELAY_SENDME, sendme_v1_body(exit_tags[-80 + index]))
                                                   for index in (30, 61)]


# ------------------------------------------------------------------------------------ the rendezvous circuit

ONION_PARAMS = PARAMS.for_onion_service({})
SERVICE = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion"


def rendezvous_circuit(controller, clock=None):
    """A four-hop circuit to a rendezvous point (onion-service circuits ask no relay for congestion control),
    then joined to the service's simulated end of the virtual hop with `controller`."""
    circuit, channel, path = build_circuit(Circuit, hops=4, circuit_options={"clock": clock or Clock()},
                                           offers_congestion_control=True)
    assert circuit.congestion_control is None
    keys = [os.urandom(32) for _ in range(4)]
    circuit.add_virtual_hop(Tor1Hop.for_onion_service(*keys), controller)
    path.hops.append(ServiceHopCrypto(*keys))
    return circuit, channel, path


def test_the_virtual_hop_runs_the_controller_the_service_was_asked_for():
    controller = VegasController(ONION_PARAMS, 31)
    circuit, channel, path = rendezvous_circuit(controller)
    assert circuit.congestion_control is controller
    assert (circuit.package_room, circuit.window.increment) == (ONION_PARAMS.cwnd_init, 31)
    # Downloads from the service: a SENDME to the virtual hop every 31 DATA cells, with the service's digest.
    for round_ in range(3):
        for _ in range(30):
            circuit.cell_received(CMD_RELAY, path.send(4, RELAY_DATA, 5, b"x"))
        assert channel.take() == []
        circuit.cell_received(CMD_RELAY, path.send(4, RELAY_DATA, 5, b"x"))
        ((_, _, payload),) = channel.take()
        message = path.receive(payload)
        assert (message.hop, message.command) == (4, RELAY_SENDME)
        assert message.data == sendme_v1_body(path.hops[4].backward_tags[-1])


def test_uploads_to_the_service_obey_the_cwnd_and_its_sendmes_are_round_trips():
    clock = Clock()
    controller = VegasController(ONION_PARAMS, 31)
    circuit, channel, path = rendezvous_circuit(controller, clock)
    circuit.attach_stream(WakeCounter())
    tags = send(circuit, path, ONION_PARAMS.cwnd_init)
    assert (controller.inflight, circuit.package_room) == (ONION_PARAMS.cwnd_init, 0)
    clock.now += 0.120
    circuit.cell_received(CMD_RELAY, path.send(4, RELAY_SENDME, 0, sendme_v1_body(tags[30])))
    assert controller.rtt_usec == 120_000
    assert (controller.cwnd, controller.inflight) == (ONION_PARAMS.cwnd_init + 31, ONION_PARAMS.cwnd_init - 31)


def test_streams_to_the_service_use_xon_xoff_not_stream_windows():
    circuit, channel, path = rendezvous_circuit(VegasController(ONION_PARAMS, 31))
    stream = Stream(None, SERVICE, 80, StreamKind.CONNECT)
    stream.attach(circuit, onion_service=True)
    assert stream.flow is not None and stream.window.package > STREAMWINDOW_START


def test_without_a_controller_the_virtual_hop_keeps_the_fixed_windows():
    circuit, channel, path = rendezvous_circuit(None)
    assert circuit.congestion_control is None
    assert (circuit.package_room, circuit.window.increment) == (CIRCWINDOW_START, CIRCWINDOW_INCREMENT)
    stream = Stream(None, SERVICE, 80, StreamKind.CONNECT)
    stream.attach(circuit, onion_service=True)
    assert stream.flow is None and stream.window.package == STREAMWINDOW_START
