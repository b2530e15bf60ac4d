"""Sparsity and localization of feature maps, reduced on the device without a host sync."""

from __future__ import annotations

import math

import torch
from torch import Tensor

HISTOGRAM_BINS = 64


def activation_stats(activations: Tensor, bins: int = HISTOGRAM_BINS) -> dict[str, Tensor]:
    """Statistics of one batch of feature maps, every value a tensor on the input's device.

    Args:
        activations: (N, C, H, W) feature maps.
        bins: number of equal-width histogram bins between the batch's min and max.

    Returns:
        ``zero_fraction``: fraction of elements <= 0 (sparsity after a ReLU);
        ``channel_active``: (C,) bool, any positive value in this batch (OR these across batches
        to count dead channels);
        ``localization``: mean over images and active channels of ``1 - H(p) / log(H*W)``, with p
        the positive part normalized over space: 0 when spread evenly, 1 on a single pixel (NaN
        when no channel is active or maps are 1x1);
        ``active_maps``: how many (image, channel) maps have a positive value (the weight of
        ``localization`` when averaging over batches or ranks);
        ``mean``, ``std``: over all elements;
        ``nonfinite_fraction``: fraction of NaN or Inf elements;
        ``histogram_edges`` (bins + 1,) and ``histogram_counts`` (bins,): the finite values'
        histogram, for TensorBoard.

    Raises:
        ValueError: not a 4-D tensor, or bins < 1.
    """
    if activations.dim() != 4:
        raise ValueError(f"`activations` must be (N, C, H, W), got {tuple(activations.shape)}")
    if bins < 1:
        raise ValueError(f"`bins` must be at least 1, got {bins}")
    a = activations.detach().float()
    finite = a.isfinite()
    a = torch.where(finite, a, torch.zeros((), device=a.device))
    positive = a.clamp(min=0)
    mass = positive.sum(dim=(2, 3))
    stats = {
        "zero_fraction": (a <= 0).float().mean(),
        "channel_active": (mass > 0).any(dim=0),
        "localization": _localization(positive, mass),
        "active_maps": (mass > 0).sum(),
        "mean": a.mean(),
        "std": a.std() if a.numel() > 1 else torch.zeros((), device=a.device),
        "nonfinite_fraction": (~finite).float().mean(),
    }
    stats["histogram_edges"], stats["histogram_counts"] = _histogram(a, finite, bins)
    return stats


def _localization(positive: Tensor, mass: Tensor) -> Tensor:
    """Mean normalized negentropy of the spatial distribution of each active (image, channel)."""
    area = positive.shape[2] * positive.shape[3]
    active = mass > 0
    if area < 2:
        return torch.full((), math.nan, device=positive.device)
    p = positive.flatten(2) / mass.clamp(min=torch.finfo(mass.dtype).tiny)[..., None]
    entropy = -torch.special.xlogy(p, p).sum(dim=2)
    score = 1 - entropy / math.log(area)
    return (score * active).sum() / active.sum()


def _histogram(values: Tensor, counted: Tensor, bins: int) -> tuple[Tensor, Tensor]:
    """Equal-width bins over the counted values' range, by scatter_add: no data-dependent shape."""
    flat, weight = values.flatten(), counted.flatten().float()
    inf = torch.tensor(math.inf, device=values.device)
    low = torch.where(counted, values, inf).min().clamp(max=torch.finfo(values.dtype).max)
    high = torch.where(counted, values, -inf).max().clamp(min=low)
    width = (high - low).clamp(min=torch.finfo(values.dtype).eps) / bins
    edges = low + width * torch.arange(bins + 1, device=values.device, dtype=values.dtype)
    index = ((flat - low) / width).long().clamp(0, bins - 1)
    if values.is_cuda and torch.are_deterministic_algorithms_enabled():
        return edges, _count_by_sorting(index, counted.flatten(), bins)
    counts = torch.zeros(bins, device=values.device).scatter_add_(0, index, weight)
    return edges, counts


def _count_by_sorting(index: Tensor, counted: Tensor, bins: int) -> Tensor:
    """Bin counts with deterministic kernels (scatter_add_ has none on CUDA): sort the bin
    indices, then find where each bin starts."""
    index = torch.where(counted, index, bins).sort().values
    starts = torch.searchsorted(index, torch.arange(bins + 1, device=index.device))
    return starts.diff().float()
