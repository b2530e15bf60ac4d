"""Training-step overhead of ActivationMonitor at its default cadence and at every step.

    python -m benchmarks.step_overhead

Real Trainer runs on the GPU when there is one, the variants alternated, mean step time (sampled
steps are rare outliers that a median would hide) from the first callback's batch start to the
last callback's batch end, so the monitor's own batch-start and batch-end work is inside the
measurement. On a GPU, steps the monitor does not sample run under
``torch.cuda.set_sync_debug_mode("error")``: a host sync there fails the benchmark.

Mean step times of separate runs differ by several percent on a shared machine, more than the
default cadence costs (two sampled steps in a hundred). So the default cadence is also measured
within its own runs ("paired"): each sampled step and the steps right after it (where what
the sample left behind may still cost), against the median of the unsampled steps
just before, as a share of the steps between two samples.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

import lightning_viz
from benchmarks.common import DEVICE, MODELS, machine, synchronize, table
from lightning_viz import ActivationMonitor
from lightning_viz.testing import ImageClassifier


class StepStart(pl.Callback):
    def __init__(self, clock: list[float], sampled_every: int | None) -> None:
        self.clock, self.sampled_every = clock, sampled_every

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        synchronize()
        self.clock.append(time.perf_counter())
        sampled = self.sampled_every is None or (batch_idx + 1) % self.sampled_every == 0
        if DEVICE.type == "cuda" and not sampled:
            torch.cuda.set_sync_debug_mode("error")


class StepEnd(pl.Callback):
    def __init__(self, clock: list[float], durations: dict[int, float], skip: int) -> None:
        self.clock, self.durations, self.skip = clock, durations, skip

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if DEVICE.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
        synchronize()
        if batch_idx >= self.skip:
            self.durations[batch_idx] = time.perf_counter() - self.clock[-1]


BEFORE, AFTER = 8, 4
"""The unsampled steps before a sampled one that are its baseline, and the steps from it on
that its cost is summed over."""


def paired_cost(durations: dict[int, float], every: int) -> float:
    """The share of training time that sampling every ``every``-th step costs, from one run's
    step durations by batch index: per sampled step, the extra time of it and the ``AFTER - 1``
    steps after it over the median of the ``BEFORE`` steps before, divided by ``every`` such
    steps; the mean over the sampled steps that have both."""
    shares = []
    for index in durations:
        window = [durations.get(index + k) for k in range(AFTER)]
        baseline = [durations.get(index - k) for k in range(1, BEFORE + 1)]
        if (index + 1) % every or None in window or None in baseline:
            continue
        step = statistics.median(baseline)
        shares.append(sum(d - step for d in window) / (every * step))
    return statistics.fmean(shares) if shares else float("nan")


def mean_step(
    name: str, monitor: ActivationMonitor | None, steps: int, batch: int
) -> tuple[float, float, float]:
    """Mean seconds of a training step, the share of the fit the monitor reported, and what its
    sampled steps cost within the run (:func:`paired_cost`; NaN sampling every step)."""
    torch.manual_seed(0)
    factory, shape = MODELS[name]
    data = TensorDataset(torch.randn(steps * batch, *shape), torch.randint(0, 10, (steps * batch,)))
    clock: list[float] = []
    durations: dict[int, float] = {}
    sampled_every = None if monitor is None else monitor.every_n_steps or 50
    callbacks = [
        StepStart(clock, sampled_every),
        *([monitor] if monitor else []),
        StepEnd(clock, durations, skip=3),
    ]
    trainer = pl.Trainer(
        max_steps=steps,
        callbacks=callbacks,
        logger=pl.loggers.TensorBoardLogger("/tmp/lightning-viz-bench", name=name),
        log_every_n_steps=50,
        accelerator=DEVICE.type,
        devices=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(
        ImageClassifier(factory(), lr=0.01, momentum=0.0), DataLoader(data, batch_size=batch)
    )
    reported = lightning_viz.overhead(trainer)["total"] if monitor is not None else 0.0
    paired = paired_cost(durations, sampled_every) if sampled_every not in (None, 1) else math.nan
    return statistics.fmean(durations.values()), reported, paired


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--steps", type=int, default=103)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    variants = {
        "none": lambda: None,
        "default": ActivationMonitor,
        "every step": lambda: ActivationMonitor(every_n_steps=1),
    }
    rows = []
    for name in args.models:
        mean_step(name, ActivationMonitor(), args.steps, args.batch)  # warm-up, untimed
        runs: dict[str, list[tuple[float, float, float]]] = {v: [] for v in variants}
        for _ in range(args.repeats):
            for variant, monitor in variants.items():
                runs[variant].append(mean_step(name, monitor(), args.steps, args.batch))
        step, reported, paired = (
            {v: statistics.median(run[column] for run in runs[v]) for v in variants}
            for column in range(3)
        )
        rows.append(
            [
                name,
                f"{step['none'] * 1e3:.1f}",
                f"{step['default'] / step['none'] - 1:+.1%}",
                f"{paired['default']:+.1%}",
                f"{reported['default']:.1%}",
                f"{step['every step'] / step['none'] - 1:+.1%}",
                f"{reported['every step']:.1%}",
            ]
        )
    runs_text = f"batch {args.batch}, {args.steps} steps, median of {args.repeats} runs"
    print(f"machine: {machine()}; {runs_text}")
    header = ["model", "step (ms), no callback", "default cadence (50)", "paired", "reported"]
    print(table(rows, [*header, "every step", "reported"]))


if __name__ == "__main__":
    main()
