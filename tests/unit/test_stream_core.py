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
    assert len(sink.data) == 120  # the data still reaches the sink
    assert exit_.stream_messages(stream.stream_id) == []
    assert stream.window.deliver == STREAMWINDOW_START - 120
    stream.resume_delivery()
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
