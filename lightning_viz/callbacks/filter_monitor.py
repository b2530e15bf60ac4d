"""FilterMonitor: how smooth the conv filters are, how far they moved, and alerts when unhealthy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.nn.parameter import is_lazy
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_viz import tags
from lightning_viz._compat import in_backward, sharded_strategy
from lightning_viz.alerts import OnAlert
from lightning_viz.callbacks.base import RunContext, VizCallback, to_host
from lightning_viz.callbacks.layers import watched_layers
from lightning_viz.functional import filter_tiles, grid
from lightning_viz.functional._validation import (
    check_int,
    check_layer_names,
    check_non_negative,
)
from lightning_viz.functional.alert_rules import (
    FIRST_INTERVAL_STEPS,
    NOISE_MIN_KERNEL,
    FilterThresholds,
    Finding,
    exploding_base,
    filter_findings,
    frozen_finding,
    gated_finding,
    network_median,
    noisy_inputs_finding,
    outside_forward_finding,
    reference_at_refit_finding,
    reference_at_resume_finding,
    turn_reading,
    unfrozen_finding,
)
from lightning_viz.functional.captions import captioned, counted, footnote, stack_rows
from lightning_viz.functional.filters import (
    filter_health,
    kernel_slices,
    patch_noise,
    reference_slices,
    weight_sample,
)
from lightning_viz.functional.gates import scale_gates
from lightning_viz.functional.images import CARD_WIDTH
from lightning_viz.functional.selection import evenly_spaced

_RULE_INPUTS = ("drift", "learned", "norm_ratio", "step_cosine", "update_noise", "finite")
FILTERS_PER_ROW = 4
"""The most filter tiles side by side: 8 across, for a 64-filter first layer, made an
818-pixel image that TensorBoard's 350-pixel card shrank to 5-pixel captions; more filters run
down the card."""
FILTER_TILE = (CARD_WIDTH - 2) // FILTERS_PER_ROW - 2
"""The largest filter tile of which :data:`FILTERS_PER_ROW` (2 pixels apart) fit the card: 96
to 100-pixel tiles made 402 to 410-pixel images, shrunk to the card (captions too, "C| 1.08")."""

INPUT_BATCHES = 8
"""How many training batches ``noisy_inputs`` reads the first layer's images over: a batch of 64
of the demo's photo crops reads 0.19 to 0.68 at 7x7, the mean of eight 0.33 to 0.58 (40
shuffles)."""
MAX_FILTERS_SHOWN = 64
"""A layer's image shows at most this many filters (16 rows), evenly spread over its indices:
a ViT's 192 patch-embedding filters made a 394x5506-pixel image."""


TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
PLANAR = (nn.Conv2d, nn.ConvTranspose2d)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, *TRANSPOSED)
"""The conv classes watched by default: 2-D ones for every reading, 1-D (signals, audio) and 3-D
(video, volumes) ones for the alerts on how training moves them (no Geary's C, no image)."""


def _is_spatial_conv(name: str, module: nn.Module) -> bool:
    return isinstance(module, CONVS) and min(module.kernel_size) >= 2


def _is_image_conv(module: nn.Module) -> bool:
    """Whether a watched conv has 2-D filters: Geary's C, the filter images and the first
    layer's input noise read those only."""
    return module.weight.dim() == 4


def filters(module: nn.Module) -> Tensor:
    """The layer's filters as (out, in / groups, kh, kw): a transposed conv stores its weight as
    (in, out / groups, kh, kw)."""
    weight = module.weight
    if not isinstance(module, TRANSPOSED):
        return weight
    groups = module.groups
    grouped = weight.reshape(groups, weight.shape[0] // groups, *weight.shape[1:])
    return grouped.transpose(1, 2).reshape(-1, weight.shape[0] // groups, *weight.shape[2:])


class FilterMonitor(VizCallback):
    r"""Watch the conv filters: how smooth they are, how training moves them, and alert when a
    layer does not learn, explodes, collapses, is overwritten, or learns noise.

    Smoothness is Geary's C (:func:`~lightning_viz.functional.filter_noise`): about 1 for white
    noise (a fresh init), towards 0 for smooth filters. On its own it does not tell a healthy run
    from a broken one (AdamW leaves first-layer filters near their init, C about 0.95, while
    reaching 99% accuracy), so the monitor reads how the weights moved
    (:func:`~lightning_viz.functional.filter_health`): the *drift* ``||W - W0|| / R``, what
    the layer *learned* (the part of ``W - W0`` orthogonal to ``W0``, which weight decay alone
    cannot produce, over ``R``), the *norm ratio* ``||W|| / ||W0||``, the cosine between
    consecutive measurements, and the *update noise*, Geary's C of ``W - W0``. ``R`` is
    ``||W0||``, or the norm PyTorch's default init gives the layer where ``W0`` is smaller
    (torchvision inits every conv by its fan-out: a MobileNetV2's depthwise convs start at a
    quarter to a twentieth of the default scale, and a healthy first epoch moved them 7 times
    their own norm).

    Measured at the untrained baseline (train start, step 0), every ``every_n_epochs`` at the
    end of a training epoch, and within those epochs once ``every_n_steps`` optimizer steps have
    passed since the previous measurement (an epoch of hours tells a fault within minutes;
    epochs shorter than that are measured at their end only), with one host transfer per
    measurement. Whatever the cadence, a layer's first interval, from its reference (train
    start, an unfreeze), is measured
    :data:`~lightning_viz.functional.alert_rules.FIRST_INTERVAL_STEPS` (25) optimizer steps in
    where the epoch runs longer: the first-interval thresholds come from epochs of 7 to 46
    steps. The scalars, histogram and alerts come at every measurement, the image at epoch ends.

    Alerts (each (layer, kind) once until it clears; see ``on_alert``; thresholds from the alert
    benchmark ``benchmarks/alerts.py``, whose table the README shows):

    - ``not_learning``: after ``warmup_steps`` optimizer steps, ``learned`` below
      ``min_learned``, while the median of the watched learning layers is below it too (dead
      ReLUs, a learning rate far too low) or 20 times the layer's (vanishing gradients); a
      pretrained layer fine-tuned gently learns little, but no less than the others. Layers
      that learn through a scale initialized near zero are neither read nor in the median
      (``gated``).
    - ``overwritten``: the cosine between the weights now and at the previous measurement below
      ``min_step_cosine`` (a re-initialization, a learning-rate spike, divergence). In the first
      interval, from the weights at train start, the median of the watched learning layers must
      be below it too: a small-init layer turns far from its random init in a healthy run, and
      a learning rate far too high turns most layers, from scratch or from pretrained weights.
      An interval longer than the training before it is not read (the rest of a long first
      epoch): young weights keep turning in a healthy run (the digits net's median cosine over
      a first epoch of 450 steps: 0.36 at SGD lr 0.2, where it read 0.76 after 25 steps).
    - ``exploding``: drift above ``max_drift``, in the layer and in the median of the watched
      learning layers (a learning rate far too high moves them all; a single layer initialized
      small, like the stem of torchvision's ResNets, grows past it in healthy runs, so watching
      that layer alone brings its false alarm back); clears below half of it, or once the
      layer's learning rate fell to half its highest since the alert was raised (a one-cycle
      schedule's peak or a spike passed: runs that recover keep the weights the peak moved far,
      without weight decay for good), and then reads the drift beyond where it was.
    - ``collapse``: norm ratio below ``min_norm_ratio`` (weights shrinking to zero).
    - ``noisy_filters``: on the first watched layer that is no transposed conv (the one that
      reads the images: a GAN's generator, listed first, starts from a latent vector), with
      kernels of at least 5x5 (healthy 3x3 and 4x4 stems reach the threshold: too few pixels
      for smooth structure), once it learned something (``learned`` >= 0.1), an update noise
      of at least ``max_update_noise``: the structure training added is itself noise. Only
      where the images the layer reads are not noise themselves: read at its first training
      forward, their patches' Geary's C weighted by each patch's variance (``patch_noise``)
      at most ``max_input_noise`` (photos 0.13 to 0.63, the digits 0.09 to 0.15, objects on a
      flat background with 1% noise 0.27 to 0.36; on shapes over white noise, 0.78 to 0.92, a
      healthy zero-init resnet18's stem update read 0.96 to 1.0); ``noisy_inputs`` says when
      not.
    - ``nonfinite_weights``: NaN or Inf in the weights.
    - ``frozen`` (a notice, at train start and whenever the set changes, followed batch by
      batch): watched layers with ``requires_grad=False`` or in no optimizer param group; they
      get no learning alerts while so (a frozen backbone, an EMA copy or a distillation teacher
      is not a fault; an accidental freeze shows here at step 0).
    - ``unfrozen`` (a notice, a log line): frozen watched layers began training (Lightning's
      ``BackboneFinetuning``, a schedule setting ``requires_grad``): from then on the rules
      read them from their weights at that step, beside the other layers that began with them
      (the medians ``exploding``, ``overwritten`` and ``not_learning`` compare with are those
      of the layers measured from the same step).
    - ``gated`` (a notice, a log line, at train start): watched layers inside a residual block
      whose last norm scale, layer scale or skip-init gain starts within 1e-3 of zero (timm's
      ResNets, RegNets, ConvNeXts, NFNets; torchvision's ``zero_init_residual=True``): their
      gradients are that scale times what they would be, so they learn slowly by design.
    - ``noisy_inputs`` (a notice, a log line, at the first measurement after the first training
      batch): the images the first layer reads in the first :data:`INPUT_BATCHES` training
      batches are mostly noise at its scale, and ``noisy_filters`` does not read it.
    - ``outside_forward`` (a notice, a log line, at the first measurement after the first
      training batch): watched layers that batch's forward did not run (an EMA copy in the
      optimizer, updated after the step): the network's medians leave them out, and their
      ``not_learning`` says to check their update.
    - ``reference_at_resume`` (a notice, a log line, at train start): training resumed from a
      checkpoint without the monitor's reference weights of some watched layers (saved without
      FilterMonitor, or with other ``layers=``); they are measured from their weights at the
      resume, not from the initialization. Also when the monitor's previous fit trained the
      same model and this one starts it over at step 0 (a new Trainer): the reference is the
      weights now, as for a fine-tuning stage.

    Args:
        layers: names of the conv layers to watch; default every ``nn.Conv2d`` and
            ``nn.ConvTranspose2d`` (a decoder's) with kernels of at least 2x2 (Geary's C needs
            neighbours); in a model without those, every 1-D and 3-D conv with kernels of at
            least 2 (``nn.Conv1d``, ``nn.Conv3d`` and their transposes: the alerts on how
            training moves them, without Geary's C or an image, which read 2-D filters).
        image_layers: which layers' filters to log as an image: ``"first"`` (default, the first
            watched layer that is no transposed conv, and that trains: a frozen stem's filters
            never change), ``"all"``, or a list of names (a frozen one's legend says so).
        every_n_epochs: measure every this many training epochs.
        every_n_steps: within an epoch that ``every_n_epochs`` measures, measure once this many
            optimizer steps have passed since the previous measurement (no filter image: those
            come at epoch ends); None: at epoch ends only (and 25 steps into a first interval).
        noise_threshold: a filter with C at or above it counts as noisy in ``noisy_fraction``.
        warmup_steps: optimizer steps before ``not_learning`` and ``noisy_filters`` may fire.
        min_learned: ``not_learning`` below this; 0 turns the rule off.
        max_drift: ``exploding`` above this drift.
        min_step_cosine: ``overwritten`` below this cosine; -1 turns the rule off.
        min_norm_ratio: ``collapse`` below this norm ratio; 0 turns it off.
        max_update_noise: ``noisy_filters`` at or above this first-layer update noise.
        on_alert: ``"warn"`` (a warning, plus the ``alerts`` text and ``alerts/count``), ``"stop"``
            (also sets ``trainer.should_stop``, for health alerts; never for ``frozen`` or a
            failure of the monitor), or a callable that receives the
            :class:`~lightning_viz.alerts.Alert`.
        strict: re-raise a failure of the monitor instead of turning it into an alert.
        budget: the share of training time all lightning-viz callbacks may take together (see
            :class:`~lightning_viz.callbacks.base.VizCallback`); past it, the filter images skip
            epochs (on a small net, composing and encoding one costs more than the
            measurement). The measurement and its alerts never wait. None (default): an image
            every measured epoch.
        image_origin: where each image's first row is drawn: ``"upper"`` (default) at the top,
            as photos are stored; ``"lower"`` at the bottom, for images stored bottom-up, such as
            spectrograms with the lowest frequency in row 0 (matplotlib's ``origin``). Maps
            drawn over an image turn with it.
        max_input_noise: ``noisy_filters`` reads the first layer only where the images it reads
            are at most this noisy at its scale (``patch_noise``; 1 is white noise).

    Raises:
        ValueError: bad arguments (at construction); unknown layer names (the closest valid names
            are listed) or a model without conv layers (at fit start).

    Logged keys (``<layer>`` is the name in ``model.named_modules()``; a 1-D or 3-D conv logs
    ``drift`` and ``learned`` only):

    - ``filters/<layer>/noise``: median Geary's C of the layer's filters.
    - ``filters/<layer>/noisy_fraction``: fraction of filters with C >= ``noise_threshold``.
    - ``filters/<layer>/drift``: ``||W - W0|| / R``, W0 the weights at train start, ``R`` the
      larger of ``||W0||`` and the norm of PyTorch's default init for the layer.
    - ``filters/<layer>/learned``: the part of ``W - W0`` orthogonal to W0, over ``R``.
    - ``filters/<layer>/update_noise``: median Geary's C of ``W - W0`` (not at step 0).
    - ``filters/<layer>/noise_histogram`` (histogram): per-filter C. (Not ``filters/<layer>``:
      TensorBoard shows one kind of data per tag, and that tag is the image.)
    - ``filters/<layer>`` (image): the filters as a grid, at most 4 across (so that TensorBoard's
      card does not shrink the captions); RGB for 3 input channels, else one grey tile per
      filter showing its strongest in-channel slice; each tile min-max normalized, enlarged to
      at least 96 pixels and captioned with the filter's index and C; at most 64 filters,
      evenly spread over the indices of a wider layer (a ViT's 192 ran 5,500 pixels down); a
      legend under them, opened by the layer's active alerts and its drift when it has any
      (each filter scaled to its own range, a diverged layer's filters can look smooth).
    - ``alerts`` (text: the step's alerts as one table) and ``alerts/count`` (at every
      measurement).
    - ``lightning_viz/overhead/<callback>`` and ``lightning_viz/overhead`` (every epoch's end,
      with the other lightning-viz callbacks): the share of training time spent in it, and in all.

    How to read it: smooth, oriented, colour-opponent first-layer filters are the classic sign of
    a net that learned; ``learned`` near 0 means the layer is not training (while ``drift`` may
    still grow from weight decay alone); a drift in the tens across the layers means the learning
    rate is far too high (one layer initialized small, like torchvision ResNets' stem conv, may
    reach ten on its own in a healthy run). Smooth is not good on its own: a diverging run's
    filters can turn the smoothest of all (in the demo, the run at 30 times the learning rate
    reaches C 0.27 in its first epoch and 0.25 in its third, as smooth as the healthy run's
    after 30, while its drift reads 14, 2, then 9); a noise that falls while ``drift`` soars
    is divergence, not learning.

    Cost: a few reductions over the conv weights per measurement (about 3 ms on the digits CNN,
    26 ms on resnet18's 17 convs on a 2-core CPU), one host transfer, and in
    host memory and checkpoints a reference copy of the weights at train start (float32: whole
    for layers of at most 16,384 weights, else a fixed fifth of each filter's kernel slices, from
    which drift, learned, norm ratio and update noise are estimated; see
    :func:`~lightning_viz.functional.filters.reference_slices`) and a sample of at most 4,096
    weights per layer from the previous measurement.

    Example::

        trainer = Trainer(callbacks=[FilterMonitor()], logger=TensorBoardLogger("logs"))
    """

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        image_layers: Literal["first", "all"] | Sequence[str] = "first",
        every_n_epochs: int = 1,
        every_n_steps: int | None = 500,
        noise_threshold: float = 0.9,
        warmup_steps: int = 10,
        min_learned: float = 1e-3,
        max_drift: float = 5.0,
        min_step_cosine: float = 0.5,
        min_norm_ratio: float = 0.1,
        max_update_noise: float = 0.95,
        on_alert: OnAlert = "warn",
        strict: bool = False,
        budget: float | None = None,
        max_input_noise: float = 0.7,
        image_origin: str = "upper",
    ) -> None:
        super().__init__(on_alert=on_alert, strict=strict, budget=budget, image_origin=image_origin)
        self.layer_names = check_layer_names(layers)
        if isinstance(image_layers, str) and image_layers not in ("first", "all"):
            image_layers = [image_layers]
        self.image_layers = image_layers if isinstance(image_layers, str) else list(image_layers)
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs)
        self.every_n_steps = (
            None if every_n_steps is None else check_int("every_n_steps", every_n_steps)
        )
        self.noise_threshold = check_non_negative("noise_threshold", noise_threshold)
        if isinstance(min_step_cosine, bool) or not isinstance(min_step_cosine, (int, float)):
            raise ValueError(f"`min_step_cosine` must be a number, got {min_step_cosine!r}")
        self.thresholds = FilterThresholds(
            min_learned=check_non_negative("min_learned", min_learned),
            max_drift=check_non_negative("max_drift", max_drift),
            min_step_cosine=float(min_step_cosine),
            min_norm_ratio=check_non_negative("min_norm_ratio", min_norm_ratio),
            max_update_noise=check_non_negative("max_update_noise", max_update_noise),
            max_input_noise=check_non_negative("max_input_noise", max_input_noise),
            warmup_steps=check_int("warmup_steps", warmup_steps, minimum=0),
        )
        self._layers: dict[str, nn.Module] = {}
        self._image_layers: list[str] = []
        self._first: str | None = None  # the layer that reads the images (no transposed conv)
        self._frozen: list[str] = []  # not trained now: followed from batch to batch
        self._optimized: tuple[tuple[int, int], ...] = ()  # the param groups' lists and sizes
        self._optimized_ids: set[int] = set()  # the ids of their parameters
        self._outside: list[str] | None = None  # not run by the training forward; None: unknown
        self._gates: dict[str, str] = {}  # layer: the scale initialized near zero it learns through
        self._input_noise: float | None = None  # patch_noise of the first layer's images
        self._input_readings: list[Tensor] | None = None  # while reading them
        self._in_training_batch = False
        self._input_hook: RemovableHandle | None = None
        self._lazy: str | None = None  # the notice on lazy convs left out, said at fit start
        self._samples: dict[str, Tensor] = {}
        self._slices: dict[str, Tensor | None] = {}
        self.initial: dict[str, Tensor] = {}
        # the optimizer step each reference was taken at: a run resumed from a checkpoint
        # without this callback's state takes it then, and has learned nothing since
        self.reference_steps: dict[str, int] = {}
        self.previous: dict[str, Tensor] = {}
        self.previous_step: int | None = None  # the optimizer step of the previous measurement
        self.drift_bases: dict[str, float] = {}  # where exploding settled on a fallen rate
        # each layer's learning rate over the interval the previous measurement closed; while
        # its exploding is active, the highest since it was raised
        self.peak_learning_rates: dict[str, float] = {}
        # the highest learning rate of each (optimizer, param group) the training batches since
        # the previous measurement ran at: an epoch's scheduler steps before its end is measured
        self._interval_rates: dict[tuple[int, int], float] = {}
        self._unshown: dict[Any, Tensor] | None = None  # a measurement whose image was skipped
        self._latest: dict[Any, Tensor] | None = None  # the latest measurement, for its image

    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {"layers": self.layer_names, "every_n_epochs": self.every_n_epochs}

    # ----------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        self._unshown = self._latest = None
        source = type(self).__name__
        sharded = sharded_strategy(trainer)
        if sharded is not None:
            self._layers = {}
            self.show_nothing(
                f"the {sharded} shards the parameters across ranks, so the filters cannot be "
                "read whole (gathering them is not supported yet)."
            )
            return
        self._layers = watched_layers(pl_module, self.layer_names, _is_spatial_conv, source)
        planar = {n: m for n, m in self._layers.items() if isinstance(m, PLANAR)}
        if self.layer_names is None and planar:
            # an image CNN's 1-D convs are gadgets (ECA's channel attention), not its features
            self._layers = planar
        lazy = [n for n, m in self._layers.items() if is_lazy(getattr(m, "weight", None))]
        dry_run = (
            "lazy modules have no weights before their first forward: run one forward on a "
            "batch before fit() to create them, and FilterMonitor watches them"
        )
        if lazy and self.layer_names is not None:
            raise ValueError(f"{source}: layers {lazy} have no weights yet ({dry_run})")
        self._layers = {n: m for n, m in self._layers.items() if n not in lazy}
        self._lazy = f"the conv layers {lazy} are not watched ({dry_run})." if lazy else None
        if lazy and not self._layers:
            self.show_nothing(
                f"{type(pl_module).__name__}'s conv layers are lazy, so there are no filters to "
                f"show yet ({dry_run})."
            )
            return
        if not self._layers:
            self.show_nothing(
                f"{type(pl_module).__name__} has no conv layer (nn.Conv1d, 2d, 3d or their "
                "transposes) with kernels of at least 2, so there are no filters to watch (1x1 "
                "convs are not read; layers=[...] can name a conv module of another class whose "
                "weight is (out, in, *kernel))."
            )
        for name, module in self._layers.items():
            weight = getattr(module, "weight", None)
            if (
                not isinstance(weight, Tensor)
                or weight.dim() not in (3, 4, 5)
                or min(weight.shape[2:]) < 2
            ):
                shape = tuple(weight.shape) if isinstance(weight, Tensor) else None
                raise ValueError(
                    f"{source}: layer {name!r} ({type(module).__name__}) has no conv weight "
                    f"(out, in, *kernel) of 1 to 3 kernel dimensions, each at least 2 (weight "
                    f"shape {shape})"
                )
        self._first = next(
            (n for n, m in self._layers.items() if not isinstance(m, TRANSPOSED)), None
        )
        images = [n for n, m in self._layers.items() if _is_image_conv(m)]
        if self.image_layers == "first":
            first = self._first if self._first in images else None
            self._image_layers = [first or images[0]] if images else []
        elif self.image_layers == "all":
            self._image_layers = images
        else:
            missing = [name for name in self.image_layers if name not in images]
            if missing:
                raise ValueError(
                    f"{source}: `image_layers` {missing} are not among the watched layers with "
                    f"2-D filters {images}"
                )
            self._image_layers = list(self.image_layers)
        self._gates = {}
        with self.guarded(trainer, "finding the layers behind a scale initialized near zero"):
            self._gates = scale_gates(pl_module, self._layers)
        self._samples = {n: weight_sample(m.weight.numel()) for n, m in self._layers.items()}
        self._slices = {n: reference_slices(filters(m).shape) for n, m in self._layers.items()}

    def _noise_layers(self) -> list[str]:
        """The watched layers whose Geary's C is read: those of 2-D filters."""
        return [name for name, module in self._layers.items() if _is_image_conv(module)]

    @override
    def layout(self, call_order: Sequence[str] = ()) -> dict[str, dict[str, list[str]]]:
        noise = ("noise", "update_noise", "noisy_fraction")
        moved = ("drift", "learned")
        noise_layers = self._noise_layers()
        return {
            name: {
                **(
                    {"filter noise": [tags.scalar_regex(tags.FILTER_SCALAR, name, noise)]}
                    if name in noise_layers
                    else {}
                ),
                "filter drift": [tags.scalar_regex(tags.FILTER_SCALAR, name, moved)],
            }
            for name in self._layers
        }

    @override
    def watching(self) -> str:
        images = ", ".join(self._image_layers) or "none"
        return f"filters of {counted(len(self._layers), 'conv layer')} (images of {images})"

    @override
    def start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._lazy is not None:
            self.raise_alert(trainer, Finding("not_shown", "lazy convs", True, message=self._lazy))
        self._frozen_notice(trainer)
        self._outside = None
        if self.image_layers == "first" and set(self._image_layers) <= set(self._frozen):
            # a frozen stem's filters never change: show the first layer that trains
            trained = [
                n for n in self._layers if n not in self._frozen and _is_image_conv(self._layers[n])
            ]
            convs = [n for n in trained if not isinstance(self._layers[n], TRANSPOSED)]
            self._image_layers = (convs or trained or self._image_layers)[:1]
        gates = {n: g for n, g in self._gates.items() if n not in self._frozen}
        if gates:
            self.raise_alert(trainer, gated_finding(gates, len(self._layers) - len(self._frozen)))
        fresh = not self.initial
        # a resumed run's reference may lack layers watched now (a checkpoint saved without the
        # monitor, other layers=, a newer version watching more): they are compared with their
        # weights at the resume
        late = [name for name in self._layers if name not in self.initial]
        for name in late:
            self._take_reference(name, trainer.global_step)
        late = [name for name in late if name not in self._frozen]  # their drift stays 0
        if late and trainer.global_step > 0:
            self.raise_alert(trainer, reference_at_resume_finding(late, trainer.global_step))
        steps_before = self.trained_before(trainer, pl_module)
        if late and steps_before:
            self.raise_alert(trainer, reference_at_refit_finding(late, steps_before))
        if fresh:
            with self.guarded(trainer, "filter baseline"):
                self._measure(trainer, baseline=True)
        self._input_noise, self._input_readings = None, None
        first = self._layers.get(self._first) if self._first is not None else None
        # noisy_filters reads a first layer of large enough kernels (frozen, it may be
        # unfrozen later)
        if (
            first is not None
            and _is_image_conv(first)
            and min(first.kernel_size) >= NOISE_MIN_KERNEL
        ):
            self._read_inputs(trainer, first)

    def _reference_step(self, name: str) -> int:
        """The optimizer step the layer's reference was taken at (a checkpoint of an earlier
        version holds none: 0)."""
        return self.reference_steps.get(name, 0)

    def _take_reference(self, name: str, step: int) -> None:
        """The layer's weights now become its reference, taken at optimizer step ``step``."""
        weight = filters(self._layers[name]).detach()
        self.initial[name] = kernel_slices(weight, self._slices[name]).to(
            "cpu", torch.float32, copy=True
        )
        self.reference_steps[name] = step
        self.drift_bases.pop(name, None)

    def _read_inputs(self, trainer: pl.Trainer, layer: nn.Module) -> None:
        """In the first :data:`INPUT_BATCHES` training batches, read how noisy the images the
        first layer reads are at its scale (``noisy_filters`` reads the layer only where they
        are not noise themselves). Training batches only: the probe views' first forward, one
        probe image, had decided it (the demo's photos read 0.71, noise)."""
        self._input_readings = []

        def read(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not self._in_training_batch or in_backward() or self._input_readings is None:
                return
            what = "reading the first layer's images"
            with self.timed(trainer), self.guarded(trainer, what), torch.no_grad():
                self._input_readings.append(patch_noise(args[0], module.kernel_size))
            if len(self._input_readings) >= INPUT_BATCHES:
                self._stop_reading_input()

        self._input_hook = layer.register_forward_pre_hook(read)

    def _stop_reading_input(self) -> None:
        if self._input_hook is not None:
            self._input_hook.remove()
            self._input_hook = None

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._stop_reading_input()
        super().teardown(trainer, pl_module, stage)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._stop_reading_input()
        super().on_exception(trainer, pl_module, exception)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self._in_training_batch = True
        if self.showing and self.previous_step is not None:
            with self.timed(trainer):
                self._follow_training(trainer)
                self._note_learning_rates(trainer)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._in_training_batch = False
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.showing and self._due_within_epoch(trainer):
            with self.timed(trainer), self.guarded(trainer, "filter measurement"):
                self._measure(trainer, baseline=False, image=False)

    def _due_within_epoch(self, trainer: pl.Trainer) -> bool:
        """Whether, before the epoch's last batch (whose measurement the epoch's end makes),
        :data:`FIRST_INTERVAL_STEPS` optimizer steps have passed since a layer's reference,
        its first interval still open; or, in an epoch ``every_n_epochs`` measures,
        ``every_n_steps`` since the previous measurement."""
        if self.previous_step is None or trainer.is_last_batch:
            return False
        since = trainer.global_step - self.previous_step
        if since >= FIRST_INTERVAL_STEPS and any(
            self._reference_step(name) == self.previous_step for name in self._layers
        ):
            return True
        return (
            self.every_n_steps is not None
            and self._epoch_due(trainer)
            and since >= self.every_n_steps
        )

    def _epoch_due(self, trainer: pl.Trainer) -> bool:
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    @override
    def epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._epoch_due(trainer):
            return
        with self.guarded(trainer, "filter measurement"):
            if self.previous_step == trainer.global_step and self._latest is not None:
                # measured at this step within the epoch, which stopped early (max_steps, a
                # stopping alert): again, it compared the weights with themselves and cleared
                # the alert that had stopped training
                self._show(trainer, self._latest, baseline=False)
            else:
                self._measure(trainer, baseline=False)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "initial": dict(self.initial),
            "reference_steps": dict(self.reference_steps),
            "previous": dict(self.previous),
            "previous_step": self.previous_step,
            "drift_bases": dict(self.drift_bases),
            "peak_learning_rates": dict(self.peak_learning_rates),
        }

    @override
    def reset_state(self) -> None:
        super().reset_state()
        self.initial, self.previous, self.previous_step = {}, {}, None
        self.reference_steps, self.drift_bases, self.peak_learning_rates = {}, {}, {}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.initial = dict(state_dict.get("initial", {}))
        self.reference_steps = dict(state_dict.get("reference_steps", {}))  # older: step 0
        self.previous = dict(state_dict.get("previous", {}))
        self.previous_step = state_dict.get("previous_step")
        self.drift_bases = dict(state_dict.get("drift_bases", {}))
        self.peak_learning_rates = dict(state_dict.get("peak_learning_rates", {}))

    # ------------------------------------------------------------------------ measurement
    def _measure(self, trainer: pl.Trainer, baseline: bool, image: bool = True) -> None:
        health = {
            name: filter_health(
                filters(module),
                self.initial[name],
                self.noise_threshold,
                sample=self._samples[name],
                previous=self.previous.get(name),
                slices=self._reference_slices(name, filters(module)),
                fan_in=module.weight.shape[1] * module.weight[0, 0].numel(),  # as torch's init
            )
            for name, module in self._layers.items()
        }
        host = to_host(
            {(name, key): value for name, values in health.items() for key, value in values.items()}
        )
        self._said_input_noise(trainer)
        if not baseline and self._outside is None:
            self._outside_forward_notice(trainer)
        outside = self._outside or []
        learning = [n for n in self._layers if n not in self._frozen and n not in outside]
        settled = self._settle_exploding(trainer, host)
        network = {
            step: self._medians(host, [n for n in learning if self._reference_step(n) == step])
            for step in {self._reference_step(n) for n in self._layers}
        }
        with self.alerts_together(trainer):
            metrics = self._judge(trainer, host, baseline, network, settled)
        self.previous_step = trainer.global_step
        self.log_scalars(trainer, metrics)
        self.count_alerts(trainer)
        if self.writer(trainer) is not None:
            for name in self._noise_layers():
                histogram = tags.tag(tags.FILTER_NOISE_HISTOGRAM, name)
                self.log_values_histogram(trainer, histogram, host[name, "filter_noise"].numpy())
        self._latest = host
        if image:
            self._show(trainer, host, baseline)

    def _medians(self, host: dict[Any, Tensor], layers: Sequence[str]) -> dict[str, float]:
        """The medians of ``layers``' drift, step cosine and learned (of those not gated) that
        the rules compare each layer with: those of the learning layers measured from the same
        step (a backbone unfrozen mid-run with a learning rate far too high drifted 13.7 to
        19.6 from its weights then, beside layers trained from the start)."""
        medians = {
            "drift": network_median(self._drift_beyond_base(host, name) for name in layers),
            "step_cosine": network_median(host[name, "step_cosine"].item() for name in layers),
        }
        medians["learned"] = network_median(
            host[name, "learned"].item() for name in layers if name not in self._gates
        )
        return medians

    def _said_input_noise(self, trainer: pl.Trainer) -> None:
        """At the first measurement after training batches, the first layer's input noise on
        the host: the mean of the batches read (NaN where none was: not known, the layer is
        read); a ``noisy_inputs`` notice where noisy_filters will not read the layer for it."""
        if self._input_readings is None or self._input_noise is not None:
            return
        self._stop_reading_input()
        readings, self._input_readings = self._input_readings, None
        device = filters(self._layers[self._first]).device
        noise = (
            torch.stack(readings).mean() if readings else torch.full((), math.nan, device=device)
        )
        if trainer.world_size > 1:  # each rank read its own batches: all decide on their mean
            noise = trainer.strategy.reduce(noise, reduce_op="mean")
        self._input_noise = noise.item()
        if self._input_noise > self.thresholds.max_input_noise:
            kernel = tuple(self._layers[self._first].kernel_size)
            finding = noisy_inputs_finding(self._first, self._input_noise, self.thresholds, kernel)
            self.raise_alert(trainer, finding)

    def _drift_beyond_base(self, host: dict[Any, Tensor], name: str) -> float:
        """The drift ``exploding`` reads: beyond where it settled on a fallen learning rate."""
        return host[name, "drift"].item() - self.drift_bases.get(name, 0.0)

    def _settle_exploding(
        self, trainer: pl.Trainer, host: dict[Any, Tensor]
    ) -> dict[str, tuple[float, float]]:
        """Follow each layer's learning rate (while its ``exploding`` is active, the highest
        since it was raised) and settle the alert once the rate fell
        (:func:`~lightning_viz.functional.alert_rules.exploding_base`); the layers settled
        now, with their rate and its peak."""
        rates = self._learning_rates(trainer)
        settled = {}
        for name in self._layers:
            rate = rates.get(name)
            if rate is None:
                self.peak_learning_rates.pop(name, None)
                continue
            active = (name, "exploding") in self.alerts.active
            peak = max(self.peak_learning_rates.get(name, rate), rate) if active else rate
            self.peak_learning_rates[name] = peak
            drift, base = host[name, "drift"].item(), self.drift_bases.get(name, 0.0)
            if active and exploding_base(drift, base, rate, peak) != base:
                self.drift_bases[name] = drift
                settled[name] = rate, peak
        return settled

    def _note_learning_rates(self, trainer: pl.Trainer) -> None:
        """Before a training batch: the highest rate each param group ran at since the previous
        measurement (a rate held in a tensor is read at the measurement, not synced here)."""
        for i, optimizer in enumerate(trainer.optimizers):
            for j, group in enumerate(optimizer.param_groups):
                rate = group.get("lr")
                if isinstance(rate, (int, float)):
                    self._interval_rates[i, j] = max(self._interval_rates.get((i, j), rate), rate)

    def _learning_rates(self, trainer: pl.Trainer) -> dict[str, float]:
        """Each watched layer's learning rate over the interval this measurement closes: the
        highest of the optimizer param groups that hold its weight (none where none does), each
        the highest its batches ran at (where none ran, its rate now)."""
        interval, self._interval_rates = self._interval_rates, {}
        rates: dict[int, float] = {}
        for i, optimizer in enumerate(trainer.optimizers):
            for j, group in enumerate(optimizer.param_groups):
                if "lr" not in group:
                    continue
                rate = interval.get((i, j), float(group["lr"]))
                for param in group["params"]:
                    rates[id(param)] = max(rates.get(id(param), rate), rate)
        return {
            name: rates[id(module.weight)]
            for name, module in self._layers.items()
            if id(module.weight) in rates
        }

    def _show(self, trainer: pl.Trainer, host: dict[Any, Tensor], baseline: bool) -> None:
        """The filter images of a measurement, unless the budget skips them (kept for
        :meth:`owed_work`)."""
        if not self._image_layers or not self.takes_images(trainer):
            return
        if not baseline and not self.within_budget(
            trainer, "the filter image of an epoch", per_epoch=True
        ):
            self._unshown = host
            return
        self._unshown = None
        self._log_images(trainer, host)

    @override
    def owed_work(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The filter image of the last measurement, which the budget skipped."""
        if self._unshown is not None:
            host, self._unshown = self._unshown, None
            self._log_images(trainer, host)

    def _judge(
        self,
        trainer: pl.Trainer,
        host: dict[Any, Tensor],
        baseline: bool,
        network: dict[int, dict[str, float]],
        settled: dict[str, tuple[float, float]],
    ) -> dict[str, float]:
        """Each layer's scalars to log; its alerts raised (``network``: per reference step, the
        median drift, step cosine and learned of the learning layers measured from it;
        ``settled``: the layers whose ``exploding`` settled now, with their rate and peak)."""
        metrics = {}
        for name in self._layers:
            reference = self._reference_step(name)
            medians = network[reference]
            self.previous[name] = host[name, "sample"].clone()
            planar = _is_image_conv(self._layers[name])  # Geary's C reads 2-D filters only
            keys = ["noise", "noisy_fraction"] * planar + ["drift", "learned"]
            if planar and not baseline and host[name, "drift"].item() > 0:
                keys.append("update_noise")
            for key in keys:
                metrics[tags.tag(tags.FILTER_SCALAR, name, key)] = host[name, key].item()
            values = {key: host[name, key].item() for key in _RULE_INPUTS}
            reading = (
                None
                if self.previous_step is None
                else turn_reading(self.previous_step, trainer.global_step, reference)
            )
            if reading is None:
                values["step_cosine"] = math.nan
            findings = filter_findings(
                name,
                values,
                steps=trainer.global_step - reference,
                thresholds=self.thresholds,
                learning=name not in self._frozen,
                first_layer=name == self._first,
                kernel_size=min(self._layers[name].kernel_size),
                gated=name in self._gates,
                input_noise=self._input_noise,
                in_forward=name not in (self._outside or []),
                exploding=(name, "exploding") in self.alerts.active,
                not_learning=(name, "not_learning") in self.alerts.active,
                drift_base=self.drift_bases.get(name, 0.0),
                settled=settled.get(name),
                network_drift=medians["drift"],
                network_learned=medians["learned"],
                network_cosine=medians["step_cosine"] if reading == "network" else None,
            )
            for finding in findings:
                self.raise_alert(trainer, finding)
        return metrics

    def _log_images(self, trainer: pl.Trainer, host: dict[Any, Tensor]) -> None:
        """The watched image layers' filters, captioned with their Geary's C."""
        for name in self._image_layers:
            noise = host[name, "filter_noise"].tolist()
            shown = evenly_spaced(len(noise), MAX_FILTERS_SHOWN)
            tiles = captioned(
                self.oriented(
                    filter_tiles(filters(self._layers[name])[shown], largest=FILTER_TILE)
                ),
                [f"{i}  C {noise[i]:.2f}" for i in shown],
            )
            image = grid(tiles, nrow=min(FILTERS_PER_ROW, math.ceil(math.sqrt(len(tiles)))))
            some = (
                f" ({len(shown)} of its {len(noise)}, evenly spread)"
                if len(shown) < len(noise)
                else ""
            )
            frozen = " (frozen: not trained now)" if name in self._frozen else ""
            text = (
                f"{name}{frozen}: filter index{some} and Geary's C (1 = white noise, 0 = "
                "smooth); each filter scaled to its own range"
            )
            active = sorted(
                kind
                for layer, kind in self.alerts.active
                if layer == name and kind not in tags.NOTICE_KINDS
            )
            if active:  # a diverged layer's filters, each scaled alone, can look smooth
                text = (
                    f"ALERT {', '.join(active)} (drift {host[name, 'drift'].item():.3g}): read "
                    f"the filters with it. {text}"
                )
            legend = footnote(image.shape[-1], text, device=image.device)
            self.log_image(trainer, tags.tag(tags.FILTER_IMAGE, name), stack_rows(image, legend))

    def _reference_slices(self, name: str, weight: Tensor) -> Tensor | None:
        """The slices the stored reference holds (None: all; a reference saved whole, by an
        earlier version, is read whole)."""
        return None if self.initial[name].shape == weight.shape else self._slices[name]

    def _outside_forward_notice(self, trainer: pl.Trainer) -> None:
        """Find the learning layers the first training batch's forward did not run (an EMA
        copy); say so once, as an ``outside_forward`` notice. Unknown (compiled code, whose
        hooks do not fire) is none."""
        ran = RunContext.of(trainer).ran_in_training()
        if ran is None:
            self._outside = []
            return
        self._outside = [n for n in self._layers if n not in self._frozen and n not in ran]
        if self._outside:
            self.raise_alert(trainer, outside_forward_finding(self._outside, len(self._layers)))

    def _frozen_notice(self, trainer: pl.Trainer) -> None:
        """Find the watched layers that do not train; say so, as a ``frozen`` notice."""
        self._frozen = self._not_trained(trainer)
        if self._frozen:
            self.raise_alert(trainer, frozen_finding(self._frozen, len(self._layers)))

    def _not_trained(self, trainer: pl.Trainer) -> list[str]:
        """The watched layers that do not train now: ``requires_grad=False``, or in no
        optimizer param group (where the optimizers have any)."""
        groups = [group["params"] for o in trainer.optimizers for group in o.param_groups]
        optimized = tuple((id(params), len(params)) for params in groups)
        if optimized != self._optimized:  # param groups added (an unfreeze) or replaced
            self._optimized = optimized
            self._optimized_ids = {id(p) for params in groups for p in params}
        return [
            name
            for name, module in self._layers.items()
            if not module.weight.requires_grad
            or (self._optimized_ids and id(module.weight) not in self._optimized_ids)
        ]

    def _follow_training(self, trainer: pl.Trainer) -> None:
        """Before each training batch: layers that began training (an unfreeze, such as
        Lightning's ``BackboneFinetuning``) are measured from their weights now, among
        themselves, with an ``unfrozen`` notice; layers that stopped get no learning alerts
        while frozen. Frozen once and for all at train start, an unfrozen backbone whose
        learning rate was 100x too high drifted 19.6 from its weights without an alert."""
        frozen = self._not_trained(trainer)
        if frozen == self._frozen:
            return
        began = [name for name in self._frozen if name not in frozen]
        for name in began:
            self._take_reference(name, trainer.global_step)
        with self.alerts_together(trainer):
            if self._frozen:
                self.raise_alert(trainer, Finding("frozen", ", ".join(self._frozen), False))
            self._frozen = frozen
            if frozen:
                self.raise_alert(trainer, frozen_finding(frozen, len(self._layers)))
            if began:
                self.raise_alert(trainer, unfrozen_finding(began, trainer.global_step))
