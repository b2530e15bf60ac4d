"""Every TensorBoard key lightning-viz writes, built here and only here.

``<layer>`` is a name from ``model.named_modules()``; ActivationMonitor adds ``#k`` for the k-th
call of a module that runs several times per forward. These names are a contract (dashboards,
``lightning-viz summary`` and users' scripts read them): add tags, never rename one. TensorBoard
keeps one kind of data per tag, so an image and a histogram never share a tag.

This module imports nothing, so reading event files needs neither torch nor Lightning.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

FILTERS = "filters"
ACTIVATIONS = "activations"

FILTER_SCALARS = ("noise", "noisy_fraction", "drift", "update_noise")
"""The per-layer scalars of FilterMonitor: ``filters/<layer>/<key>``."""
ACTIVATION_SCALARS = ("zero_fraction", "dead_fraction", "localization")
"""The per-layer scalars of ActivationMonitor: ``activations/<layer>/<key>``."""

ALERTS = "alerts"
"""Text: the alerts of a step."""
ALERT_COUNT = "alerts/count"
"""Scalar: how many alerts every lightning-viz callback of the Trainer raised so far."""


def text_summary(tag: str) -> str:
    """Where torch's ``SummaryWriter.add_text(tag, ...)`` files the text in the event file."""
    return f"{tag}/text_summary"


def filter_scalar(layer: str, key: str) -> str:
    """``filters/<layer>/<key>``, key one of :data:`FILTER_SCALARS`."""
    return f"{FILTERS}/{layer}/{key}"


def filter_image(layer: str) -> str:
    """``filters/<layer>``: the layer's filters as a grid."""
    return f"{FILTERS}/{layer}"


def filter_noise_histogram(layer: str) -> str:
    """``filters/<layer>/noise_histogram``: Geary's C of each filter."""
    return f"{FILTERS}/{layer}/noise_histogram"


def activation_scalar(layer: str, key: str) -> str:
    """``activations/<layer>/<key>``, key one of :data:`ACTIVATION_SCALARS`."""
    return f"{ACTIVATIONS}/{layer}/{key}"


def activation_histogram(layer: str) -> str:
    """``activations/<layer>``: the values of a sampled batch."""
    return f"{ACTIVATIONS}/{layer}"


def gradcam(layer: str) -> str:
    """``gradcam/<layer>``: probes and their Grad-CAM overlays."""
    return f"gradcam/{layer}"


def gradcam_guided(layer: str) -> str:
    """``gradcam/<layer>/guided``: guided Grad-CAM of the probes."""
    return f"gradcam/{layer}/guided"


def gradcam_targets(layer: str) -> str:
    """``gradcam/<layer>/targets``: text, the class each map explains and the prediction."""
    return f"gradcam/{layer}/targets"


def deconv(layer: str) -> str:
    """``deconv/<layer>``: probes and their top-k deconvnet reconstructions."""
    return f"deconv/{layer}"


def deconv_channels(layer: str) -> str:
    """``deconv/<layer>/channels``: text, the channels of each row."""
    return f"deconv/{layer}/channels"


def evolution(layer: str) -> str:
    """``evolution/<layer>``: followed features (rows) over logged epochs (columns)."""
    return f"evolution/{layer}"


def evolution_features(layer: str) -> str:
    """``evolution/<layer>/features``: text, the followed channels and the columns' epochs."""
    return f"evolution/{layer}/features"


def scalar_regex(prefix: str, layer: str, keys: Sequence[str], numbered_calls: bool = False) -> str:
    """A regex matching ``<prefix>/<layer>/<key>`` for the keys (and ``<layer>#k`` if asked),
    for TensorBoard's custom-scalars layout."""
    calls = r"(#\d+)?" if numbered_calls else ""
    alternatives = "|".join(re.escape(key) for key in keys)
    return rf"^{re.escape(prefix)}/{re.escape(layer)}{calls}/({alternatives})$"


def split_layer_scalar(tag: str, prefix: str, keys: Sequence[str]) -> tuple[str, str] | None:
    """``(layer, key)`` of a ``<prefix>/<layer>/<key>`` tag with a key in ``keys``, else None."""
    head, _, key = tag.rpartition("/")
    if key not in keys or not head.startswith(f"{prefix}/") or head == prefix:
        return None
    return head[len(prefix) + 1 :], key
