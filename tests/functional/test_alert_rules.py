"""The alert rules on recorded numbers: no Trainer, no model."""

import math

import pytest

from lightning_viz.functional.alert_rules import (
    FilterThresholds,
    dead_channel_finding,
    filter_findings,
    noise_rises,
    nonfinite_activation_finding,
)

DEFAULTS = FilterThresholds()
# a healthy SGD first layer on the digits after one epoch (numbers from the calibration runs)
HEALTHY = {"noise": 0.82, "drift": 0.31, "update_noise": 0.33, "finite": 1.0}


def firing(findings):
    return {f.kind for f in findings if f.firing}


def test_baseline_checks_only_nonfinite_and_exploding():
    findings, lowest = filter_findings("conv", {**HEALTHY, "drift": 0.0}, {}, 0, True, DEFAULTS)
    assert [f.kind for f in findings] == ["nonfinite_weights", "exploding"]
    assert firing(findings) == set()
    assert lowest == {}


def test_healthy_measurement_fires_nothing_and_records_the_lowest():
    findings, lowest = filter_findings("conv", HEALTHY, {}, 0, False, DEFAULTS)
    assert [f.kind for f in findings] == [
        "nonfinite_weights",
        "exploding",
        "not_learning",
        "noisy_filters",
    ]
    assert firing(findings) == set()
    assert lowest == {"noise": 0.82, "update_noise": 0.33}


def test_frozen_layer_is_not_learning_after_the_warmup():
    frozen = {"noise": 1.0, "drift": 0.0, "update_noise": 0.0, "finite": 1.0}
    findings, _ = filter_findings("conv", frozen, {}, 0, False, DEFAULTS)
    (not_learning,) = [f for f in findings if f.kind == "not_learning"]
    assert not_learning.firing
    assert (not_learning.value, not_learning.threshold) == (0.0, 0.02)
    assert "'conv' has barely moved" in not_learning.message
    later = FilterThresholds(warmup_epochs=3)
    findings, _ = filter_findings("conv", frozen, {}, 0, False, later)
    assert "not_learning" not in {f.kind for f in findings}


def test_far_too_high_learning_rate_is_exploding_at_the_baseline_rule():
    values = {**HEALTHY, "drift": 40.0}
    findings, _ = filter_findings("conv", values, {}, 0, False, DEFAULTS)
    (exploding,) = [f for f in findings if f.kind == "exploding"]
    assert exploding.firing
    assert exploding.value == 40.0
    assert "learning rate is likely far too high" in exploding.message


def test_reinitialization_lifts_update_noise_into_noisy_filters():
    # update noise of the first layer before and after a mid-run re-init (0.33 -> 0.86)
    _, lowest = filter_findings("conv", HEALTHY, {}, 2, False, DEFAULTS)
    after = {"noise": 0.62, "drift": 0.9, "update_noise": 0.86, "finite": 1.0}
    findings, lowest = filter_findings("conv", after, lowest, 3, False, DEFAULTS)
    (noisy,) = [f for f in findings if f.kind == "noisy_filters"]
    assert noisy.firing
    assert noisy.value == pytest.approx(0.86 - 0.33)
    assert "filters turned noisy at epoch 3: update noise 0.86 rose from its lowest 0.33" in (
        noisy.message
    )
    assert lowest == {"noise": 0.62, "update_noise": 0.33}


def test_nonfinite_weights_fire():
    values = {"noise": math.nan, "drift": math.nan, "update_noise": math.nan, "finite": 0.0}
    findings, _ = filter_findings("conv", values, {}, 1, False, DEFAULTS)
    assert "nonfinite_weights" in firing(findings)


def test_update_noise_is_ignored_while_the_layer_has_not_moved():
    rises, lowest = noise_rises({"noise": 0.9, "update_noise": 0.0, "drift": 0.0}, {}, 0.25)
    assert rises == []
    assert lowest == {"noise": 0.9}
    rises, _ = noise_rises({"noise": 1.2, "update_noise": 0.5, "drift": 0.1}, lowest, 0.25)
    assert rises == [("noise", 1.2, 0.9)]


def test_dead_channels_at_and_below_the_threshold():
    assert dead_channel_finding("relu", 0.5, 0.5, 2).firing
    finding = dead_channel_finding("relu", 0.25, 0.5, 2)
    assert not finding.firing
    assert "25% of the channels of layer 'relu'" in finding.message


def test_nonfinite_activations_name_the_step():
    finding = nonfinite_activation_finding("relu#2", True, 17)
    assert finding.firing
    assert "'relu#2' produced NaN or Inf at step 17" in finding.message
