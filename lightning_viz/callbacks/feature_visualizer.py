"""FeatureVisualizer: the input each chosen unit responds to most, grown epoch after epoch."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from lightning_viz import tags
from lightning_viz.alerts import OnAlert
from lightning_viz.callbacks.activation_grid_logger import default_grid_layers
from lightning_viz.callbacks.base import to_host
from lightning_viz.callbacks.layers import named_layers
from lightning_viz.callbacks.probe_base import ProbeCallback, Unsuited
from lightning_viz.functional._capture import Forward, run_until_captured
from lightning_viz.functional._validation import (
    all_finite,
    check_int,
    check_layer_names,
    not_finite_error,
)
from lightning_viz.functional.captions import (
    captioned,
    compact,
    counted,
    footnote,
    labelled_table,
    stack_rows,
)
from lightning_viz.functional.feature_vis import PAD, visualize_features
from lightning_viz.functional.images import CARD_WIDTH, MAX_TILE, shrunk, to_rgb, to_uint8
from lightning_viz.functional.selection import evenly_spaced
from lightning_viz.probes import BatchToImages, Probes

FIT_START = -1
"""The epoch recorded for the column rendered at fit start, before any training."""

ROW_LABEL_WIDTH = 48
"""About the width of the row labels (``ch 123``) left of the grid."""

MAX_THUMBNAIL = 64
"""Largest side of a kept column's images (uint8 on the CPU, in the callback's state)."""


class FeatureVisualizer(ProbeCallback):
    r"""Feature visualization: for chosen units, the input they respond to most, epoch by epoch.

    At fit start and every ``every_n_epochs`` at the end of a training epoch, for each watched
    layer, the images that maximize its chosen units' mean activations are grown by gradient
    ascent (:func:`~lightning_viz.functional.feature_vis.visualize_features`, the Lucid/lucent
    recipe: Fourier-space parameters scaled by 1/frequency, decorrelated colour for RGB inputs,
    random jitter, scale and rotation at each step, Adam at lr 0.05). All units of a layer are
    one batch. The first render runs ``steps`` steps from noise; later ones continue from the
    previous render's parameters at half their contrast, with Adam's state (a warm start), for
    ``warm_steps`` steps, since the network changes little between epochs. The parameters,
    Adam's state and the grid's columns live in the state dict (on the CPU), so a resumed run
    continues them. Model in eval mode, fp32, train flags
    restored, gradients only w.r.t. the image parameters (no ``.grad`` touched), random draws
    from a seeded generator (the global RNG is untouched); global rank 0 only.

    The probes only give the input's shape and range: display images in [0, 1] map into the
    model's input space as ``mean + (x - 0.5) / 0.25 * std``, with the probes' per-channel mean
    and standard deviation (a photo-like image gets the probes' statistics).

    Args:
        layers: names from ``model.named_modules()`` with (N, C, H, W) outputs; default the
            second and the deepest conv feature maps after their activation (see
            ``default_grid_layers``), or the layers of ``units`` when given. Not the first: its
            units are a filter and a ReLU, so the image one responds to most is its filter's
            sign pattern at full contrast, black and white blotches that change only where a
            weight's sign does (the digits CNN's, 81% of pixels saturated, 1 to 4% of them
            changed from fit start to epoch 5 for 4 of 6 units); FilterMonitor's filter image
            shows those filters themselves.
        units: ``{layer: [channel, ...]}`` to visualize; layers without an entry get the
            ``num_units`` channels with the largest mean activation over the probes at fit
            start (fixed for the run).
        num_units: channels per layer chosen by default.
        steps: optimization steps of the first render, from noise.
        warm_steps: steps of each later render, continued from the previous one. With 128,
            after three epochs the units reach 100-116% of the objective lucent reaches in
            512 steps from noise (mean over units; the digits CNN, a held-out layer and seed,
            and the RGB photo CNN; 64 steps: 87-109%; benchmarks/feature_vis.py).
        max_columns: the most renders the grid shows; when there are more, old ones are
            thinned evenly (the first and the last kept).
        seed: seeds the noise and the random transforms (render k uses ``seed + k``).
        probes, num_probes, every_n_epochs, forward_fn, batch_to_images, on_alert, strict, budget,
            image_origin: as in :class:`~lightning_viz.GradCAMLogger`.

    Raises:
        ValueError: bad arguments (at construction); unknown layers, layers that do not run or
            give no (N, C, H, W) map, channels outside a layer, probes that do not fit the
            model (at fit start).

    Logged keys:

    - ``feature_vis/<layer>`` (image): one row per unit (captioned ``ch N``), one column per
      render (headed ``start`` for fit start, else ``epoch N``), each image enlarged by the
      largest whole factor at which the columns fit TensorBoard's 350-pixel card and captioned
      with its objective (near 0: colourful noise the unit ignores, where it looks like a
      pattern); as many columns as the run will log (at most ``max_columns``) from the start
      on, so the image keeps its size; a note below.
    - ``feature_vis/<layer>/objective`` (scalar): the mean over the units of the objective
      reached (each unit's mean activation on its image, without transforms).
    - ``feature_vis/<layer>/units`` (text): per unit, the objective reached at each column's
      epoch.
    - ``lightning_viz/overhead/<callback>`` and ``lightning_viz/overhead`` (every epoch's end,
      with the other lightning-viz callbacks): the share of training time spent in it, and in all.

    How to read it: each image is what the unit looks for, drawn as a pattern repeated over
    the image (a conv unit fires wherever it sees it). First-layer units should become oriented
    edges, stripes and colour blobs; deeper units textures and parts, with more structure.
    Images that stay grey noise, or an objective that stays near 0, mean the unit barely
    responds to anything yet (untrained, or dead). A row that keeps changing late in training
    is a feature that has not settled; one that stops changing early has converged (or
    stopped learning). The objective rising over epochs means the unit gets more selective;
    compare units of one layer, not layers (their scales differ).

    Cost: per render and layer, (steps) forwards that stop at the layer and backwards to the
    image, on a batch of one image per unit at the probes' size plus 24 pixels of padding;
    the first render runs ``steps``, each later one ``warm_steps``. Batched over units, a step
    costs a quarter of lucent's per unit (4 units; less with more). On a 2-core CPU a warm
    render of the default two layers and 6 units each takes about 2 s on the digits CNN (about
    90 optimizer steps at batch 64: about four of its 23-step epochs) and 6 s on resnet18 at 64
    pixels (19 steps), little beside an epoch of a real dataset; ``every_n_epochs=``, fewer
    units or ``warm_steps=64`` (87-114% of lucent's objective) for less.

    Example::

        trainer = Trainer(callbacks=[FeatureVisualizer(num_units=4, every_n_epochs=5)])
    """

    view = "feature visualization"

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        units: Mapping[str, Sequence[int]] | None = None,
        num_units: int = 6,
        steps: int = 256,
        warm_steps: int = 128,
        max_columns: int = 4,
        seed: int = 0,
        probes: Probes | None = None,
        num_probes: int | None = None,
        every_n_epochs: int = 1,
        forward_fn: Callable[[pl.LightningModule, Tensor], Any] | None = None,
        batch_to_images: BatchToImages | None = None,
        on_alert: OnAlert = "warn",
        strict: bool = False,
        budget: float | None = None,
        image_origin: str = "upper",
    ) -> None:
        given_units = self._check_units(units)
        layer_names = check_layer_names(layers)
        if given_units and layer_names is None:
            layers = list(given_units)
        elif given_units:
            outside = [name for name in given_units if name not in layer_names]
            if outside:
                raise ValueError(
                    f"`units` names layers {outside} that are not in `layers` {layer_names}"
                )
        super().__init__(
            layers=layers,
            probes=probes,
            num_probes=num_probes,
            every_n_epochs=every_n_epochs,
            forward_fn=forward_fn,
            batch_to_images=batch_to_images,
            on_alert=on_alert,
            strict=strict,
            budget=budget,
            image_origin=image_origin,
        )
        self.given_units = given_units
        self.num_units = check_int("num_units", num_units)
        self.steps = check_int("steps", steps)
        self.warm_steps = check_int("warm_steps", warm_steps)
        self.max_columns = check_int("max_columns", max_columns)
        self.seed = check_int("seed", seed, minimum=0)
        self._layers: dict[str, nn.Module] = {}
        self._input_mean: Tensor | None = None
        self._input_std: Tensor | None = None
        self._keep_size = False  # the model takes only the probes' size
        self.units: dict[str, list[int]] = {}
        self.spectra: dict[str, Tensor] = {}
        self.adam: dict[str, dict[str, Tensor]] = {}
        self.columns: dict[str, list[Tensor]] = {}
        self.column_epochs: dict[str, list[int]] = {}
        self.objectives: dict[str, list[list[float]]] = {}
        self.renders = 0

    @staticmethod
    def _check_units(units: Mapping[str, Sequence[int]] | None) -> dict[str, list[int]]:
        if units is None:
            return {}
        if not isinstance(units, Mapping) or not units:
            raise ValueError(
                f"`units` must be None or a non-empty {{layer: [channel, ...]}} dict, got {units!r}"
            )
        checked = {}
        for layer, channels in units.items():
            valid = (
                isinstance(layer, str)
                and not isinstance(channels, (str, bytes))
                and isinstance(channels, Sequence)
                and len(channels) > 0
                and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in channels)
            )
            if not valid:
                raise ValueError(
                    "`units` must map layer names to non-empty lists of channel indices "
                    f"(non-negative ints), got {layer!r}: {channels!r}"
                )
            checked[layer] = list(dict.fromkeys(channels))
        return checked

    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {"layers": self.layer_names}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and self.layer_names is not None:
            self._layers = named_layers(pl_module, self.layer_names, type(self).__name__)

    @override
    def prepare(self, pl_module: pl.LightningModule, probes: Probes, output: Any) -> None:
        self._check_named_layers(pl_module, probes, tokens=False)
        forward = self.probe_forward(pl_module)
        if self.layer_names is None:
            names = default_grid_layers(pl_module, probes.images[:1], forward, past_first=True)
            if not names:
                raise Unsuited(
                    f"{type(self).__name__}: {type(pl_module).__name__} has no activation or "
                    "nn.Conv2d layer with a spatial (N, C, H, W) output on a probe. Pass "
                    "layers=[...] to name layers with (N, C, H, W) outputs."
                )
            self._layers = named_layers(pl_module, names, type(self).__name__)
        images = probes.images.float()
        self._input_mean = images.mean(dim=(0, 2, 3))
        self._input_std = images.std(dim=(0, 2, 3)).clamp(min=1e-6)
        with torch.no_grad():
            _, captured = run_until_captured(
                pl_module, images, self._layers, full_forward=False, forward=forward
            )
            self._keep_size = not self._runs_padded(pl_module, images[:1], forward)
        for layer, activation in captured.items():
            if layer in self.units:  # restored from a checkpoint: the run's units
                continue
            count = activation.shape[1]
            given = self.given_units.get(layer)
            if given is not None:
                if max(given) >= count:
                    raise ValueError(
                        f"{type(self).__name__}: `units` of {layer!r} must be channels below "
                        f"{count} (its channel count), got {given}"
                    )
                self.units[layer] = list(given)
            else:
                means = activation.float().mean(dim=(0, 2, 3))
                top = means.topk(min(self.num_units, count)).indices
                self.units[layer] = top.tolist()

    def _runs_padded(
        self, pl_module: pl.LightningModule, image: torch.Tensor, forward: Forward | None
    ) -> bool:
        """Whether the model takes the probes' size grown by the transforms' padding: a ViT
        built for its image size raises ("Input height (56) doesn't match model (32)"), and
        is then shown images of its own size."""
        padded = F.pad(image, (PAD,) * 4)
        try:
            run_until_captured(pl_module, padded, self._layers, full_forward=False, forward=forward)
        except Exception:  # whatever the model raises on a size it does not take
            return False
        return True

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "units": {n: list(u) for n, u in self.units.items()},
            "spectra": dict(self.spectra),
            "adam": {n: dict(a) for n, a in self.adam.items()},
            "columns": {n: list(c) for n, c in self.columns.items()},
            "column_epochs": {n: list(e) for n, e in self.column_epochs.items()},
            "objectives": {n: [list(o) for o in v] for n, v in self.objectives.items()},
            "renders": self.renders,
        }

    @override
    def reset_state(self) -> None:
        super().reset_state()
        self.units, self.spectra, self.adam, self.columns = {}, {}, {}, {}
        self.column_epochs, self.objectives, self.renders = {}, {}, 0

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.units = {n: list(u) for n, u in state_dict.get("units", {}).items()}
        self.spectra = dict(state_dict.get("spectra", {}))
        self.adam = {n: dict(a) for n, a in state_dict.get("adam", {}).items()}
        self.columns = {n: list(c) for n, c in state_dict.get("columns", {}).items()}
        self.column_epochs = {n: list(e) for n, e in state_dict.get("column_epochs", {}).items()}
        self.objectives = {
            n: [list(o) for o in v] for n, v in state_dict.get("objectives", {}).items()
        }
        self.renders = int(state_dict.get("renders", 0))

    # ------------------------------------------------------------------------ the renders
    @override
    def visualize(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probes: Probes) -> None:
        epoch = FIT_START if self.renders == 0 else self.epoch(trainer)
        for layer in self._layers:
            previous = self.spectra.get(layer)
            adam = self.adam.get(layer) if previous is not None else None
            result = visualize_features(
                pl_module,
                layer,
                self.units[layer],
                tuple(probes.images.shape[1:]),
                steps=self.steps if previous is None else self.warm_steps,
                spectrum=None if previous is None else previous.to(pl_module.device),
                adam=None if adam is None else {k: v.to(pl_module.device) for k, v in adam.items()},
                input_mean=self._input_mean,
                input_std=self._input_std,
                seed=self.seed + self.renders,
                forward=self.probe_forward(pl_module),
                keep_size=self._keep_size,
            )
            thumbnails = to_rgb(result.images)
            if max(thumbnails.shape[-2:]) > MAX_THUMBNAIL:
                thumbnails = shrunk(thumbnails, MAX_THUMBNAIL)
            host = to_host(
                {
                    "spectrum": result.spectrum,
                    **{f"adam.{key}": value for key, value in result.adam.items()},
                    "objective": result.objective,
                    "thumbnails": to_uint8(thumbnails),
                    "finite": all_finite(result.spectrum) & all_finite(result.objective),
                }
            )
            if not host["finite"]:
                raise not_finite_error(f"the feature visualization of {layer!r}", None)
            # clones, not views of the whole transfer
            self.spectra[layer] = host["spectrum"].clone()
            self.adam[layer] = {k: host[f"adam.{k}"].clone() for k in result.adam}
            thumbnails = host["thumbnails"].to(torch.uint8)
            self._add_column(trainer, layer, thumbnails, host["objective"], epoch)
        self.renders += 1

    def _slots(self, trainer: pl.Trainer) -> int:
        """Columns of the grid: the renders the run will make, at most ``max_columns``."""
        if trainer.max_epochs is None or trainer.max_epochs < 0:
            return self.max_columns
        return max(1, min(self.max_columns, 1 + trainer.max_epochs // self.every_n_epochs))

    def _add_column(
        self, trainer: pl.Trainer, layer: str, thumbnails: Tensor, objective: Tensor, epoch: int
    ) -> None:
        columns = [*self.columns.get(layer, []), thumbnails]
        epochs = [*self.column_epochs.get(layer, []), epoch]
        objectives = [*self.objectives.get(layer, []), objective.tolist()]
        # a checkpoint's columns of another shape (an earlier version squeezed non-square
        # inputs square) cannot stand beside this one
        alike = [i for i, column in enumerate(columns) if column.shape == thumbnails.shape]
        columns, epochs = [columns[i] for i in alike], [epochs[i] for i in alike]
        objectives = [objectives[i] for i in alike]
        keep = evenly_spaced(len(columns), self.max_columns)
        self.columns[layer] = [columns[i] for i in keep]
        self.column_epochs[layer] = [epochs[i] for i in keep]
        self.objectives[layer] = [objectives[i] for i in keep]
        mean_objective = float(objective.mean())
        self.log_scalars(
            trainer, {tags.tag(tags.FEATURE_VIS_SCALAR, layer, "objective"): mean_objective}
        )
        self.log_text(trainer, tags.tag(tags.FEATURE_VIS_UNITS, layer), self._table(layer))
        if not self.takes_images(trainer):
            return
        device = trainer.lightning_module.device
        slots = self._slots(trainer)
        cells = torch.stack([_enlarged(c.to(device), slots) for c in self.columns[layer]], 1)
        cells = self.oriented(cells)
        # each cell under its objective: colourful noise over 0 is an input the unit ignores
        values = [
            [compact(v) for v in by_unit] for by_unit in zip(*self.objectives[layer], strict=True)
        ]
        cells = captioned(cells.flatten(0, 1), [v for row in values for v in row])
        cells = cells.unflatten(0, (len(values), -1))
        cells = F.pad(cells, (0, 0, 0, 0, 0, 0, 0, max(0, slots - cells.shape[1])), value=255)
        headers = [_header(e) for e in self.column_epochs[layer]]
        headers += [""] * (cells.shape[1] - len(headers))
        table = labelled_table(cells, [f"ch {u}" for u in self.units[layer]], headers)
        note = footnote(
            table.shape[-1],
            f"{layer}: each row the input its channel responds to most (activation "
            "maximization), under its objective (the channel's mean activation on it; near 0: "
            f"an input the unit ignores); mean {mean_objective:.3g}",
            table.device,
            table.dtype,
        )
        self.log_image(trainer, tags.tag(tags.FEATURE_VIS, layer), stack_rows(table, note))

    def _table(self, layer: str) -> str:
        """Markdown: a row per unit, its objective at each kept column's epoch."""
        epochs = self.column_epochs[layer]
        lines = [
            "| unit | " + " | ".join(f"objective, {_header(e)}" for e in epochs) + " |",
            "|---|" + "---|" * len(epochs),
        ]
        by_unit = zip(*self.objectives[layer], strict=True)
        for unit, values in zip(self.units[layer], by_unit, strict=True):
            lines.append(f"| ch {unit} | " + " | ".join(f"{v:.4g}" for v in values) + " |")
        return "\n".join(lines)

    @override
    def watching(self) -> str:
        units = sum(len(self.units.get(layer, ())) for layer in self._layers)
        return f"{self.view} of {units} units in {counted(len(self._layers), 'layer')}"


def _enlarged(images: Tensor, slots: int) -> Tensor:
    """Images enlarged by the largest whole factor (bilinear) at which ``slots`` columns of them
    and the row labels fit TensorBoard's card, at most to :data:`MAX_TILE` pixels a side."""
    side = max(images.shape[-2:])
    fitting = ((CARD_WIDTH - ROW_LABEL_WIDTH) // slots - 2) // side  # columns 2 pixels apart
    factor = max(1, min(fitting, MAX_TILE // side))
    if factor == 1:
        return images
    size = (images.shape[-2] * factor, images.shape[-1] * factor)
    enlarged = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False)
    return enlarged.round().clamp(0, 255).to(images.dtype)


def _header(epoch: int) -> str:
    return "start" if epoch == FIT_START else f"epoch {epoch}"
