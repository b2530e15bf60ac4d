"""CAMLogger: where a network with a global-average-pooling head finds each class, one forward."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from typing_extensions import override

from lightning_viz import tags
from lightning_viz.alerts import OnAlert
from lightning_viz.callbacks.class_view import ClassView, Target, panel_tiles
from lightning_viz.callbacks.layers import named_layers
from lightning_viz.callbacks.probe_base import Unsuited
from lightning_viz.functional import colorize, normalize, overlay, upsample
from lightning_viz.functional._validation import target_index
from lightning_viz.functional.cam import class_activation_map, gap_linear_head
from lightning_viz.functional.gradcam import OutputTransform
from lightning_viz.probes import BatchToImages, Probes


class CAMLogger(ClassView):
    r"""Class activation maps (Zhou et al., 2016) on fixed probe images: where the network finds
    the class, read straight from its last feature map and its classifier's weights.

    For a network that ends in global average pooling and one linear layer (ResNet, DenseNet,
    MobileNetV2, EfficientNet, most small CNNs), the class score is the spatial mean of
    ``sum_c W[t, c] * A_c`` plus a bias: that map
    (:func:`~lightning_viz.functional.cam.class_activation_map`) shows where the score comes
    from. At fit start (the untrained baseline) and every ``every_n_epochs`` at the end of a
    training epoch, one forward of the probes without gradients gives it (model in eval mode for
    the pass, fp32, each submodule's train flag restored); the maps are upsampled to the probe
    size, min-max normalized per probe, colored and overlaid on the probe's display image. Runs
    on global rank 0 only. A model whose head is anything else (VGG's MLP, MobileNetV3's
    Linear-Hardswish-Linear) shows nothing: one ``not_shown`` notice at fit start says what
    follows its last feature map and suggests :class:`~lightning_viz.GradCAMLogger`, and
    training goes on.

    Args:
        layer: the feature map the head averages, a name from ``model.named_modules()``;
            default found at fit start by two forwards of one probe
            (:func:`~lightning_viz.functional.cam.gap_linear_head`): ``model.layer4`` of a
            ResNet, ``model.features`` of a DenseNet (after the ReLU its forward applies) or of
            ``DigitsCNN``. Give it when the search does not find it; its head must still be a
            global average and one linear layer.
        target, probes, num_probes, every_n_epochs, forward_fn, batch_to_images, class_names, cmap,
            alpha, output_transform, probability, scores, on_alert, strict, budget,
            image_origin: as in :class:`~lightning_viz.GradCAMLogger`.

    Raises:
        ValueError: bad arguments (at construction); an unknown ``layer``, or one whose average
            does not give the scores through one linear layer, probes that do not fit the model,
            labels out of range, or ``target="label"`` without labels (at fit start).

    Logged keys:

    - ``cam/<layer>`` (image): a panel per probe, the probe (captioned with its true class) beside
      its overlay (captioned with the predicted class and its probability, or the explained class
      and the prediction where they differ), enlarged to at least 96 pixels, over a colour bar that
      names the class explained.
    - ``cam/<layer>/targets`` (text): per probe, the class explained, the predicted class, its
      probability and the map's peak (its largest raw value; each image is scaled to its own).
    - ``stability/<tag>``, ``sanity/<tag>`` and ``sanity/<tag>/ssim`` (default: sanity costs
      one more forward), ``faithfulness/<tag>/deletion``, ``/insertion``, ``/deletion_random``,
      ``localization/<tag>/pointing_game``, ``/energy_in_box`` (probes with ``boxes`` or ``masks``),
      ``<tag>`` being ``cam/<layer>``: the trust scores of the maps, as
      :class:`~lightning_viz.GradCAMLogger`'s; warnings go under the image and in the text.
    - ``lightning_viz/overhead/<callback>`` and ``lightning_viz/overhead`` (every epoch's end).

    How to read it: warm colors mark the places that raise the explained class's score most,
    cold ones those that raise it least or lower it (the map is not rectified: its mean plus the
    bias is the score). A net that learned the task lights up the object; a map on the
    background or a watermark points at a shortcut. The map has the resolution of the last
    feature map (2x2 for a ResNet at 64 pixels): for finer maps use
    :class:`~lightning_viz.GradCAMLogger` on an earlier layer.

    Cost: per logged epoch one forward of the probes without gradients (Grad-CAM adds a
    backward), one more for the default sanity score; at fit start two forwards of one probe to
    find the head.

    Example::

        trainer = Trainer(callbacks=[CAMLogger(target="pred")])
    """

    view = "CAM"
    default_scores = ("stability", "sanity")

    def __init__(
        self,
        layer: str | None = None,
        target: Target = None,
        probes: Probes | None = None,
        num_probes: int | None = None,
        every_n_epochs: int = 1,
        forward_fn: Callable[[pl.LightningModule, torch.Tensor], Any] | None = None,
        batch_to_images: BatchToImages | None = None,
        class_names: Sequence[str] | None = None,
        cmap: str = "jet",
        alpha: float = 0.5,
        output_transform: OutputTransform | None = None,
        probability: str | None = None,
        scores: bool | Sequence[str] | None = None,
        on_alert: OnAlert = "warn",
        strict: bool = False,
        budget: float | None = None,
        image_origin: str = "upper",
    ) -> None:
        if layer is not None and not isinstance(layer, str):
            raise ValueError(
                f"`layer` must be None or a layer name from model.named_modules(), got {layer!r}"
            )
        super().__init__(
            layers=None if layer is None else [layer],
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
        self.layer = layer
        self._layers: dict[str, nn.Module] = {}
        self._classifier: str | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self._classifier = None
            self._layers = (
                {}
                if self.layer is None
                else named_layers(pl_module, [self.layer], type(self).__name__)
            )

    @override
    def prepare(self, pl_module: pl.LightningModule, probes: Probes, output: Any) -> None:
        super().prepare(pl_module, probes, output)
        source = type(self).__name__
        self._check_named_layers(pl_module, probes, tokens=False)
        forward = self.probe_forward(pl_module)
        first = probes.images[:1]
        if self.layer is None:
            try:
                head = gap_linear_head(pl_module, first, self._transform, forward)
            except ValueError as error:
                raise Unsuited(f"{source}: {error}") from None
            self._layers = {head.layer: pl_module.get_submodule(head.layer)}
            self._classifier = head.classifier
            return
        try:
            class_activation_map(
                pl_module,
                first,
                layer=self.layer,
                output_transform=self._transform,
                forward=forward,
            )
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None

    def _maps_and_logits(
        self, pl_module: pl.LightningModule, probes: Probes, targets: torch.Tensor | int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        [layer] = self._layers
        return class_activation_map(
            pl_module,
            probes.images,
            targets,
            layer,
            self._classifier,
            self._transform,
            self.probe_forward(pl_module),
        )

    @override
    def score_maps(
        self, pl_module: pl.LightningModule, probes: Probes, explained: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        [layer] = self._layers
        return {tags.tag(tags.CAM, layer): self._maps_and_logits(pl_module, probes, explained)[0]}

    @override
    def visualize(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probes: Probes) -> None:
        targets = self._targets(pl_module, probes)
        [layer] = self._layers
        maps, logits = self._maps_and_logits(pl_module, probes, targets)
        self._check_finite(maps, f"the CAM of {layer!r}")
        tag = tags.tag(tags.CAM, layer)
        explained = target_index(targets, logits)
        rating = self._rate(trainer, pl_module, probes, {tag: maps}, explained)[tag]
        *captions, table = self._predictions(probes, logits, targets)
        display = panel_tiles(probes.display)
        heat = normalize(upsample(maps, tuple(display.shape[-2:])))
        overlays = overlay(display, colorize(heat, self.cmap), self.alpha)
        evidence = f"{layer}: CAM evidence for the {self._explained_class(targets)}"
        self._log_panels(
            trainer, tag, display, overlays, captions, ("least", "most"), evidence,
            note=rating.note,
        )  # fmt: skip
        peaks = [f"{peak:.3g}" for peak in maps.flatten(1).amax(dim=1).tolist()]
        table = self._with_columns(table, {"peak": peaks})
        self.log_text(trainer, tags.tag(tags.CAM_TARGETS, layer), self._rated_text(table, rating))
