"""A stream that exits from an inner hop of a circuit (ATTACHSTREAM HOP=, control-spec 3.5), on a real
Circuit built through simulated relays.

tor (relay.c) sends such a stream's cells with the layer of its hop (cpath_layer), matches the cells it
receives to the stream only when they come from that hop (relay_lookup_conn), and keeps the circuit windows
and SENDMEs per hop (each crypt_path has its package and deliver window).
"""

import struct

from oppy.cell.commands import EndReason
from oppy.cell.flow_control import CIRCWINDOW_INCREMENT, CIRCWINDOW_START, STREAMWINDOW_START
from oppy.circuit.circuit import CircuitError
from oppy.stream.stream import Stream, StreamState
from tests.unit.relaysim import (
    CMD_RELAY,
    RELAY_CONNECTED,
    RELAY_DATA,
    RELAY_DATA_LEN,
    RELAY_END,
    RELAY_SENDME,
    sendme_v1_body,
)
from tests.unit.test_stream_core import Exit, RecordingSink

# tor-spec "Relay cells".
RELAY_BEGIN = 1
MIDDLE, EXIT = 1, 2
CONNECTED_BODY = bytes([10, 0, 0, 9]) + struct.pack(">I", 300)


class Path(Exit):
    """A 3-hop circuit and its simulated relays, any of which may send."""

    def send(self, hop, command, stream_id, data=b""):
        self.circuit.cell_received(CMD_RELAY, self.path.send(hop, command, stream_id, data))


def middle_stream(path, connect=True):
    sink = RecordingSink()
    stream = Stream(sink, "example.com", 80)
    stream.attach(path.circuit.inner_hop(MIDDLE))
    (begin,) = path.received()
    assert (begin.hop, begin.command, begin.stream_id) == (MIDDLE, RELAY_BEGIN, stream.stream_id)
    assert begin.data == b"example.com:80\x00"
    if connect:
        path.send(MIDDLE, RELAY_CONNECTED, stream.stream_id, CONNECTED_BODY)
        assert stream.state is StreamState.SUCCEEDED
    return stream, sink


def test_only_inner_hops_have_inner_streams():
    path = Path()
    for hop in (-1, EXIT, 3):
        try:
            path.circuit.inner_hop(hop)
        except CircuitError as exc:
            assert f"no inner hop {hop + 1}" in str(exc)
        else:
            raise AssertionError(f"hop index {hop} accepted")
    assert path.circuit.inner_hop(MIDDLE) is path.circuit.inner_hop(MIDDLE)


def test_the_stream_speaks_to_its_hop_and_hears_only_that_hop():
    path = Path()
    stream, sink = middle_stream(path, connect=False)
    # The exit answering for the middle's stream id is not the stream's hop: dropped (relay_lookup_conn).
    path.send(EXIT, RELAY_CONNECTED, stream.stream_id, CONNECTED_BODY)
    assert stream.state is StreamState.SENTCONNECT
    path.send(MIDDLE, RELAY_CONNECTED, stream.stream_id, CONNECTED_BODY)
    assert sink.events == ["connected"]
    stream.write(b"GET / HTTP/1.0\r\n\r\n")
    (data,) = path.received()
    assert (data.hop, data.command, data.stream_id, data.data) == (MIDDLE, RELAY_DATA, stream.stream_id,
                                                                   b"GET / HTTP/1.0\r\n\r\n")
    path.send(EXIT, RELAY_DATA, stream.stream_id, b"not from the middle")
    path.send(MIDDLE, RELAY_DATA, stream.stream_id, b"HTTP/1.0 200 OK\r\n")
    assert sink.data == [b"HTTP/1.0 200 OK\r\n"]
    stream.close()
    (end,) = path.received()
    assert (end.hop, end.command, end.stream_id) == (MIDDLE, RELAY_END, stream.stream_id)


def test_an_ordinary_stream_beside_it_keeps_the_last_hop():
    path = Path()
    inner, inner_sink = middle_stream(path)
    sink = RecordingSink()
    ordinary = Stream(sink, "example.net", 443)
    ordinary.attach(path.circuit)
    (begin,) = path.received()
    assert (begin.hop, begin.stream_id) == (EXIT, ordinary.stream_id) and ordinary.stream_id != inner.stream_id
    path.send(EXIT, RELAY_CONNECTED, ordinary.stream_id, CONNECTED_BODY)
    path.send(MIDDLE, RELAY_DATA, ordinary.stream_id, b"middle")  # on an inner hop, not this stream's
    path.send(EXIT, RELAY_DATA, ordinary.stream_id, b"exit")
    path.send(MIDDLE, RELAY_DATA, inner.stream_id, b"inner")
    assert sink.data == [b"exit"] and inner_sink.data == [b"inner"]
    ordinary.write(b"x")
    inner.write(b"y")
    assert [(m.hop, m.stream_id, m.data) for m in path.received()] == [(EXIT, ordinary.stream_id, b"x"),
                                                                       (MIDDLE, inner.stream_id, b"y")]


def test_the_hop_refusing_to_exit_fails_the_attempt():
    path = Path()
    stream, sink = middle_stream(path, connect=False)
    path.send(MIDDLE, RELAY_END, stream.stream_id, bytes([EndReason.EXITPOLICY]) + bytes(8))
    assert stream.state is StreamState.FAILED
    (end,) = sink.ends
    assert end.remote and end.reason == EndReason.EXITPOLICY and end.before_connected
    assert stream.stream_id not in path.circuit.streams
    assert path.circuit.is_open


def test_the_hop_has_its_own_deliver_window_and_sendmes():
    path = Path()
    stream, sink = middle_stream(path)
    # A stream SENDME every 50 cells keeps the stream window open; 100 cells from the middle call for a
    # circuit SENDME to the middle echoing its digest after the 100th (prop 289).
    for _ in range(CIRCWINDOW_INCREMENT):
        path.send(MIDDLE, RELAY_DATA, stream.stream_id, b"d" * RELAY_DATA_LEN)
    assert len(b"".join(sink.data)) == CIRCWINDOW_INCREMENT * RELAY_DATA_LEN
    sendmes = [m for m in path.received() if m.command == RELAY_SENDME and m.stream_id == 0]
    assert [(m.hop, m.data) for m in sendmes] == [(MIDDLE, sendme_v1_body(path.path.hops[MIDDLE].backward_tags[-1]))]
    assert path.circuit.window.deliver == CIRCWINDOW_START  # the last hop's window is untouched


def test_the_hop_has_its_own_package_window():
    path = Path()
    stream, _ = middle_stream(path)
    block = b"p" * RELAY_DATA_LEN
    sent = []
    # The middle opens the stream window each 50 cells, so that only the circuit window (1000) limits.
    while len(sent) < CIRCWINDOW_START:
        for _ in range(STREAMWINDOW_START):
            stream.write(block)
        sent += [m for m in path.received() if m.command == RELAY_DATA]
        for _ in range(STREAMWINDOW_START // 50):
            path.send(MIDDLE, RELAY_SENDME, stream.stream_id)
    stream.write(block)
    sent += [m for m in path.received() if m.command == RELAY_DATA]
    assert len(sent) == CIRCWINDOW_START and {m.hop for m in sent} == {MIDDLE}
    assert path.circuit.window.package == CIRCWINDOW_START  # the exit's window is untouched
    # A SENDME from the middle with the wrong tag closes the circuit; the right one opens its window.
    path.send(MIDDLE, RELAY_SENDME, 0, sendme_v1_body(sent[CIRCWINDOW_INCREMENT - 1].tag))
    more = [m for m in path.received() if m.command == RELAY_DATA]
    assert more and {m.hop for m in more} == {MIDDLE}
    path.send(MIDDLE, RELAY_SENDME, 0, sendme_v1_body(bytes(20)))
    assert not path.circuit.is_open
    assert "wrong authentication tag" in str(path.circuit.error)
