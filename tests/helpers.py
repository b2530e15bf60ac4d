"""Small real models and checks used across the tests."""

from __future__ import annotations

import io

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch import nn

from lightning_viz.functional import scores
from lightning_viz.functional.captions import BAND, text_band
from lightning_viz.functional.images import to_uint8
from lightning_viz.testing import DigitsCNN, ImageClassifier, digits_loaders


def hook_count(model: nn.Module) -> int:
    """Number of module hooks of any kind left anywhere in ``model``."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return sum(len(getattr(m, kind, {})) for m in model.modules() for kind in kinds)


def train_flags(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def assert_untouched(model: nn.Module, flags: dict[str, bool]) -> None:
    """No hook left, no parameter .grad written, train/eval flags as before."""
    assert hook_count(model) == 0
    assert all(p.grad is None for p in model.parameters())
    assert train_flags(model) == flags


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max().clamp(min=1e-12)).item()


class DigitsClassifier(ImageClassifier):
    """DigitsCNN trained with a chosen optimizer; ``reinit_first_conv_at`` corrupts it mid-run."""

    def __init__(
        self,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        freeze_first_conv: bool = False,
        reinit_first_conv_at: int | None = None,
    ) -> None:
        super().__init__(DigitsCNN(), lr=lr)
        self.optimizer_name = optimizer
        self.reinit_first_conv_at = reinit_first_conv_at
        if freeze_first_conv:
            self.model.features[0].weight.requires_grad_(False)

    def on_train_epoch_start(self) -> None:
        if self.current_epoch == self.reinit_first_conv_at:
            with torch.no_grad(), torch.random.fork_rng():
                torch.manual_seed(1234)
                nn.init.kaiming_uniform_(self.model.features[0].weight, a=5**0.5)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=0.9)
        if self.optimizer_name == "adam":
            return torch.optim.Adam(params, lr=self.lr)
        return torch.optim.AdamW(params, lr=self.lr)


def fit(
    module: pl.LightningModule,
    callbacks,
    log_dir,
    epochs: int = 2,
    limit_train_batches=None,
    **trainer_args,
):
    """A real, seeded, deterministic CPU Trainer run on the digits; returns the trainer."""
    pl.seed_everything(0, verbose=False)
    train, val = digits_loaders()
    trainer_args.setdefault("deterministic", True)
    ckpt_path = trainer_args.pop("ckpt_path", None)
    if not trainer_args.pop("validate", True):
        val = None
    trainer = make_trainer(
        log_dir,
        callbacks,
        max_epochs=epochs,
        limit_train_batches=limit_train_batches,
        log_every_n_steps=5,
        **trainer_args,
    )
    trainer.fit(module, train, val, ckpt_path=ckpt_path)
    return trainer


def make_trainer(log_dir, callbacks, **trainer_args) -> pl.Trainer:
    """A quiet single-device Trainer (CPU unless told) that logs to TensorBoard in ``log_dir``."""
    from pytorch_lightning.loggers import TensorBoardLogger

    trainer_args.setdefault("logger", TensorBoardLogger(str(log_dir), name="", version=""))
    trainer_args.setdefault("enable_checkpointing", False)
    trainer_args.setdefault("accelerator", "cpu")
    trainer_args.setdefault("enable_progress_bar", False)
    return pl.Trainer(
        callbacks=callbacks,
        devices=1,
        enable_model_summary=False,
        **trainer_args,
    )


def read_events(log_dir):
    """Everything TensorBoard would show for ``log_dir``, read with tensorboard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(
        str(log_dir), size_guidance={"scalars": 0, "images": 0, "histograms": 0, "tensors": 0}
    )
    accumulator.Reload()
    return accumulator


def text_rows(events, tag: str) -> list[list[str]]:
    """The body cells of the markdown table in the latest text of ``tag`` (the header, and any
    lines above the table, left out)."""
    text = events.Tensors(f"{tag}/text_summary")[-1].tensor_proto.string_val[0].decode()
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def Classifier(model: nn.Module, lr: float = 0.01) -> ImageClassifier:
    """Any image classifier trained by plain SGD (for torchvision models and synthetic data)."""
    return ImageClassifier(model, lr=lr, momentum=0.0)


def image_pixels(event) -> np.ndarray:
    """The (H, W, 3) uint8 pixels of an image entry read back from an event file."""
    with Image.open(io.BytesIO(event.encoded_image_string)) as image:
        return np.asarray(image.convert("RGB"))


def assert_caption(
    pixels: np.ndarray,
    text: str,
    x: int,
    y: int,
    width: int,
    height: int = BAND,
    align: str = "center",
) -> None:
    """The band at (x, y) of ``width`` x ``height`` pixels holds exactly ``text`` as the
    callbacks draw it."""
    expected = to_uint8(text_band([text], width, height, align=align))[0].permute(1, 2, 0).numpy()
    found = pixels[y : y + expected.shape[0], x : x + width]
    assert np.array_equal(found, expected), f"no caption {text!r} at x={x}, y={y}"


def pointing_game(maps: torch.Tensor, boxes: torch.Tensor) -> float:
    """The share of (N, H, W) maps whose peak lies in its image's (N, 4) box (top, left,
    bottom, right; bottom and right exclusive): the pointing game of localization."""
    return scores.pointing_game(maps, boxes).nanmean().item()


class TinyUNet(nn.Module):
    """Encoder, bottleneck, a decoder joined by a skip connection, and a 1x1 head."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.bottleneck = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, x):
        skip = self.enc(x)
        return self.head(self.dec(torch.cat([self.up(self.bottleneck(skip)), skip], dim=1)))


def segmentation_data(n: int = 24):
    """Images with one square of class 1, 2 or 3 on background 0, of growing size; a border of
    ignored pixels (255) around each."""
    images = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(n, 16, 16, dtype=torch.long)
    for i in range(n):
        side = 2 + i % 8
        masks[i, 2 : 2 + side, 2 : 2 + side] = 1 + i % 3
    masks[:, 0] = 255
    return images, masks


class RegionClassifier(nn.Module):
    """A detector's shape of forward: a backbone's maps per image, then maps per region
    proposal (three 7x7 crops of each image, batched: (3N, C, 7, 7)) through a region head."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.region_head = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.classifier = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.backbone(x)
        regions = torch.cat([maps[:, :, i : i + 7, i : i + 7] for i in (0, 8, 16)])
        pooled = self.region_head(regions).mean(dim=(2, 3)).unflatten(0, (3, len(x)))
        return self.classifier(pooled.mean(dim=0))
