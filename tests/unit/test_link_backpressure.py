"""Backpressure toward a slow relay: the link pauses its circuits, which stop packaging their streams' data.

First sans IO (a real Channel, Circuit and Stream against the relays of tests.unit.relaysim), then in process
over loopback TCP: a relay (tests.unit.loopback_relay) stops reading, and the link's memory must stay bounded
until it reads again.
"""

from __future__ import annotations

import os
import socket

import pytest_twisted
from twisted.internet import reactor, task

from oppy.circuit.build import build_circuit
from oppy.circuit.circuit import Circuit
from oppy.link.channel import Channel, ChannelState
from oppy.link.connection import LinkPool
from oppy.stream.stream import Stream, StreamState
from tests.support.listeners import until
from tests.support.streams import CollectingSink
from tests.unit.loopback_relay import CELL_LEN, listen
from tests.unit.relaysim import (
    CMD_CREATED2,
    CMD_RELAY,
    RELAY_CONNECTED,
    RELAY_DATA,
    RecordingCircuitOwner,
    SimulatedPath,
    SimulatedRelay,
    fixed_cell,
    parse_cells,
)


# ------------------------------------------------------------------------------------------------ sans IO

def open_circuit_on_a_channel(high_watermark: int):
    """A real open Channel (no transport: the test takes its bytes) with a one-hop Circuit built on it."""
    channel = Channel(b"\0" * 20, None, "127.0.0.1:1", high_watermark=high_watermark)
    channel.state = ChannelState.OPEN
    channel.link_version = 5
    channel._reader.set_link_version(5)
    channel.data_to_send()
    path = SimulatedPath([SimulatedRelay("guard")])
    circuit = Circuit(channel, [relay.target for relay in path.relays], RecordingCircuitOwner())
    circuit.start()
    ((_, _, create2),) = parse_cells(channel.data_to_send())
    channel.receive_data(fixed_cell(circuit.circ_id, CMD_CREATED2, path.answer_create2(create2)))
    return channel, circuit, path


def test_a_paused_channel_stops_the_streams_and_resuming_lets_them_go_on():
    channel, circuit, path = open_circuit_on_a_channel(high_watermark=20 * CELL_LEN)
    sink = CollectingSink()
    stream = Stream(sink, "127.0.0.1", 80, send_buffer_limit=64 * 1024)
    stream.attach(circuit)
    ((_, _, begin),) = parse_cells(channel.data_to_send())
    stream_id = path.receive(begin).stream_id
    channel.receive_data(fixed_cell(circuit.circ_id, CMD_RELAY, path.send(0, RELAY_CONNECTED, stream_id)))
    first = os.urandom(100 * 498)
    stream.write(first)  # 100 cells at once: past the high watermark
    assert channel.paused and circuit.package_room == 0
    queued = channel.queued
    second = os.urandom(80 * 1024)
    stream.write(second)
    assert channel.queued == queued, "a paused channel takes no stream data"
    assert sink.writable_changes == [False], "the stream's buffer filled: its source is told to stop"
    taken = channel.data_to_send()  # the connection takes the queue: the circuit resumes its stream at once
    assert channel.queued > 0 and sink.writable_changes == [False, True]
    while channel.queued:
        taken += channel.data_to_send()
    assert not channel.paused
    sent = b"".join(message.data for message in map(path.receive, (payload for _, _, payload in parse_cells(taken)))
                    if message.command == RELAY_DATA)
    assert sent == first + second


# ------------------------------------------------------------------------------------------------ over TCP

@pytest_twisted.inlineCallbacks
def test_a_relay_that_stops_reading_pauses_the_circuits_and_memory_stays_bounded(tmp_path):
    relay = listen(tmp_path)
    # Small kernel buffers, so that the transport's own buffer fills (the accepted socket inherits them).
    relay.port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    high_watermark = 32 * 1024
    sinks = [CollectingSink(), CollectingSink()]
    links = LinkPool(reactor, queue_high_watermark=high_watermark)
    try:
        circuit = yield build_circuit(links, relay.path, timeout=10, reactor=reactor)
        (connection,) = links.connections()
        connection.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        channel = connection.channel
        (server,) = relay.servers
        streams = [Stream(sink, "127.0.0.1", 80) for sink in sinks]
        for stream in streams:
            stream.attach(circuit)
        yield until(lambda: all(stream.state is StreamState.SUCCEEDED for stream in streams), "CONNECTED")
        server.hold()
        payloads = [os.urandom(1_000_000) for _ in streams]
        for stream, payload in zip(streams, payloads):
            stream.write(payload)
        yield until(lambda: channel.paused, "the link pauses its circuits")
        assert circuit.package_room == 0
        # Nothing moves while the relay does not read: the link holds at most the queue past its high
        # watermark (one flush of a stream's window) plus the transport's buffer of 64 KiB.
        transport_buffered = lambda: len(connection.transport.dataBuffer) + connection.transport._tempDataLen  # noqa: E731
        yield task.deferLater(reactor, 0.3, lambda: None)
        assert channel.paused
        assert channel.queued <= high_watermark + 500 * CELL_LEN
        assert transport_buffered() <= 2 * connection.transport.bufferSize + high_watermark + 500 * CELL_LEN
        assert all(sink.writable_changes[-1:] == [False] for sink in sinks), "the streams stop their sources"
        server.release()
        yield until(lambda: [bytes(server.data.get(stream.stream_id, b"")) for stream in streams] == payloads,
                    "the relay has every byte")
        assert not channel.paused and all(sink.writable_changes[-1] is True for sink in sinks)
    finally:
        for sink in sinks:
            sink.connected.addErrback(lambda failure: None)
        links.close_all()
        yield relay.port.stopListening()
