"""Small real models and checks used across the tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
