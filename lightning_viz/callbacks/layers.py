"""Choosing the layers a callback watches, with errors that name the closest valid layers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from lightning_viz.hooks import unknown_layer_message


def select_layers(
    model: nn.Module,
    layers: Sequence[str] | None,
    default: Callable[[str, nn.Module], bool],
    what: str,
    source: str,
) -> dict[str, nn.Module]:
    """``{name: module}`` for the given names, or every module that ``default`` accepts.

    Raises:
        ValueError: a name that is not in ``model.named_modules()`` (closest names listed), or
            nothing to watch.
    """
    named = dict(model.named_modules())
    if layers is None:
        chosen = {name: module for name, module in named.items() if name and default(name, module)}
        if not chosen:
            raise ValueError(
                f"{source}: {type(model).__name__} has no {what}; pass `layers=` with names "
                "from model.named_modules()"
            )
        return chosen
    for name in layers:
        if name not in named or not name:
            raise ValueError(f"{source}: {unknown_layer_message(name, list(named))}")
    return {name: named[name] for name in layers}


def check_layer_names(layers: Sequence[str] | None, argument: str = "layers") -> list[str] | None:
    """Validate a ``layers=`` argument at construction: None or a non-empty list of strings."""
    if layers is None:
        return None
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    if not layers or not all(isinstance(name, str) for name in layers):
        raise ValueError(
            f"`{argument}` must be None or a non-empty list of layer names, got {layers!r}"
        )
    return layers
