"""Grad-CAM (Selvaraju et al., 2017) for several layers from one forward and one backward."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_viz.functional._capture import resolve_layers, run_until_captured
from lightning_viz.functional._pass import gradient_pass
from lightning_viz.functional._relu_rules import relu_rule, warn_ruleless
from lightning_viz.functional._validation import check_logits, target_index


def grad_cam(
    model: nn.Module,
    inputs: Tensor,
    layers: str | nn.Module | Sequence[str | nn.Module],
    targets: Tensor | Sequence[int] | int | None = None,
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
        model: a classifier returning logits of shape (N, num_classes).
        inputs: images (N, C, H, W) on the model's device.
        layers: names from ``model.named_modules()`` or the modules themselves.
        targets: (N,) class indices, one int for all images, or None for the predicted class.

    Returns:
        ``{layer_name: map}`` with maps of shape (N, h_l, w_l), float32, not normalized.

    Raises:
        ValueError: unknown layer, a layer whose output is not 4-D, targets out of range or of the
            wrong length, inputs on another device than the model, a model output that is not
            (N, num_classes).
    """
    return grad_cam_and_logits(model, inputs, layers, targets)[0]


def grad_cam_and_logits(
    model: nn.Module,
    inputs: Tensor,
    layers: str | nn.Module | Sequence[str | nn.Module],
    targets: Tensor | Sequence[int] | int | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """:func:`grad_cam` plus the logits of the same forward pass (detached), to show predictions."""
    modules = resolve_layers(model, layers)
    with gradient_pass(model, inputs) as x:
        logits, activations = run_until_captured(model, x, modules, full_forward=True)
        check_logits(logits, len(x))
        score = logits.gather(1, target_index(targets, logits)[:, None]).sum()
        names = list(activations)
        gradients = torch.autograd.grad(score, [activations[n] for n in names], allow_unused=True)
    maps = {}
    for name, gradient in zip(names, gradients, strict=True):
        activation = activations[name].detach().float()
        if gradient is None:
            maps[name] = torch.zeros_like(activation[:, 0])
            continue
        weights = gradient.float().mean(dim=(2, 3), keepdim=True)
        maps[name] = torch.relu((weights * activation).sum(dim=1))
    return maps, logits.detach().float()


def guided_backprop(
    model: nn.Module, inputs: Tensor, targets: Tensor | Sequence[int] | int | None = None
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
            logits = model(x)
        warn_ruleless(ruleless, "guided")
        check_logits(logits, len(x))
        score = logits.gather(1, target_index(targets, logits)[:, None]).sum()
        (gradient,) = torch.autograd.grad(score, x)
    return gradient.float()
