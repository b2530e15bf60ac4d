"""DeconvLogger: Zeiler & Fergus reconstructions of the top feature maps, and their evolution."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_viz import tags
from lightning_viz.alerts import OnAlert
from lightning_viz.callbacks.base import to_host
from lightning_viz.callbacks.layers import named_layers, watched_layers
from lightning_viz.callbacks.probe_base import ProbeCallback, Unsuited
from lightning_viz.functional import grid, normalize_signed, project_layers, to_rgb, top_channels
from lightning_viz.functional._capture import output_shapes
from lightning_viz.functional._relu_rules import no_rule_for, ruleless_said
from lightning_viz.functional._validation import (
    all_finite,
    check_choice,
    check_choices,
    check_int,
    not_finite_error,
)
from lightning_viz.functional.captions import (
    captioned_blocks,
    color_bar,
    fill_table_row,
    footnote,
    labelled_table,
    stack_rows,
    table_label_width,
)
from lightning_viz.functional.gradcam import (
    class_maps,
    on_the_scores_path,
    reconstructs,
    without_score_head,
)
from lightning_viz.functional.images import (
    CARD_WIDTH,
    is_wide,
    panels_per_row,
    readable,
    shrunk,
    strongest_crop,
    to_uint8,
    wide_readable,
)
from lightning_viz.functional.projection import ruleless_activations
from lightning_viz.functional.scores import (
    INDEPENDENT,
    map_similarity,
    randomized_forward,
    upper_half,
)
from lightning_viz.functional.selection import evenly_spaced, first_features, follow_features
from lightning_viz.probes import BatchToImages, Probes

MAX_DEFAULT_LAYERS = 5
EVOLUTION_CELL = 64
"""The largest side of a cell of the evolution grid: its projections are shrunk to it."""
EVOLUTION_LABEL = "epoch 999"
"""The widest row label that the evolution grid's width plans for."""
RULES = ("deconvnet", "guided")


def _is_conv(name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d)


def to_own_range(projections: Tensor) -> Tensor:
    """Each projection scaled to its own range, however small (normalize_signed's floor of
    1e-8 drew a detector's RPN box-regression channels, about 1e-10, as flat grey tiles)."""
    return normalize_signed(projections, eps=torch.finfo(torch.float32).tiny)


class DeconvLogger(ProbeCallback):
    r"""Deconvnet reconstructions of the strongest feature maps, and how chosen features evolve.

    Every ``every_n_epochs`` at the end of a training epoch, for each watched layer and each of
    the first ``drawn_probes`` probes, the ``top_k`` channels with the largest summed activation
    are projected back to pixel space (:func:`~lightning_viz.functional.project_layers`: Zeiler
    & Fergus's deconvnet, or guided backprop). All layers share one forward pass that stops at
    the deepest one, over one batch row per (probe, channel) to project; each layer's channels
    go through one backward. Model in eval mode for the pass, in fp32 (a half-precision model in
    its own dtype), train flags restored, no ``.grad`` touched; global rank 0 only.

    Feature evolution (Zeiler & Fergus 2013, figure 4): on the first logged epoch the features to
    follow are chosen per layer (``num_features`` distinct channels: the probes' top channels in
    probe order, then their second ones where probes share one; or the given ``features``);
    every logged epoch each is projected again from the probe that activates it most in that
    epoch, and the grid gains a row. Past epochs are kept as small
    uint8 thumbnails on the CPU, in the callback's state (a resumed run continues the grid), at
    most ``max_columns`` of them: when there are more, old epochs are thinned evenly.

    Args:
        layers: names from ``model.named_modules()``; default at most 5 ``nn.Conv2d`` layers
            evenly spread from the first to the last (in definition order) of those that run in
            the forward and feed the model's scores (not a teacher's, nor an auxiliary head's),
            less a segmentation net's head (the convs that output its class maps: their
            channels are the classes) and convs whose maps are 1x1 (a squeeze-excitation
            block's, which project to flat tiles), and less frozen convs (``requires_grad``
            False: a frozen stem projects the same every epoch) while some train.
        top_k: channels per probe and layer. The default 3 fills a 2x2 block with the probe, a
            block that keeps 128-pixel tiles (64-pixel probes, enlarged) within TensorBoard's
            card; 4 left a tile empty in a block 3 wide, shrunk on the card, at a third more cost.
        drawn_probes: how many probes' top channels are projected and drawn, the first ones
            (the text lists every probe's; the followed features are projected from any
            probe): a probe's block runs about 230 pixels down TensorBoard's card, and ten of
            them ran 2,300 per layer; None draws all.
        rule: ``"deconvnet"`` (Zeiler & Fergus) or ``"guided"`` (guided backprop).
        evolution: also log the feature-evolution grid.
        features: ``(layer, channel)`` pairs to follow; default chosen on the first logged epoch.
        num_features: how many features per layer to follow by default.
        max_columns: the most epochs the evolution grid shows.
        scores: ``["sanity"]`` (or True) also projects the same channels through the network
            with the upper half of its parametrized layers re-initialized (one more projection
            pass per logged epoch); default none.
        probes, num_probes, every_n_epochs, forward_fn, batch_to_images, class_names, on_alert,
            strict, budget, image_origin: as in ``GradCAMLogger``.

    Raises:
        ValueError: bad arguments (at construction); unknown layers or channels, probes that do
            not fit the model (at fit start).

    Logged keys:

    - ``deconv/<layer>`` (image): a panel per drawn probe, the probe (captioned with its class) then
      its top-k reconstructions (captioned with their channel), each mapped to [0, 1] with 0 at
      mid-grey and the 99th percentile of |value| clipped; above them (the panels run far down
      the page), the layer's name, the rule (and the activations without one that the
      projections pass plain gradients through: GELU, SiLU, ...), a grey bar from - to + and
      the sanity note if any.
    - ``deconv/<layer>/channels`` (text): each probe's top-k channels, the drawn ones marked.
    - ``evolution/<layer>`` (image): one column per followed feature (headed with its
      channel), one row per logged epoch (labelled with it), so that the features fit
      TensorBoard's card side by side; as many rows as the run will log (at most
      ``max_columns``) from the first epoch on, so the image keeps its size; the last epoch's
      leaves out the blank rows of epochs the budget skipped. Of images at least twice as wide
      as high (a spectrogram), each cell shows the square of the image's height where the
      projection is strongest: whole, it shrank to a strip a few pixels high.
    - ``evolution/<layer>/features`` (text): the followed channels and the epochs of the columns.
    - ``sanity/deconv/<layer>`` (``scores=["sanity"]``): the mean rank correlation of each
      reconstruction with the same channel's through the randomized network; at 0.5 or above a
      note above the panels says the reconstructions do not depend on what the network learned
      (Adebayo et al. 2018 and Sixt et al. 2020 found deconvnet and guided backprop largely
      blind to the upper layers' weights).
    - ``lightning_viz/overhead/<callback>`` and ``lightning_viz/overhead`` (every epoch's end,
      with the other lightning-viz callbacks): the share of training time spent in it, and in all.

    How to read it: early layers should reconstruct edges and colour blobs, deeper ones textures
    and object parts. Reconstructions that look like the whole input mean the layer has not
    learned much yet; in the evolution grid, features that keep changing late in training have
    not converged (read each column downwards).

    Cost: per logged epoch one forward of the probes up to the deepest layer to choose the
    channels, then one forward of about drawn_probes x top_k + num_features rows and per layer
    one backward of them (on resnet18 at 64x64 with 10 probes, 4 drawn, about three quarters of
    an optimizer step at batch 64 on a CPU, most of it projection compute); images are composed
    in uint8 and encoded on the background writer.

    Example::

        trainer = Trainer(callbacks=[DeconvLogger(top_k=3, rule="deconvnet")])
    """

    at_fit_start = False

    view = "deconvnet"

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        top_k: int = 3,
        drawn_probes: int | None = 4,
        rule: Literal["deconvnet", "guided"] = "deconvnet",
        evolution: bool = True,
        features: Sequence[tuple[str, int]] | None = None,
        num_features: int = 4,
        max_columns: int = 16,
        probes: Probes | None = None,
        num_probes: int | None = None,
        every_n_epochs: int = 1,
        forward_fn: Callable[[pl.LightningModule, Tensor], Any] | None = None,
        batch_to_images: BatchToImages | None = None,
        class_names: Sequence[str] | None = None,
        scores: bool | Sequence[str] | None = None,
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
        self.top_k = check_int("top_k", top_k)
        self.drawn_probes = check_int("drawn_probes", drawn_probes, allow_none=True)
        self.rule = check_choice("rule", rule, RULES)
        self.evolution = bool(evolution)
        self.scores = check_choices("scores", scores, ("sanity",), ())
        self.num_features = check_int("num_features", num_features)
        self.max_columns = check_int("max_columns", max_columns)
        self.given_features: dict[str, list[int]] = {}
        for pair in features or ():
            if (
                not isinstance(pair, (tuple, list))
                or len(pair) != 2
                or not isinstance(pair[0], str)
                or not isinstance(pair[1], int)
                or pair[1] < 0
            ):
                raise ValueError(f"`features` must be (layer, channel) pairs, got {pair!r}")
            self.given_features.setdefault(pair[0], []).append(pair[1])
        self._layers: dict[str, nn.Module] = {}
        self._followed: dict[str, nn.Module] = {}
        self._ruleless: list[str] = []  # activations the projections pass plain gradients through
        self.features: dict[str, list[int]] = {}
        self.columns: dict[str, list[Tensor]] = {}
        self.column_epochs: dict[str, list[int]] = {}
        # the columns enlarged for display, on the device: each is enlarged once, not every epoch
        self._enlarged: dict[str, list[Tensor]] = {}
        # per layer, the evolution table last drawn (on the device), its row labels and headers
        self._tables: dict[str, tuple[Tensor, list[str], list[str]]] = {}

    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {"layers": self.layer_names, "rule": self.rule}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        source = type(self).__name__
        layers = watched_layers(pl_module, self.layer_names, _is_conv, source)
        if not layers:
            self.show_nothing(
                f"{type(pl_module).__name__} has no nn.Conv2d layer whose feature maps could be "
                "projected back to pixels. Pass layers=[...] to name layers with (N, C, H, W) "
                "outputs."
            )
        self._layers = layers  # by default the candidates: prepare keeps those that run
        self._followed = (
            named_layers(pl_module, list(self.given_features), source)
            if self.given_features
            else {}
        )
        if not self.features:
            self.features = {n: list(c) for n, c in self.given_features.items()}

    @override
    def logs_scalars(self) -> bool:
        return "sanity" in self.scores

    @override
    def prepare(self, pl_module: pl.LightningModule, probes: Probes, output: Any) -> None:
        self._check_named_layers(pl_module, probes, tokens=False)
        layers = self._layers
        if self.layer_names is None:
            # convs that never run in the forward (an EMA copy, a teacher) cannot be projected,
            # an auxiliary head's feed no score, and 1x1 maps (a squeeze-excitation's gates)
            # project to one flat grey tile
            forward = self.probe_forward(pl_module)
            shapes = {
                n: shape for n, _, shape in output_shapes(pl_module, probes.images[:1], forward)
            }
            spatial = [
                n for n in layers if n in shapes and shapes[n][0] == 1 and max(shapes[n][-2:]) >= 2
            ]  # one map per image: not a detector's per region proposal
            names = on_the_scores_path(pl_module, probes.images[:1], spatial, forward)
            maps = None if reconstructs(output, probes.images) else class_maps(output)
            if maps is not None and names:  # a segmentation head's channels are its classes
                names = without_score_head(
                    pl_module, probes.images[:1], names, maps.shape[1], forward
                )
            if not names:
                raise Unsuited(
                    f"{type(self).__name__}: none of the model's nn.Conv2d layers with maps "
                    "larger than 1x1 ran in its forward on a probe and fed its scores. Pass "
                    "layers=[...] to name layers to project."
                )
            # a frozen stem projects the same every epoch: the layers that train, if any
            names = [n for n in names if layers[n].weight.requires_grad] or names
            names = [names[i] for i in evenly_spaced(len(names), MAX_DEFAULT_LAYERS)]
            layers = {name: layers[name] for name in names}
        self._layers = {**layers, **{n: m for n, m in self._followed.items() if n not in layers}}
        forward = self.probe_forward(pl_module)
        self._ruleless = ruleless_activations(
            pl_module, probes.images[:1], list(self._layers), self.rule, forward
        )
        if self._ruleless:
            no_rule, them = no_rule_for(self._ruleless, self.rule)
            rank_zero_warn(
                f"lightning-viz: DeconvLogger: {no_rule}: the projections pass plain gradients "
                f"through {them}, a mix of {self.rule} reconstruction and gradient map (each "
                "image's legend says so)"
            )

    @property
    def _rule_said(self) -> str:
        """The rule as the legend says it, with the activations plain gradients pass through."""
        if not self._ruleless:
            return self.rule
        return f"{self.rule}; plain gradients through {', '.join(self._ruleless)}"

    def _project(
        self, pl_module: pl.LightningModule, probes: Probes, channels: dict, forward: Any
    ) -> dict:
        """:func:`project_layers` with the rule; the activations it has none for were said at
        fit start (:meth:`prepare`), not at every pass."""
        with ruleless_said():
            return project_layers(pl_module, probes.images, channels, self.rule, forward=forward)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "features": {n: list(c) for n, c in self.features.items()},
            "columns": {n: list(c) for n, c in self.columns.items()},
            "column_epochs": {n: list(e) for n, e in self.column_epochs.items()},
        }

    @override
    def reset_state(self) -> None:
        super().reset_state()
        self.features, self.columns, self.column_epochs, self._enlarged = {}, {}, {}, {}
        self._tables = {}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.features = {n: list(c) for n, c in state_dict.get("features", {}).items()}
        self.columns = {n: list(c) for n, c in state_dict.get("columns", {}).items()}
        self.column_epochs = {n: list(e) for n, e in state_dict.get("column_epochs", {}).items()}
        self._enlarged, self._tables = {}, {}

    # ------------------------------------------------------------------------ the pass
    @override
    def visualize(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probes: Probes) -> None:
        followed_at: dict[str, tuple[Tensor, Tensor]] = {}
        chosen_now: dict[str, list[int]] = {}
        tops: dict[str, Tensor] = {}
        drawn = len(probes) if self.drawn_probes is None else min(self.drawn_probes, len(probes))

        def channels_of(layer: str):
            """Picks the channels to project from the layer's activation in the shared pass:
            the drawn probes' top channels, and the followed features wherever they fire most."""

            def pick(activation: Tensor) -> Tensor:
                top = tops[layer] = top_channels(activation, min(self.top_k, activation.shape[1]))
                projected = top.clone()
                projected[drawn:] = -1
                if not self.evolution:
                    return projected
                features = self.features.get(layer)
                if features is None:
                    features = chosen_now[layer] = first_features(top, self.num_features)
                channels, followed_at[layer] = follow_features(
                    activation, projected, features, layer
                )
                return channels

            return pick

        layers = {layer: channels_of(layer) for layer in self._layers}
        projections = self._project(pl_module, probes, layers, self.probe_forward(pl_module))
        self.features.update(chosen_now)
        notes = self._sanity(trainer, pl_module, probes, projections)
        for layer, (_, images) in projections.items():
            if not all_finite(images):
                raise not_finite_error(f"the reconstructions of {layer!r}")
            k = tops[layer].shape[1]  # a layer with fewer channels than top_k shows them all
            recon = to_uint8(to_rgb(to_own_range(images[:drawn, :k].flatten(0, 1))))
            recon = recon.unflatten(0, (drawn, k))
            display = to_uint8(probes.display[:drawn])[:, None]
            tiles = torch.cat([display, recon], dim=1).flatten(0, 1)
            wide = is_wide(tiles)  # one a row, as wide as the card: in two, 30 pixels high
            tiles = wide_readable(tiles, CARD_WIDTH - 12) if wide else readable(tiles)
            rows = self.oriented(tiles).unflatten(0, (drawn, k + 1))
            top = tops[layer].tolist()
            captions = [
                [self.probe_caption(probes, i, rows.shape[-1])]
                + [f"ch {c}" for c in channels_of_probe]
                for i, channels_of_probe in enumerate(top[:drawn])
            ]
            panels = captioned_blocks(rows, captions, 1 if wide else math.ceil(math.sqrt(k + 1)))
            per_row = panels_per_row(len(panels), *panels.shape[-2:], max_width=CARD_WIDTH)
            image = grid(panels, nrow=per_row, padding=6)
            legend = color_bar(
                image.shape[-1],
                "gray",
                "-",
                "+",
                f"{layer}: {self._whose(drawn, len(probes))} top-{k} channels projected to "
                f"pixels ({self._rule_said}); mid-grey = 0",
                image.device,
                image.dtype,
            )
            rows = [legend]  # above the blocks, which run far down the page
            if notes.get(layer):
                rows.append(footnote(image.shape[-1], notes[layer], image.device, image.dtype))
            self.log_image(trainer, tags.tag(tags.DECONV, layer), stack_rows(*rows, image))
            lines = [
                f"probe {i}: channels {c}{' (drawn)' if i < drawn < len(top) else ''}"
                for i, c in enumerate(top)
            ]
            self.log_text(trainer, tags.tag(tags.DECONV_CHANNELS, layer), "  \n".join(lines))
            if self.evolution:
                self._add_column(trainer, layer, images[followed_at[layer]])

    @staticmethod
    def _whose(drawn: int, probes: int) -> str:
        """Whose channels the image shows: every probe's, or the first few's."""
        return "each probe's" if drawn == probes else f"the first {drawn} of {probes} probes'"

    def _sanity(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        probes: Probes,
        projections: dict[str, Any],
    ) -> dict[str, str]:
        """With ``scores=["sanity"]``: the same channels projected through the network with its
        upper half re-initialized, ``sanity/deconv/<layer>`` the mean rank correlation with
        the trained network's, and a note for the layers at or above :data:`INDEPENDENT`."""
        if "sanity" not in self.scores:
            return {}
        forward = self.probe_forward(pl_module)
        top = upper_half(pl_module, probes.images[:1], forward)
        forward = randomized_forward(pl_module, modules=top, forward=forward)
        channels = {layer: found.channels for layer, found in projections.items()}
        randomized = self._project(pl_module, probes, channels, forward)
        similarity = {}
        for layer, found in projections.items():
            # an empty evolution slot (channel -1) is a zero image: NaN, left out of the mean
            alike = map_similarity(
                found.images.flatten(0, 1), randomized[layer].images.flatten(0, 1)
            )
            similarity[layer] = alike.nanmean()
        similarity = to_host(similarity)
        method = {layer: tags.tag(tags.DECONV, layer) for layer in similarity}
        self.log_scalars(
            trainer,
            {tags.tag(tags.SANITY, method[layer]): float(v) for layer, v in similarity.items()},
        )
        return {
            layer: (
                "The reconstructions through the network with its upper half re-initialized are "
                f"alike (rank correlation {float(value):.2f} >= {INDEPENDENT}): they do not "
                "depend on what the network learned (Adebayo et al. 2018)."
            )
            for layer, value in similarity.items()
            if float(value) >= INDEPENDENT
        }

    def _evolution_cells(self, layer: str, thumbnails: Tensor) -> Tensor:
        """The thumbnails resized to the evolution grid's cells: the largest that keep the
        layer's followed features and the row labels within TensorBoard's card (none past 64
        pixels: they hold no more detail), so that the legend under them is not shrunk;
        enlarged by a whole factor, shrunk by area, their aspect kept."""
        columns = len(self.features[layer])
        fitting = (CARD_WIDTH - table_label_width([EVOLUTION_LABEL])) // columns - 2
        cell, side = max(1, min(fitting, EVOLUTION_CELL)), max(thumbnails.shape[-2:])
        if side > cell:
            return self.oriented(shrunk(thumbnails, cell))
        scale = cell // side
        enlarged = thumbnails.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
        return self.oriented(enlarged)

    def _evolution_slots(self, trainer: pl.Trainer) -> int:
        """Columns of the evolution grid: the epochs the run will log, at most ``max_columns``."""
        if trainer.max_epochs is None or trainer.max_epochs < 0:
            return self.max_columns
        return max(1, min(self.max_columns, trainer.max_epochs // self.every_n_epochs))

    def _add_column(self, trainer: pl.Trainer, layer: str, followed: Tensor) -> None:
        where = ""
        if is_wide(followed):  # shrunk whole into a cell, a 64x404 clip was 10 pixels high
            followed = strongest_crop(followed, followed.shape[-2])
            where = f", the {followed.shape[-1]} columns where it is strongest"
        thumbnails = to_rgb(to_own_range(followed))
        if max(thumbnails.shape[-2:]) > EVOLUTION_CELL:  # kept (and checkpointed) at most so
            thumbnails = shrunk(thumbnails, EVOLUTION_CELL)
        thumbnails = to_uint8(thumbnails)
        # columns of another shape: drawn whole by a version before the crop (a checkpoint's)
        kept = [
            (column, epoch)
            for column, epoch in zip(
                self.columns.get(layer, []), self.column_epochs.get(layer, []), strict=True
            )
            if column.shape == thumbnails.shape
        ]
        columns, epochs = [c for c, _ in kept], [e for _, e in kept]
        enlarged = self._enlarged.get(layer)
        if enlarged is None or len(enlarged) != len(columns):  # e.g. columns from a checkpoint
            enlarged = [self._evolution_cells(layer, c.to(followed.device)) for c in columns]
        columns.append(thumbnails.cpu())
        enlarged.append(self._evolution_cells(layer, thumbnails))
        epochs.append(self.epoch(trainer))
        keep = evenly_spaced(len(columns), self.max_columns)
        self.columns[layer] = [columns[i] for i in keep]
        self.column_epochs[layer] = [epochs[i] for i in keep]
        self._enlarged[layer] = [enlarged[i] for i in keep]
        # epochs down, features across: the card's width holds a few features, not 16 epochs;
        # a fixed number of epoch slots, so that the image keeps its size from epoch to epoch
        drawn = len(self.column_epochs[layer])
        # the last epoch's image has no blank rows: epochs the budget skipped never come
        slots = (
            drawn if self.finishing(trainer) else max(self._evolution_slots(trainer), drawn)
        )  # more: resumed
        labels = [f"epoch {e}" for e in self.column_epochs[layer]] + [""] * (slots - drawn)
        headers = [f"ch {c}" for c in self.features[layer]]
        table, before, headers_before = self._tables.get(layer, (None, [], []))
        one_row_more = labels[: drawn - 1] + [""] * (len(labels) - drawn + 1)
        if (
            table is not None
            and (before, headers_before) == (one_row_more, headers)
            and table_label_width(labels) == table_label_width(before)
        ):  # one more row, the others as they were: draw that row only
            fill_table_row(table, drawn - 1, self._enlarged[layer][-1], labels[drawn - 1])
        else:
            cells = torch.stack(self._enlarged[layer])
            cells = F.pad(cells, (0, 0, 0, 0, 0, 0, 0, 0, 0, slots - len(cells)), value=255)
            table = labelled_table(cells, labels, headers)
        self._tables[layer] = (table, labels, headers)
        legend = footnote(
            table.shape[-1],
            f"{layer}: each column one channel, projected to pixels on the probe it fires most "
            f"on{where}, at the end of each logged epoch (a row each, filled in as training "
            "goes on); mid-grey = 0",
            table.device,
            table.dtype,
        )
        self.log_image(trainer, tags.tag(tags.EVOLUTION, layer), stack_rows(table, legend))
        text = (
            f"columns: channels {self.features[layer]}  \nrows: epochs {self.column_epochs[layer]}"
        )
        self.log_text(trainer, tags.tag(tags.EVOLUTION_FEATURES, layer), text)
