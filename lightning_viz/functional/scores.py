"""Can an explanation be trusted? The scores that go beside it.

- :func:`rank_correlation` and :func:`structural_similarity` compare two maps of each image: an
  explanation against the same explanation on a randomized copy of the model (the model-parameter
  randomization test of Adebayo et al., 2018, with :func:`randomized_copy`), or against the
  previous epoch's (stability);
- :func:`deletion_insertion` measures faithfulness: how fast the class's probability falls when
  pixels are removed in the order the map ranks them (and rises when they are added), against a
  random order;
- :func:`pointing_game` and :func:`energy_in_box` measure localization on probes with known boxes.

All batched over images (and over curve steps), on the device, no host sync.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_viz.functional._capture import Forward, hooked_forward
from lightning_viz.functional._pass import default_max_batch, untouched_rng
from lightning_viz.functional._validation import check_int, check_logits, target_index
from lightning_viz.functional.gradcam import (
    OutputTransform,
    class_maps,
    class_scores,
    probabilities_of,
)

T = TypeVar("T")


def _ranks(values: Tensor) -> Tensor:
    """Per row, the rank of each value (0-based), ties given their mean rank (scipy's
    ``rankdata(method="average")`` minus 1)."""
    ordered = values.sort(dim=1).values
    below = torch.searchsorted(ordered, values, right=False)
    up_to = torch.searchsorted(ordered, values, right=True)
    return (below + up_to - 1).float() / 2


def rank_correlation(first: Tensor, second: Tensor) -> Tensor:
    """(N,) Spearman rank correlation of each image's two maps (any shape after the first
    dimension, flattened), ties at their mean rank as scipy's ``spearmanr``; NaN where a map is
    constant, as there (it ranks nothing; :func:`map_similarity` reads it as a score)."""
    if first.shape != second.shape:
        raise ValueError(f"maps of shapes {tuple(first.shape)} and {tuple(second.shape)} differ")
    a = _ranks(first.detach().float().flatten(1))
    b = _ranks(second.detach().float().flatten(1))
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    scale = (a.square().sum(dim=1) * b.square().sum(dim=1)).sqrt()
    return torch.where(scale > 0, (a * b).sum(dim=1) / scale.clamp(min=1e-12), math.nan)


def map_similarity(rated: Tensor, reference: Tensor) -> Tensor:
    """(N,) :func:`rank_correlation` of the maps being rated with reference maps (the previous
    render's, the randomized network's), read as a score: NaN where the rated map is constant
    (an empty map: nothing to score), 0 where only the reference is (unlike: the sanity score
    reads an empty randomized map so; the stability score masks an empty previous map
    instead, nothing to compare)."""
    alike = rank_correlation(rated, reference)
    return torch.where(constant_maps(rated), math.nan, alike.nan_to_num(nan=0.0))


def map_structural_similarity(rated: Tensor, reference: Tensor) -> Tensor:
    """(N,) :func:`structural_similarity` of the (N, H, W) maps being rated with reference
    maps, read as a score: NaN where the rated map is constant (two empty maps have an SSIM of
    1, which would read as "does not depend on what was learned")."""
    return torch.where(constant_maps(rated), math.nan, structural_similarity(rated, reference))


def constant_maps(maps: Tensor) -> Tensor:
    """(N,) whether each map holds one value everywhere (an empty map: nothing to score)."""
    flat = maps.detach().flatten(1)
    return (flat == flat[:, :1]).all(dim=1)


INDEPENDENT = 0.5
"""Two maps of the same images whose mean rank correlation reaches this are read as alike:
Adebayo et al. (2018) read explanations of a randomized network at 0.5 and above as
similar to the trained network's, i.e. not depending on what it learned."""

STABLE = 0.9
"""A view's maps count as settled while their mean rank correlation with the previous render's
stays at or above this (the stability score)."""

SSIM_SIGMA = 1.5
"""The Gaussian window of :func:`structural_similarity` (Wang et al.'s, scikit-image's with
``gaussian_weights=True``)."""
SSIM_SIDE = 2 * int(3.5 * SSIM_SIGMA + 0.5) + 1
"""The window's side (scikit-image's truncation at 3.5 sigma): the smallest maps SSIM takes."""


def structural_similarity(first: Tensor, second: Tensor) -> Tensor:
    """(N,) mean SSIM of each image's two (N, H, W) maps, each min-max normalized to [0, 1]
    first: scikit-image's ``structural_similarity(data_range=1, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)``, the mean over the pixels its 11x11 window fits."""
    if first.shape != second.shape or first.dim() != 3:
        raise ValueError(
            f"expected two (N, H, W) maps of one shape, got {tuple(first.shape)} and "
            f"{tuple(second.shape)}"
        )
    side, radius = SSIM_SIDE, SSIM_SIDE // 2
    if min(first.shape[-2:]) < side:
        raise ValueError(f"maps must be at least {side}x{side} for SSIM, got {first.shape[-2:]}")
    x, y = (_unit_range(m)[:, None] for m in (first, second))
    offsets = torch.arange(side, device=x.device, dtype=x.dtype) - radius
    kernel = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    kernel = kernel / kernel.sum()

    def blur(values: Tensor) -> Tensor:
        rows = F.conv2d(values, kernel.view(1, 1, side, 1))
        return F.conv2d(rows, kernel.view(1, 1, 1, side))

    mean_x, mean_y = blur(x), blur(y)
    var_x = blur(x * x) - mean_x**2
    var_y = blur(y * y) - mean_y**2
    covariance = blur(x * y) - mean_x * mean_y
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mean_x * mean_y + c1) * (2 * covariance + c2)) / (
        (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    )
    return ssim.flatten(1).mean(dim=1)


def _unit_range(maps: Tensor) -> Tensor:
    flat = maps.detach().float().flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    return ((flat - low) / (high - low).clamp(min=1e-12)).view_as(maps)


def _parametrized(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``model``'s layers with ``reset_parameters``, in ``named_modules()`` order."""
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "reset_parameters")]


def layers_that_run(model: nn.Module, inputs: Tensor, forward: Forward | None = None) -> list[str]:
    """The names of ``model``'s parametrized layers (those with ``reset_parameters``) in the
    order one forward of ``inputs`` (``forward(inputs)``, default ``model(inputs)``, without
    gradients) first calls them; layers that do not run are left out."""
    order: dict[str, None] = {}
    handles = [
        module.register_forward_pre_hook(lambda _, __, name=name: order.setdefault(name))
        for name, module in _parametrized(model)
    ]
    hooked_forward(model, inputs, handles, forward)
    return list(order)


def upper_half(
    model: nn.Module, inputs: Tensor | None = None, forward: Forward | None = None
) -> list[str]:
    """The names of the upper half of ``model``'s parametrized layers, rounded up: what the
    sanity scores re-initialize. In the order a forward of ``inputs`` runs them when given
    (:func:`layers_that_run`: a head defined before its backbone still counts as the top, and a
    GAN's generator, which a discriminator's forward does not run, is left out), else in
    ``named_modules()`` order."""
    if inputs is None:
        names = [name for name, _ in _parametrized(model)]
    else:
        names = layers_that_run(model, inputs, forward)
    return names[len(names) // 2 :]


def randomized_parameters(
    model: nn.Module, modules: int | Sequence[str] | None = None, seed: int = 0
) -> dict[str, Tensor]:
    """Re-initialized parameters and buffers of ``model``'s parametrized layers, cascading from
    the top: ``modules`` names them (:func:`upper_half`), or counts the last layers with
    ``reset_parameters`` in ``named_modules()`` order (None: all of them). Each gets its own
    default initialization (BatchNorm's running statistics reset too), returned as ``{name:
    tensor}`` for ``torch.func.functional_call``: the model runs with them without being copied
    or touched. Each layer is reset on a copy of itself; the draws come from ``seed`` with the
    global RNG saved and restored, so training's stream is not shifted.

    Raises:
        ValueError: a count that is not a positive integer, or a name that is not a
            parametrized layer of ``model``.
    """
    layers = _parametrized(model)
    if modules is None:
        chosen = layers
    elif isinstance(modules, int):
        chosen = layers[len(layers) - check_int("modules", modules) :]
    else:
        wanted = set(modules)
        unknown = wanted - {name for name, _ in layers}
        if unknown:
            raise ValueError(
                f"`modules` must name layers with reset_parameters; not such: {sorted(unknown)}"
            )
        chosen = [(name, layer) for name, layer in layers if name in wanted]
    replaced: dict[str, Tensor] = {}
    with untouched_rng(), torch.no_grad():
        torch.manual_seed(seed)
        for name, layer in reversed(chosen):
            fresh = copy.deepcopy(layer)
            fresh.reset_parameters()
            prefix = f"{name}." if name else ""
            for key, value in [*fresh.named_parameters(), *fresh.named_buffers()]:
                replaced[prefix + key] = value.detach()
    return replaced


class _Calling(nn.Module):
    """Runs ``run()`` (which uses ``model``) as its own forward, with ``model`` as its child
    ``inner``, so that ``functional_call`` can swap ``model``'s tensors for the call."""

    def __init__(self, model: nn.Module, run: Callable[[], Any]) -> None:
        super().__init__()
        self.inner = model
        self.runs = (run,)  # in a tuple: a module assigned directly would be a second child

    def forward(self) -> Any:
        return self.runs[0]()


def _swapped_call(model: nn.Module, tensors: dict[str, Tensor], run: Callable[[], T]) -> T:
    """``run()`` with ``tensors`` swapped in for ``model``'s own for the call."""
    replaced = {f"inner.{name}": value for name, value in tensors.items()}
    return torch.func.functional_call(_Calling(model, run), replaced, (), strict=False)


def randomized_call(
    model: nn.Module,
    run: Callable[[], T],
    modules: int | Sequence[str] | None = None,
    seed: int = 0,
) -> T:
    """``run()`` with :func:`randomized_parameters` swapped in for ``model``'s tensors for the
    call (``torch.func.functional_call``), without copying the model: whatever ``run`` computes
    with the model (an explanation, forwards and backwards, reading a layer's weights) is the
    randomized network's, and the model's own tensors are back when it returns or raises. Hooks
    on its modules fire as usual."""
    return _swapped_call(model, randomized_parameters(model, modules, seed), run)


def randomized_forward(
    model: nn.Module,
    modules: int | Sequence[str] | None = None,
    seed: int = 0,
    forward: Forward | None = None,
) -> Forward:
    """How to run ``model`` (or ``forward``, which calls it) with :func:`randomized_parameters`
    swapped in for each call, as :func:`randomized_call` does; the draws are made once."""
    tensors = randomized_parameters(model, modules, seed)
    run = forward or model
    return lambda inputs: _swapped_call(model, tensors, lambda: run(inputs))


def randomized_copy(
    model: nn.Module, modules: int | Sequence[str] | None = None, seed: int = 0
) -> nn.Module:
    """A deep copy of ``model`` with :func:`randomized_parameters` loaded; ``model`` is not
    touched."""
    copied = copy.deepcopy(model)
    copied.load_state_dict(randomized_parameters(model, modules, seed), strict=False)
    return copied


class Curves(NamedTuple):
    """What :func:`deletion_insertion` returns for N images and S steps."""

    deletion: Tensor
    """(N, S + 1): the target's probability with the top 0, 1/S, ..., all of the pixels, in the
    map's order, set to the baseline."""
    insertion: Tensor
    """(N, S + 1): the same, starting from the baseline image and adding the pixels back."""
    deletion_auc: Tensor
    """(N,) the area under the deletion curve over [0, 1] (trapezoids): low is faithful."""
    insertion_auc: Tensor
    """(N,) the area under the insertion curve: high is faithful."""


def deletion_insertion(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    targets: Tensor | Sequence[int] | int | None = None,
    steps: int = 16,
    baseline: float = 0.0,
    output_transform: OutputTransform = class_scores,
    forward: Forward | None = None,
    max_batch: int | None = None,
    probabilities: bool | str = True,
    segmentation: bool = False,
) -> Curves:
    """Deletion and insertion curves of (N, H, W) ``maps`` (Petsiuk et al., RISE, 2018): pixels
    ranked by the map (highest first, ties by position) are set to ``baseline`` (all channels) a
    ``1 / steps`` share at a time, and the probability of the target class (``probabilities``:
    True or ``"softmax"``, ``"sigmoid"`` for a multi-label model) is read after each; insertion
    starts from the baseline image and puts them back in the same order. Every step of every
    image is one row of batched forwards of at most ``max_batch`` images, without gradients; run
    the model in eval mode.

    A map that ranks the evidence first makes the deletion curve fall fast (a low AUC) and the
    insertion curve rise fast (a high one); compare with a random order (:func:`random_maps`).

    With ``segmentation``, the model outputs per-pixel class scores (N, K, H, W), found as
    :func:`~lightning_viz.functional.class_maps` finds them (``output_transform`` is not used),
    and each step reads the target class's mean probability over the pixels the unperturbed
    image predicts as the class (its highest score, or with ``"sigmoid"`` a positive one; every
    pixel where it predicts none; ``targets`` None: the class of the largest summed score,
    :func:`~lightning_viz.functional.class_scores`, often the background): a fixed set, where a
    score over the pixels each perturbed image predicts as the class jumps as they change, and the
    class's probability of the whole image (a softmax over sums of thousands of pixels) stays
    at 1.

    Raises:
        ValueError: maps whose shape is not (N, H, W) of the images, bad arguments, or with
            ``segmentation`` an output without class maps.
    """
    steps = check_int("steps", steps)
    if maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(
            f"`maps` must have shape {(images.shape[0], *images.shape[-2:])} (one (H, W) map per "
            f"image), got {tuple(maps.shape)}"
        )
    max_batch = check_int("max_batch", max_batch, allow_none=True) or default_max_batch(
        images.device
    )
    run = forward or model
    n, pixels = images.shape[0], maps[0].numel()
    order = maps.detach().float().flatten(1).argsort(dim=1, descending=True, stable=True)
    positions = torch.arange(pixels, device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    counts = torch.linspace(0, pixels, steps + 1, device=images.device).round().long()
    with torch.no_grad(), torch.autocast(device_type=images.device.type, enabled=False):
        output = run(images)
        if segmentation:
            reference_maps = _segmentation_maps(output)
            index = target_index(targets, class_scores(reference_maps))
            region = _class_region(reference_maps, index, probabilities)
        else:
            index = target_index(targets, check_logits(output_transform(output), n).float())
        curves = []
        for inserting in (False, True):
            rows = torch.arange(n * (steps + 1), device=images.device)
            read = []
            for chunk in rows.split(max_batch):
                image, step = chunk // (steps + 1), chunk % (steps + 1)
                # a pixel is hidden at step s when its rank is below the step's count
                hidden = rank[image] < counts[step][:, None]
                if inserting:
                    hidden = ~hidden
                hidden = hidden.view(-1, 1, *images.shape[-2:]).float()
                batch = images[image].float() * (1 - hidden) + baseline * hidden
                output = run(batch.to(images.dtype))
                if segmentation:
                    maps = _segmentation_maps(output)
                    read.append(_region_mean(maps, index[image], region[image], probabilities))
                    continue
                scores = check_logits(output_transform(output), len(chunk))
                probability = probabilities_of(scores, probabilities)
                read.append(probability.gather(1, index[image][:, None])[:, 0])
            curves.append(torch.cat(read).view(n, steps + 1))
    deletion, insertion = curves
    return Curves(deletion, insertion, _area(deletion), _area(insertion))


def _segmentation_maps(output: Any) -> Tensor:
    maps = class_maps(output)
    if maps is None:
        raise ValueError(
            "`segmentation=True` needs a model output of per-pixel class scores (N, K, H, W), "
            f"got {type(output).__name__}"
            + (f" of shape {tuple(output.shape)}" if isinstance(output, Tensor) else "")
        )
    return maps.float()


def _class_region(maps: Tensor, index: Tensor, probabilities: bool | str) -> Tensor:
    """(N, H, W) bool: the pixels that (N, K, H, W) ``maps`` predict as each image's class (its
    highest score; with ``"sigmoid"``, every class whose score is positive: a binary or
    multi-label segmenter's); every pixel of an image where none is."""
    if probabilities == "sigmoid":
        region = maps.gather(1, index[:, None, None, None].expand(-1, 1, *maps.shape[2:]))[:, 0] > 0
    else:
        region = maps.argmax(dim=1) == index[:, None, None]
    return region | ~region.flatten(1).any(dim=1)[:, None, None]


def _region_mean(maps: Tensor, index: Tensor, region: Tensor, probabilities: bool | str) -> Tensor:
    """(B,) the mean over each ``region`` (B, H, W) of class ``index``'s per-pixel
    probability (:func:`probabilities_of` over the K classes of (B, K, H, W) ``maps``)."""
    classes = maps.shape[1]
    per_pixel = probabilities_of(maps.movedim(1, -1).reshape(-1, classes), probabilities)
    per_pixel = per_pixel.view(len(maps), -1, classes)
    chosen = per_pixel.gather(2, index.view(-1, 1, 1).expand(-1, per_pixel.shape[1], 1))[..., 0]
    weights = region.flatten(1).float()
    return (chosen * weights).sum(dim=1) / weights.sum(dim=1)


def _area(curves: Tensor) -> Tensor:
    """(N,) trapezoid area of (N, S + 1) curves over [0, 1]."""
    return torch.trapezoid(curves, dx=1.0 / (curves.shape[1] - 1), dim=1)


def random_maps(like: Tensor, seed: int = 0) -> Tensor:
    """Maps of ``like``'s shape with uniform random values from a generator seeded with
    ``seed`` (the global RNG is not used): a random pixel order, the reference a faithful map
    must beat."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(like.shape, generator=generator).to(like.device)


def region_masks(regions: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, H, W) boolean masks of ``regions``: (N, 4) boxes (top, left, bottom, right; bottom
    and right exclusive) drawn at ``size``, or (N, H, W) masks as they are (nonzero inside)."""
    if regions.dim() == 3:
        if tuple(regions.shape[-2:]) != tuple(size):
            raise ValueError(
                f"masks of size {tuple(regions.shape[-2:])} do not match maps of size {size}"
            )
        return regions != 0
    if regions.dim() != 2 or regions.shape[1] != 4:
        raise ValueError(f"expected (N, 4) boxes or (N, H, W) masks, got {tuple(regions.shape)}")
    rows = torch.arange(size[0], device=regions.device)
    cols = torch.arange(size[1], device=regions.device)
    inside_rows = (rows >= regions[:, :1]) & (rows < regions[:, 2:3])
    inside_cols = (cols >= regions[:, 1:2]) & (cols < regions[:, 3:4])
    return inside_rows[:, :, None] & inside_cols[:, None, :]


def pointing_game(maps: Tensor, regions: Tensor) -> Tensor:
    """(N,) 1 where the peak of each (N, H, W) map (the first, row-major, on ties) lies in its
    image's region, else 0, NaN for a constant map (it has no peak); ``regions`` are (N, 4)
    boxes or (N, H, W) masks (:func:`region_masks`)."""
    inside = region_masks(regions.to(maps.device), tuple(maps.shape[-2:])).flatten(1)
    peak = maps.flatten(1).argmax(dim=1, keepdim=True)
    hit = inside.gather(1, peak)[:, 0].float()
    return torch.where(constant_maps(maps), math.nan, hit)


def energy_in_box(maps: Tensor, regions: Tensor) -> Tensor:
    """(N,) the share of each (N, H, W) map's positive mass inside its region, (N, 4) boxes or
    (N, H, W) masks (Wang et al.'s energy-based pointing game, Score-CAM); NaN for a map with
    no positive value."""
    positive = maps.detach().float().clamp(min=0)
    inside = region_masks(regions.to(maps.device), tuple(maps.shape[-2:]))
    total = positive.flatten(1).sum(dim=1)
    kept = (positive * inside).flatten(1).sum(dim=1)
    return torch.where(total > 0, kept / total.clamp(min=1e-12), math.nan)
