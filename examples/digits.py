"""scikit-learn's bundled handwritten digits and a small Conv-BN-ReLU network for them."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from examples.common import ImageClassifier


def digits_tensors(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 digits (8x8, shipped with scikit-learn) upsampled to ``size`` and standardized."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = (images - images.mean()) / images.std()
    return images, torch.tensor(digits.target)


def digits_loaders(batch_size: int = 64, train_size: int = 1437, seed: int = 0):
    """Deterministic train/validation DataLoaders over the digits."""
    images, labels = digits_tensors()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    train, val = order[:train_size], order[train_size:]
    generator = torch.Generator().manual_seed(seed)
    return (
        DataLoader(
            TensorDataset(images[train], labels[train]),
            batch_size,
            shuffle=True,
            generator=generator,
        ),
        DataLoader(TensorDataset(images[val], labels[val]), 256),
    )


class DigitsCNN(nn.Module):
    """Three Conv-BN-ReLU blocks with a 5x5 first layer (big enough to see), for 1x32x32 digits."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 5, padding=2, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(4 * width),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class DigitsDataModule(pl.LightningDataModule):
    """The digits as a LightningDataModule (for LightningCLI configs)."""

    def __init__(self, batch_size: int = 64) -> None:
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage: str) -> None:
        self.train, self.val = digits_loaders(self.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self.train

    def val_dataloader(self) -> DataLoader:
        return self.val


class DigitsClassifier(ImageClassifier):
    """ImageClassifier around DigitsCNN, configurable by plain numbers (for LightningCLI)."""

    def __init__(self, width: int = 16, lr: float = 0.05) -> None:
        super().__init__(DigitsCNN(width), lr)
