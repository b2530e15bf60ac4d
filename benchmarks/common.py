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


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
"""Where the benchmarks run: the GPU when there is one."""


def model_and_inputs(name: str, batch: int, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    factory, shape = MODELS[name]
    return factory().eval().to(DEVICE), torch.randn(batch, *shape, device=DEVICE)


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def seconds(run: Callable[[], object]) -> float:
    """Wall-clock seconds of ``run``: CUDA events around it on a GPU (after a sync, so earlier
    work is not counted), the host clock on a CPU."""
    if DEVICE.type != "cuda":
        start = time.perf_counter()
        run()
        return time.perf_counter() - start
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    begin.record()
    run()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / 1e3


def alternate(
    variants: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 2,
    settle: Callable[[], object] | None = None,
) -> dict[str, float]:
    """Median seconds of each variant, the variants run in turn so drifts hit them alike;
    ``settle`` runs, untimed, after each run (e.g. to let a background writer finish)."""
    for _ in range(warmup):
        for run in variants.values():
            run()
            if settle is not None:
                settle()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            times[name].append(seconds(run))
            if settle is not None:
                settle()
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
