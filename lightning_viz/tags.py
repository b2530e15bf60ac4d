"""Every TensorBoard key lightning-viz writes, built here and only here.

Each key is a template; :func:`tag` fills in ``{layer}`` (a name from ``model.named_modules()``;
ActivationMonitor adds ``#k`` for the k-th call of a module that runs several times per forward)
and ``{key}``. These names are a contract (dashboards, ``lightning-viz summary`` and users'
scripts read them): add tags, never rename one. TensorBoard keeps one kind of data per tag, so an
image and a histogram never share a tag.

This module imports no third-party package, so reading event files needs neither torch nor
Lightning.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

FILTER_SCALAR = "filters/{layer}/{key}"
"""Scalar, FilterMonitor: ``key`` one of :data:`FILTER_KEYS`."""
FILTER_KEYS = ("noise", "noisy_fraction", "drift", "learned", "update_noise")
FILTER_IMAGE = "filters/{layer}"
"""Image, FilterMonitor: the layer's filters as a grid."""
FILTER_NOISE_HISTOGRAM = "filters/{layer}/noise_histogram"
"""Histogram, FilterMonitor: Geary's C of each filter."""

ACTIVATION_SCALAR = "activations/{layer}/{key}"
"""Scalar, ActivationMonitor: ``key`` one of :data:`ACTIVATION_KEYS`."""
ACTIVATION_KEYS = ("zero_fraction", "dead_fraction", "localization", "saturated_fraction")
DEAD_AFTER_VALUES = 1024
"""``dead_fraction`` is logged once each channel had this many values in the sampled batches
of an epoch, or of several where one epoch's hold fewer (a channel that is positive 1% of the
time is then all-negative by chance with p < 5e-5)."""
ACTIVATION_HISTOGRAM = "activations/{layer}"
"""Histogram, ActivationMonitor: the values of a sampled batch."""

GRADCAM = "gradcam/{layer}"
"""Image, GradCAMLogger: the probes and their Grad-CAM overlays."""
GRADCAM_GUIDED = "gradcam/{layer}/guided"
"""Image, GradCAMLogger: guided Grad-CAM of the probes."""
GRADCAM_TARGETS = "gradcam/{layer}/targets"
"""Text, GradCAMLogger: the class each map explains, the prediction and its probability."""

DECONV = "deconv/{layer}"
"""Image, DeconvLogger: the probes and their top-k deconvnet reconstructions."""
DECONV_CHANNELS = "deconv/{layer}/channels"
"""Text, DeconvLogger: the channels of each row."""
EVOLUTION = "evolution/{layer}"
"""Image, DeconvLogger: followed features (rows) over logged epochs (columns)."""
EVOLUTION_FEATURES = "evolution/{layer}/features"
"""Text, DeconvLogger: the followed channels and the epochs of the columns."""

OCCLUSION = "occlusion/sensitivity"
"""Image, OcclusionLogger: the probes and how much hiding each spot lowers the explained class's
probability."""
OCCLUSION_TARGETS = "occlusion/sensitivity/targets"
"""Text, OcclusionLogger: the class each map explains, the prediction and the largest drop."""

SALIENCY = "saliency/{key}"
"""Image, SaliencyLogger: the probes and their gradient attribution maps (``key`` the method:
``vanilla``, ``smoothgrad``, ``integrated_gradients`` or ``expected_gradients``, and
``vanilla_signed`` or ``smoothgrad_signed`` with ``absolute=False``)."""
SALIENCY_TARGETS = "saliency/{key}/targets"
"""Text, SaliencyLogger: the class each map explains, the prediction and its probability."""

ACTIVATION_GRID = "activation_grid/{layer}"
"""Image, ActivationGridLogger: each probe's most active feature maps of the layer."""
ACTIVATION_GRID_CHANNELS = "activation_grid/{layer}/channels"
"""Text, ActivationGridLogger: the channels shown for each probe and their mean activation."""

CAM = "cam/{layer}"
"""Image, CAMLogger: the probes and their class activation maps."""
CAM_TARGETS = "cam/{layer}/targets"
"""Text, CAMLogger: the class each map explains, the prediction and its probability."""

LIME = "lime/weights"
"""Image, LIMELogger: the probes and the weight LIME's linear surrogate gives each segment."""
LIME_TARGETS = "lime/weights/targets"
"""Text, LIMELogger: the class each map explains, the prediction and the surrogate's fit."""

EMBEDDING = "embedding/{layer}"
"""Image, EmbeddingLogger: the features of the validation subset in 2-D (PCA), coloured by class.
The same tag names the layer's projector embedding (TensorBoard's Projector tab)."""
EMBEDDING_SCALAR = "embedding/{layer}/{key}"
"""Scalar, EmbeddingLogger: ``key`` one of :data:`EMBEDDING_KEYS`."""
EMBEDDING_KEYS = ("knn_accuracy",)

TOP_PATCHES = "top_patches/{layer}"
"""Image, TopPatchesLogger: units (rows) by their top-k validation patches (columns)."""
TOP_PATCHES_SCALAR = "top_patches/{layer}/{key}"
"""Scalar, TopPatchesLogger: ``key`` one of :data:`TOP_PATCHES_KEYS`."""
TOP_PATCHES_KEYS = ("changed",)
TOP_PATCHES_UNITS = "top_patches/{layer}/units"
"""Text, TopPatchesLogger: each row's unit, its top activations and their receptive field."""

FEATURE_VIS = "feature_vis/{layer}"
"""Image, FeatureVisualizer: the input each unit responds to most (rows), over epochs (columns)."""
FEATURE_VIS_SCALAR = "feature_vis/{layer}/{key}"
"""Scalar, FeatureVisualizer: ``key`` one of :data:`FEATURE_VIS_KEYS`."""
FEATURE_VIS_KEYS = ("objective",)
FEATURE_VIS_UNITS = "feature_vis/{layer}/units"
"""Text, FeatureVisualizer: the units of the rows, the objective each reached, the epochs."""

SANITY = "sanity/{layer}"
"""Scalar, the explaining views with ``scores``: the mean rank correlation between each probe's
map and the same map on the network with its upper half re-initialized (``layer`` is the tag of
the view's image, e.g. ``gradcam/layer3``, ``saliency/vanilla``, ``occlusion/sensitivity``):
near 1, the map does not depend on the learned weights."""
SANITY_SSIM = "sanity/{layer}/ssim"
"""Scalar, beside :data:`SANITY` (probes of at least 11 pixels a side): the mean SSIM of each
probe's map, upsampled to the probe and min-max normalized, with the randomized network's."""
STABILITY = "stability/{layer}"
"""Scalar, the explaining views (default): the mean rank correlation of each probe's map with
the previous render's (``layer`` is the tag of the view's image)."""
FAITHFULNESS = "faithfulness/{layer}/{key}"
"""Scalar, with ``scores``: ``key`` one of :data:`FAITHFULNESS_KEYS`, the mean area under the
probes' deletion or insertion curve, and the deletion curve of a random order (``layer`` is the
tag of the view's image)."""
FAITHFULNESS_KEYS = ("deletion", "insertion", "deletion_random")
LOCALIZATION = "localization/{layer}/{key}"
"""Scalar, the explaining views on probes with boxes or masks: ``key`` one of
:data:`LOCALIZATION_KEYS`, the share of maps whose peak lies in the probe's box (or mask) and
the mean share of their positive mass inside it (``layer`` is the tag of the view's image)."""
LOCALIZATION_KEYS = ("pointing_game", "energy_in_box")

ALERTS = "alerts"
"""Text, every callback that alerts: the alerts of a step (and the health alerts of earlier steps
still active), a line of what happened, what to check for each, then a markdown table of them
(:func:`alert_table`);
when several callbacks alert at one step, the last entry of that step holds them all."""
ALERT_COLUMNS = ("status", "kind", "layer", "epoch", "value", "threshold", "what to check")
NOTICE_KINDS = frozenset(
    {
        "endless_epoch",
        "failed",
        "frozen",
        "gated",
        "noisy_inputs",
        "not_shown",
        "outside_forward",
        "over_budget",
        "reference_at_resume",
        "unfrozen",
    }
)
"""Alert kinds that report on lightning-viz or the setup, not on training's health: never a stop,
not counted in :data:`ALERT_COUNT`, listed apart by ``lightning-viz summary``."""
DIVERGED_KINDS = frozenset(
    {"collapse", "exploding", "nonfinite_activations", "nonfinite_weights", "overwritten"}
)
"""Alert kinds that say the model itself diverged, not one layer: while one is active, the probe
views' pictures say so on top (a diverged model still draws convincing maps)."""
INFO_KINDS = frozenset(
    {
        "gated",
        "noisy_inputs",
        "outside_forward",
        "over_budget",
        "reference_at_resume",
        "unfrozen",
    }
)
"""Notices printed as a line, not a warning: lightning-viz doing what it was asked, which a
healthy run should not be warned about."""
OVERHEAD = "lightning_viz/overhead"
"""Scalar, at every training epoch's end: the share of the wall-clock time since the previous
entry (or train start) that the training thread spent in lightning-viz callbacks."""
OVERHEAD_OF = "lightning_viz/overhead/{key}"
"""Scalar, with :data:`OVERHEAD`: the same share for one callback (``key`` its class name)."""
ALERT_COUNT = "alerts/count"
"""Scalar: how many health alerts the lightning-viz callbacks of the Trainer raised so far
(notices such as ``frozen`` or ``over_budget`` are not counted)."""


def tag(template: str, layer: str, key: str = "") -> str:
    """The key of ``layer`` (and ``key``) under one of this module's templates."""
    return template.format(layer=layer, key=key)


def text_summary(tag: str) -> str:
    """Where torch's ``SummaryWriter.add_text(tag, ...)`` files the text in the event file."""
    return f"{tag}/text_summary"


def scalar_regex(
    template: str, layer: str, keys: Sequence[str], numbered_calls: bool = False
) -> str:
    """A regex matching the template's tags of ``layer`` for the keys (and ``<layer>#k`` calls if
    asked), for TensorBoard's custom-scalars layout."""
    calls = r"(#\d+)?" if numbered_calls else ""
    return _template_regex(template, re.escape(layer) + calls, keys, "(")


def every_layer_regex(template: str, keys: Sequence[str]) -> str:
    """A regex matching the template's tags of every layer for the keys."""
    return _template_regex(template, ".+", keys, "(")


def split_layer_scalar(tag: str, template: str, keys: Sequence[str]) -> tuple[str, str] | None:
    """``(layer, key)`` of a tag made from ``template`` with a key in ``keys``, else None."""
    match = re.fullmatch(_template_regex(template, "(?P<layer>.+)", keys, "(?P<key>"), tag)
    return None if match is None else (match["layer"], match["key"])


def _template_regex(template: str, layer: str, keys: Sequence[str], key_group: str) -> str:
    alternatives = "|".join(re.escape(key) for key in keys)
    pattern = re.escape(template).replace(re.escape("{layer}"), layer)
    return "^" + pattern.replace(re.escape("{key}"), f"{key_group}{alternatives})") + "$"


def call_key(layer: str, call: int) -> str:
    """The name of a module's ``call``-th call in one forward: ``layer`` for the first,
    ``layer#k`` for the k-th (a ResNet block calls its ``relu`` twice)."""
    return layer if call == 1 else f"{layer}#{call}"


def called_layer(key: str) -> str:
    """The module a :func:`call_key` names."""
    return key.split("#")[0]


def layer_section(layers: Sequence[str]) -> str:
    """The custom-scalars section title of a conv layer and the layers (or calls) that follow it."""
    return "layer " + " -> ".join(layers)


def section_layers(title: str) -> list[str]:
    """The layers a :func:`layer_section` title names, in model order (none for other titles)."""
    return title.removeprefix("layer ").split(" -> ") if title.startswith("layer ") else []


def alert_table(rows: Sequence[Sequence[object]]) -> str:
    """The markdown of a step's alerts, rows of :data:`ALERT_COLUMNS` values: a line of what
    happened (:func:`_alert_headline`), then what to check for each row (under a table of 24
    rows it lay below the fold of TensorBoard's text card), numbered as the rows of the table
    of the short columns under it. (In one table, the long
    column left the others a few characters each: "0.632" wrapped into three lines.) A
    paragraph that repeats an earlier row's but for the layer and the numbers refers to that
    row, and rows in a row that refer alike share a line (a divergence raises the same two
    alerts on every conv: "2 to 12: as for 1")."""

    def cell(value: object) -> str:
        text = f"{value:.3g}" if isinstance(value, float) else str(value)
        return "-" if text == "nan" else text.replace("|", "/").replace("\n", " ")

    checks: list[tuple[int, int, str]] = []  # first row, last row, paragraph
    first_of: dict[tuple[object, str], tuple[int, str]] = {}  # a paragraph said once per step
    for i, row in enumerate(rows, 1):
        status, layer, message = row[0], row[2], str(row[-1])
        general = message.replace(str(layer), "{layer}")
        template = (status == "cleared", _NUMBER.sub("#", general))  # raised or active alike
        if template in first_of:
            earlier, earlier_general = first_of[template]
            values = "" if general == earlier_general else " (values in the table)"
            message = f"as for {earlier}{values}"
            if checks and checks[-1][1] == i - 1 and checks[-1][2] == message:
                checks[-1] = (checks[-1][0], i, message)
                continue
        else:
            first_of[template] = (i, general)
        checks.append((i, i, message))
    lines = [
        _alert_headline(rows),
        "",
        f"**{ALERT_COLUMNS[-1]}** (the rows of the table below)",
        "",
    ]
    for first, last, message in checks:
        rows_named = str(first) if first == last else f"{first} to {last}"
        lines += [f"**{rows_named}**: {cell(message)}", ""]
    short = ("#", *ALERT_COLUMNS[:-1])
    lines += ["| " + " | ".join(short) + " |", "|---" * len(short) + "|"]
    lines += [
        "| " + " | ".join(cell(value) for value in (i, *row[:-1])) + " |"
        for i, row in enumerate(rows, 1)
    ]
    return "\n".join(lines)


def _alert_headline(rows: Sequence[Sequence[object]]) -> str:
    """The step at a glance, over the paragraphs (six of a diverged run's filled TensorBoard's
    text card and hid the table below them): per status, each kind with its layer, or how many;
    notices apart, by kind alone."""
    groups: dict[str, dict[str, list[str]]] = {
        label: {} for label in ("raised", "still active", "cleared", "notices")
    }
    for row in rows:
        status, kind, layer = str(row[0]), str(row[1]), str(row[2])
        label = (
            "notices" if kind in NOTICE_KINDS else {"active": "still active"}.get(status, status)
        )
        groups.setdefault(label, {}).setdefault(kind, []).append(layer)

    def where(kind: str, layers: list[str], notice: bool) -> str:
        if notice:
            return kind
        return f"{kind} ({layers[0]!r})" if len(layers) == 1 else f"{kind} ({len(layers)} layers)"

    return " · ".join(
        f"**{label}**: "
        + ", ".join(where(kind, layers, label == "notices") for kind, layers in kinds.items())
        for label, kinds in groups.items()
        if kinds
    )


_NUMBER = re.compile(r"\d+(\.\d+)?(e[+-]?\d+)?")
_CHECK = re.compile(r"^\*\*(\d+)(?: to (\d+))?\*\*: (.*)$", flags=re.MULTILINE)
_OLDER_CHECK = re.compile(r"^(\d+)\. (.*)$", flags=re.MULTILINE)
"""A paragraph of the tables logged before December 2026 (``1. ...`` under the table)."""


def parse_alert_table(text: str) -> list[dict[str, str]]:
    """The rows of an :func:`alert_table`, as ``{column: cell}``."""
    table = [line for line in text.splitlines() if line.startswith("|")][2:]
    checks = {
        str(row): check
        for first, last, check in _CHECK.findall(text)
        for row in range(int(first), int(last or first) + 1)
    } or dict(_OLDER_CHECK.findall(text))
    rows = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in table]
    return [
        dict(zip(ALERT_COLUMNS, [*row[1:], checks.get(row[0], "")], strict=False)) for row in rows
    ]
