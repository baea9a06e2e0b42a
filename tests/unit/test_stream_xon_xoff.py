"""XON/XOFF (proposal 324 "Flow control", tor's congestion_control_flow.c): the sans-IO state machine, then a
Stream using it on a congestion-controlled circuit.

The drain-rate figures are worked by hand from tor's formulas: compute_drain_rate is bytes * 1000 / usec
(kB/s), n_count_ewma(cur, prev, N) = (2 cur + (N - 1) prev) / (N + 1), and an XON goes out when the rate moves
by more than cc_xon_change_pct (25%) from the one last advised.
"""

import logging

import pytest
from twisted.internet.task import Clock as ReactorClock

from oppy.cell.commands import EndReason, RelayCommand
from oppy.cell.relay import encode_xon_body
from oppy.circuit.congestion import CongestionParams, VegasController
from oppy.circuit.manager import StreamFlowChanged
from oppy.stream.stream import Stream, StreamState
from oppy.stream.xon_xoff import (
    FlowControlError,
    FlowControlEvent,
    FlowControlParams,
    SendXoff,
    SendXon,
    StreamFlowControl,
)
from tests.support.streams import CollectingSink
from tests.unit.test_circuit_manager import manager_without_network
from tests.unit.test_control_commands import ask, session_for

CELL = 498
LIMIT = 500 * CELL  # cc_xoff_client's default, in bytes


# ------------------------------------------------------------------------------------------------ parameters

def test_parameters_default_to_tors():
    params = FlowControlParams.from_consensus({})
    assert params == FlowControlParams()
    assert (params.xoff_client_bytes, params.xoff_exit_bytes, params.xon_rate_bytes) == (LIMIT, LIMIT, LIMIT)
    assert (params.xon_change_pct, params.xon_ewma_cnt) == (25, 2)


def test_parameters_out_of_range_are_clamped_to_tors_bounds():
    low = FlowControlParams.from_consensus({"cc_xoff_client": 0, "cc_xoff_exit": -5, "cc_xon_rate": 0,
                                            "cc_xon_change_pct": 0, "cc_xon_ewma_cnt": 1, "cc_alg": 2})
    assert (low.xoff_client_bytes, low.xoff_exit_bytes, low.xon_rate_bytes) == (CELL, CELL, CELL)
    assert (low.xon_change_pct, low.xon_ewma_cnt) == (1, 2)
    high = FlowControlParams.from_consensus({"cc_xoff_client": 10001, "cc_xoff_exit": 99999, "cc_xon_rate": 5001,
                                             "cc_xon_change_pct": 100, "cc_xon_ewma_cnt": 101})
    assert (high.xoff_client_bytes, high.xoff_exit_bytes, high.xon_rate_bytes) == (
        10000 * CELL, 10000 * CELL, 5000 * CELL)
    assert (high.xon_change_pct, high.xon_ewma_cnt) == (99, 100)
    assert FlowControlParams.from_consensus({"cc_xoff_client": 20}).xoff_client_bytes == 20 * CELL


# ------------------------------------------------------------------------------------------------ downloads

def test_xoff_once_past_the_limit_then_xon_with_the_drain_rate_once_drained():
    flow = StreamFlowControl()
    assert flow.data_received(LIMIT, 10.0) is None  # at the limit: not past it
    assert flow.data_received(300_000, 10.0) == SendXoff()
    assert flow.xoff_sent and flow.xoffs_sent == 1
    assert flow.data_received(400_000, 10.2) is None  # one XOFF until an XON
    # Buffering began at 10.0 (the XOFF's arrival). 100 kB drained by 10.5: under cc_xon_rate, no rate yet.
    assert flow.drained(100_000, 300_000, 10.5) is None
    # 300 kB drained in 1 s: 300_000 * 1000 // 1_000_000 = 300 kB/s, the first EWMA sample taken as it is.
    xon = flow.drained(200_000, 0, 11.0)
    assert xon == SendXon(300)
    assert xon.body == encode_xon_body(300) and xon.command is RelayCommand.XON
    assert not flow.xoff_sent and flow.xons_sent == 1
    # The queue stays empty for cc_xon_rate bytes: the advised rate doubles (600 > 125% of 300) and the next
    # drain sends it as a rate-change XON.
    assert flow.drained(LIMIT, 0, 12.0) is None
    assert flow.ewma_drain_rate == 600
    assert flow.drained(1, 0, 12.1) == SendXon(600)
    assert flow.drained(1, 0, 12.2) is None  # no change since


def test_the_drain_rate_is_an_n_count_ewma():
    flow = StreamFlowControl()
    # More than a burst (32 cells) waits: buffering starts at 1.0, below the XOFF limit.
    assert flow.data_received(20_000, 1.0) is None
    # 249_001 bytes drained in 1 s: the first sample, 249 kB/s, taken as it is. No XON: none was sent yet,
    # so there is no advice to change.
    assert flow.drained(LIMIT + 1, 100, 2.0) is None
    assert flow.ewma_drain_rate == 249
    # Buffering again from 3.0; by 3.5 another 249_001 bytes went. compute_drain_rate divides the bytes of the
    # previous computation (249_001) by this period: 249_001 * 1000 // 500_000 = 498 kB/s, and the
    # N-EWMA with N = 2 gives (2 * 498 + 1 * 249) // 3 = 415.
    assert flow.data_received(20_000, 3.0) is None
    assert flow.drained(LIMIT + 1, 100, 3.5) is None
    assert flow.ewma_drain_rate == 415
    # The XOFF clears the rate: it was wrong if the buffer got this full.
    assert flow.data_received(LIMIT + 1, 4.0) == SendXoff()
    assert flow.ewma_drain_rate == 0


def test_no_xoff_while_the_client_reads():
    flow = StreamFlowControl()
    for second in range(100):
        assert flow.drained(1_000_000, 0, float(second)) is None
        assert flow.data_received(0, float(second)) is None
    assert flow.xoffs_sent == flow.xons_sent == 0


def test_a_smaller_xoff_limit_from_the_consensus():
    flow = StreamFlowControl(FlowControlParams.from_consensus({"cc_xoff_client": 2}))
    assert flow.data_received(2 * CELL, 0.5) is None
    assert flow.data_received(2 * CELL + 1, 0.5) == SendXoff()


# ------------------------------------------------------------------------------------------------ uploads

def test_the_exits_xoff_stops_packaging_until_its_xon():
    flow = StreamFlowControl()
    flow.data_sent(10 * LIMIT)
    assert flow.may_send
    flow.xoff_received_cell(b"\x00")
    assert not flow.may_send
    flow.xon_received_cell(encode_xon_body(1234))
    assert flow.may_send and flow.advised_rate == 1234
    flow.xon_received_cell(encode_xon_body(0) + b"\x00" * 10)  # an advisory XON (with padding): still open
    assert flow.may_send and flow.advised_rate == 0


@pytest.mark.parametrize(("command", "body", "message"), [
    ("xoff", b"", "malformed XOFF: XOFF body is empty"),
    ("xoff", b"\x01", "malformed XOFF: XOFF has unknown version 1"),
    ("xon", b"\x00\x00\x01", "malformed XON: XON body of 3 bytes is truncated"),
    ("xon", b"\x02\x00\x00\x00\x01", "malformed XON: XON has unknown version 2"),
])
def test_malformed_cells_are_a_clear_error_and_change_nothing(command, body, message):
    flow = StreamFlowControl()
    flow.data_sent(LIMIT)
    if command == "xon":
        flow.xoff_received_cell(b"\x00")
    with pytest.raises(FlowControlError, match=f"^{message}$"):
        getattr(flow, f"{command}_received_cell")(body)
    assert flow.may_send is (command == "xoff")


def test_a_second_xoff_without_xon_is_an_error():
    flow = StreamFlowControl()
    flow.data_sent(LIMIT * 3)
    flow.xoff_received_cell(b"\x00")
    with pytest.raises(FlowControlError, match="second XOFF"):
        flow.xoff_received_cell(b"\x00")
    assert not flow.may_send


def test_more_xoffs_than_the_bytes_sent_explain_are_logged_and_obeyed(caplog):
    flow = StreamFlowControl()
    flow.data_sent(LIMIT - 1)  # less than cc_xoff_exit: the exit cannot have had a reason to say XOFF
    with caplog.at_level(logging.INFO, logger="oppy.stream.xon_xoff"):
        flow.xoff_received_cell(b"\x00")
    assert "more XOFF cells (1) than the 248999 bytes sent" in caplog.text
    assert not flow.may_send
    caplog.clear()
    flow.data_sent(1)
    with caplog.at_level(logging.INFO, logger="oppy.stream.xon_xoff"):
        flow.xon_received_cell(encode_xon_body(5))
    assert caplog.text == ""  # 249_000 bytes sent explain one XON
    assert flow.may_send


# ------------------------------------------------------------------------------------------------ on a stream

class CongestionControlledCircuit:
    """What a stream uses of a circuit whose exit accepted congestion control (a real Vegas controller);
    records the relay messages and DATA the stream sends."""

    def __init__(self, congestion=True):
        self.congestion_control = VegasController(CongestionParams(), 31) if congestion else None
        self.package_room = 10 ** 6
        self.sent = []  # (command, stream_id, body)
        self.data = []
        self.streams = {}

    def allocate_stream_id(self):
        return 5

    def attach_stream(self, stream):
        self.streams[stream.stream_id] = stream

    def detach_stream(self, stream_id):
        self.streams.pop(stream_id, None)

    def end_stream(self, stream_id, reason=EndReason.MISC):
        self.streams.pop(stream_id, None)
        self.sent.append((RelayCommand.END, stream_id, bytes([reason])))

    def send_relay(self, command, stream_id, data, hop=None, early=False):
        self.sent.append((RelayCommand(command), stream_id, data))

    def send_data_many(self, stream_id, chunks):
        self.data += [bytes(chunk) for chunk in chunks]

    def commands(self):
        return [command for command, _, _ in self.sent]


class Sink:
    def __init__(self):
        self.data = []
        self.writable = []
        self.ended = []

    def stream_connected(self, stream):
        pass

    def stream_data(self, stream, data):
        self.data.append(data)

    def stream_writable(self, stream, writable):
        self.writable.append(writable)

    def stream_ended(self, stream, end):
        self.ended.append(end)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def connected_stream(congestion=True):
    circuit = CongestionControlledCircuit(congestion)
    sink = Sink()
    clock = Clock()
    stream = Stream(sink, "127.0.0.1", 80, clock=clock)
    stream.attach(circuit)
    stream.relay_received(RelayCommand.CONNECTED, b"")
    circuit.sent.clear()
    return stream, sink, circuit, clock


def cells(count, fill=b"d"):
    return [fill * CELL for _ in range(count)]


def test_a_stream_on_a_congestion_controlled_circuit_uses_xon_xoff_and_no_window():
    stream, sink, circuit, _ = connected_stream()
    assert stream.flow is not None and stream.state is StreamState.SUCCEEDED
    for _ in range(40):  # 20_000 cells, 40 times a stream window: no overrun, no stream SENDME
        stream.data_cells_received(cells(500))
    assert sum(map(len, sink.data)) == 20_000 * CELL
    assert circuit.sent == []


def test_a_client_that_stops_reading_gets_one_xoff_then_an_xon_once_it_has_read_everything():
    stream, sink, circuit, clock = connected_stream()
    stream.pause_delivery()
    for index in range(10):  # 10 reads of 100 cells: the 6th passes 500 cells waiting
        stream.data_cells_received(cells(100, bytes([index])))
    assert circuit.sent == [(RelayCommand.XOFF, 5, b"\x00")]
    assert stream.flow.xoffs_sent == 1
    assert sink.data == [] and stream.queued_bytes == 1000 * CELL
    clock.now += 2.0
    stream.resume_delivery()
    assert b"".join(sink.data) == b"".join(bytes([index]) * 100 * CELL for index in range(10))
    # 1000 cells drained in 2 s since buffering began: 498_000 * 1000 // 2_000_000 = 249 kB/s.
    assert circuit.sent[1:] == [(RelayCommand.XON, 5, encode_xon_body(249))]
    assert stream.queued_bytes == 0


def test_no_xon_while_the_client_has_only_read_part_of_the_queue():
    stream, sink, circuit, clock = connected_stream()
    stream.pause_delivery()
    stream.data_cells_received(cells(600))
    assert circuit.commands() == [RelayCommand.XOFF]

    class PausingSink(Sink):
        def stream_data(self, stream_, data):
            super().stream_data(stream_, data)
            stream_.pause_delivery()  # the transport is full again after one piece

    stream.data_cells_received(cells(10))  # queued behind the first read
    stream.sink = PausingSink()
    stream.resume_delivery()
    assert len(stream.sink.data) == 1 and stream.queued_bytes == 10 * CELL
    assert circuit.commands() == [RelayCommand.XOFF]
    stream.resume_delivery()
    assert circuit.commands() == [RelayCommand.XOFF, RelayCommand.XON]


def test_the_exits_xoff_holds_the_upload_in_the_bounded_send_buffer_until_its_xon():
    stream, sink, circuit, _ = connected_stream()
    stream.write(b"a" * 10 * CELL)
    assert len(circuit.data) == 10
    stream.relay_received(RelayCommand.XOFF, b"\x00")
    stream.write(b"b" * 600_000)  # more than the send buffer limit: the application is told to stop
    assert len(circuit.data) == 10
    assert sink.writable == [False]
    stream.relay_received(RelayCommand.XON, encode_xon_body(100))
    assert b"".join(circuit.data) == b"a" * 10 * CELL + b"b" * 600_000
    assert sink.writable == [False, True]
    assert stream.flow.advised_rate == 100


def test_a_malformed_xon_is_logged_and_ignored(caplog):
    stream, sink, circuit, _ = connected_stream()
    stream.write(b"a" * LIMIT)
    stream.relay_received(RelayCommand.XOFF, b"\x00")
    with caplog.at_level(logging.INFO, logger="oppy.stream.stream"):
        stream.relay_received(RelayCommand.XON, b"\x07")
    assert "Ignoring an XON from the exit on stream 5: malformed XON: XON body of 1 bytes is truncated" in caplog.text
    assert stream.state is StreamState.SUCCEEDED and not stream.flow.may_send
    stream.write(b"b")
    assert len(circuit.data) == LIMIT // CELL  # still held
    stream.relay_received(RelayCommand.XON, encode_xon_body(0))
    assert circuit.data[-1] == b"b"


def test_a_stream_sendme_on_a_congestion_controlled_circuit_ends_the_stream():
    stream, sink, circuit, _ = connected_stream()
    stream.relay_received(RelayCommand.SENDME, b"")
    assert stream.state is StreamState.CLOSED
    assert sink.ended[0].reason == EndReason.TORPROTOCOL
    assert circuit.sent == [(RelayCommand.END, 5, bytes([EndReason.TORPROTOCOL]))]


def test_on_fixed_windows_nothing_changes():
    stream, sink, circuit, _ = connected_stream(congestion=False)
    assert stream.flow is None
    stream.relay_received(RelayCommand.XOFF, b"\x00")  # ignored without congestion control
    stream.write(b"a" * 600 * CELL)
    assert len(circuit.data) == 500  # the stream package window, not the XOFF, stops it
    stream.pause_delivery()
    stream.data_cells_received(cells(500))
    assert RelayCommand.XOFF not in circuit.commands() and RelayCommand.SENDME not in circuit.commands()
    stream.resume_delivery()
    assert circuit.commands() == [RelayCommand.SENDME] * 10


def test_each_xon_and_xoff_reaches_the_control_port_as_a_stream_event():
    """tor reports XOFF_SENT, XOFF_RECV, XON_SENT and XON_RECV as STREAM events: the stream tells its owner
    (the manager), whose observers (the control port) hear a StreamFlowChanged."""
    manager = manager_without_network(ReactorClock())
    manager.attach_automatically = False
    heard = []
    manager.add_observer(heard.append)
    managed = manager.open_stream(CollectingSink(), "127.0.0.1", 80)
    stream = managed.stream
    circuit = CongestionControlledCircuit()
    stream.attach(circuit)
    stream.relay_received(RelayCommand.CONNECTED, b"")
    stream.pause_delivery()
    stream.data_cells_received(cells(501))
    stream.resume_delivery()
    stream.write(b"u" * LIMIT)
    stream.relay_received(RelayCommand.XOFF, b"\x00")
    stream.relay_received(RelayCommand.XON, encode_xon_body(7))
    flow = [event for event in heard if isinstance(event, StreamFlowChanged)]
    assert [event.event for event in flow] == [FlowControlEvent.XOFF_SENT, FlowControlEvent.XON_SENT,
                                               FlowControlEvent.XOFF_RECV, FlowControlEvent.XON_RECV]
    assert all(event.stream is managed for event in flow)

    hub, session = session_for()
    ask(session, "SETEVENTS STREAM")
    hub.stream_flow_changed(managed, FlowControlEvent.XOFF_SENT.value)
    assert session.data_to_send() == f"650 STREAM {managed.number} XOFF_SENT 0 127.0.0.1:80\r\n".encode()
    stream.close()
