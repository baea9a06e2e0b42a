"""Conflux, sans IO (oppy/circuit/conflux.py): the cells' wire format against bytes laid out by hand from
conflux.trunnel, sequence numbers and SWITCH as a sender and a receiver, reordering and its limit fed scripted
cells, the leg choice of each algorithm for given RTTs and windows, and the consensus parameters."""

from __future__ import annotations

import pytest

from oppy.cell.commands import DestroyReason, RelayCommand
from oppy.circuit.congestion import CongestionParams, VegasController
from oppy.circuit.conflux import (
    CLIENT_UX_NAMES,
    DEFAULT_MAX_OOO_BYTES,
    OOO_CELL_COST,
    ConfluxAlgorithm,
    ConfluxError,
    ConfluxLeg,
    ConfluxLink,
    ConfluxParams,
    ConfluxQueueFull,
    ConfluxSet,
    DesiredUX,
    algorithm_for_ux,
    conflux_enabled,
    decode_switch,
    encode_switch,
    exit_conflux_ratio,
    should_multiplex,
)

NONCE = bytes(range(32))


def vegas(cwnd: int = 124, inflight: int = 0, rtt_usec: int = 0, slow_start: bool = True) -> VegasController:
    controller = VegasController(CongestionParams(), sendme_inc=31)
    controller.cwnd = cwnd
    controller.inflight = inflight
    controller.ewma_rtt_usec = rtt_usec
    controller.in_slow_start = slow_start
    return controller


def two_legs(algorithm=ConfluxAlgorithm.LOW_RTT, rtt_a=10_000, rtt_b=20_000, **kwargs):
    conflux = ConfluxSet(NONCE, algorithm, **kwargs)
    a = ConfluxLeg("a", vegas(), rtt_a)
    b = ConfluxLeg("b", vegas(), rtt_b)
    conflux.add_leg(a)
    conflux.add_leg(b)
    return conflux, a, b


# ------------------------------------------------------------------------------------------------ cells


def test_link_body_is_version_nonce_two_u64_and_ux():
    body = ConfluxLink(NONCE, last_seqno_sent=0x0102030405060708, last_seqno_recv=9,
                       desired_ux=DesiredUX.LOW_MEM_LATENCY).encode()
    assert body == (b"\x01" + NONCE + bytes.fromhex("0102030405060708") + (9).to_bytes(8, "big") + b"\x02")
    assert len(body) == 1 + 32 + 8 + 8 + 1


def test_link_body_round_trips_and_ignores_trailing_bytes():
    link = ConfluxLink(NONCE, 7, 11, DesiredUX.MIN_LATENCY)
    assert ConfluxLink.decode(link.encode()) == link
    # tor sends the relay payload it built; anything after the v1 fields is not looked at (trunnel).
    assert ConfluxLink.decode(link.encode() + bytes(400)) == link


@pytest.mark.parametrize("body, message", [
    (b"", "empty"),
    (b"\x02" + NONCE + bytes(17), "version 2"),
    (b"\x01" + NONCE + bytes(16), "truncated"),
    (b"\x01" + NONCE + bytes(16) + b"\x05", "unknown desired UX 5"),
])
def test_malformed_link_bodies_are_a_clear_error(body, message):
    with pytest.raises(ConfluxError, match=message) as raised:
        ConfluxLink.decode(body)
    assert raised.value.reason == DestroyReason.PROTOCOL


def test_link_refuses_to_encode_what_the_format_cannot_hold():
    with pytest.raises(ConfluxError, match="32 bytes"):
        ConfluxLink(NONCE[:16], 0, 0).encode()
    with pytest.raises(ConfluxError, match="64 bits"):
        ConfluxLink(NONCE, 2**64, 0).encode()


def test_switch_body_is_a_u32_and_padding_is_ignored():
    assert encode_switch(0xDEADBEEF) == bytes.fromhex("deadbeef")
    assert decode_switch(bytes.fromhex("0000012c") + bytes(494)) == 300
    with pytest.raises(ConfluxError, match="truncated CONFLUX_SWITCH"):
        decode_switch(b"\x00\x01")
    with pytest.raises(ConfluxError, match="32 bits"):
        encode_switch(2**32)


def test_multiplexed_commands_are_tors():
    for command in (RelayCommand.BEGIN, RelayCommand.DATA, RelayCommand.END, RelayCommand.CONNECTED,
                    RelayCommand.RESOLVE, RelayCommand.RESOLVED, RelayCommand.XOFF, RelayCommand.XON):
        assert should_multiplex(command), command
    for command in (RelayCommand.SENDME, RelayCommand.EXTEND2, RelayCommand.BEGIN_DIR, RelayCommand.DROP,
                    RelayCommand.TRUNCATED, RelayCommand.CONFLUX_LINK, RelayCommand.CONFLUX_LINKED,
                    RelayCommand.CONFLUX_LINKED_ACK, RelayCommand.CONFLUX_SWITCH, RelayCommand.INTRODUCE1, 99):
        assert not should_multiplex(command), command


def test_ux_names_and_algorithms_are_tors():
    assert CLIENT_UX_NAMES == {"throughput": 3, "latency": 1, "throughput_lowmem": 4, "latency_lowmem": 2}
    assert algorithm_for_ux(DesiredUX.HIGH_THROUGHPUT) is ConfluxAlgorithm.LOW_RTT
    assert algorithm_for_ux(DesiredUX.NO_OPINION) is ConfluxAlgorithm.LOW_RTT
    for ux in (DesiredUX.MIN_LATENCY, DesiredUX.LOW_MEM_LATENCY, DesiredUX.LOW_MEM_THROUGHPUT):
        assert algorithm_for_ux(ux) is ConfluxAlgorithm.MIN_RTT


# ------------------------------------------------------------------------------------ consensus params


def test_params_defaults_are_tors():
    params = ConfluxParams.from_consensus({})
    assert (params.enabled, params.low_exit_threshold, params.max_linked_set, params.max_prebuilt_set,
            params.max_unlinked_leg_retry, params.num_legs_set, params.max_legs_set, params.send_pct,
            params.drain_pct) == (True, 6000, 10, 3, 3, 2, 8, 100, 0)
    assert params.max_leg_launches == 5


def test_params_are_clamped_into_tors_bounds():
    params = ConfluxParams.from_consensus({"cfx_enabled": 7, "cfx_low_exit_threshold": 20000,
                                           "cfx_max_legs_set": 1, "cfx_num_legs_set": 300,
                                           "cfx_drain_pct": -4})
    assert (params.enabled, params.low_exit_threshold, params.max_legs_set, params.num_legs_set,
            params.drain_pct) == (True, 10000, 3, 255, 0)
    assert not ConfluxParams.from_consensus({"cfx_enabled": 0}).enabled


def test_prebuilt_sets_follow_the_share_of_conflux_exits():
    assert ConfluxParams(exit_conflux_ratio=0.0).max_prebuilt == 0
    assert ConfluxParams(exit_conflux_ratio=0.59).max_prebuilt == 1
    assert ConfluxParams(exit_conflux_ratio=0.60).max_prebuilt == 3
    assert ConfluxParams(max_prebuilt_set=5, exit_conflux_ratio=1.0).max_prebuilt == 5


def test_exit_ratio_counts_exits_that_are_not_bad():
    # (is_exit, is_bad_exit, supports_conflux)
    exits = [(True, False, True), (True, False, False), (True, True, True), (False, False, True)]
    assert exit_conflux_ratio(exits) == 0.5
    assert exit_conflux_ratio([]) == 0.0


def test_enabled_needs_congestion_control_and_follows_the_option_over_the_consensus():
    on, off = ConfluxParams(enabled=True), ConfluxParams(enabled=False)
    assert conflux_enabled(None, on, True) and not conflux_enabled(None, off, True)
    assert conflux_enabled(True, off, True) and not conflux_enabled(False, on, True)
    assert not conflux_enabled(True, on, False)


# ------------------------------------------------------------------------------------------- sending


def test_sender_starts_on_the_lowest_rtt_leg_without_a_switch():
    conflux, a, b = two_legs(rtt_a=30_000, rtt_b=20_000)
    choice = conflux.choose_leg(RelayCommand.DATA)
    assert choice.leg is b and choice.switch_seq is None


def test_switch_carries_the_difference_of_the_legs_sequence_numbers():
    conflux, a, b = two_legs()
    for _ in range(5):
        choice = conflux.choose_leg(RelayCommand.DATA)
        assert choice.leg is a and choice.switch_seq is None
        conflux.cell_sent(a, RelayCommand.DATA)
    a.congestion.inflight = a.congestion.cwnd  # a's window is full: LowRTT moves to b
    choice = conflux.choose_leg(RelayCommand.DATA)
    assert choice.leg is b and choice.switch_seq == 5
    assert b.last_seq_sent == 5  # the SWITCH brought b to where a was
    conflux.cell_sent(b, RelayCommand.DATA, count=3)
    assert b.last_seq_sent == 8
    a.congestion.inflight = 0  # a acknowledged: back to a, 3 ahead of it
    choice = conflux.choose_leg(RelayCommand.DATA)
    assert choice.leg is a and choice.switch_seq == 3
    assert conflux.switches_sent == 2


def test_per_leg_commands_take_no_sequence_number():
    conflux, a, b = two_legs()
    conflux.cell_sent(a, RelayCommand.SENDME)
    conflux.cell_sent(a, RelayCommand.CONFLUX_SWITCH)
    assert a.last_seq_sent == 0
    conflux.cell_sent(a, RelayCommand.BEGIN)
    assert a.last_seq_sent == 1


def test_data_waits_when_no_leg_has_room_but_control_goes_on_the_current_leg():
    conflux, a, b = two_legs()
    conflux.choose_leg(RelayCommand.DATA)
    a.congestion.inflight = a.congestion.cwnd
    b.blocked = True  # b's channel is full
    assert conflux.choose_leg(RelayCommand.DATA) is None
    choice = conflux.choose_leg(RelayCommand.END)
    assert choice.leg is a and choice.switch_seq is None


def test_low_rtt_takes_the_fastest_leg_with_room():
    conflux, a, b = two_legs(ConfluxAlgorithm.LOW_RTT, rtt_a=50_000, rtt_b=20_000)
    assert conflux.next_leg() is b
    b.congestion.inflight = 124
    assert conflux.next_leg() is a
    a.congestion.inflight = 124
    assert conflux.next_leg() is None


def test_min_rtt_sends_only_on_the_fastest_leg():
    conflux, a, b = two_legs(ConfluxAlgorithm.MIN_RTT, rtt_a=50_000, rtt_b=20_000)
    assert conflux.next_leg() is b
    b.congestion.inflight = 124
    assert conflux.next_leg() is None  # a has room, but MinRTT waits for b


def test_the_controllers_smoothed_rtt_replaces_the_link_rtt():
    conflux, a, b = two_legs(ConfluxAlgorithm.MIN_RTT, rtt_a=10_000, rtt_b=20_000)
    assert conflux.next_leg() is a
    a.congestion.ewma_rtt_usec = 90_000  # a's path got slow under load
    assert conflux.next_leg() is b


def test_an_empty_set_cannot_choose():
    with pytest.raises(ConfluxError, match="without legs"):
        ConfluxSet(NONCE).next_leg()


# ----------------------------------------------------------------------------------------- receiving


def test_in_order_cells_are_delivered_at_once():
    conflux, a, b = two_legs()
    assert conflux.cell_received(a, "1") == ["1"]
    assert conflux.cell_received(a, "2") == ["2"]
    assert conflux.last_seq_delivered == 2 and conflux.queued_bytes == 0


def test_cells_that_overtake_wait_for_the_ones_before_them():
    # The exit sent 1-3 on a, switched to b (relative 3) and sent 4-5 there; b's cells arrive first.
    conflux, a, b = two_legs()
    conflux.switch_received(b, encode_switch(3))
    assert conflux.cell_received(b, "4") == []
    assert conflux.cell_received(b, "5") == []
    assert conflux.queued_bytes == 2 * OOO_CELL_COST
    assert conflux.cell_received(a, "1") == ["1"]
    assert conflux.cell_received(a, "2") == ["2"]
    assert conflux.cell_received(a, "3") == ["3", "4", "5"]
    assert conflux.queued_bytes == 0 and conflux.last_seq_delivered == 5


def test_a_switch_takes_no_number_itself():
    conflux, a, b = two_legs()
    assert conflux.cell_received(a, "1") == ["1"]
    conflux.switch_received(b, encode_switch(1) + bytes(494))
    assert b.last_seq_recv == 1
    assert conflux.cell_received(b, "2") == ["2"]


def test_interleaved_switches_reorder_into_one_byte_exact_sequence():
    """A scripted exit alternating between legs in bursts; the legs' cells arrive leg by leg."""
    conflux, a, b = two_legs()
    sent = list(range(1, 41))
    bursts = [(a, sent[0:7]), (b, sent[7:15]), (a, sent[15:16]), (b, sent[16:30]), (a, sent[30:40])]
    per_leg: dict[str, list] = {"a": [], "b": []}
    last_on = {"a": 0, "b": 0}
    last_sent = 0
    for leg, burst in bursts:
        if last_on[leg.circuit] != last_sent:
            per_leg[leg.circuit].append(("switch", last_sent - last_on[leg.circuit]))
        per_leg[leg.circuit].extend(("data", n) for n in burst)
        last_sent = last_on[leg.circuit] = burst[-1]
    delivered = []
    for leg, name in ((b, "b"), (a, "a")):  # everything b carried arrives before anything on a
        for kind, value in per_leg[name]:
            if kind == "switch":
                conflux.switch_received(leg, encode_switch(value))
            else:
                delivered.extend(conflux.cell_received(leg, value))
    assert delivered == sent
    assert conflux.queued_bytes == 0


def test_a_number_at_or_below_the_delivered_one_is_a_protocol_error():
    conflux, a, b = two_legs()
    conflux.cell_received(a, "1")
    with pytest.raises(ConfluxError, match="at or below the last delivered"):
        conflux.cell_received(b, "1 again")  # b still counts from 0: a cell numbered 1


def test_two_cells_with_one_number_are_a_protocol_error():
    conflux, a, b = two_legs()
    conflux.switch_received(a, encode_switch(4))
    conflux.switch_received(b, encode_switch(4))
    conflux.cell_received(a, "5")
    with pytest.raises(ConfluxError, match="two conflux cells with sequence number 5"):
        conflux.cell_received(b, "5 again")


def test_the_out_of_order_queue_is_bounded():
    conflux, a, b = two_legs(max_ooo_bytes=3 * OOO_CELL_COST)
    conflux.switch_received(b, encode_switch(10))
    for n in range(3):
        assert conflux.cell_received(b, n) == []
    with pytest.raises(ConfluxQueueFull, match="out-of-order queue full: 3 cells") as raised:
        conflux.cell_received(b, "one too many")
    assert raised.value.reason == DestroyReason.RESOURCELIMIT
    assert conflux.clear() == 3 * OOO_CELL_COST and conflux.queued_bytes == 0
    assert DEFAULT_MAX_OOO_BYTES >= 1000 * OOO_CELL_COST


def test_switch_of_a_malformed_body_is_an_error_and_changes_nothing():
    conflux, a, b = two_legs()
    with pytest.raises(ConfluxError):
        conflux.switch_received(b, b"\x01")
    assert b.last_seq_recv == 0


# ---------------------------------------------------------------------------------------- leg closes


def test_a_closed_idle_leg_leaves_the_set_standing():
    conflux, a, b = two_legs()
    conflux.choose_leg(RelayCommand.DATA)
    conflux.cell_sent(a, RelayCommand.DATA, 4)
    assert conflux.remove_leg("b") is False
    assert conflux.legs == [a]


def test_closing_the_leg_in_use_or_with_data_in_flight_tears_the_set_down():
    conflux, a, b = two_legs()
    conflux.choose_leg(RelayCommand.DATA)  # a is the current leg
    assert conflux.remove_leg("a") is True
    conflux, a, b = two_legs()
    conflux.choose_leg(RelayCommand.DATA)
    b.congestion.inflight = 31  # a sendme_inc of cells unacknowledged on b
    assert conflux.remove_leg("b") is True


def test_closing_the_leg_that_received_furthest_tears_the_set_down():
    conflux, a, b = two_legs()
    conflux.choose_leg(RelayCommand.DATA)
    conflux.switch_received(b, encode_switch(2))
    assert conflux.remove_leg("b") is True  # b had the highest received number: data may be lost


def test_a_leg_joins_a_set_once():
    conflux, a, b = two_legs()
    with pytest.raises(ConfluxError, match="already a leg"):
        conflux.add_leg(ConfluxLeg("a", vegas(), 1))
    assert conflux.remove_leg("nope") is False


def test_a_set_needs_a_full_nonce():
    with pytest.raises(ConfluxError, match="32 bytes"):
        ConfluxSet(b"short")

