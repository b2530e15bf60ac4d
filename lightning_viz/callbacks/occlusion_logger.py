"""OcclusionLogger: which parts of the probes the prediction needs, found by hiding them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from typing_extensions import override

from lightning_viz import tags
from lightning_viz.alerts import OnAlert
from lightning_viz.callbacks.class_view import ClassView, Target, panel_tiles
from lightning_viz.functional import colorize, normalize_signed, overlay, upsample
from lightning_viz.functional._validation import (
    check_finite_number,
    check_int,
    check_pair,
)
from lightning_viz.functional.gradcam import OutputTransform
from lightning_viz.functional.occlusion import occlusion
from lightning_viz.probes import BatchToImages, Probes


class OcclusionLogger(ClassView):
    r"""Occlusion sensitivity on fixed probe images (Zeiler & Fergus, 2014): hide a patch, see
    how much the explained class's probability drops, at every patch position.

    At fit start (the untrained baseline) and every ``every_n_epochs`` at the end of a training
    epoch, every probe is run with a ``window`` patch set to ``baseline`` at every position
    (:func:`~lightning_viz.functional.occlusion.occlusion`: batched forwards of at most
    ``max_batch`` occluded images, no gradients), model in eval mode, train flags restored,
    global rank 0 only. Unlike Grad-CAM it needs no layer and no gradient: it treats the model as
    a black box, so it works for any architecture that returns class scores.

    Args:
        window: the hidden patch's side in pixels, or (height, width); default a quarter of the
            probes' sides (8x8 on 32x32 probes).
        stride: pixels between patch positions; default an eighth of the probes' sides (7x7
            positions whatever the probe size).
        baseline: the value hidden pixels take; 0 is the mean colour of normalized images.
        max_batch: the most occluded images per forward (memory: that many images'
            activations); default 64 on a CPU, 256 on an accelerator.
        target, probes, num_probes, every_n_epochs, forward_fn, batch_to_images, class_names,
            output_transform, probability, scores, on_alert, strict, budget, image_origin: as in
            :class:`~lightning_viz.GradCAMLogger`.
        cmap: a diverging matplotlib colormap (default ``"RdBu_r"``: red where hiding the spot
            lowers the probability, blue where it raises it).
        alpha: heatmap opacity over the probe.

    Raises:
        ValueError: bad arguments (at construction); probes that do not fit the model, a window
            larger than the probes, labels out of range (at fit start).

    Logged keys:

    - ``occlusion/sensitivity`` (image): a panel per probe, the probe (captioned with its true
      class) beside the map over it (captioned with the predicted class and its probability, or the
      explained class and the prediction where they differ); each map is scaled to its own largest
      change (the table gives it), but at least 0.01 of a probability (a map whose probability
      hardly moves is drawn faint, and a note under the image names its probes), white is no
      change; a colour bar below names the class explained and the patch size.
    - ``occlusion/sensitivity/targets`` (text): per probe, the class explained, the prediction,
      its probability and the largest drop of the explained class's probability.
    - ``stability/<tag>`` (default), ``sanity/<tag>`` and ``sanity/<tag>/ssim``,
      ``faithfulness/<tag>/deletion``, ``/insertion``, ``/deletion_random`` (``scores``),
      ``localization/<tag>/pointing_game``, ``/energy_in_box`` (probes with ``boxes`` or ``masks``),
      ``<tag>`` being ``occlusion/sensitivity``: the trust scores of the maps, as
      :class:`~lightning_viz.GradCAMLogger`'s; warnings go under the image and in the text.
    - ``lightning_viz/overhead/<callback>`` and ``lightning_viz/overhead`` (every epoch's end).

    How to read it: red marks the parts the network needs for the class: hiding them lowers its
    probability. A trained net's red sits on the object; red on the background points at a
    shortcut. Blue parts work against the class (hiding them makes it likelier). A largest
    drop near 0 means no single patch matters (the evidence is spread out, or the window is too
    small for the object).

    Cost: per logged epoch about ``probes x positions`` forwards without gradients (10 probes x
    49 positions = 490 images by default), in batches of ``max_batch``; not part of
    :func:`~lightning_viz.default_callbacks`.

    Example::

        trainer = Trainer(callbacks=[OcclusionLogger(window=8, stride=4)])
    """

    view = "occlusion"

    def __init__(
        self,
        window: int | Sequence[int] | None = None,
        stride: int | Sequence[int] | None = None,
        baseline: float = 0.0,
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
        self.window = None if window is None else check_pair("window", window)
        self.stride = None if stride is None else check_pair("stride", stride)
        self.baseline = check_finite_number("baseline", baseline)
        self.max_batch = check_int("max_batch", max_batch, allow_none=True)
        self._window = self._stride = (1, 1)

    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {"window": self.window, "stride": self.stride, "target": self.target}

    @override
    def prepare(self, pl_module: pl.LightningModule, probes: Probes, output: Any) -> None:
        super().prepare(pl_module, probes, output)
        size = tuple(probes.images.shape[-2:])
        self._window = self.window or tuple(max(1, math.ceil(s / 4)) for s in size)
        self._stride = self.stride or tuple(max(1, math.ceil(s / 8)) for s in size)
        if any(w > s for w, s in zip(self._window, size, strict=True)):
            raise ValueError(
                f"{type(self).__name__}: `window` {self._window} is larger than the probes, {size}"
            )

    @override
    def watching(self) -> str:
        height, width = self._window
        return f"occlusion ({height}x{width} patches) {self.on_probes}"

    def _sensitivity(
        self, pl_module: pl.LightningModule, probes: Probes, explained: torch.Tensor
    ) -> torch.Tensor:
        """(N, H, W): how much hiding the patch around each pixel lowers the probability (a
        segmentation's score; 0 where its class is predicted on no pixel:
        :meth:`blank_unsegmented`)."""
        sensitivity = occlusion(
            pl_module,
            probes.images,
            explained,
            self._window,
            self._stride,
            self.baseline,
            output_transform=self._transform,
            forward=self.probe_forward(pl_module),
            max_batch=self.max_batch,
            probabilities=self.measure_as,
        )
        return self.blank_unsegmented(sensitivity, explained)

    @override
    def score_maps(
        self, pl_module: pl.LightningModule, probes: Probes, explained: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return {tags.OCCLUSION: self._sensitivity(pl_module, probes, explained)}

    @override
    def visualize(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probes: Probes) -> None:
        targets, logits, explained = self._explained_classes(pl_module, probes)
        sensitivity = self._sensitivity(pl_module, probes, explained)
        self._check_finite(sensitivity, "the occlusion map")
        rating = self._rate(trainer, pl_module, probes, {tags.OCCLUSION: sensitivity}, explained)
        *captions, table = self._predictions(probes, logits, targets)
        display = panel_tiles(probes.display)
        heat = normalize_signed(
            upsample(sensitivity, tuple(display.shape[-2:])), percentile=100, least=self.least_scale
        )
        overlays = overlay(display, colorize(heat, self.cmap), self.alpha)
        height, width = self._window
        explained_class = self._explained_class(targets)
        title = (
            f"occlusion, {height}x{width} patch: drop of the {explained_class}'s "
            f"{self.explained_quantity}"
        )
        ends = ("rises", "drops")
        faint = self.faint_note(probes, sensitivity.abs().flatten(1).amax(dim=1), "largest change")
        note = " ".join(filter(None, (rating[tags.OCCLUSION].note, faint))) or None
        self._log_panels(
            trainer, tags.OCCLUSION, display, overlays, captions, ends, title, note=note
        )
        drops = [f"{drop:.3f}" for drop in sensitivity.flatten(1).amax(dim=1).tolist()]
        table = self._with_columns(table, {"largest drop": drops})
        self.log_text(
            trainer, tags.OCCLUSION_TARGETS, self._rated_text(table, rating[tags.OCCLUSION])
        )
