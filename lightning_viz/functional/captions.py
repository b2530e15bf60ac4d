"""Labels drawn into logged images, so that every picture says what it shows.

Text is rasterized by Pillow in matplotlib's bundled DejaVu Sans (cached per string), then
composed with the tiles on their device; no font is shipped or hand-drawn here. Text is black on
white, as the white padding between tiles. Every function composes in the dtype of the display
images it is given: floats in [0, 1], or uint8 (a quarter of the bytes to move: what the
callbacks use).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import matplotlib.font_manager
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from lightning_viz.functional.images import as_display, colormap_table, white

FONT_SIZE = 12
"""Pixel size of every label: readable where TensorBoard shows an image at about its own size
(its Images tab fits each image to a card about 345 pixels wide)."""

BAND = 16
"""Height of a caption band."""


@lru_cache(maxsize=1)
def _font() -> ImageFont.FreeTypeFont:
    path = matplotlib.font_manager.findfont(matplotlib.font_manager.FontProperties("DejaVu Sans"))
    return ImageFont.truetype(path, FONT_SIZE)


def fits(text: str, width: int) -> bool:
    """Whether a caption band ``width`` pixels wide shows ``text`` whole, not cut."""
    return fit_text(text, width - 4) == text


def fit_text(text: str, width: int) -> str:
    """``text``, cut at the end with an ellipsis so that it fits ``width`` pixels."""
    font = _font()
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…" if text else ""


def with_name(template: str, name: str, width: int, names: Sequence[str] = ()) -> str:
    """``template`` with ``name`` in its ``{}``, the name shortened where the whole would not
    fit a caption band ``width`` pixels wide: cut at its end while that keeps half of it or
    more ("plus s…") and leaves no prefix of another of ``names`` (the names it could be
    mistaken for), else in its middle, so that names that differ only at their end
    ("n01530575 brambling", "n01531178 goldfinch"; "flower ↗", "flower ↘") do not all read
    "n015…" or "flowe…"."""
    room = width - 4 - _font().getlength(template.format(""))
    end_cut = fit_text(name, room)
    if end_cut == name:
        return template.format(name)
    kept = end_cut.removesuffix("…")
    ambiguous = any(other != name and other.startswith(kept) for other in names)
    if len(kept) >= len(name) / 2 and not ambiguous:
        return template.format(end_cut)
    for kept in range(len(name) - 1, 0, -1):
        short = f"{name[: (kept + 1) // 2].rstrip()}…{name[len(name) - kept // 2 :].lstrip()}"
        if _font().getlength(short) <= room:
            return template.format(short)
    return template.format("…")


def percent(share: float) -> str:
    """``share`` (in [0, 1]) as a whole percentage that rounds no nonzero share to "0%" and no
    share short of all to "100%" ("<1%", ">99%"): a segmenter's class on 0.46% of the pixels
    read "on 0%", as if the map explained a class absent from the probe."""
    if 0 < share < 0.005:
        return "<1%"
    if 0.995 <= share < 1:
        return ">99%"
    return f"{share:.0%}"


@lru_cache(maxsize=4096)
def _text_pixels(text: str, width: int, height: int, align: str) -> np.ndarray:
    """(height, width) uint8 ink coverage of ``text``, vertically centered."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    text = fit_text(text, width - 4)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=_font())
    x = {"left": 2, "center": (width - (right - left)) // 2, "right": width - 2 - right}[align]
    y = (height - (bottom - top)) // 2 - top
    draw.text((x, y), text, fill=255, font=_font())
    return np.asarray(canvas)


def text_band(
    texts: Sequence[str],
    width: int,
    height: int = BAND,
    device: torch.device | str | None = None,
    align: str = "center",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """(N, 3, height, width) white bands, one per text, each in black and cut to fit."""
    if align not in ("left", "center", "right"):
        raise ValueError(f"`align` must be 'left', 'center' or 'right', got {align!r}")
    ink = np.stack([_text_pixels(str(t), width, height, align) for t in texts])
    paper = 255 - torch.from_numpy(ink).to(device)
    return as_display(paper, dtype)[:, None].expand(-1, 3, -1, -1)


def captioned(tiles: Tensor, texts: Sequence[str]) -> Tensor:
    """(N, 3, H, W) tiles with a caption band on top: (N, 3, BAND + H, W)."""
    if len(texts) != len(tiles):
        raise ValueError(f"{len(tiles)} tiles need {len(tiles)} captions, got {len(texts)}")
    if tiles.dtype != torch.uint8:
        tiles = tiles.float()
    band = text_band(texts, tiles.shape[-1], device=tiles.device, dtype=tiles.dtype)
    return torch.cat([band, tiles], dim=2)


def color_bar(
    width: int,
    cmap: str,
    low: str,
    high: str,
    title: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """(3, h, width) legend: ``title`` (wrapped to the width), then the colormap from ``low``
    (left) to ``high``, each end as wide as its longer label needs (at least 48 pixels)."""
    end = max(48, math.ceil(max(_font().getlength(low), _font().getlength(high))) + 8)
    ramp = torch.linspace(0, 1, max(width - 2 * end, 16), device=device)
    table = colormap_table(cmap).to(device)
    strip = table[(ramp * 255).round().long()].T[:, None].expand(-1, BAND - 4, -1)
    strip = torch.nn.functional.pad(as_display(strip, dtype), (0, 0, 2, 2), value=white(dtype))
    ends = text_band([low, high], end, device=device, dtype=dtype)
    bar = torch.cat([ends[0], strip, ends[1]], dim=2)
    bar = torch.nn.functional.pad(bar, (0, width - bar.shape[-1]), value=white(dtype))
    return torch.cat([footnote(width, title, device, dtype), bar], dim=1)


@lru_cache(maxsize=256)
def _wrapped(text: str, width: int) -> tuple[str, ...]:
    return tuple(wrap(text, width))


def wrap(text: str, width: int) -> list[str]:
    """``text`` broken at spaces into lines that fit ``width`` pixels (a long word is cut)."""
    font, lines = _font(), [""]
    for word in text.split():
        candidate = f"{lines[-1]} {word}".strip()
        if font.getlength(candidate) <= width or not lines[-1]:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def footnote(
    width: int,
    text: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """(3, lines * BAND, width) left-aligned text under an image, wrapped to its width (what
    the tiles mean)."""
    bands = text_band(_wrapped(text, width - 4), width, device=device, align="left", dtype=dtype)
    return bands.permute(1, 0, 2, 3).reshape(3, -1, width)


def labelled_table(
    cells: Tensor, row_labels: Sequence[str], column_labels: Sequence[str], padding: int = 2
) -> Tensor:
    """Tile (R, C, 3, H, W) cells with a header band over each column and a label left of each
    row: (3, H', W') of the cells' dtype."""
    rows, columns, _, height, width = cells.shape
    if len(row_labels) != rows or len(column_labels) != columns:
        raise ValueError(
            f"a {rows}x{columns} table needs {rows} row and {columns} column labels, got "
            f"{len(row_labels)} and {len(column_labels)}"
        )
    label_width = table_label_width(row_labels)
    device = cells.device
    cells = cells if cells.dtype == torch.uint8 else cells.float()
    dtype = cells.dtype
    padded = torch.nn.functional.pad(cells, (0, padding, 0, padding), value=white(dtype))
    body = padded.permute(2, 0, 3, 1, 4).reshape(3, rows * (height + padding), -1)
    left = text_band(row_labels, label_width, height + padding, device, "right", dtype)
    left = left.permute(1, 0, 2, 3).reshape(3, rows * (height + padding), label_width)
    header = text_band(column_labels, width + padding, device=device, dtype=dtype)
    header = header.permute(1, 2, 0, 3).reshape(3, BAND, -1)
    corner = torch.full((3, BAND, label_width), white(dtype), device=device, dtype=dtype)
    return torch.cat([torch.cat([corner, header], dim=2), torch.cat([left, body], dim=2)], dim=1)


def table_label_width(row_labels: Sequence[str]) -> int:
    """Width of the label column of a :func:`labelled_table` with these row labels."""
    return 8 + max(math.ceil(_font().getlength(str(t))) for t in row_labels)


def fill_table_row(table: Tensor, row: int, cells: Tensor, label: str, padding: int = 2) -> None:
    """Draw row ``row`` of a :func:`labelled_table`, its label and its (C, 3, H, W) cells, into
    ``table`` in place: a table that grows by a row redraws one row, not all of them. The label
    must fit the table's label column (:func:`table_label_width` of all its labels)."""
    columns, _, height, width = cells.shape
    label_width = table.shape[-1] - columns * (width + padding)
    top = BAND + row * (height + padding)
    band = text_band([label], label_width, height + padding, table.device, "right", table.dtype)
    padded = torch.nn.functional.pad(cells, (0, padding, 0, padding), value=white(table.dtype))
    rows = table[:, top : top + height + padding]
    rows[:, :, :label_width] = band[0]
    rows[:, :, label_width:] = padded.permute(1, 2, 0, 3).reshape(3, height + padding, -1)


def captioned_rows(tiles: Tensor, texts: Sequence[Sequence[str]], padding: int = 2) -> Tensor:
    """(P, K, 3, H, W) tiles, each panel's K side by side under their captions, all panels in a
    few operations: (P, 3, BAND + H, W') panels."""
    panels, k = tiles.shape[:2]
    if len(texts) != panels or any(len(row) != k for row in texts):
        raise ValueError(f"{panels} panels of {k} tiles need {panels} rows of {k} captions")
    captioned_tiles = captioned(tiles.flatten(0, 1), [t for row in texts for t in row])
    padded = torch.nn.functional.pad(
        captioned_tiles, (0, padding), value=white(captioned_tiles.dtype)
    )
    rows = padded.unflatten(0, (panels, k)).permute(0, 2, 3, 1, 4).flatten(3)
    return rows[..., : padded.shape[-1] * k - padding]


def captioned_blocks(
    tiles: Tensor, texts: Sequence[Sequence[str]], columns: int, padding: int = 2
) -> Tensor:
    """(P, K, 3, H, W) tiles, each panel's K in a block of ``columns`` columns under their
    captions, read row by row (the last row filled with white): (P, 3, H', W') panels, narrow
    enough for TensorBoard's card where :func:`captioned_rows` would be too wide."""
    panels, k = tiles.shape[:2]
    rows = -(-k // columns)
    blank = rows * columns - k
    filled = torch.nn.functional.pad(tiles, (0, 0, 0, 0, 0, 0, 0, blank), value=white(tiles.dtype))
    captions = [[*row, *[""] * blank] for row in texts]
    strips = captioned_rows(
        filled.unflatten(1, (rows, columns)).flatten(0, 1),
        [row[i : i + columns] for row in captions for i in range(0, rows * columns, columns)],
        padding,
    )
    strips = torch.nn.functional.pad(strips, (0, 0, 0, padding), value=white(strips.dtype))
    stacked = strips.unflatten(0, (panels, rows)).permute(0, 2, 1, 3, 4).flatten(2, 3)
    return stacked[:, :, : stacked.shape[2] - padding]


def compact(value: float) -> str:
    """A number as a small tile's caption: in at most four characters where it can (``2.93``,
    ``0.98``, ``17.3``, ``123``), to fit a 30-pixel tile."""
    for text in (f"{value:.3g}", f"{value:.2g}", f"{value:.0f}"):
        if len(text) <= 4:
            return text
    return f"{value:.1e}"


def counted(number: int, noun: str) -> str:
    """``number`` and ``noun``, plural but for one: "1 layer", "3 layers"."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def class_name(index: int, names: Sequence[str] | None) -> str:
    """The name of class ``index`` when ``names`` has it, else the index."""
    return str(names[index]) if names is not None and 0 <= index < len(names) else str(index)


def stack_rows(*rows: Tensor) -> Tensor:
    """Stack (3, h, w) images top to bottom, padding narrower ones on the right with white; in
    uint8 if the first is uint8, else in float32."""
    dtype = torch.uint8 if rows[0].dtype == torch.uint8 else torch.float32
    width = max(r.shape[-1] for r in rows)
    padded = [
        torch.nn.functional.pad(as_display(r, dtype), (0, width - r.shape[-1]), value=white(dtype))
        for r in rows
    ]
    return torch.cat(padded, dim=1)
