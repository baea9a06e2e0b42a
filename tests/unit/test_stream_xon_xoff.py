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
from oppy.circuit.circuit import Circuit
from oppy.circuit.congestion import CongestionParams
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
from tests.unit.relaysim import build_circuit
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
    flow.xon_received_cell(encode_xon_body(1234), 1.0)
    assert flow.may_send and flow.advised_rate == 1234
    flow.xon_received_cell(encode_xon_body(0) + b"\x00" * 10, 1.0)  # an advisory XON (with padding): still open
    assert flow.may_send and flow.advised_rate == 0


def test_an_xon_with_a_rate_sets_tors_token_bucket_and_an_xon_without_one_lifts_it():
    """circuit_process_stream_xon: token_bucket_rw_adjust(bucket, kbps_ewma * 1000, the same as burst)."""
    flow = StreamFlowControl()
    flow.data_sent(20 * LIMIT)  # enough bytes sent to explain the XONs below (the dropmark guard)
    assert flow.rate_limit is None
    flow.xon_received_cell(encode_xon_body(100), 10.0)  # 100 kB/s: 100_000 bytes a second, one second's burst
    limit = flow.rate_limit
    assert (limit.rate, limit.level) == (100_000, 100_000)
    assert limit.cells == 201  # cells start while the level is above zero: 200 * 498 = 99_600 < 100_000
    flow.data_sent(201 * CELL)  # 100_098 bytes
    assert limit.level == -98 and limit.cells == 0
    assert limit.delay() == 0.1  # a cell's worth is back in 6 ms, but tor refills every 100 ms
    limit.refill(10.25)
    assert limit.level == -98 + 25_000 and limit.cells == 51  # 50 * 498 = 24_900 < 24_902
    limit.refill(12.0)
    assert limit.level == 100_000  # at most one second's worth
    limit.refill(11.0)  # the clock went back: nothing added, counted from now
    limit.refill(11.5)
    assert limit.level == 100_000
    flow.xon_received_cell(encode_xon_body(10), 11.5)  # a lower rate caps the level at its burst
    assert flow.rate_limit is limit and (limit.rate, limit.level) == (10_000, 10_000)
    flow.data_sent(9000)
    flow.xon_received_cell(encode_xon_body(50), 11.5)  # a higher one does not refill it
    assert (limit.rate, limit.level) == (50_000, 1000)
    assert limit.delay() == 0.1 and flow.rate_limit.cells == 3
    flow.data_sent(3 * CELL)
    assert limit.level == -494 and limit.delay() == 0.1  # 992 bytes in 19.8 ms; tor looks again in 100
    flow.xon_received_cell(encode_xon_body(1), 11.5)
    assert limit.delay() == pytest.approx(0.992)  # 1000 bytes a second
    flow.xon_received_cell(encode_xon_body(0), 11.5)
    assert flow.rate_limit is None and flow.may_send
    flow.data_sent(CELL)  # no bucket to take it from
    flow.xon_received_cell(encode_xon_body(2_147_484), 11.5)  # 2_147_484_000 bytes/s is past INT32_MAX: none
    assert flow.rate_limit is None
    flow.xon_received_cell(encode_xon_body(2_147_483), 11.5)
    assert flow.rate_limit.rate == 2_147_483_000


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
        if command == "xon":
            flow.xon_received_cell(body, 1.0)
        else:
            flow.xoff_received_cell(body)
    assert flow.may_send is (command == "xoff") and flow.rate_limit is None


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
    assert "Got XOFF" in caplog.text
    assert not flow.may_send
    caplog.clear()
    flow.data_sent(1)
    with caplog.at_level(logging.INFO, logger="oppy.stream.xon_xoff"):
        flow.xon_received_cell(encode_xon_body(5), 1.0)
    assert "more XON" not in caplog.text  # 249_000 bytes sent explain one XON
    assert "Got XON: 5 kB/s advised" in caplog.text
    assert flow.may_send


# ------------------------------------------------------------------------------------------------ on a stream

class SimulatedExit:
    """The far end of a stream: a 3-hop circuit through simulated relays (tests.unit.relaysim, written from
    the spec) whose exit accepted congestion control (or, without `congestion`, runs the fixed windows)."""

    def __init__(self, congestion=True):
        options = {"congestion": CongestionParams()} if congestion else {}
        self.circuit, self.channel, self.path = build_circuit(Circuit, circuit_options=options,
                                                              offers_congestion_control=congestion)
        assert (self.circuit.congestion_control is not None) is congestion
        self.channel.take()

    def received(self, stream_id=None):
        """The relay messages (command, body) the exit got for the stream since the last call (all streams'
        and the circuit's without `stream_id`)."""
        messages = [self.path.receive(payload) for _, _, payload in self.channel.take()]
        return [(RelayCommand(m.command), m.data) for m in messages if stream_id is None or m.stream_id == stream_id]

    def send(self, command, stream_id, data=b""):
        self.circuit.relay_cells_received(self.path.send(len(self.path.hops) - 1, command, stream_id, data))

    def send_data(self, stream_id, chunks):
        """DATA cells in one read from the link."""
        exit_hop = len(self.path.hops) - 1
        self.circuit.relay_cells_received(b"".join(self.path.send(exit_hop, RelayCommand.DATA, stream_id, chunk)
                                                   for chunk in chunks))


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


def connected_stream(congestion=True, owner=None, stream=None):
    exit_ = SimulatedExit(congestion)
    sink = Sink()
    clock = Clock()
    if stream is None:
        stream = Stream(sink, "127.0.0.1", 80, clock=clock, owner=owner)
    else:
        stream.sink, stream.clock = sink, clock
    stream.attach(exit_.circuit)
    exit_.send(RelayCommand.CONNECTED, stream.stream_id, b"")
    assert stream.state is StreamState.SUCCEEDED
    exit_.received()
    return stream, sink, exit_, clock


def cells(count, fill=b"d"):
    return [fill * CELL for _ in range(count)]


def test_a_stream_on_a_congestion_controlled_circuit_uses_xon_xoff_and_no_window():
    stream, sink, exit_, _ = connected_stream()
    assert stream.flow is not None
    for _ in range(4):  # 2000 cells, four stream windows: no overrun, no stream SENDME
        exit_.send_data(stream.stream_id, cells(500))
    assert sum(map(len, sink.data)) == 2000 * CELL
    assert exit_.received(stream.stream_id) == []
    assert stream.state is StreamState.SUCCEEDED


def test_a_client_that_stops_reading_gets_one_xoff_then_an_xon_once_it_has_read_everything():
    stream, sink, exit_, clock = connected_stream()
    stream.pause_delivery()
    for index in range(10):  # 10 reads of 100 cells: the 6th passes 500 cells waiting
        exit_.send_data(stream.stream_id, cells(100, bytes([index])))
    assert exit_.received(stream.stream_id) == [(RelayCommand.XOFF, b"\x00")]
    assert stream.flow.xoffs_sent == 1
    assert sink.data == [] and stream.queued_bytes == 1000 * CELL
    clock.now += 2.0
    stream.resume_delivery()
    assert b"".join(sink.data) == b"".join(bytes([index]) * 100 * CELL for index in range(10))
    # 1000 cells drained in 2 s since buffering began: 498_000 * 1000 // 2_000_000 = 249 kB/s.
    assert exit_.received(stream.stream_id) == [(RelayCommand.XON, encode_xon_body(249))]
    assert stream.queued_bytes == 0


def test_no_xon_while_the_client_has_only_read_part_of_the_queue():
    stream, sink, exit_, clock = connected_stream()
    stream.pause_delivery()
    exit_.send_data(stream.stream_id, cells(600))
    assert [command for command, _ in exit_.received(stream.stream_id)] == [RelayCommand.XOFF]

    class PausingSink(Sink):
        def stream_data(self, stream_, data):
            super().stream_data(stream_, data)
            stream_.pause_delivery()  # the transport is full again after one piece

    exit_.send_data(stream.stream_id, cells(10))  # queued behind the first read
    stream.sink = PausingSink()
    stream.resume_delivery()
    assert len(stream.sink.data) == 1 and stream.queued_bytes == 10 * CELL
    assert exit_.received(stream.stream_id) == []
    stream.resume_delivery()
    assert [command for command, _ in exit_.received(stream.stream_id)] == [RelayCommand.XON]


def test_the_exits_xoff_holds_the_upload_in_the_bounded_send_buffer_until_its_xon():
    stream, sink, exit_, _ = connected_stream()
    room = exit_.circuit.package_room  # the congestion window: cc_cwnd_init, 124 cells
    stream.write(b"a" * 10 * CELL)
    assert exit_.received(stream.stream_id) == [(RelayCommand.DATA, b"a" * CELL)] * 10
    exit_.send(RelayCommand.XOFF, stream.stream_id, b"\x00")
    stream.write(b"b" * 600_000)  # more than the send buffer limit: the application is told to stop
    assert exit_.received(stream.stream_id) == []
    assert sink.writable == [False]
    exit_.send(RelayCommand.XON, stream.stream_id, encode_xon_body(100))
    # As much as the congestion window leaves goes out; the rest waits for circuit SENDMEs.
    assert exit_.received(stream.stream_id) == [(RelayCommand.DATA, b"b" * CELL)] * (room - 10)
    assert stream.flow.advised_rate == 100 and stream.flow.may_send


def test_the_upload_keeps_to_the_rate_the_exits_xon_advised_until_an_xon_without_one():
    """The rate is kept with the clock handed in; the manager flushes the stream again when the stream asks
    (its reactor's timer)."""
    reactor = ReactorClock()
    manager = manager_without_network(reactor)
    manager.attach_automatically = False
    managed = manager.open_stream(CollectingSink(), "127.0.0.1", 80)
    stream, sink, exit_, clock = connected_stream(stream=managed.stream)

    def advance(seconds):
        clock.now += seconds
        reactor.advance(seconds)
        return len(exit_.received(stream.stream_id))

    exit_.send(RelayCommand.XON, stream.stream_id, encode_xon_body(10))  # 10_000 bytes a second
    assert stream.flow.rate_limit.rate == 10_000
    stream.write(b"u" * 100 * CELL)
    assert len(exit_.received(stream.stream_id)) == 21  # 21 cells while the level is above zero: -458 left
    assert managed.rate_timer.getTime() == reactor.seconds() + 0.1
    assert advance(0.05) == 0
    assert advance(0.05) == 2  # -458 + 1000 = 542: two cells start, -454 left
    assert advance(1.0) == 20  # the timer 0.1 s on: 9546 (not 10_000: at most one second's worth), -414 left
    assert advance(0.1) == 2
    exit_.send(RelayCommand.XON, stream.stream_id, encode_xon_body(0))
    assert len(exit_.received(stream.stream_id)) == 100 - 45  # the rest, as the congestion window allows
    assert stream.flow.rate_limit is None and stream.bytes_written == 100 * CELL
    assert advance(0.1) == 0  # the timer pending then finds nothing to send
    assert managed.rate_timer is not None and not managed.rate_timer.active()


def test_no_timer_while_the_exit_holds_the_upload_with_xoff_and_none_after_the_stream_ends():
    reactor = ReactorClock()
    manager = manager_without_network(reactor)
    manager.attach_automatically = False
    managed = manager.open_stream(CollectingSink(), "127.0.0.1", 80)
    stream, sink, exit_, clock = connected_stream(stream=managed.stream)
    exit_.send(RelayCommand.XON, stream.stream_id, encode_xon_body(1))  # 1000 bytes a second
    stream.write(b"u" * 2 * CELL)
    assert managed.rate_timer is None  # two cells start within 1000 bytes: nothing waits
    exit_.send(RelayCommand.XOFF, stream.stream_id, b"\x00")
    stream.write(b"u" * 2 * CELL)
    assert managed.rate_timer is None  # the XON will flush it
    exit_.send(RelayCommand.XON, stream.stream_id, encode_xon_body(1))
    assert managed.rate_timer.active()  # 4 bytes left: one cell starts, the other waits
    stream.close()
    assert not managed.rate_timer.active()
    assert [command for command, _ in exit_.received(stream.stream_id)] == [RelayCommand.DATA] * 3 + [
        RelayCommand.END]


def test_a_malformed_xon_is_logged_and_ignored(caplog):
    stream, sink, exit_, _ = connected_stream()
    stream.write(b"a" * 20 * CELL)
    exit_.send(RelayCommand.XOFF, stream.stream_id, b"\x00")
    with caplog.at_level(logging.INFO, logger="oppy.stream.stream"):
        exit_.send(RelayCommand.XON, stream.stream_id, b"\x07")
    assert f"Ignoring an XON from the exit on stream {stream.stream_id}: malformed XON: XON body of 1 bytes " \
           "is truncated" in caplog.text
    assert stream.state is StreamState.SUCCEEDED and not stream.flow.may_send
    stream.write(b"b")
    assert [data for _, data in exit_.received(stream.stream_id)] == [b"a" * CELL] * 20  # the b is held
    exit_.send(RelayCommand.XON, stream.stream_id, encode_xon_body(0))
    assert exit_.received(stream.stream_id) == [(RelayCommand.DATA, b"b")]


def test_a_stream_sendme_on_a_congestion_controlled_circuit_ends_the_stream():
    stream, sink, exit_, _ = connected_stream()
    exit_.send(RelayCommand.SENDME, stream.stream_id)
    assert stream.state is StreamState.CLOSED
    assert sink.ended[0].reason == EndReason.TORPROTOCOL
    assert exit_.received(stream.stream_id) == [(RelayCommand.END, bytes([EndReason.TORPROTOCOL]))]


def test_on_fixed_windows_nothing_changes():
    stream, sink, exit_, _ = connected_stream(congestion=False)
    assert stream.flow is None
    exit_.send(RelayCommand.XOFF, stream.stream_id, b"\x00")  # ignored without congestion control
    stream.write(b"a" * 600 * CELL)
    assert len(exit_.received(stream.stream_id)) == 500  # the stream package window, not the XOFF, stops it
    stream.pause_delivery()
    exit_.send_data(stream.stream_id, cells(500))
    assert exit_.received(stream.stream_id) == []  # no XOFF, and no SENDME while the client does not read
    stream.resume_delivery()
    assert exit_.received(stream.stream_id) == [(RelayCommand.SENDME, b"")] * 10


def test_each_xon_and_xoff_reaches_the_control_port_as_a_stream_event():
    """tor reports XOFF_SENT, XOFF_RECV, XON_SENT and XON_RECV as STREAM events: the stream tells its owner
    (the manager), whose observers (the control port) hear a StreamFlowChanged."""
    manager = manager_without_network(ReactorClock())
    manager.attach_automatically = False
    heard = []
    manager.add_observer(heard.append)
    managed = manager.open_stream(CollectingSink(), "127.0.0.1", 80)
    stream, sink, exit_, _ = connected_stream(stream=managed.stream)
    stream.pause_delivery()
    exit_.send_data(stream.stream_id, cells(501))
    stream.resume_delivery()
    stream.write(b"u" * LIMIT)
    exit_.send(RelayCommand.XOFF, stream.stream_id, b"\x00")
    exit_.send(RelayCommand.XON, stream.stream_id, encode_xon_body(7))
    flow = [event for event in heard if isinstance(event, StreamFlowChanged)]
    assert [event.event for event in flow] == [FlowControlEvent.XOFF_SENT, FlowControlEvent.XON_SENT,
                                               FlowControlEvent.XOFF_RECV, FlowControlEvent.XON_RECV]
    assert all(event.stream is managed for event in flow)

    hub, session = session_for()
    ask(session, "SETEVENTS STREAM")
    hub.stream_flow_changed(managed, FlowControlEvent.XOFF_SENT.value)
    assert session.data_to_send() == f"650 STREAM {managed.number} XOFF_SENT 0 127.0.0.1:80\r\n".encode()
    stream.close()
