"""What the probe views that explain a class score share: the target, the captions, and the trust
scores logged beside the maps."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import pytorch_lightning as pl
import torch
from typing_extensions import override

from lightning_viz import tags
from lightning_viz.alerts import OnAlert
from lightning_viz.callbacks.base import to_host
from lightning_viz.callbacks.probe_base import ProbeCallback, Unsuited
from lightning_viz.functional import class_scores, grid, upsample
from lightning_viz.functional._validation import (
    all_finite,
    check_choice,
    check_choices,
    check_fraction,
    check_logits,
    not_finite_error,
    target_index,
)
from lightning_viz.functional.captions import (
    captioned_blocks,
    captioned_rows,
    class_name,
    color_bar,
    fits,
    footnote,
    percent,
    stack_rows,
    with_name,
)
from lightning_viz.functional.gradcam import (
    PROBABILITIES,
    OutputTransform,
    class_maps,
    pixel_shares,
    probabilities_of,
    reconstructs,
    segmented_classes,
)
from lightning_viz.functional.images import (
    LEGIBLE_WIDTH,
    PANEL_TILE,
    colormap_table,
    is_wide,
    outline,
    panels_per_row,
    readable,
    wide_readable,
)
from lightning_viz.functional.scores import (
    INDEPENDENT,
    SSIM_SIDE,
    STABLE,
    constant_maps,
    deletion_insertion,
    energy_in_box,
    map_similarity,
    map_structural_similarity,
    pointing_game,
    random_maps,
    randomized_call,
    region_masks,
    upper_half,
)
from lightning_viz.probes import BatchToImages, Probes

Target = Literal["label", "pred"] | int | None


def panel_tiles(images: torch.Tensor) -> torch.Tensor:
    """The probes' display images, or maps of their size, enlarged for their panels: as
    :func:`readable` does, but no larger than two panels side by side allow (:data:`PANEL_TILE`;
    28-pixel probes at 84 pixels, not 112, which left one probe per row); wide ones as wide as
    the card allows (:func:`wide_readable`: their panels stack the map under the image). The
    maps drawn over the images go through it too: at 112 pixels over 84-pixel images, saliency
    and LIME failed."""
    return wide_readable(images) if is_wide(images) else readable(images, largest=PANEL_TILE)


def probability_text(value: float) -> str:
    """A probability in a text table: two decimals, two significant digits below 0.01 (a
    1000-class model's 0.001 read 0.00)."""
    return f"{value:.2f}" if value >= 0.01 else f"{value:.2g}"


def prediction_caption(
    name: str,
    value: float,
    width: int,
    segmented: bool = False,
    predicted: str | None = None,
    labelled: bool = False,
    independent: bool = False,
    names: Sequence[str] = (),
) -> str:
    """A map's caption on a tile ``width`` pixels wide: ``pred <class> <probability>`` when the
    map explains the predicted class ``name``; ``for <class> <probability>, pred <predicted>``
    when it explains another (a true class the model gets wrong: under "pred <predicted>" alone,
    the map read as evidence for the prediction); ``<class> on <share>`` of the pixels for a
    ``segmented`` class. Where the whole would not fit, the probability goes first (the text
    table gives the prediction's), then, for a class that is the probe's label
    (``labelled``: its own caption names it), the class, as ``✗ pred <predicted>`` (a wrong
    prediction); a class name that still does not fit is shortened, told apart from the other
    ``names`` (:func:`~lightning_viz.functional.captions.with_name`), never dropped ("pred
    temple 93%" read "pred temple …" on the demo's 96-pixel tiles, and a wrong prediction hid
    behind "for normal"; "✗ pred flowe…" was any of the flower's four quadrants). Classes read
    each through its own sigmoid (``independent``, a multi-label model's) have no one
    prediction: ``<class> <its probability>``, with ``✗`` before a
    probe's label the model gives under 50% (a correct "even" read "✗ pred even" beside a
    probe labelled "has loop")."""
    if independent:
        missed = "✗ " if labelled and value < 0.5 else ""
        candidates = [f"{missed}{name} {percent(value)}"]
        template, shortened = f"{missed}{{}}", name
    elif segmented:
        candidates, (template, shortened) = [f"{name} on {percent(value)}"], ("{}", name)
    elif predicted is None:
        candidates, (template, shortened) = [f"pred {name} {percent(value)}"], ("pred {}", name)
    else:
        candidates = [
            f"for {name} {percent(value)}, pred {predicted}",
            f"for {name}, pred {predicted}",
        ]
        template, shortened = ("✗ pred {}", predicted) if labelled else ("for {}", name)
    fitting = next((text for text in candidates if fits(text, width)), None)
    return fitting or with_name(template, shortened, width, names)


SCORES = ("stability", "sanity", "faithfulness")
"""The trust scores a class-explaining view can log beside its maps (``scores=``)."""
DEFAULT_SCORES = ("stability",)
"""The scores a view logs by default: stability costs nothing. Sanity repeats the view's
explanation on the network with its upper half re-initialized (drawn anew at each render), so it
is on by default only where that explanation is cheap (Grad-CAM, CAM: measured at half a
training step or less, ``benchmarks/trust_scores.py``); faithfulness costs 4 x 17 forwards of
the probes per map (about 3 training steps): opt-in."""
REGION_NOTE = (
    "Yellow outline: the probe's box or mask (the dark line inside it runs along its border), "
    "which the localization scores (peak and energy in region) read."
)
FAINT_BELOW = 0.01
"""The least scale of the maps in probability units (occlusion's drops, LIME's weights): a map
whose probability moves by less anywhere is drawn faint. Each scaled to its own largest, a
probe predicted at 1.00 whose largest drop was under 0.0005 was drawn as deep red as one whose
class hung on the patch."""
RESPONDS = 0.1
"""The deletion test judges a map only where what it explains falls by at least this when every
pixel is deleted (the class's probability; a single output's value by this share of its
start): an untrained network's flat curves rank nothing, whatever the map."""
COLUMNS = {
    "stability": "stability",
    "sanity": "sanity",
    "ssim": "sanity SSIM",
    "deletion": "deletion AUC",
    "insertion": "insertion AUC",
    "random": "random-order deletion AUC",
    "pointing": "peak in region",
    "energy": "energy in region",
}
"""The per-probe scores a view may measure for a map, and their text table's column headers."""


class Rating(NamedTuple):
    """What the scores of one view's maps say, for its image and its text."""

    note: str | None
    """The warnings to write under the image, if any."""
    summary: str
    """Whether the maps have settled, and the warnings: the lines above the text table."""
    columns: dict[str, list[str]]
    """Per-probe scores, a column per score for the text table."""


class ClassView(ProbeCallback):
    """Base of the probe callbacks that explain one class score per probe (Grad-CAM, CAM,
    occlusion, saliency, LIME): checks at fit start that the model gives class scores and that
    the target fits them, picks the class each probe explains, captions panels with the
    prediction, and rates the maps with the trust scores (``scores=``, :meth:`_rate`): each
    view gives its maps to rate with :meth:`score_maps`."""

    default_scores: tuple[str, ...] = DEFAULT_SCORES
    """What ``scores=None`` means for the view."""

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
        self.probability = (
            None if probability is None else check_choice("probability", probability, PROBABILITIES)
        )
        self._probability = self.probability or "softmax"  # for multi-hot probes, sigmoid
        self._transform: OutputTransform = output_transform or class_scores
        self._labels_are_classes = False
        self._outputs_class_maps = False
        self._single_output = False  # a regression or a single logit: no class to name
        self._pixel_shares: torch.Tensor | None = None
        self._segmented_pred = False  # this render explains segmented_classes
        self.scores = check_choices("scores", scores, SCORES, self.default_scores)
        self._scores_asked = scores is not None
        self.previous_maps: dict[str, torch.Tensor] = {}
        self.stable_since: dict[str, int | None] = {}

    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {"layers": self.layer_names, "target": self.target}

    @override
    def logs_scalars(self) -> bool:
        """Scores asked for (``scores=``): the default stability alone, of maps no logger
        shows, cost a user's CSV-only run 86% of its training time."""
        return bool(self.scores) and self._scores_asked

    @override
    def prepare(self, pl_module: pl.LightningModule, probes: Probes, output: Any) -> None:
        source = type(self).__name__
        self._probability = self.probability or ("sigmoid" if probes.multi_label else "softmax")
        explicit = self.output_transform is not None
        if not explicit and reconstructs(output, probes.images):
            raise Unsuited(
                f"{source}: the model returns an image the size of its input, "
                f"{tuple(probes.images.shape[1:])} "
                "(a reconstruction?), not class scores, so there is nothing to explain; pass "
                "output_transform= to say which score to explain."
            )
        self._outputs_class_maps = not explicit and class_maps(output) is not None
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
        self._single_output = classes == 1
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
        if self._single_output:  # one output to explain, whatever the labels are
            if self.target == "label":
                raise ValueError(
                    f"{source}: target='label' needs a score per class, and the model has one "
                    "output; leave target unset to explain that output"
                )
            self._labels_are_classes = False
            return
        labels = probes.labels
        if (
            labels is None
            and self.target is None
            and self.user_probes is None
            and not explicit
            and not self._outputs_class_maps
            and not self.class_names
        ):
            raise Unsuited(
                f"{source}: the batches its probes came from hold no labels, and the model's "
                f"{classes} outputs no class names: they may be no class scores (an embedding, a "
                "contrastive projection), whose highest it would explain as a predicted class. "
                "For a classifier, pass class_names= (to default_callbacks or each class view), "
                "target='pred', or batch_to_images= returning (images, labels); for another "
                "model, forward_fn= returning the one score to explain (e.g. lambda model, x: "
                "model.encoder(x).norm(dim=1, keepdim=True))."
            )
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

    def _targets(
        self, pl_module: pl.LightningModule, probes: Probes, output: Any = None
    ) -> torch.Tensor | int | None:
        """The class each probe's map explains at this render: its label, a fixed class, or
        None for the predicted one. A segmentation model's probes (default ``output_transform``)
        are read for the share of their pixels each class is predicted on (the captions'), from
        ``output`` (the probes' forward without gradients) or a forward of their own: the
        predicted class of a segmentation is the one the probe shows besides the background
        (:func:`~lightning_viz.functional.gradcam.segmented_classes`), where the class of most
        pixels would be the background on every probe."""
        target = self.target
        if target is None:
            target = "label" if self._labels_are_classes else "pred"
        self._pixel_shares = None
        if self._outputs_class_maps:
            if output is None:
                output = self._probe_output(pl_module, probes)
            maps = class_maps(output)
            self._pixel_shares = None if maps is None else pixel_shares(maps.float())
        self._segmented_pred = target == "pred" and self._pixel_shares is not None
        if target == "label":
            return probes.labels
        if target == "pred":
            return None if self._pixel_shares is None else segmented_classes(self._pixel_shares)
        return target

    @property
    def explained_quantity(self) -> str:
        """What the maps explain of the class: its probability (``probability``), or, for a
        segmentation model, its score summed over the pixels predicted as it (their probability
        saturates: a sum over thousands of pixels is certain whatever the image shows), or a
        model's one output as it is (the softmax of one output is 1 whatever the image)."""
        one_softmax = self._single_output and self._probability == "softmax"
        return "score" if self._outputs_class_maps or one_softmax else "probability"

    def measured(self, scores: torch.Tensor) -> torch.Tensor:
        """What the maps explain of (N, K) class ``scores``: :attr:`explained_quantity`, by
        ``probability`` (the functional views' ``probabilities=``: :meth:`measure_as`)."""
        return probabilities_of(scores, self.measure_as)

    @property
    def measure_as(self) -> bool | str:
        """The ``probabilities=`` of the functional views: ``probability``, or False where the
        explained quantity is a score."""
        return self._probability if self.explained_quantity == "probability" else False

    def _explained_class(self, targets: torch.Tensor | int | None) -> str:
        if self._single_output:
            return "output"
        if targets is None:
            return "predicted class"
        if self._segmented_pred:
            return "class segmented besides the background"
        if isinstance(targets, int):
            return f"class {class_name(targets, self.class_names)}"
        return "true class"

    def _predictions(
        self, probes: Probes, logits: torch.Tensor, targets: torch.Tensor | int | None
    ) -> tuple[list[str], list[str], str]:
        """Each probe's caption, its map's caption (:func:`prediction_caption`: the explained
        class, its probability and the prediction where it differs; for a segmentation, the
        share of pixels predicted as the explained class; for a model with one output, its
        value), and the markdown table of what each probe explains."""
        n = len(probes)
        explained = logits.argmax(dim=1) if targets is None else torch.as_tensor(targets).expand(n)
        names = self.class_names
        width = panel_tiles(probes.display[:1]).shape[-1]
        image_captions = [self.probe_caption(probes, i, width) for i in range(n)]
        segmented = self._pixel_shares is not None
        independent = False  # a multi-label model's classes, each read on its own
        if segmented:  # the explained class's share of the pixels
            probabilities = self._pixel_shares.cpu()
            # short headers: TensorBoard's text card breaks a wide table's words mid-word
            headers = "most pixels | its share of pixels"
        elif self._single_output:
            outputs = self.measured(logits)[:, 0].cpu().tolist()
            if self.explained_quantity == "probability":  # a single-logit binary classifier
                quantity, captions = "probability", [f"p {percent(value)}" for value in outputs]
            else:
                quantity, captions = "output", [f"out {value:.3g}" for value in outputs]
            if probes.values is None:
                table = [f"| probe | {quantity} |", "|---|---|"]
                table += [f"| {i} | {value:.4g} |" for i, value in enumerate(outputs)]
            else:  # a regressor's targets beside its outputs
                table = [f"| probe | target | {quantity} |", "|---|---|---|"]
                table += [
                    f"| {i} | {self.probe_target(probes, i)} | {value:.4g} |"
                    for i, value in enumerate(outputs)
                ]
            return image_captions, captions, "\n".join(table)
        else:
            probabilities = self.measured(logits).cpu()
            independent = self.measure_as == "sigmoid"
            headers = (
                "highest-scoring class | the explained class's probability"
                if independent
                else "predicted | its probability"
            )
        explained = explained.cpu()
        predicted = probabilities.argmax(dim=1)
        explained_values = probabilities.gather(1, explained[:, None])[:, 0]
        # the table gives a classifier's top probability, else the explained class's
        own = segmented or independent
        confidence = explained_values if own else probabilities.amax(dim=1)
        labels = [None] * n if probes.labels is None else probes.labels.tolist()
        map_captions = [
            prediction_caption(
                class_name(e, names),
                v,
                width,
                segmented,
                predicted=None if e == p else class_name(p, names),
                labelled=e == label,
                independent=independent,
                names=names or (),
            )
            for e, p, v, label in zip(
                explained.tolist(),
                predicted.tolist(),
                explained_values.tolist(),
                labels,
                strict=True,
            )
        ]
        table = [f"| probe | explains class | {headers} |", "|---|---|---|---|"]
        rows = zip(explained.tolist(), predicted.tolist(), confidence.tolist(), strict=True)
        table += [
            f"| {i} | {class_name(t, names)} | {class_name(p, names)} | {probability_text(c)} |"
            for i, (t, p, c) in enumerate(rows)
        ]
        return image_captions, map_captions, "\n".join(table)

    def _explained_classes(
        self, pl_module: pl.LightningModule, probes: Probes
    ) -> tuple[torch.Tensor | int | None, torch.Tensor, torch.Tensor]:
        """The probes' targets as the view names them (:meth:`_targets`), their (N,
        num_classes) float class scores, both from one forward without gradients, and the (N,)
        classes the maps explain."""
        output = self._probe_output(pl_module, probes)
        targets = self._targets(pl_module, probes, output)
        logits = self._transform(output).float()
        return targets, logits, target_index(targets, logits)

    def _probe_output(self, pl_module: pl.LightningModule, probes: Probes) -> Any:
        """The model's output on the probes, from a forward without gradients."""
        with torch.no_grad():
            return (self.probe_forward(pl_module) or pl_module)(probes.images)

    @property
    def least_scale(self) -> float:
        """The least colour scale of maps in the units of :attr:`explained_quantity`:
        :data:`FAINT_BELOW` for a probability, none for a score, whose units are the model's."""
        return FAINT_BELOW if self.explained_quantity == "probability" else 0.0

    def faint_note(self, probes: Probes, largest: torch.Tensor, what: str) -> str | None:
        """The note on the probes whose ``largest`` (N,) absolute map value is under
        :attr:`least_scale`: ``what`` (of the probability) hardly moves there, and their maps
        are drawn faint."""
        faint = (largest < self.least_scale).nonzero().flatten().tolist()
        if not faint:
            return None
        least = self.least_scale
        return (
            f"The {what} of {self.probe_names(probes, faint)} stays under {least:g} of the "
            f"probability: drawn on a scale of {least:g}, faint, not stretched to full colour."
        )

    def unsegmented(self, explained: torch.Tensor | int | None, count: int) -> torch.Tensor | None:
        """(count,) bool: the segmentation's probes whose ``explained`` class is predicted on
        none of their pixels; None where the model does not segment."""
        if self._pixel_shares is None or explained is None:
            return None
        shares = self._pixel_shares
        classes = torch.as_tensor(explained, device=shares.device).expand(count)
        return shares.gather(1, classes.view(-1, 1))[:, 0] == 0

    def blank_unsegmented(
        self, maps: torch.Tensor, explained: torch.Tensor | int | None
    ) -> torch.Tensor:
        """(N, ...) ``maps`` with those of :meth:`unsegmented` probes set to 0. Their class's
        summed score is 0, and a perturbed copy (a noisy one, an occluded patch, hidden
        segments) that has the class on a few pixels drew evidence for a class the caption
        said covers 0% of the probe (a visual review of a segmenter: SmoothGrad, occlusion
        and LIME bright where Grad-CAM, which reads the probe itself, was empty)."""
        absent = self.unsegmented(explained, len(maps))
        if absent is None:
            return maps
        return maps.masked_fill(absent.to(maps.device).view(-1, *[1] * (maps.dim() - 1)), 0)

    @staticmethod
    def _check_finite(maps: torch.Tensor, what: str) -> None:
        """Fail (as an alert) when a view's maps are not finite: nothing to show."""
        if not all_finite(maps):
            raise not_finite_error(what)

    # ----------------------------------------------------------------------- trust scores
    def score_maps(
        self, pl_module: pl.LightningModule, probes: Probes, explained: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The (N, h, w) maps the scores rate, of the probes for the ``explained`` classes,
        keyed by the image tag they are shown under: what the view shows, before colouring.
        The sanity score calls it again with the network's upper half re-initialized."""
        raise NotImplementedError

    def _rate(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        probes: Probes,
        maps: dict[str, torch.Tensor],
        explained: torch.Tensor,
    ) -> dict[str, Rating]:
        """Measure the scores of ``maps`` (what :meth:`score_maps` gives on the trained
        network), log their means and keep the maps for the next render's stability; what
        each tag's scores say."""
        host = to_host(self._measure(pl_module, probes, maps, explained))
        metrics, ratings = {}, {}
        for method in maps:
            if "stability" in self.scores:
                self.previous_maps[method] = host.pop(f"{method}|maps").clone()
            per_probe = {
                key: host[f"{method}|{key}"] for key in COLUMNS if f"{method}|{key}" in host
            }
            mean = {key: values.nanmean().item() for key, values in per_probe.items()}
            metrics |= self._score_metrics(method, mean)
            drop = host.get(f"{method}|drop")
            drop = 0.0 if drop is None or drop.isnan().all() else drop.nanmean().item()
            stability = per_probe.get("stability")
            rated = None if stability is None else (int((~stability.isnan()).sum()), len(stability))
            lines = self._score_lines(trainer, method, mean, drop, rated)
            empty = host.pop(f"{method}|empty").nonzero().flatten().tolist()
            if empty:
                absent = self.unsegmented(explained, len(probes))
                why = (
                    "the class explained is predicted on none of their pixels"
                    if absent is not None and bool(absent[empty].all())
                    else "the view found nothing there for the class explained"
                )
                lines.append(
                    f"The maps of {self.probe_names(probes, empty)} are empty (one value "
                    f"everywhere): {why}, and the scores leave them out."
                )
            ratings[method] = Rating(
                note=" ".join(lines[1:]) or None,
                summary="  \n".join(line for line in lines if line),
                columns={
                    COLUMNS[key]: ["-" if math.isnan(v) else f"{v:.2f}" for v in values.tolist()]
                    for key, values in per_probe.items()
                },
            )
        self.log_scalars(trainer, metrics)
        return ratings

    def _measure(
        self,
        pl_module: pl.LightningModule,
        probes: Probes,
        maps: dict[str, torch.Tensor],
        explained: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The per-probe scores of each tag's maps, on the device, keyed ``tag|score``, and for
        stability the maps themselves (``tag|maps``), kept for the next render."""
        found: dict[str, torch.Tensor] = {
            f"{method}|empty": constant_maps(m) for method, m in maps.items()
        }
        if "stability" in self.scores:
            for method, m in maps.items():
                found[f"{method}|maps"] = m
                previous = self.previous_maps.get(method)
                if previous is not None and previous.shape == m.shape:
                    previous = previous.to(m.device)
                    # after an empty map, nothing to compare: not a correlation of 0
                    stability = map_similarity(m, previous).masked_fill(
                        constant_maps(previous), math.nan
                    )
                    found[f"{method}|stability"] = stability
        size = tuple(probes.images.shape[-2:])
        ssim = "sanity" in self.scores and min(size) >= SSIM_SIDE
        wanted = ssim or probes.regions is not None or "faithfulness" in self.scores
        heats = {method: upsample(m, size) for method, m in maps.items()} if wanted else {}
        forward = self.probe_forward(pl_module)
        if "sanity" in self.scores:
            randomized = randomized_call(
                pl_module,
                lambda: self.score_maps(pl_module, probes, explained),
                modules=upper_half(pl_module, probes.images[:1], forward),
            )
            for method, m in maps.items():
                found[f"{method}|sanity"] = map_similarity(m, randomized[method])
                if ssim:
                    random_heat = upsample(randomized[method], size)
                    found[f"{method}|ssim"] = map_structural_similarity(heats[method], random_heat)
        if probes.regions is not None:  # free: no forward
            for method, heat in heats.items():
                found[f"{method}|pointing"] = pointing_game(heat, probes.regions)
                found[f"{method}|energy"] = energy_in_box(heat, probes.regions)
        if "faithfulness" in self.scores:
            for method, heat in heats.items():
                # an empty map ranks the pixels by position alone: no score, as for the others
                unrated = found[f"{method}|empty"]
                for order, key in ((heat, "deletion"), (random_maps(heat), "random")):
                    curves = deletion_insertion(
                        pl_module, probes.images, order, explained, forward=forward,
                        output_transform=self._transform, probabilities=self._deletion_reads,
                        segmentation=self._outputs_class_maps,
                    )  # fmt: skip
                    found[f"{method}|{key}"] = curves.deletion_auc.masked_fill(unrated, math.nan)
                    if key == "deletion":
                        insertion = curves.insertion_auc.masked_fill(unrated, math.nan)
                        found[f"{method}|insertion"] = insertion
                        drop = self._drop(curves.deletion).masked_fill(unrated, math.nan)
                        found[f"{method}|drop"] = drop
        return found

    @property
    def _deletion_reads(self) -> bool | str:
        """The ``probabilities=`` of the faithfulness curves: what the maps explain
        (:meth:`measure_as`: a single output's value), but a segmentation's class probability,
        read over the pixels the unperturbed probe predicts as the class. Its summed score is
        over the pixels each perturbed image predicts as the class, which deleting pixels
        changes: an untrained net's curves jumped (from 11 to 0, from 26 to 71) and were
        judged."""
        return self._probability if self._outputs_class_maps else self.measure_as

    def _drop(self, deletion: torch.Tensor) -> torch.Tensor:
        """(N,) how far the faithfulness curves' quantity falls from the first to the last
        step of (N, S + 1) deletion curves: a probability in its units, a single output's value
        as a share of its start, whatever its scale."""
        drop = deletion[:, 0] - deletion[:, -1]
        if self._deletion_reads is False:
            drop = drop / deletion[:, 0].abs().clamp(min=torch.finfo(drop.dtype).tiny)
        return drop

    @staticmethod
    def _score_metrics(method: str, mean: dict[str, float]) -> dict[str, float]:
        """The scalars of one tag's mean scores."""
        names = {
            "stability": (tags.STABILITY, ""),
            "sanity": (tags.SANITY, ""),
            "ssim": (tags.SANITY_SSIM, ""),
            "deletion": (tags.FAITHFULNESS, "deletion"),
            "insertion": (tags.FAITHFULNESS, "insertion"),
            "random": (tags.FAITHFULNESS, "deletion_random"),
            "pointing": (tags.LOCALIZATION, "pointing_game"),
            "energy": (tags.LOCALIZATION, "energy_in_box"),
        }
        return {tags.tag(names[key][0], method, names[key][1]): v for key, v in mean.items()}

    def _score_lines(
        self,
        trainer: pl.Trainer,
        method: str,
        mean: dict[str, float],
        drop: float,
        rated: tuple[int, int] | None = None,
    ) -> list[str]:
        """Whether the maps have settled (first, maybe empty), then the warnings; ``drop`` is
        how far what the faithfulness curves read falls with every pixel deleted (:meth:`_drop`,
        mean over probes); ``rated``: how many probes of how many have a stability (a
        segmenter's "stable" rested on 1 of 8, the others' maps empty)."""
        over = (
            ""
            if rated is None or rated[0] == rated[1]
            else f", over {rated[0]} of {rated[1]} probes"
        )
        lines = [""]
        if "stability" in mean and math.isnan(mean["stability"]):
            self.stable_since[method] = None
            lines[0] = (
                "not settled: every map is empty (one value everywhere) now or at the previous "
                "render, nothing to compare."
            )
        elif "stability" in mean:
            settled = mean["stability"] >= STABLE
            since = self.stable_since.get(method)
            self.stable_since[method] = (
                (self.epoch(trainer) if since is None else since) if settled else None
            )
            lines[0] = (
                f"stable since epoch {self.stable_since[method]} (rank correlation with the "
                f"previous render {mean['stability']:.2f} >= {STABLE}{over})."
                if settled
                else f"not settled: rank correlation with the previous render "
                f"{mean['stability']:.2f} < {STABLE}{over}."
            )
        if mean.get("sanity", 0.0) >= INDEPENDENT:
            lines.append(
                "The maps of the network with its upper half re-initialized are alike (rank "
                f"correlation {mean['sanity']:.2f} >= {INDEPENDENT}): these maps do not depend "
                "on what the network learned."
            )
        subject = "output" if self._single_output else "class"
        explained = "output" if self._deletion_reads is False else f"{subject}'s probability"
        if "deletion" in mean and drop >= RESPONDS and mean["deletion"] >= mean["random"]:
            lines.append(
                f"Deleting pixels in the maps' order lowers the {explained} no faster "
                f"than a random order (deletion AUC {mean['deletion']:.2f} vs "
                f"{mean['random']:.2f}): the maps are not faithful to the model."
            )
        return lines

    def _rated_text(self, table: str, rating: Rating) -> str:
        """The view's markdown ``table`` with the rating's columns, under its summary."""
        text = self._with_columns(table, rating.columns) if rating.columns else table
        return f"{rating.summary}\n\n{text}" if rating.summary else text

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
        ``note`` below when there is one (a warning about what the maps show). Probes with
        boxes or masks have them outlined on their image: what the localization scores read."""
        regions = None if self.probes is None else self.probes.regions
        if regions is not None:
            size = tuple(self.probes.images.shape[-2:])
            display = outline(display, region_masks(regions, size))
            note = f"{note} {REGION_NOTE}" if note else REGION_NOTE
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

    def _panels(
        self,
        display: torch.Tensor,
        maps: torch.Tensor,
        image_captions: list[str],
        map_captions: list[str],
    ) -> torch.Tensor:
        """One captioned panel per probe (its image, then its map: beside it, or under a wide
        image), tiled to a readable grid."""
        captions = [list(pair) for pair in zip(image_captions, map_captions, strict=True)]
        tiles = self.oriented(torch.stack([display, maps], dim=1))
        if is_wide(display):
            panels = captioned_blocks(tiles, captions, columns=1)
        else:
            panels = captioned_rows(tiles, captions)
        per_row = panels_per_row(len(panels), *panels.shape[-2:], max_width=LEGIBLE_WIDTH)
        return grid(panels, nrow=per_row, padding=6)
