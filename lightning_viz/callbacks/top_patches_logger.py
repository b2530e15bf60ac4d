"""TopPatchesLogger: the validation patches that excite each unit most, epoch after epoch."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_viz import tags
from lightning_viz._compat import sharded_strategy
from lightning_viz.alerts import OnAlert
from lightning_viz.callbacks.activation_grid_logger import default_grid_layers
from lightning_viz.callbacks.base import to_host
from lightning_viz.callbacks.layers import named_layers
from lightning_viz.callbacks.probe_base import (
    ReentrantCheckpoint,
    Unsuited,
    forward_with,
    reentrant_checkpoint_explained,
)
from lightning_viz.callbacks.validation_view import ValidationView
from lightning_viz.functional._pass import untouched_rng
from lightning_viz.functional._validation import check_int, check_layer_names
from lightning_viz.functional.captions import (
    captioned_blocks,
    compact,
    footnote,
    stack_rows,
    text_band,
)
from lightning_viz.functional.images import CARD_WIDTH, grid, to_rgb, to_uint8
from lightning_viz.functional.receptive_field import ReceptiveField, receptive_fields
from lightning_viz.functional.top_patches import (
    TopK,
    changed_fraction,
    empty_top_k,
    tie,
    update_top_k,
)
from lightning_viz.probes import BatchToImages

MAX_TILE = 96
"""The largest side of a patch in the grid (a few units with k = 3)."""
MIN_PATCH_TILE = 30
"""The smallest side of a patch in the grid."""
BLOCKS_PER_ROW = 2
"""Units side by side in the grid, each a block of its k patches (3x3 for k = 9, as in Zeiler &
Fergus's figure 2): 53-pixel patches within TensorBoard's card, where a row of nine per unit
left 31 (a 224-pixel photo's deep-layer field shrunk to a thumbnail nobody could read)."""
BLOCK_PADDING = 6
"""Pixels between the units' blocks, wider than between a block's patches (2)."""
FRAME_GREY = 160
"""The 1-pixel frame drawn over each patch's edge, so that a white patch (a digit's empty
background) shows on the white page instead of leaving a caption over nothing."""


def patch_side(field: int, tile: int) -> int:
    """The side a patch is kept at: no finer than the grid shows it (``tile``), and a whole
    fraction of the field, so that the crop is one pooling and one sample per pixel."""
    return -(-field // max(1, field // tile))


def display_field(field: ReceptiveField, image_size: tuple[int, int]) -> ReceptiveField:
    """The field cut to the image's size, centred where it was: a deep layer's field is often
    larger than the image (resnet18's last block sees 435 pixels), and its crop would be mostly
    padding."""
    start, end = [], []
    for axis in range(2):
        size = min(field.size[axis], image_size[axis])
        first = field.start[axis] + (field.size[axis] - size) // 2
        start.append(first)
        end.append(first + size - 1)
    return dataclasses.replace(field, start=tuple(start), end=tuple(end))


class TopPatchesLogger(ValidationView):
    r"""For chosen units, the validation-image patches that excite them most: the receptive
    field of each unit's k strongest responses, as a grid of units by their top k, epoch after
    epoch, with a score of how much each unit changed what it responds to.

    During every ``every_n_epochs`` validation epoch, a hook on each layer reads the maps of the
    validation forward the Trainer runs anyway (no extra forward) and keeps, per unit, the k
    images whose maximum over the unit's map is largest, with the crop of the input that the
    maximum's position sees (its receptive field), all on the device: nothing is read on the
    host until the epoch's end. Receptive fields are computed from the layer stack at the first
    batch (:func:`~lightning_viz.functional.receptive_fields`): exact for chains of convolutions
    and poolings, residual sums and concatenations included; an interpolation, a transposed
    convolution or a token layer on the path makes it the approximation documented there, said
    in the text table. Global rank 0 only (under DDP: rank 0's share of the validation set);
    the first validation dataloader only, where the fit has several.

    Args:
        layers: names from ``model.named_modules()`` with (N, C, H, W) outputs; default the
            first and the deepest conv feature maps after their activation (as
            :class:`~lightning_viz.ActivationGridLogger`), chosen at the first validation batch.
        units: how many units (channels) per layer, evenly spaced over its channels (0, then
            every C/units-th), or the channel indices to show in every layer.
        k: patches per unit.
        every_n_epochs: gather every this many validation epochs.
        forward_fn: how to run the model on images alone, ``forward_fn(pl_module, images)``,
            for the one forward that finds the layers' receptive fields (a model with other
            inputs); default ``pl_module(images)``. The patches themselves ride on the
            validation forward.
        batch_to_images: where the images are in a batch that is not a tensor, an
            ``(images, labels, ...)`` sequence or a dict.
        on_alert, strict, budget: as in :class:`~lightning_viz.ActivationMonitor`.
        image_origin: as in :class:`~lightning_viz.GradCAMLogger`.

    Raises:
        ValueError: bad arguments (at construction); unknown layers (at fit start).

    Logged keys:

    - ``top_patches/<layer>`` (image): one block per unit (headed ``ch N``; ``ch N (all tie)``
      where its k values tie, a unit that responds as much to more patches, and ``ch N (all
      0)`` where they are all 0, a unit dead on the validation images: the k shown are then
      the first found), its k patches strongest first, row by row (3x3 for k = 9, as in
      Zeiler & Fergus's figure 2), each captioned with the unit's maximum on that image; two
      blocks a row, as wide as TensorBoard's card (53-pixel patches for k = 9).
      The patches are drawn as the dataset had them before its torchvision ``Normalize``, else
      on one min-max scale for all of them.
    - ``top_patches/<layer>/changed``: from the second logged epoch, the mean over units of the
      share of a unit's top-k images that were not in its previous top-k: 0 when every unit
      responds most to the same images as before, 1 when none does (not logged where the
      validation set has no more than k images, all of them in every top-k).
    - ``top_patches/<layer>/units`` (text): per unit, its top values and the images' positions
      in the validation set, and the layer's receptive field (size, stride, exact or not).
    - ``lightning_viz/overhead/<callback>`` and ``lightning_viz/overhead``: the share of
      training time spent in it, and in all.

    How to read it: a unit that has learned something responds most to patches that look alike
    (an edge at one angle, a stroke's end, a texture, an object part deeper in the net); a row of
    unrelated patches means the unit has no clear preference yet. Early layers' fields are a few
    pixels, deep layers' cover most of the image. ``changed`` falls as training settles: units
    keep responding to the same images. A ``changed`` that stays high late in training means the
    features are still being rewritten (a learning rate too high); a jump late in training means
    something disrupted them.

    Cost: per validation batch, each unit's maximum over its map, a sort of k + N values per
    unit and the crops of the batch's own k best per unit (``roi_align``), all on the device; at
    the logged epoch's end one host transfer per layer and the grid. The patches are kept at the
    size they are shown (53 pixels a side for k = 9): units x k x C x 53 x 53 floats per layer
    on the device. Measured (``python -m benchmarks.validation_views``): 249 ms of resnet18's
    2-second validation epoch of 2,048 images at 64 pixels (12%), 17 ms of the digits CNN's
    40 ms.

    Example::

        trainer = Trainer(callbacks=[TopPatchesLogger(layers=["layer3.1.relu"], units=12)])
    """

    view = "top patches"

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        units: int | Sequence[int] = 8,
        k: int = 9,
        every_n_epochs: int = 1,
        forward_fn: Callable[[pl.LightningModule, Tensor], Any] | None = None,
        batch_to_images: BatchToImages | None = None,
        on_alert: OnAlert = "warn",
        strict: bool = False,
        budget: float | None = None,
        image_origin: str = "upper",
    ) -> None:
        self.forward_fn = forward_fn
        super().__init__(
            every_n_epochs=every_n_epochs,
            batch_to_images=batch_to_images,
            on_alert=on_alert,
            strict=strict,
            budget=budget,
            image_origin=image_origin,
        )
        self.layer_names = check_layer_names(layers)
        if isinstance(units, int):
            self.units: int | list[int] = check_int("units", units)
        elif (
            isinstance(units, Sequence)
            and units
            and all(isinstance(u, int) and u >= 0 for u in units)
        ):
            self.units = list(units)
        else:
            raise ValueError(
                f"`units` must be a positive int or a non-empty sequence of channel indices, got "
                f"{units!r}"
            )
        self.k = check_int("k", k)
        self._columns = math.ceil(math.sqrt(self.k))
        blocks = CARD_WIDTH - BLOCK_PADDING * (BLOCKS_PER_ROW + 1)
        self._tile = max(
            MIN_PATCH_TILE, min(MAX_TILE, blocks // (BLOCKS_PER_ROW * self._columns) - 2)
        )
        self._layers: dict[str, nn.Module] = {}
        self._fields: dict[str, ReceptiveField] = {}
        self._channels: dict[str, Tensor] = {}
        self._top: dict[str, TopK] = {}
        self.previous: dict[str, Tensor] = {}

    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {"layers": self.layer_names, "k": self.k}

    @override
    def resolve(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._layers, self._fields, self._channels = {}, {}, {}
        sharded = sharded_strategy(trainer)
        if sharded is not None:
            raise Unsuited(
                f"the {sharded} shards the parameters across ranks, and the forward on rank 0 "
                "alone that finds the receptive fields would wait forever for the other ranks' "
                "shards (sharded strategies are not supported yet)."
            )
        if self.layer_names is not None:
            self._layers = named_layers(pl_module, self.layer_names, type(self).__name__)

    @override
    def watching(self) -> str:
        return "top patches of " + (
            ", ".join(self._layers)
            or "the layers of the activation grids (chosen on the first validation batch)"
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "previous": {n: p.cpu() for n, p in self.previous.items()}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.previous = dict(state_dict.get("previous", {}))

    @override
    def reset_state(self) -> None:
        super().reset_state()
        self.previous = {}

    @override
    def begin_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._top = {}

    def _first_batch(self, pl_module: pl.LightningModule, images: Tensor) -> None:
        """Choose the default layers and their receptive fields from one forward of an image
        (``pl_module(image)``); a model that cannot run so is :class:`Unsuited` to the defaults."""
        try:
            with untouched_rng(), reentrant_checkpoint_explained():
                self._layers_and_fields(pl_module, images)
        except Unsuited:
            raise
        except Exception as error:
            if self.layer_names is not None:
                raise
            advice = (
                ""
                if isinstance(error, ReentrantCheckpoint)
                else " Pass forward_fn=lambda model, images: ... that runs the model on images "
                "alone (as for the probe views)."
            )
            raise Unsuited(
                f"{type(self).__name__}: it finds its layers and their receptive fields by "
                f"running {type(pl_module).__name__} on an image of the validation batch, which "
                f"failed ({type(error).__name__}: {error}).{advice}"
            ) from error

    def _layers_and_fields(self, pl_module: pl.LightningModule, images: Tensor) -> None:
        forward = forward_with(pl_module, self.forward_fn)
        if not self._layers:
            names = default_grid_layers(pl_module, images[:1], forward)
            if not names:
                raise Unsuited(
                    f"{type(self).__name__}: {type(pl_module).__name__} has no activation or "
                    "nn.Conv2d layer with a spatial (N, C, H, W) output. Pass layers=[...] naming "
                    "layers with (N, C, H, W) outputs."
                )
            self._layers = named_layers(pl_module, names, type(self).__name__)
        self._fields = receptive_fields(pl_module, images[:1], list(self._layers), forward)

    @override
    def hooks(
        self, pl_module: pl.LightningModule, images: Tensor, labels: Tensor | None, first: int
    ) -> list[RemovableHandle]:
        if not self._fields:
            self._first_batch(pl_module, images)
        size = tuple(images.shape[-2:])
        handles = []
        for name, module in self._layers.items():
            field = display_field(self._fields[name], size)
            handles.append(module.register_forward_hook(self._hook(name, field, images, first)))
        return handles

    def _hook(self, name: str, field: ReceptiveField, images: Tensor, first: int):
        taken = []

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if taken:
                return  # a module called twice in one forward: its first call counts
            with self.timing():
                record(output)

        def record(output: Any) -> None:
            try:
                if not isinstance(output, Tensor) or output.dim() != 4:
                    shape = tuple(output.shape) if isinstance(output, Tensor) else type(output)
                    raise ValueError(f"returned {shape}, not a (N, C, H, W) feature map")
                if output.shape[0] != images.shape[0]:
                    return  # another forward than the batch's (another callback's probe)
                taken.append(True)
                units = self._units_of(name, output.shape[1], output.device)
                if name not in self._top:
                    side = patch_side(max(field.size), self._tile)
                    self._top[name] = empty_top_k(
                        len(units), self.k, images.shape[1], side, output.device
                    )
                self._top[name] = update_top_k(
                    self._top[name], output.detach(), images, field, first, units
                )
            except Exception as error:  # a hook must never break the validation step
                self.problem(f"layer {name!r}: {type(error).__name__}: {error}")

        return hook

    def _units_of(self, name: str, channels: int, device: torch.device) -> Tensor:
        if name not in self._channels:
            if isinstance(self.units, int):
                count = min(self.units, channels)
                chosen = torch.arange(count) * channels // count
            else:
                chosen = torch.tensor(self.units)
                if chosen.max() >= channels:
                    raise ValueError(f"has {channels} channels; units={self.units} asks for more")
            self._channels[name] = chosen.to(device)
        return self._channels[name]

    @override
    def end_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._fields and not self._top:
            raise Unsuited(
                f"{type(self).__name__}: the validation step never ran {', '.join(self._layers)}"
                ": it reads the validation forward. Pass layers=[...] naming modules the "
                "validation step runs."
            )
        for name, top in self._top.items():
            changed = (  # nothing to change where every image is in every unit's top k
                changed_fraction(self.previous[name], top.positions).mean()
                if name in self.previous
                and self.previous[name].shape == top.positions.shape
                and self._position > self.k
                else None
            )
            host = to_host(
                {
                    "values": top.values,
                    "positions": top.positions,
                    "channels": self._channels[name],
                    **({} if changed is None else {"changed": changed}),
                }
            )
            self.previous[name] = host["positions"].long()
            if changed is not None:
                key = tags.tag(tags.TOP_PATCHES_SCALAR, name, "changed")
                self.log_scalars(trainer, {key: float(host["changed"])})
            channels = host["channels"].long().tolist()
            self.log_image(
                trainer, tags.tag(tags.TOP_PATCHES, name), self._grid(name, top, host, channels)
            )
            self.log_text(
                trainer, tags.tag(tags.TOP_PATCHES_UNITS, name), self._table(name, host, channels)
            )

    def _grid(self, name: str, top: TopK, host: dict[str, Tensor], channels: list[int]) -> Tensor:
        """A block per unit, headed ``ch N``, of its top k patches row by row, each captioned
        with its value; :data:`BLOCKS_PER_ROW` blocks a row."""
        units = top.values.shape[0]
        k = min(top.values.shape[1], self._position)  # a validation set smaller than k
        tile = self._tile
        patches = top.patches[:, :k].flatten(0, 1).float()
        shown = self.displayed(patches)
        if shown is None:
            if patches.shape[1] != 3:
                patches = to_rgb(patches.mean(dim=1, keepdim=True))
            # one scale for every patch of the layer, so that contrast compares across patches
            low, high = patches.amin(), patches.amax()
            shown = (patches - low) / (high - low).clamp_min(1e-12)
        patches = shown
        tiles = self.oriented(to_uint8(F.interpolate(patches, size=(tile, tile), mode="nearest")))
        frame = torch.ones_like(tiles[0, 0], dtype=torch.bool)
        frame[1:-1, 1:-1] = False
        tiles[:, :, frame] = FRAME_GREY  # a white patch stays visible on the white page
        tiles[(host["positions"][:, :k] < 0).flatten().to(tiles.device)] = 255  # k > images
        values = host["values"][:, :k].tolist()
        texts = [["" if v == float("-inf") else compact(v) for v in row] for row in values]
        blocks = captioned_blocks(tiles.unflatten(0, (units, k)), texts, self._columns)
        ties = [tie(row) if k > 1 else None for row in values]
        labels = [f"ch {c}" + (f" ({t})" if t else "") for c, t in zip(channels, ties, strict=True)]
        headers = text_band(labels, blocks.shape[-1], device=blocks.device, dtype=blocks.dtype)
        image = grid(
            torch.cat([headers, blocks], dim=2), nrow=BLOCKS_PER_ROW, padding=BLOCK_PADDING
        )
        field = self._fields[name]
        note = (
            f"{name}: each block a unit's {k} validation images with the largest maximum (the "
            f"caption), strongest first, cropped to the {field.size[0]}x{field.size[1]}-pixel "
            "receptive field of that maximum (cut to the image's size; outside the image is "
            "padding)" + ("" if field.exact else "; the field is approximate (see the text)")
        )
        if "all tie" in ties:
            note += (
                f". '(all tie)': the unit responds as strongly to more than {k} patches (flat "
                "background, often): those shown are the first found, not a preference"
            )
        if "all 0" in ties:
            note += (
                ". '(all 0)': the unit is 0 on every validation image (dead): those shown are "
                "the first found"
            )
        return stack_rows(image, footnote(image.shape[-1], note, image.device, image.dtype))

    def _table(self, name: str, host: dict[str, Tensor], channels: list[int]) -> str:
        field = self._fields[name]
        exact = "exact" if field.exact else "approximate (an op on the path has no exact field)"
        lines = [
            f"receptive field {field.size[0]}x{field.size[1]} pixels, stride "
            f"{field.jump[0]}x{field.jump[1]}, {exact}",
            "",
            "| unit | top values | validation images (positions) |",
            "|---|---|---|",
        ]
        rows = zip(
            channels, host["values"].tolist(), host["positions"].long().tolist(), strict=True
        )
        for channel, values, positions in rows:
            shown = [(v, p) for v, p in zip(values, positions, strict=True) if p >= 0]
            top_values = ", ".join(f"{v:.3g}" for v, _ in shown)
            lines.append(f"| {channel} | {top_values} | {', '.join(str(p) for _, p in shown)} |")
        return "\n".join(lines)
