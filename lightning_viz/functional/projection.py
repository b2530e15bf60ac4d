"""Project feature maps back to pixel space (Zeiler & Fergus, 2014) with a switchable ReLU rule.

The rule (:mod:`lightning_viz.functional._relu_rules`) replaces the backward pass of every ReLU
the forward runs, module or function, in-place or reused. Max-pooling routes the signal through its
switches by plain gradient; with overlapping pools (3x3, stride 2) a location chosen by two windows
receives both contributions, where Zeiler & Fergus's unpooling would keep one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal, NamedTuple

import torch
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

    The forward stops at ``layer``; all K channels go backward together, as rows of one batch
    (see :func:`project_layers`). Parameters' ``.grad`` are untouched and no hook outlives the
    call. Run the model in eval mode (rows of a batch must not see each other).

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


def ruleless_activations(
    model: nn.Module,
    inputs: Tensor,
    layers: Sequence[str] | None = None,
    rule: Rule = "deconvnet",
    forward: Forward | None = None,
) -> list[str]:
    """The activations without a ``rule`` (GELU, SiLU, Hardswish, ...) that run before the
    deepest of ``layers`` on ``inputs`` (None: in the whole forward, which guided backprop of
    the output goes back through): projections of those layers pass plain gradients through
    them, a gradient map there rather than the rule's reconstruction."""
    check_choice("rule", rule, RULES)
    modules = {} if layers is None else resolve_layers(model, list(layers))
    with torch.no_grad(), relu_rule(rule) as ruleless:
        run_until_captured(model, inputs, modules, full_forward=layers is None, forward=forward)
    return sorted(ruleless)


def project_layers(
    model: nn.Module,
    inputs: Tensor,
    channels: Mapping[str, ChannelChoice],
    rule: Rule = "deconvnet",
    seed: Seed = "map",
    forward: Forward | None = None,
) -> dict[str, LayerProjection]:
    """:func:`project_to_input` for several layers from one shared forward pass.

    Each (image, channel) pair to project becomes one row of a batch: an image with up to K
    channels to project in some layer runs forward as K copies, each layer seeds each row with
    one of its channels (rows a layer does not need get a zero seed), and each layer's backward
    runs once over all rows. So every conv backward runs once per layer (a batched-gradient
    backward would launch it once per seed) and no row is spent on a channel index of -1.

    Args:
        channels: ``{layer_name: choice}``, a choice being (N, K) channel indices or a function
            that receives the layer's (detached) activation and returns them, so that channels
            can be picked from the same forward pass (e.g. ``lambda a: top_channels(a, 4)``).

    Returns:
        ``{layer_name: LayerProjection(channels, images)}``.
    """
    check_choice("rule", rule, RULES)
    check_choice("seed", seed, SEEDS)
    modules = resolve_layers(model, list(channels))
    with gradient_pass(model, inputs) as x:
        chosen = _chosen_channels(model, x, modules, channels, forward)
        image_of_row, row_of = _rows(chosen)
        if not len(image_of_row):  # every channel index is -1: nothing to project
            return {
                n: LayerProjection(c, x.new_zeros(*c.shape, *x.shape[1:]))
                for n, c in chosen.items()
            }
        rows = x.detach()[image_of_row].requires_grad_(True)
        with relu_rule(rule) as ruleless:
            _, activations = run_until_captured(
                model, rows, modules, full_forward=False, forward=forward
            )
        warn_ruleless(ruleless, rule)
        names = list(activations)
        projections = {}
        for i, n in enumerate(names):
            check_channels(chosen[n], activations[n].shape[1], n)
            used = row_of[n] >= 0
            channel_of_row = chosen[n].new_full((len(rows), 1), -1)
            channel_of_row[row_of[n][used], 0] = chosen[n][used]
            seeds = backward_seeds(activations[n].detach(), channel_of_row, seed, n)[0]
            (gradient,) = torch.autograd.grad(
                activations[n], rows, grad_outputs=seeds, retain_graph=i < len(names) - 1
            )
            images = gradient.new_zeros(*chosen[n].shape, *gradient.shape[1:])
            images[used] = gradient[row_of[n][used]]
            projections[n] = LayerProjection(chosen[n], images.float())
    return projections


def _rows(chosen: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """The batch rows of a projection: which image each row copies, and for each layer the row
    of each of its (N, K) channels (-1 for a channel index of -1).

    Image n gets as many rows as the layer that projects most of its channels needs; every
    layer puts its channels of image n, in order, into those rows.
    """
    used = {name: c >= 0 for name, c in chosen.items()}
    counts = torch.stack([u.sum(dim=1) for u in used.values()]).amax(dim=0)
    first_row = counts.cumsum(0) - counts
    row_of = {
        name: torch.where(u, first_row[:, None] + u.cumsum(dim=1) - 1, -1)
        for name, u in used.items()
    }
    image_of_row = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    return image_of_row, row_of


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
        if (
            chosen[name].dim() != 2
            or chosen[name].shape[0] != len(x)
            or chosen[name].dtype.is_floating_point
        ):
            raise ValueError(
                f"`channels` for layer {name!r} must be integer indices of shape "
                f"({len(x)}, K), got {tuple(chosen[name].shape)} {chosen[name].dtype}"
            )
        chosen[name] = chosen[name].long()
    return chosen


def check_channels(channels: Tensor, count: int, layer: str) -> None:
    """ValueError unless every index lies in [0, count) or is -1 (nothing to project)."""
    if channels.numel() and (channels.min() < -1 or channels.max() >= count):
        raise ValueError(
            f"`channels` for layer {layer!r} must lie in [0, {count}) (it has {count} channels; "
            f"-1 seeds nothing), got values from {int(channels.min())} to {int(channels.max())}"
        )


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
    check_channels(channels, c, layer)
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
