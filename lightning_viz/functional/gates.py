"""Which conv layers learn through a scale initialized near zero.

Modern residual networks start each block as the identity: the block's last BatchNorm scale
at 0 (timm's ``zero_init_last``, torchvision's ``zero_init_residual``), a layer scale of 1e-6
(ConvNeXt) or a skip-init gain of 0 (NFNet). A conv inside such a block receives that scale
times the gradient it would otherwise get, so under SGD it learns hundreds to thousands of
times less than an ungated layer for the first hundreds of steps: slowly by design, not a fault.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.parameter import is_lazy

GATE_INIT = 1e-3
"""A trainable scale (a parameter of at most one dimension, not a bias) whose values all lie
within this of zero at initialization gates the convs of its block."""

GATE_REACH = 2
"""How many modules above a scale's own :func:`scale_gates` looks for its block."""


def scale_gates(model: nn.Module, layers: Mapping[str, nn.Module]) -> dict[str, str]:
    """The ``layers`` (names in ``model``) that learn through a scale initialized near zero,
    each with the scale's parameter name.

    A scale gates the layers of its block that come before it (in the order the modules were
    registered, which follows the forward pass in the blocks of torchvision and timm; all of
    them where the block holds the scale itself, as ConvNeXt's layer scale): the block
    is the module that holds the scale, its parent or its grandparent (a block's last norm sits
    in a conv-norm-activation unit), the nearest of them that holds any of ``layers``. A
    scale farther from every layer (a ViT block's layer scale) gates nothing, nor does one whose
    block holds all of ``layers`` (a zero BatchNorm scale in a plain chain of convs stops every
    gradient, which is a fault the rules should see). Read the weights at initialization:
    trained scales have grown.
    """
    candidates = [
        (name, parameter)
        for name, parameter in model.named_parameters()
        if not is_lazy(parameter)  # a lazy module's, shapeless until its first forward
        and parameter.requires_grad
        and parameter.is_floating_point()
        and parameter.dim() <= 1
        and parameter.numel() > 0
        and name.rpartition(".")[2] != "bias"
    ]
    if not candidates or not layers:
        return {}
    largest = torch.stack([p.detach().abs().amax().float().cpu() for _, p in candidates])
    order = {name: index for index, (name, _) in enumerate(model.named_modules())}
    gated: dict[str, str] = {}
    for (name, _), value in zip(candidates, largest.tolist(), strict=True):
        if value > GATE_INIT:
            continue
        owner = name.rpartition(".")[0]
        block = [
            layer
            for layer in _block_layers(owner, layers)
            if order[layer] < order[owner] or _inside(layer, owner)
        ]
        for layer in block if len(block) < len(layers) else ():
            gated.setdefault(layer, name)
    return gated


def _block_layers(owner: str, layers: Mapping[str, nn.Module]) -> list[str]:
    """The layers inside the nearest module at most :data:`GATE_REACH` above ``owner`` (or
    ``owner`` itself) that holds any of them."""
    path = owner.split(".") if owner else []
    for depth in range(len(path), max(len(path) - GATE_REACH, 0) - 1, -1):
        prefix = ".".join(path[:depth])
        inside = [n for n in layers if _inside(n, prefix)]
        if inside:
            return inside
    return []


def _inside(name: str, module: str) -> bool:
    """Whether the module called ``name`` is ``module`` or inside it ("" is the root)."""
    return not module or name == module or name.startswith(module + ".")
