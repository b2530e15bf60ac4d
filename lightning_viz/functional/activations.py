"""Sparsity and localization of feature maps, reduced on the device without a host sync."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

HISTOGRAM_BINS = 64


SATURATION_MARGIN = 0.02
"""A value within this fraction of the output range from a bound counts as saturated."""


def activation_stats(
    activations: Tensor,
    bins: int = HISTOGRAM_BINS,
    histogram_samples: int | None = None,
    bounds: tuple[float, float] | None = None,
) -> dict[str, Tensor]:
    """Statistics of one batch of feature maps, every value a tensor on the input's device.

    Written for the training hot path: a handful of passes over the tensor, no data-dependent
    shapes, no host sync.

    Args:
        activations: (N, C, H, W) feature maps.
        bins: number of equal-width histogram bins between the (sampled) values' min and max.
        histogram_samples: count the histogram over an evenly strided subset of at most this
            many values (None: all of them); the other statistics always use every value.
        bounds: the output range of a saturating activation (sigmoid: (0, 1), tanh: (-1, 1)),
            to count the values stuck near either end.

    Returns:
        ``zero_fraction``: fraction of elements <= 0 (sparsity after a ReLU);
        ``channel_active``: (C,) bool, any positive value in this batch (OR these across batches
        to count dead channels);
        ``localization``: mean over images and active channels of ``1 - H(p) / log(H*W)``, with p
        the positive part normalized over space: 0 when spread evenly, 1 on a single pixel (NaN
        when no channel is active or maps are 1x1);
        ``active_maps``: how many (image, channel) maps have a positive value (the weight of
        ``localization`` when averaging over batches or ranks);
        ``elements``: how many values (the weight of ``zero_fraction``);
        ``saturated_fraction``: with ``bounds``, the fraction of values within 2% of the range
        from either bound, where the activation's gradient all but vanishes (else 0);
        ``nonfinite``: bool, the batch holds NaN or Inf (then the other values may be NaN too);
        ``histogram_edges`` (bins + 1,) and ``histogram_counts`` (bins,), for TensorBoard.

    Raises:
        ValueError: not a 4-D tensor, bins < 1 or histogram_samples < 1.
    """
    if activations.dim() != 4:
        raise ValueError(f"`activations` must be (N, C, H, W), got {tuple(activations.shape)}")
    if bins < 1:
        raise ValueError(f"`bins` must be at least 1, got {bins}")
    if histogram_samples is not None and histogram_samples < 1:
        raise ValueError(f"`histogram_samples` must be at least 1, got {histogram_samples}")
    a = activations.detach().float()
    flat = a.flatten()
    count = flat.numel()
    positive = a.clamp(min=0)
    mass = positive.sum(dim=(2, 3))
    # sign().sum() is cheap on every device (count_nonzero is 10-30x slower on a CPU); NaN or
    # Inf anywhere makes the plain sum non-finite
    stats = {
        "zero_fraction": 1 - positive.sign().sum() / count,
        "channel_active": (mass > 0).any(dim=0),
        "localization": _localization(positive, mass),
        "active_maps": (mass > 0).sum(),
        "elements": a.new_full((), count),
        "saturated_fraction": _saturated_fraction(flat, bounds),
        "nonfinite": ~flat.sum().isfinite(),
    }
    if histogram_samples is not None and flat.numel() > histogram_samples:
        flat = flat[:: -(-flat.numel() // histogram_samples)]
    stats["histogram_edges"], stats["histogram_counts"] = _histogram(flat, bins)
    return stats


SUMMED = ("zero", "localization", "nonfinite", "elements", "active_maps", "saturated")
"""The columns of :func:`activation_sums`."""


def activation_sums(stats: dict[str, Tensor]) -> Tensor:
    """The numerators and denominators behind one batch's statistics, as one (6,) tensor.

    Summing these over batches or ranks, then :func:`stats_from_sums`, gives exactly the
    statistics of the batches put together (averaging per-batch means would not, when batches
    have different numbers of active maps). Columns: :data:`SUMMED`; maps without a
    localization (1x1) weigh nothing in it, so it stays undefined rather than 0.
    """
    elements = stats["elements"].float()
    active = stats["active_maps"].float() * stats["localization"].isfinite()
    return torch.stack(
        [
            stats["zero_fraction"] * elements,
            stats["localization"].nan_to_num(0.0) * active,
            stats["nonfinite"].float(),
            elements,
            active,
            stats["saturated_fraction"] * elements,
        ]
    )


def stats_from_sums(sums: Sequence[float]) -> dict[str, float | bool]:
    """``zero_fraction``, ``localization`` (NaN without active maps), ``saturated_fraction`` and
    ``nonfinite`` from (summed) :func:`activation_sums` on the host."""
    zero, localization, nonfinite, elements, active, saturated = sums
    return {
        "zero_fraction": zero / elements if elements else math.nan,
        "localization": localization / active if active > 0 else math.nan,
        "saturated_fraction": saturated / elements if elements else math.nan,
        "nonfinite": nonfinite > 0,
    }


def _saturated_fraction(flat: Tensor, bounds: tuple[float, float] | None) -> Tensor:
    if bounds is None:
        return flat.new_zeros(())
    low, high = bounds
    margin = SATURATION_MARGIN * (high - low)
    near = (flat <= low + margin) | (flat >= high - margin)
    return near.sum() / flat.numel()


def _localization(positive: Tensor, mass: Tensor) -> Tensor:
    """Mean normalized negentropy of the spatial distribution of each active (image, channel).

    With ``x`` the positive values of a map and ``M = sum(x)``, ``p = x / M`` has entropy
    ``H = log M - sum(x log x) / M``: one pass, no normalized copy of the maps.
    """
    area = positive.shape[2] * positive.shape[3]
    if area < 2:
        return torch.full((), math.nan, device=positive.device)
    active = mass > 0
    tiny = torch.finfo(mass.dtype).tiny
    # x * log(x + tiny) is x log x with 0 at 0, several times faster than xlogy on a CPU
    x_log_x = (positive + tiny).log_().mul_(positive).sum(dim=(2, 3))
    entropy = mass.clamp(min=tiny).log() - x_log_x / mass.clamp(min=tiny)
    score = 1 - entropy / math.log(area)
    return (score * active).sum() / active.sum()


def _histogram(values: Tensor, bins: int) -> tuple[Tensor, Tensor]:
    """Equal-width bins over the values' range, with no data-dependent shape."""
    low, high = values.min(), values.max()
    width = (high - low).clamp(min=torch.finfo(values.dtype).eps) / bins
    edges = low + width * torch.arange(bins + 1, device=values.device, dtype=values.dtype)
    index = ((values - low) / width).long().clamp(0, bins - 1)
    if values.is_cuda and torch.are_deterministic_algorithms_enabled():
        return edges, _count_by_sorting(index, bins)
    counts = torch.zeros(bins, device=values.device).scatter_add_(0, index, torch.ones_like(values))
    return edges, counts


def _count_by_sorting(index: Tensor, bins: int) -> Tensor:
    """Bin counts with deterministic kernels (scatter_add_ has none on CUDA): sort the bin
    indices, then find where each bin starts."""
    starts = torch.searchsorted(index.sort().values, torch.arange(bins + 1, device=index.device))
    return starts.diff().float()
