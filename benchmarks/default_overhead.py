"""What ``default_callbacks()`` costs a training run, measured and as it reports itself.

    python -m benchmarks.default_overhead

Real Trainer runs on the GPU when there is one: the digits net on the bundled digits (batch 32)
and resnet18 on the 64x64 shapes task (batch 32), each with no callback, with
``default_callbacks()`` (2% budget) and with ``default_callbacks(budget=None)`` (every view at
every epoch), the variants alternated, each repeat starting with the next. "epoch" is the median
wall-clock time of the middle epochs (not the first, whose views always render, nor the last,
whose views render too) over that of the run without callbacks, minus 1: what a long run pays
per epoch. "fit" is the same for the whole fit (baselines at train start and the first and last
views included: what a short run pays). Both include the background writer's PNG encoding, which
competes for the same CPU cores. "reported" is what the callbacks measured of themselves (the
training thread's time only): over the fit (``lightning_viz.overhead(trainer)["total"]``) and,
as the median share of each middle epoch, the steadier number on a machine whose speed drifts
between fits.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

import lightning_viz
from benchmarks.common import DEVICE, MODELS, machine, table
from lightning_viz.callbacks.base import RunContext
from lightning_viz.testing import ImageClassifier, digits_tensors, shapes_task

TASKS = {
    "digits_cnn": {"epochs": 12, "train": 1024, "val": 256},
    "resnet18": {"epochs": 6, "train": 512, "val": 128},
}


class EpochClock(pl.Callback):
    """Seconds from one training epoch's start to the next's (the last: to train end), so that
    validation and every callback's epoch-end work are inside, and the seconds lightning-viz
    reported spending in between; attach it last."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.spent: list[float] = []

    def _tick(self, trainer) -> None:
        self.starts.append(time.perf_counter())
        self.spent.append(sum(RunContext.of(trainer).cost.spent.values()))

    def on_train_epoch_start(self, trainer, pl_module):
        self._tick(trainer)

    def on_train_end(self, trainer, pl_module):
        self._tick(trainer)

    def middle_epochs(self) -> tuple[float, float]:
        """The median seconds of the middle epochs, and the median share of them that
        lightning-viz reported."""
        durations = [b - a for a, b in zip(self.starts, self.starts[1:], strict=False)]
        spent = [b - a for a, b in zip(self.spent, self.spent[1:], strict=False)]
        shares = [s / d for s, d in zip(spent, durations, strict=True)]
        return statistics.median(durations[1:-1]), statistics.median(shares[1:-1])


def loaders(name: str, batch: int) -> tuple[DataLoader, DataLoader]:
    size = TASKS[name]
    if name == "digits_cnn":
        images, labels = digits_tensors()
    else:
        images, labels, _ = shapes_task(size["train"] + size["val"], size=64, channels=3)
    images, labels = images[: size["train"] + size["val"]], labels[: size["train"] + size["val"]]
    train = TensorDataset(images[: size["train"]], labels[: size["train"]])
    val = TensorDataset(images[size["train"] :], labels[size["train"] :])
    return DataLoader(train, batch_size=batch, shuffle=True), DataLoader(val, batch_size=batch)


def one_fit(name: str, callbacks: list, batch: int) -> tuple[float, float, float, float]:
    """Seconds of one fit, of its middle epochs, the share of the fit lightning-viz reported
    (0 without callbacks), and its median share of the middle epochs."""
    pl.seed_everything(0, verbose=False)
    factory, _ = MODELS[name]
    train, val = loaders(name, batch)
    trainer = pl.Trainer(
        max_epochs=TASKS[name]["epochs"],
        accelerator=DEVICE.type,
        devices=1,
        callbacks=[*callbacks, clock := EpochClock()],
        logger=pl.loggers.TensorBoardLogger("/tmp/lightning-viz-bench", name=f"default-{name}"),
        log_every_n_steps=50,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(ImageClassifier(factory(), lr=0.05, momentum=0.9), train, val)
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    reported = lightning_viz.overhead(trainer)["total"] if callbacks else 0.0
    epoch, epoch_reported = clock.middle_epochs()
    return seconds, epoch, reported, epoch_reported


def median(runs: list[tuple[float, ...]], column: int) -> float:
    return statistics.median(run[column] for run in runs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(TASKS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    variants = {
        "none": lambda: [],
        "default (2% budget)": lightning_viz.default_callbacks,
        "budget=None": lambda: lightning_viz.default_callbacks(budget=None),
    }
    rows = []
    for name in args.models:
        runs: dict[str, list[tuple[float, ...]]] = {v: [] for v in variants}
        order = list(variants)
        for repeat in range(args.repeats):
            # each repeat starts with another variant: the fits' order moved the digits net's
            # epoch by more than the callbacks (each variant 4 to 11% faster when run second)
            shift = repeat % len(order)
            for variant in order[shift:] + order[:shift]:
                runs[variant].append(one_fit(name, variants[variant](), args.batch))
        fit, epoch = median(runs["none"], 0), median(runs["none"], 1)
        row = [name, str(TASKS[name]["epochs"]), f"{fit:.1f}", f"{epoch:.2f}"]
        for variant in list(variants)[1:]:
            row += [
                f"{median(runs[variant], 1) / epoch - 1:+.1%}",
                f"{median(runs[variant], 3):.1%}",
                f"{median(runs[variant], 0) / fit - 1:+.1%}",
                f"{median(runs[variant], 2):.1%}",
            ]
        rows.append(row)
    print(f"machine: {machine()}; batch {args.batch}, median of {args.repeats} fits")
    header = ["model", "epochs", "fit, no callback (s)", "epoch, no callback (s)"]
    for variant in ("default", "budget=None"):
        header += [
            f"{variant}: epoch",
            f"{variant}: epoch, reported",
            f"{variant}: fit",
            f"{variant}: fit, reported",
        ]
    print(table(rows, header))


if __name__ == "__main__":
    main()
