"""What the examples share: a classifier module, a synthetic shapes task, the closing report."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn


class ImageClassifier(pl.LightningModule):
    """Any image classifier, trained by SGD; logs the validation accuracy."""

    def __init__(self, model: nn.Module, lr: float = 0.05, momentum: float = 0.9) -> None:
        super().__init__()
        self.model, self.lr, self.momentum = model, lr, momentum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(dim=1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


def shapes_task(
    n: int,
    size: int = 32,
    stamp: int = 8,
    channels: int = 1,
    noise: float = 0.5,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A shape pasted at a random spot on noise; the class is the shape (plus, ring, cross).

    With 3 channels each shape gets a random colour. Returns images (n, channels, size, size),
    labels (n,) and the shapes' boxes (n, 4) as (top, left, bottom, right), bottom and right
    exclusive.
    """
    generator = torch.Generator().manual_seed(seed)
    s, band = stamp, max(1, stamp // 4)
    plus = torch.zeros(s, s)
    plus[s // 2 - band // 2 - 1 : s // 2 + band // 2 + 1, :] = 1
    plus[:, s // 2 - band // 2 - 1 : s // 2 + band // 2 + 1] = 1
    ring = torch.ones(s, s)
    ring[band:-band, band:-band] = 0
    cross = (torch.eye(s) + torch.eye(s).flip(1)).clamp(max=1)
    stamps = torch.stack([plus, ring, cross])
    images = noise * torch.randn(n, channels, size, size, generator=generator)
    labels = torch.randint(0, 3, (n,), generator=generator)
    corners = torch.randint(0, size - s + 1, (n, 2), generator=generator)
    colours = torch.full((n, channels), 2.5)
    if channels == 3:
        colours = 2 * (torch.rand(n, 3, generator=generator) + 0.5)
    for i, (top, left) in enumerate(corners.tolist()):
        images[i, :, top : top + s, left : left + s] += (
            colours[i, :, None, None] * stamps[labels[i]]
        )
    return images, labels, torch.cat([corners, corners + s], dim=1)


def report(trainer: pl.Trainer, callbacks: list, logdir: str) -> None:
    """Where the logs are, how to see them, and the alerts that were raised."""
    alerts = [alert for callback in callbacks for alert in callback.alerts.raised]
    if "val_acc" in trainer.callback_metrics:
        print(f"\nvalidation accuracy: {trainer.callback_metrics['val_acc']:.3f}")
    print(f"logs: {Path(trainer.logger.log_dir).resolve()}")
    print(f"see them: tensorboard --logdir {Path(logdir).resolve()}")
    print(f"alerts: {len(alerts)}")
    for alert in alerts:
        print(f"  - {alert.message}")
