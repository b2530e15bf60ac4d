"""GradCAMLogger: where the network looks, on fixed probe images, epoch after epoch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import nn
from typing_extensions import override

from lightning_viz import tags
from lightning_viz.alerts import OnAlert
from lightning_viz.callbacks.layers import named_layers
from lightning_viz.callbacks.probe_base import ProbeCallback, Unsuited
from lightning_viz.functional import (
    class_scores,
    colorize,
    grad_cam_and_logits,
    grid,
    guided_backprop,
    normalize,
    normalize_signed,
    overlay,
    to_rgb,
    upsample,
)
from lightning_viz.functional._validation import check_fraction, check_logits
from lightning_viz.functional.captions import captioned_rows, class_name, color_bar, stack_rows
from lightning_viz.functional.gradcam import OutputTransform, default_gradcam_layer
from lightning_viz.functional.images import colormap_table, panels_per_row, readable
from lightning_viz.probes import Probes


class GradCAMLogger(ProbeCallback):
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
        on_alert: what to do when the visualization fails (see ``FilterMonitor``).
        strict: re-raise failures instead of turning them into alerts.
        budget: the share of training time all lightning-viz callbacks may take together (see
            :class:`~lightning_viz.callbacks.base.VizCallback`); past it, epochs are skipped.
            None (default): never skip.

    Raises:
        ValueError: bad arguments (at construction); unknown layers, probes that do not fit the
            model, labels out of range, or ``target="label"`` without labels (at fit start).

    Logged keys:

    - ``gradcam/<layer>`` (image): a panel per probe, the probe (captioned with its true class)
      beside its overlay (captioned with the predicted class and its probability), enlarged to
      at least 96 pixels, over a colour bar that names the class explained.
    - ``gradcam/<layer>/targets`` (text): per probe, the class explained, the predicted class and
      its probability.
    - ``gradcam/<layer>/guided`` (image, with ``guided=True``): the same panels with guided
      Grad-CAM (signed, mid-grey = 0).
    - ``lightning_viz/overhead/<callback>`` and ``lightning_viz/overhead`` (every epoch's end,
      with the other lightning-viz callbacks): the share of training time spent in it, and in all.

    How to read it: warm colors mark where evidence for the target class sits. Early in training
    maps are diffuse or stick to borders; a net that learned the task lights up the object.
    A map on the background or on a watermark points at a shortcut in the data.

    Cost: per logged epoch one forward and one backward on the probes (two with ``guided``).

    Example::

        trainer = Trainer(callbacks=[GradCAMLogger(target="pred")])
    """

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        target: Literal["label", "pred"] | int | None = None,
        probes: Probes | None = None,
        num_probes: int | None = None,
        every_n_epochs: int = 1,
        forward_fn: Callable[[pl.LightningModule, torch.Tensor], Any] | None = None,
        class_names: Sequence[str] | None = None,
        cmap: str = "jet",
        alpha: float = 0.5,
        guided: bool = False,
        output_transform: OutputTransform | None = None,
        on_alert: OnAlert = "warn",
        strict: bool = False,
        budget: float | None = None,
    ) -> None:
        super().__init__(
            layers=layers,
            probes=probes,
            num_probes=num_probes,
            every_n_epochs=every_n_epochs,
            forward_fn=forward_fn,
            class_names=class_names,
            on_alert=on_alert,
            strict=strict,
            budget=budget,
        )
        if not (target in (None, "label", "pred") or (isinstance(target, int) and target >= 0)):
            raise ValueError(
                f"`target` must be 'label', 'pred', a class index >= 0 or None, got {target!r}"
            )
        self.target = target
        colormap_table(cmap)
        self.cmap = cmap
        self.alpha = check_fraction("alpha", alpha)
        self.guided = bool(guided)
        if output_transform is not None and not callable(output_transform):
            raise ValueError(
                f"`output_transform` must be None or a callable, got {output_transform!r}"
            )
        self.output_transform = output_transform
        self._transform: OutputTransform = output_transform or class_scores
        self._layers: dict[str, nn.Module] = {}
        self._labels_are_classes = False

    view = "Grad-CAM"

    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {"layers": self.layer_names, "target": self.target}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and self.layer_names is not None:
            self._layers = named_layers(pl_module, self.layer_names, type(self).__name__)

    @override
    def prepare(self, pl_module: pl.LightningModule, probes: Probes, output: Any) -> None:
        source = type(self).__name__
        explicit = self.output_transform is not None
        same_as_input = tuple(probes.images.shape[1:])
        if not explicit and isinstance(output, torch.Tensor) and output.shape[1:] == same_as_input:
            raise Unsuited(
                f"{source}: the model returns an image the size of its input, {same_as_input} "
                "(a reconstruction?), not class scores, so there is nothing to explain; pass "
                "output_transform= to say which score to explain."
            )
        try:
            scores = check_logits(self._transform(output), 1)
        except ValueError as error:
            if explicit:
                raise ValueError(f"{source}: output_transform: {error}") from None
            raise Unsuited(
                f"{source}: {error}; pass output_transform= to turn the model's output into "
                "(N, num_classes) scores"
            ) from None
        classes = scores.shape[1]
        if isinstance(self.target, int) and self.target >= classes:
            raise ValueError(
                f"{source}: `target`={self.target} is not a class of a model with {classes} "
                f"outputs; give an index in [0, {classes})"
            )
        if self.target == "label" and probes.labels is None:
            raise ValueError(
                f"{source}: target='label' needs probes with labels; pass "
                "Probes(images, labels) or target='pred'"
            )
        labels = probes.labels
        self._labels_are_classes = labels is not None and bool(
            labels.min() >= 0 and labels.max() < classes
        )
        explicit = self.target == "label" or self.user_probes is not None
        if labels is not None and not self._labels_are_classes and explicit:
            raise ValueError(
                f"{source}: probe labels must lie in [0, {classes}) for a model with {classes} "
                f"outputs, to explain each probe's label; got labels from "
                f"{int(labels.min())} to {int(labels.max())}"
            )
        self._check_named_layers(pl_module, probes, tokens=True)
        if not self._layers:
            try:
                name = default_gradcam_layer(
                    pl_module, probes.images[:1], self.probe_forward(pl_module)
                )
            except ValueError as error:
                raise Unsuited(f"{source}: {error}") from None
            self._layers = {name: pl_module.get_submodule(name)}

    def _targets(self, probes: Probes) -> torch.Tensor | int | None:
        target = self.target
        if target is None:
            target = "label" if self._labels_are_classes else "pred"
        if target == "label":
            return probes.labels
        return None if target == "pred" else target

    @override
    def visualize(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probes: Probes) -> None:
        targets = self._targets(probes)
        forward = self.probe_forward(pl_module)
        maps, logits = grad_cam_and_logits(
            pl_module, probes.images, list(self._layers), targets, self._transform, forward
        )
        n = len(probes)
        explained = logits.argmax(dim=1) if targets is None else torch.as_tensor(targets).expand(n)
        probabilities = logits.softmax(dim=1)
        confidence, predicted = probabilities.max(dim=1)
        guided = (
            guided_backprop(pl_module, probes.images, targets, self._transform, forward)
            if self.guided
            else None
        )
        names = self.class_names
        predicted_list, confidence_list = predicted.tolist(), confidence.tolist()
        image_captions = [self.probe_caption(probes, i) for i in range(n)]
        map_captions = [
            f"pred {class_name(p, names)} {c:.0%}"
            for p, c in zip(predicted_list, confidence_list, strict=True)
        ]
        display = readable(probes.display)
        for layer, cam in maps.items():
            if not cam.isfinite().all():
                raise ValueError(
                    f"the Grad-CAM map of {layer!r} has NaN or Inf: the probes, the model's "
                    "outputs or its weights are not finite"
                )
            heat = normalize(upsample(cam, tuple(display.shape[-2:])))
            overlays = overlay(display, colorize(heat, self.cmap), self.alpha)
            evidence = f"{layer}: Grad-CAM evidence for the {self._explained_class(targets)}"
            image = self._panels(display, overlays, image_captions, map_captions)
            legend = color_bar(image.shape[-1], self.cmap, "none", "most", evidence, image.device)
            self.log_image(trainer, tags.tag(tags.GRADCAM, layer), stack_rows(image, legend))
            if guided is not None:
                small_heat = normalize(upsample(cam, tuple(probes.images.shape[-2:])))
                product = normalize_signed(guided * small_heat[:, None]).mean(dim=1, keepdim=True)
                guided_tiles = readable(to_rgb(product))
                image = self._panels(display, guided_tiles, image_captions, map_captions)
                legend = color_bar(
                    image.shape[-1], "gray", "-", "+", f"guided {evidence}", image.device
                )
                self.log_image(
                    trainer, tags.tag(tags.GRADCAM_GUIDED, layer), stack_rows(image, legend)
                )
        table = ["| probe | explains class | predicted | probability |", "|---|---|---|---|"]
        rows = zip(explained.tolist(), predicted_list, confidence_list, strict=True)
        table += [
            f"| {i} | {class_name(t, names)} | {class_name(p, names)} | {c:.2f} |"
            for i, (t, p, c) in enumerate(rows)
        ]
        for layer in maps:
            self.log_text(trainer, tags.tag(tags.GRADCAM_TARGETS, layer), "\n".join(table))

    def _explained_class(self, targets: torch.Tensor | int | None) -> str:
        if targets is None:
            return "predicted class"
        if isinstance(targets, int):
            return f"class {class_name(targets, self.class_names)}"
        return "true class"

    @staticmethod
    def _panels(
        display: torch.Tensor,
        maps: torch.Tensor,
        image_captions: list[str],
        map_captions: list[str],
    ) -> torch.Tensor:
        """One captioned panel per probe (its image, then its map), tiled to a readable grid."""
        captions = [list(pair) for pair in zip(image_captions, map_captions, strict=True)]
        panels = captioned_rows(torch.stack([display, maps], dim=1), captions)
        per_row = panels_per_row(len(panels), *panels.shape[-2:])
        return grid(panels, nrow=per_row, padding=6)
