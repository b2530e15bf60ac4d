"""Which layers a callback watches: the user's names through the one resolver, else a default."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from lightning_viz.functional._capture import resolve_layers


def named_layers(model: nn.Module, names: Sequence[str], source: str) -> dict[str, nn.Module]:
    """``{name: module}`` for the given names in model order (:func:`resolve_layers`), with the
    callback's name in front of an error.

    Raises:
        ValueError: a name that is not in ``model.named_modules()`` (closest names listed).
    """
    try:
        return resolve_layers(model, names)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def watched_layers(
    model: nn.Module,
    names: Sequence[str] | None,
    default: Callable[[str, nn.Module], bool],
    source: str,
) -> dict[str, nn.Module]:
    """The named layers, or, without names, every submodule that ``default`` accepts (maybe
    none: the caller then says what it will not show).

    Raises:
        ValueError: an unknown name (closest names listed).
    """
    if names is not None:
        return named_layers(model, names, source)
    return {name: m for name, m in model.named_modules() if name and default(name, m)}
