"""Training-step overhead of ActivationMonitor at its default cadence and at every step.

    python -m benchmarks.step_overhead

Real Trainer runs, the variants alternated, mean step time (sampled steps are rare outliers that
a median would hide) from the first callback's batch start to the last callback's batch end, so
the monitor's own batch-start and batch-end work is inside the measurement.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import MODELS, machine, synchronize, table
from lightning_viz import ActivationMonitor
from lightning_viz.testing import ImageClassifier


class StepStart(pl.Callback):
    def __init__(self, clock: list[float]) -> None:
        self.clock = clock

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        synchronize()
        self.clock.append(time.perf_counter())


class StepEnd(pl.Callback):
    def __init__(self, clock: list[float], durations: list[float], skip: int) -> None:
        self.clock, self.durations, self.skip = clock, durations, skip

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        synchronize()
        if batch_idx >= self.skip:
            self.durations.append(time.perf_counter() - self.clock[-1])


def mean_step(name: str, monitor: ActivationMonitor | None, steps: int, batch: int) -> float:
    torch.manual_seed(0)
    factory, shape = MODELS[name]
    data = TensorDataset(torch.randn(steps * batch, *shape), torch.randint(0, 10, (steps * batch,)))
    clock: list[float] = []
    durations: list[float] = []
    callbacks = [
        StepStart(clock),
        *([monitor] if monitor else []),
        StepEnd(clock, durations, skip=3),
    ]
    trainer = pl.Trainer(
        max_steps=steps,
        callbacks=callbacks,
        logger=pl.loggers.TensorBoardLogger("/tmp/lightning-viz-bench", name=name),
        log_every_n_steps=50,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(
        ImageClassifier(factory(), lr=0.01, momentum=0.0), DataLoader(data, batch_size=batch)
    )
    return statistics.fmean(durations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--steps", type=int, default=103)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for name in args.models:
        times: dict[str, list[float]] = {"none": [], "default": [], "every step": []}
        for _ in range(args.repeats):
            times["none"].append(mean_step(name, None, args.steps, args.batch))
            times["default"].append(mean_step(name, ActivationMonitor(), args.steps, args.batch))
            times["every step"].append(
                mean_step(name, ActivationMonitor(every_n_steps=1), args.steps, args.batch)
            )
        none = statistics.median(times["none"])
        default = statistics.median(times["default"]) / none - 1
        every = statistics.median(times["every step"]) / none - 1
        rows.append([name, f"{none * 1e3:.1f}", f"{default:+.1%}", f"{every:+.1%}"])
    runs = f"batch {args.batch}, {args.steps} steps, median of {args.repeats} runs"
    print(f"machine: {machine()}; {runs}")
    print(table(rows, ["model", "step (ms), no callback", "default cadence (50)", "every step"]))


if __name__ == "__main__":
    main()
