"""The alert rules: pure functions from measured numbers to findings, testable without a Trainer.

A rule says, for one layer and one measurement, whether an alert kind fires now, with the value,
the threshold and a sentence for people. The callbacks measure, call the rules and deliver what
fires (each (layer, kind) once until it clears).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Finding:
    """Whether alert ``kind`` fires for ``layer`` at this measurement, and why; ``cleared``:
    why it stops, where that is not that the value came back within its threshold (empty: the
    rule no longer fires)."""

    kind: str
    layer: str
    firing: bool
    value: float = math.nan
    threshold: float = math.nan
    message: str = ""
    cleared: str = ""


@dataclass(frozen=True)
class FilterThresholds:
    """FilterMonitor's alert thresholds, from the alert benchmark (``benchmarks/alerts.py``).

    Measured there: ``learned`` of healthy layers trained from scratch >= 0.0087 at the first
    measurement (0.019 after 3 optimizer steps), of pretrained ones fine-tuned gently down to
    4.9e-4 (a user's resnet18 stem), at most 5.5 times behind the network's median; of layers
    that do not learn <= 4.2e-5 (in networks whose median is <= 8.3e-6, or 55 to 246 times
    behind it under vanishing gradients); the step cosine of healthy layers
    >= 0.80 once trained (in the first interval down to 0.06 in one layer and 0.77 in a network's
    median, see :func:`filter_findings`), of overwritten ones <= 0.08 (a network's median in the
    first interval of a learning rate far too high, from scratch or fine-tuning: <= 0.36); the
    median drift of a healthy network's layers <= 2.3, of one whose learning rate is far too high
    >= 9.4 in the first epoch (a single healthy layer, the small-init stem of torchvision's
    ResNets under SGD at lr 0.1, moved 9 times its own norm: 4.7 read against the default
    init's, as drift is, :func:`~lightning_viz.functional.filter_health`); first-layer update
    noise of healthy runs <= 0.84
    (5x5 and 7x7 kernels: :data:`NOISE_MIN_KERNEL`), where the images the layer reads are not
    themselves noise at its scale (:func:`~lightning_viz.functional.filters.patch_noise`:
    photos 0.13 to 0.63, the digits 0.09 to 0.15; shapes on white noise 0.78 to 0.92, where a
    healthy zero-init resnet18's stem update read 0.96 to 1.0 at validation accuracy 1.0).
    """

    min_learned: float = 1e-3
    max_learning_lag: float = 20.0
    max_drift: float = 5.0
    min_step_cosine: float = 0.5
    min_norm_ratio: float = 0.1
    max_update_noise: float = 0.95
    max_input_noise: float = 0.7
    warmup_steps: int = 10


NOISE_MIN_KERNEL = 5
"""The smallest kernel side ``noisy_filters`` reads. The rule was measured on 5x5 and 7x7 first
layers (healthy update noise at most 0.84); healthy 3x3 and 4x4 stems, whose kernels have too
few pixels for smooth structure (an edge or a Laplacian is as "noisy" as white noise), reached
0.95 to 1.07 (a spectrogram CNN at validation accuracy 1.0, timm's regnetx_002 and convnext_atto
stems), where 5x5 and 7x7 stems on the same spectrograms stayed at 0.82 and below."""


FIRST_INTERVAL_STEPS = 25
"""How many optimizer steps after a layer's reference (train start, an unfreeze) FilterMonitor
reads its first interval, measuring then where the epoch runs longer. ``overwritten``'s
first-interval threshold comes from the alert benchmark's first epochs of 7 to 46 steps, and a
healthy run's weights keep turning away from their random init all through a longer one: over
a first epoch of 450 steps the digits net's median cosine fell to 0.36 to 0.79 (SGD at lr 0.2
with weight decay: 0.76 after 25 steps), while a learning rate far too high turns them within
10 (0.04 to 0.15). torchvision's resnet18 turns in its first 25 steps and then stays (SGD at lr
0.2 on the shapes task: 0.56 after 25 steps, 0.51 after 256)."""


def turn_reading(start: int, end: int, reference: int) -> Literal["network", "layer"] | None:
    """How ``overwritten`` reads a layer's turn from optimizer step ``start`` to ``end``, the
    layer measured from its weights at step ``reference``: ``"network"`` for its first interval
    (against the network's median too: :func:`filter_findings`' ``network_cosine``),
    ``"layer"`` (alone) for one no longer than the training before it, else not at all (None):
    young weights turn far over a long interval in a healthy run (the digits net's layers from
    step 25 to the end of a 450-step first epoch: cosine 0.50 to 0.82)."""
    if start == reference:
        return "network"
    return "layer" if start - reference >= end - start else None


EXPLODING_SETTLED_LR = 0.5
"""``exploding`` settles once the layer's learning rate has fallen to this fraction of its
highest since the alert was raised (:func:`exploding_base`). Runs whose one-cycle schedule
peaked at a rate far too high (SGD at 2 and 4 on the digits net, the alert benchmark's
``one-cycle-`` runs) raised it at the peak and recovered to validation accuracy 0.99 with the
median drift still 3.7 to 4.7 (above the hysteresis level) under weight decay, 8.0 to 13.5
without it: the weights the peak moved far stay there. Each settled in its epoch 6 of 12."""


def exploding_base(
    drift: float, base: float, learning_rate: float | None, peak_learning_rate: float | None
) -> float:
    """The drift ``exploding`` reads beyond (:func:`filter_findings`' ``drift_base``): ``drift``
    now once the learning rate fell to :data:`EXPLODING_SETTLED_LR` of its highest since the
    alert was raised (a warm-up's peak passed, a spike over), else ``base`` (0 until then).

    Args:
        drift: the layer's drift now.
        base: the drift it read beyond so far.
        learning_rate: the layer's learning rate now (None: unknown, never settles).
        peak_learning_rate: its highest since ``exploding`` was raised on the layer (None: the
            alert is not active).
    """
    if learning_rate is None or peak_learning_rate is None:
        return base
    return drift if learning_rate <= EXPLODING_SETTLED_LR * peak_learning_rate else base


def _settled_reason(learning_rate: float, peak_learning_rate: float) -> str:
    """Why ``exploding`` cleared where it settled (:func:`exploding_base`)."""
    return (
        f"the learning rate fell to {learning_rate:.3g}, at most {EXPLODING_SETTLED_LR:g} of "
        f"its highest since the alert ({peak_learning_rate:.3g}). The weights stay where the "
        "high rate moved them; the rule reads the drift beyond them from here on, and raises "
        "the alert again if they move as far."
    )


def filter_findings(
    layer: str,
    values: Mapping[str, float],
    steps: int,
    thresholds: FilterThresholds,
    learning: bool = True,
    first_layer: bool = False,
    exploding: bool = False,
    not_learning: bool = False,
    drift_base: float = 0.0,
    settled: tuple[float, float] | None = None,
    network_drift: float | None = None,
    network_cosine: float | None = None,
    network_learned: float | None = None,
    kernel_size: int | None = None,
    gated: bool = False,
    input_noise: float | None = None,
    in_forward: bool = True,
) -> list[Finding]:
    """The FilterMonitor rules for one layer's measurement.

    Args:
        layer: the layer's name.
        values: ``drift``, ``learned``, ``norm_ratio``, ``step_cosine``, ``update_noise`` and
            ``finite`` of :func:`~lightning_viz.functional.filters.filter_health`, on the host;
            ``step_cosine`` NaN where ``overwritten`` does not read the interval (the baseline;
            :func:`turn_reading`).
        steps: optimizer steps taken so far (0 at the baseline measurement).
        thresholds: the rules' thresholds.
        learning: whether the layer is meant to learn; a layer frozen on purpose (no gradient,
            in no optimizer) gets only the rules that do not need it to learn.
        first_layer: whether the layer sees the input images (``noisy_filters`` reads only
            first layers: deeper layers' updates need not look like image structure).
        exploding: whether ``exploding`` is active: it clears once the drift (beyond
            ``drift_base``) falls below half of ``max_drift`` (hysteresis, so a drift hovering
            at the threshold does not flap), or once the learning rate fell (``drift_base``).
        not_learning: whether ``not_learning`` is active: it clears once the layer's own
            ``learned`` reaches ``min_learned``, not when the network's median does (a user's
            run at AdamW lr 1e-6, at chance to its end, cleared every layer's alert by its
            third epoch: the median rose to 0.00107 while the layer stayed at 0.00059).
        drift_base: the drift where ``exploding`` settled on a fallen learning rate
            (:func:`exploding_base`): the rule reads the drift beyond it, so that weights a
            rate's peak moved far, and which stay there, are not flagged for the rest of the
            run, while weights that go on moving far are flagged again.
        settled: the learning rate and its highest since ``exploding`` was raised, where the
            alert settled at this measurement (``drift_base`` is the drift now): what its
            clearing says.
        network_drift: the median drift of the watched learning layers at this measurement,
            each beyond its ``drift_base`` (:func:`network_median`); None: the layer's own.
            ``exploding`` needs both past ``max_drift``: a learning rate far too high moves
            every layer, while a layer initialized small for its fan-in (the stem of
            torchvision's ResNets, a quarter of its fan-in scale) grows several times its
            initial norm in a healthy run.
        network_cosine: the median step cosine of the watched learning layers; None: the
            layer's own. ``overwritten`` needs both below ``min_step_cosine``. FilterMonitor
            passes it for the first interval, from the weights at train start, at most
            :data:`FIRST_INTERVAL_STEPS` long (:func:`turn_reading`): a small-init
            layer rotates far from its random init in a healthy run (cosine 0.06 after one
            epoch of SGD at lr 0.1) while the network's median stays >= 0.77, and a learning
            rate far too high, from scratch or fine-tuning pretrained weights, turns most
            layers (median <= 0.36). Later intervals read each layer alone: a re-initialized
            layer is overwritten whatever the others do.
        network_learned: the median ``learned`` of the watched learning layers; None: the
            layer's own. ``not_learning`` fires below ``min_learned`` when the network as a
            whole learns as little (a learning rate far too low, dead ReLUs everywhere), or when
            the layer lags ``max_learning_lag`` times behind the network's median (gradients
            that vanish before they reach it). A pretrained stem fine-tuned gently learns
            little but keeps pace (at most 5.5 times behind in the benchmark and a user's
            fine-tune of resnet18: 4.9e-4 against a median of 2.5e-3).
        kernel_size: the layer's smaller kernel side; ``noisy_filters`` reads kernels of at
            least :data:`NOISE_MIN_KERNEL` (None: any).
        gated: whether the layer learns through a scale initialized near zero
            (:func:`~lightning_viz.functional.gates.scale_gates`): ``not_learning`` does not read
            it, and ``network_learned`` should leave it out. Under SGD such layers learned
            1e-4 to 1e-3 in their first 100 steps where the ungated stem learned 1.8 to 7 (timm's
            regnetx_002 and convnext_atto, validation accuracy climbing).
        input_noise: how noisy the images the layer reads are at its scale
            (:func:`~lightning_viz.functional.filters.patch_noise`); ``noisy_filters`` reads
            the layer only where it is at most ``max_input_noise`` (None or NaN: unknown, read).
        in_forward: whether the layer runs in the training forward; one that does not (an
            averaged copy such as an EMA, updated after the step) learns only if its update
            runs, which ``not_learning`` then says to check.

    Returns:
        One finding per rule that applies at this measurement.
    """
    drift, learned, ratio = values["drift"], values["learned"], values["norm_ratio"]
    moved = drift - drift_base
    network = moved if network_drift is None else network_drift
    limit = thresholds.max_drift / 2 if exploding else thresholds.max_drift
    findings = [
        Finding(
            "nonfinite_weights",
            layer,
            values["finite"] < 1,
            message=f"layer {layer!r} has NaN or Inf weights. Check the loss for NaN, lower the "
            "learning rate, or use gradient clipping / a smaller loss scale.",
        ),
        Finding(
            "exploding",
            layer,
            moved > limit and network > limit,
            moved,
            thresholds.max_drift,
            f"layer {layer!r} weights moved {moved:.3g}x their initial norm (at least the "
            f"default init's){_since_settled(drift_base)}, and the network's layers "
            f"{network:.3g}x in the median (threshold "
            f"max_drift={thresholds.max_drift:g}). The learning rate is likely far too high: "
            "lower it, add weight decay or a warm-up.",
            cleared="" if settled is None else _settled_reason(*settled),
        ),
        Finding(
            "collapse",
            layer,
            ratio < thresholds.min_norm_ratio,
            ratio,
            thresholds.min_norm_ratio,
            f"layer {layer!r} weights shrank to {ratio:.2g}x their initial norm (threshold "
            f"min_norm_ratio={thresholds.min_norm_ratio:g}): the layer is collapsing to zero. "
            "Usually a learning rate far too high together with weight decay: lower either.",
        ),
    ]
    cosine = values["step_cosine"]
    network_turn = cosine if network_cosine is None else network_cosine
    among = "" if network_cosine is None else f", and {network_turn:.2f} in the network's median"
    cause = (
        "Something replaced what it had learned: a re-initialization or a load of other "
        "weights, a learning-rate spike, or divergence (check the loss for spikes)."
        if network_cosine is None
        else "The learning rate is far too high: most layers turned away from the weights "
        "training started from. When fine-tuning, that replaced what the pretrained weights had "
        "learned, and it stays replaced after this alert clears: lower the rate (fine-tuning "
        "often takes a tenth of the rate from scratch, or less) or warm it up."
    )
    if math.isfinite(cosine):
        findings.append(
            Finding(
                "overwritten",
                layer,
                cosine < thresholds.min_step_cosine and network_turn < thresholds.min_step_cosine,
                cosine,
                thresholds.min_step_cosine,
                f"layer {layer!r} was overwritten since the previous measurement: the cosine "
                f"between its weights then and now is {cosine:.2f}{among} (threshold "
                f"min_step_cosine={thresholds.min_step_cosine:g}; training that refines a layer "
                f"keeps it near 1). {cause}",
            )
        )
    if not learning or steps < thresholds.warmup_steps:
        return findings
    typical = learned if network_learned is None else network_learned
    lagging = learned * thresholds.max_learning_lag < typical
    check = (
        "Check that gradients reach it (dead ReLUs, vanishing gradients through sigmoid/tanh), "
        "that the learning rate is not far too low, and that its parameters are in the "
        "optimizer."
        if in_forward
        else "It does not run in the training forward: an averaged copy (an EMA) learns only "
        "through its update, so check that the update runs and that its decay lets it move."
    )
    if not gated:
        findings.append(
            Finding(
                "not_learning",
                layer,
                learned < thresholds.min_learned
                and (not_learning or typical < thresholds.min_learned or lagging),
                learned,
                thresholds.min_learned,
                f"layer {layer!r} learned almost nothing in {steps} optimizer steps: the part of "
                f"its change that is not plain shrinking or growing is {learned:.2g} of its "
                "initial norm (at least the default init's; threshold "
                f"min_learned={thresholds.min_learned:g}). {check}",
            )
        )
    noise = values["update_noise"]
    read = _reads_update_noise(thresholds, first_layer, kernel_size, input_noise)
    if read and math.isfinite(noise) and learned >= 0.1:
        findings.append(
            Finding(
                "noisy_filters",
                layer,
                noise >= thresholds.max_update_noise,
                noise,
                thresholds.max_update_noise,
                f"the structure training added to layer {layer!r} is noise: Geary's C of "
                f"W - W0 is {noise:.2f} (threshold max_update_noise="
                f"{thresholds.max_update_noise:g}; healthy first layers stay below 0.85 in the "
                "alert benchmark). Its gradients carry no image structure: check for random or "
                "heavily noisy labels, memorization of a tiny dataset, or a broken input "
                "pipeline. Where overwritten fired on it too, the layer was re-initialized or "
                "loaded with other weights: the change is then those new weights, noise to W0.",
            )
        )
    return findings


def _since_settled(drift_base: float) -> str:
    """Where ``exploding`` reads beyond a base: since when."""
    if not drift_base:
        return ""
    return f" since the learning rate last fell, at a drift of {drift_base:.3g}"


def _reads_update_noise(
    thresholds: FilterThresholds,
    first_layer: bool,
    kernel_size: int | None,
    input_noise: float | None,
) -> bool:
    """Whether ``noisy_filters`` reads a layer: a first layer of kernels of at least
    :data:`NOISE_MIN_KERNEL` whose images are not themselves noise at its scale (``input_noise``
    at most ``max_input_noise``; None or NaN: unknown)."""
    smooth_images = (
        input_noise is None
        or not math.isfinite(input_noise)
        or input_noise <= thresholds.max_input_noise
    )
    large_kernels = kernel_size is None or kernel_size >= NOISE_MIN_KERNEL
    return first_layer and large_kernels and smooth_images


def network_median(values: Iterable[float]) -> float:
    """The median of the learning layers' values (the finite ones; NaN when none is): how far
    the network as a whole moved or turned, which one layer's outlying init does not sway."""
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def _layers_notice(kind: str, layers: Sequence[str], message: str) -> Finding:
    """A notice on several layers at once: named together, its value how many they are."""
    return Finding(kind, ", ".join(layers), True, float(len(layers)), message=message)


def frozen_finding(layers: Sequence[str], watched: int) -> Finding:
    """A notice, at fit start and when the set changes: these watched layers (of ``watched``)
    are not trained; where that is all of them, nothing FilterMonitor reads trains (a user's
    frozen backbone diverged in its Linear head, loss 4.5e8, without an alert)."""
    names = ", ".join(repr(name) for name in layers)
    if len(layers) < watched:
        consequence = "They get no learning alerts while frozen."
    else:
        consequence = (
            "That is every layer FilterMonitor watches: it raises no learning alert while they "
            "are frozen (what trains, such as a Linear head, is not a conv it reads; watch the "
            "loss for a divergence)."
        )
    return _layers_notice(
        "frozen",
        layers,
        f"{len(layers)} watched layer(s) are not trained (requires_grad=False or in no "
        f"optimizer param group): {names}. {consequence} If this is not meant "
        "(an accidental freeze), check requires_grad and the optimizer's param groups.",
    )


def unfrozen_finding(layers: Sequence[str], step: int) -> Finding:
    """A notice, when frozen watched layers begin training at optimizer ``step`` (an unfreeze):
    the rules read them from then on, from their weights then and beside each other."""
    return _layers_notice(
        "unfrozen",
        layers,
        f"{len(layers)} watched layer(s) began training at step {step} (an unfreeze): "
        f"{', '.join(repr(name) for name in layers)}. Their drift, learned and norm ratio are "
        f"measured from their weights at step {step}, and compared with each other's, so the "
        "learning alerts read them from now on.",
    )


def gated_finding(gates: Mapping[str, str], watched: int) -> Finding:
    """A notice, once at fit start: these watched layers (of ``watched``) learn through the
    scales ``gates`` names, initialized near zero, and ``not_learning`` does not read them."""
    scales = sorted(set(gates.values()))
    shown = ", ".join(repr(name) for name in scales[:3]) + (" ..." if len(scales) > 3 else "")
    others = watched - len(gates)
    reads = (
        f"reads only the {others} other watched layer(s)"
        if others
        else "reads none of the watched layers (watch the loss for a learning rate far too low)"
    )
    return _layers_notice(
        "gated",
        list(gates),
        f"{len(gates)} watched layer(s) learn through scales initialized near zero "
        f"({shown}: a residual block's last norm at 0, a layer scale): under SGD they learn "
        "hundreds to thousands of times less than the others until those scales grow, by "
        f"design, so not_learning {reads}. Nothing to do.",
    )


def noisy_inputs_finding(
    layer: str, input_noise: float, thresholds: FilterThresholds, kernel_size: Sequence[int]
) -> Finding:
    """A notice, once per fit: the images first ``layer`` reads are noise at its
    ``kernel_size`` (``input_noise`` above ``max_input_noise``), and ``noisy_filters`` does not
    read it."""
    size = "x".join(str(k) for k in kernel_size)
    return Finding(
        "noisy_inputs",
        layer,
        True,
        input_noise,
        thresholds.max_input_noise,
        message=f"noisy_filters does not read {layer!r}: the images it reads are mostly noise at "
        f"its {size} scale (the Geary's C of their patches, weighted by variance, is "
        f"{input_noise:.2f}, above max_input_noise={thresholds.max_input_noise:g}; 1 is white "
        "noise, photos read 0.1 to 0.6), and there a healthy first layer's update can be noise "
        "too. Nothing to do: the other alerts still read it.",
    )


def outside_forward_finding(layers: Sequence[str], watched: int) -> Finding:
    """A notice, once, after the first training batch: these watched layers (of ``watched``)
    did not run in its forward, and the network's medians leave them out. A user's EMA copy,
    its parameters in the optimizer but moved only by its slow average, held the median drift
    at 3.5 while the model's own layers reached 6 to 21 under a learning rate 100x too high:
    no ``exploding``."""
    names = ", ".join(repr(name) for name in layers)
    return _layers_notice(
        "outside_forward",
        layers,
        f"{len(layers)} of the {watched} watched layers did not run in the training "
        f"forward: {names}. Whatever moves them is no gradient step (an averaged copy such as "
        "an EMA, updated after the step; a module used only in validation), so the network's "
        "medians that exploding, overwritten and not_learning compare with leave them out. "
        "Nothing to do.",
    )


def reference_at_resume_finding(layers: Sequence[str], step: int) -> Finding:
    """A notice, once at fit start: the reference weights of these watched layers are their
    weights at ``step``, where training resumed from a checkpoint without them, not at
    initialization."""
    names = ", ".join(repr(name) for name in layers)
    return Finding(
        "reference_at_resume",
        ", ".join(layers),
        True,
        float(step),
        message=f"training resumed at step {step} from a checkpoint without FilterMonitor's "
        f"reference weights of {len(layers)} watched layer(s) ({names}): their drift, learned and "
        f"norm ratio are measured from their weights at step {step}, not from the "
        "initialization, and read smaller than they would from the start. Nothing to do if that "
        "is meant; attach FilterMonitor from the first step (its state goes into the "
        "checkpoints) to measure from the initialization.",
    )


def reference_at_refit_finding(layers: Sequence[str], steps: int) -> Finding:
    """A notice, once at fit start: this fit starts over at step 0 (a new Trainer) on the model
    the monitor's previous fit trained for ``steps`` steps; the reference weights of these
    watched ``layers`` are their weights now."""
    return Finding(
        "reference_at_resume",
        ", ".join(layers),
        True,
        float(steps),
        message=f"this fit starts at step 0 (a new Trainer) on the model this FilterMonitor saw "
        f"trained for {steps} steps in its previous fit: drift, learned and norm ratio are "
        "measured from its weights now, not from that fit's start (as for a fine-tuning stage). "
        "Nothing to do if that is meant; to go on measuring from that start, fit again with the "
        "same Trainer and a larger max_epochs, or resume with ckpt_path=.",
    )


def over_budget_finding(
    share: float,
    parts: Sequence[tuple[str, float]],
    budget: float,
    aim: float,
    consequence: str,
    span: str = "so far",
) -> Finding:
    """The fit's one ``over_budget`` notice: the callbacks took ``share`` of the training time
    (``span``: since when; ``parts``: the costliest named, in order) and their next piece of
    work would pass ``aim`` of the ``budget``, or the budget itself was passed; then what
    follows (``consequence``).
    "took 1.9%, over the budget of 2.0%" read as a contradiction: the share may still be within
    the budget when its next piece would not be."""
    each = ", ".join(f"{name} {part:.1%}" for name, part in parts)
    where = (
        f"over the budget of {budget:.1%}"
        if share > budget
        else f"and their next piece of work would pass {aim:.0%} of the budget of {budget:.1%}"
    )
    return Finding(
        "over_budget",
        "budget",
        True,
        share,
        budget,
        f"the callbacks took {share:.1%} of the training time {span} ({each}), {where}: "
        f"{consequence}",
    )


def endless_epoch_finding(callbacks: Sequence[str]) -> Finding:
    """A notice, once at fit start: the training loader has no length, so its one epoch ends
    when the fit does, and the work these ``callbacks`` do at epoch ends waits for it (a
    streaming run of 200 steps validated every 50 showed its views at steps 0 and 200 only)."""
    filters = (
        "; FilterMonitor's alerts still come every every_n_steps optimizer steps"
        if "FilterMonitor" in callbacks
        else ""
    )
    return Finding(
        "endless_epoch",
        "training epoch",
        True,
        float(len(callbacks)),
        message="the training loader has no length (an IterableDataset without __len__), so "
        f"its one epoch ends when the fit does: what {', '.join(callbacks)} "
        f"{'does' if len(callbacks) == 1 else 'do'} at epoch ends "
        "(the probe views' pictures, the filter images, the dead-channel and saturation checks) "
        f"waits until then{filters}. For it to come as training goes, give the epochs a "
        "length: Trainer(limit_train_batches=N) makes each epoch N batches of the stream.",
    )


def dead_channel_finding(
    layer: str,
    fraction: float,
    threshold: float,
    epoch: int,
    batch_norm: bool = True,
    training: bool = True,
) -> Finding:
    """ActivationMonitor's ``dead_channels``: too many channels had no positive value all epoch.
    ``batch_norm``: whether the model has BatchNorm, which normalizes differently in the probe
    views' eval mode (its note was read on a model without any); ``training``: whether the
    layer ran in training mode (a distillation teacher runs in eval mode)."""
    check = (
        "check for a learning rate too high, inputs far from mean 0 and unit scale (not "
        "normalized), a bad initialization, or a large negative bias"
    )
    if not training:
        mode = "eval mode (as a distillation teacher runs)"
        check = (
            "in a module that does not train, its weights (a teacher's checkpoint) or its "
            "inputs (their normalization) made them so: check both"
        )
    elif batch_norm:
        mode = (
            "training mode (BatchNorm normalizing by each batch's statistics; the probe views "
            "run in eval mode, with the running ones, and can show these channels alive)"
        )
    else:
        mode = "training mode"
    return _at_or_above(
        "dead_channels",
        layer,
        fraction,
        threshold,
        f"{fraction:.0%} of the channels of layer {layer!r} had no positive value in any sampled "
        f"batch of epoch {epoch} (threshold dead_threshold={threshold:g}), in {mode}. Dead "
        f"ReLUs: {check}.",
    )


def saturation_finding(layer: str, fraction: float, threshold: float, epoch: int) -> Finding:
    """ActivationMonitor's ``saturated``: a sigmoid/tanh layer's outputs sit at its bounds."""
    return _at_or_above(
        "saturated",
        layer,
        fraction,
        threshold,
        f"{fraction:.0%} of the outputs of layer {layer!r} sat within 2% of its bounds in the "
        f"sampled batches of epoch {epoch} (threshold saturated_threshold={threshold:g}): its "
        "gradient all but vanishes there. Check the initialization and input scale, lower the "
        "learning rate, or use a non-saturating activation (ReLU, GELU) or normalization.",
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


def _at_or_above(kind: str, layer: str, value: float, threshold: float, message: str) -> Finding:
    return Finding(kind, layer, value >= threshold, value, threshold, message)
