"""torchvision's resnet18 (random weights) on a synthetic shapes task, with every callback.

    python examples/train_resnet_synthetic.py [--epochs 3] [--logdir lightning_logs]

Each 64x64 RGB image has a coloured shape (plus, ring or cross) pasted at a random place on
noise; the class is the shape. Grad-CAM should come to point at the shape.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
import torchvision
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning_viz
from examples.digits import ImageClassifier


def shapes(n: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` RGB images with one of three 16x16 shapes in a random colour and place."""
    generator = torch.Generator().manual_seed(seed)
    s = 16
    plus = torch.zeros(s, s)
    plus[6:10, :] = plus[:, 6:10] = 1
    ring = torch.ones(s, s)
    ring[3:-3, 3:-3] = 0
    cross = (torch.eye(s) + torch.eye(s).flip(1)).clamp(max=1)
    stamps = torch.stack([plus, ring, cross])
    images = 0.3 * torch.randn(n, 3, size, size, generator=generator)
    labels = torch.randint(0, 3, (n,), generator=generator)
    corners = torch.randint(0, size - s + 1, (n, 2), generator=generator)
    colours = torch.rand(n, 3, generator=generator) + 0.5
    for i, (top, left) in enumerate(corners.tolist()):
        images[i, :, top : top + s, left : left + s] += (
            2 * colours[i, :, None, None] * stamps[labels[i]]
        )
    return images, labels


def main(argv: list[str] | None = None) -> pl.Trainer:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--logdir", default="lightning_logs")
    args = parser.parse_args(argv)

    pl.seed_everything(0, verbose=False)
    train = DataLoader(TensorDataset(*shapes(args.train_size)), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(*shapes(64, seed=1)), batch_size=64)
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
    alerts = [alert for callback in callbacks for alert in callback.alerts.raised]
    print(f"\nlogs: {Path(logger.log_dir).resolve()}")
    print(f"see them: tensorboard --logdir {Path(args.logdir).resolve()}")
    print(f"alerts: {len(alerts)}")
    for alert in alerts:
        print(f"  - {alert.message}")
    return trainer


if __name__ == "__main__":
    main()
