"""Training-step overhead of ActivationMonitor at its default cadence and at every step.

    python -m benchmarks.step_overhead

Real Trainer runs on the GPU when there is one, the variants alternated, mean step time (sampled
steps are rare outliers that a median would hide) from the first callback's batch start to the
last callback's batch end, so the monitor's own batch-start and batch-end work is inside the
measurement. On a GPU, steps the monitor does not sample run under
``torch.cuda.set_sync_debug_mode("error")``: a host sync there fails the benchmark.
"""

from __future__ import annotations

import argparse
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
    def __init__(self, clock: list[float], durations: list[float], skip: int) -> None:
        self.clock, self.durations, self.skip = clock, durations, skip

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if DEVICE.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
        synchronize()
        if batch_idx >= self.skip:
            self.durations.append(time.perf_counter() - self.clock[-1])


def mean_step(
    name: str, monitor: ActivationMonitor | None, steps: int, batch: int
) -> tuple[float, float]:
    """Mean seconds of a training step, and the share of the fit the monitor reported."""
    torch.manual_seed(0)
    factory, shape = MODELS[name]
    data = TensorDataset(torch.randn(steps * batch, *shape), torch.randint(0, 10, (steps * batch,)))
    clock: list[float] = []
    durations: list[float] = []
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
    return statistics.fmean(durations), reported


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
        runs: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
        for _ in range(args.repeats):
            for variant, monitor in variants.items():
                runs[variant].append(mean_step(name, monitor(), args.steps, args.batch))
        none = statistics.median(step for step, _ in runs["none"])
        row = [name, f"{none * 1e3:.1f}"]
        for variant in ("default", "every step"):
            step = statistics.median(step for step, _ in runs[variant])
            reported = statistics.median(share for _, share in runs[variant])
            row += [f"{step / none - 1:+.1%}", f"{reported:.1%}"]
        rows.append(row)
    runs_text = f"batch {args.batch}, {args.steps} steps, median of {args.repeats} runs"
    print(f"machine: {machine()}; {runs_text}")
    header = ["model", "step (ms), no callback", "default cadence (50)", "reported"]
    print(table(rows, [*header, "every step", "reported"]))


if __name__ == "__main__":
    main()
