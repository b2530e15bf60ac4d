"""torchvision's resnet18 (random weights) on a synthetic shapes task, with the default callbacks.

    python examples/train_resnet_synthetic.py [--epochs 3] [--logdir lightning_logs]

Each 64x64 RGB image has a coloured shape (plus, ring or cross) pasted at a random place on
noise; the class is the shape. Grad-CAM should come to point at the shape.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytorch_lightning as pl
import torchvision
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning_viz
from examples.common import report
from lightning_viz.testing import ImageClassifier, shapes_task


def main(argv: list[str] | None = None) -> pl.Trainer:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--logdir", default="lightning_logs")
    args = parser.parse_args(argv)

    pl.seed_everything(0, verbose=False)
    train_images, train_labels, _ = shapes_task(
        args.train_size, size=64, stamp=16, channels=3, noise=0.3
    )
    val_images, val_labels, _ = shapes_task(64, size=64, stamp=16, channels=3, noise=0.3, seed=1)
    train = DataLoader(TensorDataset(train_images, train_labels), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(val_images, val_labels), batch_size=64)
    model = ImageClassifier(torchvision.models.resnet18(num_classes=3), lr=0.01)
    logger = TensorBoardLogger(args.logdir, name="resnet18_shapes")
    callbacks = lightning_viz.default_callbacks()
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="auto",
        logger=logger,
        callbacks=list(callbacks),
        log_every_n_steps=5,
        enable_checkpointing=False,
    )
    trainer.fit(model, train, val)
    report(trainer, callbacks, args.logdir)
    return trainer


if __name__ == "__main__":
    main()
