"""lightning-viz: PyTorch Lightning callbacks that show in TensorBoard what a CNN learns.

The public names are imported on first use, so ``lightning-viz summary`` and
``lightning_viz.tags`` read event files without importing torch or Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_HOMES = {
    "ActivationGridLogger": "lightning_viz.callbacks",
    "ActivationMonitor": "lightning_viz.callbacks",
    "Alert": "lightning_viz.alerts",
    "CAMLogger": "lightning_viz.callbacks",
    "DeconvLogger": "lightning_viz.callbacks",
    "EmbeddingLogger": "lightning_viz.callbacks",
    "FeatureVisualizer": "lightning_viz.callbacks",
    "FilterMonitor": "lightning_viz.callbacks",
    "GradCAMLogger": "lightning_viz.callbacks",
    "LIMELogger": "lightning_viz.callbacks",
    "OcclusionLogger": "lightning_viz.callbacks",
    "Probes": "lightning_viz.probes",
    "SaliencyLogger": "lightning_viz.callbacks",
    "TopPatchesLogger": "lightning_viz.callbacks",
    "default_callbacks": "lightning_viz.presets",
    "overhead": "lightning_viz.callbacks.base",
}

__all__ = [
    "ActivationGridLogger",
    "ActivationMonitor",
    "Alert",
    "CAMLogger",
    "DeconvLogger",
    "EmbeddingLogger",
    "FeatureVisualizer",
    "FilterMonitor",
    "GradCAMLogger",
    "LIMELogger",
    "OcclusionLogger",
    "Probes",
    "SaliencyLogger",
    "TopPatchesLogger",
    "__version__",
    "default_callbacks",
    "overhead",
]

if TYPE_CHECKING:
    from lightning_viz.alerts import Alert
    from lightning_viz.callbacks import (
        ActivationGridLogger,
        ActivationMonitor,
        CAMLogger,
        DeconvLogger,
        EmbeddingLogger,
        FeatureVisualizer,
        FilterMonitor,
        GradCAMLogger,
        LIMELogger,
        OcclusionLogger,
        SaliencyLogger,
        TopPatchesLogger,
    )
    from lightning_viz.callbacks.base import overhead
    from lightning_viz.presets import default_callbacks
    from lightning_viz.probes import Probes


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'lightning_viz' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
