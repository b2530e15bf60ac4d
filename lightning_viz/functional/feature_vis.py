"""Feature visualization by activation maximization, in the style of Lucid / torch-lucent.

The image a unit (a channel of a layer) responds to most is grown by gradient ascent on the
unit's mean activation. What makes such images readable rather than adversarial noise is
lucent's recipe, followed here:

- the image is parametrized in Fourier space, each frequency scaled by 1 / frequency
  (:func:`spectrum_to_image`, lucent's ``param.fft_image``), so that Adam's equal steps on every
  parameter favour smooth, low-frequency patterns;
- a 3-channel image is decorrelated in colour (lucent's ``to_valid_rgb(decorrelate=True)``:
  the parameters live in a whitened colour space, mapped to RGB by the square root of ImageNet's
  colour covariance); other channel counts are not decorrelated;
- a sigmoid maps it into [0, 1];
- every step sees the image padded, jittered, scaled and rotated at random
  (:func:`random_transform`, lucent's ``standard_transforms``), so only patterns that survive
  small shifts are rewarded.

All units of a layer are optimized together as one batch (a row per unit), drawn from a seeded
``torch.Generator``: the global RNG stream is never touched. Gradients are taken w.r.t. the
image parameters only, with ``torch.autograd.grad``: no model parameter's ``.grad`` is written.
"""

from __future__ import annotations

import math
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

COLOR_CORRELATION_SVD_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]]
)
"""The square root of ImageNet's colour covariance (Lucid's, as lucent has it)."""
COLOR_CORRELATION = COLOR_CORRELATION_SVD_SQRT / COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()
"""Lucent's ``color_correlation_normalized``: the matrix that maps decorrelated colours to RGB."""

INITIAL_SD = 0.01
"""Standard deviation of a fresh spectrum's values (lucent's default ``sd``)."""
SATURATION_DIVISOR = 4.0
"""Lucid's "magic" constant: the image from the spectrum is divided by it before the sigmoid."""

PAD = 12
"""Pixels of mid-grey padding around the image before the random transform (lucent's pad)."""
FIRST_JITTER = 8
"""Shifts of 0 to 7 pixels before scaling and rotating (lucent's ``jitter(8)``)."""
SCALES = tuple(1 + (i - 5) / 50 for i in range(11))
"""Random scales, 0.9 to 1.1 (lucent's ``random_scale``)."""
ANGLES = tuple(range(-10, 11)) + (0,) * 5
"""Random rotations in degrees, 0 more often (lucent's ``random_rotate``)."""
LAST_JITTER = 4
"""Shifts of 0 to 3 pixels at the end (lucent's ``jitter(4)``)."""

WARM_SCALE = 0.5
"""A warm start continues from the previous spectrum times this: the image keeps its layout at
half its contrast, so a unit whose preference moved (the model trained since) is not held in
the old image's basin. Measured on the digits CNN (benchmarks/feature_vis.py): continuing at
full contrast reached 78% of lucent's 512-step objective in 128 steps, at half 100%."""

DISPLAY_MEAN, DISPLAY_STD = 0.5, 0.25
"""The statistics of a natural photo in [0, 1], mapped to the model's input statistics by
:func:`to_model_input`."""


class FeatureVisualization(NamedTuple):
    """What :func:`visualize_features` returns, for N units."""

    spectrum: Tensor
    """(N, C, H, W // 2 + 1 (+1 for odd W), 2) float32: the image parameters reached (real and
    imaginary parts), to warm-start the next call from."""
    images: Tensor
    """(N, C, H, W) float32 in [0, 1]: the images in display space."""
    objective: Tensor
    """(N,) float32: each unit's mean activation on its image, without the random transform."""
    adam: dict[str, Tensor]
    """Adam's state for the spectrum (``step``, ``exp_avg``, ``exp_avg_sq``), to warm-start the
    next call's optimizer with, so that it continues where this one stopped."""


def spectrum_frequencies(height: int, width: int) -> Tensor:
    """(height, width // 2 + 1) the 2-D frequency of each entry of a real FFT (one more column
    for an odd width, cut off later, as lucent's ``rfft2d_freqs``)."""
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(width, dtype=torch.float64)[: width // 2 + 1 + width % 2]
    return (fx * fx + fy * fy).sqrt()


def spectrum_shape(units: int, channels: int, height: int, width: int) -> tuple[int, ...]:
    """The shape of the spectrum parameters of ``units`` images of (channels, height, width)."""
    return (units, channels, height, width // 2 + 1 + width % 2, 2)


def initial_spectrum(
    units: Sequence[int], channels: int, size: tuple[int, int], seed: int = 0
) -> Tensor:
    """A fresh (N, C, H, W', 2) spectrum of small Gaussian noise (lucent's ``sd=0.01``).

    Each unit's noise comes from its own generator, seeded from ``seed`` and the unit index, so
    a unit starts from the same image whether it is optimized alone or with others (the global
    RNG is not used).
    """
    shape = spectrum_shape(1, channels, *size)[1:]
    rows = [
        torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + unit))
        for unit in units
    ]
    return torch.stack(rows) * INITIAL_SD


def spectrum_to_image(spectrum: Tensor, size: tuple[int, int], decorrelate: bool) -> Tensor:
    """(N, C, H, W) display images in [0, 1] from (N, C, H, W', 2) spectrum parameters.

    Lucent's ``fft_image`` then ``to_valid_rgb``: the spectrum is scaled by 1 / max(frequency,
    1 / max(H, W)), inverted by an orthonormal real FFT and divided by 4; with ``decorrelate``
    (3 channels) the colours are mapped through :data:`COLOR_CORRELATION`; a sigmoid maps the
    result into [0, 1].
    """
    height, width = size
    frequencies = spectrum_frequencies(height, width)
    scale = 1.0 / frequencies.clamp(min=1.0 / max(height, width))
    scale = scale.to(device=spectrum.device, dtype=spectrum.dtype)[None, None, ..., None]
    complex_spectrum = torch.view_as_complex((scale * spectrum).contiguous())
    image = torch.fft.irfftn(complex_spectrum, s=(height, width), norm="ortho")
    image = image[..., :height, :width] / SATURATION_DIVISOR
    if decorrelate:
        matrix = COLOR_CORRELATION.to(device=image.device, dtype=image.dtype)
        image = torch.einsum("nchw,dc->ndhw", image, matrix)
    return torch.sigmoid(image)


def random_transform(images: Tensor, generator: torch.Generator, keep_size: bool = False) -> Tensor:
    """Lucent's ``standard_transforms`` as one affine resampling, drawn from ``generator``.

    The (N, C, H, W) images in [0, 1] are padded by :data:`PAD` pixels of mid-grey, shifted by
    0-7 pixels, scaled by 0.9-1.1 and rotated by -10 to 10 degrees about the centre, then shifted
    by 0-3 pixels, all composed into one ``affine_grid`` + bilinear ``grid_sample``. One draw per
    call serves every image of the batch (as lucent), so a unit sees the same transforms
    whether optimized alone or with others. Pixels moved in from outside the padded image are
    black, as lucent's kornia warps fill them: the contrast at those corners is what gets a unit
    that is silent on a grey image (a ReLU at 0 everywhere, no gradient) started; a grey fill
    left such units at 0 in the benchmark. Difference from lucent: the size stays the padded
    size (lucent's upscaling grows the image).

    With ``keep_size`` the padded margin is cropped away after the transform, for a model that
    takes one input size only (a ViT built for its image size).

    Returns:
        (N, C, H + 2 * PAD, W + 2 * PAD) transformed images; (N, C, H, W) with ``keep_size``.
    """
    padded = F.pad(images, (PAD,) * 4, value=0.5)
    n, c, height, width = padded.shape
    first = torch.randint(FIRST_JITTER, (2,), generator=generator).tolist()
    scale = SCALES[int(torch.randint(len(SCALES), (), generator=generator))]
    angle = ANGLES[int(torch.randint(len(ANGLES), (), generator=generator))]
    last = torch.randint(LAST_JITTER, (2,), generator=generator).tolist()
    # content moves by T_last R S T_first (pixels, about the centre); each output pixel samples
    # the input at the inverse: R^-1 (p - t_last) / s - t_first
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    inverse_rotation = torch.tensor([[cos, sin], [-sin, cos]], dtype=torch.float64)
    linear = inverse_rotation / scale
    offset = -linear @ torch.tensor(last, dtype=torch.float64) - torch.tensor(
        first, dtype=torch.float64
    )
    to_pixels = torch.diag(torch.tensor([width / 2, height / 2], dtype=torch.float64))
    to_normalized = torch.linalg.inv(to_pixels)
    theta = torch.cat([to_normalized @ linear @ to_pixels, (to_normalized @ offset)[:, None]], 1)
    theta = theta.to(device=images.device, dtype=images.dtype).expand(n, 2, 3)
    grid = F.affine_grid(theta, [n, c, height, width], align_corners=False)
    moved = F.grid_sample(padded, grid, mode="bilinear", align_corners=False)
    return moved[..., PAD:-PAD, PAD:-PAD] if keep_size else moved


def to_model_input(images: Tensor, input_mean: Tensor | float, input_std: Tensor | float) -> Tensor:
    """Map display images in [0, 1] into the model's input space.

    A display image with a natural photo's statistics (mean 0.5, standard deviation 0.25 per
    channel) becomes an input with the given per-channel ``input_mean`` and ``input_std``:
    ``input_mean + (x - 0.5) / 0.25 * input_std``. With the defaults of
    :func:`visualize_features` (0.5, 0.25) the display image is the input; for an
    ImageNet-normalized model (mean 0, std 1) this is about lucent's ``normalize()``
    ((x - 0.45) / 0.225), and for the standardized digits it spans their range.
    """
    mean = torch.as_tensor(input_mean, device=images.device, dtype=images.dtype)
    std = torch.as_tensor(input_std, device=images.device, dtype=images.dtype)
    if mean.dim() == 1:
        mean, std = mean[:, None, None], std[:, None, None]
    elif std.dim() == 1:
        std = std[:, None, None]
    return mean + (images - DISPLAY_MEAN) / DISPLAY_STD * std


def unit_objective(activation: Tensor, units: Tensor) -> Tensor:
    """(N,) the mean of row n's channel ``units[n]`` over its map (lucent's ``channel``
    objective, one unit per batch row)."""
    rows = torch.arange(activation.shape[0], device=activation.device)
    return activation[rows, units].float().flatten(1).mean(dim=1)


def visualize_features(
    model: nn.Module,
    layer: str | nn.Module,
    units: Sequence[int],
    image_shape: tuple[int, int, int],
    steps: int = 256,
    spectrum: Tensor | None = None,
    adam: dict[str, Tensor] | None = None,
    *,
    warm_scale: float = WARM_SCALE,
    input_mean: Tensor | float = DISPLAY_MEAN,
    input_std: Tensor | float = DISPLAY_STD,
    seed: int = 0,
    lr: float = 0.05,
    transforms: bool = True,
    forward: Forward | None = None,
    keep_size: bool = False,
) -> FeatureVisualization:
    """Grow, for each unit (channel) of ``layer``, the image that maximizes its mean activation.

    All units are optimized as one batch, a row per unit: ``steps`` Adam steps (lucent's lr
    0.05) on the Fourier parameters of the images, each step one forward that stops at the
    layer and one ``torch.autograd.grad`` w.r.t. the parameters (no ``backward()``, no model
    ``.grad`` written; capture hooks removed after each pass). Each step's random transform
    comes from a ``torch.Generator`` seeded with ``seed``; a fresh spectrum from per-unit
    generators (:func:`initial_spectrum`); the global RNG is not used. Works under
    ``torch.inference_mode``, with autocast off. Run the model in eval mode: in train mode
    BatchNorm would mix the units' statistics and update its running ones.

    Args:
        model: the network; run as ``model(inputs)`` unless ``forward`` is given.
        layer: a name from ``model.named_modules()`` (or the module) with an (N, C, h, w) output.
        units: the channels of ``layer`` to visualize, one batch row each.
        image_shape: (C, H, W) of the model's inputs.
        steps: optimization steps (0 only evaluates ``spectrum``).
        spectrum: parameters to continue from (a previous call's ``spectrum``, a warm start),
            scaled by ``warm_scale``; default a fresh one.
        adam: Adam's state to continue with (a previous call's ``adam``); default a fresh one.
        warm_scale: the factor a warm start's ``spectrum`` is scaled by (:data:`WARM_SCALE`;
            1 continues exactly where the previous call stopped).
        input_mean, input_std: per-channel statistics (floats or (C,) tensors) of the model's
            inputs; display images map to them as in :func:`to_model_input`.
        seed: seeds the random transforms and a fresh spectrum.
        lr: Adam's learning rate.
        transforms: apply :func:`random_transform` at each step (lucent's default).
        forward: how to run the model when not ``model(inputs)``.
        keep_size: the transformed images keep the input size (:func:`random_transform`), for
            a model that takes no other (a ViT built for its image size); else they are
            :data:`PAD` pixels larger a side, as lucent's.

    Returns:
        ``FeatureVisualization(spectrum, images, objective)``: the parameters reached (on the
        model's device, detached), the display images in [0, 1], and each unit's objective on
        its image without transforms.

    Raises:
        ValueError: an empty ``units``, a unit outside the layer's channels, ``image_shape`` not
            (C, H, W), a ``spectrum`` of another shape, an unknown layer or one that does not
            give an (N, C, h, w) map.
    """
    steps = check_int("steps", steps, minimum=0)
    units = [check_int("units", int(unit), minimum=0) for unit in units]
    if not units:
        raise ValueError("`units` is empty: give at least one channel index")
    if len(image_shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in image_shape):
        raise ValueError(f"`image_shape` must be (C, H, W) positive ints, got {image_shape!r}")
    channels, height, width = image_shape
    expected = spectrum_shape(len(units), channels, height, width)
    if spectrum is not None and tuple(spectrum.shape) != expected:
        raise ValueError(
            f"`spectrum` must have shape {expected} for {len(units)} units and images of "
            f"{tuple(image_shape)}, got {tuple(spectrum.shape)}"
        )
    modules = resolve_layers(model, [layer])
    device = model_device(model) or torch.device("cpu")
    if spectrum is None:
        spectrum = initial_spectrum(units, channels, (height, width), seed)
    else:
        spectrum = spectrum * warm_scale
    decorrelate = channels == 3
    generator = torch.Generator().manual_seed(seed)

    def objective_of(images: Tensor) -> Tensor:
        inputs = to_model_input(images, mean, std)
        _, captured = run_until_captured(
            model, inputs, modules, full_forward=False, forward=forward
        )
        activation = next(iter(captured.values()))
        if max(units) >= activation.shape[1]:
            raise ValueError(
                f"`units` must be channels of {next(iter(modules))!r}, which has "
                f"{activation.shape[1]}; got {max(units)}"
            )
        return unit_objective(activation, unit_index)

    with (
        torch.inference_mode(False),
        torch.enable_grad(),
        torch.autocast(device_type=device.type, enabled=False),
    ):
        # made here, so that none is an inference tensor (Lightning's validation)
        unit_index = torch.tensor(units, device=device)
        mean, std = (
            torch.as_tensor(value, device=device, dtype=torch.float32).clone()
            for value in (input_mean, input_std)
        )
        parameters = spectrum.detach().to(device=device, dtype=torch.float32).clone()
        parameters.requires_grad_(True)
        optimizer = torch.optim.Adam([parameters], lr=lr)
        if adam is not None:
            optimizer.state[parameters] = {
                key: value.detach().to(device).clone() for key, value in adam.items()
            }
        for _ in range(steps):
            images = spectrum_to_image(parameters, (height, width), decorrelate)
            if transforms:
                images = random_transform(images, generator, keep_size)
            (gradient,) = torch.autograd.grad(objective_of(images).sum(), parameters)
            parameters.grad = -gradient  # ascent: Adam minimizes
            optimizer.step()
        parameters.grad = None
        with torch.no_grad():
            images = spectrum_to_image(parameters, (height, width), decorrelate)
            objective = objective_of(images)
    state = {key: value.detach() for key, value in optimizer.state[parameters].items()}
    return FeatureVisualization(parameters.detach(), images, objective, state)
