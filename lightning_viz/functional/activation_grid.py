"""Intermediate activation grids: each image's most active feature maps in chosen layers, from
one forward that stops at the deepest of them, and their display on one scale per image.

Good feature maps are sparse and localized (a few bright spots on a dark map); a map that is
bright everywhere responds to everything, and a channel with no positive value on an image is
dead on it. Showing this needs an honest scale: every map of an image is divided by the same
number (the largest absolute value among them), so a weak map looks weak beside a strong one,
where a per-map min-max would stretch each to full brightness.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_viz.functional._capture import (
    Forward,
    model_device,
    resolve_layers,
    run_until_captured,
)
from lightning_viz.functional._validation import check_int
from lightning_viz.functional.images import EPS, colormap_table, to_uint8
from lightning_viz.functional.projection import top_channels


class TopFeatureMaps(NamedTuple):
    """What :func:`top_feature_maps` returns per layer, for N images and k channels."""

    channels: Tensor
    """(N, k) long: each image's k channels with the largest mean activation, strongest first."""
    maps: Tensor
    """(N, k, h, w) float32: those channels' feature maps."""
    means: Tensor
    """(N, k) float32: their mean activation over the map, the values they were ranked by."""
    dead_fraction: Tensor
    """(N,) float32: the share of the layer's channels with no positive value on the image
    (dead on it; after a ReLU, zero everywhere)."""
    zero_fraction: Tensor
    """(N,) float32: the share of the layer's values that are <= 0 on the image (its sparsity
    after a ReLU)."""


def top_feature_maps(
    model: nn.Module,
    images: Tensor,
    layers: str | nn.Module | Sequence[str | nn.Module],
    k: int = 8,
    forward: Forward | None = None,
) -> dict[str, TopFeatureMaps]:
    """The ``k`` most active feature maps of each image in each layer, from one forward.

    The forward runs without gradients and with autocast off, and stops as soon as the deepest
    requested layer has run (nothing after it is computed); its capture hooks are removed when
    it ends, also on an error, and it works under ``torch.inference_mode``. Channels are ranked
    by their mean activation over the map (:func:`~lightning_viz.functional.top_channels`, which
    ranks by the sum: the same order, so DeconvLogger and this view name the same channels).
    Run the model in eval mode: in train mode BatchNorm would use the images' own statistics
    and update its running ones.

    Args:
        model: the network; run as ``model(images)`` unless ``forward`` is given.
        images: (N, C, H, W) on the model's device, as the model takes them (uint8 stays uint8).
        layers: names from ``model.named_modules()`` (or the modules), each returning an
            (N, C, h, w) feature map.
        k: channels per image and layer; a layer with fewer shows all of its channels.
        forward: how to run the model when not ``model(images)``.

    Returns:
        ``{layer_name: TopFeatureMaps(channels, maps, means, dead_fraction, zero_fraction)}`` in
        ``model.named_modules()`` order.

    Raises:
        ValueError: images that are not a non-empty (N, C, H, W) batch or lie on another device
            than the model, ``k`` not a positive integer, an unknown layer (the closest names
            listed), a layer that does not run or does not return a 4-D map.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"`images` must have shape (N, C, H, W) with N >= 1, got {shape}")
    k = check_int("k", k)
    modules = resolve_layers(model, layers)
    device = model_device(model)
    if device is not None and images.device != device:
        raise ValueError(
            f"`images` are on {images.device} but the model is on {device}; "
            "move them with images.to(device)"
        )
    with torch.no_grad(), torch.autocast(device_type=images.device.type, enabled=False):
        _, captured = run_until_captured(
            model, images, modules, full_forward=False, forward=forward
        )
        return {name: _top_of(captured[name].float(), k) for name in modules}


def _top_of(activation: Tensor, k: int) -> TopFeatureMaps:
    """One layer's result from its (N, C, h, w) activation: all device ops, no host sync."""
    channels = top_channels(activation, min(k, activation.shape[1]))
    maps = activation.gather(1, channels[:, :, None, None].expand(-1, -1, *activation.shape[-2:]))
    positive = activation > 0
    return TopFeatureMaps(
        channels=channels,
        maps=maps,
        means=maps.mean(dim=(2, 3)),
        dead_fraction=(~positive.flatten(2).any(dim=2)).float().mean(dim=1),
        zero_fraction=1 - positive.flatten(1).float().mean(dim=1),
    )


class FeatureMapTiles(NamedTuple):
    """What :func:`feature_map_tiles` returns."""

    tiles: Tensor
    """(N, k, 3, H, W) uint8 RGB tiles."""
    scale: Tensor
    """(N,) float32: each image's largest absolute value among its maps, the value shown at the
    bright end of the colormap (at both ends when ``signed``)."""
    signed: Tensor
    """0-d bool: whether some map has a negative value (a layer before its ReLU); the tiles then
    use the diverging colormap with 0 in its middle."""


def feature_map_tiles(
    maps: Tensor,
    size: tuple[int, int] | None = None,
    cmap: str = "viridis",
    signed_cmap: str = "RdBu_r",
) -> FeatureMapTiles:
    """Colour (N, k, h, w) feature maps as display tiles, one scale per image.

    Each image's maps are divided by its largest absolute value among them, so across its k
    tiles brightness compares strength and a sparse map stays mostly dark. Non-negative maps
    (after a ReLU) run through ``cmap`` from 0 to that value; when any value is negative (a
    layer before its activation) every tile runs through ``signed_cmap`` from minus that value
    to plus it, 0 in the middle, so negative responses are shown rather than clipped. Computed
    on the maps' device without a host sync (the choice of colormap included).

    Args:
        maps: (N, k, h, w) feature maps (see :func:`top_feature_maps`).
        size: the tiles' (H, W); smaller maps are enlarged with square pixels (nearest), larger
            ones shrunk by area averaging. Default: the maps' size.
        cmap: the matplotlib colormap of non-negative maps.
        signed_cmap: the diverging matplotlib colormap of maps with negative values.

    Raises:
        ValueError: maps that are not 4-D, an unknown colormap.
    """
    if maps.dim() != 4:
        raise ValueError(f"`maps` must be (N, k, h, w), got {tuple(maps.shape)}")
    table = colormap_table(cmap).to(maps.device)
    signed_table = colormap_table(signed_cmap).to(maps.device)
    values = maps.detach().float()
    signed = (values < 0).any()
    scale = values.abs().flatten(1).amax(dim=1)
    unit = values / scale.clamp(min=EPS)[:, None, None, None]
    position = torch.where(signed, unit * 0.5 + 0.5, unit)
    size = tuple(maps.shape[-2:]) if size is None else tuple(size)
    enlarge = size[0] >= maps.shape[-2] and size[1] >= maps.shape[-1]
    if not enlarge:
        position = F.interpolate(position, size=size, mode="area")
    index = (position.clamp(0, 1) * 255).round().long()
    colours = to_uint8(torch.where(signed, signed_table, table))
    # index_select: a third of the time of colours[index] on a CPU
    tiles = colours.index_select(0, index.flatten()).view(*index.shape, 3)
    tiles = tiles.permute(0, 1, 4, 2, 3).contiguous()
    if enlarge and size != tuple(maps.shape[-2:]):
        tiles = _enlarged(tiles, size)  # coloured at the maps' size: far fewer lookups
    return FeatureMapTiles(tiles, scale, signed)


def _enlarged(tiles: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, k, 3, h, w) tiles enlarged to ``size`` with nearest pixels: by whole factors as one
    broadcast copy (3x faster than ``F.interpolate`` on a CPU), else by ``"nearest-exact"``."""
    *batch, height, width = tiles.shape
    if size[0] % height or size[1] % width:
        resized = F.interpolate(tiles.flatten(0, 1), size=size, mode="nearest-exact")
        return resized.unflatten(0, batch[:2])
    blocks = tiles[..., :, None, :, None].expand(
        *batch, height, size[0] // height, width, size[1] // width
    )
    return blocks.reshape(*batch, *size)
