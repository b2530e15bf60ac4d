"""ActivationMonitor: sparsity, localization and dead channels of the feature maps in training."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_viz import tags
from lightning_viz._compat import compiled_parts, in_backward
from lightning_viz.alerts import OnAlert
from lightning_viz.callbacks.base import VizCallback, to_host
from lightning_viz.callbacks.layers import watched_layers
from lightning_viz.functional._validation import check_fraction, check_int, check_layer_names
from lightning_viz.functional.activations import (
    ActivationSample,
    ChannelHealth,
    channel_health,
    reduce_activation_samples,
    sample_activations,
    stats_from_sums,
)
from lightning_viz.functional.alert_rules import (
    dead_channel_finding,
    nonfinite_activation_finding,
    saturation_finding,
)
from lightning_viz.functional.captions import counted

ACTIVATION_TYPES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Softplus,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardsigmoid,
    nn.Hardtanh,
)
"""The torch activation modules watched by default."""
ACTIVATION_NAMES = frozenset(
    {
        "relu", "relu6", "leakyrelu", "prelu", "elu", "selu", "celu", "gelu", "gelutanh",
        "quickgelu", "silu", "swish", "mish", "hardswish", "hardsigmoid", "sigmoid", "tanh",
        "hardtanh", "softplus", "starrelu", "squaredrelu",
    }
)  # fmt: skip
"""Class names (lower case) of other libraries' activation modules (timm's ``GELU``, ...) that
are watched by default too."""
SATURATING_BOUNDS = {"sigmoid": (0.0, 1.0), "hardsigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}
"""Output ranges of the activations that saturate, by lower-case class name."""
_RELU_KEYS = ("zero_fraction", "localization")
HISTOGRAM_SAMPLES = 2**12
"""Activation histograms count an evenly strided sample of at most this many values."""
STATISTICS_VALUES = 2**16
"""The statistics of a sampled step read every s-th image of the batch, s the smallest stride
that keeps at most this many values per layer, but at least 4 images (whole maps; measured
error in the tests)."""
PENDING_VALUES = 2**24
"""Sampled steps wait to be reduced together while their copies hold at most this many values
(64 MiB in float32), and for at most ``log_every_n_steps`` batches."""


def is_activation(module: nn.Module, types: tuple[type[nn.Module], ...] | None = None) -> bool:
    """Whether ``module`` is an activation: an instance of ``types``, or by default one of
    :data:`ACTIVATION_TYPES` or a class named like one (:data:`ACTIVATION_NAMES`)."""
    if types is not None:
        return isinstance(module, types)
    return isinstance(module, ACTIVATION_TYPES) or type(module).__name__.lower() in ACTIVATION_NAMES


def saturation_bounds(module: nn.Module) -> tuple[float, float] | None:
    """The output range of a saturating activation (sigmoid, tanh, hardtanh...), else None."""
    if isinstance(module, nn.Hardtanh) and not isinstance(module, nn.ReLU6):
        return (float(module.min_val), float(module.max_val))
    return SATURATING_BOUNDS.get(type(module).__name__.lower())


class SampleBuffers:
    """The waiting copies of each watched layer's strided images, written into one
    (steps, n, C, H, W) buffer per layer that is reused from read to read, so that a read
    reduces them where they are. With a new tensor for each copy and a stack of them to
    reduce, a CPU faulted in fresh pages for every one: 1.4 MB a step on the digits net sampling
    every step (340 page faults), and the stack was one more copy of everything."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}
        self._used: dict[str, int] = {}

    def store(self, key: str, capacity: int, images: Tensor) -> Tensor:
        """Copy ``images`` into the next free slot of ``key``'s buffer (made for ``capacity``
        steps of this shape when none is waiting in it) and return the slot; a copy of its own
        when no slot suits, or when no step waits for another (``capacity`` 1: the copy is read
        at once and freed, where a buffer would hold its memory for the whole fit)."""
        buffer, used = self._buffers.get(key), self._used.get(key, 0)
        suits = (
            buffer is not None
            and buffer.shape[1:] == images.shape
            and buffer.dtype == images.dtype
            and buffer.device == images.device
        )
        if capacity > 1 and not used and (not suits or len(buffer) < capacity):
            # a sampled forward under inference_mode (pseudo-labels) must not make it an
            # inference tensor, which no later step could write into
            with torch.inference_mode(False):
                buffer = self._buffers[key] = images.new_empty((capacity, *images.shape))
        elif buffer is None or not suits or used == len(buffer):
            return images.clone(memory_format=torch.contiguous_format)
        self._used[key] = used + 1
        return buffer[used].copy_(images)

    def groups(
        self, key: str, samples: list[tuple[int, ActivationSample]]
    ) -> list[tuple[list[tuple[int, ActivationSample]], Tensor]]:
        """A layer's waiting ``(step index, sample)`` in groups of one shape, each with its
        images as one (S, n, C, H, W) tensor: the slots of the buffer, in the order they were
        filled, and the rest stacked."""
        buffer = self._buffers.get(key)
        held: list[tuple[int, ActivationSample]] = []
        rest: dict[tuple, list[tuple[int, ActivationSample]]] = {}
        for item in samples:
            images = item[1].images
            if buffer is not None and images._base is buffer:
                held.append(item)
            else:
                rest.setdefault((images.shape, images.dtype), []).append(item)
        groups = [(held, buffer[: len(held)])] if held else []
        return groups + [(run, torch.stack([s.images for _, s in run])) for run in rest.values()]

    @property
    def nbytes(self) -> int:
        """The memory the buffers hold."""
        return sum(buffer.nbytes for buffer in self._buffers.values())

    def release(self) -> None:
        """Every slot is free again (what waited was read, or dropped)."""
        self._used = {}

    def clear(self) -> None:
        """Free the buffers' memory (the fit is over)."""
        self._buffers, self._used = {}, {}


class ActivationMonitor(VizCallback):
    r"""Watch how sparse and localized the feature maps are, and which channels are dead.

    On sampled training batches (every ``every_n_steps``, and an epoch's last batch when no
    other of the epoch was, so that every epoch's dead-channel, saturation and NaN checks have
    data: in epochs shorter than the cadence, and when the other callbacks spend the ``budget``
    while the monitor's own share is within it; past that, the last batch is read for those
    checks alone, each channel's maximum and a sigmoid's saturated fraction, so they never wait
    for the budget), forward hooks on the watched layers
    keep a strided copy of each feature map on the device (in a buffer per layer, reused from
    read to read: :class:`SampleBuffers`); the copies of several sampled steps are reduced
    together where they are to each step's statistics
    (:func:`~lightning_viz.functional.activation_stats`), packed into one tensor and moved to
    the host in one transfer, then logged at their own steps. The first sampled step is read at
    once; then as many steps wait as fit in ``log_every_n_steps`` batches and 64 MiB
    (:data:`PENDING_VALUES`), so the default cadence (one sample per ``log_every_n_steps``)
    reads every sample at once and sampling every step reads the device once per
    ``log_every_n_steps``; an epoch's end and the end of training read what waits. The hooks
    exist for sampled batches only; steps that are not sampled cost nothing and sync nothing, nor
    do sampled steps that wait. Validation batches are not sampled. Under DDP the scalars are
    averaged over ranks (every rank reaches the same collective at the same step).

    Default layers are the activation modules with 4-D outputs (or 5-D, a video or volume CNN's
    (N, C, T, H, W), read as its T x H x W positions): what a user thinks of as "the
    activations": torch's (:data:`ACTIVATION_TYPES`: ReLU and its kin, GELU, SiLU, Mish,
    Hardswish, Sigmoid, Tanh, ...) and other libraries' by class name (:data:`ACTIVATION_NAMES`,
    e.g. timm's ``GELU``); ``activation_types=`` chooses the classes instead. ReLU-like layers
    are read for sparsity, localization and dead channels; saturating ones (sigmoid, tanh,
    hardsigmoid, hardtanh) for how often they sit at their bounds. A module that runs several
    times per forward is one activation per call: torchvision's ResNet calls a block's ``relu``
    twice, and the calls are logged as ``layer1.0.relu`` and ``layer1.0.relu#2``. ReLUs called as
    functions (``F.relu``) have no module to hook: name the modules whose outputs you want with
    ``layers=``.

    A torch.compile'd model fails at fit start: compiled code skips hooks added after compilation,
    and running the sampled steps eagerly could change what training computes.

    Alerts (each (layer, kind) once until it clears; see ``on_alert``):

    - ``dead_channels``: after ``warmup_epochs``, a layer's fraction of channels with no positive
      value in any sampled batch of the epoch is at least ``dead_threshold``. An epoch in which
      the layer's maps held NaN or Inf has no dead fraction (``nonfinite_activations`` says so;
      a NaN map is neither dead nor alive): the alert neither fires nor clears then.
    - ``saturated``: after ``warmup_epochs``, a sigmoid/tanh layer's mean saturated fraction over
      the epoch's sampled batches is at least ``saturated_threshold`` (vanishing gradients).
      Not a layer whose maps are 1x1 or of one channel: a gate that selects by saturating
      (squeeze-excitation's, spatial attention's) or a mask's confidence (a healthy
      EfficientNet's SE gates read 54% to 93% saturated in its first epoch).
    - ``nonfinite_activations``: NaN or Inf in a sampled feature map, raised when its step is
      read (with ``on_alert="stop"``, training stops then: at most ``log_every_n_steps``
      batches later). NaN and +Inf are seen in every image of the batch (through the channels'
      maxima); -Inf only in the images read (``max_values``).

    Args:
        layers: names of modules whose (4-D or 5-D) outputs to watch; default every activation
            module.
        every_n_steps: sample every this many training batches (batches, not optimizer steps,
            so runs with several optimizers still sample; under gradient accumulation at most
            one batch per optimizer step); default the Trainer's ``log_every_n_steps``.
        dead_threshold: the dead fraction at which ``dead_channels`` fires.
        saturated_threshold: the saturated fraction at which ``saturated`` fires.
        warmup_epochs: epochs before ``dead_channels`` and ``saturated`` may fire.
        histograms: also log a histogram of each layer's values, of the last step of each read.
        max_values: read every s-th image of a sampled batch, s the smallest stride that keeps
            at most this many values per layer (at least 4 images); None reads every value
            (exact, and under DDP equal to a single process over the same batches, at several
            times the cost on large maps).
        activation_types: the module classes to watch by default; None: every common
            activation (see above).
        on_alert: ``"warn"``, ``"stop"`` (also sets ``trainer.should_stop``), or a callable that
            receives the :class:`~lightning_viz.alerts.Alert`.
        strict: re-raise a failure of the monitor instead of turning it into an alert.
        budget: the share of training time all lightning-viz callbacks may take together (see
            :class:`~lightning_viz.callbacks.base.VizCallback`); past it, sampled steps are
            skipped (the cadence stretches) until the share is back within it; the health checks
            still read each epoch's last batch. None (default): never skip.

    Raises:
        ValueError: bad arguments (at construction); unknown layer names (the closest valid names
            are listed) or a model without activation modules (at fit start).

    Logged keys (``<layer>`` is the module's name, ``#k`` added for its k-th call in a forward):

    - ``activations/<layer>/zero_fraction``: fraction of values <= 0 (sparsity), per sampled step.
    - ``activations/<layer>/localization``: 0 when a feature map's positive mass spreads evenly
      over the image, 1 when it sits on one pixel (mean over images and active channels: read
      it with ``dead_fraction``, since a layer whose channels died is localized by its few live
      ones).
    - ``activations/<layer>`` (histogram): the values of a sampled batch's strided images (an
      evenly strided sample of at most 4,096 of them), for the last step of each read: every
      sampled step at the default cadence, one per ``log_every_n_steps`` batches at most.
    - ``activations/<layer>/dead_fraction``: at epoch end, the fraction of channels with no
      positive value in any sampled batch of the epoch (the whole batch, by its per-channel
      maxima); only once each channel had at least 1,024 values in them
      (:data:`~lightning_viz.tags.DEAD_AFTER_VALUES`: a 1x1 map of a squeeze-excitation block
      in small batches has too few to tell a dead channel from a rarely active one), gathered
      over several epochs where one has fewer (small maps or batches, an epoch sampled once
      under the budget), and not for an epoch in which its maps held NaN or Inf.
    - ``activations/<layer>/saturated_fraction`` (sigmoid/tanh layers, instead of the three
      above): fraction of values within 2% of the output range from either bound.
    - ``alerts`` (text: the step's alerts as one table) and ``alerts/count`` (when the sampled
      steps are read, and at epoch end: at the step they are read at, once per step for all the
      lightning-viz callbacks).
    - ``lightning_viz/overhead/<callback>`` and ``lightning_viz/overhead`` (every epoch's end,
      with the other lightning-viz callbacks): the share of training time spent in it, and in all.

    How to read it: good feature maps are sparse (a high zero fraction after a ReLU) and
    localized (a few strong spots); a dead fraction that grows means channels died (often a
    learning rate too high); maps that are neither sparse nor localized mean the layer has not
    learned much.

    The scalars of a sampled step read every s-th image of its batch, s the smallest stride that
    keeps at most ``max_values`` (65,536, :data:`STATISTICS_VALUES`) per layer but at least 4 images
    (whole maps, so each map's localization is exact): a batch of 32 digits (32x32, 16
    channels) is read every 8th image. Measured on the digits net and on resnet18, the zero
    fraction and localization of the strided images are within 0.03 of the whole batch's
    (tested); NaN and +Inf are looked for in every value (through the channels' maxima), -Inf
    in the images read.

    Cost: on a sampled step, a strided copy and each channel's maximum per watched feature map;
    on a read, about 20 device operations per layer for all the steps that waited, one host
    transfer and the scalars' writes; on other steps nothing. At ``every_n_steps=1`` this is the
    worst case (the README's performance section gives it): steps wait, and the buffers of
    their copies hold up to 64 MiB until the fit ends (at the default cadence nothing waits, and
    each copy is freed once read).

    Example::

        trainer = Trainer(callbacks=[ActivationMonitor(every_n_steps=50)])
    """

    budget_note = (
        "ActivationMonitor's scalars then thin out; its dead-channel, saturation and NaN checks "
        "still read at least each epoch's last batch."
    )

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        every_n_steps: int | None = None,
        dead_threshold: float = 0.5,
        saturated_threshold: float = 0.5,
        warmup_epochs: int = 1,
        histograms: bool = True,
        max_values: int | None = STATISTICS_VALUES,
        activation_types: Sequence[type[nn.Module]] | None = None,
        on_alert: OnAlert = "warn",
        strict: bool = False,
        budget: float | None = None,
    ) -> None:
        super().__init__(on_alert=on_alert, strict=strict, budget=budget)
        self.layer_names = check_layer_names(layers)
        self.saturated_threshold = check_fraction("saturated_threshold", saturated_threshold)
        if activation_types is not None:
            activation_types = tuple(activation_types)
            if not activation_types or not all(
                isinstance(t, type) and issubclass(t, nn.Module) for t in activation_types
            ):
                raise ValueError(
                    "`activation_types` must be None or a non-empty sequence of nn.Module "
                    f"classes, got {activation_types!r}"
                )
        self.activation_types = activation_types
        self.every_n_steps = check_int("every_n_steps", every_n_steps, allow_none=True)
        self.dead_threshold = check_fraction("dead_threshold", dead_threshold)
        self.warmup_epochs = check_int("warmup_epochs", warmup_epochs, minimum=0)
        self.histograms = bool(histograms)
        self.max_values = check_int("max_values", max_values, allow_none=True)
        self._layers: dict[str, nn.Module] = {}
        self._interval = 1
        self._handles: list[RemovableHandle] = []
        self._health_only = False
        self._step_samples: dict[str, ActivationSample] = {}
        self._step_health: dict[str, ChannelHealth] = {}
        self._health: tuple[int, dict[str, ChannelHealth]] | None = None  # read at epoch end
        self._pending: list[tuple[int, dict[str, ActivationSample]]] = []
        self._buffers = SampleBuffers()
        self._flush_every = 1
        self._calls: dict[str, int] = {}
        self._hooked = False
        self._other_output: tuple[str, tuple[int, ...]] | None = None  # a watched non-4-D one
        self._problems: list[str] = []
        self._active: dict[str, Tensor] = {}
        self._seen: dict[str, int] = {}
        self._nonfinite: set[str] = set()  # the epoch's layers whose maps held NaN or Inf
        self._bounds: dict[str, tuple[float, float] | None] = {}
        self._saturation: dict[str, list[float]] = {}
        self._selectors: set[str] = set()  # saturating layers whose maps are 1x1 or 1 channel
        self._batches_seen = 0
        self._epoch_sampled = False
        self._sampled_step: int | None = None  # the optimizer step of the latest sample

    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {"layers": self.layer_names, "every_n_steps": self.every_n_steps}

    # ----------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        self._batches_seen, self._sampled_step = 0, None
        self._pending, self._flush_every, self._problems = [], 1, []
        self._buffers.clear()
        self._other_output = None
        source = type(self).__name__
        compiled = compiled_parts(pl_module)
        if compiled:
            where = "the LightningModule's forward" if compiled[0] == "" else repr(compiled[0])
            why = (
                f"it needs forward hooks in the training forward, but {where} is "
                "torch.compile'd and compiled code skips hooks added after compilation. Use "
                "ActivationMonitor on an uncompiled run (e.g. a short diagnostic run); the other "
                "lightning-viz callbacks work with compiled models "
                "(default_callbacks(activations=False) leaves it out)."
            )
            if self.layer_names is not None:
                raise ValueError(f"{source}: {why}")
            self.show_nothing(why)
            self._layers = {}
            return
        types = self.activation_types
        self._layers = watched_layers(
            pl_module, self.layer_names, lambda name, module: is_activation(module, types), source
        )
        if not self._layers:
            self.show_nothing(
                f"{type(pl_module).__name__} has no activation module (nn.ReLU, nn.GELU, "
                "nn.Sigmoid, ...) to hook: activations called as functions (F.relu) cannot be "
                "watched. Pass layers=[...] naming the modules whose outputs to watch, or "
                "activation_types=[...] naming your activation classes."
            )
        self._bounds = {name: saturation_bounds(module) for name, module in self._layers.items()}
        self._selectors = set()
        self._batch_norm = any(isinstance(m, _BatchNorm) for m in pl_module.modules())
        self._has_conv1d = any(isinstance(m, nn.Conv1d) for m in pl_module.modules())
        self._interval = self.every_n_steps or max(1, trainer.log_every_n_steps)

    @override
    def watching(self) -> str:
        return f"activations of {counted(len(self._layers), 'layer')}"

    @override
    def layout(self, call_order: Sequence[str] = ()) -> dict[str, dict[str, list[str]]]:
        """Charts for each call of a watched module the first training batch ran (a ResNet
        block's ``relu`` and ``relu#2``, apart, each beside the conv before it); one chart for
        all calls of a module it did not see run."""

        def charts(key: str, numbered_calls: bool) -> dict[str, list[str]]:
            def regex(*keys: str) -> list[str]:
                return [tags.scalar_regex(tags.ACTIVATION_SCALAR, key, keys, numbered_calls)]

            if self._bounds.get(tags.called_layer(key)) is not None:
                return {"activation saturation": regex("saturated_fraction")}
            return {
                "activation sparsity": regex("zero_fraction", "dead_fraction"),
                "activation localization": regex("localization"),
            }

        calls = [key for key in call_order if tags.called_layer(key) in self._layers]
        seen = {tags.called_layer(key) for key in calls}
        return {
            **{key: charts(key, numbered_calls=False) for key in calls},
            **{name: charts(name, True) for name in self._layers if name not in seen},
        }

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a layer whose samples held too few values to judge its channels (small maps, small
        # batches, an epoch sampled once under the budget) keeps them into the next epoch: it
        # is judged over several, where each epoch's own record never reached the count
        unjudged = {
            key
            for key, count in self._seen.items()
            if count < tags.DEAD_AFTER_VALUES and key not in self._nonfinite
        }
        self._active = {key: a for key, a in self._active.items() if key in unjudged}
        self._seen = {key: count for key, count in self._seen.items() if key in unjudged}
        self._saturation, self._nonfinite, self._health = {}, set(), None
        self._epoch_sampled = False

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        # counted in batches, not global_step: with two optimizers (a GAN) or manual
        # optimization global_step advances by several per batch and could skip every sample
        self._batches_seen += 1
        if not self.showing:
            return
        # one sample per optimizer step: under gradient accumulation its batches share it, and
        # each logged its values at it (4 points a step, drawn as vertical jumps)
        due = self._batches_seen % self._interval == 0 and self._sampled_step != trainer.global_step
        # an epoch's last batch is sampled when nothing else of the epoch was (epochs shorter
        # than the cadence, or the views' cost over the budget), so that every epoch's
        # dead-channel, saturation and NaN checks have data: the monitor's own share decides
        only = batch_idx + 1 == trainer.num_training_batches and not self._epoch_sampled
        if not due and not only:
            return
        whole = due and self.within_budget(trainer, "a sampled step", collective=True)
        if not whole and only:
            whole = self.within_budget(trainer, "a sampled step", collective=True, alone=True)
        if not whole and not only:
            return
        # where no whole sample fits, the epoch's last batch is read for the health checks
        # alone (the channels' maxima): they never wait for the budget, as FilterMonitor's do not
        self._epoch_sampled = True
        self._sampled_step = trainer.global_step
        with self.timed(trainer):
            self._add_hooks(trainer, health_only=not whole)

    def _add_hooks(self, trainer: pl.Trainer, health_only: bool) -> None:
        self._remove_hooks()
        self._health_only = health_only
        self._step_samples, self._step_health, self._calls = {}, {}, {}
        self._handles = [
            module.register_forward_hook(self._make_hook(name, trainer))
            for name, module in self._layers.items()
        ]

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self._handles:
            return
        with self.timed(trainer):
            self._end_sampled_step(trainer)

    def _end_sampled_step(self, trainer: pl.Trainer) -> None:
        """Keep the step's samples; reduce, sync and log them with the pending ones once
        ``_flush_every`` steps wait (the same steps on every rank: the count is structural)."""
        self._remove_hooks()
        if self._health_only:
            self._keep_health(trainer)
            return
        self._hooked = self._hooked or bool(self._calls)
        self._pending.append((trainer.global_step, self._step_samples))
        self._step_samples = {}
        if len(self._pending) >= self._flush_every:
            self._flush(trainer)

    def _flush(self, trainer: pl.Trainer) -> None:
        """Reduce the pending steps' samples together and log each step's statistics."""
        pending, self._pending = self._pending, []
        problems, self._problems = self._problems, []
        hooked, self._hooked = self._hooked, False
        with self.guarded(trainer, "activation statistics"), self._released():
            records = sum(len(samples) for _, samples in pending)
            agreed = self._ranks_agree(trainer, not problems, records)
            if problems:
                raise ValueError("; ".join(problems))
            if agreed and not records and hooked:
                returned = ""
                if self._other_output is not None:
                    # a ViT was told of Conv1d nets: said where the model has a Conv1d only
                    conv1d = "; FilterMonitor reads a Conv1d net's weights" * self._has_conv1d
                    returned = (
                        f" ({self._other_output[0]!r} returned {self._other_output[1]}: token "
                        f"maps and 1-D signals are not watched{conv1d})"
                    )
                self.show_nothing(
                    f"none of the {len(self._layers)} watched activation modules returned a "
                    f"4-D (N, C, H, W) or 5-D (N, C, T, H, W) feature map{returned}. Pass "
                    "layers=[...] naming modules with such outputs, if the model has any.",
                    trainer,
                )
            elif agreed and records:
                self._log_pending(trainer, pending)
        if self._flush_every == 1 and pending:
            values = sum(sample.images.numel() for sample in pending[0][1].values())
            self._flush_every = self._steps_per_flush(trainer, values)

    def _keep_health(self, trainer: pl.Trainer) -> None:
        """Add a health-only step's channel maxima to the epoch's dead-channel record (on the
        device) and keep the step for :meth:`_read_health`."""
        for key, health in self._step_health.items():
            if self._bounds_of(key) is None:
                self._note_active(key, health.channel_active)
                self._note_seen(trainer, key, health.values_per_channel)
        self._health, self._step_health = (trainer.global_step, self._step_health), {}

    def _read_health(self, trainer: pl.Trainer) -> None:
        """The health-only step's NaN/+Inf alerts and saturated fractions (counted over every
        rank's values), in one transfer."""
        if self._health is None:
            return
        (step, samples), self._health = self._health, None
        problems, self._problems = self._problems, []
        if not self._ranks_agree(trainer, not problems, len(samples)):
            if problems:
                raise ValueError("; ".join(problems))
            return
        if not samples:
            return
        rows = torch.stack(
            [
                torch.stack(
                    [
                        h.nonfinite.float(),
                        h.saturated,
                        h.saturated.new_full((), h.values_per_channel * len(h.channel_active)),
                    ]
                )
                for h in samples.values()
            ]
        )
        if trainer.world_size > 1:
            rows = trainer.strategy.reduce(rows, reduce_op="sum")
        host = to_host({"health": rows})["health"].tolist()
        for key, (nonfinite, saturated, values) in zip(samples, host, strict=True):
            self.raise_alert(trainer, nonfinite_activation_finding(key, nonfinite > 0, step))
            if nonfinite:
                self._nonfinite.add(key)
            elif self._bounds_of(key) is not None:
                self._add_saturation(key, saturated / values)

    def _note_active(self, key: str, active: Tensor) -> None:
        """OR a sample's (C,) active channels into the epoch's record of ``key``."""
        self._active[key] = active | self._active[key] if key in self._active else active

    def _note_seen(self, trainer: pl.Trainer, key: str, values_per_channel: int) -> None:
        """Count the values each channel's maxima read (of every rank's batch)."""
        self._seen[key] = self._seen.get(key, 0) + values_per_channel * trainer.world_size

    def _add_saturation(self, key: str, fraction: float) -> None:
        total = self._saturation.setdefault(key, [0.0, 0])
        total[0], total[1] = total[0] + fraction, total[1] + 1

    @contextmanager
    def _released(self) -> Iterator[None]:
        """Free the buffers' slots after a read, whether it got to reduce them or not."""
        try:
            yield
        finally:
            self._buffers.release()

    def _steps_per_flush(self, trainer: pl.Trainer, values_per_step: int) -> int:
        """How many sampled steps wait to be reduced together: as many as fit in
        ``log_every_n_steps`` batches and :data:`PENDING_VALUES` with ``values_per_step`` (what a
        step's copies hold: at least 4 images of each map, more than ``max_values`` on large
        maps); one, reading every value."""
        if self.max_values is None or not values_per_step:
            return 1
        per_log = trainer.log_every_n_steps // self._interval
        return max(1, min(per_log, PENDING_VALUES // values_per_step))

    @override
    def epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending:
            self._flush(trainer)
        # a name of its own: a reading that succeeds clears its name's failure alert
        with self.guarded(trainer, "activation health"), self.alerts_together(trainer):
            self._read_health(trainer)
        with self.guarded(trainer, "dead channels"), self.alerts_together(trainer):
            if self._ranks_agree(trainer, True, len(self._active)) and self._active:
                self._log_dead(trainer)
        with self.guarded(trainer, "saturation"), self.alerts_together(trainer):
            self._check_saturation(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending:
            with self.timed(trainer):
                self._flush(trainer)
        super().on_train_end(trainer, pl_module)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._remove_hooks()
        self._health = None
        if self._pending and trainer.world_size == 1:  # other ranks may not reach a collective
            strict, self.strict = self.strict, False  # the training's exception comes first
            try:
                self._flush(trainer)
            finally:
                self.strict = strict
        self._pending = []
        self._buffers.clear()  # Lightning calls no teardown after an exception
        super().on_exception(trainer, pl_module, exception)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        self._remove_hooks()
        self._pending = []
        self._buffers.clear()

    # ------------------------------------------------------------------------ measurement
    def _make_hook(self, name: str, trainer: pl.Trainer):
        explicit = self.layer_names is not None

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if in_backward():  # gradient checkpointing recomputes the forward in backward
                return
            with self.timed(trainer), torch.no_grad():
                self._measure(name, output, explicit)

        return hook

    def _measure(self, name: str, output: Any, explicit: bool) -> None:
        """One watched module's output in a sampled forward: its statistics, on the device."""
        try:
            count = self._calls[name] = self._calls.get(name, 0) + 1
            key = tags.call_key(name, count)
            if isinstance(output, Tensor) and output.dim() == 5:  # (N, C, T, H, W): a video's
                output = output.flatten(2, 3)  # every statistic reads the positions as a set
            if not isinstance(output, Tensor) or output.dim() != 4:
                if isinstance(output, Tensor) and self._other_output is None:
                    self._other_output = (key, tuple(output.shape))
                if explicit:
                    shape = (
                        tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
                    )
                    self._problems.append(f"layer {key!r} returned {shape}, not a 4-D feature map")
                return
            if self._bounds_of(key) is not None and (
                output.shape[1] == 1 or output.shape[-2:].numel() == 1
            ):
                self._selectors.add(key)
            if self._health_only:
                self._step_health[key] = channel_health(output, self._bounds_of(key))
                return
            store = partial(self._buffers.store, key, self._flush_every)
            self._step_samples[key] = sample_activations(output, self.max_values, store)
        except Exception as error:  # a hook must never break the training step
            self._problems.append(f"layer {name!r}: {type(error).__name__}: {error}")

    @staticmethod
    def _ranks_agree(trainer: pl.Trainer, ok: bool, size: int) -> bool:
        """Whether every rank is ready for the same collective (all ok, same size).

        Every rank calls this at the same point, so a failure on one rank makes all of them
        skip the step's reduction instead of leaving the others waiting in it.
        """
        if trainer.world_size == 1:
            return ok
        flags = [0.0 if ok else 1.0, float(size), -float(size)]
        flags = trainer.strategy.reduce(
            torch.tensor(flags, device=trainer.strategy.root_device), reduce_op="max"
        ).tolist()
        return flags[0] == 0 and flags[1] == -flags[2]

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _log_pending(
        self, trainer: pl.Trainer, pending: list[tuple[int, dict[str, ActivationSample]]]
    ) -> None:
        """Reduce each layer's pending samples in one pass per run of equal shapes (the last
        batch of an epoch may be smaller), move them to the host in one transfer, then log each
        step's statistics at its own step."""
        by_key: dict[str, list[tuple[int, ActivationSample]]] = {}
        for index, (_, samples) in enumerate(pending):
            for key, sample in samples.items():
                by_key.setdefault(key, []).append((index, sample))
        rows: list[tuple[int, str, int]] = []  # step's index, key, values per channel
        sums, histograms, histogram_rows = [], [], {}
        last = len(pending) - 1
        for key, samples in by_key.items():
            bounds = self._bounds_of(key)
            for run, images in self._buffers.groups(key, samples):
                with_histogram = self.histograms and run[-1][0] == last
                reduced = reduce_activation_samples(
                    images,
                    torch.stack([sample.channel_max for _, sample in run]),
                    histogram_samples=HISTOGRAM_SAMPLES,
                    bounds=bounds,
                    overwrite=True,  # the monitor's own copies
                    histogram_steps=int(with_histogram),  # only the last step's is logged
                )
                rows += [(index, key, sample.values_per_channel) for index, sample in run]
                sums.append(reduced.sums)
                if with_histogram:
                    histogram_rows[key] = len(histograms)
                    histograms.append(reduced.histogram)
                if bounds is None:  # a sigmoid saturates instead
                    self._note_active(key, reduced.channel_active)
        on_device = {"sums": torch.cat(sums)}
        if trainer.world_size > 1:
            on_device["sums"] = trainer.strategy.reduce(on_device["sums"], reduce_op="sum")
        if histograms:
            on_device["histograms"] = torch.cat(histograms)
        host = to_host(on_device)  # the one transfer of these steps
        by_step: dict[int, list[int]] = {}
        for row, (index, _, _) in enumerate(rows):
            by_step.setdefault(index, []).append(row)
        for index, step_rows in sorted(by_step.items()):
            step = pending[index][0]
            histogram_of = histogram_rows if index == last else {}
            with self.alerts_together(trainer):
                self._log_step(
                    trainer, step, [(*rows[r][1:], r) for r in step_rows], host, histogram_of
                )
        self.count_alerts(trainer)  # now, not at the samples' steps

    def _bounds_of(self, key: str) -> tuple[float, float] | None:
        """The saturation bounds of the layer behind a logged key (``layer`` or ``layer#i``)."""
        return self._bounds.get(tags.called_layer(key))

    def _log_step(
        self,
        trainer: pl.Trainer,
        step: int,
        rows: list[tuple[str, int, int]],
        host: dict[str, Tensor],
        histogram_rows: dict[str, int],
    ) -> None:
        """One sampled step's scalars, alerts and histograms (of the layers in
        ``histogram_rows``, by their rows of ``host["histograms"]``), from its ``(layer, values
        per channel in the batch, row)`` of the host tensors."""
        metrics, histograms = {}, {}
        for key, values_per_channel, row in rows:
            values = host["sums"][row].tolist()
            stats = stats_from_sums(values)
            saturating = self._bounds_of(key) is not None
            if key in self._active:  # its per-channel maxima read the whole batch, every rank's
                self._note_seen(trainer, key, values_per_channel)
            self.raise_alert(trainer, nonfinite_activation_finding(key, stats["nonfinite"], step))
            if stats["nonfinite"]:
                self._nonfinite.add(key)
                continue
            if saturating:
                logged = ["saturated_fraction"]
                self._add_saturation(key, stats["saturated_fraction"])
            elif math.isnan(stats["localization"]):
                logged = ["zero_fraction"]
            else:
                logged = _RELU_KEYS
            metrics.update({tags.tag(tags.ACTIVATION_SCALAR, key, k): stats[k] for k in logged})
            if key in histogram_rows:
                tag = tags.tag(tags.ACTIVATION_HISTOGRAM, key)
                histograms[tag] = host["histograms"][histogram_rows[key]]
        self.log_histograms(trainer, histograms, step=step)
        self.log_scalars(trainer, metrics, step=step)

    def _log_dead(self, trainer: pl.Trainer) -> None:
        keys = list(self._active)
        alive = [self._active[k].float() for k in keys]
        if trainer.world_size > 1:
            alive = [trainer.strategy.reduce(a, reduce_op="sum") for a in alive]
        dead = to_host({"dead": torch.stack([(a == 0).float().mean() for a in alive])})["dead"]
        metrics = {}
        for key, fraction in zip(keys, dead.tolist(), strict=True):
            if self._seen.get(key, 0) < tags.DEAD_AFTER_VALUES:
                continue  # too few values to call a channel dead (1x1 maps, tiny batches)
            if key in self._nonfinite:
                continue  # NaN maps are neither dead nor alive: nonfinite_activations says it
            metrics[tags.tag(tags.ACTIVATION_SCALAR, key, "dead_fraction")] = fraction
            if trainer.current_epoch + 1 >= self.warmup_epochs:
                module = self._layers.get(tags.called_layer(key))
                finding = dead_channel_finding(
                    key,
                    fraction,
                    self.dead_threshold,
                    trainer.current_epoch,
                    self._batch_norm,
                    training=module is None or module.training,
                )
                self.raise_alert(trainer, finding)
        self.log_scalars(trainer, metrics)
        self.count_alerts(trainer)

    def _check_saturation(self, trainer: pl.Trainer) -> None:
        """``saturated`` on the epoch's mean saturated fraction (host values, the same on every
        rank: the per-step sums were reduced already)."""
        if trainer.current_epoch + 1 < self.warmup_epochs:
            return
        for key, (total, count) in self._saturation.items():
            if key in self._selectors:
                continue
            finding = saturation_finding(
                key, total / count, self.saturated_threshold, trainer.current_epoch
            )
            self.raise_alert(trainer, finding)
