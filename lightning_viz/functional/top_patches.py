"""A streaming top-k of the images that excite each unit most, with their receptive-field crops.

Everything stays on the device: a batch is merged into the running top-k with sorts and gathers,
without reading a value on the host.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from lightning_viz.functional.receptive_field import ReceptiveField


@dataclass
class TopK:
    """The running top-k images of U units; row u of every field belongs to unit u."""

    values: Tensor
    """(U, k) float: the unit's maximum over the image's map, descending; -inf where empty."""
    positions: Tensor
    """(U, k) long: the image's position in the stream (images before it); -1 where empty."""
    rows: Tensor
    """(U, k) long: the map row of the maximum; -1 where empty."""
    cols: Tensor
    """(U, k) long: the map column of the maximum; -1 where empty."""
    patches: Tensor
    """(U, k, C, S, S) float: the receptive-field crop of each, resized to S x S; 0 where empty."""


def empty_top_k(units: int, k: int, channels: int, size: int, device, dtype=torch.float32) -> TopK:
    """An empty top-k of ``units`` units, ``k`` images each, ``size`` x ``size`` patches."""
    return TopK(
        values=torch.full((units, k), -math.inf, device=device, dtype=dtype),
        positions=torch.full((units, k), -1, device=device, dtype=torch.long),
        rows=torch.full((units, k), -1, device=device, dtype=torch.long),
        cols=torch.full((units, k), -1, device=device, dtype=torch.long),
        patches=torch.zeros((units, k, channels, size, size), device=device, dtype=dtype),
    )


def update_top_k(
    top: TopK,
    maps: Tensor,
    images: Tensor,
    field: ReceptiveField,
    first_position: int | Tensor,
    units: Tensor | None = None,
) -> TopK:
    """Merge a batch into the running top-k; no host sync.

    Each image is a candidate for each unit with its maximum over the unit's map (value, row,
    column of the first maximum; NaN counts as -inf); one image appears at most once per unit.
    The k best of the running entries and the batch survive; on equal values the earlier stream
    position wins. Positions must grow along the stream (the running entries come before the
    batch). Only the batch's own k best per unit are cropped (U * k boxes at most): the field of
    the maximum, ``field.boxes(row, col)``, resized to S x S by ``roi_align`` (bilinear, averaging
    ``ceil(field size / S)``² samples per output pixel, so a shrink is a fair average and a field of
    exactly S pixels is copied unchanged). Parts of a field outside the image come out 0, as
    zero padding would. uint8 images are converted to float without rescaling.

    Args:
        top: the running top-k (from :func:`empty_top_k` or a previous update).
        maps: (N, C, h, w) the layer's output on the batch.
        images: (N, C_in, H, W) the batch's inputs.
        field: the layer's receptive field.
        first_position: stream position of ``images[0]`` (an int or a device scalar).
        units: (U,) long channel indices; None for all C channels.

    Returns:
        A new :class:`TopK`; ``top`` is not modified.

    Raises:
        ValueError: shapes that do not fit together.
    """
    _check_shapes(top, maps, images, units)
    k = top.values.shape[1]
    chosen = maps if units is None else maps.index_select(1, units.to(maps.device))
    width = chosen.shape[3]
    values, flat_index = chosen.flatten(2).max(dim=2)
    values = values.to(top.values.dtype)
    values = values.masked_fill(values.isnan(), -math.inf).T

    # The batch's own k best per unit, earlier images first on ties (stable sort).
    values, order = values.sort(dim=1, descending=True, stable=True)
    order, values = order[:, :k], values[:, :k]
    flat_index = flat_index.T.gather(1, order)
    rows, cols = flat_index // width, flat_index % width
    patches = _crops(images, order, rows, cols, field, top.patches)

    # Merge: the running entries come first, so a stable sort keeps them ahead on ties.
    merged_values = torch.cat([top.values, values], dim=1)
    merged_values, keep = merged_values.sort(dim=1, descending=True, stable=True)
    keep = keep[:, :k]
    positions = order + first_position

    def merge(running: Tensor, new: Tensor) -> Tensor:
        merged = torch.cat([running, new], dim=1)
        index = keep.view(*keep.shape, *([1] * (merged.dim() - 2)))
        return merged.take_along_dim(index, dim=1)

    return TopK(
        values=merged_values[:, :k],
        positions=merge(top.positions, positions),
        rows=merge(top.rows, rows),
        cols=merge(top.cols, cols),
        patches=merge(top.patches, patches),
    )


def changed_fraction(previous_positions: Tensor, positions: Tensor) -> Tensor:
    """Per unit, the share of its top-k images that were not in its previous top-k.

    ``1 - |previous ∩ current| / k`` over the sets of stream positions, -1 (empty) entries left
    out; k is the number of filled entries (the larger of the two sets), so a unit whose sets are
    equal scores 0 even before k images were seen. 0 for a unit with both sets empty.

    Args:
        previous_positions: (U, k) long positions of an earlier top-k.
        positions: (U, k) long positions of the current top-k.

    Returns:
        (U,) float on the device of ``positions``.
    """
    previous_positions = previous_positions.to(positions.device)
    filled = positions >= 0
    shared = (positions[:, :, None] == previous_positions[:, None, :]).any(dim=2) & filled
    sizes = torch.maximum(filled.sum(dim=1), (previous_positions >= 0).sum(dim=1))
    return (sizes - shared.sum(dim=1)) / sizes.clamp(min=1)


def _crops(
    images: Tensor,
    order: Tensor,
    rows: Tensor,
    cols: Tensor,
    field: ReceptiveField,
    like: Tensor,
) -> Tensor:
    """(U, k', C, S, S) crops of ``images[order]`` around the fields of (rows, cols)."""
    units, count = order.shape
    size = like.shape[-1]
    images = images.to(like.dtype)
    # A field several times the patch is first averaged down by that whole factor (one pooling of
    # the batch), so roi_align samples a pixel or two per output pixel instead of factor² of them.
    factor = max(1, min(field.size) // size)
    if factor > 1:
        images = F.avg_pool2d(images, factor, ceil_mode=True)
    # One zero pixel around the image: roi_align clamps samples within a pixel of the border to the
    # border, so without it the border would be repeated instead of padded with zeros.
    padded = F.pad(images, (1, 1, 1, 1))
    boxes = field.boxes(rows.flatten(), cols.flatten()).to(like.device) / factor + 1
    batch_index = order.flatten().to(boxes.dtype)[:, None]
    sampling_ratio = max(1, math.ceil(max(field.size) / factor / size))
    crops = roi_align(
        padded,
        torch.cat([batch_index, boxes], dim=1).to(padded.dtype),
        output_size=(size, size),
        sampling_ratio=sampling_ratio,
        aligned=True,
    )
    return crops.view(units, count, *crops.shape[1:])


def _check_shapes(top: TopK, maps: Tensor, images: Tensor, units: Tensor | None) -> None:
    unit_count, _, channels, _, _ = top.patches.shape
    if maps.dim() != 4 or images.dim() != 4:
        raise ValueError(
            f"`maps` and `images` must be 4-D (N, C, H, W), got shapes {tuple(maps.shape)} and "
            f"{tuple(images.shape)}"
        )
    if maps.shape[0] != images.shape[0]:
        raise ValueError(
            f"`maps` has {maps.shape[0]} images and `images` {images.shape[0]}; expected the same"
        )
    selected = maps.shape[1] if units is None else units.shape[0]
    if selected != unit_count:
        raise ValueError(f"the top-k holds {unit_count} units, the batch gives {selected}")
    if images.shape[1] != channels:
        raise ValueError(
            f"the top-k holds {channels}-channel patches, `images` has {images.shape[1]}"
        )


def tie(values: Sequence[float]) -> str | None:
    """What a unit's top ``values`` (strongest first) share, where they are all its strongest:
    ``"all 0"`` for a unit that is 0 on every image (a dead ReLU unit: "all tie", said of it,
    read as a unit that responds to everything), ``"all tie"`` for one that responds as much
    to many patches (a digits unit on flat background: nine black tiles all 0.98, the first
    nine validation images, read as a defect in a visual review); None where they differ."""
    first, last = values[0], values[-1]
    if not (math.isfinite(first) and first - last <= 1e-6 * max(1.0, abs(first))):
        return None
    return "all 0" if first == 0 else "all tie"
