"""The maths of the embedding view: a fixed subset of a stream, PCA to 2-D, k-NN separation, and
the scatter plot of the points, composed on the device."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib
import torch
from torch import Tensor

from lightning_viz.functional._validation import check_int
from lightning_viz.functional.images import colormap_table, white


def subset_positions(total: int, size: int, seed: int = 0) -> Tensor:
    """``size`` positions out of ``range(total)`` (all of them when ``total <= size``), drawn
    without replacement from a generator seeded with ``seed`` (the global RNG is not touched), in
    increasing order: the same subset for the same arguments, epoch after epoch."""
    check_int("size", size)
    if total <= size:
        return torch.arange(max(total, 0))
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=generator)[:size].sort().values


def pca_2d(features: Tensor) -> Tensor:
    """(N, D) features projected on their two principal axes, (N, 2) float32.

    The axes' signs follow scikit-learn's convention (the largest loading of each axis positive),
    so the picture does not flip between epochs for no reason. Fewer than two axes (N < 3 or D < 2)
    leave zeros in the missing columns.
    """
    centred = features.float() - features.float().mean(dim=0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    axes = vh[:2]
    signs = torch.sign(axes.gather(1, axes.abs().argmax(dim=1, keepdim=True)))
    axes = axes * torch.where(signs == 0, 1.0, signs)
    points = centred @ axes.T
    return torch.nn.functional.pad(points, (0, 2 - points.shape[1]))


def knn_accuracy(features: Tensor, labels: Tensor, k: int = 5) -> Tensor:
    """Leave-one-out k-nearest-neighbour accuracy of ``labels`` from ``features`` (cosine
    similarity, majority vote, ties to the nearest neighbour's class): how well the features
    separate the classes, a 0-dim tensor in [0, 1]. Over the images whose class has another
    image among ``features`` (one alone in its class has no neighbour that could be right); NaN
    where no class has two.

    Cosine similarity makes it blind to the features' scale, which drifts during training.
    """
    check_int("k", k)
    n = features.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return torch.full((), float("nan"), device=features.device)
    unit = torch.nn.functional.normalize(features.float().flatten(1), dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-math.inf)
    neighbours = similarity.topk(k, dim=1).indices
    votes = labels[neighbours]
    classes = int(labels.max()) + 1 if labels.numel() else 1
    counts = torch.zeros(n, classes, device=features.device)
    # the nearest neighbour's vote weighs a little more, to break ties in its favour
    weights = torch.ones(k, device=features.device)
    weights[0] += 0.5
    counts.scatter_add_(1, votes, weights.expand(n, k).contiguous())
    accompanied = labels.bincount(minlength=classes)[labels] > 1
    return (counts.argmax(dim=1) == labels)[accompanied].float().mean()


MAX_DISTINCT_CLASSES = 20
"""The most classes that get a colour each (matplotlib's ``tab20``); past it the colours run
through a colormap by class index."""


def class_colours(
    classes: Sequence[int] | Tensor, count: int, device: torch.device | str = "cpu"
) -> Tensor:
    """(N, 3) uint8 colours of class indices out of ``count`` classes: matplotlib's ``tab10``
    up to 10 classes, ``tab20`` up to 20, each class its own colour; past 20, ``turbo`` by class
    index, where neighbouring classes look alike (``tab10`` repeated every 10 classes drew 75
    classes in 10 colours: clouds that did not exist)."""
    indices = torch.as_tensor(classes, device=device).long()
    if count > MAX_DISTINCT_CLASSES:
        table = colormap_table("turbo").to(device)
        position = indices * (len(table) - 1) // max(1, count - 1)
        return (table[position] * 255).round().to(torch.uint8)
    palette = matplotlib.colormaps["tab10" if count <= 10 else "tab20"].colors
    if count > 10:  # tab20 pairs a dark and a light shade of each hue: neighbours alike
        palette = palette[0::2] + palette[1::2]
    table = (torch.tensor(palette, device=device) * 255).round().to(torch.uint8)
    return table[indices]


VALUE_COLORMAP = "viridis"
"""The colormap of dots coloured by a float target (a regressor's), lowest dark."""


def value_colours(values: Tensor) -> Tensor:
    """(N, 3) uint8 colours of float ``values`` on :data:`VALUE_COLORMAP`, their range spread
    over it (one value: its middle)."""
    low, high = values.min(), values.max()
    position = ((values - low) / (high - low).clamp_min(1e-12)).where(high > low, 0.5)
    table = colormap_table(VALUE_COLORMAP).to(values.device)
    return (table[(position * (len(table) - 1)).round().long()] * 255).round().to(torch.uint8)


def scatter_image(points: Tensor, colours: Tensor, size: int = 400, radius: int = 3) -> Tensor:
    """A (3, size, size) uint8 scatter plot of (N, 2) points drawn as discs in (N, 3) uint8
    colours on white, scaled to fill the square with a margin (equal scale on both axes, so
    distances keep their meaning; the narrower one centred), later points over earlier ones.
    Composed on the device."""
    device = points.device
    image = torch.full((3, size, size), int(white(torch.uint8)), dtype=torch.uint8, device=device)
    if points.shape[0] == 0:
        return image
    low = points.min(dim=0).values
    extent = points.max(dim=0).values - low
    span = extent.max().clamp_min(1e-12)
    margin = radius + 2
    # the narrower axis centred: a flat cloud sat along the bottom edge
    centre = (points - low + (span - extent) / 2) / span * (size - 1 - 2 * margin) + margin
    offsets = torch.arange(-radius, radius + 1, device=device)
    dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
    inside = dy**2 + dx**2 <= radius**2 + radius
    dy, dx = dy[inside], dx[inside]
    # y grows downwards in an image: the second axis points up, as in a plot
    rows = (size - 1 - centre[:, 1:2].round().long() + dy).clamp(0, size - 1)
    cols = (centre[:, 0:1].round().long() + dx).clamp(0, size - 1)
    flat = (rows * size + cols).flatten()
    # each pixel takes the colour of the last point covering it (a deterministic max, where
    # writing the colours directly would leave the order of duplicates to the device)
    point = torch.arange(points.shape[0], device=device).repeat_interleave(dy.numel())
    last = torch.full((size * size,), -1, dtype=torch.long, device=device)
    last.scatter_reduce_(0, flat, point, reduce="amax")
    painted = colours.to(device)[last.clamp_min(0)].T.view(3, size, size)
    return torch.where((last >= 0).view(1, size, size), painted, image)
