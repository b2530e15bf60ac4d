"""GradCAMLogger: where the network looks, on fixed probe images, epoch after epoch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_viz import tags
from lightning_viz.alerts import OnAlert
from lightning_viz.callbacks.class_view import ClassView, Target, panel_tiles
from lightning_viz.callbacks.layers import named_layers
from lightning_viz.callbacks.probe_base import Unsuited
from lightning_viz.functional import (
    colorize,
    grad_cam_and_logits,
    guided_backprop,
    normalize,
    normalize_signed,
    overlay,
    to_rgb,
    upsample,
)
from lightning_viz.functional._relu_rules import no_rule_for, ruleless_said
from lightning_viz.functional._validation import target_index
from lightning_viz.functional.gradcam import OutputTransform, default_gradcam_layer
from lightning_viz.functional.projection import ruleless_activations
from lightning_viz.probes import BatchToImages, Probes


class GradCAMLogger(ClassView):
    r"""Grad-CAM heatmaps on fixed probe images: where the network looks for its decision.

    At fit start (the untrained baseline) and every ``every_n_epochs`` at the end of a training
    epoch, one forward and one backward on the probes (model in eval mode for the pass, fp32,
    each submodule's train flag restored, no parameter ``.grad`` touched) give the Grad-CAM map of
    every layer (:func:`~lightning_viz.functional.grad_cam`), upsampled to the probe size,
    normalized per probe, colored and overlaid on the probe's display image. Runs on global rank
    0 only.

    Args:
        layers: names from ``model.named_modules()``; default the last layer before the
            classifier with a 4-D output of at least 7x7 (else the last larger than 1x1;
            adaptive pooling excluded), found by one forward of a probe: ``model.layer4`` of a
            ResNet at 224 pixels, ``model.layer2`` at 64 (where ``layer4`` is a 2x2 blob).
        target: the class each map explains: ``"label"`` (default when the probes have labels),
            ``"pred"`` (the predicted class; default without labels), or a class index.
        probes: a :class:`~lightning_viz.Probes`; default ``num_probes`` picked from the
            validation dataloader (shared with the other probe callbacks of the Trainer).
        num_probes: how many probes to pick when ``probes`` is None; default one per class
            (the first of each), at least 8 and at most 16.
        every_n_epochs: log every this many training epochs.
        forward_fn: how probe passes run the model, ``forward_fn(pl_module, images)``, when not
            ``pl_module(images)``: a GAN's discriminator
            (``lambda gan, x: gan.discriminator(x)``), a LightningModule without ``forward()``.
            Layers are still named from ``pl_module.named_modules()``.
        batch_to_images: where the probes picked from the data are in a batch that is not a
            tensor, an ``(images, labels, ...)`` sequence or a dict: ``batch_to_images(batch)``
            returns the (N, C, H, W) images or ``(images, labels)``; unused with ``probes=``.
        class_names: the names drawn on the images for class indices; default the
            datamodule's ``classes`` (or ``class_names``), else the probe dataset's ``classes``
            (torchvision datasets have it), else the indices.
        cmap: a matplotlib colormap name for the heatmap.
        alpha: heatmap opacity over the display image.
        guided: also log guided Grad-CAM (guided backprop times the upsampled map); costs one more
            forward and backward.
        output_transform: turns the model's output into (N, num_classes) scores; default
            :func:`~lightning_viz.functional.class_scores`: logits as they are, the first tensor
            of a tuple, a dict's ``"out"``/``"logits"``/only tensor, and for segmentation maps
            (N, K, H, W) each class's score summed over the pixels predicted as it. A model
            that returns an image the size of its input (an autoencoder) shows nothing with a
            notice unless you pass one.
        probability: how the scores become the probabilities in the captions and the text
            (and in occlusion, LIME and the faithfulness score): ``"softmax"`` (one class per
            image) or ``"sigmoid"`` (each class on its own: a multi-label model, or a
            single-logit binary classifier, trained with ``BCEWithLogitsLoss``); default
            sigmoid for probes picked from multi-hot targets (``Probes.multi_label``), else
            softmax.
        scores: the trust scores logged beside the maps: True for all, False for none, or
            names from ``"stability"`` (no extra cost), ``"sanity"`` (the Grad-CAM pass once
            more, with the upper half of the network re-initialized: under half a training
            step) and ``"faithfulness"`` (4 x 17 forwards of the probes per map: about
            3 training steps); default stability and sanity. The same argument, with the same
            keys under each view's tag, on every view that explains a class. Without a logger
            that takes images (a CSVLogger alone), a view renders only for scores given here:
            its default ones, of maps nobody sees, are not worth the render.
        on_alert: what to do when the visualization fails (see ``FilterMonitor``).
        strict: re-raise failures instead of turning them into alerts.
        budget: the share of training time all lightning-viz callbacks may take together (see
            :class:`~lightning_viz.callbacks.base.VizCallback`); past it, epochs are skipped.
            None (default): never skip.
        image_origin: where each image's first row is drawn: ``"upper"`` (default) at the top,
            as photos are stored; ``"lower"`` at the bottom, for images stored bottom-up, such as
            spectrograms with the lowest frequency in row 0 (matplotlib's ``origin``). Maps
            drawn over an image turn with it.

    Raises:
        ValueError: bad arguments (at construction); unknown layers, probes that do not fit the
            model, labels out of range, or ``target="label"`` without labels (at fit start).

    Logged keys:

    - ``gradcam/<layer>`` (image): a panel per probe, the probe (captioned with its true class)
      beside its overlay (captioned with the predicted class and its probability, or the explained
      class and the prediction where they differ), enlarged to at least 96 pixels, over a colour bar
      that names the class explained.
    - ``gradcam/<layer>/targets`` (text): per probe, the class explained, the predicted class and
      its probability.
    - ``gradcam/<layer>/guided`` (image, with ``guided=True``): the same panels with guided
      Grad-CAM (signed, mid-grey = 0).
    - ``stability/gradcam/<layer>`` (default): the mean rank correlation of each probe's map
      with the previous render's; the text says since which epoch it stays at or above 0.9
      ("stable since epoch N") or that the maps have not settled.
    - ``sanity/gradcam/<layer>`` and ``sanity/gradcam/<layer>/ssim`` (default): the mean rank
      correlation (and SSIM, on probes of at least 11 pixels) of each probe's map with the map
      of the same network with the upper half of its parametrized layers re-initialized (the
      model-parameter randomization test of Adebayo et al., run with the randomized tensors
      swapped in for one call: the model is not copied, and training is untouched, tested). At
      0.5 or above a note under the image and in the text says the maps do not depend on what
      the network learned.
    - ``faithfulness/gradcam/<layer>/deletion``, ``/insertion``, ``/deletion_random``
      (``scores`` with ``"faithfulness"``): the mean area under the probes' deletion and
      insertion curves (16 steps, pixels in the map's order set to 0), and of the deletion curve
      of a random order; a deletion no lower than the random order's gets a note (where
      deleting every pixel lowers the probability by 0.1 or more, a single output by a tenth
      of its value: else the curves judge nothing).
    - ``localization/gradcam/<layer>/pointing_game``, ``/energy_in_box`` (probes with
      ``boxes`` or ``masks``, at no cost): the share of maps whose peak lies in the probe's box
      (or mask), and the mean share of their positive mass inside it (over the maps that have
      any).
    - with ``guided``, the same scores of guided Grad-CAM's magnitudes (the strongest channel
      per pixel, as Adebayo et al. compare them) under ``<score>/gradcam/<layer>/guided``.
    - ``lightning_viz/overhead/<callback>`` and ``lightning_viz/overhead`` (every epoch's end,
      with the other lightning-viz callbacks): the share of training time spent in it, and in all.

    How to read it: warm colors mark where evidence for the target class sits. Early in training
    maps are diffuse or stick to borders; a net that learned the task lights up the object.
    A map on the background or on a watermark points at a shortcut in the data.

    Cost: per logged epoch one forward and one backward on the probes (two with ``guided``),
    as many again for ``"sanity"`` (plus re-initializing the upper half of the network; with
    the default scores 0.4 to 0.7 training steps in all on the digits net, vgg11 and resnet18),
    and 4 x 17 forwards of the probes per map for ``"faithfulness"``.

    Example::

        trainer = Trainer(callbacks=[GradCAMLogger(target="pred")])
    """

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        target: Target = None,
        probes: Probes | None = None,
        num_probes: int | None = None,
        every_n_epochs: int = 1,
        forward_fn: Callable[[pl.LightningModule, torch.Tensor], Any] | None = None,
        batch_to_images: BatchToImages | None = None,
        class_names: Sequence[str] | None = None,
        cmap: str = "jet",
        alpha: float = 0.5,
        guided: bool = False,
        output_transform: OutputTransform | None = None,
        probability: str | None = None,
        scores: bool | Sequence[str] | None = None,
        on_alert: OnAlert = "warn",
        strict: bool = False,
        budget: float | None = None,
        image_origin: str = "upper",
    ) -> None:
        super().__init__(
            layers=layers,
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
        self.guided = bool(guided)
        self._ruleless: list[str] = []  # activations guided backprop passes plain gradients
        self._layers: dict[str, nn.Module] = {}

    view = "Grad-CAM"
    default_scores = ("stability", "sanity")

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and self.layer_names is not None:
            self._layers = named_layers(pl_module, self.layer_names, type(self).__name__)

    @override
    def prepare(self, pl_module: pl.LightningModule, probes: Probes, output: Any) -> None:
        super().prepare(pl_module, probes, output)
        source = type(self).__name__
        self._check_named_layers(pl_module, probes, tokens=True)
        if not self._layers:
            try:
                name = default_gradcam_layer(
                    pl_module, probes.images[:1], self.probe_forward(pl_module)
                )
            except ValueError as error:
                raise Unsuited(f"{source}: {error}") from None
            self._layers = {name: pl_module.get_submodule(name)}
        if self.guided:
            forward = self.probe_forward(pl_module)
            self._ruleless = ruleless_activations(
                pl_module, probes.images[:1], None, "guided", forward
            )
            if self._ruleless:
                no_rule, them = no_rule_for(self._ruleless, "guided")
                rank_zero_warn(
                    f"lightning-viz: GradCAMLogger: {no_rule}: guided Grad-CAM passes plain "
                    f"gradients through {them}, a mix of guided backprop and gradient (each "
                    "guided image's legend says so)"
                )

    @property
    def _plain_gradients(self) -> str:
        """The guided legend's note of the activations plain gradients pass through."""
        return f" (plain gradients through {', '.join(self._ruleless)})" if self._ruleless else ""

    def _explain(
        self, pl_module: pl.LightningModule, probes: Probes, targets: torch.Tensor | int | None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
        """Each layer's Grad-CAM map, the class scores, and with ``guided`` each layer's guided
        Grad-CAM (N, C, H, W): guided backprop times the map upsampled to the probes."""
        forward = self.probe_forward(pl_module)
        cams, logits = grad_cam_and_logits(
            pl_module, probes.images, list(self._layers), targets, self._transform, forward
        )
        if not self.guided:
            return cams, logits, {}
        with ruleless_said():  # said once, at fit start (prepare)
            gradients = guided_backprop(pl_module, probes.images, targets, self._transform, forward)
        size = tuple(probes.images.shape[-2:])
        guided = {
            layer: gradients * normalize(upsample(cam, size))[:, None]
            for layer, cam in cams.items()
        }
        return cams, logits, guided

    @staticmethod
    def _rated_maps(
        cams: dict[str, torch.Tensor], guided: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The maps the scores rate: Grad-CAM's as they are, guided Grad-CAM's magnitudes (the
        strongest channel per pixel, as Adebayo et al. compare them)."""
        maps = {tags.tag(tags.GRADCAM, layer): cam for layer, cam in cams.items()}
        return maps | {
            tags.tag(tags.GRADCAM_GUIDED, layer): product.abs().amax(dim=1)
            for layer, product in guided.items()
        }

    @override
    def score_maps(
        self, pl_module: pl.LightningModule, probes: Probes, explained: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        cams, _, guided = self._explain(pl_module, probes, explained)
        return self._rated_maps(cams, guided)

    @override
    def visualize(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probes: Probes) -> None:
        targets = self._targets(pl_module, probes)
        cams, logits, guided = self._explain(pl_module, probes, targets)
        for layer, cam in cams.items():
            self._check_finite(cam, f"the Grad-CAM map of {layer!r}")
        *captions, table = self._predictions(probes, logits, targets)
        ratings = self._rate(
            trainer,
            pl_module,
            probes,
            self._rated_maps(cams, guided),
            target_index(targets, logits),
        )
        display = panel_tiles(probes.display)
        for layer, cam in cams.items():
            heat = normalize(upsample(cam, tuple(display.shape[-2:])))
            overlays = overlay(display, colorize(heat, self.cmap), self.alpha)
            evidence = f"{layer}: Grad-CAM evidence for the {self._explained_class(targets)}"
            tag = tags.tag(tags.GRADCAM, layer)
            self._log_panels(
                trainer, tag, display, overlays, captions, ("none", "most"), evidence,
                note=ratings[tag].note,
            )  # fmt: skip
            self.log_text(
                trainer,
                tags.tag(tags.GRADCAM_TARGETS, layer),
                self._rated_text(table, ratings[tag]),
            )
            if layer in guided:
                product = normalize_signed(guided[layer]).mean(dim=1, keepdim=True)
                tag = tags.tag(tags.GRADCAM_GUIDED, layer)
                self._log_panels(
                    trainer, tag, display, panel_tiles(to_rgb(product)), captions, ("-", "+"),
                    f"guided {evidence}{self._plain_gradients}", "gray", note=ratings[tag].note,
                )  # fmt: skip
