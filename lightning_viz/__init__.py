"""lightning-viz: PyTorch Lightning callbacks that show in TensorBoard what a CNN learns."""

from lightning_viz.alerts import Alert
from lightning_viz.callbacks import ActivationMonitor, FilterMonitor

__version__ = "0.1.0"

__all__ = ["ActivationMonitor", "Alert", "FilterMonitor", "__version__"]
