"""Display helpers: everything stays on the tensors' device until one uint8 transfer at the end."""

from __future__ import annotations

import math
from functools import lru_cache

import matplotlib
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import make_grid

EPS = 1e-8


def normalize(maps: Tensor, eps: float = EPS) -> Tensor:
    """Min-max normalize each image (first dimension) to [0, 1]; a constant image becomes 0."""
    flat = maps.detach().float().flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    high = flat.max(dim=1, keepdim=True).values
    return ((flat - low) / (high - low + eps)).view_as(maps)


def normalize_signed(
    maps: Tensor, percentile: float = 99.0, eps: float = EPS, least: float = 0.0
) -> Tensor:
    """Map each signed image (first dimension) to [0, 1] with 0 at 0.5, clipping outliers.

    The scale is the ``percentile`` of the absolute values of that image, so a few extreme
    pixels do not wash out the rest (the usual display of deconvnet reconstructions), and at
    least ``least``: values in known units (a probability) that hardly move are drawn faint,
    not stretched to full colour.
    """
    flat = maps.detach().float().flatten(1)
    scale = _percentile_scale(flat.abs(), percentile).clamp(min=least)
    return ((flat / (scale + eps)).clamp(-1, 1) * 0.5 + 0.5).view_as(maps)


def normalize_magnitude(maps: Tensor, percentile: float = 99.0, eps: float = EPS) -> Tensor:
    """Map each non-negative image (first dimension) to [0, 1] by the ``percentile`` of its
    values, clipping the few above it (the usual display of saliency maps, whose largest
    gradients sit on a handful of pixels)."""
    flat = maps.detach().float().flatten(1)
    return (flat / (_percentile_scale(flat, percentile) + eps)).clamp(0, 1).view_as(maps)


def _percentile_scale(values: Tensor, percentile: float) -> Tensor:
    if not 0 < percentile <= 100:
        raise ValueError(f"`percentile` must lie in (0, 100], got {percentile}")
    return _row_quantile(values, percentile / 100)


def _row_quantile(values: Tensor, q: float) -> Tensor:
    """(N, 1) the ``q`` quantile of each row, linearly interpolated as ``torch.quantile`` does
    (to float rounding), from the top ``1 - q`` of the values: 3-7x faster than sorting them all
    on a CPU."""
    count = values.shape[1]
    position = q * (count - 1)
    below = int(position)
    largest = values.topk(count - below, dim=1).values  # descending: ends at rank `below`
    low = largest[:, -1:]
    high = largest[:, -2:-1] if largest.shape[1] > 1 else low
    return torch.lerp(low, high, position - below)


@lru_cache(maxsize=16)
def colormap_table(cmap: str) -> Tensor:
    """The (256, 3) RGB lookup table of a matplotlib colormap; ValueError for an unknown name."""
    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown matplotlib colormap {cmap!r}") from None
    return torch.as_tensor(colormap(torch.linspace(0, 1, 256).numpy())[:, :3], dtype=torch.float32)


def colorize(maps: Tensor, cmap: str = "jet") -> Tensor:
    """Apply a matplotlib colormap as a 256-entry lookup table on the maps' device.

    Args:
        maps: (N, H, W) values in [0, 1] (values outside are clipped).
        cmap: a name in ``matplotlib.colormaps``.

    Returns:
        (N, 3, H, W) RGB in [0, 1].
    """
    table = colormap_table(cmap).to(maps.device)
    index = (maps.detach().float().clamp(0, 1) * 255).round().long()
    return table[index].permute(0, 3, 1, 2)


LUMA = (0.299, 0.587, 0.114)
"""ITU-R BT.601 weights of R, G and B in an image's brightness."""


def overlay(images: Tensor, heat: Tensor, alpha: float = 0.5) -> Tensor:
    """Blend RGB heatmaps (N, 3, H, W) over the brightness of RGB display images (N, 3, H, W),
    both in [0, 1]: over the images' own colours, the heatmap's no longer matched its colour
    bar (red evidence on a green object read olive, as if weaker); the views show each image in
    colour beside its map."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"`alpha` must lie in [0, 1], got {alpha}")
    if images.shape != heat.shape:
        raise ValueError(
            f"images {tuple(images.shape)} and heatmaps {tuple(heat.shape)} must have one shape"
        )
    luma = torch.tensor(LUMA, device=images.device).view(1, 3, 1, 1)
    brightness = (images.float() * luma).sum(dim=1, keepdim=True)
    return (1 - alpha) * brightness + alpha * heat.float()


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize (N, h, w) maps to (N, *size)."""
    return F.interpolate(
        maps.detach().float()[:, None], size=size, mode="bilinear", align_corners=False
    )[:, 0]


def to_rgb(images: Tensor) -> Tensor:
    """Repeat grey (N, 1, H, W) images to RGB; RGB images pass unchanged."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected (N, 1, H, W) or (N, 3, H, W) images, got {tuple(images.shape)}")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def unnormalized(images: Tensor, normalization: tuple[Tensor, Tensor] | None) -> Tensor | None:
    """(N, 3, H, W) images as they were before a torchvision ``Normalize(mean, std)``
    (``normalization``), clamped to [0, 1], grey repeated to RGB: for display, where min-max
    normalizing each image shifted its colours (an ImageNet-normalized near-white sky read
    saturated blue). None where there is no normalization or it does not fit the images (not
    float, not 1 or 3 channels, another number of means)."""
    if normalization is None or not images.is_floating_point():
        return None
    mean, std = (v.flatten().to(images.device, torch.float32) for v in normalization)
    channels = images.shape[1]
    if channels not in (1, 3) or len(mean) not in (1, channels) or len(std) != len(mean):
        return None
    pixels = images.detach().float() * std[:, None, None] + mean[:, None, None]
    return to_rgb(pixels.clamp(0, 1)).contiguous()


REGION_COLOR = (1.0, 0.85, 0.0)
"""The colour of a probe's outlined region (:func:`outline`): a yellow that stands out on grey
digits and on photos alike."""
REGION_EDGE = (0.0, 0.0, 0.0)
"""The colour of the 1-pixel line between a region and its yellow outline, which marks the
region's border where the yellow does not stand out (a yellow object's, on a segmenter's probe)."""


def outline(tiles: Tensor, masks: Tensor, width: int = 2) -> Tensor:
    """(N, 3, H, W) display ``tiles`` with the border of each (N, h, w) boolean mask drawn
    just outside it (a line inside hid a thin ring's band): a dark line of 1 pixel along the
    mask (:data:`REGION_EDGE`), then ``width`` pixels of :data:`REGION_COLOR`, so the border
    shows on yellow objects and on dark ones. Along the image's edge, where there is no outside,
    both go inside (a box of the whole image is its frame). The mask is resized to the tiles
    keeping every pixel it covers (shrunk by nearest, a small region could vanish). Grey tiles
    come back as RGB, in the tiles' dtype; the object's own pixels stay as they are."""
    inside = F.adaptive_max_pool2d(masks[:, None].float(), tuple(tiles.shape[-2:])) > 0
    touching = F.max_pool2d(inside.float(), 3, stride=1, padding=1) > 0
    near = F.max_pool2d(inside.float(), 2 * width + 3, stride=1, padding=width + 1) > 0
    frame, deeper = (torch.ones_like(inside[:1]) for _ in range(2))
    frame[..., width:-width, width:-width] = False
    deeper[..., width + 1 : -(width + 1), width + 1 : -(width + 1)] = False
    edge = (touching & ~inside) | (inside & deeper & ~frame)
    band = (near & ~inside & ~edge) | (inside & frame)
    drawn = to_rgb(tiles)
    for where, rgb in ((edge, REGION_EDGE), (band, REGION_COLOR)):
        color = torch.tensor(rgb, device=tiles.device) * white(tiles.dtype)
        drawn = torch.where(where, color.to(tiles.dtype).view(1, 3, 1, 1), drawn)
    return drawn


def white(dtype: torch.dtype) -> float:
    """The value of white in a display image of ``dtype``: 255 for uint8, else 1.0.

    Display images are floats in [0, 1] or uint8; composing in uint8 moves a quarter of the bytes.
    """
    return 255 if dtype == torch.uint8 else 1.0


def as_display(images: Tensor, dtype: torch.dtype) -> Tensor:
    """Display images (floats in [0, 1] or uint8) converted to ``dtype``'s convention."""
    if images.dtype == dtype:
        return images
    if dtype == torch.uint8:
        return to_uint8(images)
    return images.to(dtype) / 255 if images.dtype == torch.uint8 else images.to(dtype)


def grid(images: Tensor, nrow: int, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """Tile (N, 3, H, W) display images into one (3, H', W') image of their dtype, on the device.

    ``nrow`` is the number of images per row (torchvision's naming); ``pad_value`` lies in
    [0, 1] (1 is white) whatever the dtype.
    """
    if images.dtype != torch.uint8:
        images = images.float()
    pad_value = pad_value * white(images.dtype)
    if len(images) == 1:  # make_grid returns a lone image unpadded; keep every grid alike
        return F.pad(images[0], (padding,) * 4, value=pad_value)
    return make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value)


CARD_WIDTH = 350
"""The width of an image card in TensorBoard's Images tab (its ``tf-image-loader`` is 350 pixels
wide whatever the window; its images about 345): a wider image is shrunk to it, and its 12-pixel
captions with it, a narrower one enlarged (unless "Show actual image size" is ticked)."""

LEGIBLE_WIDTH = CARD_WIDTH * 6 // 5
"""The widest image whose 12-pixel captions stay legible in the card: shrunk to it, they are 10
pixels high. Two probe panels of 96-pixel tiles (the digits', 32-pixel photos') fit; two of
128-pixel tiles (64-pixel probes: 534 pixels, captions shrunk to 8) do not."""


def panels_per_row(
    count: int, height: int, width: int, aspect: float = 0.75, max_width: int | None = None
) -> int:
    """How many (height, width) panels to put in a row so that the grid of ``count`` comes
    closest to ``aspect`` (width / height), with at most as many as fit ``max_width`` (at least
    one). TensorBoard fits an image to the width of a narrow card and lets it run down the page,
    so a grid a little taller than wide, or no wider than the card, shows its tiles largest."""

    def mismatch(per_row: int) -> float:
        rows = -(-count // per_row)
        return abs(math.log(per_row * width / (rows * height) / aspect))

    fitting = count if max_width is None else max(1, min(count, max_width // width))
    return min(range(1, fitting + 1), key=mismatch)


MIN_TILE = 96
"""Smallest side, in pixels, of a logged tile: smaller maps are enlarged to it."""

MAX_TILE = 192
"""Largest side of a logged tile: larger images are shrunk to it."""

PANEL_TILE = (LEGIBLE_WIDTH - 22) // 4
"""The largest tile of which two probe panels (image and map, 2 pixels apart, grid padding 6)
fit :data:`LEGIBLE_WIDTH`: 28-pixel probes enlarged x4 to 112 pixels left one probe per row, a
1,458-pixel column of ten; x3, 84 pixels, puts two side by side."""


def readable(tiles: Tensor, mode: str = "nearest", largest: int = MAX_TILE) -> Tensor:
    """Resize (N, C, h, w) tiles so that their longer side lies in [MIN_TILE, MAX_TILE].

    Small tiles are enlarged by a whole factor (``"nearest"`` keeps pixels and kernel weights
    square and honest, ``"bilinear"`` suits smooth maps), the smallest that reaches MIN_TILE,
    or, where that one passes ``largest``, the largest that stays within it if it still reaches
    three quarters of MIN_TILE; large ones are shrunk by area averaging. uint8 tiles stay uint8
    (resized in floats where nearest does not suffice); others come back as float32.
    """
    side = max(tiles.shape[-2:])
    if side < MIN_TILE:
        scale = -(-MIN_TILE // side)
        if side * scale > largest and largest // side * side >= MIN_TILE * 3 // 4:
            scale = largest // side
        return _enlarged(tiles, scale, mode)
    if side > MAX_TILE:
        return shrunk(tiles, MAX_TILE)
    return as_display(tiles, _display_dtype(tiles))


WIDE = 2
"""Images at least this many times wider than tall (a long audio clip's spectrogram, a line of
text) are drawn as wide tiles (:func:`wide_readable`): sized by their longer side as others, a
64x404 clip was drawn 30 pixels high."""

WIDE_TILE = LEGIBLE_WIDTH - 12
"""The widest tile a wide image gets: one a row, within the legible width (grid padding 6)."""


def is_wide(tiles: Tensor) -> bool:
    """Whether (..., h, w) tiles are :data:`WIDE`."""
    return tiles.shape[-1] >= WIDE * tiles.shape[-2]


def wide_readable(tiles: Tensor, width: int = WIDE_TILE, mode: str = "nearest") -> Tensor:
    """Wide (N, C, h, w) tiles as wide as ``width`` allows (default one a row): enlarged by the
    largest whole factor within it (a 32x128 line of text x3), or shrunk to it."""
    if tiles.shape[-1] > width:
        return shrunk(tiles, width)
    return _enlarged(tiles, width // tiles.shape[-1], mode)


def _enlarged(tiles: Tensor, scale: int, mode: str) -> Tensor:
    """(N, C, h, w) tiles enlarged by a whole ``scale`` (:func:`readable`'s modes and dtypes)."""
    if mode == "nearest":  # a copy of each pixel: 3x faster than nearest interpolation (CPU)
        tiles = as_display(tiles, _display_dtype(tiles))
        return tiles.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    size = (tiles.shape[-2] * scale, tiles.shape[-1] * scale)
    resized = F.interpolate(
        as_display(tiles, torch.float32), size=size, mode=mode, align_corners=False
    )
    return as_display(resized, _display_dtype(tiles))


def shrunk(tiles: Tensor, longest: int) -> Tensor:
    """(N, C, h, w) tiles resized by area averaging so that their longer side is ``longest``,
    their aspect ratio kept (a 48x160 strip squeezed into a square read as another image)."""
    side = max(tiles.shape[-2:])
    size = tuple(max(1, round(s * longest / side)) for s in tiles.shape[-2:])
    resized = F.interpolate(as_display(tiles, torch.float32), size=size, mode="area")
    return as_display(resized, _display_dtype(tiles))


def strongest_crop(images: Tensor, width: int) -> Tensor:
    """(N, C, h, w) signed images cropped to ``width`` columns each, where the magnitude of
    each sums highest: a wide image's feature at a size one can see, not a strip shrunk to a
    few pixels high."""
    width = min(width, images.shape[-1])
    energy = images.detach().abs().sum(dim=(1, 2))  # (N, w)
    start = energy.unfold(1, width, 1).sum(-1).argmax(dim=1)
    columns = start[:, None] + torch.arange(width, device=images.device)
    return images.gather(-1, columns[:, None, None, :].expand(*images.shape[:-1], width))


def _display_dtype(images: Tensor) -> torch.dtype:
    return torch.uint8 if images.dtype == torch.uint8 else torch.float32


def to_uint8(images: Tensor) -> Tensor:
    """[0, 1] floats to uint8, on the same device (move to the host once, after this)."""
    # one new tensor, then in place (clamping after scaling gives the same pixels, 4x faster on
    # a CPU than clamping the floats first)
    return images.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def filter_tiles(weight: Tensor, largest: int = MAX_TILE) -> Tensor:
    """One display tile per conv filter, (out, 3, t, t) in [0, 1], on the weight's device.

    Filters over 3 input channels are shown as RGB; others as grey, each filter by its in-channel
    slice with the largest energy (the input it listens to most), since an average over inputs
    would cancel opposite slices. Each tile is min-max normalized and enlarged by nearest-neighbour
    (:func:`readable`, at most to ``largest``), so a 3x3 kernel stays visible.
    """
    if weight.dim() != 4:
        raise ValueError(
            f"`weight` must be a conv weight (out, in, kh, kw), got {tuple(weight.shape)}"
        )
    w = weight.detach().float()
    if w.shape[1] != 3:
        strongest = w.square().sum(dim=(2, 3)).argmax(dim=1)
        w = w[torch.arange(w.shape[0], device=w.device), strongest][:, None]
    return readable(to_rgb(normalize(w)), largest=largest)
