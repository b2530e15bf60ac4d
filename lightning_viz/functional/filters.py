"""How noisy conv filters are: Geary's C, a spatial autocorrelation score."""

from __future__ import annotations

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
