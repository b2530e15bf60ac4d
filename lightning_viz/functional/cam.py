"""CAM (Zhou et al., 2016): class activation maps of a network that ends in global average pooling
and one linear layer, from one forward and no backward."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_viz.functional._capture import (
    Forward,
    output_shapes,
    resolve_layers,
    run_until_captured,
)
from lightning_viz.functional._pass import gradient_pass
from lightning_viz.functional._validation import check_logits, target_index
from lightning_viz.functional.gradcam import OutputTransform, class_scores

HEAD_TOLERANCE = 1e-2
"""How closely ``W @ mean_hw(A) + b`` must give the model's scores, relative to the sum of the
terms' magnitudes ``|W| @ |mean_hw(A)| + |b|``, for ``A`` to feed a global-average-pooling +
linear head. Float32 rounding misses by about 1e-6 of that sum, TF32 or bf16 matmuls
(``torch.set_float32_matmul_precision("high")`` or ``"medium"``, as Lightning suggests on a GPU)
by about 1e-3; a head of any other kind misses by the order of the terms themselves."""


MESSAGE_MODULES = 8
"""How many of the modules after the last feature map an error message names (the last ones)."""


class GapLinearHead(NamedTuple):
    """Where CAM reads a network that ends in global average pooling and one linear layer."""

    layer: str
    """The feature map the head averages (a name from ``model.named_modules()``)."""
    classifier: str
    """The ``nn.Linear`` that turns the averaged map into the class scores."""
    rectified: bool
    """Whether the head applies a ReLU to the map before averaging it (torchvision's DenseNet
    calls ``F.relu`` between ``features`` and the pooling): CAM then reads ``relu(A)``."""


def class_activation_map(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | Sequence[int] | int | None = None,
    layer: str | nn.Module | None = None,
    classifier: str | nn.Module | None = None,
    output_transform: OutputTransform = class_scores,
    forward: Forward | None = None,
) -> tuple[Tensor, Tensor]:
    """Raw class activation maps ``sum_c W[t, c] * A_c`` and the class scores, from one forward.

    ``A`` (N, C, h, w) is the feature map the network averages globally and ``W`` (K, C) the
    weights of the linear layer that turns the average into the K class scores, so each map's
    spatial mean plus the bias ``b[t]`` is the target's score: the map spreads the score over the
    places that produce it. Maps are neither rectified nor normalized (torch-cam's ``CAM`` with
    ``normalized=False``). Where the head rectifies the map before pooling (torchvision's
    DenseNet), ``A`` is ``relu(features)``, the map that is averaged (torch-cam reads
    ``features`` as it is, whose maps then do not add up to the scores).

    The forward runs without gradients and with autocast off (maps in fp32); it works under
    ``torch.inference_mode``, no hook outlives the call, train/eval flags are left alone (run
    the model in eval mode). The same forward checks that ``layer`` feeds ``classifier``
    through a global average: a network whose head is anything else is refused.

    Args:
        model: a classifier ending in global average pooling and one ``nn.Linear``.
        images: (N, C, H, W) on the model's device.
        targets: (N,) class indices, one for all images, or None for the predicted class.
        layer: the feature map the head averages, a name from ``model.named_modules()`` or the
            module; None: found as :func:`gap_linear_head` finds it (one more forward, of the
            first image, for the output shapes; the batch's forward then holds every map that
            may feed the head, the smallest maps of a CNN).
        classifier: the ``nn.Linear`` of the head; None: the one whose weights give the scores.
        output_transform: turns the model's output into (N, num_classes) scores.
        forward: how to run the model when not ``model(images)``.

    Returns:
        ``(maps, logits)``: the maps (N, h, w) and the class scores of the same forward
        (N, num_classes), both float32 and detached.

    Raises:
        ValueError: a network whose head is not global average pooling and one linear layer
            (Grad-CAM works with any head), an unknown layer, a classifier that is not an
            ``nn.Linear``, images on another device than the model, targets out of range or of
            the wrong length, a model output that is not (N, num_classes) scores.
    """
    # gradient_pass checks the batch and turns autocast off; no_grad inside: CAM has no backward
    with gradient_pass(model, images) as x, torch.no_grad():
        head, activation, logits = _read_head(
            model, x, layer, classifier, output_transform, forward
        )
        weight = model.get_submodule(head.classifier).weight.float()
        maps = torch.einsum("nc,nchw->nhw", weight[target_index(targets, logits)], activation)
    return maps, logits


def gap_linear_head(
    model: nn.Module,
    images: Tensor,
    output_transform: OutputTransform = class_scores,
    forward: Forward | None = None,
) -> GapLinearHead:
    """Find, from a forward of ``images`` (one image is enough), whether the network ends in
    global average pooling and one linear layer, and where CAM reads it.

    The head is the last ``nn.Linear`` whose weights turn the global average of a feature map
    (or of its ReLU) into the model's scores, to float tolerance (:data:`HEAD_TOLERANCE`); the
    map is the last such spatial (N, C, h, w) output (h * w >= 2) in the order modules finish:
    ``layer4`` and ``fc`` of a ResNet, ``features`` and ``classifier`` of a DenseNet (rectified),
    ``features`` and ``classifier.1`` of a MobileNetV2 (dropout is the identity in eval mode).
    One forward of the first image lists the modules' output shapes; the forward of ``images``
    then captures the maps whose channel count fits a linear layer (no gradients).

    Raises:
        ValueError: the head is anything else (VGG's pooling to 7x7 and MLP, MobileNetV3's
            Linear-Hardswish-Dropout-Linear), saying what follows the last feature map and
            suggesting Grad-CAM; images on another device than the model.
    """
    with gradient_pass(model, images) as x, torch.no_grad():
        return _read_head(model, x, None, None, output_transform, forward)[0]


def _read_head(
    model: nn.Module,
    x: Tensor,
    layer: str | nn.Module | None,
    classifier: str | nn.Module | None,
    output_transform: OutputTransform,
    forward: Forward | None,
) -> tuple[GapLinearHead, Tensor, Tensor]:
    """One forward of ``x`` that captures ``layer``, or every map that may feed the head; the
    head found, its map as the head averages it (N, C, h, w) and the scores, in float32."""
    finished = None
    if layer is None or classifier is None:
        finished = output_shapes(model, x[:1], forward)
    linears = _linears(model, classifier, finished)
    if layer is None:
        widths = {linear.in_features for linear in linears.values()}
        names = [
            name
            for name, _, shape in finished
            if len(shape) == 4 and shape[2] * shape[3] >= 2 and shape[1] in widths
        ]
        if not names:
            raise ValueError(_no_head_message(model, finished, widths))
    else:
        names = list(resolve_layers(model, layer))
    output, captured = run_until_captured(
        model, x, resolve_layers(model, names), full_forward=True, forward=forward
    )
    logits = check_logits(output_transform(output), len(x)).float()
    for name in reversed(names):
        activation = captured[name].float()
        found = _head_reading(activation, logits, linears)
        if found is not None:
            linear, rectified = found
            head = GapLinearHead(name, linear, rectified)
            return head, activation.relu() if rectified else activation, logits
    if layer is None:
        raise ValueError(_no_head_message(model, finished, widths))
    raise ValueError(_not_fed_message(names[0], captured[names[0]], logits, linears))


def _linears(
    model: nn.Module,
    classifier: str | nn.Module | None,
    finished: list[tuple[str, nn.Module, tuple[int, ...]]] | None,
) -> dict[str, nn.Linear]:
    """The given classifier as ``{name: module}``, or every ``nn.Linear`` the forward ran
    (``finished``: an EMA copy's head, defined after the model's and equal to it at fit start,
    was read as the head, and CAM failed when the sanity score re-initialized the model's)."""
    if classifier is None:
        ran = {name for name, _, _ in finished or []}
        return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n in ran}
    [(name, module)] = resolve_layers(model, classifier).items()
    if not isinstance(module, nn.Linear):
        raise ValueError(
            f"`classifier` {name!r} is a {type(module).__name__}; CAM needs the nn.Linear that "
            "turns the pooled features into the class scores"
        )
    return {name: module}


def _head_reading(
    activation: Tensor, logits: Tensor, linears: dict[str, nn.Linear]
) -> tuple[str, bool] | None:
    """(name, rectified) of the last linear layer that turns the global average of
    ``activation`` (first as it is, then of its ReLU) into ``logits``; None when none does."""
    channels, classes = activation.shape[1], logits.shape[1]
    pooled = {False: activation.mean(dim=(2, 3)), True: activation.relu().mean(dim=(2, 3))}
    for name, linear in reversed(linears.items()):
        if linear.in_features != channels or linear.out_features != classes:
            continue
        weight = linear.weight.float()
        bias = None if linear.bias is None else linear.bias.float()
        for rectified, features in pooled.items():
            scale = F.linear(features.abs(), weight.abs(), None if bias is None else bias.abs())
            error = (F.linear(features, weight, bias) - logits).abs()
            if bool((error <= HEAD_TOLERANCE * scale).all()):
                return name, rectified
    return None


def _not_fed_message(
    layer: str, activation: Tensor, logits: Tensor, linears: dict[str, nn.Linear]
) -> str:
    channels, classes = activation.shape[1], logits.shape[1]
    if len(linears) == 1:
        [(name, linear)] = linears.items()
        through = f"the nn.Linear {name!r} ({linear.in_features} -> {linear.out_features})"
    else:
        through = f"an nn.Linear of {channels} inputs and {classes} outputs"
    return (
        f"the global average of layer {layer!r} {tuple(activation.shape[1:])} does not give the "
        f"model's {classes} scores through {through}: CAM reads the feature map that the head "
        "averages before its one linear layer; pass that layer, or use Grad-CAM (grad_cam, "
        "GradCAMLogger), which works for any layer and head"
    )


def _no_head_message(
    model: nn.Module, finished: list[tuple[str, nn.Module, tuple[int, ...]]], widths: set[int]
) -> str:
    """What the network ends with, after its last feature map larger than 1x1 (``widths``: the
    in-features of its linear layers)."""
    attention = tuple(  # its (N, heads, tokens, dim) tensors are no feature maps
        f"{name}."
        for name, module in model.named_modules()
        if "attention" in type(module).__name__.lower()
    )
    spatial = [
        i
        for i, (name, _, shape) in enumerate(finished)
        if len(shape) == 4 and shape[2] * shape[3] > 1 and not name.startswith(attention)
    ]
    model_name = type(model).__name__
    advice = (
        "CAM needs global average pooling followed by one linear layer; use Grad-CAM "
        "(grad_cam, GradCAMLogger), which works with any head"
    )
    after_spatial = spatial[-1] if spatial else -1
    pooled = max(  # the head's pooling, the last to 1x1: what a norm reads then is no map
        (
            i
            for i, (_, module, shape) in enumerate(finished)
            if i > after_spatial and _is_one_cell(shape) and _is_pooling(module)
        ),
        default=len(finished),
    )
    shrunk = [
        (name, shape)
        for i, (name, module, shape) in enumerate(finished)
        if after_spatial < i < pooled
        and _is_one_cell(shape)
        and shape[1] in widths
        and _has_parameters(module)  # a layer's map
    ]
    if shrunk:  # the maps shrank to 1x1 before the head at this size: a map of one cell
        name, shape = shrunk[0]
        return (
            f"{model_name}'s feature maps are 1x1 at the probes' size from {name!r} "
            f"{shape[1:]} on, before its linear head: a class activation map would be a single "
            "cell. Larger probes give it room (a ResNet's last map is 2x2 at 64 pixels, 7x7 at "
            "224); Grad-CAM (grad_cam, GradCAMLogger) of an earlier layer shows where at any size"
        )
    if not spatial:
        return f"{model_name} has no feature map larger than 1x1; {advice}"
    name, _, shape = finished[spatial[-1]]
    after = [
        type(module).__name__
        for _, module, _ in finished[spatial[-1] + 1 :]
        if not any(module.children())
    ]
    head = " -> ".join(after[-MESSAGE_MODULES:]) if after else "no module (only functional code)"
    if len(after) > MESSAGE_MODULES:
        head = f"{len(after) - MESSAGE_MODULES} modules, then {head}"
    return (
        f"{model_name} does not end in global average pooling and one linear layer: after its "
        f"last feature map {name!r} {shape[1:]} it runs {head}, and no linear layer turns a "
        f"feature map's global average into its scores. {advice}"
    )


def _is_one_cell(shape: tuple[int, ...]) -> bool:
    return len(shape) == 4 and shape[2] * shape[3] == 1


def _is_pooling(module: nn.Module) -> bool:
    """torch's pooling modules and others named so (timm's ``SelectAdaptivePool2d``)."""
    return "pool" in type(module).__name__.lower()


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())
