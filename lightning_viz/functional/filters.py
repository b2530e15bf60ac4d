"""How noisy conv filters are: Geary's C, a spatial autocorrelation score."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_viz.functional._validation import all_finite


def filter_noise(weight: Tensor) -> Tensor:
    """Geary's C of each filter of a conv weight.

    Every (out, in) kernel slice is centred on its own mean; neighbours are the 4 rook-adjacent
    taps. A filter pools its slices by variance weighting::

        C_f = (n - 1) * sum_slices sum_adjacent (x_i - x_j)^2
              / (2 * W * sum_slices sum_i (x_i - mean_slice)^2)

    with ``n = kh * kw`` taps and ``W`` adjacent pairs per slice. About 1 for white noise (a fresh
    init), towards 0 for smooth filters, above 1 for checkerboards. A filter with no variation at
    all (a constant kernel) scores 0. C does not depend on scale: each filter is divided by its
    largest tap first, so a diverged layer (weights of 1e18 and more, whose squares overflow
    float32) still reads its C.

    Args:
        weight: (out_channels, in_channels, kh, kw) with kh, kw >= 2 (any float dtype or device).

    Returns:
        (out_channels,) float32 on the weight's device.

    Raises:
        ValueError: not a 4-D weight, or kernels smaller than 2x2.
    """
    if weight.dim() != 4:
        raise ValueError(
            f"`weight` must be a conv weight (out, in, kh, kw), got {tuple(weight.shape)}"
        )
    kh, kw = weight.shape[-2:]
    if kh < 2 or kw < 2:
        raise ValueError(
            f"Geary's C needs kernels of at least 2x2 to have neighbours, got {kh}x{kw}"
        )
    taps = kh * kw
    pairs = kh * (kw - 1) + (kh - 1) * kw
    # C reads two quadratic forms of each slice x: sum_adjacent (x_i - x_j)^2 = x'Lx (L the grid's
    # Laplacian) and sum_i (x_i - mean)^2 = x'(I - 1/n)x; summed over slices, both read the
    # filter's Gram matrix sum_slices x x' (one batched GEMM, one pass over the weights).
    # Both forms ignore a slice's offset: subtracting its first tap keeps float32 from cancelling
    # on slices whose mean dwarfs their variation.
    x = weight.detach().float().flatten(2)
    x = x - x[..., :1]
    x = x / _largest(x, dims=(1, 2))
    gram = torch.bmm(x.transpose(1, 2), x)
    adjacent, variation = torch.einsum("fij,kij->kf", gram, _quadratic_forms(kh, kw, x.device))
    score = (taps - 1) * adjacent / (2 * pairs * variation)
    return score.nan_to_num(nan=0.0)


def patch_noise(
    images: Tensor, kernel_size: Sequence[int], max_images: int = 8, max_patches: int = 4096
) -> Tensor:
    """How noisy images are at a conv's scale: the Geary's C of their kernel-sized patches,
    each weighted by its variance.

    Each non-overlapping ``kernel_size`` patch of the first ``max_images`` images is scored as
    :func:`filter_noise` scores a filter (its channels are the slices); at most ``max_patches``
    patches, evenly spaced. A first layer's update is a sum of patches weighted by the gradient,
    so a patch counts as much as it varies: the median of all patches read objects on a flat
    background with 1% noise as noise (0.93 to 0.96), where the weighted mean reads 0.27 to
    0.36. Photos read 0.13 to 0.63 at 5x5 and 7x7 (crops of scikit-learn's and scikit-image's
    sample images: brick the smoothest, rocket and coffee the noisiest), the digits 0.09 to
    0.15, shapes on a background of white noise 0.78 to 0.92: there a first layer's update
    can be noise in a healthy run.

    Args:
        images: (N, C, H, W) or (C, H, W), what the conv reads (any float dtype or device).
        kernel_size: the conv's (kh, kw), each at least 2.

    Returns:
        () float32 on the images' device (no host sync); NaN when no patch fits or none varies.
    """
    x = images.detach().float()
    x = x[None] if x.dim() == 3 else x[:max_images]
    kh, kw = (int(k) for k in kernel_size)
    if x.shape[-2] < kh or x.shape[-1] < kw:
        return torch.full((), float("nan"), device=x.device)
    patches = F.unfold(x, (kh, kw), stride=(kh, kw)).transpose(1, 2)
    patches = patches.reshape(-1, x.shape[1], kh, kw)
    if len(patches) > max_patches:
        patches = patches[torch.linspace(0, len(patches) - 1, max_patches).long()]
    variance = (patches - patches.mean(dim=(2, 3), keepdim=True)).square().sum(dim=(1, 2, 3))
    return (filter_noise(patches) * variance).sum() / variance.sum()


def _largest(x: Tensor, dims: tuple[int, ...] | None = None) -> Tensor:
    """The largest magnitude of ``x`` (over ``dims``, kept for broadcasting), at least the
    smallest normal float32: dividing by it keeps every value within [-1, 1]."""
    largest = x.abs().amax() if dims is None else x.abs().amax(dim=dims, keepdim=True)
    return largest.clamp(min=torch.finfo(torch.float32).tiny)


@functools.cache
def _quadratic_forms(kh: int, kw: int, device: torch.device) -> Tensor:
    """(2, n, n) for kernels of kh x kw = n taps: the rook-adjacency Laplacian, and the centring
    matrix I - 1/n."""
    taps = torch.arange(kh * kw, device=device).view(kh, kw)
    first = torch.cat([taps[:, :-1].flatten(), taps[:-1, :].flatten()])
    second = torch.cat([taps[:, 1:].flatten(), taps[1:, :].flatten()])
    adjacency = torch.zeros(kh * kw, kh * kw, device=device)
    adjacency[first, second] = 1.0
    adjacency = adjacency + adjacency.T
    laplacian = torch.diag(adjacency.sum(dim=1)) - adjacency
    centring = torch.eye(kh * kw, device=device) - 1.0 / (kh * kw)
    return torch.stack([laplacian, centring])


SAMPLE_SIZE = 4096
"""How many weights :func:`weight_sample` keeps to compare consecutive measurements."""


def weight_sample(numel: int, size: int = SAMPLE_SIZE, seed: int = 0) -> Tensor:
    """Fixed indices of at most ``size`` of a weight's ``numel`` entries (all of them when it
    has fewer), drawn from a private generator: the global RNG is not touched."""
    if numel <= size:
        return torch.arange(numel)
    return torch.randperm(numel, generator=torch.Generator().manual_seed(seed))[:size].sort().values


REFERENCE_FRACTION = 0.2
"""The share of a large conv weight's kernel slices that :func:`reference_slices` keeps."""
WHOLE_REFERENCE_NUMEL = 16384
"""Weights with at most this many values (64 KB in float32: first layers, small nets) are kept
whole as the reference."""


def reference_slices(
    shape: Sequence[int], fraction: float = REFERENCE_FRACTION, seed: int = 0
) -> Tensor | None:
    """Which (out, in) kernel slices of a conv weight of ``shape`` to keep as the reference that
    the weights are compared with (:func:`filter_health`): None (all of them) for weights of at
    most :data:`WHOLE_REFERENCE_NUMEL` values, else ``ceil(in * fraction)`` in-channels per output
    filter, as (out, m) indices.

    Whole slices keep each filter's spatial structure (Geary's C of the update needs it) and
    every filter is represented; the slices of filter ``o`` are a fixed random set of
    in-channels shifted by ``o``, drawn from a private generator (the global RNG is not
    touched), so the same shape always gives the same indices and they need not be stored.
    """
    out, inputs = int(shape[0]), int(shape[1])
    kept = math.ceil(inputs * fraction)
    if math.prod(int(s) for s in shape) <= WHOLE_REFERENCE_NUMEL or kept >= inputs:
        return None
    chosen = torch.randperm(inputs, generator=torch.Generator().manual_seed(seed))[:kept]
    return (chosen[None, :] + torch.arange(out)[:, None]) % inputs


def kernel_slices(weight: Tensor, slices: Tensor | None) -> Tensor:
    """``weight[o, slices[o]]`` for every output filter o: (out, m, kh, kw); ``weight`` itself
    when ``slices`` is None."""
    if slices is None:
        return weight
    kernel = (None,) * (weight.dim() - 2)
    index = slices.to(weight.device)[(..., *kernel)].expand(-1, -1, *weight.shape[2:])
    return weight.gather(1, index)


def _default_norm(count: int, fan_in: int) -> float:
    """The norm of ``count`` weights drawn by PyTorch's default conv init for ``fan_in``
    (``kaiming_uniform_(a=sqrt(5))``: variance ``1 / (3 fan_in)``)."""
    return math.sqrt(count / (3 * fan_in))


def filter_health(
    weight: Tensor,
    initial: Tensor,
    noise_threshold: float = 0.9,
    sample: Tensor | None = None,
    previous: Tensor | None = None,
    slices: Tensor | None = None,
    fan_in: int | None = None,
) -> dict[str, Tensor]:
    """How smooth a conv layer's filters are and how far, and how, training moved them.

    Args:
        weight: the conv weight now, (out, in, kh, kw); or a 1-D or 3-D conv's (out, in,
            *kernel), whose Geary's C (``filter_noise``, ``noise``, ``update_noise``) is
            NaN: it reads 2-D filters.
        initial: the same weight at the start of training (any device; moved to the weight's),
            whole or, with ``slices``, the kernel slices :func:`kernel_slices` picks.
        noise_threshold: a filter with Geary's C at or above it counts as noisy.
        sample: flat indices of the weights compared with the previous measurement
            (:func:`weight_sample`); default all of them.
        previous: ``weight.flatten()[sample]`` at the previous measurement, if any.
        slices: the (out, m) in-channels of each filter that ``initial`` holds
            (:func:`reference_slices`); None: ``initial`` is the whole weight. The measures
            that compare with ``initial`` (drift, learned, norm ratio, update noise) then read
            those slices of the weight only: estimates from a fifth of a large layer's weights.
        fan_in: the fan-in PyTorch's default init reads from the layer's stored weight (a
            transposed conv's is its out-channels per group times the kernel); default
            ``weight``'s in-channels times its kernel (a ``Conv2d``).

    Moves are measured against the reference norm ``R = max(||W0||, ||W_default||)``, where
    ``||W_default||`` is the norm PyTorch's default init (``kaiming_uniform_(a=sqrt(5))``,
    variance ``1 / (3 fan_in)``) gives as many weights: a layer initialized smaller (torchvision
    inits every conv by its fan-out, so a MobileNetV2 depthwise conv starts at a quarter to a
    twentieth of that scale, a ResNet stem at about half) moves far from its own small start in
    a healthy first epoch (a MobileNetV2 under SGD at lr 0.05: median drift 7.3 and step cosine
    0.14 from its own init, 0.95 and 0.72 against ``R``, at validation accuracy 1.0).

    The norms are taken of tensors divided by their largest magnitude, and the scales multiplied
    back into the ratios: a diverged layer (weights of 1e18 and more, whose squares overflow
    float32) reads its drift, say 1e20, not inf or NaN.

    Returns:
        All float32 tensors on the weight's device (no host sync):

        - ``filter_noise`` (out,): Geary's C of each filter; ``noise``: its median;
          ``noisy_fraction``: the fraction of filters with C >= ``noise_threshold``;
        - ``drift``: ``||W - W0|| / R``;
        - ``learned``: ``||(W - W0) - proj_W0(W - W0)|| / R``, the part of the change
          orthogonal to W0: what the layer learned other than growing or shrinking (weight decay
          alone cannot move it; all of the change where W0 is zero);
        - ``norm_ratio``: ``||W|| / ||W0||`` (a collapse towards 0 shows here);
        - ``step_cosine``: the cosine between the sampled weights now and ``previous`` (NaN
          without it, or where it is all zeros: a zero-initialized conv's first), ``previous``
          taken at least at the default init's norm for as many weights (the change added as it
          is): near 1 when training refined the layer, near 0 or below when something overwrote
          it;
        - ``update_noise``: the median C of ``W - W0``, the structure training added;
        - ``finite``: 1.0 when every weight is finite, else 0.0;
        - ``sample``: ``W.flatten()[sample]``, the next measurement's ``previous``.
    """
    weight = weight.detach()
    flat = weight.float().flatten()
    initial = initial.to(weight.device, non_blocking=True).float()
    compared = kernel_slices(weight, slices).float()
    tiny = torch.finfo(torch.float32).tiny
    planar = weight.dim() == 4  # Geary's C reads 2-D filters: a 1-D or 3-D conv's is unknown
    unknown = torch.full(weight.shape[:1], math.nan, device=weight.device)
    noise = filter_noise(weight) if planar else unknown
    update = compared - initial
    fan_in = weight.shape[1] * weight[0, 0].numel() if fan_in is None else fan_in
    initial_scale, update_scale, compared_scale = map(_largest, (initial, update, compared))
    initial_unit, update_unit = initial / initial_scale, update / update_scale
    initial_norm = initial_unit.norm().clamp(min=tiny)
    default_norm = _default_norm(initial.numel(), fan_in) / initial_scale
    reference_norm = torch.maximum(initial_norm, default_norm)
    # divided once per factor: a zero init (norm clamped to the smallest float) reads 0, not
    # 0/0 (its square underflows)
    along = torch.dot(update_unit.flatten(), (initial_unit / initial_norm).flatten())
    along = along / initial_norm
    orthogonal_unit = update_unit - along * initial_unit
    update_ratio = update_scale / initial_scale
    sampled = flat if sample is None else flat[sample.to(weight.device)]
    step_cosine = torch.full((), float("nan"), device=weight.device)
    if previous is not None:
        previous = previous.to(weight.device).float()
        now_scale, previous_scale = _largest(sampled), _largest(previous)
        now, before = sampled / now_scale, previous / previous_scale
        # the previous weights grown to the default init's norm where below it, the change
        # added as it is (each in its own scale: a diverged layer's squares overflow float32)
        below = _default_norm(previous.numel(), fan_in) / (previous_scale * before.norm()).clamp(
            min=tiny
        )
        grow = below.clamp(min=1) - 1
        now = now + before * (grow * previous_scale / now_scale)
        norms = (now.norm() * before.norm()).clamp(min=tiny)
        step_cosine = torch.dot(now, before) / norms
        step_cosine = torch.where(before.norm() > 0, step_cosine, torch.nan)  # zeros: no direction
    return {
        "filter_noise": noise,
        "noise": noise.median(),
        "noisy_fraction": (noise >= noise_threshold).float().mean(),
        "drift": update_ratio * (update_unit.norm() / reference_norm),
        "learned": update_ratio * (orthogonal_unit.norm() / reference_norm),
        "norm_ratio": compared_scale
        / initial_scale
        * ((compared / compared_scale).norm() / initial_norm),
        "step_cosine": step_cosine,
        "update_noise": filter_noise(update).median() if planar else noise.median(),
        "finite": all_finite(flat).float(),
        "sample": sampled,
    }
