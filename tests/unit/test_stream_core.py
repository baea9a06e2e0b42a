"""The sans-IO Stream on a real Circuit built through simulated relays.

What the stream sends is read at the simulated exit (after tor1 at every hop); what the exit sends goes
back through the same layers. Relay bodies on the exit side are written here from tor-spec "Opening
streams", "Closing streams", "Remote hostname lookup" and "Flow control".
"""

import ipaddress
import struct

import pytest

from oppy.cell.commands import EndReason
from oppy.cell.flow_control import STREAMWINDOW_INCREMENT, STREAMWINDOW_START
from oppy.cell.relay import ResolvedType
from oppy.circuit.circuit import Circuit
from oppy.stream.stream import (
    Stream,
    StreamKind,
    StreamState,
)
from tests.unit.relaysim import (
    CMD_DESTROY,
    CMD_RELAY,
    RELAY_CONNECTED,
    RELAY_DATA,
    RELAY_DATA_LEN,
    RELAY_END,
    RELAY_RESOLVED,
    RELAY_SENDME,
    build_circuit,
    sendme_v1_body,
)

# tor-spec "Relay cells": relay command numbers the exit sees.
RELAY_BEGIN, RELAY_RESOLVE, RELAY_BEGIN_DIR = 1, 11, 13
EXIT = 2


class RecordingSink:
    def __init__(self):
        self.events = []
        self.data = []

    def stream_connected(self, stream):
        self.events.append("connected")

    def stream_resolved(self, stream, answers):
        self.events.append(("resolved", answers))

    def stream_data(self, stream, data):
        self.data.append(data)

    def stream_writable(self, stream, writable):
        self.events.append(("writable", writable))

    def stream_ended(self, stream, end):
        self.events.append(("ended", end))

    @property
    def ends(self):
        return [event[1] for event in self.events if isinstance(event, tuple) and event[0] == "ended"]


class Exit:
    """The far end of a stream: a 3-hop circuit's simulated exit."""

    def __init__(self):
        self.circuit, self.channel, self.path = build_circuit(Circuit)

    def received(self):
        """Relay messages the exit got since the last call (circuit-level SENDMEs included)."""
        messages = []
        for _, command, payload in self.channel.take():
            assert command == CMD_RELAY
            messages.append(self.path.receive(payload))
        return messages

    def stream_messages(self, stream_id):
        return [(m.command, m.data) for m in self.received() if m.stream_id == stream_id]

    def send(self, command, stream_id, data=b""):
        self.circuit.cell_received(CMD_RELAY, self.path.send(EXIT, command, stream_id, data))


def open_stream(host="example.com", port=443, kind=StreamKind.CONNECT, connect=True, **kwargs):
    exit_ = Exit()
    sink = RecordingSink()
    stream = Stream(sink, host, port, kind, **kwargs)
    stream.attach(exit_.circuit)
    begin = exit_.received()
    assert len(begin) == 1 and begin[0].stream_id == stream.stream_id and begin[0].hop == EXIT
    if connect:
        exit_.send(RELAY_CONNECTED, stream.stream_id, bytes([93, 184, 216, 34]) + struct.pack(">I", 300))
    return stream, sink, exit_, begin[0]


def data_cells(messages):
    return [data for command, data in messages if command == RELAY_DATA]


# ------------------------------------------------------------------------------------------------ opening

@pytest.mark.parametrize(("host", "port", "body"), [
    ("example.com", 443, b"example.com:443\x00"),
    ("Mixed.Example.ORG", 80, b"mixed.example.org:80\x00"),
    ("93.184.216.34", 8080, b"93.184.216.34:8080\x00"),
    ("2001:DB8::1", 22, b"[2001:db8::1]:22\x00"),
])
def test_begin_body(host, port, body):
    stream, sink, exit_, begin = open_stream(host, port, connect=False)
    assert begin.command == RELAY_BEGIN
    assert begin.data == body
    assert stream.stream_id != 0
    assert stream.state is StreamState.SENTCONNECT
    assert sink.events == []


def test_begin_dir_is_empty():
    stream, sink, exit_, begin = open_stream("", 0, kind=StreamKind.DIRECTORY, connect=False)
    assert (begin.command, begin.data) == (RELAY_BEGIN_DIR, b"")
    exit_.send(RELAY_CONNECTED, stream.stream_id)
    assert stream.state is StreamState.SUCCEEDED


def test_connected_moves_to_succeeded_and_tells_the_sink_once():
    stream, sink, exit_, _ = open_stream(connect=False)
    exit_.send(RELAY_CONNECTED, stream.stream_id, bytes([93, 184, 216, 34]) + struct.pack(">I", 300))
    exit_.send(RELAY_CONNECTED, stream.stream_id, b"")
    assert stream.state is StreamState.SUCCEEDED
    assert sink.events == ["connected"]


def test_connected_with_a_malformed_address_still_opens():
    stream, sink, exit_, _ = open_stream(connect=False)
    exit_.send(RELAY_CONNECTED, stream.stream_id, b"\x01\x02\x03")
    assert stream.state is StreamState.SUCCEEDED


def test_two_streams_get_different_ids():
    stream, sink, exit_, _ = open_stream()
    other = Stream(RecordingSink(), "example.net", 80)
    other.attach(exit_.circuit)
    assert other.stream_id not in (0, stream.stream_id)
    assert exit_.received()[0].stream_id == other.stream_id


# ------------------------------------------------------------------------------------------------ data in

def test_data_is_delivered_to_the_sink_in_order():
    stream, sink, exit_, _ = open_stream()
    for chunk in (b"HTTP/1.1 200 OK\r\n", b"", b"x" * RELAY_DATA_LEN):
        exit_.send(RELAY_DATA, stream.stream_id, chunk)
    assert sink.data == [b"HTTP/1.1 200 OK\r\n", b"", b"x" * RELAY_DATA_LEN]
    assert stream.bytes_read == 17 + RELAY_DATA_LEN


def test_stream_sendme_every_50_cells_empty_with_the_stream_id():
    stream, sink, exit_, _ = open_stream()
    for _ in range(STREAMWINDOW_INCREMENT - 1):
        exit_.send(RELAY_DATA, stream.stream_id, b"d")
    assert exit_.received() == []
    assert stream.window.deliver == STREAMWINDOW_START - 49
    exit_.send(RELAY_DATA, stream.stream_id, b"d")
    (sendme,) = exit_.received()
    # tor-spec "Flow control": a stream SENDME has the stream id set and an empty body, to the exit.
    assert (sendme.hop, sendme.command, sendme.stream_id, sendme.data) == (EXIT, RELAY_SENDME, stream.stream_id, b"")
    assert stream.window.deliver == STREAMWINDOW_START
    for _ in range(STREAMWINDOW_INCREMENT * 3):
        exit_.send(RELAY_DATA, stream.stream_id, b"d")
    # Cells 100 and 200 also trigger circuit-level SENDMEs (stream 0); the stream got three more.
    messages = exit_.received()
    assert [(m.command, m.data) for m in messages if m.stream_id == stream.stream_id] == [(RELAY_SENDME, b"")] * 3
    assert [m.command for m in messages if m.stream_id == 0] == [RELAY_SENDME, RELAY_SENDME]


def test_no_stream_sendme_while_delivery_is_paused_and_catch_up_on_resume():
    stream, sink, exit_, _ = open_stream()
    stream.pause_delivery()
    for _ in range(120):
        exit_.send(RELAY_DATA, stream.stream_id, b"p")
    assert sink.data == [] and stream.queued_bytes == 120  # kept in the stream until the client reads
    assert exit_.stream_messages(stream.stream_id) == []
    assert stream.window.deliver == STREAMWINDOW_START - 120
    stream.resume_delivery()
    assert sink.data == [b"p"] * 120 and stream.queued_bytes == 0
    # 380 -> 430 -> 480: two SENDMEs bring the window back above 450.
    assert exit_.stream_messages(stream.stream_id) == [(RELAY_SENDME, b"")] * 2
    assert stream.window.deliver == STREAMWINDOW_START - 20
    stream.resume_delivery()
    assert exit_.received() == []


def test_data_beyond_the_deliver_window_ends_the_stream():
    stream, sink, exit_, _ = open_stream()
    stream.pause_delivery()
    for _ in range(STREAMWINDOW_START):
        exit_.send(RELAY_DATA, stream.stream_id, b"o")
    assert not stream.ended
    exit_.received()
    exit_.send(RELAY_DATA, stream.stream_id, b"o")
    assert stream.state is StreamState.CLOSED
    assert stream.end.reason == EndReason.TORPROTOCOL
    assert exit_.stream_messages(stream.stream_id) == [(RELAY_END, bytes([EndReason.TORPROTOCOL]))]
    assert len(sink.data) == STREAMWINDOW_START


def test_data_before_connected_is_not_delivered():
    stream, sink, exit_, _ = open_stream(connect=False)
    exit_.send(RELAY_DATA, stream.stream_id, b"too early")
    assert sink.data == []


# ------------------------------------------------------------------------------------------------ data out

def test_writes_are_chunked_into_cells_of_at_most_498_bytes():
    stream, sink, exit_, _ = open_stream()
    payload = bytes(range(256)) * 5  # 1280 bytes
    stream.write(payload)
    cells = data_cells(exit_.stream_messages(stream.stream_id))
    assert [len(cell) for cell in cells] == [RELAY_DATA_LEN, RELAY_DATA_LEN, 1280 - 2 * RELAY_DATA_LEN]
    assert b"".join(cells) == payload
    assert stream.window.package == STREAMWINDOW_START - 3
    assert stream.bytes_written == 1280


def test_small_writes_buffered_before_connected_fill_cells():
    stream, sink, exit_, _ = open_stream(connect=False)
    pieces = [bytes([i]) * 200 for i in range(4)]
    for piece in pieces:
        stream.write(piece)
    assert exit_.received() == []  # nothing before CONNECTED
    exit_.send(RELAY_CONNECTED, stream.stream_id, b"")
    cells = data_cells(exit_.stream_messages(stream.stream_id))
    assert [len(cell) for cell in cells] == [RELAY_DATA_LEN, 800 - RELAY_DATA_LEN]
    assert b"".join(cells) == b"".join(pieces)


def test_package_window_of_500_blocks_writes_and_sendme_reopens_it():
    stream, sink, exit_, _ = open_stream()
    block = b"w" * RELAY_DATA_LEN
    for _ in range(STREAMWINDOW_START + 70):
        stream.write(block)
    cells = data_cells(exit_.stream_messages(stream.stream_id))
    assert len(cells) == STREAMWINDOW_START
    assert stream.window.package == 0
    stream.write(b"more")
    assert exit_.received() == []
    exit_.send(RELAY_SENDME, stream.stream_id)
    # 50 more cells: the 70 full blocks waiting first.
    cells = data_cells(exit_.stream_messages(stream.stream_id))
    assert len(cells) == STREAMWINDOW_INCREMENT and set(cells) == {block}
    exit_.send(RELAY_SENDME, stream.stream_id)
    cells = data_cells(exit_.stream_messages(stream.stream_id))
    assert [len(cell) for cell in cells] == [RELAY_DATA_LEN] * 20 + [4]
    assert stream.window.package == STREAMWINDOW_INCREMENT - 21


def test_writes_while_blocked_are_packed_into_full_cells():
    stream, sink, exit_, _ = open_stream()
    for _ in range(STREAMWINDOW_START):
        stream.write(b"f" * RELAY_DATA_LEN)
    exit_.received()
    for _ in range(10):
        stream.write(b"s" * 100)
    exit_.send(RELAY_SENDME, stream.stream_id)
    cells = data_cells(exit_.stream_messages(stream.stream_id))
    assert [len(cell) for cell in cells] == [RELAY_DATA_LEN, RELAY_DATA_LEN, 1000 - 2 * RELAY_DATA_LEN]


def test_unowed_stream_sendme_ends_the_stream():
    stream, sink, exit_, _ = open_stream()
    exit_.send(RELAY_SENDME, stream.stream_id)
    assert stream.state is StreamState.CLOSED
    assert stream.end.reason == EndReason.TORPROTOCOL
    assert exit_.stream_messages(stream.stream_id) == [(RELAY_END, bytes([EndReason.TORPROTOCOL]))]


def test_writable_notifications_at_the_buffer_limit():
    stream, sink, exit_, _ = open_stream(send_buffer_limit=1000)
    for _ in range(STREAMWINDOW_START):
        stream.write(b"b" * RELAY_DATA_LEN)
    exit_.received()
    assert sink.events == ["connected"]  # everything went out as it came
    stream.write(b"x" * 999)
    assert sink.events == ["connected"]
    stream.write(b"x")
    assert sink.events == ["connected", ("writable", False)]
    stream.write(b"x" * 10)
    assert sink.events == ["connected", ("writable", False)]  # told once
    exit_.send(RELAY_SENDME, stream.stream_id)
    assert sink.events == ["connected", ("writable", False), ("writable", True)]
    assert b"".join(data_cells(exit_.stream_messages(stream.stream_id))) == b"x" * 1010


# ------------------------------------------------------------------------------------------------ ending

def test_end_before_connected_fails_with_the_remote_reason():
    stream, sink, exit_, _ = open_stream(connect=False)
    # tor-spec "Closing streams": EXITPOLICY carries the address and a TTL.
    exit_.send(RELAY_END, stream.stream_id, bytes([EndReason.EXITPOLICY, 93, 184, 216, 34]) + struct.pack(">I", 60))
    assert stream.state is StreamState.FAILED
    (end,) = sink.ends
    assert (end.reason, end.remote, end.before_connected) == (EndReason.EXITPOLICY, True, True)
    assert "EXITPOLICY" in str(end)
    assert stream.stream_id not in exit_.circuit.streams
    assert exit_.received() == []  # no END back to an END


def test_end_with_an_empty_body_means_misc():
    stream, sink, exit_, _ = open_stream(connect=False)
    exit_.send(RELAY_END, stream.stream_id)
    assert sink.ends[0].reason == EndReason.MISC


def test_end_after_connected_closes():
    stream, sink, exit_, _ = open_stream()
    exit_.send(RELAY_DATA, stream.stream_id, b"bye")
    exit_.send(RELAY_END, stream.stream_id, bytes([EndReason.DONE]))
    assert stream.state is StreamState.CLOSED
    (end,) = sink.ends
    assert (end.reason, end.remote, end.before_connected) == (EndReason.DONE, True, False)
    assert exit_.received() == []
    # Late cells for the stream are dropped by the circuit; the stream stays ended once.
    exit_.send(RELAY_DATA, stream.stream_id, b"late")
    exit_.send(RELAY_END, stream.stream_id, bytes([EndReason.DONE]))
    assert len(sink.ends) == 1 and sink.data == [b"bye"]
    stream.write(b"ignored")
    assert exit_.received() == []


def test_local_close_sends_end_done_once():
    stream, sink, exit_, _ = open_stream()
    stream.close()
    stream.close()
    stream.close(EndReason.MISC)
    assert exit_.stream_messages(stream.stream_id) == [(RELAY_END, bytes([EndReason.DONE]))]
    assert stream.state is StreamState.CLOSED
    (end,) = sink.ends
    assert (end.reason, end.remote) == (EndReason.DONE, False)
    assert stream.stream_id not in exit_.circuit.streams


def test_local_close_before_connected_fails_the_stream():
    stream, sink, exit_, _ = open_stream(connect=False)
    stream.close(EndReason.MISC)
    assert exit_.stream_messages(stream.stream_id) == [(RELAY_END, bytes([EndReason.MISC]))]
    assert stream.state is StreamState.FAILED


def test_close_after_flush_sends_the_buffer_then_end():
    stream, sink, exit_, _ = open_stream()
    for _ in range(STREAMWINDOW_START):
        stream.write(b"a" * RELAY_DATA_LEN)
    exit_.received()
    stream.write(b"tail")
    stream.close(flush_first=True)
    assert exit_.received() == [] and not stream.ended
    exit_.send(RELAY_SENDME, stream.stream_id)
    assert exit_.stream_messages(stream.stream_id) == [(RELAY_DATA, b"tail"), (RELAY_END, bytes([EndReason.DONE]))]
    assert len(sink.ends) == 1


def test_circuit_closed_tells_the_sink_once():
    stream, sink, exit_, _ = open_stream()
    exit_.circuit.cell_received(CMD_DESTROY, b"\x08")
    assert stream.state is StreamState.CLOSED
    (end,) = sink.ends
    assert end.reason == EndReason.DESTROY and not end.remote and not end.before_connected
    stream.close()
    exit_.circuit.channel_closed("gone")
    stream.circuit_closed(RuntimeError("again"))
    assert len(sink.ends) == 1
    assert exit_.channel.take() == []


def test_circuit_closed_before_connected_fails_the_stream():
    stream, sink, exit_, _ = open_stream(connect=False)
    exit_.circuit.channel_closed("TLS lost")
    assert stream.state is StreamState.FAILED
    assert sink.ends[0].before_connected


# ------------------------------------------------------------------------------------------------ resolving

def resolved_answer(answer_type, value: bytes, ttl):
    return bytes((answer_type, len(value))) + value + struct.pack(">I", ttl)


def test_resolve_and_resolved():
    stream, sink, exit_, resolve = open_stream("www.example.com", 0, kind=StreamKind.RESOLVE, connect=False)
    assert (resolve.command, resolve.data) == (RELAY_RESOLVE, b"www.example.com\x00")
    assert stream.state is StreamState.SENTRESOLVE
    body = (resolved_answer(ResolvedType.IPV4, bytes([93, 184, 216, 34]), 3600)
            + resolved_answer(ResolvedType.IPV6, ipaddress.IPv6Address("2606:2800::1").packed, 60))
    exit_.send(RELAY_RESOLVED, stream.stream_id, body)
    (resolved,) = [event for event in sink.events if event[0] == "resolved"]
    answers = resolved[1]
    assert [(a.answer_type, a.value, a.ttl) for a in answers] == [
        (ResolvedType.IPV4, ipaddress.IPv4Address("93.184.216.34"), 3600),
        (ResolvedType.IPV6, ipaddress.IPv6Address("2606:2800::1"), 60)]
    assert len(sink.ends) == 1 and sink.events[-1][0] == "ended"
    # A resolve opens no stream at the exit: no END, and the id is free again.
    assert exit_.received() == []
    assert stream.stream_id not in exit_.circuit.streams


def test_resolve_error_answer():
    stream, sink, exit_, _ = open_stream("nonexistent.example", 0, kind=StreamKind.RESOLVE, connect=False)
    exit_.send(RELAY_RESOLVED, stream.stream_id, resolved_answer(ResolvedType.ERROR_NONTRANSIENT, b"", 0))
    (resolved,) = [event for event in sink.events if event[0] == "resolved"]
    assert [a.answer_type for a in resolved[1]] == [ResolvedType.ERROR_NONTRANSIENT]


def test_reverse_resolve_body():
    stream, sink, exit_, resolve = open_stream("93.184.216.34", 0, kind=StreamKind.RESOLVE_PTR, connect=False)
    assert (resolve.command, resolve.data) == (RELAY_RESOLVE, b"34.216.184.93.in-addr.arpa\x00")


# ------------------------------------------------------------------------------------------------ circuit window

def test_circuit_package_window_blocks_streams_and_circuit_sendme_resumes_them():
    first, sink, exit_, _ = open_stream()
    second = Stream(RecordingSink(), "example.net", 80)
    second.attach(exit_.circuit)
    exit_.received()
    exit_.send(RELAY_CONNECTED, second.stream_id, b"")
    block = b"c" * RELAY_DATA_LEN
    for _ in range(STREAMWINDOW_START):
        first.write(block)
    for _ in range(STREAMWINDOW_START):
        second.write(block)
    exit_.send(RELAY_SENDME, first.stream_id)  # the stream window opens, the circuit's (1000) is spent
    for _ in range(10):
        first.write(block)
    data = [m for m in exit_.received() if m.command == RELAY_DATA]
    assert len(data) == 2 * STREAMWINDOW_START
    assert exit_.circuit.window.package == 0 and first.window.package == STREAMWINDOW_INCREMENT
    # prop 289: the exit acknowledges our 100th DATA cell with its digest after that cell.
    exit_.send(RELAY_SENDME, 0, sendme_v1_body(data[99].tag))
    assert len(data_cells(exit_.stream_messages(first.stream_id))) == 10
    assert exit_.circuit.window.package == 90


# ------------------------------------------------------------------------------------------------ detaching

def test_detach_before_connected_ends_at_the_exit_and_allows_a_retry():
    stream, sink, exit_, _ = open_stream(connect=False)
    old_id = stream.stream_id
    stream.detach()
    assert stream.state is StreamState.DETACHED
    assert exit_.stream_messages(old_id) == [(RELAY_END, bytes([EndReason.MISC]))]
    assert sink.events == []
    retry = Exit()
    stream.attach(retry.circuit)
    (begin,) = retry.received()
    assert (begin.command, begin.data) == (RELAY_BEGIN, b"example.com:443\x00")
    assert stream.state is StreamState.SENTCONNECT


# ------------------------------------------------------------------------------------------------ bounded buffers

class RecordingAccount:
    """A QueueAccount that keeps every change it hears, with a settable clock."""

    def __init__(self):
        self.now = 100.0
        self.changes = []
        self.total = 0

    def clock(self):
        return self.now

    def queued_changed(self, stream, delta):
        self.changes.append(delta)
        self.total += delta
        assert self.total == stream.queued_bytes


class PausingSink(RecordingSink):
    """A client whose socket fills after `room` pieces: it pauses the stream's delivery from inside
    `stream_data`, as the SOCKS listener's transport does."""

    def __init__(self, room):
        super().__init__()
        self.room = room
        self.stream = None

    def stream_data(self, stream, data):
        super().stream_data(stream, data)
        if len(self.data) >= self.room:
            stream.pause_delivery()


def test_a_consumer_that_never_reads_holds_at_most_one_stream_window():
    account = RecordingAccount()
    stream, sink, exit_, _ = open_stream(account=account)
    stream.pause_delivery()
    block = b"r" * RELAY_DATA_LEN
    for _ in range(STREAMWINDOW_START):
        exit_.send(RELAY_DATA, stream.stream_id, block)
    # Every cell came in a read of its own here: one change per read, all of them growth.
    assert stream.queued_bytes == STREAMWINDOW_START * RELAY_DATA_LEN == account.total
    assert len(account.changes) == STREAMWINDOW_START and min(account.changes) == RELAY_DATA_LEN
    assert sink.data == [] and exit_.stream_messages(stream.stream_id) == []  # no stream SENDME
    exit_.send(RELAY_DATA, stream.stream_id, block)  # beyond the window: the exit broke the protocol
    assert stream.end.reason == EndReason.TORPROTOCOL
    assert len(sink.data) == STREAMWINDOW_START  # what came within the window still reached the client
    assert stream.queued_bytes == 0 == account.total


def test_resuming_delivers_until_the_client_is_full_again():
    stream, _, exit_, _ = open_stream()
    sink = stream.sink = PausingSink(room=3)
    stream.pause_delivery()
    for index in range(STREAMWINDOW_INCREMENT + 10):
        exit_.send(RELAY_DATA, stream.stream_id, bytes([index]))
    stream.resume_delivery()
    assert sink.data == [b"\x00", b"\x01", b"\x02"]  # paused again by the third piece
    assert stream.queued_bytes == STREAMWINDOW_INCREMENT + 7
    assert exit_.stream_messages(stream.stream_id) == []  # the SENDME waits for the client
    sink.room = 1000
    stream.resume_delivery()
    assert sink.data == [bytes([index]) for index in range(STREAMWINDOW_INCREMENT + 10)]
    assert exit_.stream_messages(stream.stream_id) == [(RELAY_SENDME, b"")]


def test_data_queued_before_the_exits_end_reaches_the_client_first():
    account = RecordingAccount()
    stream, sink, exit_, _ = open_stream(account=account)
    stream.pause_delivery()
    exit_.send(RELAY_DATA, stream.stream_id, b"last bytes")
    exit_.send(RELAY_END, stream.stream_id, bytes([EndReason.DONE]))
    assert sink.data == [b"last bytes"]
    assert sink.events[-1][0] == "ended" and sink.ends[0].remote
    assert account.total == 0


def test_a_local_close_drops_what_the_client_did_not_read():
    account = RecordingAccount()
    stream, sink, exit_, _ = open_stream(account=account)
    stream.pause_delivery()
    exit_.send(RELAY_DATA, stream.stream_id, b"unread")
    stream.close()
    assert sink.data == [] and account.total == 0 and account.changes == [6, -6]


def test_the_oldest_queued_byte_is_dated_per_piece_in_both_directions():
    account = RecordingAccount()
    stream, sink, exit_, _ = open_stream(connect=False, account=account)
    assert stream.oldest_queued is None
    stream.write(b"optimistic data")  # waits for CONNECTED
    account.now = 105.0
    stream.write(b"more")
    assert stream.oldest_queued == 100.0
    account.now = 107.0
    exit_.send(RELAY_CONNECTED, stream.stream_id, b"")
    assert stream.oldest_queued is None  # both pieces went out
    stream.pause_delivery()
    exit_.send(RELAY_DATA, stream.stream_id, b"in")
    account.now = 109.0
    exit_.send(RELAY_DATA, stream.stream_id, b"in again")
    assert stream.oldest_queued == 107.0
    stream.sink = PausingSink(room=1)
    stream.resume_delivery()
    assert stream.oldest_queued == 109.0  # the first piece was taken, the second waits


def test_one_large_write_is_kept_whole_however_large():
    stream, sink, exit_, _ = open_stream(connect=False, send_buffer_limit=1000)
    stream.write(b"y" * 10_000)  # the application was allowed to write: it is not cut off for its size
    assert not stream.ended and stream.queued_bytes == 10_000
    assert sink.events == [("writable", False)]


def test_an_application_writing_past_twice_the_send_buffer_limit_is_stopped(caplog):
    account = RecordingAccount()
    stream, sink, exit_, _ = open_stream(connect=False, send_buffer_limit=1000, account=account)
    exit_.received()
    stream.write(b"x" * 1500)
    assert sink.events == [("writable", False)]
    stream.write(b"x" * 500)  # exactly twice the limit: still kept
    assert not stream.ended
    with caplog.at_level("WARNING", logger="oppy.stream.stream"):
        stream.write(b"x")  # the application ignored stream_writable(False)
    assert stream.state is StreamState.FAILED and stream.end.reason == EndReason.RESOURCELIMIT
    assert exit_.stream_messages(stream.stream_id) == [(RELAY_END, bytes([EndReason.RESOURCELIMIT]))]
    assert account.total == 0
    (record,) = caplog.records
    assert "past its send buffer limit" in record.getMessage()


def test_abandon_drops_both_directions_and_sends_nothing():
    account = RecordingAccount()
    stream, sink, exit_, _ = open_stream(account=account)
    for _ in range(STREAMWINDOW_START):
        stream.write(b"u" * RELAY_DATA_LEN)
    stream.write(b"blocked")
    stream.pause_delivery()
    exit_.send(RELAY_DATA, stream.stream_id, b"unread")
    exit_.received()
    assert account.total == stream.queued_bytes == len(b"blocked") + len(b"unread")
    stream.abandon(EndReason.RESOURCELIMIT, "out of memory")
    assert exit_.received() == [] and stream.stream_id not in exit_.circuit.streams
    assert sink.data == [] and account.total == 0
    (end,) = sink.ends
    assert (end.reason, end.remote, str(end)) == (EndReason.RESOURCELIMIT, False, "out of memory")
