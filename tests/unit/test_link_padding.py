"""Connection-level padding, sans IO: the consensus parameters, the timeout distribution, the negotiation at
open and the decisions of the once-a-second housekeeping (padding-spec §2; tor channelpadding.c)."""

from __future__ import annotations

import math
import random

import pytest

from oppy.link.padding import (
    CLIENT_IDLE_TIMEOUT_BASE,
    KEEPALIVE_PERIOD,
    ChannelPadding,
    ChannelUsage,
    ConnectionPaddingOptions,
    Housekeeping,
    HousekeepingResult,
    PaddingParams,
    PaddingPolicy,
)

# tor-spec §7.2: Version 0, Command 1 (STOP), ito_low_ms 0, ito_high_ms 0.
STOP_BODY = bytes.fromhex("00 01 0000 0000")
T0 = 1000.0  # the adapter's clock when the link opened


def policy(connection_padding=None, reduced=False, seed=1, **params) -> PaddingPolicy:
    return PaddingPolicy(ConnectionPaddingOptions(connection_padding, reduced), PaddingParams(**params),
                         rng=random.Random(seed))


def opened(padding_policy: PaddingPolicy, link_version: int = 5,
           usage: ChannelUsage = ChannelUsage.USED_FOR_FULL_CIRCS) -> tuple[ChannelPadding, bytes | None]:
    """A link's padding state right after the handshake at T0 (the adapter has read and written then)."""
    padding = ChannelPadding(padding_policy)
    negotiation = padding.link_opened(link_version)
    padding.last_read = padding.last_written = T0
    padding.usage = usage
    return padding, negotiation


def tick(padding: ChannelPadding, now: float, circuits: bool = True, busy: bool = False,
         timer_pending: bool = False) -> HousekeepingResult:
    return padding.housekeeping(now, circuits, busy, timer_pending)


def first_padding_time(padding: ChannelPadding, start: float = T0, step: float = 1.0) -> float:
    """Run the housekeeping once a second from `start`, as the adapter does, until it pads or times a pad:
    the absolute time the PADDING cell goes out."""
    now = start
    while now < start + 120:
        now += step
        result = tick(padding, now)
        if result.action is Housekeeping.SEND_PADDING:
            return now
        if result.action is Housekeeping.SCHEDULE_PADDING:
            assert 0 < result.delay < 1.1
            assert padding.padding_due(busy=False)
            return now + result.delay
        assert result.action is Housekeeping.NOTHING
    raise AssertionError("no padding within two minutes")


# ------------------------------------------------------------------------------------------------ params

def test_defaults_are_the_spec_values():
    params = PaddingParams.from_consensus({})
    assert params == PaddingParams(1500, 9500, 9000, 14000, True)


def test_consensus_values_are_read():
    params = PaddingParams.from_consensus({"nf_ito_low": 1000, "nf_ito_high": 2000, "nf_ito_low_reduced": 3000,
                                           "nf_ito_high_reduced": 4000, "nf_pad_before_usage": 0})
    assert params == PaddingParams(1000, 2000, 3000, 4000, False)


@pytest.mark.parametrize(("given", "expected"), [
    # channelpadding_new_consensus_params: every timeout in [0, 60000] ms ...
    ({"nf_ito_low": 70000}, PaddingParams(60000, 60000, 9000, 14000, True)),
    ({"nf_ito_low": -5, "nf_ito_high": 99999}, PaddingParams(0, 60000, 9000, 14000, True)),
    # ... the high end no lower than the low end ...
    ({"nf_ito_low": 5000, "nf_ito_high": 4000}, PaddingParams(5000, 5000, 9000, 14000, True)),
    ({"nf_ito_low_reduced": 20000}, PaddingParams(1500, 9500, 20000, 20000, True)),
    ({"nf_ito_high_reduced": 100}, PaddingParams(1500, 9500, 9000, 9000, True)),
    # ... and nf_pad_before_usage a boolean.
    ({"nf_pad_before_usage": 7}, PaddingParams(1500, 9500, 9000, 14000, True)),
    ({"nf_pad_before_usage": -1}, PaddingParams(1500, 9500, 9000, 14000, False)),
])
def test_out_of_range_values_are_clamped_as_tor_does(given, expected):
    assert PaddingParams.from_consensus(given) == expected


def test_parameters_for_relays_and_onion_services_change_nothing_for_a_client():
    params = {"nf_pad_relays": 1, "nf_conntimeout_relays": 60, "nf_pad_single_onion": 0, "nf_pad_tor2web": 0,
              "nf_conntimeout_clients": 60}
    assert PaddingParams.from_consensus(params) == PaddingParams()


def test_a_new_consensus_applies_to_links_already_open():
    shared = policy()
    padding, _ = opened(shared)
    shared.update_consensus_params({"nf_ito_low": 0, "nf_ito_high": 0})
    assert tick(padding, T0 + 30).action is Housekeeping.NOTHING
    shared.update_consensus_params({"nf_ito_low": 2000, "nf_ito_high": 2000})
    assert first_padding_time(padding, start=T0) == T0 + 2.0


# ------------------------------------------------------------------------------------------------ distribution

def max_of_two_uniforms_cdf(value: int, spread: int) -> float:
    """P(max(X1, X2) <= value), X uniform over 0..spread-1 (padding-spec §2.3: P(Y = i) = (2i + 1) / R^2)."""
    return ((value + 1) / spread) ** 2


@pytest.mark.parametrize(("reduced", "low", "high", "mean_offset"), [
    (False, 1500, 9500, 5332.8),  # padding-spec §2.3 table: R = 8000, Exp[max(X,X)] = 5332.8
    (True, 9000, 14000, 3332.8),  # R = 5000: "9000+3332.8 = 12332.8ms" (§2.5)
])
def test_timeouts_follow_the_max_of_two_uniforms(reduced, low, high, mean_offset):
    padding, _ = opened(policy(reduced=reduced, seed=7))
    samples = [padding.netflow_inactive_timeout_ms() for _ in range(20000)]
    assert min(samples) >= low and max(samples) < high
    spread = high - low
    mean = sum(samples) / len(samples)
    # The standard deviation of max(X, X) is about R / (3 * sqrt(2)); allow 5 standard errors.
    assert abs(mean - (low + mean_offset)) < 5 * spread / (3 * math.sqrt(2)) / math.sqrt(len(samples))
    # The empirical distribution against the exact one (Kolmogorov-Smirnov, far past the 0.1% level).
    ordered = sorted(sample - low for sample in samples)
    worst = max(abs((index + 1) / len(ordered) - max_of_two_uniforms_cdf(value, spread))
                for index, value in enumerate(ordered) if index + 1 == len(ordered) or ordered[index + 1] != value)
    assert worst < 1.95 / math.sqrt(len(samples))
    # A plain uniform draw would put half the samples below the middle; max-of-two puts a quarter there.
    below_middle = sum(1 for value in ordered if value < spread // 2) / len(ordered)
    assert abs(below_middle - 0.25) < 0.02


def test_equal_bounds_give_that_timeout_and_zero_bounds_turn_padding_off():
    padding, _ = opened(policy(ito_low_ms=4000, ito_high_ms=4000))
    assert {padding.netflow_inactive_timeout_ms() for _ in range(50)} == {4000}
    padding, _ = opened(policy(ito_low_ms=0, ito_high_ms=0))
    assert padding.netflow_inactive_timeout_ms() == 0
    # tor: consensus 0/0 turns padding off, even for a reduced-padding client.
    padding, _ = opened(policy(reduced=True, ito_low_ms=0, ito_high_ms=0))
    assert padding.netflow_inactive_timeout_ms() == 0


def test_reduced_timeouts_never_go_below_the_consensus_ones():
    padding, _ = opened(policy(reduced=True, ito_low_ms=10000, ito_high_ms=20000,
                               ito_low_reduced_ms=9000, ito_high_reduced_ms=14000))
    samples = {padding.netflow_inactive_timeout_ms() for _ in range(2000)}
    assert min(samples) >= 10000 and max(samples) < 20000


# ------------------------------------------------------------------------------------------------ negotiation

def test_auto_on_link_5_sends_nothing_and_pads():
    padding, negotiation = opened(policy())
    assert negotiation is None and padding.enabled


def test_connection_padding_1_sends_no_start_either():
    padding, negotiation = opened(policy(connection_padding=True))
    assert negotiation is None and padding.enabled


def test_connection_padding_0_sends_stop_and_never_pads():
    padding, negotiation = opened(policy(connection_padding=False))
    assert negotiation == STOP_BODY and not padding.enabled
    for now in range(int(T0) + 1, int(T0) + 60):
        assert tick(padding, now).action is Housekeeping.NOTHING


def test_reduced_sends_stop_and_pads_with_the_reduced_timeouts():
    padding, negotiation = opened(policy(reduced=True))
    assert negotiation == STOP_BODY
    assert padding.enabled, "we keep padding; the relay stops"
    assert (padding.timeout_low_ms, padding.timeout_high_ms) == (9000, 14000)
    assert 9.0 <= first_padding_time(padding) - T0 < 14.0


def test_connection_padding_0_wins_over_reduced():
    padding, negotiation = opened(policy(connection_padding=False, reduced=True))
    assert negotiation == STOP_BODY and not padding.enabled
    assert tick(padding, T0 + 30).action is Housekeeping.NOTHING


def test_link_4_has_no_negotiation_and_pads_only_when_forced():
    padding, negotiation = opened(policy(), link_version=4)
    assert negotiation is None and not padding.enabled
    assert all(tick(padding, T0 + second).action is Housekeeping.NOTHING for second in range(1, 30))
    for options in ({"connection_padding": False}, {"reduced": True}):
        padding, negotiation = opened(policy(**options), link_version=4)
        assert negotiation is None, "PADDING_NEGOTIATE needs link protocol 5"
    padding, negotiation = opened(policy(connection_padding=True, reduced=True), link_version=4)
    assert negotiation is None
    assert 9.0 <= first_padding_time(padding) - T0 < 14.0, "forced padding, at the reduced rate"


def test_options_changed_at_run_time_apply_as_in_tor():
    options = ConnectionPaddingOptions(connection_padding=False)
    padding = ChannelPadding(PaddingPolicy(options, rng=random.Random(3)))
    assert padding.link_opened(5) == STOP_BODY
    padding.last_read = padding.last_written = T0
    padding.usage = ChannelUsage.USED_FOR_USER_TRAFFIC
    assert tick(padding, T0 + 20).action is Housekeeping.NOTHING
    options.connection_padding = True  # SETCONF ConnectionPadding 1: pad even though we sent STOP
    assert first_padding_time(padding, start=T0 + 20) - (T0 + 20) < 9.5


# ------------------------------------------------------------------------------------------------ decisions

def test_a_link_without_full_circuits_is_not_padded():
    padding, _ = opened(policy(), usage=ChannelUsage.NOT_USED_FOR_FULL_CIRCS)
    assert all(tick(padding, T0 + second).action is Housekeeping.NOTHING for second in range(1, 60))


def test_usage_marks_go_up_only():
    padding, _ = opened(policy(), usage=ChannelUsage.NOT_USED_FOR_FULL_CIRCS)
    padding.note_relay_received()
    assert padding.usage is ChannelUsage.NOT_USED_FOR_FULL_CIRCS, "directory traffic on a one-hop circuit"
    padding.note_relay_early_sent()
    assert padding.usage is ChannelUsage.USED_FOR_FULL_CIRCS
    padding.note_relay_received()
    assert padding.usage is ChannelUsage.USED_FOR_USER_TRAFFIC
    padding.note_relay_early_sent()
    assert padding.usage is ChannelUsage.USED_FOR_USER_TRAFFIC


def test_pad_before_usage_0_waits_for_user_traffic():
    padding, _ = opened(policy(pad_before_usage=False))
    assert all(tick(padding, T0 + second).action is Housekeeping.NOTHING for second in range(1, 30))
    padding.note_relay_received()
    assert first_padding_time(padding, start=T0 + 30) > T0 + 30


def test_padding_comes_within_the_range_after_the_last_activity():
    padding, _ = opened(policy(seed=11))
    for _ in range(200):
        sent = first_padding_time(padding, start=padding.last_activity, step=0.25)
        assert 1.5 <= sent - padding.last_activity < 9.5
        padding.last_written = sent  # the adapter wrote the PADDING cell


def test_the_timer_waits_until_the_deadline_is_within_the_horizon():
    padding, _ = opened(policy(ito_low_ms=5000, ito_high_ms=5000))
    assert tick(padding, T0 + 1).action is Housekeeping.NOTHING
    assert tick(padding, T0 + 3.8).action is Housekeeping.NOTHING  # 1.2 s to go
    assert tick(padding, T0 + 4.5) == HousekeepingResult(Housekeeping.SCHEDULE_PADDING, pytest.approx(0.5))
    assert tick(padding, T0 + 4.6, timer_pending=True).action is Housekeeping.NOTHING
    assert padding.padding_due(busy=False)


def test_activity_after_the_timer_started_cancels_the_pad():
    padding, _ = opened(policy(ito_low_ms=5000, ito_high_ms=5000))
    assert tick(padding, T0 + 4.5).action is Housekeeping.SCHEDULE_PADDING
    padding.last_read = T0 + 4.7  # a cell came in
    assert not padding.padding_due(busy=False)
    # The next deadline counts from that activity.
    assert tick(padding, T0 + 9.0) == HousekeepingResult(Housekeeping.SCHEDULE_PADDING, pytest.approx(0.7))


def test_a_busy_link_is_not_padded():
    padding, _ = opened(policy(ito_low_ms=5000, ito_high_ms=5000))
    assert tick(padding, T0 + 4.5).action is Housekeeping.SCHEDULE_PADDING
    assert not padding.padding_due(busy=True)
    assert tick(padding, T0 + 6, busy=True).action is Housekeeping.NOTHING


def test_a_deadline_already_past_pads_at_once():
    padding, _ = opened(policy(ito_low_ms=2000, ito_high_ms=2000))
    assert tick(padding, T0 + 3.5).action is Housekeeping.SEND_PADDING


def test_a_deadline_beyond_the_largest_timeout_means_the_clock_jumped():
    padding, _ = opened(policy(ito_low_ms=5000, ito_high_ms=5000))
    padding.last_read = T0 + 100  # the clock went back 100 s after this activity
    assert tick(padding, T0 + 1).action is Housekeeping.SEND_PADDING


# ------------------------------------------------------------------------------------------------ idle links

@pytest.mark.parametrize(("reduced", "low", "high"), [(False, 180, 270), (True, 90, 135)])
def test_idle_timeout_is_drawn_in_tors_range(reduced, low, high):
    timeouts = {opened(policy(reduced=reduced, seed=seed))[0].idle_timeout for seed in range(300)}
    assert min(timeouts) >= low and max(timeouts) < high
    assert max(timeouts) - min(timeouts) > (high - low) * 0.8, "the timeout is random"


def test_a_link_without_circuits_closes_after_its_idle_timeout():
    padding, _ = opened(policy(connection_padding=False), usage=ChannelUsage.NOT_USED_FOR_FULL_CIRCS)
    assert tick(padding, T0 + 1, circuits=True).action is Housekeeping.NOTHING
    last_circuit = T0 + 50
    assert tick(padding, last_circuit, circuits=True).action is Housekeeping.NOTHING
    padding.last_read = padding.last_written = last_circuit
    timeout = padding.idle_timeout
    assert CLIENT_IDLE_TIMEOUT_BASE <= timeout
    assert tick(padding, last_circuit + timeout - 1, circuits=False).action is Housekeeping.NOTHING
    assert tick(padding, last_circuit + timeout, circuits=False).action is Housekeeping.CLOSE_IDLE


def test_the_idle_clock_starts_at_the_first_look():
    padding, _ = opened(policy(), usage=ChannelUsage.NOT_USED_FOR_FULL_CIRCS)
    assert tick(padding, T0 + 1, circuits=False).action is Housekeeping.NOTHING
    assert tick(padding, T0 + padding.idle_timeout, circuits=False).action is Housekeeping.NOTHING
    assert tick(padding, T0 + 1 + padding.idle_timeout, circuits=False).action is Housekeeping.CLOSE_IDLE


def test_a_link_with_circuits_but_nothing_written_gets_a_keepalive_even_without_padding():
    padding, _ = opened(policy(connection_padding=False))
    assert tick(padding, T0 + KEEPALIVE_PERIOD - 1).action is Housekeeping.NOTHING
    assert tick(padding, T0 + KEEPALIVE_PERIOD, busy=True).action is Housekeeping.NOTHING
    assert tick(padding, T0 + KEEPALIVE_PERIOD).action is Housekeeping.SEND_KEEPALIVE
