"""Circuit build timeout learning against simulated build times: the estimate is checked against the
path-spec 2.4.3 formulas computed here from the same times, and the life cycle (learning, measuring,
abandoning, network changes, persistence) against tor's circuitstats.c rules."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from oppy.circuit.build_timeout import (
    CBT_BUILD_ABANDONED,
    CONSENSUS_PARAMETERS,
    BuildTimeoutParameters,
    BuildTimeoutSet,
    BuildTimeoutSetKind,
    BuildTimesStateError,
    BuildTimesToSave,
    CircuitBuildTimes,
    TimeoutAction,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def learner(clock: FakeClock | None = None, seed: int = 1, **options) -> CircuitBuildTimes:
    return CircuitBuildTimes(clock=clock or FakeClock(), rng=random.Random(seed), **options)


def build(times: CircuitBuildTimes, milliseconds: int, any_open: bool = True) -> None:
    """One counted three-hop circuit built in `milliseconds`."""
    attempt = times.start_build(3, True, lambda: any_open)
    times.clock.now += milliseconds / 1000
    attempt.built()


def abandon(times: CircuitBuildTimes, count: int) -> None:
    """`count` measured circuits closed at their close timeout, the network live meanwhile."""
    times.network_is_live()
    for _ in range(count):
        created = times.clock.now
        times.clock.now += 1
        times.network_is_live()
        assert times.count_close(first_hop_done=True, created_at=created)


def time_out(times: CircuitBuildTimes, count: int, first_hop_done: bool = True) -> None:
    for _ in range(count):
        times.count_timeout(first_hop_done)


def pareto_times(count: int, xm: float, alpha: float, seed: int) -> list[int]:
    """Build times in ms drawn from Pareto(xm, alpha) by inverse transform sampling."""
    rng = random.Random(seed)
    return [round(xm / (1.0 - rng.random()) ** (1.0 / alpha)) for _ in range(count)]


def expected_fit(times_ms: list[int], num_modes: int = 10, quantile: float = 0.8, close_quantile: float = 0.99,
                 initial_ms: int = 60_000) -> tuple[int, float, float, float]:
    """(Xm, alpha, timeout_ms, close_ms) by path-spec 2.4.3, written out independently of the module."""
    built = [value for value in times_ms if value != CBT_BUILD_ABANDONED]
    bins = Counter(value // 10 for value in built)
    modes = sorted(bins.items(), key=lambda item: (-item[1], item[0]))[:num_modes]
    xm = sum((index * 10 + 5) * count for index, count in modes) // sum(count for _, count in modes)
    alpha = len(built) / sum(math.log(max(xm, value) / xm) for value in built)
    longest = max(built)
    timeout = min(xm * (1 - quantile) ** (-1 / alpha), longest)
    close = max(min(xm * (1 - close_quantile) ** (-1 / alpha), 2 * longest), initial_ms)
    return xm, alpha, timeout, close


# ------------------------------------------------------------------------------------------ parameters


def test_parameters_default_to_path_spec_and_are_clamped_to_their_bounds():
    defaults = BuildTimeoutParameters.from_consensus({})
    assert defaults == BuildTimeoutParameters()
    assert (defaults.num_modes, defaults.recent_count, defaults.max_timeouts) == (10, 20, 18)
    assert defaults.min_circuits == 100
    assert (defaults.quantile, defaults.close_quantile, defaults.initial_timeout_ms) == (80, 99, 60_000)
    low = BuildTimeoutParameters.from_consensus({name: -5 for name in CONSENSUS_PARAMETERS})
    high = BuildTimeoutParameters.from_consensus({name: 2**31 - 1 for name in CONSENSUS_PARAMETERS})
    for name, (field, _, minimum, maximum) in CONSENSUS_PARAMETERS.items():
        assert getattr(low, field) == minimum, name
        assert getattr(high, field) == maximum, name
    assert (high.max_open_circuits, high.learning_idle_timeout, high.quantile) == (14, 60_000, 99)


def test_dependent_bounds_are_raised_as_tor_raises_them():
    parameters = BuildTimeoutParameters.from_consensus({"cbtquantile": 90, "cbtclosequantile": 50,
                                                        "cbtmintimeout": 5000, "cbtinitialtimeout": 1000})
    assert parameters.close_quantile == 90
    assert parameters.initial_timeout_ms == 5000


# ------------------------------------------------------------------------------------------ learning


def test_the_initial_timeout_holds_until_cbtmincircs_times_are_recorded():
    times = learner()
    events = []
    times.add_observer(events.append)
    for _ in range(99):
        build(times, 200)
    assert (times.timeout, times.close_timeout) == (60.0, 60.0) and not times.enough_to_compute
    build(times, 300)
    assert times.enough_to_compute and times.have_computed_timeout
    assert times.timeout < 1.0
    computed = [event for event in events if isinstance(event, BuildTimeoutSet)]
    assert [event.kind for event in computed] == [BuildTimeoutSetKind.COMPUTED]
    assert [event.total_times for event in events if isinstance(event, BuildTimesToSave)] == list(range(10, 101, 10))


def test_a_lower_cbtmincircs_from_the_consensus_learns_sooner():
    times = learner()
    times.update_params({"cbtmincircs": 10})
    for milliseconds in (100, 110, 120, 130, 140, 150, 160, 170, 180):
        build(times, milliseconds)
    assert times.timeout == 60.0
    build(times, 500)
    assert times.timeout_ms == pytest.approx(expected_fit([100, 110, 120, 130, 140, 150, 160, 170, 180, 500])[2])


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_the_fit_of_pareto_samples_follows_the_formulas_and_finds_the_true_quantile(seed):
    samples = pareto_times(1200, xm=500, alpha=2.5, seed=seed)
    times = learner()
    for milliseconds in samples:
        build(times, milliseconds)
    kept = samples[-1000:]  # the ring holds the last CBT_NCIRCUITS_TO_OBSERVE
    assert times.build_times == kept and times.total_build_times == 1000
    xm, alpha, timeout, close = expected_fit(kept)
    assert times.xm == xm
    assert times.alpha == pytest.approx(alpha, rel=1e-12)
    assert times.timeout_ms == pytest.approx(timeout, rel=1e-12)
    assert times.close_ms == pytest.approx(close, rel=1e-12)
    true_quantile = 500 / 0.2 ** (1 / 2.5)
    assert abs(times.timeout_ms - true_quantile) < 0.1 * true_quantile


def test_cbtnummodes_and_the_quantiles_come_from_the_consensus():
    samples = pareto_times(400, xm=300, alpha=1.5, seed=9)
    times = learner()
    times.update_params({"cbtnummodes": 3, "cbtquantile": 60, "cbtclosequantile": 95, "cbtinitialtimeout": 30_000})
    for milliseconds in samples:
        build(times, milliseconds)
    xm, alpha, timeout, close = expected_fit(samples, num_modes=3, quantile=0.6, close_quantile=0.95,
                                             initial_ms=30_000)
    assert (times.xm, times.alpha) == (xm, pytest.approx(alpha, rel=1e-12))
    assert (times.timeout_ms, times.close_ms) == (pytest.approx(timeout), pytest.approx(close))


def test_ties_between_modes_go_to_the_shorter_times():
    times = learner()
    times.update_params({"cbtmincircs": 4, "cbtnummodes": 1})
    for milliseconds in (71, 72, 31, 32):  # bins 30-39 and 70-79 hold two each
        build(times, milliseconds)
    assert times.xm == 35


def test_the_timeout_is_capped_at_the_longest_build_and_floored_at_cbtmintimeout():
    times = learner()
    times.update_params({"cbtmincircs": 5})
    for milliseconds in (1000, 1000, 1000, 1000, 1004):
        build(times, milliseconds)
    # Every time is at Xm: alpha is infinite and the quantile is Xm itself, above the longest build.
    assert times.xm == 1005 and times.alpha == math.inf
    assert times.timeout_ms == 1004 and times.close_ms == 60_000
    fast = learner()
    fast.update_params({"cbtmincircs": 3, "cbtmintimeout": 1500})
    for milliseconds in (2, 3, 900):
        build(fast, milliseconds)
    assert fast.timeout_ms == 1500


def test_abandoned_circuits_count_toward_cbtmincircs_but_are_left_out_of_the_fit():
    clock = FakeClock()
    times = learner(clock)
    times.update_params({"cbtmincircs": 50})
    samples = pareto_times(60, xm=400, alpha=2, seed=11)
    for milliseconds in samples[:45]:
        build(times, milliseconds)
    abandon(times, 5)
    assert times.total_build_times == 50 and times.enough_to_compute
    for milliseconds in samples[45:]:
        build(times, milliseconds)
    assert times.build_times.count(CBT_BUILD_ABANDONED) == 5
    xm, alpha, timeout, _ = expected_fit(samples)
    assert (times.xm, times.alpha, times.timeout_ms) == (xm, pytest.approx(alpha, rel=1e-12), pytest.approx(timeout))


# ------------------------------------------------------------------------------------------ one circuit


def learned(clock: FakeClock, **params) -> CircuitBuildTimes:
    times = learner(clock)
    times.update_params({"cbtmincircs": 20, **params})
    for milliseconds in pareto_times(20, xm=200, alpha=3, seed=2):
        build(times, milliseconds)
    assert times.enough_to_compute
    return times


def test_before_learning_a_circuit_is_closed_at_the_initial_timeout_and_not_counted():
    clock = FakeClock()
    times = learner(clock)
    attempt = times.start_build(3, True, lambda: True)
    assert (attempt.timeout, attempt.close_timeout) == (60.0, 60.0)
    assert attempt.timed_out(first_hop_done=True) is TimeoutAction.CLOSE
    attempt.close_timed_out(first_hop_done=True)
    assert times.total_build_times == 0 and times.timeouts == 0


def test_a_slow_circuit_is_measured_until_the_close_timeout_and_its_late_time_recorded():
    clock = FakeClock()
    times = learned(clock)
    attempt = times.start_build(3, True, lambda: True)
    clock.now += attempt.timeout
    assert attempt.timed_out(first_hop_done=True) is TimeoutAction.MEASURE and attempt.measuring
    assert times.timeouts == 1
    clock.now += 2.0
    attempt.built()
    late = round((attempt.timeout + 2.0) * 1000)
    assert times.build_times[-1] == late
    assert times.succeeded == 20  # a measured circuit is not a success


def test_a_measured_circuit_closed_at_the_close_timeout_is_recorded_as_abandoned():
    clock = FakeClock()
    times = learned(clock)
    attempt = times.start_build(3, True, lambda: True)
    clock.now += attempt.timeout
    times.network_is_live()
    assert attempt.timed_out(first_hop_done=True) is TimeoutAction.MEASURE
    clock.now = attempt.started_at + attempt.close_timeout
    attempt.close_timed_out(first_hop_done=True)
    assert times.build_times[-1] == CBT_BUILD_ABANDONED and times.total_build_times == 21
    assert times.closed == 1


def test_with_no_circuit_open_the_timeout_is_relaxed_until_the_close_timeout():
    clock = FakeClock()
    times = learned(clock)
    attempt = times.start_build(3, True, lambda: False)
    assert attempt.close_timeout > attempt.timeout
    assert attempt.timed_out(first_hop_done=True) is TimeoutAction.RELAX and not attempt.measuring
    assert times.timeouts == 1
    times.network_is_live()
    clock.now = attempt.started_at + attempt.close_timeout
    attempt.close_timed_out(first_hop_done=True)
    assert times.timeouts == 1  # counted once
    assert times.build_times[-1] == CBT_BUILD_ABANDONED


def test_uncounted_circuits_record_nothing_and_longer_ones_wait_longer():
    clock = FakeClock()
    times = learned(clock)
    total = times.total_build_times
    controller = times.start_build(3, False, lambda: True)
    assert controller.timed_out(first_hop_done=True) is TimeoutAction.CLOSE
    controller.built()
    four_hops = times.start_build(4, True, lambda: True)
    assert not four_hops.counted
    assert four_hops.timeout == pytest.approx(times.timeout * 10 / 6)
    assert four_hops.close_timeout == pytest.approx(times.close_timeout * 10 / 6)
    assert times.total_build_times == total


def test_a_build_time_past_twice_the_close_timeout_is_taken_for_a_clock_jump():
    clock = FakeClock()
    times = learner(clock)
    attempt = times.start_build(3, True, lambda: True)
    clock.now += 2 * 60 + 1.5
    attempt.built()
    assert times.total_build_times == 0 and times.succeeded == 0


# ------------------------------------------------------------------------------------------ liveness


def test_a_circuit_abandoned_without_any_cell_since_it_started_is_not_recorded():
    clock = FakeClock()
    times = learned(clock)
    times.network_is_live()
    clock.now += 1
    attempt = times.start_build(3, True, lambda: True)
    attempt.timed_out(first_hop_done=False)
    clock.now = attempt.started_at + attempt.close_timeout
    attempt.close_timed_out(first_hop_done=False)
    assert times.total_build_times == 20 and times.nonlive_timeouts == 1 and not times.network_live
    # Built circuits are not recorded either while the network seems down...
    build(times, 150)
    assert times.total_build_times == 20
    # ... until a cell arrives.
    times.network_is_live()
    assert times.network_live and times.nonlive_timeouts == 0
    build(times, 150)
    assert times.total_build_times == 21


def test_most_recent_circuits_timing_out_after_their_first_hop_reset_the_history_and_double_the_timeout():
    clock = FakeClock()
    times = learner(clock)
    events = []
    times.add_observer(events.append)
    # The reset fires once cbtmaxtimeouts (18) of the last cbtrecentcount (20) circuits timed out.
    time_out(times, 17)
    time_out(times, 5, first_hop_done=False)  # before the first hop: not a sign of a changed network
    build(times, 100)
    assert times.total_build_times == 1 and times.timeout == 60.0
    times.count_timeout(first_hop_done=True)
    assert times.total_build_times == 0
    assert (times.timeout, times.close_timeout) == (120.0, 120.0)
    assert [event.kind for event in events if isinstance(event, BuildTimeoutSet)] == [BuildTimeoutSetKind.RESET]
    reset = events[-1]
    assert (reset.cutoff_quantile, reset.total_times, reset.timeout_ms) == (1.0, 0, 120_000)
    # The record of recent circuits starts empty: it takes 18 more timeouts to reset again.
    time_out(times, 17)
    assert times.timeout == 120.0
    times.count_timeout(first_hop_done=True)
    assert times.timeout == 240.0


def test_a_reset_from_a_learned_timeout_goes_back_to_the_initial_one():
    clock = FakeClock()
    times = learned(clock, cbtrecentcount=5, cbtmaxtimeouts=3)
    assert times.timeout < 60
    time_out(times, 3)
    assert (times.timeout, times.close_timeout) == (60.0, 60.0)
    assert times.total_build_times == 0 and not times.enough_to_compute


def test_a_new_cbtrecentcount_resizes_the_record_of_recent_circuits():
    times = learner()
    time_out(times, 10)
    times.update_params({"cbtrecentcount": 12, "cbtmaxtimeouts": 11})
    times.count_timeout(first_hop_done=True)
    assert times.timeout == 120.0
    times.update_params({"cbtrecentcount": 4, "cbtmaxtimeouts": 4})
    time_out(times, 3)
    assert times.timeout == 120.0
    times.count_timeout(first_hop_done=True)
    assert times.timeout == 240.0


# ------------------------------------------------------------------------------------------ options


def test_learning_off_uses_circuit_build_timeout_or_the_initial_timeout():
    fixed = learner(learn=False, configured_timeout=10)
    for _ in range(200):
        build(fixed, 100)
    assert (fixed.timeout, fixed.close_timeout) == (10.0, 10.0)
    assert fixed.total_build_times == 0
    assert fixed.start_build(3, True, lambda: False).timed_out(first_hop_done=True) is TimeoutAction.CLOSE
    assert learner(learn=False).timeout == 60.0


def test_circuit_build_timeout_is_the_starting_point_while_learning():
    times = learner(configured_timeout=30)
    assert times.timeout == 30.0
    times.update_params({"cbtmincircs": 3})
    for milliseconds in (100, 120, 400):
        build(times, milliseconds)
    assert times.timeout < 1.0
    times.set_options(learn=False, configured_timeout=30)
    assert times.timeout == 30.0


def test_cbtdisabled_turns_learning_off_and_back_on():
    times = learner()
    times.update_params({"cbtmincircs": 3})
    for milliseconds in (100, 120, 400):
        build(times, milliseconds)
    learned_timeout = times.timeout
    times.update_params({"cbtmincircs": 3, "cbtdisabled": 1})
    assert times.disabled and times.timeout == 60.0
    assert times.start_build(3, True, lambda: True).timed_out(first_hop_done=True) is TimeoutAction.CLOSE
    times.count_timeout(first_hop_done=True)
    assert times.timeouts == 0
    times.update_params({"cbtmincircs": 3})
    assert times.timeout == learned_timeout


# ------------------------------------------------------------------------------------------ persistence


def test_the_history_survives_a_round_trip_through_its_state_lines():
    clock = FakeClock()
    times = learned(clock)
    abandon(times, 3)
    lines = times.state_lines()
    assert lines[:2] == ["TotalBuildTimes 23", "CircuitBuildAbandonedCount 3"]
    assert all(line.startswith("CircuitBuildTimeBin ") for line in lines[2:])
    loaded = learner(seed=7)
    loaded.update_params({"cbtmincircs": 20})
    loaded.load_state(lines)
    assert loaded.total_build_times == 23
    assert loaded.state_lines() == lines
    assert loaded.histogram() == times.histogram()
    # Times come back as their bin midpoints, in a shuffled order.
    midpoints = sorted(value // 10 * 10 + 5 if value != CBT_BUILD_ABANDONED else value for value in times.build_times)
    assert sorted(loaded.build_times) == midpoints
    assert loaded.xm == expected_fit(midpoints)[0]
    assert loaded.timeout_ms == pytest.approx(expected_fit(midpoints)[2])


def test_tor_state_file_lines_load():
    # From a C tor 0.4.9 client's state file on the private network.
    text = """# Tor state file last generated on 2026-12-05 15:06:09 local time
CircuitBuildTimeBin 15 31
CircuitBuildTimeBin 25 26
CircuitBuildTimeBin 35 19
CircuitBuildTimeBin 45 3
CircuitBuildTimeBin 55 9
CircuitBuildTimeBin 65 15
CircuitBuildTimeBin 75 9
CircuitBuildTimeBin 85 4
CircuitBuildTimeBin 95 1
CircuitBuildTimeBin 105 4
CircuitBuildTimeBin 115 1
CircuitBuildTimeBin 125 1
Dormant 0
LastWritten 2026-12-05 15:06:09
TotalBuildTimes 123
"""
    times = learner()
    times.load_state(text.splitlines())
    assert times.total_build_times == 123 and times.enough_to_compute
    assert times.histogram()[1:13] == [31, 26, 19, 3, 9, 15, 9, 4, 1, 4, 1, 1]
    assert times.timeout_ms == pytest.approx(expected_fit(times.build_times)[2])


@pytest.mark.parametrize("lines, problem", [
    (["TotalBuildTimes 3", "CircuitBuildTimeBin 15"], "line 2"),
    (["TotalBuildTimes 3", "CircuitBuildTimeBin 15 x"], "'x' is not a number"),
    (["TotalBuildTimes -3"], "line 1"),
    (["TotalBuildTimes 3", "CircuitBuildTimeBin 0 3"], "0 ms"),
    (["TotalBuildTimes 5", "CircuitBuildTimeBin 15 3"], "says 5 but the lines hold 3"),
    (["CircuitBuildTimeBin 15 3"], "without TotalBuildTimes"),
])
def test_a_malformed_history_is_refused_and_nothing_is_kept(lines, problem):
    times = learner()
    build(times, 100)
    with pytest.raises(BuildTimesStateError, match=problem):
        times.load_state(lines)
    assert times.total_build_times == 0


def test_more_times_than_the_total_stop_short_as_in_tor():
    times = learner()
    with pytest.raises(BuildTimesStateError, match="says 4 but the lines hold 3"):
        times.load_state(["TotalBuildTimes 4", "CircuitBuildTimeBin 15 3", "CircuitBuildTimeBin 25 3"])
    times.load_state(["TotalBuildTimes 3", "CircuitBuildTimeBin 15 3", "CircuitBuildTimeBin 25 3"])
    assert times.build_times == [15, 15, 15]


def test_a_longer_saved_history_keeps_a_random_thousand():
    times = learner()
    times.load_state(["TotalBuildTimes 1500", "CircuitBuildTimeBin 15 750", "CircuitBuildTimeBin 25 750"])
    assert times.total_build_times == 1000
    kept = Counter(times.build_times)
    assert kept[15] + kept[25] == 1000 and 400 < kept[15] < 600


# ------------------------------------------------------------------------------------------ the rest


def test_the_control_event_has_tors_format():
    event = BuildTimeoutSet(BuildTimeoutSetKind.COMPUTED, 100, 1523.7, 465, 1.916, 0.8, 0.21, 60000.0, 0.02)
    assert event.control_arguments() == ("COMPUTED TOTAL_TIMES=100 TIMEOUT_MS=1523 XM=465 ALPHA=1.916000 "
                                         "CUTOFF_QUANTILE=0.800000 TIMEOUT_RATE=0.210000 CLOSE_MS=60000 "
                                         "CLOSE_RATE=0.020000")


def test_while_learning_test_circuits_are_wanted_every_cbttestfreq_seconds():
    clock = FakeClock()
    times = learner(clock)
    times.start_build(3, True, lambda: True)
    assert not times.wants_test_circuit(clean_circuits=0)
    clock.now += 10.5
    assert times.wants_test_circuit(clean_circuits=9)
    assert not times.wants_test_circuit(clean_circuits=10)
    assert times.learning_idle_timeout == 180.0
    times.update_params({"cbtmincircs": 1})
    build(times, 100)
    clock.now += 11
    assert not times.wants_test_circuit(clean_circuits=0) and times.learning_idle_timeout is None


def test_a_huge_saved_total_is_sampled_without_holding_every_time():
    times = learner()
    times.load_state(["TotalBuildTimes 2000000000", "CircuitBuildAbandonedCount 1000000000",
                      "CircuitBuildTimeBin 15 1000000000"])
    assert times.total_build_times == 1000
    kept = Counter(times.build_times)
    assert kept[15] + kept[CBT_BUILD_ABANDONED] == 1000 and 400 < kept[15] < 600
