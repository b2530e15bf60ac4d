"""Shared pieces of the benchmarks: models, timing that alternates variants, reporting."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from lightning_viz.testing import DigitsCNN

MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int]]] = {
    "digits_cnn": (lambda: DigitsCNN(), (1, 32, 32)),
    "vgg11": (lambda: torchvision.models.vgg11(num_classes=10), (3, 64, 64)),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (3, 64, 64)),
}


def model_and_inputs(name: str, batch: int, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    factory, shape = MODELS[name]
    return factory().eval(), torch.randn(batch, *shape)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def alternate(
    variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 2
) -> dict[str, float]:
    """Median seconds of each variant, the variants run in turn so drifts hit them alike."""
    for _ in range(warmup):
        for run in variants.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            synchronize()
            start = time.perf_counter()
            run()
            synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def machine() -> str:
    import os
    import platform

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return (
        f"{device}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}"
    )


def table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
