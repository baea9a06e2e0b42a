"""The Vegas controller (prop 324, tor's congestion_control_vegas.c) fed scripted SENDME round trips, and the
consensus parameters it reads. Each expected cwnd is worked by hand from the formulas in the comments."""

from __future__ import annotations

import collections

import pytest

from oppy.circuit.congestion import CongestionParams, VegasController, n_count_ewma, percent_max_mix

RTT = 50_000  # usec


class Sender:
    """A sender that keeps the window full: after each SENDME it sends all the room there is, and every
    sendme_inc-th cell is a trigger whose SENDME comes back `rtt` after it was sent."""

    def __init__(self, controller: VegasController) -> None:
        self.cc = controller
        self.sent = 0
        self.now = 0
        self.trigger_times: collections.deque[int] = collections.deque()
        self.fill()

    def fill(self) -> None:
        count = self.cc.room
        inc = self.cc.sendme_inc
        triggers = (self.sent + count) // inc - self.sent // inc
        self.trigger_times.extend([self.now] * triggers)
        self.cc.cells_sent(count, triggers, self.now)
        self.sent += count

    def sendme(self, rtt: int) -> int:
        """The SENDME for the oldest trigger arrives `rtt` after it left; returns the cwnd after it."""
        self.now = self.trigger_times.popleft() + rtt
        self.cc.sendme_received(self.now)
        self.fill()
        return self.cc.cwnd


def test_defaults_are_tor_049s():
    params = CongestionParams.from_consensus({})
    assert params == CongestionParams()
    assert (params.cc_alg, params.sendme_inc, params.cwnd_init, params.cwnd_min, params.cwnd_inc,
            params.cwnd_inc_rate, params.cwnd_inc_pct_ss) == (2, 31, 124, 124, 1, 31, 100)
    # Three outbufs of two TLS records (31 cells) each: alpha 2, beta 4, gamma 3, delta 6 outbufs.
    assert (params.alpha, params.beta, params.gamma, params.delta) == (124, 248, 186, 372)
    assert (params.sscap, params.ss_max, params.bwe_min, params.ewma_cwnd_pct, params.ewma_max,
            params.ewma_ss) == (500, 5000, 5, 50, 10, 2)
    assert params.enabled


@pytest.mark.parametrize("consensus, field, expected", [
    ({"cc_alg": 0}, "cc_alg", 0),
    ({"cc_alg": 1}, "cc_alg", 2),        # Westwood is gone from tor: the default
    ({"cc_alg": 9}, "cc_alg", 2),        # clamped to 3 (NOLA, also gone): the default
    ({"cc_alg": -1}, "cc_alg", 0),       # clamped up to 0
    ({"cc_sendme_inc": 0}, "sendme_inc", 1),
    ({"cc_sendme_inc": 300}, "sendme_inc", 254),
    ({"cc_cwnd_init": 5}, "cwnd_init", 31),
    ({"cc_cwnd_init": 20000}, "cwnd_init", 10000),
    ({"cc_cwnd_min": 5000}, "cwnd_min", 1000),
    ({"cc_cwnd_max": 10}, "cwnd_max", 500),
    ({"cc_cwnd_inc": 0}, "cwnd_inc", 1),
    ({"cc_cwnd_inc_pct_ss": 900}, "cwnd_inc_pct_ss", 500),
    ({"cc_cwnd_inc_rate": 251}, "cwnd_inc_rate", 250),
    ({"cc_bwe_min": 1}, "bwe_min", 2),
    ({"cc_ewma_cwnd_pct": 0}, "ewma_cwnd_pct", 1),
    ({"cc_ewma_max": 1}, "ewma_max", 2),
    ({"cc_ewma_ss": 1}, "ewma_ss", 2),
    ({"cc_ss_max": 100}, "ss_max", 500),
    ({"cc_sscap_exit": 600}, "sscap", 600),
    ({"cc_vegas_alpha_exit": 186}, "alpha", 186),
    ({"cc_vegas_beta_exit": 1001}, "beta", 1000),
    ({"cc_vegas_gamma_exit": -3}, "gamma", 0),
    ({"cc_vegas_delta_exit": 310}, "delta", 310),
    ({"cc_cwnd_full_gap": 4}, "cwnd_full_gap", 4),
    ({"cc_cwnd_full_minpct": 101}, "cwnd_full_minpct", 100),
    ({"cc_cwnd_full_per_cwnd": 0}, "cwnd_full_per_cwnd", False),
    ({"cc_rtt_reset_pct": 150}, "rtt_reset_pct", 100),
])
def test_consensus_values_are_clamped_as_tor_clamps_them(consensus, field, expected):
    assert getattr(CongestionParams.from_consensus(consensus), field) == expected


def test_rendezvous_circuits_have_tor_s_onion_path_thresholds():
    # congestion_control_vegas.c CC_PATH_ONION ("Onion rends are six hops"): alpha 3, beta 7, gamma 5 and
    # delta 9 outbufs of 62 cells, slow-start cap 600; everything else as for exits.
    params = CongestionParams().for_onion_service({})
    assert (params.alpha, params.beta, params.gamma, params.delta, params.sscap) == (186, 434, 310, 558, 600)
    assert params.sendme_inc == 31 and params.cwnd_init == 124 and params.enabled
    consensus = {"cc_vegas_alpha_onion": 100, "cc_vegas_beta_onion": 2000, "cc_vegas_gamma_onion": 200,
                 "cc_vegas_delta_onion": 300, "cc_sscap_onion": 50, "cc_vegas_alpha_exit": 1, "cc_sendme_inc": 30}
    onion = CongestionParams.from_consensus(consensus).for_onion_service(consensus)
    # The onion names, clamped as tor clamps them (beta at most 1000, the cap at least 100); the exit
    # names do not apply; the common ones do.
    assert (onion.alpha, onion.beta, onion.gamma, onion.delta, onion.sscap) == (100, 1000, 200, 300, 100)
    assert onion.sendme_inc == 30


@pytest.mark.parametrize("sendme_inc, taken", [(0, False), (29, False), (30, True), (31, True), (32, True),
                                               (33, False), (255, False)])
def test_a_peer_s_sendme_inc_is_taken_within_one_of_the_consensus(sendme_inc, taken):
    assert CongestionParams().accepts_sendme_inc(sendme_inc) is taken


def test_cc_alg_zero_turns_congestion_control_off():
    assert not CongestionParams.from_consensus({"cc_alg": 0}).enabled


def test_the_ewma_and_the_min_mix_are_tors():
    assert n_count_ewma(90, 0, 2) == 90                 # the first sample as it is
    assert n_count_ewma(90, 30, 2) == (2 * 90 + 30) // 3 == 70
    assert percent_max_mix(40, 100, 100) == 100 and percent_max_mix(40, 100, 0) == 40
    assert percent_max_mix(40, 100, 50) == 70


def test_room_is_cwnd_minus_inflight():
    cc = VegasController(CongestionParams(), 31)
    assert (cc.cwnd, cc.inflight, cc.room, cc.can_send()) == (124, 0, 124, True)
    cc.cells_sent(124, 4, 0)
    assert (cc.room, cc.can_send()) == (0, False)
    with pytest.raises(ValueError):
        VegasController(CongestionParams(), 0)


def test_slow_start_then_a_congestion_signal_then_steady_state():
    cc = VegasController(CongestionParams(), 31)
    sender = Sender(cc)
    assert (cc.inflight, cc.rtt_usec, cc.min_rtt_usec) == (124, 0, 0)

    # Slow start, no queue (ewma == min RTT, so bdp = cwnd * min / ewma = cwnd and queue_use = 0), the window
    # full (inflight + 1 * 31 >= cwnd): every SENDME adds (100% * 31 + 50) // 100 = 31 up to the cap of 500.
    trajectory = [sender.sendme(RTT) for _ in range(13)]
    assert trajectory == [124 + 31 * k for k in range(1, 14)]           # 155 ... 527
    assert cc.in_slow_start and cc.rtt_usec == cc.min_rtt_usec == RTT
    # Above cc_sscap_exit (500), RFC 3742: inc = max((31 * 500 + cwnd) // (2 * cwnd), 1).
    assert sender.sendme(RTT) == 527 + (15500 + 527) // 1054 == 527 + 15  # 542
    assert sender.sendme(RTT) == 542 + (15500 + 542) // 1084 == 542 + 14  # 556

    # The RTT quadruples: ewma = (2 * 200000 + 1 * 50000) // 3 = 150000 (N = cc_ewma_ss = 2);
    # bdp = 556 * 50000 // 150000 = 185; queue_use = 556 - 185 = 371 >= gamma (186): cwnd = bdp + gamma.
    assert sender.sendme(4 * RTT) == 185 + 186 == 371
    assert not cc.in_slow_start and cc.rtt_usec == 150000 and cc.min_rtt_usec == RTT

    # next_cc_event counted down through slow start: 4 SENDMEs for the first cwnd ((124 + 15) // 31), then
    # 8 (cwnd 248 after the 4th), then 16 (cwnd 496 after the 12th), 4 of which are gone: the 12th SENDME from
    # now updates the cwnd. Meanwhile the ewma falls back to 50000 ((2 * 50000 + ewma) // 3 each time).
    ewmas = []
    for _ in range(11):
        assert sender.sendme(RTT) == 371
        ewmas.append(cc.rtt_usec)
    assert ewmas == [83333, 61111, 53703, 51234, 50411, 50137, 50045, 50015, 50005, 50001, 50000]
    # bdp = cwnd, queue_use = 0 < alpha (124) with the window full: cwnd + cc_cwnd_inc (1). From then on
    # CWND_UPDATE_RATE = (372 + 31 * 31 // 2) // (31 * 31) = 0: every SENDME updates.
    assert [sender.sendme(RTT) for _ in range(2)] == [372, 373]
    # A 1 s sample: ewma = (2000000 + 50000) // 3 = 683333; bdp = 373 * 50000 // 683333 = 27;
    # queue_use = 346 > beta (248): cwnd - 1.
    assert sender.sendme(20 * RTT) == 372
    # ewma = (100000 + 683333) // 3 = 261111; bdp = 372 * 50000 // 261111 = 71; queue_use 301 > beta.
    assert sender.sendme(RTT) == 371 and cc.rtt_usec == 261111


def test_queue_use_above_delta_cuts_the_cwnd_to_the_delta_threshold():
    cc = VegasController(CongestionParams.from_consensus({"cc_vegas_delta_exit": 260}), 31)
    sender = Sender(cc)
    for _ in range(13):
        sender.sendme(RTT)
    sender.sendme(RTT)
    sender.sendme(RTT)
    assert sender.sendme(4 * RTT) == 371 and not cc.in_slow_start
    for _ in range(11 + 2):
        sender.sendme(RTT)
    assert cc.cwnd == 373
    # As above, bdp = 27 and queue_use = 346, now > delta (260): cwnd = bdp + delta - cwnd_inc.
    assert sender.sendme(20 * RTT) == 27 + 260 - 1 == 286


def test_a_window_not_in_use_does_not_grow():
    cc = VegasController(CongestionParams(), 31)
    cc.cells_sent(31, 1, 0)           # one trigger, far from the cwnd of 124
    cc.sendme_received(RTT)
    # 100 * 31 < 75 * 124: not full, so slow start does not add to it.
    assert (cc.cwnd, cc.inflight, cc.in_slow_start) == (124, 0, True)


def test_the_congestion_window_never_falls_below_cwnd_min():
    cc = VegasController(CongestionParams(delta=50), 31)
    sender = Sender(cc)
    assert sender.sendme(RTT) == 155  # slow start
    # ewma = (2 * 50 s + 50 ms) // 3 = 33350000; bdp = 155 * 50000 // ewma = 0; queue_use 155 < gamma (186):
    # slow start goes on, +31.
    assert sender.sendme(1000 * RTT) == 186
    # ewma = 44450000, bdp 0, queue_use 186 >= gamma: cwnd = 0 + 186, out of slow start.
    assert sender.sendme(1000 * RTT) == 186 and not cc.in_slow_start
    # next_cc_event (4 - 3 = 1) reaches 0: queue_use 186 > delta (50): cwnd = 0 + 50 - 1, raised to cwnd_min.
    assert sender.sendme(1000 * RTT) == 124 == cc.params.cwnd_min


def test_a_stalled_clock_gives_no_sample_and_changes_nothing():
    cc = VegasController(CongestionParams(), 31)
    cc.cells_sent(124, 4, 1000)
    cc.sendme_received(1000)          # zero RTT: monotime stalled
    assert (cc.cwnd, cc.rtt_usec, cc.min_rtt_usec, cc.inflight, cc.clock_broken) == (124, 0, 0, 93, True)
    cc.sendme_received(1000 + RTT)
    assert (cc.rtt_usec, cc.clock_broken) == (RTT, True)


def test_a_clock_jump_after_slow_start_is_ignored():
    cc = VegasController(CongestionParams(), 31)
    sender = Sender(cc)
    for _ in range(15):
        sender.sendme(RTT)
    sender.sendme(4 * RTT)
    assert not cc.in_slow_start
    ewma, cwnd = cc.rtt_usec, cc.cwnd
    # A sample more than 5000 times the ewma is a jump (or a suspended exit): nothing is updated.
    sender.sendme(ewma * 5000 + 1)
    assert (cc.rtt_usec, cc.cwnd, cc.max_rtt_usec) == (ewma, cwnd, 4 * RTT)


def test_a_blocked_channel_is_a_congestion_signal_in_slow_start():
    cc = VegasController(CongestionParams(), 31)
    Sender(cc)
    cc.sendme_received(RTT, blocked_on_channel=True)
    # bdp = cwnd (no queue), but the blocked channel: cwnd = bdp + gamma = 124 + 186, out of slow start.
    assert (cc.cwnd, cc.in_slow_start, cc.blocked_chan) == (310, False, True)


def test_slow_start_ends_at_cc_ss_max():
    cc = VegasController(CongestionParams(cwnd_init=490, ss_max=500), 31)
    Sender(cc)
    cc.sendme_received(RTT)
    assert (cc.cwnd, cc.in_slow_start) == (500, False)


def test_cc_cwnd_max_holds_after_every_sendme_even_one_that_measured_nothing():
    # cc_cwnd_init may start above cc_cwnd_max; tor clamps after each SENDME, whatever Vegas made of it
    # (congestion_control_dispatch_cc_alg), here a stalled clock's zero RTT.
    cc = VegasController(CongestionParams.from_consensus({"cc_cwnd_init": 600, "cc_cwnd_max": 500}), 31)
    assert cc.cwnd == 600
    cc.cells_sent(62, 2, 1000)
    cc.sendme_received(1000)
    assert (cc.cwnd, cc.rtt_usec, cc.inflight) == (500, 0, 31)
