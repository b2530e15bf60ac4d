"""The benchmarks' own arithmetic (their runs are not tests: they measure)."""

import math

import pytest

from benchmarks.step_overhead import paired_cost


def test_paired_cost_sums_a_sampled_step_and_the_steps_after_it_over_its_baseline():
    durations = {i: 0.010 for i in range(3, 103)}
    durations[49], durations[50] = 0.020, 0.012  # sampled, and slowed by the writer after it
    durations[99] = 0.015
    durations[40] = 0.5  # an outlier before: the baseline is a median
    shares = [(0.010 + 0.002) / (50 * 0.010), 0.005 / (50 * 0.010)]
    assert paired_cost(durations, every=50) == pytest.approx(sum(shares) / 2)


def test_paired_cost_needs_a_whole_window():
    durations = {i: 0.010 for i in range(45, 52)}  # too few steps before the sampled one
    assert math.isnan(paired_cost(durations, every=50))


def test_a_fault_is_caught_only_by_its_alert_from_its_onset_on():
    from benchmarks.alerts import SCENARIOS, verdict

    reinit = next(s for s in SCENARIOS if s.name == "reinit-mid-run")  # onset at epoch 5
    early = [{"kind": "overwritten", "layer": "model.0", "epoch": 0, "value": 0.1}]
    assert verdict(reinit, early, []) == "MISSED"
    assert verdict(reinit, [{**early[0], "epoch": 5}], []) == "ok"
    assert verdict(reinit, [{**early[0], "epoch": 6}], []) == "MISSED"  # past its grace


def test_a_run_that_recovers_passes_once_its_alerts_cleared():
    from benchmarks.alerts import SCENARIOS, verdict

    recovers = next(s for s in SCENARIOS if s.name == "one-cycle-sgd-2")
    peak = [{"kind": "exploding", "layer": "model.0", "epoch": 1, "value": 6.3}]
    assert verdict(recovers, peak, []) == "ok"
    assert verdict(recovers, peak, ["dead_channels"]) == "ok"  # not an alert meant for it
    assert verdict(recovers, peak, ["exploding"]) == "STILL ACTIVE"
