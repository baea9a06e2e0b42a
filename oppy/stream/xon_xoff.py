"""XON/XOFF stream flow control, sans IO: what replaces stream windows on a congestion-controlled circuit.

Proposal 324 "Flow control" (tor-spec "Flow control with congestion control"), as tor 0.4.9's
congestion_control_flow.c runs it at the client end of a stream. Downloads: while the local client does not
read, bytes from the exit wait in the stream; once more than `cc_xoff_client` cells' worth wait, XOFF asks
the exit to stop. Once the wait is over (nothing queued), XON lets it go on and advises the rate at which
the client drained the stream (an EWMA in kilobytes/s), and a new XON goes out whenever that rate moves by
more than `cc_xon_change_pct` percent. Uploads: an XOFF from the exit stops the stream's packaging until its
XON, and an XON that advises a rate limits the packaging to it (:class:`RateLimit`, tor's token bucket) until
an XON without one. The exit's XON/XOFF are checked against the bytes we sent (tor's dropmark guard: more of
them than the bytes could have caused is a protocol warning, obeyed all the same).

:class:`StreamFlowControl` is fed byte counts and a clock value and returns the cell to send, if any; the
stream sends it. Nothing here is called per cell: once per read from the circuit, per delivery to the
client, per batch of DATA packaged.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Mapping

from oppy.cell.commands import RELAY_PAYLOAD_LEN, RelayCommand
from oppy.cell.errors import CellParseError
from oppy.cell.relay import decode_xoff_body, decode_xon_body, encode_xoff_body, encode_xon_body

log = logging.getLogger(__name__)

# prop 324 §6.5 / congestion_control_flow.c flow_control_new_consensus_params: (name, default, min, max).
# The XOFF limits and cc_xon_rate are in cells (of RELAY_PAYLOAD_LEN bytes), cc_xon_change_pct in percent,
# cc_xon_ewma_cnt the N of the drain rate's N-EWMA.
CC_XOFF_CLIENT = ("cc_xoff_client", 500, 1, 10000)
CC_XOFF_EXIT = ("cc_xoff_exit", 500, 1, 10000)
CC_XON_CHANGE_PCT = ("cc_xon_change_pct", 25, 1, 99)
CC_XON_RATE = ("cc_xon_rate", 500, 1, 5000)
CC_XON_EWMA_CNT = ("cc_xon_ewma_cnt", 2, 2, 100)

# congestion_control_flow.c: a burst of up to this many cells may sit in the buffer before it is written
# out; above it the buffer is taken as not draining (the advisory XON is reconsidered on arrival).
MAX_EXPECTED_CELL_BURST = 32
# congestion_control_flow.c: past these counts (or bytes sent), the counts and bytes are halved, so that old
# traffic does not excuse an arbitrary number of XON/XOFF later (the dropmark guard).
XON_COUNT_SCALE_AT = 200
XOFF_COUNT_SCALE_AT = 200
TOTAL_XMIT_SCALE_AT = 10 * (1 << 20)
# The drain-byte counter is a uint32_t in tor: halved before it would wrap.
_DRAINED_BYTES_MAX = 0xFFFFFFFF
# compute_drain_rate caps the rate at INT32_MAX.
_RATE_MAX = 0x7FFFFFFF
# circuit_process_stream_xon: an XON's kbps_ewma is in units of 1000 bytes/s; 0, or a rate past INT32_MAX
# bytes/s, sets no limit.
XON_RATE_UNIT = 1000
# tor's TokenBucketRefillInterval (100 ms by default): a connection its bucket stopped is looked at again on the
# next refill, so a stream held by its rate limit waits at least this long.
RATE_LIMIT_REFILL_INTERVAL = 0.1


class FlowControlEvent(enum.Enum):
    """An XON or XOFF sent or received on a stream: the STREAM event statuses tor reports for them
    (control-spec "Stream status changed")."""

    XOFF_SENT = "XOFF_SENT"
    XOFF_RECV = "XOFF_RECV"
    XON_SENT = "XON_SENT"
    XON_RECV = "XON_RECV"


class FlowControlError(Exception):
    """An XON or XOFF from the exit that is malformed or out of place; the stream ignores it (as tor does)."""


def _param(params: Mapping[str, int], spec: tuple[str, int, int, int]) -> int:
    """A consensus parameter, its default when absent, clamped to tor's bounds (networkstatus_get_param)."""
    name, default, low, high = spec
    return min(max(params.get(name, default), low), high)


@dataclass(frozen=True)
class FlowControlParams:
    """The consensus parameters of XON/XOFF, in bytes where tor keeps bytes."""

    xoff_client_bytes: int = CC_XOFF_CLIENT[1] * RELAY_PAYLOAD_LEN
    xoff_exit_bytes: int = CC_XOFF_EXIT[1] * RELAY_PAYLOAD_LEN
    xon_change_pct: int = CC_XON_CHANGE_PCT[1]
    xon_rate_bytes: int = CC_XON_RATE[1] * RELAY_PAYLOAD_LEN
    xon_ewma_cnt: int = CC_XON_EWMA_CNT[1]

    @classmethod
    def from_consensus(cls, params: Mapping[str, int]) -> "FlowControlParams":
        """A consensus ``params`` line's values; absent or out-of-range ones fall back as tor's do."""
        return cls(
            xoff_client_bytes=_param(params, CC_XOFF_CLIENT) * RELAY_PAYLOAD_LEN,
            xoff_exit_bytes=_param(params, CC_XOFF_EXIT) * RELAY_PAYLOAD_LEN,
            xon_change_pct=_param(params, CC_XON_CHANGE_PCT),
            xon_rate_bytes=_param(params, CC_XON_RATE) * RELAY_PAYLOAD_LEN,
            xon_ewma_cnt=_param(params, CC_XON_EWMA_CNT),
        )


@dataclass(frozen=True)
class SendXoff:
    """Send RELAY_XOFF on the stream: the local client has stopped reading."""

    command = RelayCommand.XOFF
    event = FlowControlEvent.XOFF_SENT
    body = encode_xoff_body()


@dataclass(frozen=True)
class SendXon:
    """Send RELAY_XON on the stream, advising `kbps_ewma` (1000 bytes/s; 0: no advice)."""

    kbps_ewma: int
    command = RelayCommand.XON
    event = FlowControlEvent.XON_SENT

    @property
    def body(self) -> bytes:
        return encode_xon_body(self.kbps_ewma)


class RateLimit:
    """The token bucket an exit's XON puts on what we package from the local client (tor's
    token_bucket_rw_adjust(&conn->bucket, rate, rate) on the edge connection, whose reads it bounds).

    `rate` bytes a second, at most one second's worth at once. Packaging goes on while `level` is above zero
    and takes what it sent off it, so it may end below zero by the last cell (tor's buckets may too). Times
    are seconds on a monotonic clock.
    """

    def __init__(self, rate: int, now: float) -> None:
        self.rate = rate
        self.level = float(rate)  # a new bucket is full (tor's was full at its unlimited rate, then capped)
        self._refilled_at = now

    def __repr__(self) -> str:
        return f"<RateLimit {self.rate} B/s level={self.level:.0f}>"

    def adjust(self, rate: int, now: float) -> None:
        """A new advised rate: the level is capped at the new burst, not refilled (token_bucket_raw_adjust)."""
        self.refill(now)
        self.rate = rate
        self.level = min(self.level, float(rate))

    def refill(self, now: float) -> None:
        """Add what `rate` gave since the last refill, up to one second's worth. A clock that went back adds
        nothing and counts from `now`."""
        elapsed = now - self._refilled_at
        if elapsed > 0:
            self.level = min(float(self.rate), self.level + elapsed * self.rate)
        self._refilled_at = now

    @property
    def cells(self) -> int:
        """How many DATA cells may be packaged now: as many as start while the level is above zero."""
        return -int(-self.level // RELAY_PAYLOAD_LEN) if self.level > 0 else 0

    def delay(self) -> float:
        """Seconds until a full cell's worth is back (at least tor's refill interval)."""
        return max(RATE_LIMIT_REFILL_INTERVAL, (RELAY_PAYLOAD_LEN - self.level) / self.rate)


def _n_count_ewma(current: int, previous: int, count: int) -> int:
    """tor's n_count_ewma: the N-EWMA of `current` over `previous` (the first value is taken as it is)."""
    if previous == 0:
        return current
    return (2 * current + (count - 1) * previous) // (count + 1)


class StreamFlowControl:
    """XON/XOFF for one client stream (tor's edge_connection_t flow-control fields).

    Downloads: `data_received` after data from the exit arrived, `drained` after some was handed to the
    client; both return a cell to send or None. Uploads: `xoff_received_cell` / `xon_received_cell` for the
    exit's cells, `data_sent` for what was packaged, `may_send` says whether packaging may go on, and
    `rate_limit` (None: none) how much of it. Times are seconds on a monotonic clock.
    """

    def __init__(self, params: FlowControlParams = FlowControlParams()) -> None:
        self.params = params
        # Downloads (we are the reader).
        self.xoff_sent = False
        self.xoffs_sent = 0
        self.xons_sent = 0
        self.ewma_drain_rate = 0  # kB/s
        self.ewma_rate_last_sent = 0
        self._drain_start_usec = 0
        self._drained_bytes = 0
        self._prev_drained_bytes = 0
        # Uploads (the exit reads).
        self.xoff_received = False
        self.advised_rate = 0  # the exit's last XON advice in kB/s (0: none)
        self.rate_limit: RateLimit | None = None
        self._total_bytes_xmit = 0
        self._num_xoff_recv = 0
        self._num_xon_recv = 0

    def __repr__(self) -> str:
        return (f"<StreamFlowControl xoff_sent={self.xoff_sent} xoff_received={self.xoff_received} "
                f"drain={self.ewma_drain_rate}kB/s>")

    # ---------------------------------------------------------------------------------- downloads

    def data_received(self, buffered: int, now: float) -> SendXoff | SendXon | None:
        """Data from the exit arrived and `buffered` bytes wait for the client (flow_control_decide_xoff)."""
        send: SendXoff | SendXon | None = None
        if buffered > self.params.xoff_client_bytes and not self.xoff_sent:
            log.info("Sending XOFF: %d bytes wait for the local client (the limit is %d)", buffered,
                     self.params.xoff_client_bytes)
            self.xoff_sent = True
            self.xoffs_sent += 1
            # The drain rate measured so far is wrong if the buffer filled up this far.
            self.ewma_drain_rate = 0
            send = SendXoff()
        if buffered > MAX_EXPECTED_CELL_BURST * RELAY_PAYLOAD_LEN:
            # More than a burst waits: the client is not draining (start measuring; an advisory XON may be
            # due). After an XOFF no XON can come of it: bytes still wait.
            xon = self.drained(0, buffered, now)
            send = send or xon
        return send

    def drained(self, written: int, buffered: int, now: float) -> SendXon | None:
        """`written` bytes went to the client and `buffered` still wait (flow_control_decide_xon)."""
        params = self.params
        if self._drained_bytes >= _DRAINED_BYTES_MAX - written:
            # Halve the count and move the start halfway to now, keeping the rate.
            self._drained_bytes //= 2
            if self._drain_start_usec:
                now_usec = int(now * 1_000_000)
                self._drain_start_usec = now_usec - (now_usec - self._drain_start_usec) // 2
        self._drained_bytes += written
        if not self._drain_start_usec and buffered > 0:
            # Buffering began: measure the drain rate from here.
            self._drain_start_usec = int(now * 1_000_000) or 1
            self._drained_bytes = 0
        if self._drain_start_usec and self._drained_bytes > params.xon_rate_bytes:
            if self._prev_drained_bytes == 0:
                self._prev_drained_bytes = self._drained_bytes
            rate = self._drain_rate(int(now * 1_000_000))
            self._prev_drained_bytes = self._drained_bytes
            if rate:
                self.ewma_drain_rate = _n_count_ewma(rate, self.ewma_drain_rate, params.xon_ewma_cnt)
                log.debug("Updating the drain rate: %d kB/s, EWMA %d kB/s, %d bytes buffered", rate,
                          self.ewma_drain_rate, buffered)
                self._drained_bytes = 0
                self._drain_start_usec = 0
        send = None
        if not self.xoff_sent:
            if self._drain_rate_changed():
                log.info("Sending a rate-change XON: %d -> %d kB/s, %d bytes buffered", self.ewma_rate_last_sent,
                         self.ewma_drain_rate, buffered)
                send = self._xon()
        elif buffered == 0:
            log.info("Sending XON: the local client has read what waited (drain rate %d kB/s)",
                     self.ewma_drain_rate)
            send = self._xon()
        if buffered == 0:
            self._drain_start_usec = 0
            if self._drained_bytes >= params.xon_rate_bytes and self.ewma_rate_last_sent:
                # Empty for xon_rate bytes: the client can take more than we advised.
                self.ewma_drain_rate = min(_RATE_MAX, 2 * self.ewma_drain_rate)
                self._prev_drained_bytes = self._drained_bytes
                self._drained_bytes = 0
        return send

    def _drain_rate(self, now_usec: int) -> int:
        """compute_drain_rate: kB/s over the bytes drained before the last computation (0: no time passed)."""
        delta = now_usec - self._drain_start_usec
        if delta <= 0:
            return 0
        prev = self._prev_drained_bytes
        if prev > _RATE_MAX // 1000 or prev // delta > _RATE_MAX // 1000:
            return _RATE_MAX
        return max(1, prev * 1000 // delta)

    def _drain_rate_changed(self) -> bool:
        last = self.ewma_rate_last_sent
        if not last:
            return False
        change = self.params.xon_change_pct
        return self.ewma_drain_rate > (100 + change) * last // 100 or \
            self.ewma_drain_rate < (100 - change) * last // 100

    def _xon(self) -> SendXon:
        self.ewma_rate_last_sent = self.ewma_drain_rate
        self.xoff_sent = False
        self.xons_sent += 1
        return SendXon(self.ewma_drain_rate)

    # ---------------------------------------------------------------------------------- uploads

    @property
    def may_send(self) -> bool:
        """The exit has not asked us to stop (or has said XON since)."""
        return not self.xoff_received

    def data_sent(self, length: int) -> None:
        """`length` bytes of the stream were packaged (flow_control_note_sent_data)."""
        if self._total_bytes_xmit >= TOTAL_XMIT_SCALE_AT - length:
            self._scale_down()
        self._total_bytes_xmit += length
        if self.rate_limit is not None:
            self.rate_limit.level -= length

    def _scale_down(self) -> None:
        self._total_bytes_xmit //= 2
        self._num_xoff_recv //= 2
        self._num_xon_recv //= 2

    def xoff_received_cell(self, body: bytes) -> None:
        """The exit's XOFF: stop packaging (circuit_process_stream_xoff). Raises FlowControlError for a
        malformed one or a second XOFF without an XON between (then nothing changes)."""
        try:
            decode_xoff_body(body)
        except CellParseError as exc:
            raise FlowControlError(f"malformed XOFF: {exc}") from None
        if self.xoff_received:
            raise FlowControlError("a second XOFF without an XON between")
        if self._num_xoff_recv == XOFF_COUNT_SCALE_AT:
            self._scale_down()
        self._num_xoff_recv += 1
        self._check_plausible("XOFF", self._num_xoff_recv, self.params.xoff_exit_bytes)
        log.info("Got XOFF: the stream's upload waits for the exit's XON")
        self.xoff_received = True

    def xon_received_cell(self, body: bytes, now: float) -> None:
        """The exit's XON: packaging may go on, at the rate it advises if it advises one
        (circuit_process_stream_xon). Raises FlowControlError for a malformed one (then nothing changes)."""
        try:
            rate = decode_xon_body(body)
        except CellParseError as exc:
            raise FlowControlError(f"malformed XON: {exc}") from None
        if self._num_xon_recv == XON_COUNT_SCALE_AT:
            self._scale_down()
        self._num_xon_recv += 1
        self._check_plausible("XON", self._num_xon_recv,
                              min(self.params.xoff_exit_bytes, self.params.xon_rate_bytes))
        log.info("Got XON: %d kB/s advised", rate)
        self.advised_rate = rate
        self.xoff_received = False
        limit = rate * XON_RATE_UNIT
        if rate == 0 or limit > _RATE_MAX:
            self.rate_limit = None
        elif self.rate_limit is None:
            self.rate_limit = RateLimit(limit, now)
        else:
            self.rate_limit.adjust(limit, now)

    def _check_plausible(self, what: str, count: int, bytes_each: int) -> None:
        """tor's dropmark guard: more XON/XOFF than our bytes sent could have caused is a protocol warning
        (obeyed all the same, as tor does)."""
        if self._total_bytes_xmit < bytes_each * count:
            log.info("Got more %s cells (%d) than the %d bytes sent on the stream could cause", what, count,
                     self._total_bytes_xmit)
