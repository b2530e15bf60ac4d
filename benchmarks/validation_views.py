"""What the views over the validation set add to the validation epoch they ride on.

    python -m benchmarks.validation_views

EmbeddingLogger (1,000 images by default: here the whole validation set) and TopPatchesLogger
(8 units x top 9 in the default two layers) read the validation forward the Trainer runs
anyway. A fit with validation every epoch is run with and without each view, alternating; the
validation epoch is timed from its start to its end as the training thread sees it (the
epoch-end work included; PNG encoding and the projector files are written on the background
writer, let finish outside the timing). The first epoch (receptive fields, warm-up) is left out.
Two readings: the view's own time per epoch as its cost meter counts it (its hooks in the
forward and its epoch-end work, the number ``lightning_viz/overhead`` logs), a share of the plain
validation epoch; and the growth of the epoch itself, a difference of two noisy medians on a
shared 2-core machine. Its own time is also given in optimizer steps at batch 64.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import DEVICE, MODELS, machine, table
from lightning_viz import EmbeddingLogger, TopPatchesLogger
from lightning_viz.callbacks.base import RunContext
from lightning_viz.testing import ImageClassifier, digits_loaders

VIEWS = {"Embedding": EmbeddingLogger, "TopPatches": TopPatchesLogger}


class EpochTimer(pl.Callback):
    """Seconds of each validation epoch (outside the sanity check), and of the views' epoch-end
    work; placed last, its epoch end comes after theirs."""

    def __init__(self) -> None:
        self.epochs: list[float] = []
        self.started = 0.0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.started = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.epochs.append(time.perf_counter() - self.started)
        RunContext.of(trainer).background.flush()


VALIDATION_IMAGES = 2048
"""Random images the other models validate on: 32 batches, an epoch of a few seconds."""


def data(name: str) -> tuple[DataLoader, DataLoader]:
    """The digits for the digits CNN (its 360 validation images); random images otherwise."""
    if name == "digits_cnn":
        return digits_loaders()
    shape = MODELS[name][1]
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(VALIDATION_IMAGES, *shape, generator=generator)
    labels = torch.arange(VALIDATION_IMAGES) % 10
    train = TensorDataset(images[:128], labels[:128])
    return DataLoader(train, batch_size=64), DataLoader(TensorDataset(images, labels), 64)


def validation_epochs(name: str, callbacks: list, epochs: int) -> tuple[list[float], float]:
    """The validation epochs' seconds (the first left out), and the seconds per epoch the
    callbacks' own cost meter counted (their hooks and epoch-end work)."""
    torch.manual_seed(0)
    module = ImageClassifier(MODELS[name][0](), lr=0.01)
    timer = EpochTimer()
    trainer = pl.Trainer(
        max_epochs=epochs,
        limit_train_batches=2,
        num_sanity_val_steps=0,
        accelerator=DEVICE.type,
        devices=1,
        callbacks=[*callbacks, timer],
        logger=pl.loggers.TensorBoardLogger("/tmp/lightning-viz-bench", name=f"val-{name}"),
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    train, val = data(name)
    trainer.fit(module, train, val)
    spent = sum(RunContext.of(trainer).cost.spent.get(type(c).__name__, 0.0) for c in callbacks)
    return timer.epochs[1:], spent / epochs


def step_seconds(name: str) -> float:
    torch.manual_seed(0)
    factory, shape = MODELS[name]
    model = factory().to(DEVICE)
    x, y = torch.randn(64, *shape, device=DEVICE), torch.randint(0, 10, (64,), device=DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    times = []
    for _ in range(6):
        started = time.perf_counter()
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def measure(name: str, repeats: int, epochs: int) -> list[str]:
    plain: list[float] = []
    viewed: dict[str, list[float]] = {view: [] for view in VIEWS}
    own: dict[str, list[float]] = {view: [] for view in VIEWS}
    for _ in range(repeats):
        plain += validation_epochs(name, [], epochs)[0]
        for view, make in VIEWS.items():
            times, spent = validation_epochs(name, [make()], epochs)
            viewed[view] += times
            own[view].append(spent)
    base = statistics.median(plain)
    step = step_seconds(name)
    cells = [name, f"{base * 1e3:.0f}"]
    for view in VIEWS:
        extra = statistics.median(viewed[view]) - base
        spent = statistics.median(own[view])
        cells += [
            f"{spent * 1e3:.0f} ({spent / base:.1%})",
            f"{extra / base:+.1%}",
            f"{spent / step:.2f}",
        ]
    return cells


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits_cnn", "resnet18"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args(argv)
    rows = [measure(name, args.repeats, args.epochs) for name in args.models]
    print(f"machine: {machine()}; median of {args.repeats} x {args.epochs - 1} epochs")
    header = ["model", "validation epoch (ms)"]
    for view in VIEWS:
        header += [
            f"{view}: its own time, ms (share of the epoch)",
            f"{view}: the epoch's growth",
            f"{view}: its own time (steps at batch 64)",
        ]
    print(table(rows, header))


if __name__ == "__main__":
    main()
