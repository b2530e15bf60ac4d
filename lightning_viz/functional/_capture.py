"""Resolve layer names and capture their outputs for the length of one forward pass.

Module hooks exist only inside the ``with`` block and are removed in ``finally``, also when the
forward raises (docs/architecture.md, promise 2).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

Forward = Callable[[Tensor], Any]
"""How to run a model on inputs when not ``model(inputs)``: a GAN's discriminator
(``lambda x: gan.discriminator(x)``), a LightningModule without ``forward()``."""


class StopForward(Exception):
    """Raised by a capture hook once every requested layer has run, to skip the rest of the net."""


def resolve_layers(model: nn.Module, layers: Sequence[str | nn.Module]) -> dict[str, nn.Module]:
    """Map layer names (or modules) to ``{name: module}`` in ``model.named_modules()`` order.

    Raises:
        ValueError: a name that is not a submodule (the closest valid names are listed), a module
            that is not part of ``model``, or an empty selection.
    """
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    if len(layers) == 0:
        raise ValueError(
            "`layers` is empty: give at least one layer name from model.named_modules()"
        )
    named = dict(model.named_modules())
    names_of = {id(module): name for name, module in named.items()}
    chosen: dict[str, nn.Module] = {}
    for layer in layers:
        if isinstance(layer, nn.Module):
            if id(layer) not in names_of:
                raise ValueError(
                    f"layer {type(layer).__name__} is not a submodule of {type(model).__name__}"
                )
            name = names_of[id(layer)]
        elif isinstance(layer, str):
            if layer not in named or layer == "":
                raise ValueError(unknown_layer_message(layer, list(named)))
            name = layer
        else:
            raise TypeError(f"a layer is a name or an nn.Module, got {type(layer).__name__}")
        chosen[name] = named[name]
    order = {name: i for i, name in enumerate(named)}
    return dict(sorted(chosen.items(), key=lambda item: order[item[0]]))


def unknown_layer_message(name: str, valid: Sequence[str]) -> str:
    """Say that ``name`` is not a layer and list the closest valid names."""
    valid = [v for v in valid if v]
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.4)
    hint = close or valid[:10]
    label = "closest valid names" if close else "valid names start with"
    return f"unknown layer {name!r}; {label}: {', '.join(repr(v) for v in hint)}"


@contextmanager
def capture_outputs(
    modules: dict[str, nn.Module], *, stop_when_done: bool = False
) -> Iterator[dict[str, Tensor]]:
    """Record each module's output at its first call in the pass.

    The recorded tensor is the module's own output; a clone goes downstream, so a later in-place
    op (``ReLU(inplace=True)``) cannot rewrite what was recorded, and gradients taken w.r.t. the
    recorded tensor flow through everything that follows. With ``stop_when_done`` the hook raises
    :class:`StopForward` once every module has run; the caller catches it.

    Yields:
        The dict ``{name: output}`` that fills as the forward pass runs.
    """
    captured: dict[str, Tensor] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> object:
            if name in captured:
                return None
            if not isinstance(output, Tensor):
                raise ValueError(
                    f"layer {name!r} ({type(module).__name__}) returned {type(output).__name__}; "
                    "expected a 4-D (N, C, H, W) tensor"
                )
            captured[name] = output
            if stop_when_done and len(captured) == len(modules):
                raise StopForward
            return output.clone()

        return hook

    handles = [module.register_forward_hook(make_hook(name)) for name, module in modules.items()]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def run_until_captured(
    model: nn.Module,
    inputs: Tensor,
    modules: dict[str, nn.Module],
    *,
    full_forward: bool,
    tokens: bool = False,
    forward: Forward | None = None,
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """Run ``model(inputs)`` (or ``forward(inputs)``) with capture hooks; return (the output or
    None, captured outputs).

    With ``full_forward=False`` the pass stops as soon as every module has run, and the model
    output is None. With ``tokens`` a (N, T, D) token map is accepted too (see
    :func:`token_grid`).

    Raises:
        ValueError: a module did not run, or its output is not a 4-D tensor (nor, with
            ``tokens``, a token map on a square grid).
        RuntimeError: with autograd on and ``inputs`` requiring grad, a module's output does
            not (no gradient can reach it; torch's own error does not say why).
    """
    output = None
    with (
        capture_outputs(modules, stop_when_done=not full_forward) as captured,
        suppress(StopForward),
    ):
        output = (forward or model)(inputs)
    for name, module in modules.items():
        if name not in captured:
            raise ValueError(f"layer {name!r} ({type(module).__name__}) did not run in the forward")
        shape = tuple(captured[name].shape)
        if len(shape) != 4 and not (tokens and grid_side(shape) is not None):
            raise ValueError(
                f"layer {name!r} ({type(module).__name__}) returned shape {shape}; expected a "
                "4-D (N, C, H, W) feature map"
                + (" or (N, tokens, dim) tokens on a square grid" if tokens else "")
            )
        if torch.is_grad_enabled() and inputs.requires_grad and not captured[name].requires_grad:
            raise RuntimeError(
                f"layer {name!r} ({type(module).__name__}) ran without autograd in a pass that "
                "needs gradients through it: the forward runs it under torch.no_grad(), or "
                "inside torch.utils.checkpoint with use_reentrant=True"
            )
    return output, captured


MAX_PREFIX_TOKENS = 8
"""Tokens before the patch grid (a class token, register tokens) that :func:`token_grid` drops."""


def grid_side(shape: tuple[int, ...]) -> int | None:
    """The side g of the square patch grid in a (N, T, D) token map with T = g*g plus at most
    :data:`MAX_PREFIX_TOKENS` leading tokens (g >= 2); None for any other shape."""
    if len(shape) != 3:
        return None
    side = math.isqrt(shape[1])
    return side if side >= 2 and shape[1] - side * side <= MAX_PREFIX_TOKENS else None


def token_grid(tokens: Tensor) -> Tensor:
    """(N, T, D) tokens of a vision transformer as a (N, D, g, g) map: the leading class /
    register tokens dropped, the patch tokens laid out on their grid (pytorch-grad-cam's
    ``reshape_transform`` for ViTs)."""
    side = grid_side(tuple(tokens.shape))
    if side is None:
        raise ValueError(f"tokens of shape {tuple(tokens.shape)} are not on a square grid")
    patches = tokens[:, tokens.shape[1] - side * side :]
    return patches.transpose(1, 2).unflatten(2, (side, side))


def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter or buffer; None for a model with neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return None


def output_shapes(
    model: nn.Module, inputs: Tensor, forward: Forward | None = None
) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """(name, module, output shape) of every submodule whose output is a tensor, in the order
    the modules finish during one forward pass (``forward(inputs)``, default ``model(inputs)``;
    a container finishes after its children)."""
    finished: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    seen: set[str] = set()

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if name not in seen and isinstance(output, Tensor):
                seen.add(name)
                finished.append((name, module, tuple(output.shape)))

        return hook

    hooked_forward(
        model,
        inputs,
        [m.register_forward_hook(make_hook(n)) for n, m in model.named_modules() if n],
        forward,
    )
    return finished


def returning_modules(model: nn.Module, inputs: Tensor, forward: Forward | None = None) -> set[str]:
    """The submodules whose output the model returns as it is (alone, or in a tuple, list or
    dict), in one forward: an autoencoder's last activation gives its reconstruction, not a
    feature map (shown as one, a visual review read "top 1 channels by mean" of a digit)."""
    outputs: dict[str, Tensor] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if isinstance(output, Tensor):
                outputs.setdefault(name, output)

        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in model.named_modules() if n]
    returned = hooked_forward(model, inputs, handles, forward)
    if isinstance(returned, dict):
        returned = list(returned.values())
    returned = returned if isinstance(returned, (tuple, list)) else [returned]
    ids = {id(value) for value in returned if isinstance(value, Tensor)}
    return {name for name, output in outputs.items() if id(output) in ids}


def hooked_forward(
    model: nn.Module, inputs: Tensor, handles: list[RemovableHandle], forward: Forward | None = None
) -> Any:
    """One forward of ``inputs`` (``forward(inputs)``, default ``model(inputs)``) without
    gradients, for what the hooks of ``handles`` record; they are removed when it ends, also on
    an error. Returns what the forward returned."""
    try:
        with torch.no_grad():
            return (forward or model)(inputs)
    finally:
        for handle in handles:
            handle.remove()
