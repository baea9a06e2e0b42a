"""Congestion control for the sending side of a circuit hop, sans IO: TOR_VEGAS (proposal 324, tor-spec
"Congestion control"), as tor 0.4.9 runs it (congestion_control_common.c, congestion_control_vegas.c).

A hop runs it once the exit accepted the congestion-control request of the ntor-v3 handshake (extension 02
with its `sendme_inc`). The circuit counts the DATA cells it sends (`inflight`) and may send while
`inflight < cwnd`; the exit answers every `sendme_inc`-th cell with an authenticated SENDME. The time from
sending that cell to its SENDME is one RTT sample; each SENDME then runs the Vegas rules once, a few integer
operations. Nothing here runs per cell.

`CongestionParams` is what the consensus says (its `params` line, each value clamped into tor's bounds as
networkstatus_get_param does); `VegasController` is one hop's state.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, replace
from typing import Mapping

from oppy.crypto.ntor_v3 import CC_SENDME_INC_TOLERANCE
from oppy.netdoc.params import ConsensusParam

log = logging.getLogger(__name__)

# tor-spec "Congestion control" / congestion_control_st.h: the algorithms cc_alg names.
CC_ALG_SENDME = 0  # the fixed windows of tor-spec "Flow control"
CC_ALG_VEGAS = 2
# congestion_control_common.c: a cc_alg tor does not run (Westwood 1, NOLA 3, both removed) falls back to
# the default; the range itself is [0, NUM_CC_ALGS - 1].
_CC_ALG_MAX = 3

# or.h TLS_RECORD_MAX_CELLS: the cells of one TLS record, the unit most defaults are counted in.
TLS_RECORD_MAX_CELLS = (16 * 1024) // 514
# congestion_control_vegas.c: one outbuf holds two TLS records of cells.
_OUTBUF_CELLS = 2 * TLS_RECORD_MAX_CELLS
_INT32_MAX = 2**31 - 1
_INT16_MAX = 2**15 - 1

# congestion_control_common.c time_delta_stalled_or_jumped: an RTT sample more than this many times away from
# the EWMA is a clock jump, not a measurement.
DELTA_DISCREPANCY_RATIO_MAX = 5000


# congestion_control_common.c congestion_control_new_consensus_params / congestion_control_init_params.
CC_ALG = ConsensusParam("cc_alg", CC_ALG_VEGAS, 0, _CC_ALG_MAX)
CC_SENDME_INC = ConsensusParam("cc_sendme_inc", TLS_RECORD_MAX_CELLS, 1, 254)
CC_CWND_INIT = ConsensusParam("cc_cwnd_init", 4 * TLS_RECORD_MAX_CELLS, TLS_RECORD_MAX_CELLS, 10000)
CC_CWND_MIN = ConsensusParam("cc_cwnd_min", 4 * TLS_RECORD_MAX_CELLS, TLS_RECORD_MAX_CELLS, 1000)
CC_CWND_MAX = ConsensusParam("cc_cwnd_max", _INT32_MAX, 500, _INT32_MAX)
CC_CWND_INC = ConsensusParam("cc_cwnd_inc", 1, 1, 1000)
CC_CWND_INC_PCT_SS = ConsensusParam("cc_cwnd_inc_pct_ss", 100, 1, 500)
CC_CWND_INC_RATE = ConsensusParam("cc_cwnd_inc_rate", TLS_RECORD_MAX_CELLS, 1, 250)
CC_BWE_MIN = ConsensusParam("cc_bwe_min", 5, 2, 20)
CC_EWMA_CWND_PCT = ConsensusParam("cc_ewma_cwnd_pct", 50, 1, 255)
CC_EWMA_MAX = ConsensusParam("cc_ewma_max", 10, 2, _INT32_MAX)
CC_EWMA_SS = ConsensusParam("cc_ewma_ss", 2, 2, _INT32_MAX)
CC_RTT_RESET_PCT = ConsensusParam("cc_rtt_reset_pct", 100, 0, 100)
# congestion_control_vegas.c congestion_control_vegas_set_params, for exit circuits (three hops: the
# defaults count three outbufs of cells).
CC_SS_MAX = ConsensusParam("cc_ss_max", 5000, 500, _INT32_MAX)
CC_SSCAP_EXIT = ConsensusParam("cc_sscap_exit", 500, 100, _INT32_MAX)
CC_VEGAS_ALPHA_EXIT = ConsensusParam("cc_vegas_alpha_exit", 2 * _OUTBUF_CELLS, 0, 1000)
CC_VEGAS_BETA_EXIT = ConsensusParam("cc_vegas_beta_exit", 4 * _OUTBUF_CELLS, 0, 1000)
CC_VEGAS_GAMMA_EXIT = ConsensusParam("cc_vegas_gamma_exit", 3 * _OUTBUF_CELLS, 0, 1000)
CC_VEGAS_DELTA_EXIT = ConsensusParam("cc_vegas_delta_exit", 6 * _OUTBUF_CELLS, 0, _INT32_MAX)
# The same, for the rendezvous circuit of an onion-service connection (CC_PATH_ONION: "Onion rends are six
# hops"); a single onion service's shorter path keeps the exit values (CC_PATH_ONION_SOS).
CC_SSCAP_ONION = ConsensusParam("cc_sscap_onion", 600, 100, _INT32_MAX)
CC_VEGAS_ALPHA_ONION = ConsensusParam("cc_vegas_alpha_onion", 3 * _OUTBUF_CELLS, 0, 1000)
CC_VEGAS_BETA_ONION = ConsensusParam("cc_vegas_beta_onion", 7 * _OUTBUF_CELLS, 0, 1000)
CC_VEGAS_GAMMA_ONION = ConsensusParam("cc_vegas_gamma_onion", 5 * _OUTBUF_CELLS, 0, 1000)
CC_VEGAS_DELTA_ONION = ConsensusParam("cc_vegas_delta_onion", 9 * _OUTBUF_CELLS, 0, _INT32_MAX)
CC_CWND_FULL_GAP = ConsensusParam("cc_cwnd_full_gap", 1, 0, _INT16_MAX)
CC_CWND_FULL_MINPCT = ConsensusParam("cc_cwnd_full_minpct", 75, 0, 100)
CC_CWND_FULL_PER_CWND = ConsensusParam("cc_cwnd_full_per_cwnd", 1, 0, 1)


@dataclass(frozen=True)
class CongestionParams:
    """The congestion-control parameters of one consensus (tor's defaults when it names none)."""

    cc_alg: int = CC_ALG.default
    sendme_inc: int = CC_SENDME_INC.default
    cwnd_init: int = CC_CWND_INIT.default
    cwnd_min: int = CC_CWND_MIN.default
    cwnd_max: int = CC_CWND_MAX.default
    cwnd_inc: int = CC_CWND_INC.default
    cwnd_inc_pct_ss: int = CC_CWND_INC_PCT_SS.default
    cwnd_inc_rate: int = CC_CWND_INC_RATE.default
    bwe_min: int = CC_BWE_MIN.default
    ewma_cwnd_pct: int = CC_EWMA_CWND_PCT.default
    ewma_max: int = CC_EWMA_MAX.default
    ewma_ss: int = CC_EWMA_SS.default
    rtt_reset_pct: int = CC_RTT_RESET_PCT.default
    ss_max: int = CC_SS_MAX.default
    sscap: int = CC_SSCAP_EXIT.default
    alpha: int = CC_VEGAS_ALPHA_EXIT.default
    beta: int = CC_VEGAS_BETA_EXIT.default
    gamma: int = CC_VEGAS_GAMMA_EXIT.default
    delta: int = CC_VEGAS_DELTA_EXIT.default
    cwnd_full_gap: int = CC_CWND_FULL_GAP.default
    cwnd_full_minpct: int = CC_CWND_FULL_MINPCT.default
    cwnd_full_per_cwnd: bool = bool(CC_CWND_FULL_PER_CWND.default)

    @classmethod
    def from_consensus(cls, params: Mapping[str, int]) -> "CongestionParams":
        """Read a consensus's `params` line as tor does; a cc_alg tor no longer runs means the default."""
        cc_alg = CC_ALG.read(params)
        if cc_alg not in (CC_ALG_SENDME, CC_ALG_VEGAS):
            log.warning("Unsupported congestion control algorithm %d in the consensus; using %d.", cc_alg,
                        CC_ALG.default)
            cc_alg = CC_ALG.default
        return cls(
            cc_alg, CC_SENDME_INC.read(params), CC_CWND_INIT.read(params), CC_CWND_MIN.read(params),
            CC_CWND_MAX.read(params), CC_CWND_INC.read(params), CC_CWND_INC_PCT_SS.read(params),
            CC_CWND_INC_RATE.read(params), CC_BWE_MIN.read(params), CC_EWMA_CWND_PCT.read(params),
            CC_EWMA_MAX.read(params), CC_EWMA_SS.read(params), CC_RTT_RESET_PCT.read(params),
            CC_SS_MAX.read(params), CC_SSCAP_EXIT.read(params), CC_VEGAS_ALPHA_EXIT.read(params),
            CC_VEGAS_BETA_EXIT.read(params), CC_VEGAS_GAMMA_EXIT.read(params), CC_VEGAS_DELTA_EXIT.read(params),
            CC_CWND_FULL_GAP.read(params), CC_CWND_FULL_MINPCT.read(params),
            bool(CC_CWND_FULL_PER_CWND.read(params)))

    def for_onion_service(self, params: Mapping[str, int]) -> "CongestionParams":
        """These parameters with the Vegas thresholds and slow-start cap of a rendezvous circuit
        (congestion_control_vegas_set_params for CC_PATH_ONION), read from the same consensus `params`."""
        return replace(self, sscap=CC_SSCAP_ONION.read(params), alpha=CC_VEGAS_ALPHA_ONION.read(params),
                       beta=CC_VEGAS_BETA_ONION.read(params), gamma=CC_VEGAS_GAMMA_ONION.read(params),
                       delta=CC_VEGAS_DELTA_ONION.read(params))

    def accepts_sendme_inc(self, sendme_inc: int) -> bool:
        """congestion_control_validate_sendme_increment: a peer's sendme_inc is taken only within 1 of the
        consensus's cc_sendme_inc (and never 0)."""
        return sendme_inc != 0 and abs(sendme_inc - self.sendme_inc) <= CC_SENDME_INC_TOLERANCE

    @property
    def enabled(self) -> bool:
        """Ask exits for congestion control (congestion_control_enabled: cc_alg is not the fixed windows)."""
        return self.cc_alg != CC_ALG_SENDME


def n_count_ewma(current: int, previous: int, count: int) -> int:
    """congestion_control_common.h n_count_ewma: an N-EWMA with alpha = 2/(N+1); the first sample as is."""
    if previous == 0:
        return current
    return (2 * current + (count - 1) * previous) // (count + 1)


def percent_max_mix(a: int, b: int, pct_max: int) -> int:
    """congestion_control_common.h percent_max_mix: pct_max percent of the larger plus the rest of the
    smaller."""
    high, low = max(a, b), min(a, b)
    return pct_max * high // 100 + (100 - pct_max) * low // 100


class VegasController:
    """TOR_VEGAS for one hop we send to: cwnd, inflight and the RTT/BDP estimates.

    The circuit calls `cells_sent` for each batch of DATA cells (with the send time when one of them is a
    SENDME trigger, every `sendme_inc`-th cell) and `sendme_received` for each of the hop's SENDMEs.
    Times are in microseconds of a monotonic clock. All attributes are read-only outside.
    """

    __slots__ = ("params", "sendme_inc", "cwnd", "inflight", "in_slow_start", "ewma_rtt_usec", "min_rtt_usec",
                 "max_rtt_usec", "bdp", "next_cc_event", "next_cwnd_event", "cwnd_full", "blocked_chan",
                 "clock_broken", "_pending_timestamps", "sendmes_received")

    def __init__(self, params: CongestionParams, sendme_inc: int) -> None:
        if sendme_inc <= 0:
            raise ValueError(f"sendme_inc must be positive, got {sendme_inc}")
        self.params = params
        #: Cells each SENDME acknowledges, as the exit chose in the handshake.
        self.sendme_inc = sendme_inc
        self.cwnd = params.cwnd_init
        self.inflight = 0
        self.in_slow_start = True
        self.ewma_rtt_usec = 0
        self.min_rtt_usec = 0
        self.max_rtt_usec = 0
        self.bdp = 0
        self.next_cc_event = self._cwnd_update_rate()
        self.next_cwnd_event = 0
        self.cwnd_full = False
        self.blocked_chan = False
        # tor keeps this process-wide (is_monotime_clock_broken); one hop's view is enough here.
        self.clock_broken = False
        # Send times of the SENDME-triggering cells not yet acknowledged, oldest first.
        self._pending_timestamps: collections.deque[int] = collections.deque()
        self.sendmes_received = 0

    def __repr__(self) -> str:
        return (f"<VegasController cwnd={self.cwnd} inflight={self.inflight} ss={int(self.in_slow_start)} "
                f"rtt={self.ewma_rtt_usec}us min_rtt={self.min_rtt_usec}us>")

    # ------------------------------------------------------------------------------------ read side

    @property
    def rtt_usec(self) -> int:
        """The smoothed RTT (tor's ewma_rtt_usec, which CIRC_BW reports as RTT in ms); 0 before any sample."""
        return self.ewma_rtt_usec

    @property
    def room(self) -> int:
        """DATA cells that may be sent now (congestion_control_get_package_window): cwnd - inflight, or 0."""
        room = self.cwnd - self.inflight
        return room if room > 0 else 0

    def can_send(self) -> bool:
        return self.inflight < self.cwnd

    # ------------------------------------------------------------------------------------ sending

    def cells_sent(self, count: int, triggers: int, now_usec: int) -> None:
        """`count` DATA cells went out at `now_usec`, `triggers` of them cells the hop will answer with a
        SENDME (congestion_control_note_cell_sent)."""
        self.inflight += count
        for _ in range(triggers):
            self._pending_timestamps.append(now_usec)

    # ------------------------------------------------------------------------------------ SENDMEs

    def sendme_received(self, now_usec: int, blocked_on_channel: bool = False) -> None:
        """One SENDME from the hop (its tag already checked): RTT, BDP, then the Vegas rules
        (congestion_control_vegas_process_sendme), then the consensus's ceiling on the cwnd
        (congestion_control_dispatch_cc_alg). The caller has checked that one was owed."""
        self._process_sendme(now_usec, blocked_on_channel)
        if self.cwnd > self.params.cwnd_max:
            self.cwnd = self.params.cwnd_max

    def _process_sendme(self, now_usec: int, blocked_on_channel: bool) -> None:
        self.sendmes_received += 1
        if self.next_cc_event:
            self.next_cc_event -= 1
        if self.next_cwnd_event:
            self.next_cwnd_event -= 1
        if self._pending_timestamps:
            sent_at = self._pending_timestamps.popleft()
        else:  # tor's dequeue_timestamp on an empty list (a BUG there) gives 0
            sent_at = 0
        rtt = self._update_rtt(now_usec - sent_at if now_usec >= sent_at else 0)
        if not self._update_bdp(rtt, blocked_on_channel):
            self.inflight -= self.sendme_inc
            return
        params = self.params
        bdp = self.bdp
        queue_use = self.cwnd - bdp if bdp <= self.cwnd else 0
        if self.inflight + params.cwnd_full_gap * self.sendme_inc >= self.cwnd:
            self.cwnd_full = True
        elif 100 * self.inflight < params.cwnd_full_minpct * self.cwnd:
            self.cwnd_full = False

        if self.in_slow_start:
            if queue_use < params.gamma and not self.blocked_chan:
                if self.cwnd_full:
                    increment = self._slow_start_increment()
                    self.cwnd += increment
                    # Leave slow start once its increment is no more than steady state would add.
                    if increment * self._sendmes_per_cwnd() <= params.cwnd_inc * params.cwnd_inc_rate:
                        self._exit_slow_start()
            else:
                # A congestion signal: the cwnd goes to the gamma threshold.
                self.cwnd = bdp + params.gamma
                self._exit_slow_start()
            if self.cwnd >= params.ss_max:
                self.cwnd = params.ss_max
                self._exit_slow_start()
        elif self.next_cc_event == 0:
            if queue_use > params.delta:
                self.cwnd = bdp + params.delta - params.cwnd_inc
            elif queue_use > params.beta or self.blocked_chan:
                self.cwnd -= params.cwnd_inc
            elif self.cwnd_full and queue_use < params.alpha:
                self.cwnd += params.cwnd_inc
            if self.cwnd < params.cwnd_min:
                self.cwnd = params.cwnd_min

        if self.next_cwnd_event == 0:
            self.next_cwnd_event = self._sendmes_per_cwnd()
        if self.next_cc_event == 0:
            self.next_cc_event = self._cwnd_update_rate()
        if params.cwnd_full_per_cwnd:
            if self.next_cwnd_event == self._sendmes_per_cwnd():
                self.cwnd_full = False
        elif self.next_cc_event == self._cwnd_update_rate():
            self.cwnd_full = False
        self.inflight -= self.sendme_inc

    # ------------------------------------------------------------------------------------ internals

    def _sendmes_per_cwnd(self) -> int:
        """SENDME_PER_CWND: the SENDMEs one cwnd brings, rounded."""
        return (self.cwnd + self.sendme_inc // 2) // self.sendme_inc

    def _cwnd_update_rate(self) -> int:
        """CWND_UPDATE_RATE: SENDMEs between two cwnd updates after slow start (cc_cwnd_inc_rate per cwnd)."""
        if self.in_slow_start:
            return self._sendmes_per_cwnd()
        per_update = self.params.cwnd_inc_rate * self.sendme_inc
        return (self.cwnd + per_update // 2) // per_update

    def _ewma_count(self) -> int:
        """n_ewma_count: the N of the RTT's N-EWMA, cc_ewma_ss in slow start, else a share of a cwnd."""
        params = self.params
        if self.in_slow_start:
            count = params.ewma_ss
        else:
            count = min(self._cwnd_update_rate() * params.ewma_cwnd_pct // 100, params.ewma_max)
        return max(count, 2)

    def _slow_start_increment(self) -> int:
        """rfc3742_ss_inc: Limited Slow Start (RFC 3742) above the cap, else a percentage of sendme_inc."""
        params = self.params
        if self.cwnd <= params.sscap:
            return (params.cwnd_inc_pct_ss * self.sendme_inc + 50) // 100
        return max((self.sendme_inc * params.sscap + self.cwnd) // (2 * self.cwnd), 1)

    def _exit_slow_start(self) -> None:
        if self.in_slow_start:
            log.debug("congestion control leaves slow start at cwnd %d (rtt %d us, min %d us)", self.cwnd,
                      self.ewma_rtt_usec, self.min_rtt_usec)
        self.in_slow_start = False

    def _clock_stalled_or_jumped(self, old_delta: int, new_delta: int) -> bool:
        """time_delta_stalled_or_jumped: a zero RTT is a stalled clock; once out of slow start, one 5000
        times off the EWMA is a jump."""
        if new_delta == 0:
            self.clock_broken = True
            return True
        if self.in_slow_start or not self.ewma_rtt_usec:
            return False
        if old_delta > new_delta * DELTA_DISCREPANCY_RATIO_MAX:
            log.info("Sudden decrease in circuit RTT (%d vs %d ms), likely a clock jump.", new_delta // 1000,
                     old_delta // 1000)
            return self.clock_broken
        if new_delta > old_delta * DELTA_DISCREPANCY_RATIO_MAX:
            log.info("Sudden increase in circuit RTT (%d vs %d ms), likely a clock jump or a suspended "
                     "exit.", new_delta // 1000, old_delta // 1000)
            return True
        self.clock_broken = False
        return False

    def _update_rtt(self, rtt: int) -> int:
        """congestion_control_update_circuit_rtt: the sample, or 0 when the clock cannot be trusted."""
        if self._clock_stalled_or_jumped(self.ewma_rtt_usec, rtt):
            return 0
        self.ewma_rtt_usec = n_count_ewma(rtt, self.ewma_rtt_usec, self._ewma_count())
        if rtt > self.max_rtt_usec:
            self.max_rtt_usec = rtt
        if self.min_rtt_usec == 0:
            self.min_rtt_usec = self.ewma_rtt_usec
        elif self.cwnd == self.params.cwnd_min and not self.in_slow_start:
            # Out of a wedge: an abnormally low min RTT held the cwnd at its minimum.
            self.min_rtt_usec = percent_max_mix(self.ewma_rtt_usec, self.min_rtt_usec, self.params.rtt_reset_pct)
        elif self.ewma_rtt_usec < self.min_rtt_usec:
            self.min_rtt_usec = self.ewma_rtt_usec
        return rtt

    def _update_bdp(self, rtt: int, blocked_on_channel: bool) -> bool:
        """congestion_control_update_circuit_bdp: the cwnd-RTT estimate cwnd * min_rtt / ewma_rtt; a
        channel that (un)blocks is a congestion event at once. False: nothing was measured this time."""
        if not self.ewma_rtt_usec:
            # The clock never gave a sample: the estimate is the cwnd itself (tor subtracts the circuit's
            # channel queue, which oppy does not keep per circuit).
            self.bdp = self.cwnd
            self.blocked_chan = blocked_on_channel
            return blocked_on_channel
        self.bdp = self.cwnd * self.min_rtt_usec // self.ewma_rtt_usec
        if blocked_on_channel != self.blocked_chan:
            self.blocked_chan = blocked_on_channel
            self.next_cc_event = 0
        return blocked_on_channel or rtt != 0
