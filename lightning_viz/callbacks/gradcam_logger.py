"""GradCAMLogger: where the network looks, on fixed probe images, epoch after epoch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from typing_extensions import override

from lightning_viz import tags
from lightning_viz.alerts import OnAlert
from lightning_viz.callbacks.base import to_host
from lightning_viz.callbacks.class_view import ClassView, Target
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
from lightning_viz.functional._validation import check_choices
from lightning_viz.functional.gradcam import OutputTransform, default_gradcam_layer
from lightning_viz.functional.images import readable
from lightning_viz.functional.scores import (
    INDEPENDENT,
    deletion_insertion,
    energy_in_box,
    pointing_game,
    random_maps,
    randomized_forward,
    rank_correlation,
    upper_half,
)
from lightning_viz.probes import Probes

SCORES = ("stability", "sanity", "faithfulness")
"""The trust scores GradCAMLogger can log beside its maps (``scores=``)."""
DEFAULT_SCORES = ("stability",)
"""The scores logged by default: stability costs nothing. Sanity costs one more Grad-CAM pass
and re-initializing the upper half of the network at each render (vgg16's classifier alone is
120 million weights), faithfulness 4 x 17 forwards of the probes per layer: opt-in until their
cost is measured against the overhead promise."""
STABLE = 0.9
"""A layer's maps count as settled while their mean rank correlation with the previous render's
stays at or above this."""
SCORE_KEYS = ("stability", "sanity", "deletion", "insertion", "random", "pointing", "energy")
"""The per-probe values :meth:`GradCAMLogger._measure` may give for a layer."""


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
        scores: the trust scores logged beside the maps: True for all, False for none, or
            names from ``"stability"`` (no extra cost), ``"sanity"`` (one more Grad-CAM pass)
            and ``"faithfulness"`` (about 70 forwards of the probes per layer); default
            ``"stability"`` only.
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
    - ``stability/gradcam/<layer>`` (``scores``): the mean rank correlation of each probe's map
      with the previous render's; the text says since which epoch it stays at or above 0.9
      ("stable since epoch N") or that the maps have not settled.
    - ``sanity/gradcam/<layer>`` (``scores``): the mean rank correlation of each probe's map
      with the map of the same network with the upper half of its parametrized layers
      re-initialized (the model-parameter randomization test, run with the randomized tensors
      swapped in for one call: the model is not copied, and training is untouched, tested). At
      0.5 or above a note under the image and in the text says the maps do not depend on what
      the network learned.
    - ``faithfulness/gradcam/<layer>/deletion``, ``/insertion``, ``/deletion_random``
      (``scores`` with ``"faithfulness"``): the mean area under the probes' deletion and
      insertion curves (16 steps, pixels in the map's order set to 0), and of the deletion curve
      of a random order; a deletion no lower than the random order's gets a note.
    - ``localization/gradcam/<layer>/pointing_game``, ``/energy_in_box`` (probes with
      ``boxes``, at no cost): the share of maps whose peak lies in the probe's box, and the mean
      share of their positive mass inside it.
    - ``lightning_viz/overhead/<callback>`` and ``lightning_viz/overhead`` (every epoch's end,
      with the other lightning-viz callbacks): the share of training time spent in it, and in all.

    How to read it: warm colors mark where evidence for the target class sits. Early in training
    maps are diffuse or stick to borders; a net that learned the task lights up the object.
    A map on the background or on a watermark points at a shortcut in the data.

    Cost: per logged epoch one forward and one backward on the probes (two with ``guided``),
    one more of each for ``"sanity"``, and 4 x 17 forwards of the probes per layer for
    ``"faithfulness"``.

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
        class_names: Sequence[str] | None = None,
        cmap: str = "jet",
        alpha: float = 0.5,
        guided: bool = False,
        output_transform: OutputTransform | None = None,
        scores: bool | Sequence[str] | None = None,
        on_alert: OnAlert = "warn",
        strict: bool = False,
        budget: float | None = None,
    ) -> None:
        super().__init__(
            layers=layers,
            target=target,
            probes=probes,
            num_probes=num_probes,
            every_n_epochs=every_n_epochs,
            forward_fn=forward_fn,
            class_names=class_names,
            cmap=cmap,
            alpha=alpha,
            output_transform=output_transform,
            on_alert=on_alert,
            strict=strict,
            budget=budget,
        )
        self.guided = bool(guided)
        self.scores = check_choices("scores", scores, SCORES, DEFAULT_SCORES)
        self._layers: dict[str, nn.Module] = {}
        self.previous_maps: dict[str, torch.Tensor] = {}
        self.stable_since: dict[str, int | None] = {}

    view = "Grad-CAM"

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

    @override
    def visualize(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probes: Probes) -> None:
        targets = self._targets(probes)
        forward = self.probe_forward(pl_module)
        maps, logits = grad_cam_and_logits(
            pl_module, probes.images, list(self._layers), targets, self._transform, forward
        )
        guided = (
            guided_backprop(pl_module, probes.images, targets, self._transform, forward)
            if self.guided
            else None
        )
        *captions, table = self._predictions(probes, logits, targets)
        for layer, cam in maps.items():
            self._check_finite(cam, f"the Grad-CAM map of {layer!r}")
        explained = targets if targets is not None else logits.argmax(dim=1)
        host = to_host(self._measure(pl_module, probes, maps, explained, forward))
        notes, table = self._log_scores(trainer, host, list(maps), table)
        display = readable(probes.display)
        for layer, cam in maps.items():
            heat = normalize(upsample(cam, tuple(display.shape[-2:])))
            overlays = overlay(display, colorize(heat, self.cmap), self.alpha)
            evidence = f"{layer}: Grad-CAM evidence for the {self._explained_class(targets)}"
            tag = tags.tag(tags.GRADCAM, layer)
            self._log_panels(
                trainer, tag, display, overlays, captions, ("none", "most"), evidence,
                note=notes[layer],
            )  # fmt: skip
            if guided is not None:
                small_heat = normalize(upsample(cam, tuple(probes.images.shape[-2:])))
                product = normalize_signed(guided * small_heat[:, None]).mean(dim=1, keepdim=True)
                guided_tiles = readable(to_rgb(product))
                tag = tags.tag(tags.GRADCAM_GUIDED, layer)
                title = f"guided {evidence}"
                self._log_panels(
                    trainer, tag, display, guided_tiles, captions, ("-", "+"), title, "gray"
                )
        for layer in maps:
            self.log_text(trainer, tags.tag(tags.GRADCAM_TARGETS, layer), table[layer])

    # ----------------------------------------------------------------------------- scores
    def _measure(
        self,
        pl_module: pl.LightningModule,
        probes: Probes,
        maps: dict[str, torch.Tensor],
        explained: torch.Tensor,
        forward: Any,
    ) -> dict[str, torch.Tensor]:
        """The per-probe scores of each layer's maps, on the device, keyed ``layer|score``, and
        the maps themselves (``layer|maps``, kept for the next render's stability)."""
        found = {f"{layer}|maps": cam for layer, cam in maps.items()}
        if "stability" in self.scores:
            for layer, cam in maps.items():
                previous = self.previous_maps.get(layer)
                if previous is not None and previous.shape == cam.shape:
                    found[f"{layer}|stability"] = rank_correlation(cam, previous.to(cam.device))
        if "sanity" in self.scores:
            randomized = randomized_forward(
                pl_module, modules=upper_half(pl_module), forward=forward
            )
            random_maps_, _ = grad_cam_and_logits(
                pl_module, probes.images, list(maps), explained, self._transform, randomized
            )
            for layer, cam in maps.items():
                found[f"{layer}|sanity"] = rank_correlation(cam, random_maps_[layer])
        size = tuple(probes.images.shape[-2:])
        wanted = probes.boxes is not None or "faithfulness" in self.scores
        heats = {layer: upsample(cam, size) for layer, cam in maps.items()} if wanted else {}
        if probes.boxes is not None:  # free: no forward
            for layer, heat in heats.items():
                found[f"{layer}|pointing"] = pointing_game(heat, probes.boxes)
                found[f"{layer}|energy"] = energy_in_box(heat, probes.boxes)
        if "faithfulness" in self.scores:
            for layer, heat in heats.items():
                for key, order in (("deletion", heat), ("random", random_maps(heat))):
                    curves = deletion_insertion(
                        pl_module, probes.images, order, explained, forward=forward,
                        output_transform=self._transform,
                    )  # fmt: skip
                    found[f"{layer}|{key}"] = curves.deletion_auc
                    if key == "deletion":
                        found[f"{layer}|insertion"] = curves.insertion_auc
        return found

    def _log_scores(
        self, trainer: pl.Trainer, host: dict[str, torch.Tensor], layers: list[str], table: str
    ) -> tuple[dict[str, str | None], dict[str, str]]:
        """Log each layer's mean scores; the warning under its image (or None) and its text
        table, with the per-probe scores and whether the maps have settled above it."""
        metrics, notes, tables = {}, {}, {}
        for layer in layers:
            self.previous_maps[layer] = host[f"{layer}|maps"].clone()
            per_probe = {
                key: host[f"{layer}|{key}"] for key in SCORE_KEYS if f"{layer}|{key}" in host
            }
            mean = {key: values.mean().item() for key, values in per_probe.items()}
            metrics |= self._score_metrics(tags.tag(tags.GRADCAM, layer), mean)
            lines = self._score_lines(trainer, layer, mean)
            notes[layer] = " ".join(lines[1:]) or None
            columns = {
                name: [f"{v:.2f}" for v in per_probe[key].tolist()]
                for key, name in (
                    ("stability", "stability"),
                    ("sanity", "sanity"),
                    ("deletion", "deletion AUC"),
                    ("random", "random order's"),
                    ("pointing", "peak in box"),
                    ("energy", "energy in box"),
                )
                if key in per_probe
            }
            text = self._with_columns(table, columns) if columns else table
            said = "  \n".join(line for line in lines if line)
            tables[layer] = f"{said}\n\n{text}" if said else text
        if metrics:
            self.log_scalars(trainer, metrics)
        return notes, tables

    @staticmethod
    def _score_metrics(method: str, mean: dict[str, float]) -> dict[str, float]:
        metrics = {}
        if "stability" in mean:
            metrics[tags.tag(tags.STABILITY, method)] = mean["stability"]
        if "sanity" in mean:
            metrics[tags.tag(tags.SANITY, method)] = mean["sanity"]
        for key, name in (("deletion", "deletion"), ("insertion", "insertion")):
            if key in mean:
                metrics[tags.tag(tags.FAITHFULNESS, method, name)] = mean[key]
        if "random" in mean:
            metrics[tags.tag(tags.FAITHFULNESS, method, "deletion_random")] = mean["random"]
        for key, name in (("pointing", "pointing_game"), ("energy", "energy_in_box")):
            if key in mean:
                metrics[tags.tag(tags.LOCALIZATION, method, name)] = mean[key]
        return metrics

    def _score_lines(self, trainer: pl.Trainer, layer: str, mean: dict[str, float]) -> list[str]:
        """Whether the maps have settled (first, maybe empty), then the warnings."""
        lines = [""]
        if "stability" in mean:
            settled = mean["stability"] >= STABLE
            since = self.stable_since.get(layer)
            self.stable_since[layer] = (
                (trainer.current_epoch if since is None else since) if settled else None
            )
            lines[0] = (
                f"stable since epoch {self.stable_since[layer]} (rank correlation with the "
                f"previous render {mean['stability']:.2f} >= {STABLE})"
                if settled
                else f"not settled: rank correlation with the previous render "
                f"{mean['stability']:.2f} < {STABLE}"
            )
        if mean.get("sanity", 0.0) >= INDEPENDENT:
            lines.append(
                "The maps of the network with its upper half re-initialized are alike (rank "
                f"correlation {mean['sanity']:.2f} >= {INDEPENDENT}): these maps do not depend "
                "on what the network learned."
            )
        if "deletion" in mean and mean["deletion"] >= mean["random"]:
            lines.append(
                "Deleting pixels in the maps' order lowers the class's probability no faster "
                f"than a random order (deletion AUC {mean['deletion']:.2f} vs "
                f"{mean['random']:.2f}): the maps are not faithful to the model."
            )
        return lines

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "previous_maps": dict(self.previous_maps),
            "stable_since": dict(self.stable_since),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.previous_maps = dict(state_dict.get("previous_maps", {}))
        self.stable_since = dict(state_dict.get("stable_since", {}))

    @override
    def reset_state(self) -> None:
        super().reset_state()
        self.previous_maps, self.stable_since = {}, {}
