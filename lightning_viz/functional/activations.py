"""Sparsity and localization of feature maps, reduced on the device without a host sync."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

HISTOGRAM_BINS = 64


MIN_IMAGES = 4
"""``max_values`` never reads fewer images than this (or the whole batch when it is smaller)."""

SATURATION_MARGIN = 0.02
"""A value within this fraction of the output range from a bound counts as saturated."""


class ActivationReductions(NamedTuple):
    """What :func:`activation_reductions` returns: a few tensors on the input's device
    (:func:`reduce_activation_samples` adds a leading step dimension to all but
    ``channel_active``)."""

    sums: Tensor
    """(6,) the numerators and denominators of :data:`SUMMED` (sum them over batches or ranks,
    then read them with :func:`stats_from_sums`)."""
    channel_active: Tensor
    """(C,) bool: the channel has a positive value anywhere in the batch (its maximum over the
    whole batch, where the read images may be too few to call a channel dead)."""
    active_maps: Tensor
    """How many (image, channel) maps of the read images have a positive value."""
    histogram: Tensor
    """(2 + bins,): the sampled values' min and max, then the counts of the equal-width bins
    between them (:func:`histogram_edges` gives the edges)."""


class ActivationSample(NamedTuple):
    """What a sampled training step keeps of one feature map (:func:`sample_activations`)."""

    images: Tensor
    """(n, C, H, W): a copy of the strided images, in the feature map's dtype."""
    channel_max: Tensor
    """(C,) each channel's maximum over the whole batch, in float32: NaN or +Inf anywhere makes
    one non-finite, and a positive one says the channel is active."""
    values_per_channel: int
    """How many values each channel has in the whole batch (N x H x W)."""


def sample_activations(
    activations: Tensor,
    max_values: int | None = None,
    store: Callable[[Tensor], Tensor] | None = None,
) -> ActivationSample:
    """What the training hot path keeps of a feature map for :func:`reduce_activation_samples`:
    two device operations, whatever the size, so that many steps' samples can be reduced at once.

    Args:
        activations: (N, C, H, W) feature maps.
        max_values: as in :func:`activation_stats`.
        store: copies the strided images (a view of ``activations``) into memory of its own and
            returns the copy (ActivationMonitor's: a slot of a buffer it reuses); default a new
            contiguous tensor.
    """
    whole = _checked(activations, max_values)
    strided = _strided_images(whole, max_values)
    if store is None:
        images = strided.clone(memory_format=torch.contiguous_format)
    else:
        images = store(strided)
    n, _, height, width = whole.shape
    return ActivationSample(images, _channel_max(whole), n * height * width)


class ChannelHealth(NamedTuple):
    """What ActivationMonitor's health checks need of a feature map, and no more
    (:func:`channel_health`)."""

    channel_active: Tensor
    """(C,) bool, as :attr:`ActivationReductions.channel_active`."""
    nonfinite: Tensor
    """() bool: NaN or +Inf anywhere in the batch."""
    saturated: Tensor
    """() float32: how many of the batch's values sit within the margin of a bound (0 without
    bounds); of ``values_per_channel`` times C."""
    values_per_channel: int
    """How many values each channel has in the whole batch (N x H x W)."""


def channel_health(activations: Tensor, bounds: tuple[float, float] | None = None) -> ChannelHealth:
    """The dead-channel, NaN/+Inf and saturation evidence of a whole batch's feature maps: one
    pass over the values (two with ``bounds``) and a few operations on the (C,) maxima, for a
    sampled step that cannot afford :func:`sample_activations`' copy and the read of its
    statistics."""
    whole = _checked(activations, None)
    n, _, height, width = whole.shape
    channel_max = _channel_max(whole)
    return ChannelHealth(
        channel_max > 0,
        ~channel_max.isfinite().all(),
        _saturated_count(whole[None], bounds)[0],
        n * height * width,
    )


def reduce_activation_samples(
    images: Tensor,
    channel_max: Tensor,
    bins: int = HISTOGRAM_BINS,
    histogram_samples: int | None = None,
    bounds: tuple[float, float] | None = None,
    overwrite: bool = False,
    histogram_steps: int | None = None,
) -> ActivationReductions:
    """The reductions of S steps' samples of one layer at once, in as few device operations as a
    single step's (about 20, whatever S and the sizes); with ``overwrite`` it allocates no float
    temporary the size of the samples.

    Args:
        images: (S, n, C, H, W): each step's :attr:`ActivationSample.images`, stacked.
        channel_max: (S, C): each step's :attr:`ActivationSample.channel_max`.
        bins, histogram_samples, bounds: as in :func:`activation_stats`, per step.
        overwrite: the function may overwrite float32 ``images`` (it then copies nothing:
            on a CPU, temporaries of several MB cost a page fault per 4 KiB).
        histogram_steps: count the histograms of the last this many steps only (ActivationMonitor
            logs one step's of each read); None: every step's.

    Returns:
        :class:`ActivationReductions` with a leading step dimension: ``sums`` (S, 6),
        ``active_maps`` (S,) and ``histogram`` (S, 2 + bins), or (``histogram_steps``, 2 + bins)
        for the last steps; ``channel_active`` (C,) is any step's.
    """
    if images.dim() != 5 or channel_max.shape != (images.shape[0], images.shape[2]):
        raise ValueError(
            "`images` must be (S, n, C, H, W) and `channel_max` (S, C), got "
            f"{tuple(images.shape)} and {tuple(channel_max.shape)}"
        )
    _check_counts(bins, histogram_samples)
    if histogram_steps is not None and not 0 <= histogram_steps <= len(images):
        raise ValueError(
            f"`histogram_steps` must lie in [0, {len(images)}] (the steps), got {histogram_steps}"
        )
    a = images.to(torch.float32, copy=not overwrite)
    steps, count, area = len(a), a[0].numel(), a.shape[3] * a.shape[4]
    # NaN or +Inf anywhere in the batch shows in its maxima; -Inf (a LeakyReLU's) in the read
    # images' minima, before they are clamped (isfinite on every value costs 40x more on a CPU)
    lowest = a.flatten(1).amin(dim=1)
    nonfinite = (~channel_max.isfinite()).any(dim=1) | ~lowest.isfinite()
    saturated = _saturated_count(a, bounds)
    flat = a.flatten(1)
    if histogram_steps is not None:
        flat = flat[steps - histogram_steps :]
    if histogram_samples is not None and flat.shape[1] > histogram_samples:
        flat = flat[:, :: -(-flat.shape[1] // histogram_samples)]
    # before the values are clamped in place
    histogram = _histograms(flat, bins) if len(flat) else a.new_zeros((0, 2 + bins))
    positive = a.clamp_(min=0)
    mass = positive.sum(dim=(3, 4))
    active = mass > 0
    active_maps = active.sum(dim=(1, 2))
    if area >= 2:
        entropy = (_collision_entropy(positive, mass) * active).sum(dim=(1, 2))
        localized = active_maps - entropy / math.log(area)
        weight = active_maps
    else:  # a 1x1 map has no spatial distribution: it weighs nothing in the localization
        localized = weight = a.new_zeros(steps)
    # sign_().sum() is cheap on every device (count_nonzero is 10-30x slower on a CPU)
    zero = count - positive.sign_().sum(dim=(1, 2, 3, 4))
    sums = torch.stack(
        [
            zero,
            localized,
            nonfinite.float(),
            a.new_full((steps,), count),
            weight.float(),
            saturated,
        ],
        dim=1,
    )
    return ActivationReductions(sums, (channel_max > 0).any(dim=0), active_maps, histogram)


def activation_reductions(
    activations: Tensor,
    bins: int = HISTOGRAM_BINS,
    histogram_samples: int | None = None,
    bounds: tuple[float, float] | None = None,
    max_values: int | None = None,
) -> ActivationReductions:
    """The reductions behind :func:`activation_stats` of one batch, in as few device operations
    as they take (about 25, whatever the tensor's size). Arguments as in
    :func:`activation_stats`."""
    whole = _checked(activations, max_values)
    _check_counts(bins, histogram_samples)
    images = _strided_images(whole, max_values)
    reduced = reduce_activation_samples(
        images[None], _channel_max(whole)[None], bins, histogram_samples, bounds
    )
    return ActivationReductions(
        reduced.sums[0], reduced.channel_active, reduced.active_maps[0], reduced.histogram[0]
    )


def activation_stats(
    activations: Tensor,
    bins: int = HISTOGRAM_BINS,
    histogram_samples: int | None = None,
    bounds: tuple[float, float] | None = None,
    max_values: int | None = None,
) -> dict[str, Tensor]:
    """Statistics of one batch of feature maps, every value a tensor on the input's device.

    Written for the training hot path: a handful of passes over the tensor, no data-dependent
    shapes, no host sync (:func:`activation_reductions` is the same with fewer operations).

    Args:
        activations: (N, C, H, W) feature maps.
        bins: number of equal-width histogram bins between the (sampled) values' min and max.
        histogram_samples: count the histogram over an evenly strided subset of at most this
            many values (None: all of them).
        bounds: the output range of a saturating activation (sigmoid: (0, 1), tanh: (-1, 1)),
            to count the values stuck near either end.
        max_values: read every s-th image of the batch, s the smallest stride that keeps at
            most this many values (whole feature maps, so localization stays exact per map), but
            at least :data:`MIN_IMAGES` images; None: every image. The statistics then describe
            those images (``elements`` counts their values); ``channel_active`` and the NaN and
            +Inf of ``nonfinite`` still read the whole batch (its per-channel maxima), -Inf the
            read images.

    Returns:
        ``zero_fraction``: fraction of elements <= 0 (sparsity after a ReLU);
        ``channel_active``: (C,) bool, any positive value in the whole batch (OR these across
        batches to count dead channels);
        ``localization``: mean over images and active channels of ``1 - H2(p) / log(H*W)``, with
        p the positive part normalized over space and ``H2(p) = -log sum(p^2)`` its collision
        (order-2 Renyi) entropy, the log of the map's participation ratio: 0 when spread evenly,
        1 on a single pixel, ``1 - log k / log(H*W)`` on k equal pixels; a tail of faint values
        weighs little beside a strong spot (NaN when no channel is active or maps are 1x1);
        ``active_maps``: how many (image, channel) maps have a positive value (the weight of
        ``localization`` when averaging over batches or ranks);
        ``elements``: how many values (the weight of ``zero_fraction``);
        ``saturated_fraction``: with ``bounds``, the fraction of values within 2% of the range
        from either bound, where the activation's gradient all but vanishes (else 0);
        ``nonfinite``: bool, the batch holds NaN or Inf (then the other values may be NaN too);
        ``histogram_edges`` (bins + 1,) and ``histogram_counts`` (bins,), for TensorBoard;
        ``sums``: the (6,) :data:`SUMMED` numerators and denominators (:func:`activation_sums`).

    Raises:
        ValueError: not a 4-D tensor, bins < 1, histogram_samples < 1 or max_values < 1.
    """
    reduced = activation_reductions(activations, bins, histogram_samples, bounds, max_values)
    zero, localized, nonfinite, elements, weight, saturated = reduced.sums
    counts = reduced.histogram[2:]
    return {
        "zero_fraction": zero / elements,
        "channel_active": reduced.channel_active,
        "localization": localized / weight,
        "active_maps": reduced.active_maps,
        "elements": elements,
        "saturated_fraction": saturated / elements,
        "nonfinite": nonfinite > 0,
        "histogram_edges": histogram_edges(reduced.histogram[0], reduced.histogram[1], len(counts)),
        "histogram_counts": counts,
        "sums": reduced.sums,
    }


SUMMED = ("zero", "localization", "nonfinite", "elements", "active_maps", "saturated")
"""The columns of :func:`activation_sums`: ``active_maps`` counts the maps that weigh in the
localization (none for 1x1 maps)."""


def activation_sums(stats: dict[str, Tensor]) -> Tensor:
    """The numerators and denominators behind one batch's statistics, as one (6,) tensor.

    Summing these over batches or ranks, then :func:`stats_from_sums`, gives exactly the
    statistics of the batches put together (averaging per-batch means would not, when batches
    have different numbers of active maps). Columns: :data:`SUMMED`; maps without a
    localization (1x1) weigh nothing in it, so it stays undefined rather than 0.
    """
    return stats["sums"]


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


def histogram_edges(low: Tensor | float, high: Tensor | float, bins: int) -> Tensor:
    """The ``bins + 1`` edges of :func:`activation_reductions`' histogram, from its min and max
    (tensors on the device, or numbers on the host)."""
    low = torch.as_tensor(low, dtype=torch.float32)
    high = torch.as_tensor(high, dtype=torch.float32, device=low.device)
    width = (high - low).clamp(min=torch.finfo(torch.float32).eps) / bins
    return low + width * torch.arange(bins + 1, device=low.device, dtype=torch.float32)


def _checked(activations: Tensor, max_values: int | None) -> Tensor:
    if activations.dim() != 4:
        raise ValueError(f"`activations` must be (N, C, H, W), got {tuple(activations.shape)}")
    if max_values is not None and max_values < 1:
        raise ValueError(f"`max_values` must be at least 1, got {max_values}")
    return activations.detach()


def _check_counts(bins: int, histogram_samples: int | None) -> None:
    if bins < 1:
        raise ValueError(f"`bins` must be at least 1, got {bins}")
    if histogram_samples is not None and histogram_samples < 1:
        raise ValueError(f"`histogram_samples` must be at least 1, got {histogram_samples}")


def _strided_images(activations: Tensor, max_values: int | None) -> Tensor:
    """Every s-th image, s the smallest stride keeping at most ``max_values`` values, but at
    least :data:`MIN_IMAGES` images."""
    if max_values is None or activations.numel() <= max_values:
        return activations
    stride = min(-(-activations.numel() // max_values), max(1, len(activations) // MIN_IMAGES))
    return activations[::stride]


def _channel_max(activations: Tensor) -> Tensor:
    """(C,) each channel's maximum over the batch, in float32 (NaN where it holds one)."""
    return activations.amax(dim=(0, 2, 3)).float()


def _saturated_count(values: Tensor, bounds: tuple[float, float] | None) -> Tensor:
    """(S,) how many values of each step's (n, C, H, W) sit within the margin of a bound."""
    if bounds is None:
        return values.new_zeros(len(values), dtype=torch.float32)
    low, high = bounds
    margin = SATURATION_MARGIN * (high - low)
    saturated = (values <= low + margin) | (values >= high - margin)
    return saturated.sum(dim=(1, 2, 3, 4)).float()


def _collision_entropy(positive: Tensor, mass: Tensor) -> Tensor:
    """(..., N, C) collision entropy ``-log sum(p^2)`` of the spatial distribution of each map's
    positive part.

    With ``x`` the positive values of a map and ``M = sum(x)``, ``p = x / M`` gives
    ``2 (log M - log ||x||)``: one fused pass (the norm), no normalized copy and no log per
    value (a Shannon entropy's ``x log x`` costs over ten times more on a CPU).
    """
    tiny = torch.finfo(mass.dtype).tiny
    norm = torch.linalg.vector_norm(positive, dim=(-2, -1)).clamp(min=tiny)
    return 2 * (mass.clamp(min=tiny).log() - norm.log())


def _histograms(values: Tensor, bins: int) -> Tensor:
    """(S, 2 + bins): each row's min, max and equal-width bin counts of its values (S, m), with
    no data-dependent shape."""
    low, high = values.aminmax(dim=1)
    scale = bins / (high - low).clamp(min=torch.finfo(values.dtype).eps)
    index = ((values - low[:, None]) * scale[:, None]).long().clamp_(0, bins - 1)
    index = (index + torch.arange(len(values), device=values.device)[:, None] * bins).flatten()
    if values.is_cuda and torch.are_deterministic_algorithms_enabled():
        counts = _count_by_sorting(index, len(values) * bins)
    else:
        counts = torch.zeros(len(values) * bins, device=values.device).scatter_add_(
            0, index, torch.ones_like(index, dtype=torch.float32)
        )
    return torch.cat([low[:, None], high[:, None], counts.view(len(values), bins)], dim=1)


def _count_by_sorting(index: Tensor, bins: int) -> Tensor:
    """Bin counts with deterministic kernels (scatter_add_ has none on CUDA): sort the bin
    indices, then find where each bin starts."""
    starts = torch.searchsorted(index.sort().values, torch.arange(bins + 1, device=index.device))
    return starts.diff().float()
