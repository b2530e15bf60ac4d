"""Occlusion sensitivity (Zeiler & Fergus, 2014): how much the explained class's score drops when
a patch of the image is hidden, at every patch position, in a few large batched forwards."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_viz.functional._capture import Forward, model_device
from lightning_viz.functional._pass import default_max_batch
from lightning_viz.functional._validation import (
    check_int,
    check_logits,
    check_pair,
    target_index,
)
from lightning_viz.functional.gradcam import OutputTransform, class_scores, probabilities_of


def occlusion_windows(
    size: tuple[int, int], window: tuple[int, int], stride: tuple[int, int], device=None
) -> Tensor:
    """(P, H, W) float masks, 1 inside each window position, row-major over the positions.

    Windows start every ``stride`` pixels until one reaches the last row and column; a last
    window that would cross the border is cut there (as captum's ``Occlusion`` does), so every
    pixel is covered.
    """
    axes = []
    for length, side, step in zip(size, window, stride, strict=True):
        starts = torch.arange(0, max(length - side, 0) + step, step, device=device)
        pixels = torch.arange(length, device=device)
        axes.append((pixels >= starts[:, None]) & (pixels < starts[:, None] + side))
    rows, columns = axes
    return (rows[:, None, :, None] & columns[None, :, None, :]).flatten(0, 1).float()


def occlusion(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | Sequence[int] | int | None = None,
    window: int | Sequence[int] = 8,
    stride: int | Sequence[int] = 4,
    baseline: float = 0.0,
    probabilities: bool | str = True,
    output_transform: OutputTransform = class_scores,
    forward: Forward | None = None,
    max_batch: int | None = None,
) -> Tensor:
    """Occlusion sensitivity of each image: for every pixel, the mean drop of the target's score
    over the windows that hide it.

    A ``window`` patch (all channels) is set to ``baseline`` at every position (see
    :func:`occlusion_windows`); the drop of the target class's probability (``probabilities``,
    else of its score) against the unoccluded image is spread over the patch's pixels, and each
    pixel gets the mean over the patches that cover it: captum's ``Occlusion`` with the same
    window, stride and baseline. Pixels that no patch covers (a stride longer than the window)
    get 0. All positions of all images run as batched forwards of at most
    ``max_batch`` occluded images, without gradients. Run the model in eval mode.

    Args:
        model: the network; run as ``model(x)`` unless ``forward`` is given.
        images: (N, C, H, W) on the model's device (uint8 images stay uint8).
        targets: the class to explain per image (N,), one for all, or None for the predicted one.
        window: the patch's (height, width), or one side for a square.
        stride: pixels between patch positions, (vertical, horizontal) or one for both.
        baseline: the value hidden pixels take.
        probabilities: measure the softmax probability (True or ``"softmax"``), each class's
            sigmoid (``"sigmoid"``: a multi-label model) or the raw score (False).
        output_transform: turns the model's output into (N, num_classes) scores.
        forward: how to run the model when not ``model(x)``.
        max_batch: the most occluded images per forward (memory: that many images'
            activations); None: :func:`~lightning_viz.functional._pass.default_max_batch`.

    Returns:
        (N, H, W) float32: positive where hiding the pixel lowers the target's score (evidence
        for it), negative where it raises it.

    Raises:
        ValueError: not a batch of images, a window larger than the images, bad arguments,
            targets out of range.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"`images` must have shape (N, C, H, W) with N >= 1, got {shape}")
    window, stride = check_pair("window", window), check_pair("stride", stride)
    size = tuple(images.shape[-2:])
    if window[0] > size[0] or window[1] > size[1]:
        raise ValueError(f"`window` {window} is larger than the images, {size}")
    max_batch = check_int("max_batch", max_batch, allow_none=True) or default_max_batch(
        images.device
    )
    device = model_device(model)
    if device is not None and images.device != device:
        raise ValueError(
            f"`images` are on {images.device} but the model is on {device}; "
            "move them with images.to(device)"
        )
    run = forward or model

    def scores(batch: Tensor) -> Tensor:
        return probabilities_of(
            check_logits(output_transform(run(batch)), len(batch)), probabilities
        )

    with torch.no_grad(), torch.autocast(device_type=images.device.type, enabled=False):
        reference = scores(images)
        index = target_index(targets, reference)
        masks = occlusion_windows(size, window, stride, images.device)
        n, positions = len(images), len(masks)
        rows = torch.arange(n * positions, device=images.device)
        occluded_scores = []
        for chunk in rows.split(max_batch):
            image, position = chunk // positions, chunk % positions
            hidden = masks[position][:, None]
            batch = images[image].float() * (1 - hidden) + baseline * hidden
            if images.dtype == torch.uint8:
                batch = batch.round_().clamp_(0, 255)
            batch = batch.to(images.dtype)
            occluded_scores.append(scores(batch).gather(1, index[image][:, None])[:, 0])
        drops = reference.gather(1, index[:, None]) - torch.cat(occluded_scores).view(n, positions)
        covered = masks.sum(dim=0).clamp(min=1)  # a stride past the window skips pixels: 0
        return torch.einsum("np,phw->nhw", drops, masks) / covered
