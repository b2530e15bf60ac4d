"""lightning-viz: PyTorch Lightning callbacks that show in TensorBoard what a CNN learns."""

from lightning_viz.alerts import Alert
from lightning_viz.callbacks import ActivationMonitor, DeconvLogger, FilterMonitor, GradCAMLogger
from lightning_viz.presets import default_callbacks
from lightning_viz.probes import Probes

__version__ = "0.1.0"

__all__ = [
    "ActivationMonitor",
    "Alert",
    "DeconvLogger",
    "FilterMonitor",
    "GradCAMLogger",
    "Probes",
    "__version__",
    "default_callbacks",
]
