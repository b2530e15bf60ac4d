"""Gradient attributions of a class score to the input pixels: vanilla saliency (Simonyan et al.,
2014), SmoothGrad (Smilkov et al., 2017), integrated gradients (Sundararajan et al., 2017) and
expected gradients (Erion et al., 2021; SHAP's GradientExplainer).

Each is a weighted sum of input gradients at points around or along a path to the image. The
points of all images (noise samples, path steps) run as batched forwards and backwards of at most
``max_batch`` images; the random draws come from a generator seeded with ``seed``, never from the
global generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from lightning_viz.functional._capture import Forward
from lightning_viz.functional._pass import default_max_batch, gradient_pass
from lightning_viz.functional._validation import (
    check_int,
    check_logits,
    check_non_negative,
    target_index,
)
from lightning_viz.functional.gradcam import OutputTransform, class_scores

Targets = Tensor | Sequence[int] | int | None


def saliency(
    model: nn.Module,
    images: Tensor,
    targets: Targets = None,
    absolute: bool = True,
    output_transform: OutputTransform = class_scores,
    forward: Forward | None = None,
) -> Tensor:
    """Vanilla gradient saliency: the gradient of the target's score to each input value.

    captum's ``Saliency`` (``abs=absolute``). Run the model in eval mode; parameters' ``.grad``
    are not touched; autocast is off inside.

    Args:
        model: the network; run as ``model(x)`` unless ``forward`` is given.
        images: (N, C, H, W) on the model's device.
        targets: the class to explain per image (N,), one for all, or None for the predicted one.
        absolute: return the gradient's magnitude (the usual saliency map) instead of its sign.
        output_transform: turns the model's output into (N, num_classes) scores.
        forward: how to run the model when not ``model(x)``.

    Returns:
        (N, C, H, W) float32.

    Raises:
        ValueError: not a batch of images, images on another device than the model, targets out
            of range, a model output that is not (N, num_classes) scores.
    """
    (gradient,) = _gradients_at(
        model, images, targets, None, 1, output_transform, forward, len(images)
    ).unbind(dim=1)
    return gradient.abs() if absolute else gradient


def smooth_grad(
    model: nn.Module,
    images: Tensor,
    targets: Targets = None,
    samples: int = 16,
    stdev: float | None = None,
    absolute: bool = True,
    seed: int = 0,
    output_transform: OutputTransform = class_scores,
    forward: Forward | None = None,
    max_batch: int | None = None,
) -> Tensor:
    """SmoothGrad: the mean saliency over ``samples`` noisy copies of each image.

    captum's ``NoiseTunnel(Saliency(model, abs=absolute), nt_type="smoothgrad")`` with
    ``nt_samples=samples, stdevs=stdev``, for the same noise: (N * samples, C, H, W) normal values
    drawn in one call from a generator seeded with ``seed``, copy ``k`` of image ``i`` in row
    ``i * samples + k`` (captum draws the same from the global generator after
    ``torch.manual_seed(seed)``).

    Args:
        samples: noisy copies per image.
        stdev: the noise's standard deviation; None: 15% of the images' value range (Smilkov et
            al. found 10-20% best).
        absolute: average the gradients' magnitudes (captum's default) instead of the gradients.
        seed: seeds the noise.
        max_batch: the most noisy copies per forward and backward; None: 64 on a CPU, 256
            elsewhere.
        model, images, targets, output_transform, forward: as in :func:`saliency`.

    Returns:
        (N, C, H, W) float32.
    """
    samples = check_int("samples", samples)
    check_int("seed", seed, minimum=0)
    if stdev is None:
        value_range = images.detach().float()
        stdev = 0.15 * float(value_range.max() - value_range.min())
    stdev = check_non_negative("stdev", stdev)

    def noisy(x: Tensor) -> Tensor:
        generator = torch.Generator(device=x.device).manual_seed(seed)
        noise = torch.normal(
            0.0, stdev, size=(len(x) * samples, *x.shape[1:]), generator=generator, device=x.device
        )
        return x.repeat_interleave(samples, dim=0) + noise

    gradients = _gradients_at(
        model, images, targets, noisy, samples, output_transform, forward, max_batch
    )
    return (gradients.abs() if absolute else gradients).mean(dim=1)


def integrated_gradients(
    model: nn.Module,
    images: Tensor,
    targets: Targets = None,
    baseline: float | Tensor = 0.0,
    steps: int = 16,
    output_transform: OutputTransform = class_scores,
    forward: Forward | None = None,
    max_batch: int | None = None,
) -> Tensor:
    """Integrated gradients from ``baseline`` to each image, by Gauss-Legendre quadrature.

    ``(x - b) * integral_0^1 dF/dx(b + a (x - b)) da`` with ``steps`` Gauss-Legendre nodes:
    captum's ``IntegratedGradients`` (its default method) with ``n_steps=steps``. The
    attributions of an image sum to about ``F(x) - F(b)`` (completeness). Gauss-Legendre is exact
    for polynomials of degree ``2 * steps - 1`` along the path; 16 steps are plenty for a ReLU
    network's piecewise-linear path on probe images (captum's default is 50).

    Args:
        baseline: the reference image: a number for every pixel (0: the mean colour of
            normalized images), or a tensor that broadcasts to (N, C, H, W).
        steps: points along the path.
        max_batch: the most path points per forward and backward; None: 64 on a CPU, 256
            elsewhere.
        model, images, targets, output_transform, forward: as in :func:`saliency`.

    Returns:
        (N, C, H, W) float32, in the units of the score.
    """
    steps = check_int("steps", steps)
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas = torch.as_tensor(0.5 * (nodes + 1), dtype=torch.float32, device=images.device)
    step_weights = torch.as_tensor(0.5 * weights, dtype=torch.float32, device=images.device)
    start = _baseline_like(baseline, images)

    def along_path(x: Tensor) -> Tensor:
        difference = (x - start)[:, None]
        return (start[:, None] + alphas[None, :, None, None, None] * difference).flatten(0, 1)

    gradients = _gradients_at(
        model, images, targets, along_path, steps, output_transform, forward, max_batch
    )
    path_integral = torch.einsum("nschw,s->nchw", gradients, step_weights)
    return (images.detach().float() - start) * path_integral


def expected_gradients(
    model: nn.Module,
    images: Tensor,
    references: Tensor,
    targets: Targets = None,
    samples: int = 16,
    seed: int = 0,
    output_transform: OutputTransform = class_scores,
    forward: Forward | None = None,
    max_batch: int | None = None,
) -> Tensor:
    """Expected gradients: integrated gradients averaged over baselines drawn from
    ``references``, with one random point on each path (Erion et al.; SHAP's GradientExplainer).

    ``mean_k (x - r_k) * dF/dx(r_k + a_k (x - r_k))`` over ``samples`` draws of a reference
    ``r_k`` and a position ``a_k`` uniform in [0, 1): an unbiased estimate of integrated
    gradients averaged over the reference distribution, which needs no choice of one baseline.
    The draws come from a generator seeded with ``seed``: first the (N, samples) reference
    indices (``torch.randint``), then the (N, samples) positions (``torch.rand``). With the same
    draws it is captum's ``GradientShap`` with ``stdevs=0``.

    Args:
        references: (R, C, H, W) images the baselines are drawn from (other probes, or a batch of
            data), on the images' device.
        samples: (reference, position) draws per image.
        seed: seeds the draws.
        max_batch: the most points per forward and backward; None: 64 on a CPU, 256 elsewhere.
        model, images, targets, output_transform, forward: as in :func:`saliency`.

    Returns:
        (N, C, H, W) float32, in the units of the score.

    Raises:
        ValueError: references that are not images of the probes' shape and device, and the
            errors of :func:`saliency`.
    """
    samples = check_int("samples", samples)
    check_int("seed", seed, minimum=0)
    if (
        not isinstance(references, Tensor)
        or references.dim() != 4
        or references.shape[1:] != images.shape[1:]
        or len(references) == 0
    ):
        shape = tuple(references.shape) if isinstance(references, Tensor) else references
        raise ValueError(
            f"`references` must be (R, C, H, W) images shaped like the inputs, "
            f"{tuple(images.shape[1:])}, with R >= 1; got {shape}"
        )
    if references.device != images.device:
        raise ValueError(
            f"`references` are on {references.device} but the images are on {images.device}"
        )
    generator = torch.Generator(device=images.device).manual_seed(seed)
    shape = (len(images), samples)
    index = torch.randint(len(references), shape, generator=generator, device=images.device)
    positions = torch.rand(shape, generator=generator, device=images.device)
    drawn = references.detach().float()[index]  # (N, samples, C, H, W)
    differences = images.detach().float()[:, None] - drawn

    def on_paths(x: Tensor) -> Tensor:
        position = positions[..., None, None, None]
        return (position * x[:, None] + (1 - position) * drawn).flatten(0, 1)

    gradients = _gradients_at(
        model, images, targets, on_paths, samples, output_transform, forward, max_batch
    )
    return (differences * gradients).mean(dim=1)


def _baseline_like(baseline: float | Tensor, images: Tensor) -> Tensor:
    """``baseline`` as a float tensor of the images' shape and device."""
    if isinstance(baseline, Tensor):
        try:
            return baseline.detach().float().to(images.device).expand(images.shape).contiguous()
        except RuntimeError:
            raise ValueError(
                f"`baseline` of shape {tuple(baseline.shape)} does not broadcast to the images' "
                f"{tuple(images.shape)}"
            ) from None
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float)):
        raise ValueError(f"`baseline` must be a number or a tensor, got {baseline!r}")
    return torch.full(images.shape, float(baseline), device=images.device)


def _gradients_at(
    model: nn.Module,
    images: Tensor,
    targets: Targets,
    points_of: Callable[[Tensor], Tensor] | None,
    per_image: int,
    output_transform: OutputTransform,
    forward: Forward | None,
    max_batch: int | None,
) -> Tensor:
    """(N, per_image, C, H, W): the gradient of each image's target score at each of its points.

    ``points_of(x)`` maps the (N, C, H, W) float images to their (N * per_image, C, H, W) points,
    image-major; None: the points are the images (one chunk). The points run in chunks of
    ``max_batch``, one forward and one backward each; the first chunk's scores check the targets
    against the classes. Only predicted targets (None) of other points than the images cost one
    more forward, of the images without gradients.
    """
    check_int("max_batch", max_batch, allow_none=True)
    run = forward or model
    with gradient_pass(model, images) as x:
        if targets is None and points_of is not None:
            with torch.no_grad():
                targets = check_logits(output_transform(run(x)), len(x)).argmax(dim=1)
        points = x.detach() if points_of is None else points_of(x.detach())
        size = len(x) if points_of is None else max_batch or default_max_batch(x.device)
        index, gradients = None, []
        for start in range(0, len(points), size):
            chunk = points[start : start + size].detach().requires_grad_(True)
            scores = check_logits(output_transform(run(chunk)), len(chunk))
            if index is None:
                # the images' own scores, or an (N, classes) stand-in that gives the shape only
                logits = scores if points_of is None else scores.new_empty(len(x), scores.shape[1])
                index = target_index(targets, logits).repeat_interleave(per_image)
            chunk_index = index[start : start + size, None]
            (gradient,) = torch.autograd.grad(scores.gather(1, chunk_index).sum(), chunk)
            gradients.append(gradient)
    return torch.cat(gradients).float().view(len(images), per_image, *images.shape[1:])
