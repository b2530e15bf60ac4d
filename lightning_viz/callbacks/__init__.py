"""The Lightning callbacks: they decide when to compute and where to log."""

from lightning_viz.callbacks.activation_monitor import ActivationMonitor
from lightning_viz.callbacks.filter_monitor import FilterMonitor

__all__ = ["ActivationMonitor", "FilterMonitor"]
