"""Pure tensor functions behind the callbacks: no Lightning, no logging, no host sync."""

from lightning_viz.functional._relu_rules import relu_rule
from lightning_viz.functional.activation_grid import feature_map_tiles, top_feature_maps
from lightning_viz.functional.activations import activation_stats
from lightning_viz.functional.cam import class_activation_map, gap_linear_head
from lightning_viz.functional.embedding import knn_accuracy, pca_2d
from lightning_viz.functional.feature_vis import visualize_features
from lightning_viz.functional.filters import filter_health, filter_noise, patch_noise
from lightning_viz.functional.gradcam import (
    class_scores,
    grad_cam,
    grad_cam_and_logits,
    guided_backprop,
)
from lightning_viz.functional.images import (
    colorize,
    filter_tiles,
    grid,
    normalize,
    normalize_magnitude,
    normalize_signed,
    overlay,
    to_rgb,
    to_uint8,
    upsample,
)
from lightning_viz.functional.lime import lime
from lightning_viz.functional.occlusion import occlusion
from lightning_viz.functional.projection import (
    project_layers,
    project_to_input,
    top_channels,
)
from lightning_viz.functional.receptive_field import receptive_fields
from lightning_viz.functional.saliency import (
    expected_gradients,
    integrated_gradients,
    saliency,
    smooth_grad,
)
from lightning_viz.functional.scores import (
    deletion_insertion,
    energy_in_box,
    pointing_game,
    random_maps,
    randomized_call,
    randomized_copy,
    rank_correlation,
    region_masks,
    structural_similarity,
)
from lightning_viz.functional.top_patches import update_top_k

__all__ = [
    "activation_stats",
    "class_activation_map",
    "class_scores",
    "colorize",
    "deletion_insertion",
    "energy_in_box",
    "expected_gradients",
    "feature_map_tiles",
    "filter_health",
    "filter_noise",
    "filter_tiles",
    "gap_linear_head",
    "grad_cam",
    "grad_cam_and_logits",
    "grid",
    "guided_backprop",
    "integrated_gradients",
    "knn_accuracy",
    "lime",
    "normalize",
    "normalize_magnitude",
    "normalize_signed",
    "occlusion",
    "overlay",
    "patch_noise",
    "pca_2d",
    "pointing_game",
    "project_layers",
    "project_to_input",
    "random_maps",
    "randomized_call",
    "randomized_copy",
    "rank_correlation",
    "receptive_fields",
    "region_masks",
    "relu_rule",
    "saliency",
    "smooth_grad",
    "structural_similarity",
    "to_rgb",
    "to_uint8",
    "top_channels",
    "top_feature_maps",
    "update_top_k",
    "upsample",
    "visualize_features",
]
