"""Small real models and data to try lightning-viz on, and to test and benchmark it with.

The examples, the tests and the benchmarks all use these, so a number in the README and a test's
expectation are about the same model. Nothing here downloads anything: the digits and the two
photos ship with scikit-learn (``pip install scikit-learn``, in the ``demo`` and ``test``
extras) and the shapes task is synthetic.
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class ImageClassifier(pl.LightningModule):
    """Any image classifier, trained by SGD (with ``one_cycle``, under a one-cycle learning
    rate peaking at ``lr``); logs the validation accuracy."""

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        one_cycle: bool = False,
    ) -> None:
        super().__init__()
        self.model, self.lr, self.momentum = model, lr, momentum
        self.weight_decay, self.one_cycle = weight_decay, one_cycle

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
        optimizer = torch.optim.SGD(
            self.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        if not self.one_cycle:
            return optimizer
        steps = int(self.trainer.estimated_stepping_batches)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, self.lr, total_steps=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


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

    def __init__(
        self, width: int = 16, num_classes: int = 10, in_channels: int = 1, first_kernel: int = 5
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, first_kernel, padding=first_kernel // 2, bias=False),
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


class PhotoCNN(DigitsCNN):
    """DigitsCNN for RGB with a 7x7 first layer: its 16 filters are big enough to show edges
    and colour blobs."""

    def __init__(self, width: int = 16, num_classes: int = 8) -> None:
        super().__init__(width, num_classes, in_channels=3, first_kernel=7)


PHOTO_CLASSES = [f"{photo} {corner}" for photo in ("temple", "flower") for corner in "↖↗↙↘"]
"""The photo-crops classes: which quarter of which of scikit-learn's two photos a crop is from
(``temple ↖``: the temple's top-left quarter), short enough that ``true temple ↖`` fits the
96-pixel tiles of the deconv and activation-grid views."""


def photo_crops(n: int, seed: int = 0, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random ``size``-pixel RGB crops of scikit-learn's two bundled photos (a temple in
    China and a flower, 427x640) and their class: the photo and the quarter the crop lies in
    (:data:`PHOTO_CLASSES`). Natural image statistics in a second: what makes first-layer
    filters turn into edges and colour blobs. Standardized per channel over both photos."""
    from sklearn.datasets import load_sample_images

    photos = torch.from_numpy(np.stack(load_sample_images().images)).permute(0, 3, 1, 2) / 255.0
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(PHOTO_CLASSES), (n,), generator=generator)
    half_height, half_width = photos.shape[2] // 2, photos.shape[3] // 2
    quarter = labels % 4
    tops = (quarter // 2) * half_height
    tops += torch.randint(0, half_height - size, (n,), generator=generator)
    lefts = (quarter % 2) * half_width
    lefts += torch.randint(0, half_width - size, (n,), generator=generator)
    crops = torch.stack(
        [
            photos[photo, :, top : top + size, left : left + size]
            for photo, top, left in zip(
                (labels // 4).tolist(), tops.tolist(), lefts.tolist(), strict=True
            )
        ]
    )
    mean, std = photos.mean(dim=(0, 2, 3)), photos.std(dim=(0, 2, 3))
    return (crops - mean[:, None, None]) / std[:, None, None], labels


class PhotosDataModule(pl.LightningDataModule):
    """Crops of the two photos (:func:`photo_crops`) as a LightningDataModule, with class names
    (``classes``) for the images' captions."""

    classes = PHOTO_CLASSES

    def __init__(self, batch_size: int = 64, train_size: int = 4000, val_size: int = 512) -> None:
        super().__init__()
        self.batch_size, self.train_size, self.val_size = batch_size, train_size, val_size

    def setup(self, stage: str) -> None:
        images, labels = photo_crops(self.train_size + self.val_size)
        self.train = TensorDataset(images[: self.train_size], labels[: self.train_size])
        self.val = TensorDataset(images[self.train_size :], labels[self.train_size :])

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        return DataLoader(self.train, self.batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, 256)


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


class TinyCNN(nn.Module):
    """Conv-BN-ReLU blocks with module ReLUs (one in-place) and a linear head."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 5, padding=2)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.bn1(self.conv1(x))))
        x = self.relu2(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


class TinyFunctionalCNN(TinyCNN):
    """TinyCNN's twin that calls ReLU functionally (as torchvision's DenseNet does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x)), inplace=True))
        x = self.conv2(x).relu()
        return self.head(x.mean(dim=(2, 3)))


class ShapesCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
        )
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def sequential_cnn(in_channels: int = 3, kernel: int = 3) -> nn.Sequential:
    """A plain nn.Sequential CNN without BatchNorm (so DDP ranks compute what one process does)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, kernel, padding=kernel // 2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def random_loader(
    n: int = 8, size: int = 32, channels: int = 3, classes: int = 10, batch_size: int = 4
) -> DataLoader:
    """A DataLoader of seeded Gaussian-noise images with random labels."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, channels, size, size, generator=generator)
    labels = torch.randint(0, classes, (n,), generator=generator)
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size)


class ChannelEnergy(nn.Module):
    """Scalar sum(A_c * A_c.detach()) per image: its gradient w.r.t. A_c is A_c itself.

    Run through captum, this makes the channel's own feature map the backward seed: the oracle
    for :func:`~lightning_viz.functional.project_to_input` in the tests and benchmarks.
    """

    def __init__(self, model: nn.Module, layer: str, channels: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.layer = dict(model.named_modules())[layer]
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured = {}

        def hook(module, args, output):
            captured["a"] = output
            return output.clone()

        handle = self.layer.register_forward_hook(hook)
        try:
            self.model(x)
        finally:
            handle.remove()
        chosen = captured["a"][torch.arange(x.shape[0]), self.channels]
        return (chosen * chosen.detach()).flatten(1).sum(dim=1)


def tiny_vit(
    image_size: int = 32,
    patch_size: int = 8,
    num_layers: int = 2,
    hidden_dim: int = 32,
    num_classes: int = 10,
    random_head: bool = True,
) -> nn.Module:
    """torchvision's VisionTransformer in small (two heads, an MLP twice as wide). torchvision
    starts the classification head at zero, so nothing depends on the input until it trains;
    ``random_head`` draws it instead, as in a trained model."""
    import torchvision

    vit = torchvision.models.VisionTransformer(
        image_size=image_size,
        patch_size=patch_size,
        num_layers=num_layers,
        num_heads=2,
        hidden_dim=hidden_dim,
        mlp_dim=2 * hidden_dim,
        num_classes=num_classes,
    )
    if random_head:
        nn.init.normal_(vit.heads.head.weight, std=0.5)
    return vit
