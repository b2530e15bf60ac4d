"""What ``default_callbacks()`` costs a training run, measured and as it reports itself.

    python -m benchmarks.default_overhead

Real Trainer runs on the GPU when there is one: the digits net on the bundled digits (batch 32)
and resnet18 on the 64x64 shapes task (batch 32), each with no callback, with
``default_callbacks()`` (2% budget) and with ``default_callbacks(budget=None)`` (every view at
every epoch), the variants alternated. Overhead is the fit's wall-clock time over the run
without callbacks, minus 1 (a whole fit: baselines at train start, every epoch's views, the
background writer's PNG encoding competing for the same cores); "reported" is what the
callbacks measured of themselves (``lightning_viz.overhead(trainer)["total"]``: the training
thread's time only).
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
from lightning_viz.testing import ImageClassifier, digits_tensors, shapes_task

TASKS = {
    "digits_cnn": {"epochs": 10, "train": 1024, "val": 256},
    "resnet18": {"epochs": 6, "train": 512, "val": 128},
}


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


def one_fit(name: str, callbacks: list, batch: int) -> tuple[float, float]:
    """Seconds of one fit, and the share lightning-viz reported (0 without callbacks)."""
    pl.seed_everything(0, verbose=False)
    factory, _ = MODELS[name]
    train, val = loaders(name, batch)
    trainer = pl.Trainer(
        max_epochs=TASKS[name]["epochs"],
        accelerator=DEVICE.type,
        devices=1,
        callbacks=callbacks,
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
    return seconds, lightning_viz.overhead(trainer)["total"] if callbacks else 0.0


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
        runs: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
        for _ in range(args.repeats):
            for variant, callbacks in variants.items():
                runs[variant].append(one_fit(name, callbacks(), args.batch))
        none = statistics.median(seconds for seconds, _ in runs["none"])
        row = [name, str(TASKS[name]["epochs"]), f"{none:.1f}"]
        for variant in list(variants)[1:]:
            seconds = statistics.median(s for s, _ in runs[variant])
            reported = statistics.median(r for _, r in runs[variant])
            row += [f"{seconds / none - 1:+.1%}", f"{reported:.1%}"]
        rows.append(row)
    print(f"machine: {machine()}; batch {args.batch}, median of {args.repeats} fits")
    print(
        table(
            rows,
            [
                "model",
                "epochs",
                "fit, no callback (s)",
                "default: measured",
                "default: reported",
                "budget=None: measured",
                "budget=None: reported",
            ],
        )
    )


if __name__ == "__main__":
    main()
