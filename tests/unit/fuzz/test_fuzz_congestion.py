"""Fuzz the congestion-control inputs from outside: any consensus `params` values, and any sequence of sends and
SENDME round trips (including zero, huge and backwards times) the exit's answers can produce."""

from __future__ import annotations

from hypothesis import given, strategies as st

from oppy.circuit.congestion import (
    CC_ALG_SENDME,
    CC_ALG_VEGAS,
    CC_CWND_INIT,
    CC_CWND_MAX,
    CC_CWND_MIN,
    CC_SENDME_INC,
    CongestionParams,
    VegasController,
)
from tests.unit.fuzz.budget import FUZZ

INT32 = st.integers(-2**31, 2**31 - 1)
NAMES = ["cc_alg", "cc_sendme_inc", "cc_cwnd_init", "cc_cwnd_min", "cc_cwnd_max", "cc_cwnd_inc",
         "cc_cwnd_inc_pct_ss", "cc_cwnd_inc_rate", "cc_bwe_min", "cc_ewma_cwnd_pct", "cc_ewma_max", "cc_ewma_ss",
         "cc_rtt_reset_pct", "cc_ss_max", "cc_sscap_exit", "cc_vegas_alpha_exit", "cc_vegas_beta_exit",
         "cc_vegas_gamma_exit", "cc_vegas_delta_exit", "cc_cwnd_full_gap", "cc_cwnd_full_minpct",
         "cc_cwnd_full_per_cwnd", "unrelated"]


@FUZZ
@given(st.dictionaries(st.sampled_from(NAMES), INT32))
def test_any_consensus_values_give_parameters_within_tors_bounds(params):
    parsed = CongestionParams.from_consensus(params)
    assert parsed.cc_alg in (CC_ALG_SENDME, CC_ALG_VEGAS)
    assert CC_SENDME_INC.low <= parsed.sendme_inc <= CC_SENDME_INC.high
    assert CC_CWND_INIT.low <= parsed.cwnd_init <= CC_CWND_INIT.high
    assert CC_CWND_MIN.low <= parsed.cwnd_min <= CC_CWND_MIN.high
    assert CC_CWND_MAX.low <= parsed.cwnd_max <= CC_CWND_MAX.high


EVENTS = st.lists(st.one_of(
    st.tuples(st.just("send"), st.integers(0, 2000)),
    st.tuples(st.just("sendme"), st.integers(-10**6, 10**10), st.booleans()),
), max_size=200)


@FUZZ
@given(st.dictionaries(st.sampled_from(NAMES), INT32), st.integers(1, 254), EVENTS)
def test_any_round_trips_keep_the_window_sane(params, sendme_inc, events):
    parsed = CongestionParams.from_consensus(params)
    controller = VegasController(parsed, sendme_inc)
    now = 0
    sent = 0
    for event in events:
        if event[0] == "send":
            count = min(event[1], controller.room)
            triggers = (sent + count) // sendme_inc - sent // sendme_inc
            controller.cells_sent(count, triggers, now)
            sent += count
        elif controller.inflight >= sendme_inc:  # the circuit checks that a SENDME was owed
            now = max(0, now + event[1])
            controller.sendme_received(now, event[2])
            # tor clamps to cc_cwnd_max after each SENDME (cc_cwnd_init may start above it).
            assert controller.cwnd <= parsed.cwnd_max
        assert controller.cwnd >= 0
        assert controller.inflight >= 0 and controller.room == max(controller.cwnd - controller.inflight, 0)
        assert controller.rtt_usec >= 0 and 0 <= controller.min_rtt_usec
