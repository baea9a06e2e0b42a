"""The per-read (batched) cell path: a batch gives exactly what its cells give one at a time.

There is one path: a read from the link is framed into runs (`CellReader.feed_runs`), a run of RELAY cells is
decrypted one layer at a time for all cells (`Tor1ClientCrypto.decrypt_inbound_many`), DATA cells in a row
reach their stream at once (`Circuit.relay_cells_received`, `Stream.data_cells_received`), and a stream's
outgoing cells are encrypted together (`Stream.flush` -> `Circuit.send_data_many` -> `encrypt_outbound_many`
-> `Channel.send_cells`); a single cell is a batch of one. Each stage is checked against the independent
relay of tests.unit.relaysim (or the relay-side simulator of test_crypto_relay) and against the same input
fed through the path one cell at a time.
"""

from __future__ import annotations

import os
import random
import sys
from unittest import mock

import pytest
from hypothesis import given, settings, strategies as st

from oppy.cell.commands import CELL_PAYLOAD_LEN
from oppy.cell.framing import CellReader, encode_cell, encode_fixed_cells
from oppy.circuit import circuit as circuit_module
from oppy.circuit.circuit import Circuit, CircuitState
from oppy.crypto.errors import RelayCryptoError
from oppy.crypto.relay_crypto import Tor1ClientCrypto, Tor1Hop
from oppy.cell.flow_control import STREAMWINDOW_START
from oppy.stream.stream import Stream, StreamState
from oppy.circuit.congestion import CongestionParams, VegasController
from tests.unit.relaysim import CMD_RELAY, ServiceHopCrypto, build_circuit, parse_cells, relay_plaintext
from tests.unit.test_crypto_relay import SimulatedRelayHop, decrypt_one, deliver_forward, random_relay_payload

RELAY, PADDING, DESTROY, VPADDING = 3, 0, 4, 128
RELAY_DATA, RELAY_END, RELAY_CONNECTED, RELAY_SENDME, RELAY_DROP = 2, 3, 4, 5, 10
LINK_VERSION = 5


# ------------------------------------------------------------------------------------------------ framing

def expand_runs(entries):
    """Runs back into single cells, as `feed` gives them."""
    cells = []
    for circ_id, command, payload, count in entries:
        assert len(payload) == count * CELL_PAYLOAD_LEN or count == 1
        if count == 1:
            cells.append((circ_id, command, payload))
        else:
            cells += [(circ_id, command, payload[i:i + CELL_PAYLOAD_LEN])
                      for i in range(0, len(payload), CELL_PAYLOAD_LEN)]
    return cells


cell_specs = st.lists(st.tuples(st.sampled_from([0x80000001, 0x80000002, 0]),
                                st.sampled_from([RELAY, RELAY, RELAY, PADDING, DESTROY, VPADDING]),
                                st.integers(0, 40)), max_size=30)


@settings(max_examples=150, deadline=None)
@given(cell_specs, st.lists(st.integers(1, 2000), min_size=1, max_size=8))
def test_feed_runs_gives_the_cells_an_independent_parser_finds_whatever_the_split(specs, cut_sizes):
    wire = b"".join(encode_cell(circ_id, command, os.urandom(509 if command != VPADDING else size), LINK_VERSION)
                    for circ_id, command, size in specs)
    reader = CellReader()
    reader.set_link_version(LINK_VERSION)
    entries, offset, index = [], 0, 0
    while offset < len(wire):
        piece = wire[offset:offset + cut_sizes[index % len(cut_sizes)]]
        offset += len(piece)
        index += 1
        entries += reader.feed_runs(memoryview(piece), RELAY)
    assert expand_runs(entries) == parse_cells(wire)
    assert len(parse_cells(wire)) == len(specs) and reader.buffered == 0
    # A run never mixes circuits and only RELAY cells form runs.
    assert all(count == 1 or command == RELAY for _, command, _, count in entries)


def test_feed_runs_gathers_consecutive_relay_cells_of_one_circuit():
    a, b = 0x80000001, 0x80000002
    payloads = [os.urandom(509) for _ in range(6)]
    wire = b"".join([encode_cell(a, RELAY, payloads[0], 5), encode_cell(a, RELAY, payloads[1], 5),
                     encode_cell(b, RELAY, payloads[2], 5), encode_cell(0, PADDING, b"", 5),
                     encode_cell(b, RELAY, payloads[3], 5), encode_cell(b, RELAY, payloads[4], 5),
                     encode_cell(b, RELAY, payloads[5], 5)])
    reader = CellReader()
    reader.set_link_version(5)
    entries = reader.feed_runs(wire, RELAY)
    assert [(circ_id, command, count) for circ_id, command, _, count in entries] == [
        (a, RELAY, 2), (b, RELAY, 1), (0, PADDING, 1), (b, RELAY, 3)]
    assert entries[0][2] == payloads[0] + payloads[1]
    assert entries[3][2] == b"".join(payloads[3:])


def test_feed_runs_needs_the_link_version_and_a_fixed_length_command():
    reader = CellReader()
    with pytest.raises(ValueError):
        reader.feed_runs(b"", RELAY)
    reader.set_link_version(4)
    with pytest.raises(ValueError):
        reader.feed_runs(b"", VPADDING)


@pytest.mark.parametrize("link_version", [3, 4, 5])
def test_encode_fixed_cells_is_encode_cell_repeated(link_version):
    payloads = [os.urandom(509) for _ in range(5)]
    assert encode_fixed_cells(0x1234, RELAY, b"".join(payloads), link_version) == b"".join(
        encode_cell(0x1234, RELAY, payload, link_version) for payload in payloads)
    assert encode_fixed_cells(7, RELAY, b"", link_version) == b""
    with pytest.raises(ValueError):
        encode_fixed_cells(7, RELAY, bytes(508), link_version)
    with pytest.raises(ValueError):
        encode_fixed_cells(7, VPADDING, bytes(509), link_version)
    with pytest.raises(ValueError):
        encode_fixed_cells(-1, RELAY, bytes(509), link_version)


# ------------------------------------------------------------------------------------------------ relay crypto

def twin_clients(n_hops):
    """Two clients with the same keys (one for each path) and the relays that talk to them."""
    materials = [os.urandom(72) for _ in range(n_hops)]

    def client():
        crypto = Tor1ClientCrypto()
        for m in materials:
            crypto.add_hop(Tor1Hop(m[:20], m[20:40], m[40:56], m[56:72]))
        return crypto

    return client(), client(), [SimulatedRelayHop(m) for m in materials]


def originate(relays, hop, plain, **kwargs):
    cell = relays[hop].originate_backward(plain, **kwargs)
    for relay in reversed(relays[:hop]):
        cell = relay.relay_backward(cell)
    return cell


@pytest.mark.parametrize("n_hops", [1, 2, 3])
def test_decrypt_inbound_many_gives_what_the_relays_sent_whatever_the_batch(n_hops):
    rng = random.Random(n_hops)
    one_by_one, batched, relays = twin_clients(n_hops)
    for batch_size in (1, 2, 7, 40, 3, 64):
        hops = [rng.randrange(n_hops) if rng.random() < 0.3 else n_hops - 1 for _ in range(batch_size)]
        plains = [random_relay_payload() for _ in hops]
        cells = [originate(relays, hop, plain) for hop, plain in zip(hops, plains)]
        sent_tags = [relays[hop].sent_tags[-1 - hops[index + 1:].count(hop)] for index, hop in enumerate(hops)]
        singles = [decrypt_one(one_by_one, cell) for cell in cells]
        results, error = batched.decrypt_inbound_many(b"".join(cells))
        assert error is None
        got = [(hop, bytes(buffer[offset:offset + 509]), tag) for hop, buffer, offset, tag in results]
        # The batch zeroes digest fields of last-hop cells in place; nothing reads them afterwards.
        for (hop, plain, tag), single, want_plain, want_tag in zip(got, singles, plains, sent_tags):
            assert (hop, tag) == (single[0], single[2]) == (hop, want_tag)
            assert plain[:5] + plain[9:] == single[1][:5] + single[1][9:] == want_plain[:5] + want_plain[9:]
        assert [h for h, _, _ in got] == hops
        for index in range(n_hops):
            assert batched.last_inbound_digest(index) == one_by_one.last_inbound_digest(index)


def test_decrypt_inbound_many_stops_at_the_first_cell_no_hop_recognizes():
    one_by_one, batched, relays = twin_clients(3)
    good = [originate(relays, 2, random_relay_payload()) for _ in range(3)]
    bad = originate(relays, 2, random_relay_payload(), corrupt_digest=True)
    later = originate(relays, 2, random_relay_payload())
    results, error = batched.decrypt_inbound_many(b"".join(good + [bad, later]))
    assert isinstance(error, RelayCryptoError)
    assert len(results) == 3
    for cell in good:
        decrypt_one(one_by_one, cell)
    with pytest.raises(RelayCryptoError):
        decrypt_one(one_by_one, bad)
    assert [tag for _, _, _, tag in results] == relays[2].sent_tags[:3]
    assert results[-1][3] == one_by_one.last_inbound_digest(2)


def test_decrypt_inbound_many_refuses_a_nonzero_recognized_field_at_the_last_hop():
    _, batched, relays = twin_clients(2)
    plain = bytearray(random_relay_payload())
    plain[1] = 1
    cells = [originate(relays, 1, random_relay_payload()), originate(relays, 1, bytes(plain))]
    results, error = batched.decrypt_inbound_many(b"".join(cells))
    assert len(results) == 1 and error is not None


def test_decrypt_inbound_many_refuses_a_partial_payload():
    _, batched, relays = twin_clients(1)
    cell = originate(relays, 0, random_relay_payload())
    results, error = batched.decrypt_inbound_many(cell + b"\0" * 10)
    assert len(results) == 1 and error is not None


def test_encrypt_outbound_many_is_the_cells_one_at_a_time_and_what_the_relays_read():
    one_by_one, batched, relays = twin_clients(3)
    payloads = [random_relay_payload() for _ in range(9)]
    expected = []
    tags = []
    for payload in payloads:
        cell, (tag,) = one_by_one.encrypt_outbound_many([payload], 2)
        expected.append(cell)
        tags.append(tag)
    cells, batch_tags = batched.encrypt_outbound_many(payloads, 2)
    assert cells == b"".join(expected)
    assert batch_tags == tags and batched.last_outbound_digest(2) == tags[-1]
    for offset, payload in zip(range(0, len(cells), 509), payloads):
        assert deliver_forward(relays, cells[offset:offset + 509]) == (2, payload)
    assert relays[2].received_tags == tags
    with pytest.raises(ValueError):
        batched.encrypt_outbound_many([bytes(508)], 2)
    with pytest.raises(IndexError):
        batched.encrypt_outbound_many(payloads, 3)


# ------------------------------------------------------------------------------------------------ circuit + stream

class Sink:
    def __init__(self):
        self.data = []
        self.ended = []

    def stream_connected(self, stream):
        pass

    def stream_resolved(self, stream, answers):
        pass

    def stream_data(self, stream, data):
        assert type(data) is bytes
        self.data.append(data)

    def stream_writable(self, stream, writable):
        pass

    def stream_ended(self, stream, end):
        self.ended.append(end.reason)


def open_circuit_with_stream():
    circuit, channel, path = build_circuit(Circuit)
    sink = Sink()
    stream = Stream(sink, "127.0.0.1", 80)
    stream.attach(circuit)
    for _, _, payload in channel.take():
        path.receive(payload)  # the BEGIN (it moves the exit's digest on)
    circuit.cell_received(CMD_RELAY, path.send(2, RELAY_CONNECTED, stream.stream_id, b"\x7f\0\0\1\0\0\0\x3c"))
    return circuit, channel, path, stream, sink


def sent_messages(channel, path):
    return [(m.hop, m.command, m.stream_id, m.data) for m in map(path.receive, (p for _, _, p in channel.take()))]


def script(stream_id, rng):
    """A relay conversation from the exit (and now and then the middle hop)."""
    messages = []
    for _ in range(260):
        roll = rng.random()
        if roll < 0.9:
            messages.append((2, RELAY_DATA, stream_id, os.urandom(rng.choice([498, 498, 100, 1]))))
        elif roll < 0.95:
            messages.append((1, RELAY_DROP, 0, b""))
        else:
            messages.append((2, RELAY_DATA, stream_id + 1, b"late data for a stream that is gone"))
    messages.append((2, RELAY_END, stream_id, bytes([6])))
    return messages


def bulk_script(stream_id, rng):
    """A bulk download: DATA cells for the stream, most of them full, now and then padding from the middle
    hop."""
    messages = [(2, RELAY_DATA, stream_id, os.urandom(498 if rng.random() < 0.9 else rng.randint(0, 497)))
                for _ in range(400)]
    for _ in range(4):
        messages.insert(rng.randrange(len(messages)), (1, RELAY_DROP, 0, b""))
    messages.append((2, RELAY_END, stream_id, bytes([6])))
    return messages


@pytest.mark.parametrize("make_script", [script, bulk_script])
def test_a_run_of_relay_cells_does_what_the_cells_do_one_by_one(make_script):
    """The cells one by one take the per-cell loop alone (a lone DATA cell would take the path for DATA runs
    too); the reads of DATA cells for the stream alone take that path."""
    rng = random.Random(5)
    one = open_circuit_with_stream()
    batch = open_circuit_with_stream()
    messages = make_script(one[3].stream_id, rng)
    assert one[3].stream_id == batch[3].stream_id
    one_circuit, one_channel, one_path, one_stream, one_sink = one
    b_circuit, b_channel, b_path, b_stream, b_sink = batch
    cells_one = [one_path.send(*message) for message in messages]
    cells_batch = [b_path.send(*message) for message in messages]
    with mock.patch.object(circuit_module, "_data_run", lambda cells, hop: None):
        for cell in cells_one:
            one_circuit.cell_received(CMD_RELAY, cell)
    sizes = [1, 5, 64, 33, 2, 100, 7]
    offset = index = 0
    while offset < len(cells_batch):
        size = sizes[index % len(sizes)]
        b_circuit.relay_cells_received(b"".join(cells_batch[offset:offset + size]))
        offset += size
        index += 1
    assert b"".join(b_sink.data) == b"".join(one_sink.data)
    assert b_sink.ended == one_sink.ended == [6]
    assert (b_circuit.window.deliver, b_circuit.bytes_read) == (one_circuit.window.deliver, one_circuit.bytes_read)
    assert b_stream.bytes_read == one_stream.bytes_read
    # The same SENDMEs: stream ones, and circuit ones echoing the digest right after the same DATA cell
    # (the position of the tag among the exit's backward digests); the order between the two kinds may
    # differ within one read.
    def sendmes(channel, path):
        tags = path.hops[2].backward_tags
        return sorted((hop, command, stream_id, tags.index(data[3:]) if stream_id == 0 else data)
                      for hop, command, stream_id, data in sent_messages(channel, path))

    expected = sendmes(one_channel, one_path)
    assert sendmes(b_channel, b_path) == expected
    assert sum(1 for m in expected if m[2] == 0) >= 2 and sum(1 for m in expected if m[2]) >= 4


# The rendezvous circuit of an onion-service connection: three relays to the rendezvous point (guard, L2, point,
# as the client builds it), then the service's end of the virtual hop (SHA3-256 and AES-256).
RENDEZVOUS_HOPS = 3
SERVICE_HOP = RENDEZVOUS_HOPS


def open_rendezvous_circuit_with_stream(service_keys):
    circuit, channel, path = build_circuit(Circuit, hops=RENDEZVOUS_HOPS, offers_congestion_control=True)
    circuit.add_virtual_hop(Tor1Hop.for_onion_service(*service_keys),
                            VegasController(CongestionParams().for_onion_service({}), 31))
    path.hops.append(ServiceHopCrypto(*service_keys))
    sink = Sink()
    stream = Stream(sink, "", 80)
    stream.attach(circuit, onion_service=True)
    for _, _, payload in channel.take():
        path.receive(payload)  # the BEGIN
    circuit.cell_received(CMD_RELAY, path.send(SERVICE_HOP, RELAY_CONNECTED, stream.stream_id, b""))
    return circuit, channel, path, stream, sink


def test_a_run_on_a_rendezvous_circuit_does_what_the_cells_do_one_by_one_and_takes_the_data_run_path():
    """A bulk download from an onion service: reads of DATA cells from the virtual hop take the path for DATA
    runs (no Python step per cell), and give the same data, deliver window and circuit SENDMEs (echoing the
    service's SHA3 digests) as the same cells one at a time through the per-cell loop."""
    rng = random.Random(13)
    service_keys = [os.urandom(32) for _ in range(4)]
    one_circuit, one_channel, one_path, one_stream, one_sink = open_rendezvous_circuit_with_stream(service_keys)
    b_circuit, b_channel, b_path, b_stream, b_sink = open_rendezvous_circuit_with_stream(service_keys)
    messages = [(SERVICE_HOP, RELAY_DATA, one_stream.stream_id, os.urandom(498 if rng.random() < 0.95 else 77))
                for _ in range(600)]
    for _ in range(3):
        messages.insert(rng.randrange(len(messages)), (1, RELAY_DROP, 0, b""))
    cells_one = [one_path.send(*message) for message in messages]
    cells_batch = [b_path.send(*message) for message in messages]
    with mock.patch.object(circuit_module, "_data_run", lambda cells, hop: None):
        for cell in cells_one:
            one_circuit.cell_received(CMD_RELAY, cell)
    data_runs = []
    data_run = circuit_module._data_run

    def counted(cells, hop):
        result = data_run(cells, hop)
        data_runs.append(result is not None)
        return result

    with mock.patch.object(circuit_module, "_data_run", counted):
        for offset in range(0, len(cells_batch), 64):
            b_circuit.relay_cells_received(b"".join(cells_batch[offset:offset + 64]))
    assert b"".join(b_sink.data) == b"".join(one_sink.data) == b"".join(m[3] for m in messages if m[1] == RELAY_DATA)
    assert (b_circuit.window.deliver, b_circuit.bytes_read) == (one_circuit.window.deliver, one_circuit.bytes_read)
    assert b_circuit.state is one_circuit.state is CircuitState.OPEN
    # The reads without the middle hop's DROP cell are DATA runs.
    assert data_runs.count(True) >= len(data_runs) - 3 and len(data_runs) == -(-len(cells_batch) // 64)

    def sendmes(channel, path):
        tags = path.hops[SERVICE_HOP].backward_tags
        return [(hop, command, tags.index(data[3:])) for hop, command, _, data in sent_messages(channel, path)]

    expected = sendmes(one_channel, one_path)
    assert sendmes(b_channel, b_path) == expected
    assert len(expected) == 600 // 31 and all(hop == SERVICE_HOP and command == RELAY_SENDME
                                              for hop, command, _ in expected)


def test_decrypting_a_read_through_the_virtual_hop_takes_no_python_call_per_cell():
    """The virtual hop's SHA3-256 digests are updated and read by the batch loop itself: 63 cells more of a
    rendezvous circuit in one read add fewer than 63 Python calls to `decrypt_inbound_many` (none, unless a
    relay layer happens to leave a zero "recognized" field, one in 65536, and tries a digest)."""
    service_keys = [os.urandom(32) for _ in range(4)]

    def python_calls(count):
        circuit, channel, path, stream, sink = open_rendezvous_circuit_with_stream(service_keys)
        cells = b"".join(path.send(SERVICE_HOP, RELAY_DATA, stream.stream_id, bytes(498)) for _ in range(count))
        calls = []
        sys.setprofile(lambda frame, event, arg: calls.append(frame.f_code) if event == "call" else None)
        try:
            results, error = circuit.crypto.decrypt_inbound_many(cells)
        finally:
            sys.setprofile(None)
        assert error is None and [hop for hop, *_ in results] == [SERVICE_HOP] * count
        return len(calls)

    assert python_calls(64) - python_calls(1) < 63


def test_a_run_with_an_unrecognized_cell_delivers_the_cells_before_it_then_closes():
    circuit, channel, path, stream, sink = open_circuit_with_stream()
    good = [path.send(2, RELAY_DATA, stream.stream_id, b"x" * 10) for _ in range(3)]
    circuit.relay_cells_received(b"".join(good + [os.urandom(509)]))
    assert b"".join(sink.data) == b"x" * 30
    assert circuit.state is CircuitState.CLOSED
    assert stream.state is StreamState.CLOSED


def test_a_run_of_data_with_a_cell_claiming_too_much_delivers_the_cells_before_it_then_closes():
    circuit, channel, path, stream, sink = open_circuit_with_stream()
    good = [path.send(2, RELAY_DATA, stream.stream_id, b"y" * 498) for _ in range(3)]
    bad = path.originate(2, relay_plaintext(RELAY_DATA, stream.stream_id, b"z" * 498, length=499))
    circuit.relay_cells_received(b"".join(good + [bad]))
    assert b"".join(sink.data) == b"y" * 3 * 498
    assert circuit.state is CircuitState.CLOSED and "claims 499 bytes" in str(circuit.error)


def test_a_run_while_building_goes_cell_by_cell():
    circuit, channel, path = build_circuit(Circuit, hops=1)
    circuit.state = CircuitState.BUILDING  # as between EXTENDED2 and the next hop: no batch decryption
    stream = type("S", (), {"stream_id": 1, "received": [], "data_cells_received":
                            lambda self, chunks: self.received.append([bytes(chunk) for chunk in chunks])})()
    circuit.streams[1] = stream
    circuit.relay_cells_received(b"".join(path.send(0, RELAY_DATA, 1, b"abc") for _ in range(3)))
    assert stream.received == [[b"abc"]] * 3


def test_data_cells_received_counts_each_cell_and_delivers_once():
    circuit, channel, path, stream, sink = open_circuit_with_stream()
    stream.data_cells_received([b"a" * 498] * 49)
    assert stream.window.deliver == STREAMWINDOW_START - 49 and len(sink.data) == 1
    assert sent_messages(channel, path) == []
    stream.data_cells_received([bytearray(b"b"), b"c"])
    assert sink.data[-1] == b"bc" and stream.window.deliver == STREAMWINDOW_START - 1
    assert [m[1:3] for m in sent_messages(channel, path)] == [(RELAY_SENDME, stream.stream_id)]
    stream.pause_delivery()
    stream.data_cells_received([b"d"] * 60)
    assert sent_messages(channel, path) == []
    stream.window.deliver = 3
    stream.data_cells_received([b"e"] * 5)  # overruns: the 3 cells within the window arrive, the 4th ends it
    assert sink.data[-1] == b"eee" and stream.state is StreamState.CLOSED


# ------------------------------------------------------------------------------------------------ sending

class ManyAtOnceCircuit:
    """Just what a stream sends DATA through: records the chunks of each `send_data_many` call."""

    package_room = 10 ** 6
    congestion_control = None  # fixed windows

    def __init__(self):
        self.chunks = []

    def allocate_stream_id(self):
        return 1

    def attach_stream(self, stream):
        pass

    def send_relay(self, *args):
        pass

    def send_data_many(self, stream_id, chunks, urgent=False):
        self.chunks += chunks


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 3000), min_size=1, max_size=12))
def test_flush_with_open_windows_cuts_each_write_into_full_cells(sizes):
    data = [os.urandom(size) for size in sizes]
    circuit = ManyAtOnceCircuit()
    stream = Stream(Sink(), "127.0.0.1", 80, send_buffer_limit=10 ** 9)
    stream.attach(circuit)
    stream.state = StreamState.SUCCEEDED
    stream.window.package = 10 ** 6
    for piece in data:
        stream.write(piece)
    # Each write goes out at once: full 498-byte cells and its remainder (tor packages what it has).
    assert [bytes(chunk) for chunk in circuit.chunks] == [
        piece[offset:offset + 498] for piece in data for offset in range(0, len(piece), 498)]


def test_flush_fills_cells_across_small_writes_while_a_window_is_closed():
    circuit = ManyAtOnceCircuit()
    stream = Stream(Sink(), "127.0.0.1", 80)
    stream.attach(circuit)
    stream.state = StreamState.SUCCEEDED
    stream.window.package = 0
    for _ in range(10):
        stream.write(b"z" * 100)
    stream.window.package = 5
    stream.flush()
    assert [len(chunk) for chunk in circuit.chunks] == [498, 498, 4]


def test_send_data_many_in_one_batch_is_the_cells_one_at_a_time_on_the_wire():
    one = open_circuit_with_stream()
    many = open_circuit_with_stream()
    chunks = [os.urandom(498) for _ in range(150)] + [b"tail"]
    for chunk in chunks:
        one[0].send_data_many(1, [chunk])
    many[0].send_data_many(1, chunks)
    got_one = sent_messages(one[1], one[2])
    got_many = sent_messages(many[1], many[2])
    assert got_one == got_many == [(2, RELAY_DATA, 1, chunk) for chunk in chunks]
    assert many[0].window.package == one[0].window.package == 1000 - 151
    # The tag kept for the exit's SENDME is the digest right after the 100th DATA cell, on each circuit.
    for circuit, channel, path, *_ in (one, many):
        assert list(circuit._expected_sendme_tags) == [path.hops[2].forward_tags[100]]


def test_send_data_many_refuses_more_cells_than_the_window():
    circuit, channel, path, stream, sink = open_circuit_with_stream()
    circuit.window.package = 2
    with pytest.raises(Exception):
        circuit.send_data_many(1, [b"a", b"b", b"c"])


def test_channel_send_cells_frames_each_payload():
    from oppy.link.channel import Channel, ChannelState

    channel = Channel(b"\0" * 20, None, "127.0.0.1:1")
    channel.state = ChannelState.OPEN
    channel.link_version = 5
    channel.data_to_send()
    payloads = [os.urandom(509) for _ in range(3)]
    channel.send_cells(0x80000009, RELAY, b"".join(payloads))
    assert channel.data_to_send() == b"".join(encode_cell(0x80000009, RELAY, p, 5) for p in payloads)


def test_channel_routes_a_read_of_several_circuits_in_order():
    from oppy.link.channel import Channel, ChannelState

    class Recorder:
        def __init__(self, name, log):
            self.name, self.log = name, log

        def relay_cells_received(self, payloads):
            self.log.append((self.name, "run", len(payloads) // 509))

        def cell_received(self, command, payload):
            self.log.append((self.name, command, len(payload)))

    log = []
    channel = Channel(b"\0" * 20, None, "127.0.0.1:1")
    channel.state = ChannelState.OPEN
    channel.link_version = 5
    channel._reader.set_link_version(5)
    channel.circuits = {1: Recorder("a", log), 2: Recorder("b", log)}
    wire = b"".join([encode_cell(1, RELAY, bytes(509), 5)] * 3 + [encode_cell(2, RELAY, bytes(509), 5)] * 2
                    + [encode_cell(1, DESTROY, b"\x03", 5), encode_cell(1, RELAY, bytes(509), 5)])
    channel.receive_data(wire)
    assert log == [("a", "run", 3), ("b", "run", 2), ("a", DESTROY, 509)]
    assert 1 not in channel.circuits

