"""lightning-viz: PyTorch Lightning callbacks that show in TensorBoard what a CNN learns."""

__version__ = "0.1.0"
