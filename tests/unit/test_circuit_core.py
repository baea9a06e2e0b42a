"""The sans-IO Circuit against simulated relays: building, windows, SENDMEs, closing.

The relays (tests.unit.relaysim) run the relay side of ntor and tor1 written from tor-spec; the channel
is a recorder. Each test reads what the circuit sends the way the relays would (decrypting hop by hop).
"""

import os
import struct

import pytest

from oppy.cell.commands import DestroyReason
from oppy.cell.flow_control import CIRCWINDOW_INCREMENT, CIRCWINDOW_START
from oppy.circuit.circuit import (
    MAX_RELAY_EARLY_CELLS,
    Circuit,
    CircuitError,
    CircuitState,
)
from tests.unit.relaysim import (
    CMD_CREATE2,
    CMD_CREATE_FAST,
    CMD_CREATED2,
    CMD_CREATED_FAST,
    CMD_DESTROY,
    CMD_RELAY,
    CMD_RELAY_EARLY,
    HTYPE_NTOR,
    NTOR_ONIONSKIN_LEN,
    PAYLOAD_LEN,
    RELAY_CONNECTED,
    RELAY_DATA,
    RELAY_DROP,
    RELAY_EXTEND2,
    RELAY_EXTENDED2,
    RELAY_SENDME,
    RELAY_TRUNCATED,
    RecordingChannel,
    RecordingCircuitOwner,
    build_circuit,
    new_path,
    parse_extend2,
    relay_plaintext,
    sendme_v1_body,
)

# tor-spec "EXTEND and EXTENDED cells": link specifier types.
LS_IPV4, LS_LEGACY_ID, LS_ED25519_ID = 0x00, 0x02, 0x03


class RecordingStream:
    def __init__(self, stream_id):
        self.stream_id = stream_id
        self.received = []
        self.closed = []
        self.window_opened = 0

    def relay_received(self, command, data):
        self.received.append((command, data))

    def data_cells_received(self, chunks):
        self.received += [(RELAY_DATA, bytes(chunk)) for chunk in chunks]

    def circuit_closed(self, error):
        self.closed.append(error)

    def circuit_window_opened(self):
        self.window_opened += 1


def watch(circuit):
    """What the circuit's owner hears from now on."""
    owner = circuit.owner
    owner.built.clear()
    owner.closed.clear()
    return {"built": owner.built, "closed": owner.closed}


def start(hops=3, keys_known=True):
    """A circuit through `hops` simulated relays, started; without `keys_known` its first hop is known by its
    identity and address alone (a directory source at bootstrap)."""
    channel = RecordingChannel()
    path = new_path(hops)
    targets = [relay.target for relay in path.relays]
    if not keys_known:
        targets[0] = targets[0]._replace(ntor_onion_key=None, ed25519_id=None)
    circuit = Circuit(channel, targets, RecordingCircuitOwner())
    events = watch(circuit)
    circuit.start()
    return circuit, channel, path, events


# ------------------------------------------------------------------------------------------------ building

def test_create2_carries_an_84_byte_ntor_onionskin():
    circuit, channel, path, _ = start()
    ((circ_id, command, payload),) = channel.take()
    assert circ_id == circuit.circ_id
    assert command == CMD_CREATE2
    htype, hlen = struct.unpack_from(">HH", payload)
    assert (htype, hlen) == (HTYPE_NTOR, NTOR_ONIONSKIN_LEN)
    guard = path.relays[0]
    # tor-spec "The ntor handshake": ID (RSA fingerprint) | B (ntor onion key) | X.
    assert payload[4:24] == guard.rsa_id
    assert payload[24:56] == guard.onion_key
    assert len(payload[56:88]) == 32
    assert circuit.state is CircuitState.BUILDING


def test_full_build_created2_extend2_extended2():
    circuit, channel, path, events = start()
    (_, _, create2), = channel.take()
    circuit.cell_received(CMD_CREATED2, path.answer_create2(create2))
    assert circuit.hops_built == 1
    for hop in (1, 2):
        ((circ_id, command, payload),) = channel.take()
        assert (circ_id, command) == (circuit.circ_id, CMD_RELAY_EARLY)
        message = path.receive(payload)
        # EXTEND2 goes to the last hop built, on stream 0.
        assert (message.hop, message.command, message.stream_id) == (hop - 1, RELAY_EXTEND2, 0)
        extend = parse_extend2(message.data)
        target = path.relays[hop]
        assert [spec_type for spec_type, _ in extend.link_specifiers] == [LS_IPV4, LS_LEGACY_ID, LS_ED25519_ID]
        specs = dict(extend.link_specifiers)
        assert specs[LS_IPV4] == bytes(map(int, target.address.split("."))) + struct.pack(">H", target.or_port)
        assert specs[LS_LEGACY_ID] == target.rsa_id
        assert specs[LS_ED25519_ID] == target.ed25519_id
        assert extend.handshake_type == HTYPE_NTOR
        assert len(extend.handshake_data) == NTOR_ONIONSKIN_LEN
        assert extend.handshake_data[:20] == target.rsa_id and extend.handshake_data[20:52] == target.onion_key
        assert events["built"] == []
        circuit.cell_received(CMD_RELAY, path.answer_extend2(message))
        assert circuit.hops_built == hop + 1
    assert events["built"] == [circuit]
    assert circuit.state is CircuitState.OPEN
    assert channel.take() == []
    assert events["closed"] == []


def test_extend2_without_ed25519_identity_has_two_link_specifiers():
    channel = RecordingChannel()
    path = new_path(2)
    path.relays[1].ed25519_id = None
    circuit = Circuit(channel, [relay.target for relay in path.relays], RecordingCircuitOwner())
    circuit.start()
    circuit.cell_received(CMD_CREATED2, path.answer_create2(channel.take()[0][2]))
    extend = parse_extend2(path.receive(channel.take()[0][2]).data)
    assert [spec_type for spec_type, _ in extend.link_specifiers] == [LS_IPV4, LS_LEGACY_ID]


def test_one_hop_circuit_is_built_by_created2():
    circuit, channel, path, events = start(hops=1)
    circuit.cell_received(CMD_CREATED2, path.answer_create2(channel.take()[0][2]))
    assert events["built"] == [circuit]
    assert channel.take() == []


def test_a_first_hop_without_an_onion_key_is_created_fast_and_carries_cells_both_ways():
    circuit, channel, path, events = start(hops=1, keys_known=False)
    ((circ_id, command, payload),) = channel.take()
    # tor-spec "CREATE_FAST/CREATED_FAST cells": X, HASH_LEN random bytes, then the cell's zero padding.
    assert (circ_id, command, len(payload)) == (circuit.circ_id, CMD_CREATE_FAST, 20)
    circuit.cell_received(CMD_CREATED_FAST, path.answer_create_fast(payload) + bytes(PAYLOAD_LEN - 40))
    assert events["built"] == [circuit] and circuit.state is CircuitState.OPEN and circuit.hops_built == 1
    stream = RecordingStream(circuit.allocate_stream_id())
    circuit.attach_stream(stream)
    circuit.send_relay(13, stream.stream_id, b"")  # BEGIN_DIR, keyed by KDF-TOR at both ends
    message = path.receive(channel.take()[0][2])
    assert (message.hop, message.command, message.stream_id) == (0, 13, stream.stream_id)
    circuit.cell_received(CMD_RELAY, path.send(0, RELAY_CONNECTED, stream.stream_id))
    assert stream.received == [(RELAY_CONNECTED, b"")]


def test_a_created_fast_with_a_wrong_kh_fails_naming_the_first_hop():
    circuit, channel, path, events = start(hops=1, keys_known=False)
    circuit.cell_received(CMD_CREATED_FAST, path.answer_create_fast(channel.take()[0][2], corrupt_kh=True))
    (error,) = events["closed"]
    assert "hop 1" in str(error) and "KH mismatch" in str(error) and error.hop == 0
    assert channel.destroyed == [(circuit.circ_id, 0)]


def test_a_created2_does_not_answer_a_create_fast():
    circuit, channel, path, events = start(hops=1, keys_known=False)
    channel.take()
    circuit.cell_received(CMD_CREATED2, bytes(PAYLOAD_LEN))
    (error,) = events["closed"]
    assert "unexpected cell command 11" in str(error) and circuit.hops_built == 0


def test_a_created_fast_does_not_answer_a_create2():
    circuit, channel, path, events = start(hops=1)
    channel.take()
    circuit.cell_received(CMD_CREATED_FAST, bytes(PAYLOAD_LEN))
    (error,) = events["closed"]
    assert "unexpected cell command 6" in str(error) and circuit.hops_built == 0


def test_destroy_during_build_names_the_hop_and_the_reason():
    circuit, channel, path, events = start()
    circuit.cell_received(CMD_CREATED2, path.answer_create2(channel.take()[0][2]))
    channel.take()  # EXTEND2 to the middle
    circuit.cell_received(CMD_DESTROY, bytes([DestroyReason.RESOURCELIMIT]) + bytes(PAYLOAD_LEN - 1))
    (error,) = events["closed"]
    middle = path.relays[1]
    assert f"hop 2 (${middle.fingerprint}~middle)" in str(error)
    assert "RESOURCELIMIT" in str(error)
    assert path.relays[0].fingerprint in str(error)
    assert (error.hop, error.reason, error.remote) == (1, DestroyReason.RESOURCELIMIT, True)
    assert circuit.state is CircuitState.CLOSED
    assert events["built"] == []
    # The relay already tore the circuit down: we answer nothing.
    assert channel.destroyed == [] and channel.take() == []


def test_destroy_before_created2_names_the_first_hop():
    circuit, channel, path, events = start()
    circuit.cell_received(CMD_DESTROY, bytes([DestroyReason.PROTOCOL]))
    (error,) = events["closed"]
    assert f"hop 1 (${path.relays[0].fingerprint}~guard)" in str(error)
    assert "PROTOCOL" in str(error) and error.hop == 0


def test_destroy_on_an_open_circuit_closes_it_with_the_reason():
    circuit, channel, path = build_circuit(Circuit)
    events = watch(circuit)
    circuit.cell_received(CMD_DESTROY, bytes([DestroyReason.FINISHED]))
    (error,) = events["closed"]
    assert "FINISHED" in str(error) and error.hop is None and error.remote


def test_truncated_during_build_closes_naming_the_failed_hop():
    circuit, channel, path, events = start()
    circuit.cell_received(CMD_CREATED2, path.answer_create2(channel.take()[0][2]))
    circuit.cell_received(CMD_RELAY, path.answer_extend2(path.receive(channel.take()[0][2])))
    path.receive(channel.take()[0][2])  # the middle gets EXTEND2 for the exit, and fails to connect
    circuit.cell_received(CMD_RELAY, path.send(1, RELAY_TRUNCATED, 0, bytes([DestroyReason.CONNECTFAILED])))
    (error,) = events["closed"]
    message = str(error)
    assert "truncated at hop 2" in message
    assert f"hop 3 (${path.relays[2].fingerprint}~exit)" in message
    assert "CONNECTFAILED" in message
    assert (error.hop, error.reason, error.remote) == (2, DestroyReason.CONNECTFAILED, True)
    # The rest of the circuit is torn down with DESTROY (reason NONE from a client).
    assert channel.destroyed == [(circuit.circ_id, DestroyReason.NONE)]


def test_bad_auth_in_created2_fails_naming_the_first_hop():
    circuit, channel, path, events = start()
    circuit.cell_received(CMD_CREATED2, path.answer_create2(channel.take()[0][2], corrupt_auth=True))
    (error,) = events["closed"]
    assert str(error).startswith(f"hop 1 (${path.relays[0].fingerprint}~guard)")
    assert error.hop == 0
    assert circuit.state is CircuitState.CLOSED and circuit.hops_built == 0
    assert channel.destroyed == [(circuit.circ_id, DestroyReason.NONE)]
    assert events["built"] == []


def test_bad_auth_in_extended2_fails_naming_the_new_hop():
    circuit, channel, path, events = start()
    circuit.cell_received(CMD_CREATED2, path.answer_create2(channel.take()[0][2]))
    circuit.cell_received(CMD_RELAY, path.answer_extend2(path.receive(channel.take()[0][2]), corrupt_auth=True))
    (error,) = events["closed"]
    assert str(error).startswith(f"hop 2 (${path.relays[1].fingerprint}~middle)")
    assert error.hop == 1
    assert channel.destroyed == [(circuit.circ_id, DestroyReason.NONE)]


def test_malformed_created2_fails_naming_the_first_hop():
    circuit, channel, path, events = start()
    circuit.cell_received(CMD_CREATED2, struct.pack(">H", 600))
    (error,) = events["closed"]
    assert "hop 1" in str(error) and error.hop == 0


def test_second_created2_closes_the_circuit():
    circuit, channel, path, events = start()
    created2 = path.answer_create2(channel.take()[0][2])
    circuit.cell_received(CMD_CREATED2, created2)
    circuit.cell_received(CMD_CREATED2, created2)
    assert circuit.state is CircuitState.CLOSED


# ------------------------------------------------------------------------------------------------ windows

def test_deliver_window_one_sendme_v1_after_100_data_cells_with_the_relay_digest():
    circuit, channel, path = build_circuit(Circuit)
    stream = RecordingStream(7)
    circuit.attach_stream(stream)
    exit_hop = path.hops[2]
    for count in range(1, 100):
        circuit.cell_received(CMD_RELAY, path.send(2, RELAY_DATA, 7, b"x" * 10))
    assert channel.take() == []
    assert circuit.window.deliver == CIRCWINDOW_START - 99
    circuit.cell_received(CMD_RELAY, path.send(2, RELAY_DATA, 7, b"y" * 498))
    tag_after_100th = exit_hop.backward_tags[-1]
    ((circ_id, command, payload),) = channel.take()
    assert command == CMD_RELAY  # not RELAY_EARLY
    message = path.receive(payload)
    # tor-spec "SENDME Cell Format": v1 on stream 0, to the hop that sent the data, tag = its digest.
    assert (message.hop, message.command, message.stream_id) == (2, RELAY_SENDME, 0)
    assert message.data == sendme_v1_body(tag_after_100th)
    assert circuit.window.deliver == CIRCWINDOW_START
    assert len(stream.received) == 100 and stream.received[-1] == (RELAY_DATA, b"y" * 498)
    for count in range(99):
        circuit.cell_received(CMD_RELAY, path.send(2, RELAY_DATA, 7, b"z"))
    assert channel.take() == []
    circuit.cell_received(CMD_RELAY, path.send(2, RELAY_DATA, 7, b"z"))
    (second,) = channel.take()
    assert path.receive(second[2]).data == sendme_v1_body(exit_hop.backward_tags[-1])


def test_non_data_cells_do_not_count_against_the_deliver_window():
    circuit, channel, path = build_circuit(Circuit)
    for _ in range(150):
        circuit.cell_received(CMD_RELAY, path.send(2, RELAY_DROP))
    assert circuit.window.deliver == CIRCWINDOW_START
    assert channel.take() == []
    assert circuit.state is CircuitState.OPEN


def test_data_from_a_middle_hop_gets_its_sendme_from_that_hop():
    circuit, channel, path = build_circuit(Circuit)
    for _ in range(100):
        circuit.cell_received(CMD_RELAY, path.send(1, RELAY_DATA, 3, b"m"))
    (cell,) = channel.take()
    message = path.receive(cell[2])
    assert (message.hop, message.command) == (1, RELAY_SENDME)
    assert message.data == sendme_v1_body(path.hops[1].backward_tags[-1])


def send_data_cells(circuit, path, count):
    for _ in range(count):
        circuit.send_data_many(1, [b"d" * 498])
    cells = circuit.channel.take()
    assert len(cells) == count
    for _, command, payload in cells:
        assert command == CMD_RELAY
        message = path.receive(payload)
        assert (message.hop, message.command, message.stream_id) == (2, RELAY_DATA, 1)


def test_package_window_sendme_with_the_right_tag_reopens_it():
    circuit, channel, path = build_circuit(Circuit)
    events = watch(circuit)
    send_data_cells(circuit, path, 100)
    assert circuit.window.package == CIRCWINDOW_START - CIRCWINDOW_INCREMENT
    tag = path.hops[2].forward_tags[-1]  # the exit's digest after our 100th DATA cell
    circuit.cell_received(CMD_RELAY, path.send(2, RELAY_SENDME, 0, sendme_v1_body(tag)))
    assert circuit.window.package == CIRCWINDOW_START
    assert circuit.state is CircuitState.OPEN and events["closed"] == []


def test_package_window_empty_blocks_and_sendme_wakes_streams():
    circuit, channel, path = build_circuit(Circuit)
    streams = [RecordingStream(1), RecordingStream(2)]
    for stream in streams:
        circuit.attach_stream(stream)
    tags = []
    for _ in range(CIRCWINDOW_START // CIRCWINDOW_INCREMENT):
        send_data_cells(circuit, path, 100)
        tags.append(path.hops[2].forward_tags[-1])
    assert circuit.window.package == 0 and circuit.package_room == 0
    with pytest.raises(CircuitError):
        circuit.send_data_many(1, [b"blocked"])
    assert channel.take() == []
    circuit.cell_received(CMD_RELAY, path.send(2, RELAY_SENDME, 0, sendme_v1_body(tags[0])))
    assert circuit.window.package == CIRCWINDOW_INCREMENT == circuit.package_room
    assert [stream.window_opened for stream in streams] == [1, 1]
    circuit.cell_received(CMD_RELAY, path.send(2, RELAY_SENDME, 0, sendme_v1_body(tags[1])))
    assert [stream.window_opened for stream in streams] == [1, 1]  # it was not blocked any more
    assert circuit.window.package == 2 * CIRCWINDOW_INCREMENT


def test_sendme_with_a_wrong_tag_closes_the_circuit():
    circuit, channel, path = build_circuit(Circuit)
    events = watch(circuit)
    send_data_cells(circuit, path, 100)
    wrong = bytearray(path.hops[2].forward_tags[-1])
    wrong[7] ^= 0x20
    circuit.cell_received(CMD_RELAY, path.send(2, RELAY_SENDME, 0, sendme_v1_body(bytes(wrong))))
    assert circuit.state is CircuitState.CLOSED
    (error,) = events["closed"]
    assert "tag" in str(error)
    assert channel.destroyed == [(circuit.circ_id, DestroyReason.NONE)]
    assert circuit.window.package == CIRCWINDOW_START - CIRCWINDOW_INCREMENT


def test_sendme_for_the_digest_of_another_cell_closes_the_circuit():
    circuit, channel, path = build_circuit(Circuit)
    send_data_cells(circuit, path, 100)
    tag_of_99th = path.hops[2].forward_tags[-2]
    circuit.cell_received(CMD_RELAY, path.send(2, RELAY_SENDME, 0, sendme_v1_body(tag_of_99th)))
    assert circuit.state is CircuitState.CLOSED


def test_unowed_sendme_closes_the_circuit():
    circuit, channel, path = build_circuit(Circuit)
    events = watch(circuit)
    send_data_cells(circuit, path, 99)
    circuit.cell_received(CMD_RELAY, path.send(2, RELAY_SENDME, 0, sendme_v1_body(path.hops[2].forward_tags[-1])))
    assert circuit.state is CircuitState.CLOSED
    assert "not owed" in str(events["closed"][0])
    assert channel.destroyed == [(circuit.circ_id, DestroyReason.NONE)]


def test_second_sendme_for_one_window_closes_the_circuit():
    circuit, channel, path = build_circuit(Circuit)
    send_data_cells(circuit, path, 100)
    body = sendme_v1_body(path.hops[2].forward_tags[-1])
    circuit.cell_received(CMD_RELAY, path.send(2, RELAY_SENDME, 0, body))
    assert circuit.state is CircuitState.OPEN
    circuit.cell_received(CMD_RELAY, path.send(2, RELAY_SENDME, 0, body))
    assert circuit.state is CircuitState.CLOSED


# ------------------------------------------------------------------------------------------------ protocol errors

def test_unrecognized_relay_cell_closes_the_circuit():
    circuit, channel, path = build_circuit(Circuit)
    events = watch(circuit)
    stream = RecordingStream(1)
    circuit.attach_stream(stream)
    circuit.cell_received(CMD_RELAY, os.urandom(PAYLOAD_LEN))
    assert circuit.state is CircuitState.CLOSED
    assert channel.destroyed == [(circuit.circ_id, DestroyReason.NONE)]
    assert len(events["closed"]) == 1 and len(stream.closed) == 1
    assert stream.received == []


def test_cell_with_a_corrupted_digest_closes_the_circuit():
    circuit, channel, path = build_circuit(Circuit)
    cell = bytearray(path.send(2, RELAY_DATA, 1, b"hello"))
    cell[20] ^= 1  # flips one data byte under the exit's digest
    circuit.cell_received(CMD_RELAY, bytes(cell))
    assert circuit.state is CircuitState.CLOSED


def test_relay_cell_with_an_oversized_length_closes_the_circuit():
    circuit, channel, path = build_circuit(Circuit)
    stream = RecordingStream(1)
    circuit.attach_stream(stream)
    circuit.cell_received(CMD_RELAY, path.originate(2, relay_plaintext(RELAY_DATA, 1, b"x", length=499)))
    assert circuit.state is CircuitState.CLOSED
    assert stream.received == []


def test_inbound_relay_early_closes_the_circuit():
    circuit, channel, path = build_circuit(Circuit)
    events = watch(circuit)
    circuit.cell_received(CMD_RELAY_EARLY, path.send(2, RELAY_DATA, 1, b"early"))
    assert circuit.state is CircuitState.CLOSED
    assert "RELAY_EARLY" in str(events["closed"][0])
    assert channel.destroyed == [(circuit.circ_id, DestroyReason.NONE)]


def test_relay_cell_before_any_hop_closes_the_circuit():
    circuit, channel, path, events = start()
    circuit.cell_received(CMD_RELAY, os.urandom(PAYLOAD_LEN))
    assert circuit.state is CircuitState.CLOSED and len(events["closed"]) == 1


def test_extended2_from_a_hop_that_is_not_the_last_closes_the_circuit():
    circuit, channel, path, events = start()
    circuit.cell_received(CMD_CREATED2, path.answer_create2(channel.take()[0][2]))
    circuit.cell_received(CMD_RELAY, path.answer_extend2(path.receive(channel.take()[0][2])))
    channel.take()
    circuit.cell_received(CMD_RELAY, path.send(0, RELAY_EXTENDED2, 0, bytes(66)))
    assert circuit.state is CircuitState.CLOSED
    assert "not the last hop" in str(events["closed"][0])


# ------------------------------------------------------------------------------------------------ streams and closing

def test_stream_cells_are_dispatched_by_stream_id():
    circuit, channel, path = build_circuit(Circuit)
    first, second = RecordingStream(1), RecordingStream(2)
    circuit.attach_stream(first)
    circuit.attach_stream(second)
    circuit.cell_received(CMD_RELAY, path.send(2, RELAY_DATA, 2, b"two"))
    circuit.cell_received(CMD_RELAY, path.send(2, RELAY_DATA, 1, b"one"))
    circuit.cell_received(CMD_RELAY, path.send(2, RELAY_DATA, 9, b"nobody"))  # a stream already gone
    assert first.received == [(RELAY_DATA, b"one")]
    assert second.received == [(RELAY_DATA, b"two")]
    assert circuit.state is CircuitState.OPEN


def test_streams_are_told_once_when_the_circuit_closes():
    circuit, channel, path = build_circuit(Circuit)
    events = watch(circuit)
    streams = [RecordingStream(stream_id) for stream_id in (1, 2, 3)]
    for stream in streams:
        circuit.attach_stream(stream)
    circuit.cell_received(CMD_DESTROY, bytes([DestroyReason.REQUESTED]))
    circuit.channel_closed("link lost")
    circuit.close()
    circuit.cell_received(CMD_DESTROY, bytes([DestroyReason.REQUESTED]))
    assert [len(stream.closed) for stream in streams] == [1, 1, 1]
    assert all(stream.closed[0] is events["closed"][0] for stream in streams)
    assert len(events["closed"]) == 1


def test_channel_closed_tells_streams_and_owner():
    circuit, channel, path = build_circuit(Circuit)
    events = watch(circuit)
    stream = RecordingStream(5)
    circuit.attach_stream(stream)
    circuit.channel_closed("TLS connection lost")
    assert "TLS connection lost" in str(events["closed"][0])
    assert events["closed"][0].reason == DestroyReason.CHANNEL_CLOSED
    assert stream.closed == events["closed"]


def test_local_close_sends_destroy_once_and_stops_sending():
    circuit, channel, path = build_circuit(Circuit)
    circuit.close()
    circuit.close()
    assert channel.destroyed == [(circuit.circ_id, DestroyReason.NONE)]
    with pytest.raises(CircuitError):
        circuit.send_relay(RELAY_DROP, 0, b"")
    # Cells arriving after the close are dropped quietly.
    circuit.cell_received(CMD_RELAY, path.send(2, RELAY_DATA, 1, b"late"))
    assert circuit.state is CircuitState.CLOSED


def test_stream_ids_are_nonzero_and_unused():
    circuit, channel, path = build_circuit(Circuit)
    first = circuit.allocate_stream_id()
    circuit.attach_stream(RecordingStream(first))
    second = circuit.allocate_stream_id()
    assert first != 0 and second not in (0, first)


# ------------------------------------------------------------------------------------------------ RELAY_EARLY

def test_eight_relay_early_cells_at_most():
    circuit, channel, path = build_circuit(Circuit, hops=1)
    for _ in range(MAX_RELAY_EARLY_CELLS):
        circuit.send_relay(RELAY_DROP, 0, b"", early=True)
    sent = channel.take()
    assert [command for _, command, _ in sent] == [CMD_RELAY_EARLY] * MAX_RELAY_EARLY_CELLS
    for _, _, payload in sent:
        assert path.receive(payload).command == RELAY_DROP
    with pytest.raises(CircuitError, match="RELAY_EARLY"):
        circuit.send_relay(RELAY_DROP, 0, b"", early=True)
    assert channel.take() == []


def test_extend2_cells_use_up_relay_early_cells():
    circuit, channel, path = build_circuit(Circuit, hops=3)
    for _ in range(MAX_RELAY_EARLY_CELLS - 2):
        circuit.send_relay(RELAY_DROP, 0, b"", early=True)
    with pytest.raises(CircuitError):
        circuit.send_relay(RELAY_DROP, 0, b"", early=True)


def test_an_open_circuit_is_extended_by_a_controller():
    """EXTENDCIRCUIT: a built two-hop circuit sends EXTEND2 from its last hop and is built again with three."""
    channel = RecordingChannel()
    path = new_path(3)
    targets = [relay.target for relay in path.relays]
    circuit = Circuit(channel, targets[:2], RecordingCircuitOwner())
    events = watch(circuit)
    circuit.start()
    (_, _, create2), = channel.take()
    circuit.cell_received(CMD_CREATED2, path.answer_create2(create2))
    (_, _, extend), = channel.take()
    circuit.cell_received(CMD_RELAY, path.answer_extend2(path.receive(extend)))
    assert events["built"] == [circuit] and circuit.hops_built == 2
    circuit.extend([targets[2]])
    assert circuit.state is CircuitState.BUILDING and circuit.path == targets
    ((_, command, payload),) = channel.take()
    message = path.receive(payload)
    assert (command, message.hop, message.command) == (CMD_RELAY_EARLY, 1, RELAY_EXTEND2)
    circuit.cell_received(CMD_RELAY, path.answer_extend2(message))
    assert events["built"] == [circuit, circuit]
    assert circuit.state is CircuitState.OPEN and circuit.hops_built == 3


def test_a_circuit_with_streams_or_not_open_is_not_extended():
    circuit, channel, path, _ = start(hops=1)
    with pytest.raises(CircuitError, match="not open"):
        circuit.extend([path.relays[0].target])
    (_, _, create2), = channel.take()
    circuit.cell_received(CMD_CREATED2, path.answer_create2(create2))
    circuit.attach_stream(RecordingStream(circuit.allocate_stream_id()))
    with pytest.raises(CircuitError, match="carries streams"):
        circuit.extend([path.relays[0].target])
    assert circuit.state is CircuitState.OPEN and len(circuit.path) == 1
