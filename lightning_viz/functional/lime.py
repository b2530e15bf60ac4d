"""LIME (Ribeiro et al., 2016) for image classifiers, batched on the device: which segments of
an image a locally fitted linear model credits with the class's probability.

LIME hides random subsets of an image's segments (superpixels), records the class's
probability for each variant, and fits a weighted ridge regression of those probabilities on
which segments were visible, the variants weighted by their closeness to the whole image. A
segment's coefficient is the probability it adds, in that linear approximation, around this
image. It approximates the model only near the image, and it is stochastic: another draw of
variants gives other weights (the fit's R^2, returned, says how well the surrogate fits).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from lightning_viz.functional._capture import Forward
from lightning_viz.functional._pass import default_max_batch
from lightning_viz.functional._validation import (
    check_fraction,
    check_int,
    check_logits,
    check_non_negative,
    check_pair,
    target_index,
)
from lightning_viz.functional.gradcam import OutputTransform, class_scores, probabilities_of

KERNEL_WIDTH = 0.25
"""Width of the exponential kernel on the cosine distance to the whole image (lime_image's)."""


class LimeExplanation(NamedTuple):
    """What :func:`lime` finds for a batch of N images with at most S segments each."""

    maps: Tensor
    """(N, H, W) float32: each pixel's segment weight."""
    weights: Tensor
    """(N, S) float32: the surrogate's coefficient per segment (0 past an image's segments)."""
    intercept: Tensor
    """(N,) float32: the surrogate's probability (or score) with every segment hidden."""
    score: Tensor
    """(N,) float32: the weighted R^2 of the surrogate on the variants (1: a perfect fit; NaN
    where hiding segments did not move the target, as a saturated probability does: nothing to
    fit)."""


def grid_segments(size: tuple[int, int], cells: int | Sequence[int], device=None) -> Tensor:
    """(H, W) long segment labels of a regular grid of ``cells`` (rows, columns) cells,
    numbered row-major from 0."""
    rows, columns = check_pair("cells", cells)
    height, width = size
    if rows > height or columns > width:
        raise ValueError(f"`cells` {(rows, columns)} is finer than the images, {size}")
    row = torch.arange(height, device=device) * rows // height
    column = torch.arange(width, device=device) * columns // width
    return row[:, None] * columns + column[None, :]


def slic_segments(display: Tensor, segments: int = 50, compactness: float = 10.0) -> Tensor:
    """(N, H, W) long SLIC superpixels (Achanta et al., 2012) of display images (N, 3, H, W)
    in [0, 1], by scikit-image, numbered from 0 per image, on the images' device.

    Raises:
        ImportError: scikit-image is not installed (``pip install scikit-image``).
    """
    from skimage.segmentation import slic

    pictures = display.detach().float().permute(0, 2, 3, 1).cpu().numpy()
    labels = np.stack(
        [
            slic(picture, n_segments=segments, compactness=compactness, start_label=0)
            for picture in pictures
        ]
    )
    return torch.as_tensor(labels, dtype=torch.long, device=display.device)


def lime(
    model: nn.Module,
    images: Tensor,
    segments: Tensor,
    targets: Tensor | Sequence[int] | int | None = None,
    samples: int = 256,
    keep: float = 0.5,
    baseline: float = 0.0,
    ridge: float = 1.0,
    seed: int = 0,
    output_transform: OutputTransform = class_scores,
    forward: Forward | None = None,
    max_batch: int | None = None,
    probabilities: bool | str = True,
) -> LimeExplanation:
    """LIME's segment weights for each image's target class.

    For image ``i`` a generator seeded with ``seed + i`` (so a probe's draws do not depend on
    the others in the batch; never the global generator) draws ``samples`` masks that keep each
    segment with probability ``keep``; the first mask keeps all, as lime's. Hidden segments
    take ``baseline``. All variants of all images run as forwards of at most ``max_batch``,
    without gradients, and the target's softmax probability (or score) is fitted by ridge regression
    (penalty ``ridge``, intercept not penalized: scikit-learn's ``Ridge(alpha=ridge)`` with
    ``sample_weight``) on the visible-segment indicators, each variant weighted by
    ``sqrt(exp(-d^2 / 0.25^2))`` with ``d`` its cosine distance to the all-visible mask
    (lime_image's kernel). The fits of all images are one batched solve on the device.

    Args:
        model: the network; run as ``model(x)`` unless ``forward`` is given, in eval mode.
        images: (N, C, H, W) on the model's device.
        segments: (H, W) labels shared by all images, or (N, H, W) one map each; integers from
            0 (:func:`grid_segments`, :func:`slic_segments`).
        targets: the class to explain per image (N,), one for all, or None for the predicted one.
        samples: variants per image (lime's default is 1000; a few hundred suffice for 50-100
            segments).
        keep: the probability that a segment stays visible in a variant.
        baseline: the value hidden pixels take (0: the mean colour of normalized images).
        ridge: the ridge penalty.
        seed: seeds the masks.
        output_transform: turns the model's output into (N, num_classes) scores.
        forward: how to run the model when not ``model(x)``.
        max_batch: the most variants per forward; None: 64 on a CPU, 256 elsewhere.
        probabilities: fit the softmax probability (True or ``"softmax"``), each class's
            sigmoid (``"sigmoid"``: a multi-label model) or the raw score (False).

    Returns:
        a :class:`LimeExplanation`.

    Raises:
        ValueError: not a batch of images, segments of another size or not labels from 0,
            bad arguments, targets out of range.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"`images` must have shape (N, C, H, W) with N >= 1, got {shape}")
    n, size = len(images), tuple(images.shape[-2:])
    labels = _checked_segments(segments, n, size, images.device)
    samples = check_int("samples", samples, minimum=2)
    keep = check_fraction("keep", keep)
    ridge = check_non_negative("ridge", ridge)
    check_int("seed", seed, minimum=0)
    max_batch = check_int("max_batch", max_batch, allow_none=True) or default_max_batch(
        images.device
    )
    run = forward or model
    counts = labels.flatten(1).amax(dim=1) + 1  # segments per image
    width = int(counts.max())
    masks = torch.stack(
        [_masks(samples, width, keep, seed + i, images.device) for i in range(n)]
    )  # (N, samples, S)
    masks *= (torch.arange(width, device=images.device) < counts[:, None])[:, None]

    with torch.no_grad(), torch.autocast(device_type=images.device.type, enabled=False):
        reference = check_logits(output_transform(run(images)), n).float()
        index = target_index(targets, reference)
        fitted = []
        rows = torch.arange(n * samples, device=images.device)
        for chunk in rows.split(max_batch):
            image, sample = chunk // samples, chunk % samples
            shown = masks[image, sample].gather(1, labels[image].flatten(1))
            shown = shown.view(len(chunk), 1, *size)
            variant = images[image].float() * shown + baseline * (1 - shown)
            variant = variant.round().clamp(0, 255) if images.dtype == torch.uint8 else variant
            scores = check_logits(output_transform(run(variant.to(images.dtype))), len(chunk))
            scores = probabilities_of(scores, probabilities)
            fitted.append(scores.gather(1, index[image, None])[:, 0])
    target = torch.cat(fitted).view(n, samples)
    visible = masks.sum(dim=2)
    distance = 1 - (visible / counts[:, None]).sqrt()  # cosine distance to the all-visible mask
    kernel = torch.exp(-distance.square() / KERNEL_WIDTH**2).sqrt()
    weights, intercept, score = _weighted_ridge(masks, target, kernel, ridge)
    maps = weights.gather(1, labels.flatten(1)).view(n, *size)
    return LimeExplanation(maps, weights, intercept, score)


def _masks(samples: int, width: int, keep: float, seed: int, device: torch.device) -> Tensor:
    """(samples, width) 0/1 float masks of one image, the first keeping every segment."""
    generator = torch.Generator(device=device).manual_seed(seed)
    masks = (torch.rand(samples, width, generator=generator, device=device) < keep).float()
    masks[0] = 1.0
    return masks


POOR_FIT = 0.5
"""A surrogate whose R^2 is under this explains too little of how the target moves over the
variants for its segment weights to be read as the model's reasons (LIMELogger says which
probes' maps these are, under the image: they look as confident as the others)."""


FLAT_TARGET = 1e-6
"""A target whose weighted spread over the variants is at most this (relative to its size, at
least 1) did not move: its fit has no R^2."""


def _weighted_ridge(
    features: Tensor, target: Tensor, weight: Tensor, penalty: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Batched weighted ridge regression with an unpenalized intercept, as scikit-learn's
    ``Ridge(alpha=penalty).fit(features, target, sample_weight=weight)``: features and target
    are centred on their weighted means, then ``(X^T W X + penalty I) b = X^T W y``.

    Returns the (N, S) coefficients, the (N,) intercepts and the (N,) weighted R^2 (NaN for a
    flat target, :data:`FLAT_TARGET`).
    """
    x, y = features.double(), target.double()
    w = weight.double() / weight.double().sum(dim=1, keepdim=True)
    x_mean = (w[..., None] * x).sum(dim=1, keepdim=True)
    y_mean = (w * y).sum(dim=1, keepdim=True)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.transpose(1, 2) @ (w[..., None] * xc)
    eye = torch.eye(x.shape[2], dtype=x.dtype, device=x.device)
    # the penalty applies to the unnormalized weights' scale, as scikit-learn's
    scale = weight.double().sum(dim=1)[:, None, None]
    coefficients = torch.linalg.solve(
        gram + penalty / scale * eye, (xc.transpose(1, 2) @ (w * yc)[..., None])
    )[..., 0]
    intercept = y_mean[:, 0] - (x_mean[:, 0] * coefficients).sum(dim=1)
    residual = yc - (xc @ coefficients[..., None])[..., 0]
    total = (w * yc.square()).sum(dim=1)
    score = 1 - (w * residual.square()).sum(dim=1) / total.clamp(min=1e-30)
    flat = total.sqrt() <= FLAT_TARGET * y.abs().amax(dim=1).clamp(min=1.0)
    score = torch.where(flat, torch.nan, score)
    return coefficients.float(), intercept.float(), score.float()


def _checked_segments(segments: Tensor, n: int, size: tuple[int, int], device) -> Tensor:
    """``segments`` as (N, H, W) long labels on ``device``."""
    if (
        not isinstance(segments, Tensor)
        or segments.dim() not in (2, 3)
        or tuple(segments.shape[-2:]) != size
    ):
        shape = tuple(segments.shape) if isinstance(segments, Tensor) else type(segments).__name__
        raise ValueError(f"`segments` must be (H, W) or (N, H, W) labels of {size}, got {shape}")
    if segments.dim() == 3 and len(segments) != n:
        raise ValueError(f"`segments` has {len(segments)} maps for {n} images")
    if segments.is_floating_point() or segments.min() < 0:
        raise ValueError("`segments` must hold integer labels from 0")
    return segments.to(device=device, dtype=torch.long).expand(n, *size)
