"""Project feature maps back to pixel space (Zeiler & Fergus, 2014) with a switchable ReLU rule.

The rule (:mod:`lightning_viz.functional._relu_rules`) replaces the backward pass of every ReLU
the forward runs, module or function, in-place or reused. Max-pooling routes the signal through its
switches by plain gradient; with overlapping pools (3x3, stride 2) a location chosen by two windows
receives both contributions, where Zeiler & Fergus's unpooling would keep one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_viz.functional._capture import Forward, resolve_layers, run_until_captured
from lightning_viz.functional._pass import gradient_pass
from lightning_viz.functional._relu_rules import RULES, Rule, relu_rule, warn_ruleless
from lightning_viz.functional._validation import check_choice

Seed = Literal["map", "max"]
SEEDS = ("map", "max")


def top_channels(activations: Tensor, k: int) -> Tensor:
    """Per image, the ``k`` channels with the largest summed activation, strongest first.

    Args:
        activations: (N, C, H, W).
        k: how many channels, 1 <= k <= C.

    Returns:
        (N, k) long indices.
    """
    if activations.dim() != 4:
        raise ValueError(f"`activations` must be (N, C, H, W), got {tuple(activations.shape)}")
    channels = activations.shape[1]
    if not 1 <= k <= channels:
        raise ValueError(f"`k` must lie in [1, {channels}] for {channels} channels, got {k}")
    return activations.detach().sum(dim=(2, 3)).topk(k, dim=1).indices


def project_to_input(
    model: nn.Module,
    inputs: Tensor,
    layer: str | nn.Module,
    channels: Tensor,
    rule: Rule = "deconvnet",
    seed: Seed = "map",
    forward: Forward | None = None,
) -> Tensor:
    """Project chosen channels of a layer back to pixel space.

    For each image and each chosen channel, the backward pass starts from that channel alone
    (every other channel zero) and runs to the input with ``rule`` at every ReLU:
    ``"deconvnet"`` passes ``relu(grad)`` and ignores the forward mask (Zeiler & Fergus),
    ``"guided"`` passes ``relu(grad)`` where the forward input was positive (guided backprop),
    ``"gradient"`` is plain backprop (saliency). Activations without such a rule (GELU, SiLU,
    Hardswish, ReLU6, LeakyReLU, ...) pass plain gradients, with one warning naming them.

    The forward stops at ``layer``; all K channels go backward together (see
    :func:`project_layers`' ``seeds_in_batch``). Parameters'
    ``.grad`` are untouched and no hook outlives the call. Run the model in eval mode.

    Args:
        model: the network; its output is not used.
        inputs: images (N, C, H, W) on the model's device.
        layer: a name from ``model.named_modules()`` or the module itself.
        channels: (N, K) channel indices to project for each image (see :func:`top_channels`);
            -1 projects nothing (a zero image).
        rule: ``"deconvnet"``, ``"guided"`` or ``"gradient"``.
        seed: ``"map"`` seeds the backward with the channel's whole feature map; ``"max"`` with
            its single strongest activation only.
        forward: how to run the model when not ``model(inputs)`` (see
            :func:`~lightning_viz.functional.grad_cam`).

    Returns:
        (N, K, C_in, H, W) float32 reconstructions, signed, not normalized.

    Raises:
        ValueError: unknown layer or rule or seed, a layer whose output is not 4-D, channels out
            of range or of the wrong shape, inputs on another device than the model.
    """
    name = next(iter(resolve_layers(model, [layer])))
    return project_layers(model, inputs, {name: channels}, rule=rule, seed=seed, forward=forward)[
        name
    ].images


class LayerProjection(NamedTuple):
    """What :func:`project_layers` returns per layer."""

    channels: Tensor
    """(N, K) the channels projected for each image."""
    images: Tensor
    """(N, K, C_in, H, W) the reconstructions, float32, signed, not normalized."""


ChannelChoice = Tensor | Callable[[Tensor], Tensor]


def project_layers(
    model: nn.Module,
    inputs: Tensor,
    channels: Mapping[str, ChannelChoice],
    rule: Rule = "deconvnet",
    seed: Seed = "map",
    forward: Forward | None = None,
    seeds_in_batch: bool | None = None,
) -> dict[str, LayerProjection]:
    """:func:`project_to_input` for several layers from one shared forward pass.

    Args:
        channels: ``{layer_name: choice}``, a choice being (N, K) channel indices or a function
            that receives the layer's (detached) activation and returns them, so that channels
            can be picked from the same forward pass (e.g. ``lambda a: top_channels(a, 4)``).
        seeds_in_batch: how the K seeds of an image go backward. True: as K rows of one batch
            (the forward runs on K copies of the inputs, then each conv's backward runs once
            per layer: what a GPU wants, where a batched-gradient backward launches every conv
            backward once per seed); False: as batched gradients over one forward (fewer
            FLOPs: what a CPU wants). Default: True on an accelerator, False on the CPU. Both
            give the same projections.

    Returns:
        ``{layer_name: LayerProjection(channels, images)}``.
    """
    check_choice("rule", rule, RULES)
    check_choice("seed", seed, SEEDS)
    modules = resolve_layers(model, list(channels))
    if seeds_in_batch is None:
        seeds_in_batch = inputs.device.type != "cpu"
    with gradient_pass(model, inputs) as x:
        chosen = _chosen_channels(model, x, modules, channels, forward)
        k = max(choice.shape[1] for choice in chosen.values())
        rows = x.detach().repeat(k, 1, 1, 1).requires_grad_(True) if seeds_in_batch else x
        with relu_rule(rule) as ruleless:
            _, activations = run_until_captured(
                model, rows, modules, full_forward=False, forward=forward
            )
        warn_ruleless(ruleless, rule)
        names = list(activations)
        projections = {}
        for i, n in enumerate(names):
            layer_k = chosen[n].shape[1]
            padded = F.pad(chosen[n], (0, k - layer_k), value=-1)
            seeds = backward_seeds(activations[n][: len(x)].detach(), padded, seed, n)
            (gradient,) = torch.autograd.grad(
                activations[n],
                rows,
                grad_outputs=seeds.flatten(0, 1) if seeds_in_batch else seeds,
                is_grads_batched=not seeds_in_batch,
                retain_graph=i < len(names) - 1,
            )
            gradient = gradient.unflatten(0, (k, len(x))) if seeds_in_batch else gradient
            images = gradient.transpose(0, 1)[:, :layer_k].float()
            projections[n] = LayerProjection(chosen[n], images)
    return projections


def _chosen_channels(
    model: nn.Module,
    x: Tensor,
    modules: dict[str, nn.Module],
    channels: Mapping[str, ChannelChoice],
    forward: Forward | None,
) -> dict[str, Tensor]:
    """Each layer's (N, K) channels: given, or picked from its activation in a forward without
    gradients (only when some choice is a function)."""
    activations: dict[str, Tensor] = {}
    if any(callable(choice) for choice in channels.values()):
        with torch.no_grad():
            _, activations = run_until_captured(
                model, x, modules, full_forward=False, forward=forward
            )
    chosen = {}
    for name in modules:
        choice = channels[name]
        choice = choice(activations[name].detach()) if callable(choice) else choice
        chosen[name] = torch.as_tensor(choice, device=x.device)
        if chosen[name].dim() != 2 or chosen[name].dtype.is_floating_point:
            raise ValueError(
                f"`channels` for layer {name!r} must be integer indices of shape "
                f"({len(x)}, K), got {tuple(chosen[name].shape)} {chosen[name].dtype}"
            )
        chosen[name] = chosen[name].long()
    return chosen


def backward_seeds(activation: Tensor, channels: Tensor, seed: Seed, layer: str = "") -> Tensor:
    """The (K, N, C, h, w) gradient seeds: channel ``channels[n, k]`` of image n, all else zero.

    A channel index of -1 seeds nothing (its reconstruction is zero): it lets rows of different
    lengths share one batched backward.
    """
    n, c, h, w = activation.shape
    channels = torch.as_tensor(channels, device=activation.device)
    if channels.dim() != 2 or channels.shape[0] != n or channels.dtype.is_floating_point:
        raise ValueError(
            f"`channels` for layer {layer!r} must be integer indices of shape ({n}, K), "
            f"got {tuple(channels.shape)} {channels.dtype}"
        )
    channels = channels.long()
    if channels.numel() and (channels.min() < -1 or channels.max() >= c):
        raise ValueError(
            f"`channels` for layer {layer!r} must lie in [0, {c}) (it has {c} channels; -1 "
            f"seeds nothing), got values from {int(channels.min())} to {int(channels.max())}"
        )
    k = channels.shape[1]
    index = channels.clamp(min=0)[:, :, None, None].expand(n, k, h, w)
    chosen = activation.gather(1, index) * (channels >= 0)[:, :, None, None]
    if seed == "max":
        flat = chosen.flatten(2)
        peak = flat.argmax(dim=2, keepdim=True)
        chosen = torch.zeros_like(flat).scatter(2, peak, flat.gather(2, peak)).view(n, k, h, w)
    seeds = activation.new_zeros(n, k, c, h, w)
    seeds.scatter_(2, index[:, :, None], chosen[:, :, None])
    return seeds.transpose(0, 1)
