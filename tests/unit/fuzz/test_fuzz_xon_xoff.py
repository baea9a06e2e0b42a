"""XON/XOFF (oppy.stream.xon_xoff) fed by the exit and by the local client: any XON/XOFF body is taken or
refused with FlowControlError and nothing changes, an XON's rate sets the rate limit tor would; any sequence of
arrivals and drains keeps tor's order (XOFF, then an XON before the next XOFF) and advises rates an XON can
carry; whatever the packaging does, the rate limit lets out no more than its burst and its rate allow."""

from __future__ import annotations

from hypothesis import given, strategies as st

from oppy.cell.commands import RELAY_PAYLOAD_LEN
from oppy.cell.relay import decode_xon_body, encode_xon_body
from oppy.stream.xon_xoff import (
    FlowControlError,
    FlowControlParams,
    RateLimit,
    SendXoff,
    SendXon,
    StreamFlowControl,
)
from tests.unit.fuzz.budget import FUZZ

PARAMS = st.builds(FlowControlParams.from_consensus, st.dictionaries(
    st.sampled_from(["cc_xoff_client", "cc_xoff_exit", "cc_xon_rate", "cc_xon_change_pct", "cc_xon_ewma_cnt"]),
    st.integers(-10, 20000)))
BODY = st.one_of(st.binary(max_size=12), st.integers(0, 2**32 - 1).map(encode_xon_body))


@FUZZ
@given(PARAMS, st.lists(st.tuples(st.sampled_from(["xon", "xoff"]), BODY), max_size=20),
       st.integers(0, 10**8))
def test_any_cell_from_the_exit_is_obeyed_or_refused_without_a_trace(params, cells, sent):
    flow = StreamFlowControl(params)
    flow.data_sent(sent)
    for command, body in cells:
        before = vars(flow).copy()
        limit_before = flow.rate_limit
        try:
            if command == "xon":
                flow.xon_received_cell(body, 5.0)
            else:
                flow.xoff_received_cell(body)
        except FlowControlError:
            assert vars(flow) == before
            continue
        assert flow.may_send is (command == "xon")
        if command == "xoff":
            assert flow.rate_limit is limit_before
            continue
        rate = decode_xon_body(body) * 1000
        if rate == 0 or rate > 2**31 - 1:
            assert flow.rate_limit is None
        else:
            assert flow.rate_limit.rate == rate and flow.rate_limit.level <= rate


@FUZZ
@given(PARAMS, st.lists(st.tuples(st.booleans(), st.integers(0, 5 * 10**6), st.integers(0, 2 * 10**6),
                                  st.floats(0, 5)), max_size=60))
def test_arrivals_and_drains_alternate_xoff_and_xon(params, steps):
    flow = StreamFlowControl(params)
    now = 1000.0
    xoff_outstanding = False
    for arrival, buffered, written, wait in steps:
        now += wait
        cell = flow.data_received(buffered, now) if arrival else flow.drained(written, buffered, now)
        if isinstance(cell, SendXoff):
            assert not xoff_outstanding and buffered > params.xoff_client_bytes
            xoff_outstanding = True
        elif isinstance(cell, SendXon):
            assert 0 <= cell.kbps_ewma < 2**32 and len(cell.body) == 5
            if xoff_outstanding:
                assert buffered == 0  # the XON after an XOFF waits until nothing is queued
            xoff_outstanding = False
        else:
            assert cell is None
        assert flow.xoff_sent is xoff_outstanding


@FUZZ
@given(st.integers(1, 100_000), st.lists(st.tuples(st.floats(0, 2), st.integers(0, 300)), max_size=60))
def test_the_rate_limit_lets_out_no_more_than_its_burst_and_rate(kbps, steps):
    """A packager that sends up to what `cells` allows at each step (a flush) sends at most one second's
    worth, plus the rate over the time passed, plus the last cell's overshoot."""
    rate = kbps * 1000
    limit = RateLimit(rate, 0.0)
    now = sent = 0.0
    for wait, wanted in steps:
        now += wait
        limit.refill(now)
        cells = min(wanted, limit.cells)
        limit.level -= cells * RELAY_PAYLOAD_LEN
        sent += cells * RELAY_PAYLOAD_LEN
        assert sent <= rate + rate * now + RELAY_PAYLOAD_LEN + 1e-3  # (float rounding)
        assert -RELAY_PAYLOAD_LEN < limit.level <= rate
        assert limit.delay() >= 0.1
