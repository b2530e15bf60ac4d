"""How noisy conv filters are: Geary's C, a spatial autocorrelation score."""

from __future__ import annotations

import torch
from torch import Tensor


def filter_noise(weight: Tensor) -> Tensor:
    """Geary's C of each filter of a conv weight.

    Every (out, in) kernel slice is centred on its own mean; neighbours are the 4 rook-adjacent
    taps. A filter pools its slices by variance weighting::

        C_f = (n - 1) * sum_slices sum_adjacent (x_i - x_j)^2
              / (2 * W * sum_slices sum_i (x_i - mean_slice)^2)

    with ``n = kh * kw`` taps and ``W`` adjacent pairs per slice. About 1 for white noise (a fresh
    init), towards 0 for smooth filters, above 1 for checkerboards. A filter with no variation at
    all (a constant kernel) scores 0.

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
    x = weight.detach().float()
    x = x - x.mean(dim=(2, 3), keepdim=True)
    horizontal = (x[..., :, 1:] - x[..., :, :-1]).square().sum(dim=(1, 2, 3))
    vertical = (x[..., 1:, :] - x[..., :-1, :]).square().sum(dim=(1, 2, 3))
    variation = x.square().sum(dim=(1, 2, 3))
    taps = kh * kw
    pairs = kh * (kw - 1) + (kh - 1) * kw
    score = (taps - 1) * (horizontal + vertical) / (2 * pairs * variation)
    return score.nan_to_num(nan=0.0)


def filter_health(
    weight: Tensor, initial: Tensor, noise_threshold: float = 0.9
) -> dict[str, Tensor]:
    """How smooth a conv layer's filters are and how far training moved them, on the device.

    Args:
        weight: the conv weight now, (out, in, kh, kw).
        initial: the same weight at the start of training (any device; moved to the weight's).
        noise_threshold: a filter with Geary's C at or above it counts as noisy.

    Returns:
        ``filter_noise`` (out,) Geary's C of each filter; ``noise`` its median;
        ``noisy_fraction`` the fraction of filters with C >= ``noise_threshold``; ``drift``
        ``||W - W_init|| / ||W_init||``; ``update_noise`` the median C of ``W - W_init`` (the
        structure training added); ``finite`` 1.0 when every weight is finite, else 0.0. All
        float32 tensors on the weight's device: no host sync.
    """
    weight = weight.detach()
    initial = initial.to(weight.device, non_blocking=True)
    noise = filter_noise(weight)
    update = weight.float() - initial
    return {
        "filter_noise": noise,
        "noise": noise.median(),
        "noisy_fraction": (noise >= noise_threshold).float().mean(),
        "drift": update.norm() / initial.norm().clamp(min=torch.finfo(torch.float32).tiny),
        "update_noise": filter_noise(update).median(),
        "finite": weight.isfinite().all().float(),
    }
