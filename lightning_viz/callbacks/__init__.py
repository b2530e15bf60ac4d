"""The Lightning callbacks: they decide when to compute and where to log."""

from lightning_viz.callbacks.activation_grid_logger import ActivationGridLogger
from lightning_viz.callbacks.activation_monitor import ActivationMonitor
from lightning_viz.callbacks.cam_logger import CAMLogger
from lightning_viz.callbacks.deconv_logger import DeconvLogger
from lightning_viz.callbacks.embedding_logger import EmbeddingLogger
from lightning_viz.callbacks.feature_visualizer import FeatureVisualizer
from lightning_viz.callbacks.filter_monitor import FilterMonitor
from lightning_viz.callbacks.gradcam_logger import GradCAMLogger
from lightning_viz.callbacks.lime_logger import LIMELogger
from lightning_viz.callbacks.occlusion_logger import OcclusionLogger
from lightning_viz.callbacks.saliency_logger import SaliencyLogger
from lightning_viz.callbacks.top_patches_logger import TopPatchesLogger

__all__ = [
    "ActivationGridLogger",
    "ActivationMonitor",
    "CAMLogger",
    "DeconvLogger",
    "EmbeddingLogger",
    "FeatureVisualizer",
    "FilterMonitor",
    "GradCAMLogger",
    "LIMELogger",
    "OcclusionLogger",
    "SaliencyLogger",
    "TopPatchesLogger",
]
