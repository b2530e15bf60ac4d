"""The alert rules: pure functions from measured numbers to findings, testable without a Trainer.

A rule says, for one layer and one measurement, whether an alert kind fires now, with the value,
the threshold and a sentence for people. The callbacks measure, call the rules and deliver what
fires (each (layer, kind) once until it clears).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    """Whether alert ``kind`` fires for ``layer`` at this measurement, and why."""

    kind: str
    layer: str
    firing: bool
    value: float = math.nan
    threshold: float = math.nan
    message: str = ""


@dataclass(frozen=True)
class FilterThresholds:
    """FilterMonitor's alert thresholds (see its docstring for what each means)."""

    min_drift: float = 0.02
    max_drift: float = 5.0
    rise: float = 0.25
    warmup_epochs: int = 1


NOISE_KEYS = {"noise": "weight noise", "update_noise": "update noise"}
"""The median Geary's C values whose rise above their lowest makes ``noisy_filters``."""


def filter_findings(
    layer: str,
    values: Mapping[str, float],
    lowest: Mapping[str, float],
    epoch: int,
    baseline: bool,
    thresholds: FilterThresholds,
    learning: bool = True,
) -> tuple[list[Finding], dict[str, float]]:
    """The FilterMonitor rules for one layer's measurement.

    Args:
        layer: the layer's name.
        values: ``noise``, ``drift``, ``update_noise`` and ``finite`` (1.0 when every weight is
            finite) of :func:`~lightning_viz.functional.filters.filter_health`, on the host.
        lowest: the lowest median C of each of :data:`NOISE_KEYS` measured so far.
        epoch: the epoch just measured (0-based); ignored at the baseline.
        baseline: whether this is the step-0 measurement, before any training.
        thresholds: the rules' thresholds.
        learning: whether the layer is meant to learn; a layer frozen on purpose (no gradient,
            in no optimizer) gets no ``not_learning`` and no ``noisy_filters``.

    Returns:
        The findings, and ``lowest`` updated with this measurement.
    """
    drift = values["drift"]
    findings = [
        Finding(
            "nonfinite_weights",
            layer,
            values["finite"] < 1,
            message=f"layer {layer!r} has NaN or Inf weights at epoch {epoch}. Check the loss for "
            "NaN, lower the learning rate, or use gradient clipping / a smaller loss scale.",
        ),
        Finding(
            "exploding",
            layer,
            drift > thresholds.max_drift,
            drift,
            thresholds.max_drift,
            f"layer {layer!r} weights moved {drift:.3g}x their initial norm by epoch {epoch} "
            f"(threshold max_drift={thresholds.max_drift:g}). The learning rate is likely far "
            "too high: lower it, add weight decay or a warm-up.",
        ),
    ]
    if baseline or not learning:
        return findings, dict(lowest)
    rises, lowest = noise_rises(values, lowest, thresholds.rise)
    trained = epoch + 1
    if trained < thresholds.warmup_epochs:
        return findings, lowest
    findings.append(
        Finding(
            "not_learning",
            layer,
            drift < thresholds.min_drift,
            drift,
            thresholds.min_drift,
            f"layer {layer!r} has barely moved from its initial weights after {trained} "
            f"epoch(s): drift {drift:.3g} < min_drift={thresholds.min_drift:g}. Check that it is "
            "not frozen (requires_grad, optimizer param groups), that the learning rate is not "
            "far too low, and that gradients reach it.",
        )
    )
    detail = "; ".join(
        f"{NOISE_KEYS[key]} {value:.2f} rose from its lowest {low:.2f}" for key, value, low in rises
    )
    findings.append(
        Finding(
            "noisy_filters",
            layer,
            bool(rises),
            rises[0][1] - rises[0][2] if rises else math.nan,
            thresholds.rise,
            f"layer {layer!r} filters turned noisy at epoch {epoch}: {detail} (threshold "
            f"rise={thresholds.rise:g}). Its learned structure is being replaced by noise: check "
            "for a learning-rate spike, a re-initialized or corrupted layer, or loss spikes.",
        )
    )
    return findings, lowest


def noise_rises(
    values: Mapping[str, float], lowest: Mapping[str, float], rise: float
) -> tuple[list[tuple[str, float, float]], dict[str, float]]:
    """Which median C rose more than ``rise`` above its lowest so far, as (key, value, lowest),
    and the lowest values updated with this measurement.

    The update noise is skipped while the layer has not moved (drift 0: it is undefined).
    """
    lowest = dict(lowest)
    rises = []
    for key in NOISE_KEYS:
        value = values[key]
        if not math.isfinite(value) or (key == "update_noise" and values["drift"] == 0):
            continue
        if key in lowest and value - lowest[key] > rise:
            rises.append((key, value, lowest[key]))
        lowest[key] = min(lowest.get(key, value), value)
    return rises, lowest


def frozen_finding(layers: Sequence[str]) -> Finding:
    """A notice, once at fit start: these watched layers will not be trained."""
    names = ", ".join(repr(name) for name in layers)
    return Finding(
        "frozen",
        ", ".join(layers),
        True,
        float(len(layers)),
        message=f"{len(layers)} watched layer(s) will not be trained (requires_grad=False or in no "
        f"optimizer param group): {names}. They get no learning alerts. If this is not meant "
        "(an accidental freeze), check requires_grad and the optimizer's param groups.",
    )


def dead_channel_finding(layer: str, fraction: float, threshold: float, epoch: int) -> Finding:
    """ActivationMonitor's ``dead_channels``: too many channels had no positive value all epoch."""
    return Finding(
        "dead_channels",
        layer,
        fraction >= threshold,
        fraction,
        threshold,
        f"{fraction:.0%} of the channels of layer {layer!r} had no positive value in any sampled "
        f"batch of epoch {epoch} (threshold dead_threshold={threshold:g}). Dead ReLUs: check for "
        "a learning rate too high, a bad initialization, or a large negative bias.",
    )


def nonfinite_activation_finding(layer: str, nonfinite: bool, step: int) -> Finding:
    """ActivationMonitor's ``nonfinite_activations``: NaN or Inf in a sampled feature map."""
    return Finding(
        "nonfinite_activations",
        layer,
        nonfinite,
        message=f"layer {layer!r} produced NaN or Inf at step {step}. Check the inputs and the "
        "loss for NaN, lower the learning rate, or use gradient clipping.",
    )
