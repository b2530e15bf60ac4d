"""LIMELogger: which segments of the probes a local linear surrogate credits with the class."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from typing_extensions import override

from lightning_viz import tags
from lightning_viz.alerts import OnAlert
from lightning_viz.callbacks.class_view import ClassView, Target, panel_tiles
from lightning_viz.functional import colorize, normalize_signed, overlay
from lightning_viz.functional._validation import (
    check_choice,
    check_finite_number,
    check_fraction,
    check_int,
    check_pair,
)
from lightning_viz.functional.gradcam import OutputTransform
from lightning_viz.functional.lime import (
    POOR_FIT,
    LimeExplanation,
    grid_segments,
    lime,
    slic_segments,
)
from lightning_viz.probes import BatchToImages, Probes

Segmentation = Literal["auto", "slic", "grid"]
MIN_SEGMENTS = 8
"""A probe that SLIC cuts into fewer superpixels is segmented by the grid instead: with one or
two, LIME credits the whole image, painted in one colour."""


def poor_fit_note(scores: torch.Tensor, named: Callable[[list[int]], str]) -> str | None:
    """The note on the probes whose surrogate's R^2 (``scores``, (N,)) is under
    :data:`~lightning_viz.functional.lime.POOR_FIT`, ``named`` as the note names them: their
    maps look as confident as the others' (a visual review: 5 of the digits' 10 probes at 0.39
    to 0.48, told in the text table alone)."""
    poor = (scores < POOR_FIT).nonzero().flatten().tolist()
    if not poor:
        return None
    probes = named(poor)
    return (
        f"The linear fit explains little of {probes} (R^2 under {POOR_FIT:g}, in the text "
        "table): read their maps with care."
    )


def scikit_image_installed() -> bool:
    return importlib.util.find_spec("skimage") is not None


class LIMELogger(ClassView):
    r"""LIME on fixed probe images (Ribeiro et al., 2016): hide random sets of segments, fit a
    weighted linear model of the class's probability on which segments were visible, show each
    segment's weight.

    At fit start (the untrained baseline) and every ``every_n_epochs`` at the end of a training
    epoch, each probe's ``samples`` variants run as batched forwards without gradients and the
    ridge fits of all probes are one batched solve on the device
    (:func:`~lightning_viz.functional.lime.lime`), model in eval mode, train flags restored,
    global rank 0 only. The segments are computed once per fit from the probes' display images:
    SLIC superpixels (scikit-image) or a regular grid. LIME is stochastic: each probe's masks
    come from a generator seeded with ``seed`` plus its index (never the global generator), the
    same at every epoch, so two epochs differ only because the model changed. It approximates
    the model only near each probe; the table's R^2 says how well. A probe that SLIC cuts into
    fewer than 8 superpixels (noise merges into one) takes the grid, said in the fit start's
    "watching" line.

    Args:
        segmentation: ``"slic"`` (superpixels that follow edges; needs ``pip install
            scikit-image``), ``"grid"`` (``cells`` x ``cells`` squares), or ``"auto"`` (default:
            SLIC when scikit-image is installed, else the grid, said in the "watching" line).
        segments: about how many SLIC superpixels per probe.
        cells: the grid's rows and columns, one number for both.
        samples: variants per probe (lime's default is 1000; 256 suffice for about 50
            segments).
        keep: the probability that a segment stays visible in a variant.
        baseline: the value hidden pixels take (0: the mean colour of normalized images).
        seed: seeds the masks (plus the probe's index).
        max_batch: the most variants per forward; default 64 on a CPU, 256 on an accelerator.
        cmap: a diverging matplotlib colormap (default ``"RdBu_r"``: red segments raise the
            class's probability, blue ones lower it).
        alpha: map opacity over the probe.
        target, probes, num_probes, every_n_epochs, forward_fn, batch_to_images, class_names,
            output_transform, probability, scores, on_alert, strict, budget, image_origin: as in
            :class:`~lightning_viz.GradCAMLogger`.

    Raises:
        ValueError: bad arguments (at construction); probes that do not fit the model, labels
            out of range, a grid finer than the probes (at fit start).
        ImportError: ``segmentation="slic"`` without scikit-image (at fit start).

    Logged keys:

    - ``lime/weights`` (image): a panel per probe, the probe (captioned with its true class)
      beside its segment weights over it, segment borders in grey (captioned with the predicted
      class and its probability); each map is scaled to its own largest weight, but at least
      0.01 of a probability (a map whose weights hardly move it is drawn faint, and a note
      under the image names its probes); a colour bar below names the class explained.
    - ``lime/weights/targets`` (text): per probe, the class explained, the prediction, its
      probability, the largest segment weight and the surrogate's weighted R^2.
    - ``stability/<tag>`` (default), ``sanity/<tag>`` and ``sanity/<tag>/ssim``,
      ``faithfulness/<tag>/deletion``, ``/insertion``, ``/deletion_random`` (``scores``),
      ``localization/<tag>/pointing_game``, ``/energy_in_box`` (probes with ``boxes`` or ``masks``),
      ``<tag>`` being ``lime/weights``: the trust scores of the maps, as
      :class:`~lightning_viz.GradCAMLogger`'s; warnings go under the image and in the text.
    - ``lightning_viz/overhead/<callback>`` and ``lightning_viz/overhead`` (every epoch's end).

    How to read it: red segments are those whose presence the surrogate credits with the
    class's probability; blue ones count against it. A trained net's red sits on the object's
    segments. Trust a map only when its R^2 is high (above about 0.5; a note under the image names
    the probes under it): a low R^2 means the model is not close to linear in the segments
    around this probe, and the weights say little; "-" means hiding segments did not move the
    probability at all (a saturated one): no fit.

    Cost: per logged epoch ``probes x samples`` forwards without gradients (2,560 images with
    10 probes and the defaults), in batches of ``max_batch``, and one small batched solve; not
    part of :func:`~lightning_viz.default_callbacks`.

    Example::

        trainer = Trainer(callbacks=[LIMELogger(segmentation="grid", cells=6)])
    """

    view = "LIME"

    def __init__(
        self,
        segmentation: Segmentation = "auto",
        segments: int = 50,
        cells: int = 8,
        samples: int = 256,
        keep: float = 0.5,
        baseline: float = 0.0,
        seed: int = 0,
        max_batch: int | None = None,
        target: Target = None,
        probes: Probes | None = None,
        num_probes: int | None = None,
        every_n_epochs: int = 1,
        forward_fn: Callable[[pl.LightningModule, torch.Tensor], Any] | None = None,
        batch_to_images: BatchToImages | None = None,
        class_names: Sequence[str] | None = None,
        cmap: str = "RdBu_r",
        alpha: float = 0.6,
        output_transform: OutputTransform | None = None,
        probability: str | None = None,
        scores: bool | Sequence[str] | None = None,
        on_alert: OnAlert = "warn",
        strict: bool = False,
        budget: float | None = None,
        image_origin: str = "upper",
    ) -> None:
        super().__init__(
            target=target,
            probes=probes,
            num_probes=num_probes,
            every_n_epochs=every_n_epochs,
            forward_fn=forward_fn,
            batch_to_images=batch_to_images,
            class_names=class_names,
            cmap=cmap,
            alpha=alpha,
            output_transform=output_transform,
            probability=probability,
            scores=scores,
            on_alert=on_alert,
            strict=strict,
            budget=budget,
            image_origin=image_origin,
        )
        self.segmentation = check_choice("segmentation", segmentation, ("auto", "slic", "grid"))
        self.segments = check_int("segments", segments)
        self.cells = check_pair("cells", cells)
        self.samples = check_int("samples", samples, minimum=2)
        self.keep = check_fraction("keep", keep)
        self.baseline = check_finite_number("baseline", baseline)
        self.seed = check_int("seed", seed, minimum=0)
        self.max_batch = check_int("max_batch", max_batch, allow_none=True)
        self._labels: torch.Tensor | None = None
        self._segmentation = "grid"
        self._segments_said = "grid segments"

    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {"segmentation": self.segmentation, "target": self.target}

    @override
    def prepare(self, pl_module: pl.LightningModule, probes: Probes, output: Any) -> None:
        super().prepare(pl_module, probes, output)
        self._segmentation = self.segmentation
        if self.segmentation == "auto":
            self._segmentation = "slic" if scikit_image_installed() else "grid"
        grid = f"{self.cells[0]}x{self.cells[1]} grid"
        self._segments_said = (
            f"{grid} segments: pip install scikit-image for superpixels that follow edges"
            if self.segmentation == "auto" and self._segmentation == "grid"
            else f"{self._segmentation} segments"
        )
        if self._segmentation == "grid":
            self._labels = self._grid(probes)
            return
        self._labels = slic_segments(probes.display, self.segments)
        few = self._labels.flatten(1).amax(dim=1) + 1 < min(MIN_SEGMENTS, self.segments)
        if few.all():  # on noise, SLIC merges the whole image into one or two superpixels
            self._labels = self._grid(probes)
            self._segments_said = (
                f"{grid} segments: SLIC cut every probe into fewer than {MIN_SEGMENTS} "
                "superpixels, as it does noisy or flat images"
            )
        elif few.any():
            self._labels = torch.where(few[:, None, None], self._grid(probes), self._labels)
            named = ", ".join(map(str, few.nonzero().flatten().tolist()))
            self._segments_said += (
                f"; {grid} segments on probe(s) {named}, which SLIC cut into fewer than "
                f"{MIN_SEGMENTS} superpixels"
            )

    def _grid(self, probes: Probes) -> torch.Tensor:
        """The probes' (N, H, W) grid segments."""
        size = tuple(probes.images.shape[-2:])
        try:
            grid = grid_segments(size, self.cells, probes.images.device)
        except ValueError as error:
            raise ValueError(f"{type(self).__name__}: {error}") from None
        return grid.expand(len(probes), *size)

    @override
    def watching(self) -> str:
        return f"LIME ({self._segments_said}) {self.on_probes}"

    def _explanation(
        self, pl_module: pl.LightningModule, probes: Probes, explained: torch.Tensor
    ) -> LimeExplanation:
        """The probes' LIME explanations; none where a segmentation's class is predicted on no
        pixel (:meth:`blank_unsegmented`): weights 0, and no fit (R^2 NaN)."""
        explanation = lime(
            pl_module,
            probes.images,
            self._labels,
            explained,
            self.samples,
            self.keep,
            self.baseline,
            seed=self.seed,
            output_transform=self._transform,
            forward=self.probe_forward(pl_module),
            max_batch=self.max_batch,
            probabilities=self.measure_as,
        )
        absent = self.unsegmented(explained, len(explanation.score))
        if absent is None:
            return explanation
        absent = absent.to(explanation.score.device)
        return explanation._replace(
            maps=explanation.maps.masked_fill(absent[:, None, None], 0),
            weights=explanation.weights.masked_fill(absent[:, None], 0),
            score=explanation.score.masked_fill(absent, torch.nan),
        )

    @override
    def score_maps(
        self, pl_module: pl.LightningModule, probes: Probes, explained: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return {tags.LIME: self._explanation(pl_module, probes, explained).maps}

    @override
    def visualize(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probes: Probes) -> None:
        targets, logits, explained = self._explained_classes(pl_module, probes)
        explanation = self._explanation(pl_module, probes, explained)
        self._check_finite(explanation.maps, "the LIME weights")
        rating = self._rate(trainer, pl_module, probes, {tags.LIME: explanation.maps}, explained)
        display = panel_tiles(probes.display)
        labels = panel_tiles(self._labels[:, None].float())[:, 0]
        heat = normalize_signed(
            panel_tiles(explanation.maps[:, None])[:, 0], percentile=100, least=self.least_scale
        )
        maps = overlay(display, colorize(heat, self.cmap), self.alpha)
        borders = torch.zeros_like(labels, dtype=torch.bool)
        borders[:, :, 1:] |= labels[:, :, 1:] != labels[:, :, :-1]
        borders[:, 1:, :] |= labels[:, 1:, :] != labels[:, :-1, :]
        maps = torch.where(borders[:, None], torch.full_like(maps, 0.5), maps)
        *captions, table = self._predictions(probes, logits, targets)
        explained_class = self._explained_class(targets)
        title = f"LIME: segment weight for the {explained_class}'s {self.explained_quantity}"
        ends = ("lowers", "raises")
        largest = explanation.weights.abs().amax(dim=1)
        faint = self.faint_note(probes, largest, "largest segment weight")
        poor = poor_fit_note(explanation.score, partial(self.probe_names, probes))
        note = " ".join(filter(None, (rating[tags.LIME].note, faint, poor))) or None
        self._log_panels(trainer, tags.LIME, display, maps, captions, ends, title, note=note)
        columns = {
            "largest weight": [f"{w:.3g}" for w in explanation.weights.abs().amax(dim=1).tolist()],
            "R^2": [
                "-" if math.isnan(score) else f"{score:.2f}" for score in explanation.score.tolist()
            ],
        }
        table = self._with_columns(table, columns)
        self.log_text(trainer, tags.LIME_TARGETS, self._rated_text(table, rating[tags.LIME]))
