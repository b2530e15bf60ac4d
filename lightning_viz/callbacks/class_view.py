"""What the probe views that explain a class score share: the target, the scores, the captions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from typing_extensions import override

from lightning_viz.alerts import OnAlert
from lightning_viz.callbacks.probe_base import ProbeCallback, Unsuited
from lightning_viz.functional import class_scores, grid
from lightning_viz.functional._validation import check_fraction, check_logits
from lightning_viz.functional.captions import (
    captioned_rows,
    class_name,
    color_bar,
    footnote,
    stack_rows,
)
from lightning_viz.functional.gradcam import OutputTransform
from lightning_viz.functional.images import colormap_table, panels_per_row
from lightning_viz.probes import Probes

Target = Literal["label", "pred"] | int | None


class ClassView(ProbeCallback):
    """Base of the probe callbacks that explain one class score per probe (Grad-CAM, CAM,
    occlusion, saliency, LIME): checks at fit start that the model gives class scores and that
    the target fits them, picks the class each probe explains, and captions panels with the
    prediction."""

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
        if output_transform is not None and not callable(output_transform):
            raise ValueError(
                f"`output_transform` must be None or a callable, got {output_transform!r}"
            )
        self.output_transform = output_transform
        self._transform: OutputTransform = output_transform or class_scores
        self._labels_are_classes = False

    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {"layers": self.layer_names, "target": self.target}

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

    def _targets(self, probes: Probes) -> torch.Tensor | int | None:
        target = self.target
        if target is None:
            target = "label" if self._labels_are_classes else "pred"
        if target == "label":
            return probes.labels
        return None if target == "pred" else target

    def _explained_class(self, targets: torch.Tensor | int | None) -> str:
        if targets is None:
            return "predicted class"
        if isinstance(targets, int):
            return f"class {class_name(targets, self.class_names)}"
        return "true class"

    def _predictions(
        self, probes: Probes, logits: torch.Tensor, targets: torch.Tensor | int | None
    ) -> tuple[list[str], list[str], str]:
        """Each probe's caption, its map's caption (predicted class and probability), and the
        markdown table of what each probe explains."""
        n = len(probes)
        explained = logits.argmax(dim=1) if targets is None else torch.as_tensor(targets).expand(n)
        confidence, predicted = logits.softmax(dim=1).max(dim=1)
        names = self.class_names
        predicted_list, confidence_list = predicted.tolist(), confidence.tolist()
        image_captions = [self.probe_caption(probes, i) for i in range(n)]
        map_captions = [
            f"pred {class_name(p, names)} {c:.0%}"
            for p, c in zip(predicted_list, confidence_list, strict=True)
        ]
        table = ["| probe | explains class | predicted | probability |", "|---|---|---|---|"]
        rows = zip(explained.tolist(), predicted_list, confidence_list, strict=True)
        table += [
            f"| {i} | {class_name(t, names)} | {class_name(p, names)} | {c:.2f} |"
            for i, (t, p, c) in enumerate(rows)
        ]
        return image_captions, map_captions, "\n".join(table)

    def _class_logits(self, pl_module: pl.LightningModule, probes: Probes) -> torch.Tensor:
        """The probes' (N, num_classes) float scores, from one forward without gradients."""
        with torch.no_grad():
            output = (self.probe_forward(pl_module) or pl_module)(probes.images)
        return self._transform(output).float()

    @staticmethod
    def _check_finite(maps: torch.Tensor, what: str) -> None:
        """Fail (as an alert) when a view's maps are not finite: nothing to show."""
        if not maps.isfinite().all():
            raise ValueError(
                f"{what} has NaN or Inf: the probes, the model's outputs or its weights are not "
                "finite"
            )

    def _log_panels(
        self,
        trainer: pl.Trainer,
        tag: str,
        display: torch.Tensor,
        maps: torch.Tensor,
        captions: tuple[list[str], list[str]],
        ends: tuple[str, str],
        title: str,
        cmap: str | None = None,
        note: str | None = None,
    ) -> None:
        """Log the probes beside their maps (:meth:`_panels`) over a colour bar of ``cmap``
        (default the callback's) from ``ends[0]`` to ``ends[1]``, titled ``title``, and a
        ``note`` below when there is one (a warning about what the maps show)."""
        image = self._panels(display, maps, *captions)
        low, high = ends
        legend = color_bar(image.shape[-1], cmap or self.cmap, low, high, title, image.device)
        rows = [image, legend]
        if note:
            rows.append(footnote(image.shape[-1], note, image.device, image.dtype))
        self.log_image(trainer, tag, stack_rows(*rows))

    @staticmethod
    def _with_columns(table: str, columns: dict[str, list[str]]) -> str:
        """The markdown ``table`` with ``columns`` (a header and one cell per row) appended."""
        lines = table.splitlines()
        lines[0] += "".join(f" {header} |" for header in columns)
        lines[1] += "---|" * len(columns)
        cells = zip(*columns.values(), strict=True)
        lines[2:] = [
            line + "".join(f" {cell} |" for cell in row)
            for line, row in zip(lines[2:], cells, strict=True)
        ]
        return "\n".join(lines)

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
