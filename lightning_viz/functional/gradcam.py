"""Grad-CAM (Selvaraju et al., 2017) for several layers from one forward and one backward."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_viz.functional._capture import (
    Forward,
    capture_outputs,
    grid_side,
    output_shapes,
    resolve_layers,
    run_until_captured,
    token_grid,
)
from lightning_viz.functional._pass import gradient_pass
from lightning_viz.functional._relu_rules import relu_rule, warn_ruleless
from lightning_viz.functional._validation import check_logits, target_index

OutputTransform = Callable[[Any], Tensor]
_POOLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_SCORE_KEYS = ("out", "logits")


def class_scores(output: Any) -> Tensor:
    """The (N, num_classes) class scores in the common shapes of a model's output.

    - a tensor (N, K): the logits as they are; (N,): one score per image, as (N, 1);
    - segmentation maps (N, K, H, W): for each class, the sum of its scores over the pixels
      predicted as that class (pytorch-grad-cam's ``SemanticSegmentationTarget`` with the
      predicted mask), so Grad-CAM explains the predicted region of a class;
    - a tuple or list: its first tensor (``(logits, aux)``);
    - a dict: its ``"out"`` or ``"logits"`` entry, or its only tensor (torchvision's
      segmentation models return ``{"out": ..., "aux": ...}``).

    Raises:
        ValueError: an output in none of these shapes; pass your own ``output_transform``.
    """
    scores = _score_tensor(output)
    if scores.dim() == 1:
        return scores[:, None]
    if scores.dim() == 4:
        predicted = scores.detach().argmax(dim=1, keepdim=True)
        mask = torch.zeros_like(scores).scatter_(1, predicted, 1.0)
        return (scores * mask).sum(dim=(2, 3))
    return scores


PROBABILITIES = ("softmax", "sigmoid")
"""How class scores become probabilities: a softmax over the classes (one class per image), or
each score's sigmoid (every class on its own: multi-label models, single-logit binary
classifiers, trained with ``BCEWithLogitsLoss``)."""


def probabilities_of(scores: Tensor, probabilities: bool | str = True) -> Tensor:
    """(N, K) float32 probabilities of (N, K) class scores by ``probabilities``, one of
    :data:`PROBABILITIES` (True: ``"softmax"``); the scores as they are for False.

    Raises:
        ValueError: ``probabilities`` none of these.
    """
    if isinstance(probabilities, str):
        if probabilities not in PROBABILITIES:
            raise ValueError(
                f"`probabilities` must be True, False or one of {PROBABILITIES}, got "
                f"{probabilities!r}"
            )
        kind = probabilities
    else:
        kind = "softmax" if probabilities else None
    scores = scores.float()
    if kind == "sigmoid":
        return scores.sigmoid()
    return scores.softmax(dim=1) if kind == "softmax" else scores


def class_maps(output: Any) -> Tensor | None:
    """The (N, K, H, W) per-pixel class scores of a segmentation model's output, in the shapes
    :func:`class_scores` reads; None for any other output."""
    try:
        scores = _score_tensor(output)
    except ValueError:
        return None
    return scores if scores.dim() == 4 else None


def reconstructs(output: Any, images: Tensor) -> bool:
    """Whether a model's ``output`` is an image the size of its input ``images`` (an
    autoencoder's reconstruction), not class scores."""
    return isinstance(output, Tensor) and output.shape[1:] == images.shape[1:]


def pixel_shares(maps: Tensor) -> Tensor:
    """(N, K): the share of each image's pixels that per-pixel class scores ``maps`` (N, K, H,
    W) predict as each class."""
    predicted = maps.detach().argmax(dim=1)
    counts = torch.zeros(maps.shape[:2], device=maps.device)
    counts.scatter_add_(
        1, predicted.flatten(1), torch.ones_like(predicted.flatten(1), dtype=counts.dtype)
    )
    return counts / predicted[0].numel()


def segmented_classes(shares: Tensor) -> Tensor:
    """(N,) the class each image's segmentation is about, from its :func:`pixel_shares`: the
    one predicted on most of its pixels besides the class predicted on most pixels of all the
    images (the background, as a rule); that class where an image shows nothing else."""
    dominant = shares.sum(dim=0).argmax()
    others = shares.clone()
    others[:, dominant] = 0
    best, index = others.max(dim=1)
    return torch.where(best > 0, index, dominant)


def on_the_scores_path(
    model: nn.Module, images: Tensor, names: Sequence[str], forward: Forward | None = None
) -> list[str]:
    """The layers of ``names`` that ran in a forward of ``images`` and that the model's class
    scores (the tensor :func:`class_scores` reads) are computed from, by one backward: not an
    auxiliary head, which torchvision's segmentation nets run last and which feeds only their
    training loss. Every layer that ran where the output holds no such tensor."""
    if not names:
        return []
    modules = resolve_layers(model, list(names))
    with gradient_pass(model, images) as x, capture_outputs(modules) as captured:
        output = (forward or model)(x)
        ran = [name for name in names if name in captured]
        try:
            scores = _score_tensor(output)
        except ValueError:
            return ran
        if not ran or not scores.requires_grad:
            return ran
        maps = [captured[name] for name in ran]
        gradients = torch.autograd.grad(scores.float().sum(), maps, allow_unused=True)
    return [name for name, gradient in zip(ran, gradients, strict=True) if gradient is not None]


def _score_tensor(output: Any) -> Tensor:
    """The tensor of class scores in a model's output (a dict's ``"out"`` or ``"logits"`` or
    only tensor, a sequence's first tensor, or the tensor)."""
    if isinstance(output, Mapping):
        tensors = {k: v for k, v in output.items() if isinstance(v, Tensor)}
        key = next((k for k in _SCORE_KEYS if k in tensors), None)
        if key is None and len(tensors) == 1:
            key = next(iter(tensors))
        if key is None:
            raise ValueError(
                f"the model returns a dict with keys {list(output)}: none is 'out' or 'logits' "
                "and there is not exactly one tensor; pass output_transform=lambda out: ..."
            )
        return _score_tensor(tensors[key])
    if isinstance(output, (tuple, list)):
        first = next((item for item in output if isinstance(item, Tensor)), None)
        if first is None:
            raise ValueError("the model returns a sequence without a tensor")
        return _score_tensor(first)
    if not isinstance(output, Tensor):
        raise ValueError(f"the model returns {type(output).__name__}, not class scores")
    return output


def grad_cam(
    model: nn.Module,
    inputs: Tensor,
    layers: str | nn.Module | Sequence[str | nn.Module],
    targets: Tensor | Sequence[int] | int | None = None,
    output_transform: OutputTransform = class_scores,
    forward: Forward | None = None,
) -> dict[str, Tensor]:
    """Raw Grad-CAM maps of every layer in ``layers`` for a batch of images.

    For each layer with output ``A`` (N, C, h, w) and class score ``y_t`` the map is
    ``ReLU(sum_c mean_hw(dy_t/dA_c) * A_c)``. All layers come from one forward and one
    ``torch.autograd.grad`` call; parameters' ``.grad`` are not touched and no hook outlives the
    call. ``A`` is the tensor the module returned, even when a later in-place op rewrites it. A
    module that runs several times per forward is read at its first call.

    Run the model in eval mode: the function leaves train/eval flags alone, and BatchNorm in train
    mode would update its statistics. Autocast is off inside (maps in fp32); works under
    ``torch.no_grad`` and ``torch.inference_mode``.

    Args:
        model: a classifier or a segmenter (see :func:`class_scores` for the outputs it reads).
        inputs: images (N, C, H, W) on the model's device.
        layers: names from ``model.named_modules()`` or the modules themselves.
        targets: (N,) class indices, one int for all images, or None for the predicted class.
        output_transform: turns the model's output into (N, num_classes) scores.
        forward: how to run the model on the inputs when not ``model(inputs)`` (a GAN's
            discriminator, a LightningModule without ``forward()``); layers are still named
            from ``model.named_modules()``.

    Returns:
        ``{layer_name: map}`` with maps of shape (N, h_l, w_l), float32, not normalized.

    Raises:
        ValueError: unknown layer, a layer whose output is not 4-D, targets out of range or of the
            wrong length, inputs on another device than the model, a model output that
            ``output_transform`` cannot turn into (N, num_classes) scores.
    """
    return grad_cam_and_logits(model, inputs, layers, targets, output_transform, forward)[0]


def grad_cam_and_logits(
    model: nn.Module,
    inputs: Tensor,
    layers: str | nn.Module | Sequence[str | nn.Module],
    targets: Tensor | Sequence[int] | int | None = None,
    output_transform: OutputTransform = class_scores,
    forward: Forward | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """:func:`grad_cam` plus the class scores of the same forward pass (detached), to show
    predictions."""
    modules = resolve_layers(model, layers)
    with gradient_pass(model, inputs) as x:
        output, activations = run_until_captured(
            model, x, modules, full_forward=True, tokens=True, forward=forward
        )
        logits = output_transform(output)
        check_logits(logits, len(x))
        score = logits.gather(1, target_index(targets, logits)[:, None]).sum()
        names = list(activations)
        gradients = torch.autograd.grad(score, [activations[n] for n in names], allow_unused=True)
    maps = {}
    for name, gradient in zip(names, gradients, strict=True):
        activation = activations[name].detach().float()
        if activation.dim() == 3:  # a vision transformer's tokens
            activation = token_grid(activation)
            gradient = None if gradient is None else token_grid(gradient)
        if gradient is None:
            maps[name] = torch.zeros_like(activation[:, 0])
            continue
        weights = gradient.float().mean(dim=(2, 3), keepdim=True)
        maps[name] = torch.relu((weights * activation).sum(dim=1))
    return maps, logits.detach().float()


def guided_backprop(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor | Sequence[int] | int | None = None,
    output_transform: OutputTransform = class_scores,
    forward: Forward | None = None,
) -> Tensor:
    """Guided backprop (Springenberg et al., 2015) of the target class score w.r.t. the inputs.

    Every ReLU passes ``relu(grad)`` where its forward input was positive (see
    :func:`~lightning_viz.functional.project_to_input` for which ReLUs are reached). Multiply by
    an upsampled Grad-CAM map for guided Grad-CAM.

    Returns:
        (N, C, H, W) float32.
    """
    with gradient_pass(model, inputs) as x:
        with relu_rule("guided") as ruleless:
            logits = output_transform((forward or model)(x))
        warn_ruleless(ruleless, "guided")
        check_logits(logits, len(x))
        score = logits.gather(1, target_index(targets, logits)[:, None]).sum()
        (gradient,) = torch.autograd.grad(score, x)
    return gradient.float()


MIN_MAP_SIDE = 7
"""Smallest side of the map Grad-CAM reads by default (a ResNet's last map at 224 pixels)."""


def default_gradcam_layer(model: nn.Module, images: Tensor, forward: Forward | None = None) -> str:
    """The layer Grad-CAM reads by default: the deepest feature map before the classifier that
    is still fine enough to show where things are.

    One forward of ``images`` records the order in which modules finish. For a CNN this is the
    last module with a spatial (N, C, h, w) output of at least ``MIN_MAP_SIDE`` (7) pixels a
    side, adaptive pooling excluded: ``layer4`` in a ResNet at 224 pixels, ``features`` in a VGG
    (a container finishes after its last child); on small inputs, where the last maps are 2x2
    blobs, an earlier one (``layer2`` of a ResNet at 64 pixels). Without such a map, the last
    one larger than 1x1. A network whose output is class maps (N, K, h, w) (segmentation) is
    read before the layers that output them (its head, and the blocks ending in it), whose
    Grad-CAM would only redraw the prediction.
    "Spatial" means h and w shrink from the input by about the same factor, which leaves out
    attention internals such as (N, heads, tokens, head_dim), and a map per image: a detector's
    maps per region proposal, (proposals, C, 7, 7), are left out. For a vision transformer, whose
    token maps (N, tokens, dim) come after its last spatial map (the patch embedding), it is the
    deepest token map of the residual stream's width (the last token map's) whose Grad-CAM is
    not zero on ``images``: the last tokens often reach the head only through the class token
    (pytorch-grad-cam recommends the last block's first norm).
    It does not depend on the head's weights (torchvision's ViT starts with a zero head).

    Raises:
        ValueError: no spatial map larger than 1x1 and no token map.
    """
    height, width = images.shape[-2:]
    finished = output_shapes(model, images, forward)
    per_image = [shape[:1] == images.shape[:1] for _, _, shape in finished]
    spatial = [
        i
        for i, (_, module, shape) in enumerate(finished)
        if per_image[i] and _is_spatial(shape, height, width) and not isinstance(module, _POOLING)
    ]
    tokens = [
        i
        for i, (_, _, shape) in enumerate(finished)
        if per_image[i] and grid_side(shape) is not None
    ]
    if tokens and (not spatial or tokens[-1] > spatial[-1]):
        # the residual stream's width, the last token map's: not a fused q|k|v projection
        # (timm's attn.qkv, 3x as wide), which read vivid frames on a user's ViT
        width = finished[tokens[-1]][2][-1]
        stream = [finished[i][0] for i in tokens if finished[i][2][-1] == width]
        return _deepest_token_map_reaching_the_class_token(model, images, stream, forward)
    if not spatial:
        raise ValueError(
            f"{type(model).__name__} has no layer with a spatial output larger than 1x1 nor a "
            "token map; pass `layers=` with names from model.named_modules()"
        )
    if spatial[-1] == len(finished) - 1:  # the net outputs maps: a segmentation
        features = _before_score_maps(model, images, finished, spatial, forward) or spatial
    else:
        features = spatial
    fine = [i for i in features if min(finished[i][2][-2:]) >= MIN_MAP_SIDE]
    return finished[(fine or features)[-1]][0]


def _before_score_maps(
    model: nn.Module,
    images: Tensor,
    finished: list[tuple[str, nn.Module, tuple[int, ...]]],
    spatial: list[int],
    forward: Forward | None,
) -> list[int]:
    """The spatial maps of a segmentation net that its class scores are computed from (one
    backward: an auxiliary head, which torchvision's segmentation nets run last, is not), less
    its head: the trailing maps of the scores' K channels, and the containers around them,
    whose Grad-CAM only redraws the prediction."""
    reaching = set(on_the_scores_path(model, images, [finished[i][0] for i in spatial], forward))
    on_path = [i for i in spatial if finished[i][0] in reaching]
    kept = _before_trailing(
        [finished[i][0] for i in on_path],
        {name: shape for name, _, shape in finished},
        classes=finished[-1][2][1],
    )
    return on_path[: len(kept)]


def without_score_head(
    model: nn.Module,
    images: Tensor,
    names: Sequence[str],
    classes: int,
    forward: Forward | None = None,
) -> list[str]:
    """``names`` less a segmentation net's head (whose output is class maps with ``classes``
    channels): the last of them to run while their outputs have that many channels. Their
    channels are the classes, whose maps only redraw the prediction. All of ``names`` where
    nothing else would be left."""
    finished, wanted = output_shapes(model, images, forward), set(names)
    order = [name for name, _, _ in finished if name in wanted]
    kept = set(_before_trailing(order, {n: shape for n, _, shape in finished}, classes))
    return [name for name in names if name in kept] or list(names)


def _before_trailing(
    order: Sequence[str], shapes: dict[str, tuple[int, ...]], classes: int
) -> list[str]:
    """``order`` (names in the order they finish) without its trailing run of outputs with
    ``classes`` channels."""
    end = len(order)
    while end and shapes[order[end - 1]][1] == classes:
        end -= 1
    return list(order[:end])


def _deepest_token_map_reaching_the_class_token(
    model: nn.Module, images: Tensor, names: list[str], forward: Forward | None
) -> str:
    """The deepest of the token maps ``names`` whose patch tokens still reach the last map's
    class (prefix) tokens: after the last attention, tokens only pass to the head through the
    class token, and their Grad-CAM is zero. Without prefix tokens (a pooled head) the last."""
    modules = resolve_layers(model, names)
    with gradient_pass(model, images) as x:
        _, captured = run_until_captured(
            model, x, modules, full_forward=True, tokens=True, forward=forward
        )
        maps = [captured[name] for name in names]
        prefix = maps[-1].shape[1] - grid_side(tuple(maps[-1].shape)) ** 2
        if prefix == 0:
            return names[-1]
        reach = maps[-1][:, :prefix].square().sum()
        gradients = torch.autograd.grad(reach, maps, allow_unused=True)
    alive = [
        name
        for name, gradient in zip(names, gradients, strict=True)
        if gradient is not None and token_grid(gradient).abs().sum() > 0
    ]
    return (alive or names)[-1]


def _is_spatial(shape: tuple[int, ...], height: int, width: int) -> bool:
    if len(shape) != 4 or shape[2] * shape[3] < 2 or shape[2] > height or shape[3] > width:
        return False
    scale_h, scale_w = shape[2] / height, shape[3] / width
    return abs(scale_h - scale_w) <= 0.5 * max(scale_h, scale_w)
