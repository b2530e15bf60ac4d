"""Choosing what to show: evenly spread picks, and the features a deconvnet evolution follows."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def evenly_spaced(length: int, count: int) -> list[int]:
    """At most ``count`` indices into ``range(length)``, evenly spread from the first to the last.

    All of them when ``length <= count``; always the first and the last otherwise.
    """
    if length <= count:
        return list(range(length))
    return torch.linspace(0, length - 1, count).round().long().tolist()


def first_features(top: Tensor, count: int) -> list[int]:
    """The ``count`` features to follow: the probes' strongest channels in probe order, each
    channel once, then their second strongest, and so on (where probes share a top channel, as
    an untrained layer's often do, the grid still gets ``count`` columns); fewer only when the
    probes' channels run out.

    Args:
        top: (N, K) channels per probe, strongest first (:func:`top_channels`).
    """
    ranked = top.t().flatten().tolist()  # every probe's first channel, then every second, ...
    return list(dict.fromkeys(ranked))[:count]


def follow_features(
    activation: Tensor, top: Tensor, features: Sequence[int], layer: str = ""
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Add to each probe's channels the followed features that this probe activates most.

    Each followed feature is projected from the probe whose map of it has the largest sum. A
    feature already among that probe's ``top`` channels reuses that slot (the same projection);
    the others take extra slots on the probe's row, and the other probes' extra slots are -1
    (nothing projected), so every row has the same length and one batched backward serves them
    all. Fewer extra slots mean fewer batch rows to project.

    Args:
        activation: (N, C, h, w) the layer's output for the probes.
        top: (N, K) the channels each probe shows anyway.
        features: the followed channels.
        layer: the layer's name, for the error message.

    Returns:
        ``(channels, (probe, slot))``: channels (N, K + S) to project, and for each followed
        feature the row and column of ``channels`` that hold it.

    Raises:
        ValueError: a followed channel that the layer does not have.
    """
    followed = torch.as_tensor(list(features), device=activation.device, dtype=torch.long)
    if followed.numel() and (followed.min() < 0 or followed.max() >= activation.shape[1]):
        raise ValueError(
            f"feature channels {list(features)} out of range for layer {layer!r} with "
            f"{activation.shape[1]} channels"
        )
    best = activation[:, followed].sum(dim=(2, 3)).argmax(dim=0)
    in_top = top[best] == followed[:, None]  # (F, K): the feature's slot among the top ones
    shown = in_top.any(dim=1)
    extra_needed = ~shown
    # the i-th feature that needs an extra slot on a probe takes extra column i
    same_probe = (best[None, :] == best[:, None]) & extra_needed[None, :]
    rank_on_probe = same_probe.tril(diagonal=-1).sum(dim=1)
    columns = int(rank_on_probe[extra_needed].max()) + 1 if bool(extra_needed.any()) else 0
    extra = torch.full((len(activation), columns), -1, device=top.device, dtype=top.dtype)
    extra[best[extra_needed], rank_on_probe[extra_needed]] = followed[extra_needed]
    slot = torch.where(shown, in_top.long().argmax(dim=1), top.shape[1] + rank_on_probe)
    return torch.cat([top, extra], dim=1), (best, slot)
