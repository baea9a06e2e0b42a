"""The saved circuit build-time history is read from disk: any text either loads into a consistent history
or is refused with BuildTimesStateError, keeping nothing."""

from __future__ import annotations

import random

from hypothesis import given, strategies as st

from oppy.circuit.build_timeout import CBT_NCIRCUITS_TO_OBSERVE, BuildTimesStateError, CircuitBuildTimes
from tests.unit.fuzz.budget import FUZZ

NUMBER = st.one_of(st.integers(0, 3000).map(str), st.integers(-5, 2**33).map(str),
                   st.text("0123456789x- ", max_size=6))
LINE = st.one_of(
    st.tuples(st.just("TotalBuildTimes"), NUMBER).map(" ".join),
    st.tuples(st.just("CircuitBuildAbandonedCount"), NUMBER).map(" ".join),
    st.tuples(st.just("CircuitBuildTimeBin"), NUMBER, NUMBER).map(" ".join),
    st.text(max_size=30),
)


@FUZZ
@given(st.lists(LINE, max_size=12))
def test_any_saved_history_loads_consistently_or_is_refused(lines):
    times = CircuitBuildTimes(rng=random.Random(0))
    try:
        times.load_state(lines)
    except BuildTimesStateError:
        assert times.total_build_times == 0 and times.build_times == []
        return
    assert times.total_build_times == len(times.build_times) <= CBT_NCIRCUITS_TO_OBSERVE
    reloaded = CircuitBuildTimes(rng=random.Random(1))
    reloaded.load_state(times.state_lines())
    assert reloaded.state_lines() == times.state_lines()
