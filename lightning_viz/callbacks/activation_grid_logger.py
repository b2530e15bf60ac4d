"""ActivationGridLogger: each probe's most active feature maps, epoch after epoch."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from typing_extensions import override

from lightning_viz import tags
from lightning_viz.alerts import OnAlert
from lightning_viz.callbacks.activation_monitor import is_activation
from lightning_viz.callbacks.base import to_host
from lightning_viz.callbacks.layers import named_layers
from lightning_viz.callbacks.probe_base import ProbeCallback, Unsuited
from lightning_viz.functional import grid
from lightning_viz.functional._capture import Forward, output_shapes, returning_modules
from lightning_viz.functional._validation import all_finite, check_int, not_finite_error
from lightning_viz.functional.activation_grid import feature_map_tiles, top_feature_maps
from lightning_viz.functional.captions import (
    captioned_blocks,
    color_bar,
    footnote,
    stack_rows,
)
from lightning_viz.functional.gradcam import MIN_MAP_SIDE, on_the_scores_path
from lightning_viz.functional.images import (
    CARD_WIDTH,
    colormap_table,
    is_wide,
    panels_per_row,
    readable,
    shrunk,
    to_uint8,
    wide_readable,
)
from lightning_viz.probes import BatchToImages, Probes

PANEL_PADDING = 6
"""White pixels around and between the probes' blocks."""
SIGNED_CMAP = "RdBu_r"
"""The diverging colormap of layers whose maps have negative values (before their activation):
blue below 0, white at 0, red above."""


def default_grid_layers(
    model: nn.Module, images: Tensor, forward: Forward | None = None, past_first: bool = False
) -> list[str]:
    """The layers an activation grid shows by default: the first and the deepest conv feature
    maps after their activation, found by one forward of ``images``; with ``past_first``, the
    second instead of the first, where there are three or more.

    Candidates are the activation modules (ReLU and the others ActivationMonitor watches) with a
    spatial (N, C, h, w) output of at least 2x2, at their first call; without any (a model that
    calls ``F.relu``), the ``nn.Conv2d`` outputs, of the layers the model's scores are computed
    from (not an auxiliary head: :func:`~lightning_viz.functional.gradcam.on_the_scores_path`,
    one backward). The deepest is the last candidate at least
    ``MIN_MAP_SIDE`` (7) pixels a side, as Grad-CAM's default, else the last one: where maps
    are 2x2 blobs there is nothing to see of localization. One name when both are the same
    layer; none without a candidate. A module whose output the model returns at the input's
    size is none (an autoencoder's last activation: its reconstruction, not a feature map).
    """
    height, width = images.shape[-2:]
    spatial = [
        (name, module, shape)
        for name, module, shape in output_shapes(model, images, forward)
        if len(shape) == 4
        and shape[0] == len(images)  # not a detector's maps per region proposal
        and 2 <= shape[2] <= height
        and 2 <= shape[3] <= width
    ]
    candidates = [c for c in spatial if is_activation(c[1])] or [
        c for c in spatial if isinstance(c[1], nn.Conv2d)
    ]
    reaching = set(on_the_scores_path(model, images, [c[0] for c in candidates], forward))
    returned = returning_modules(model, images, forward)
    candidates = [
        c
        for c in candidates
        if c[0] in reaching  # not an auxiliary head's
        and not (c[0] in returned and c[2][-2:] == (height, width))  # nor a reconstruction
    ]
    if not candidates:
        return []
    fine = [c for c in candidates if min(c[2][-2:]) >= MIN_MAP_SIDE]
    shallow = candidates[1 if past_first and len(candidates) >= 3 else 0]
    return list(dict.fromkeys([shallow[0], (fine or candidates)[-1][0]]))


class ActivationGridLogger(ProbeCallback):
    r"""Intermediate activation grids: each probe's most active feature maps in chosen layers.

    At fit start (the untrained baseline) and every ``every_n_epochs`` at the end of a training
    epoch, one forward of the probes without gradients, which stops at the deepest watched layer
    (:func:`~lightning_viz.functional.activation_grid.top_feature_maps`), gives for each layer
    and probe the ``k`` channels with the largest mean activation and their maps. Each probe's
    maps are drawn on one scale, its largest value among them
    (:func:`~lightning_viz.functional.activation_grid.feature_map_tiles`): a weak map looks weak
    beside a strong one and a sparse map stays dark, where a per-map min-max would stretch every
    map to full brightness. Model in eval mode for the pass, fp32, train flags restored, no
    ``.grad`` touched; global rank 0 only.

    Args:
        layers: names from ``model.named_modules()`` with (N, C, H, W) outputs; default the
            first and the deepest conv feature maps after their activation, chosen at fit start
            from one forward of a probe (the deepest at least 7x7 when there is one, as
            Grad-CAM's default): ``relu`` and ``layer2.1.relu`` of a torchvision ResNet at 64
            pixels, ``layer4.1.relu`` at 224 (see :func:`default_grid_layers`).
        k: channels per probe and layer (a layer with fewer shows all of them).
        drawn_probes: how many probes the image draws, the first ones (the text table lists
            every probe): a probe's block runs about 350 pixels down TensorBoard's card, and ten
            of them ran 3,500; None draws all.
        probes, num_probes, every_n_epochs, forward_fn, batch_to_images, class_names, on_alert,
            strict, budget, image_origin: as in :class:`~lightning_viz.GradCAMLogger`.
        cmap: the matplotlib colormap of non-negative maps (after a ReLU); a layer with
            negative values (before its activation) is shown in the diverging ``"RdBu_r"``,
            white at 0, so its negative responses are not clipped away.

    Raises:
        ValueError: bad arguments (at construction); unknown layers, layers that do not run or
            give no (N, C, H, W) map, probes that do not fit the model (at fit start).

    Logged keys:

    - ``activation_grid/<layer>`` (image): a block per probe (the first ``drawn_probes``), the
      probe (captioned with its class) then its k most active channels (each captioned with its
      index, ``ch 12``; ``ch 12 all 0`` where the map is 0 everywhere), strongest first, read
      row by row in about sqrt(k + 1) columns (3 for k = 8, so the image stays as narrow as
      TensorBoard's card and runs down the page),
      enlarged to the probe's tile size (at least 96 pixels) with square pixels; above them,
      the layer's name, a colour bar and a note on how the maps are scaled (and how many of
      the probes are drawn).
    - ``activation_grid/<layer>/channels`` (text): per probe, its class, its block's scale (the
      largest absolute value among its maps, shown at the bright end), the share of the layer's
      values that are <= 0 on it, the share of the layer's channels that are dead on it (no
      positive value); under it, each probe's channels shown, with their mean activation.
    - ``lightning_viz/overhead/<callback>`` and ``lightning_viz/overhead`` (every epoch's end,
      with the other lightning-viz callbacks): the share of training time spent in it, and in all.

    How to read it: good feature maps are sparse and localized: a few bright spots on a dark
    map, on the parts of the probe that the channel responds to (strokes, edges, object parts),
    and different channels light up different parts. Maps that are evenly bright all over
    respond to everything: an untrained net's look like blurred copies of the probe. Maps that
    are nearly blank beside their block's brightest respond weakly; a block whose scale in the table
    is far below the other probes' means the layer barely responds to that probe. Dead channels
    (a share in the table that grows over training) no longer fire on anything and no longer
    learn. Early layers should show edge and stroke detectors; deeper, coarser maps should fire
    on fewer, larger parts. A layer with negative values (no activation's output, or a GELU or
    SiLU, which lets some through) is drawn blue below 0 and red above.

    Cost: per logged epoch one forward of the probes without gradients, stopped at the deepest
    layer, and drawn_probes x (k + 1) tiles per layer composed in uint8 on the device; PNG
    encoding runs on the background writer. With the defaults and 10 probes on a 2-core CPU:
    about half an optimizer step at batch 64 on the digits CNN, a tenth on resnet18 at 64x64
    (benchmarks/probe_cost.py).

    Example::

        trainer = Trainer(callbacks=[ActivationGridLogger(k=6, every_n_epochs=5)])
    """

    view = "activation grids"

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        k: int = 8,
        drawn_probes: int | None = 4,
        probes: Probes | None = None,
        num_probes: int | None = None,
        every_n_epochs: int = 1,
        forward_fn: Callable[[pl.LightningModule, Tensor], Any] | None = None,
        batch_to_images: BatchToImages | None = None,
        class_names: Sequence[str] | None = None,
        cmap: str = "viridis",
        on_alert: OnAlert = "warn",
        strict: bool = False,
        budget: float | None = None,
        image_origin: str = "upper",
    ) -> None:
        super().__init__(
            layers=layers,
            probes=probes,
            num_probes=num_probes,
            every_n_epochs=every_n_epochs,
            forward_fn=forward_fn,
            batch_to_images=batch_to_images,
            class_names=class_names,
            on_alert=on_alert,
            strict=strict,
            budget=budget,
            image_origin=image_origin,
        )
        self.k = check_int("k", k)
        self.drawn_probes = check_int("drawn_probes", drawn_probes, allow_none=True)
        colormap_table(cmap)  # an unknown name fails here, not at the first epoch
        self.cmap = cmap
        self._layers: dict[str, nn.Module] = {}

    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {"layers": self.layer_names, "k": self.k}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and self.layer_names is not None:
            self._layers = named_layers(pl_module, self.layer_names, type(self).__name__)

    @override
    def logs_scalars(self) -> bool:
        return False

    @override
    def prepare(self, pl_module: pl.LightningModule, probes: Probes, output: Any) -> None:
        self._check_named_layers(pl_module, probes, tokens=False)
        if self.layer_names is not None:
            return
        forward = self.probe_forward(pl_module)
        names = default_grid_layers(pl_module, probes.images[:1], forward)
        if not names:
            raise Unsuited(
                f"{type(self).__name__}: {type(pl_module).__name__} has no activation or "
                "nn.Conv2d layer with a spatial (N, C, H, W) output on a probe. Pass "
                "layers=[...] to name layers with (N, C, H, W) outputs."
            )
        self._layers = named_layers(pl_module, names, type(self).__name__)

    @override
    def visualize(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probes: Probes) -> None:
        top = top_feature_maps(
            pl_module, probes.images, list(self._layers), self.k, self.probe_forward(pl_module)
        )
        readable_display = readable(to_uint8(probes.display))
        wide = is_wide(probes.display)
        for layer, found in top.items():
            # two columns of wide probes' tiles: in three, a 64x404 clip's were 17 pixels high
            columns = 2 if wide else math.ceil(math.sqrt(found.maps.shape[1] + 1))
            # tiles narrow enough that a block's columns fit the card (224-pixel probes' 192-pixel
            # tiles made a 592-pixel image, its captions shrunk to 5 pixels)
            side = (CARD_WIDTH - 2 * PANEL_PADDING - 2 * (columns - 1)) // columns
            display = readable_display
            if wide:
                display = wide_readable(to_uint8(probes.display), side)
            elif max(display.shape[-2:]) > side:
                display = shrunk(display, side)
            drawn = feature_map_tiles(found.maps, tuple(display.shape[-2:]), self.cmap, SIGNED_CMAP)
            host = to_host(
                {
                    "channels": found.channels,
                    "means": found.means,
                    "dead": found.dead_fraction,
                    "zero": found.zero_fraction,
                    "scale": drawn.scale,
                    "signed": drawn.signed,
                    "finite": all_finite(found.maps),
                    "blank": found.maps.flatten(2).abs().amax(dim=2) == 0,
                }
            )
            if not host["finite"]:
                raise not_finite_error(f"the feature maps of {layer!r}")
            channels = host["channels"].long().tolist()
            shown = len(channels) if self.drawn_probes is None else self.drawn_probes
            # a map that is 0 everywhere (a channel dead on the probe) is said so: its tile is
            # as dark as a weak one's
            blank = host["blank"].tolist()
            captions = [
                [self.probe_caption(probes, i, display.shape[-1])]
                + [
                    f"ch {c} all 0" if zero else f"ch {c}"
                    for c, zero in zip(row, empty, strict=True)
                ]
                for i, (row, empty) in enumerate(zip(channels[:shown], blank[:shown], strict=True))
            ]
            tiles = self.oriented(torch.cat([display[:shown, None], drawn.tiles[:shown]], dim=1))
            panels = captioned_blocks(tiles, captions, columns)
            per_row = panels_per_row(len(panels), *panels.shape[-2:], max_width=CARD_WIDTH)
            image = grid(panels, nrow=per_row, padding=PANEL_PADDING)
            legend = self._legend(layer, image, len(channels[0]), bool(host["signed"]))
            if len(panels) < len(channels):
                note = f"The first {len(panels)} of the {len(channels)} probes; the text lists all."
                legend = stack_rows(
                    legend, footnote(image.shape[-1], note, image.device, image.dtype)
                )
            self.log_image(
                trainer, tags.tag(tags.ACTIVATION_GRID, layer), stack_rows(legend, image)
            )
            self.log_text(
                trainer,
                tags.tag(tags.ACTIVATION_GRID_CHANNELS, layer),
                self._table(layer, probes, host),
            )

    def _legend(self, layer: str, image: Tensor, k: int, signed: bool) -> Tensor:
        """The colour bar above the grid (which runs far down the page), and a note on how the
        maps are scaled."""
        width, device, dtype = image.shape[-1], image.device, image.dtype
        title = f"{layer}: top {k} channels by mean"
        if signed:
            bar = color_bar(width, SIGNED_CMAP, "-largest", "+largest", title, device, dtype)
        else:
            bar = color_bar(width, self.cmap, "0", "largest", title, device, dtype)
        note = self._scale_note(layer, signed)
        return stack_rows(bar, footnote(width, note, device, dtype))

    def _scale_note(self, layer: str, signed: bool) -> str:
        """How the layer's maps are coloured and scaled, under the colour bar and above the
        text table; for negative values, why the layer has them (an activation module that
        passes some, such as GELU or SiLU, or a layer before its activation)."""
        if not signed:
            return (
                "Each probe's maps are scaled from 0 to their largest value (in the text table): "
                "a weak map stays dark beside a strong one. Eval mode, as the probe views run."
            )
        module = self._layers.get(layer)
        why = (
            f"its activation, {type(module).__name__}, lets some through"
            if module is not None and is_activation(module)
            else "it is no activation's output"
        )
        return (
            f"The layer has negative values ({why}): blue below 0, white at 0, red above. Each "
            "probe's maps are scaled to their largest absolute value (in the text table). Eval "
            "mode, as the probe views run."
        )

    def _table(self, layer: str, probes: Probes, host: dict[str, Tensor]) -> str:
        """The markdown table of what each block shows, with the layer's sparsity on the probe,
        under the note on how the maps are scaled; then each probe's channels in a list. Short
        headers, said in full above: TensorBoard's text card breaks words to squeeze a wide
        table's columns, and the channels as its last column broke "probe" over two lines."""
        lines = [
            self._scale_note(layer, bool(host["signed"])),
            "",
            "scale: the largest absolute value of the probe's maps; <= 0: the share of the "
            "layer's values <= 0 on it; dead: the share of its channels with no positive value "
            "on it.",
            "",
            "| probe | target | scale | <= 0 | dead |",
            "|---|---|---|---|---|",
        ]
        channels = []
        rows = zip(
            host["channels"].long().tolist(),
            host["means"].tolist(),
            host["scale"].tolist(),
            host["zero"].tolist(),
            host["dead"].tolist(),
            strict=True,
        )
        for i, (indices, means, scale, zero, dead) in enumerate(rows):
            label = self.probe_target(probes, i) or "-"
            lines.append(f"| {i} | {label} | {scale:.3g} | {zero:.0%} | {dead:.0%} |")
            # a no-break space: a line that wraps keeps each channel beside its mean
            shown = ", ".join(f"{c}\u00a0({m:.3g})" for c, m in zip(indices, means, strict=True))
            channels.append(f"- probe {i}: {shown}")
        lines += ["", "Channels shown, strongest first (mean activation):", "", *channels]
        return "\n".join(lines)
