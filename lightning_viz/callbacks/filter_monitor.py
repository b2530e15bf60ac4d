"""FilterMonitor: how smooth the conv filters are, how far they moved, and alerts when unhealthy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from typing_extensions import override

from lightning_viz import tags
from lightning_viz.alerts import OnAlert
from lightning_viz.callbacks.base import VizCallback, to_host
from lightning_viz.callbacks.layers import watched_layers
from lightning_viz.functional import filter_tiles, grid
from lightning_viz.functional._validation import (
    check_fraction,
    check_int,
    check_layer_names,
    check_non_negative,
)
from lightning_viz.functional.alert_rules import FilterThresholds, filter_findings, frozen_finding
from lightning_viz.functional.filters import filter_health

_RULE_INPUTS = ("noise", "drift", "update_noise", "finite")


def _is_spatial_conv(name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and min(module.kernel_size) >= 2


class FilterMonitor(VizCallback):
    r"""Watch the smoothness of conv filters and how far training moved them; alert when unhealthy.

    Smoothness is Geary's C (:func:`~lightning_viz.functional.filter_noise`): about 1 for white
    noise (a fresh init), towards 0 for smooth filters. On its own it does not tell a healthy run
    from a broken one (AdamW leaves first-layer filters near their init, C about 0.95, while
    reaching 97% accuracy), so the monitor also tracks the *drift* ``||W - W_init|| / ||W_init||``
    and the *update noise*, Geary's C of ``W - W_init``: updates of healthy first layers are smooth
    (C 0.2-0.5) because their gradients are sums of image patches.

    Measured at the untrained baseline (fit start, step 0) and every ``every_n_epochs`` at the end
    of a training epoch.

    Alerts (each (layer, kind) once until it clears; see ``on_alert``):

    - ``not_learning``: after ``warmup_epochs``, drift below ``min_drift`` (a frozen layer, a
      learning rate far too low, dead gradients).
    - ``exploding``: drift above ``max_drift`` (learning rate far too high, no weight decay).
    - ``noisy_filters``: after ``warmup_epochs``, the median C of the weights or of the update
      rose more than ``rise`` above its lowest value so far: learned structure is being replaced
      by noise (a learning-rate spike, a re-initialized or corrupted layer).
    - ``nonfinite_weights``: NaN or Inf in the weights.

    Defaults come from calibration runs on scikit-learn's digits (a 3-block Conv-BN-ReLU net):
    healthy AdamW and SGD runs drift 0.07-1.6 and their update noise rises at most 0.15 over 6
    epochs; learning rate 1e-5 drifts under 0.01 in the first layer; learning rates far too high
    drift 8-190 after one epoch; re-initializing a layer mid-run lifts its update noise by 0.5.

    Args:
        layers: names of the conv layers to watch; default every ``nn.Conv2d`` with kernels of
            at least 2x2 (Geary's C needs neighbours).
        image_layers: which layers' filters to log as an image: ``"first"`` (default, the first
            watched layer), ``"all"``, or a list of names.
        every_n_epochs: measure every this many training epochs.
        noise_threshold: a filter with C at or above it counts as noisy in ``noisy_fraction``.
        warmup_epochs: epochs before ``not_learning`` and ``noisy_filters`` may fire.
        min_drift: ``not_learning`` below this drift; 0 turns it off (e.g. for fine-tuning).
        max_drift: ``exploding`` above this drift.
        rise: ``noisy_filters`` when a median C rises this much above its lowest value.
        on_alert: ``"warn"`` (a warning, plus the ``alerts`` text and ``alerts/count``), ``"stop"``
            (also sets ``trainer.should_stop``), or a callable that receives the
            :class:`~lightning_viz.alerts.Alert`.
        strict: re-raise a failure of the monitor instead of turning it into an alert.

    Raises:
        ValueError: bad arguments (at construction); unknown layer names (the closest valid names
            are listed) or a model without conv layers (at fit start).

    Logged keys (``<layer>`` is the name in ``model.named_modules()``):

    - ``filters/<layer>/noise``: median Geary's C of the layer's filters.
    - ``filters/<layer>/noisy_fraction``: fraction of filters with C >= ``noise_threshold``.
    - ``filters/<layer>/drift``: ``||W - W_init|| / ||W_init||``, W_init the weights at fit start.
    - ``filters/<layer>/update_noise``: median Geary's C of ``W - W_init`` (not at step 0).
    - ``filters/<layer>/noise_histogram`` (histogram): per-filter C. (Not ``filters/<layer>``:
      TensorBoard shows one kind of data per tag, and that tag is the image.)
    - ``filters/<layer>`` (image): the filters as a grid; RGB for 3 input channels, else one grey
      tile per filter showing its strongest in-channel slice; each tile min-max normalized.
    - ``alerts`` (text) and ``alerts/count`` when an alert fires.

    How to read it: smooth, oriented, colour-opponent first-layer filters are the classic sign of
    a net that learned; a drift near 0 means the layer is not training; a drift in the tens means
    the learning rate is far too high; an update noise that jumps means the layer is being
    overwritten by noise.

    Cost: a few reductions over the conv weights per measured epoch, one host transfer, and a copy
    of the watched weights at fit start, kept on the CPU in float32 (also in checkpoints).

    Example::

        trainer = Trainer(callbacks=[FilterMonitor()], logger=TensorBoardLogger("logs"))
    """

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        image_layers: Literal["first", "all"] | Sequence[str] = "first",
        every_n_epochs: int = 1,
        noise_threshold: float = 0.9,
        warmup_epochs: int = 1,
        min_drift: float = 0.02,
        max_drift: float = 5.0,
        rise: float = 0.25,
        on_alert: OnAlert = "warn",
        strict: bool = False,
    ) -> None:
        super().__init__(on_alert=on_alert, strict=strict)
        self.layer_names = check_layer_names(layers)
        if isinstance(image_layers, str) and image_layers not in ("first", "all"):
            image_layers = [image_layers]
        self.image_layers = image_layers if isinstance(image_layers, str) else list(image_layers)
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs)
        self.noise_threshold = check_non_negative("noise_threshold", noise_threshold)
        self.warmup_epochs = check_int("warmup_epochs", warmup_epochs, minimum=0)
        self.min_drift = check_non_negative("min_drift", min_drift)
        self.max_drift = check_non_negative("max_drift", max_drift)
        if self.max_drift <= self.min_drift:
            raise ValueError(
                f"`max_drift` ({max_drift!r}) must be larger than `min_drift` ({min_drift!r})"
            )
        self.rise = check_fraction("rise", rise)
        self.thresholds = FilterThresholds(
            min_drift=self.min_drift,
            max_drift=self.max_drift,
            rise=self.rise,
            warmup_epochs=self.warmup_epochs,
        )
        self._layers: dict[str, nn.Module] = {}
        self._image_layers: list[str] = []
        self._frozen: list[str] = []
        self.initial: dict[str, Tensor] = {}
        self.lowest: dict[str, dict[str, float]] = {}

    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {"layers": self.layer_names, "every_n_epochs": self.every_n_epochs}

    # ----------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        source = type(self).__name__
        self._layers = watched_layers(
            pl_module,
            self.layer_names,
            _is_spatial_conv,
            "nn.Conv2d layer with kernels of at least 2x2",
            source,
        )
        for name, module in self._layers.items():
            weight = getattr(module, "weight", None)
            if not isinstance(weight, Tensor) or weight.dim() != 4 or min(weight.shape[-2:]) < 2:
                shape = tuple(weight.shape) if isinstance(weight, Tensor) else None
                raise ValueError(
                    f"{source}: layer {name!r} ({type(module).__name__}) has no conv weight with "
                    f"kernels of at least 2x2 (weight shape {shape})"
                )
        if self.image_layers == "first":
            self._image_layers = list(self._layers)[:1]
        elif self.image_layers == "all":
            self._image_layers = list(self._layers)
        else:
            missing = [name for name in self.image_layers if name not in self._layers]
            if missing:
                raise ValueError(
                    f"{source}: `image_layers` {missing} are not among the watched layers "
                    f"{list(self._layers)}"
                )
            self._image_layers = list(self.image_layers)

    @override
    def layout(self) -> dict[str, dict[str, list[str]]]:
        noise = ("noise", "update_noise", "noisy_fraction")
        return {
            f"layer {name}": {
                "filter noise": [tags.scalar_regex(tags.FILTER_SCALAR, name, noise)],
                "filter drift": [tags.scalar_regex(tags.FILTER_SCALAR, name, ["drift"])],
            }
            for name in self._layers
        }

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._frozen_notice(trainer)
        if self.initial:
            return
        self.initial = {
            name: module.weight.detach().to("cpu", torch.float32, copy=True)
            for name, module in self._layers.items()
        }
        with self.guarded(trainer, "filter baseline"):
            self._measure(trainer, baseline=True)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            with self.guarded(trainer, "filter measurement"):
                self._measure(trainer, baseline=False)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "initial": dict(self.initial), "lowest": dict(self.lowest)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.initial = dict(state_dict.get("initial", {}))
        self.lowest = {name: dict(values) for name, values in state_dict.get("lowest", {}).items()}

    # ------------------------------------------------------------------------ measurement
    def _measure(self, trainer: pl.Trainer, baseline: bool) -> None:
        health = {
            name: filter_health(module.weight, self.initial[name], self.noise_threshold)
            for name, module in self._layers.items()
        }
        host = to_host(
            {(name, key): value for name, values in health.items() for key, value in values.items()}
        )
        metrics = {}
        for name in self._layers:
            keys = ["noise", "noisy_fraction", "drift"]
            if not baseline and host[name, "drift"].item() > 0:
                keys.append("update_noise")
            metrics.update(
                {tags.tag(tags.FILTER_SCALAR, name, k): host[name, k].item() for k in keys}
            )
            findings, self.lowest[name] = filter_findings(
                name,
                {key: host[name, key].item() for key in _RULE_INPUTS},
                self.lowest.get(name, {}),
                epoch=trainer.current_epoch,
                baseline=baseline,
                thresholds=self.thresholds,
                learning=name not in self._frozen,
            )
            for finding in findings:
                self.raise_alert(trainer, finding)
        self.log_scalars(trainer, {**metrics, **self.alert_count(trainer)})
        if self.writer(trainer) is None:
            return
        for name in self._layers:
            histogram = tags.tag(tags.FILTER_NOISE_HISTOGRAM, name)
            self.log_values_histogram(trainer, histogram, host[name, "filter_noise"].numpy())
        for name in self._image_layers:
            tiles = filter_tiles(self._layers[name].weight)
            image = grid(tiles, nrow=math.ceil(math.sqrt(len(tiles))))
            self.log_image(trainer, tags.tag(tags.FILTER_IMAGE, name), image)

    def _frozen_notice(self, trainer: pl.Trainer) -> None:
        """Find the watched layers that will not train; say so once, as a ``frozen`` notice."""
        in_optimizer = {
            id(p) for o in trainer.optimizers for group in o.param_groups for p in group["params"]
        }
        self._frozen = [
            name
            for name, module in self._layers.items()
            if not module.weight.requires_grad
            or (in_optimizer and id(module.weight) not in in_optimizer)
        ]
        if self._frozen:
            self.raise_alert(trainer, frozen_finding(self._frozen))
