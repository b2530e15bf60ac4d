"""SaliencyLogger: which pixels the class score is most sensitive to, on fixed probe images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from typing_extensions import override

from lightning_viz import tags
from lightning_viz.alerts import OnAlert
from lightning_viz.callbacks.class_view import ClassView, Target, panel_tiles
from lightning_viz.functional import (
    colorize,
    expected_gradients,
    integrated_gradients,
    normalize_magnitude,
    normalize_signed,
    overlay,
    saliency,
    smooth_grad,
)
from lightning_viz.functional._validation import (
    check_choice,
    check_finite_number,
    check_int,
    check_non_negative,
)
from lightning_viz.functional.gradcam import OutputTransform
from lightning_viz.probes import BatchToImages, Probes

Method = Literal["vanilla", "smoothgrad", "integrated_gradients", "expected_gradients"]
METHODS: tuple[str, ...] = ("vanilla", "smoothgrad", "integrated_gradients", "expected_gradients")
SIGNED = ("integrated_gradients", "expected_gradients")
"""Methods whose attributions have a sign worth showing (evidence for and against the class)."""


class SaliencyLogger(ClassView):
    r"""Gradient attribution maps on fixed probe images: the pixels a class score depends on.

    At fit start (the untrained baseline) and every ``every_n_epochs`` at the end of a training
    epoch, the attribution of the explained class's score to every input pixel, by ``method``:

    - ``"vanilla"``: the gradient's magnitude (Simonyan et al., 2014); one backward, noisy.
    - ``"smoothgrad"`` (default): the mean magnitude over ``samples`` noisy copies of each probe
      (Smilkov et al., 2017); sharper, ``samples`` x the cost.
    - ``"integrated_gradients"``: gradients along the straight path from ``baseline`` to the
      probe, times the difference (Sundararajan et al., 2017); signed, and each probe's
      attributions sum to its score's change from the baseline.
    - ``"expected_gradients"``: integrated gradients averaged over baselines drawn from the
      other probes (Erion et al.; SHAP's GradientExplainer); signed, no baseline to choose.

    The draws (noise, baselines, path positions) are seeded the same at every epoch, so two
    epochs' maps differ only because the model changed. Passes run on the probes in eval mode,
    fp32, batches of at most ``max_batch`` images, no parameter ``.grad`` touched, train flags
    restored, global rank 0 only.

    Args:
        method: one of ``"vanilla"``, ``"smoothgrad"``, ``"integrated_gradients"``,
            ``"expected_gradients"``.
        absolute: vanilla and SmoothGrad show the gradient's magnitude (default); False shows
            its sign instead (red for, blue against the class, summed over colour channels),
            logged as ``saliency/vanilla_signed`` or ``saliency/smoothgrad_signed``. The
            integrated and expected gradients are always signed.
        samples: noisy copies (SmoothGrad) or baseline draws (expected gradients) per probe.
        steps: Gauss-Legendre points along the path (integrated gradients).
        stdev: SmoothGrad's noise; None: 15% of the probes' value range.
        baseline: integrated gradients' reference image, a number for every pixel (0: the mean
            colour of normalized images).
        max_batch: the most images per forward and backward; default 64 on a CPU, 256 on an
            accelerator.
        cmap: a matplotlib colormap; default ``"inferno"`` for the magnitudes of vanilla and
            SmoothGrad, ``"RdBu_r"`` (red for, blue against the class) for the signed methods.
        alpha: map opacity over the probe (1: the map alone).
        target, probes, num_probes, every_n_epochs, forward_fn, batch_to_images, class_names,
            output_transform, probability, scores, on_alert, strict, budget, image_origin: as in
            :class:`~lightning_viz.GradCAMLogger`.

    Raises:
        ValueError: bad arguments (at construction); probes that do not fit the model or labels
            out of range (at fit start).

    Logged keys:

    - ``saliency/<method>`` (image): a panel per probe, the probe (captioned with its true class)
      beside its map (captioned with the predicted class and its probability, or the explained class
      and the prediction where they differ); each map is scaled to the 99th percentile of its own
      magnitudes (the few pixels above are clipped); a colour bar below names the method and the
      class explained.
    - ``saliency/<method>/targets`` (text): per probe, the class explained, the prediction and
      its probability.
    - ``stability/<tag>`` (default), ``sanity/<tag>`` and ``sanity/<tag>/ssim``,
      ``faithfulness/<tag>/deletion``, ``/insertion``, ``/deletion_random`` (``scores``),
      ``localization/<tag>/pointing_game``, ``/energy_in_box`` (probes with ``boxes`` or ``masks``),
      ``<tag>`` being ``saliency/<method>``: the trust scores of the maps, as
      :class:`~lightning_viz.GradCAMLogger`'s; warnings go under the image and in the text.
    - ``lightning_viz/overhead/<callback>`` and ``lightning_viz/overhead`` (every epoch's end).

    How to read it: bright (or red) pixels are those whose change would move the class's score
    most; a trained net's map outlines the object's edges and parts, an untrained one's is noise
    spread over the image. A map lit on the background or a watermark points at a shortcut.
    Vanilla gradients are noisy by nature: read SmoothGrad or integrated gradients for shapes.
    Gradient maps can look plausible on a net that learned nothing (Adebayo et al., 2018):
    compare with the fit-start baseline before trusting one.

    Cost: per logged epoch a forward of the probes, then forwards and backwards of about
    ``probes x samples`` images (SmoothGrad, expected gradients; ``probes x steps`` for
    integrated gradients, one per probe for vanilla): 160 images with the defaults and 10
    probes. Not part of :func:`~lightning_viz.default_callbacks`.

    Example::

        trainer = Trainer(callbacks=[SaliencyLogger(method="integrated_gradients")])
    """

    view = "saliency"

    def __init__(
        self,
        method: Method = "smoothgrad",
        absolute: bool = True,
        samples: int = 16,
        steps: int = 16,
        stdev: float | None = None,
        baseline: float = 0.0,
        max_batch: int | None = None,
        target: Target = None,
        probes: Probes | None = None,
        num_probes: int | None = None,
        every_n_epochs: int = 1,
        forward_fn: Callable[[pl.LightningModule, torch.Tensor], Any] | None = None,
        batch_to_images: BatchToImages | None = None,
        class_names: Sequence[str] | None = None,
        cmap: str | None = None,
        alpha: float = 0.85,
        output_transform: OutputTransform | None = None,
        probability: str | None = None,
        scores: bool | Sequence[str] | None = None,
        on_alert: OnAlert = "warn",
        strict: bool = False,
        budget: float | None = None,
        image_origin: str = "upper",
    ) -> None:
        self.method = check_choice("method", method, METHODS)
        self.absolute = bool(absolute)
        self.signed = self.method in SIGNED or not self.absolute
        self.key = self.method if self.method in SIGNED or self.absolute else f"{method}_signed"
        super().__init__(
            target=target,
            probes=probes,
            num_probes=num_probes,
            every_n_epochs=every_n_epochs,
            forward_fn=forward_fn,
            batch_to_images=batch_to_images,
            class_names=class_names,
            cmap=cmap or ("RdBu_r" if self.signed else "inferno"),
            alpha=alpha,
            output_transform=output_transform,
            probability=probability,
            scores=scores,
            on_alert=on_alert,
            strict=strict,
            budget=budget,
            image_origin=image_origin,
        )
        self.samples = check_int("samples", samples)
        self.steps = check_int("steps", steps)
        self.stdev = None if stdev is None else check_non_negative("stdev", stdev)
        self.baseline = check_finite_number("baseline", baseline)
        self.max_batch = check_int("max_batch", max_batch, allow_none=True)

    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {"method": self.key, "target": self.target}

    @override
    def watching(self) -> str:
        return f"saliency ({self.key}) {self.on_probes}"

    def attributions(
        self, pl_module: pl.LightningModule, probes: Probes, targets: torch.Tensor | int | None
    ) -> torch.Tensor:
        """(N, C, H, W) attributions of the probes by the callback's method (none where a
        segmentation's class is predicted on no pixel: :meth:`blank_unsegmented`)."""
        images, forward = probes.images, self.probe_forward(pl_module)
        batched = {
            "output_transform": self._transform,
            "forward": forward,
            "max_batch": self.max_batch,
        }
        if self.method == "vanilla":
            found = saliency(pl_module, images, targets, self.absolute, self._transform, forward)
        elif self.method == "smoothgrad":
            found = smooth_grad(
                pl_module, images, targets, self.samples, self.stdev, self.absolute, **batched
            )
        elif self.method == "integrated_gradients":
            found = integrated_gradients(
                pl_module, images, targets, self.baseline, self.steps, **batched
            )
        else:
            found = expected_gradients(pl_module, images, images, targets, self.samples, **batched)
        return self.blank_unsegmented(found, targets)

    def _reduced(self, attributions: torch.Tensor) -> torch.Tensor:
        """(N, H, W) maps of (N, C, H, W) attributions: signed ones summed over colour channels
        (evidence for and against keeps its sign), magnitudes' strongest channel per pixel
        (Simonyan et al.)."""
        if self.signed:
            return attributions.sum(dim=1)
        return attributions.amax(dim=1)

    @override
    def score_maps(
        self, pl_module: pl.LightningModule, probes: Probes, explained: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        reduced = self._reduced(self.attributions(pl_module, probes, explained))
        return {tags.tag(tags.SALIENCY, "", self.key): reduced}

    @override
    def visualize(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probes: Probes) -> None:
        targets, logits, explained = self._explained_classes(pl_module, probes)
        attributions = self.attributions(pl_module, probes, explained)
        self._check_finite(attributions, f"the {self.method} map")
        reduced = self._reduced(attributions)
        tag = tags.tag(tags.SALIENCY, "", self.key)
        rating = self._rate(trainer, pl_module, probes, {tag: reduced}, explained)[tag]
        display = panel_tiles(probes.display)
        scaled = panel_tiles(reduced[:, None])[:, 0]
        heat = normalize_signed(scaled) if self.signed else normalize_magnitude(scaled)
        maps = overlay(display, colorize(heat, self.cmap), self.alpha)
        *captions, table = self._predictions(probes, logits, targets)
        title = f"{self.key}: attribution to the {self._explained_class(targets)}'s score"
        ends = ("against", "for") if self.signed else ("none", "most")
        self._log_panels(trainer, tag, display, maps, captions, ends, title, note=rating.note)
        self.log_text(
            trainer,
            tags.tag(tags.SALIENCY_TARGETS, "", self.key),
            self._rated_text(table, rating),
        )
