"""Shared fixtures and checks: tiny real models, and the hygiene every functional call keeps."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from lightning_viz.testing import TinyCNN


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def vgg11():
    torch.manual_seed(0)
    return torchvision.models.vgg11(num_classes=10).eval()


@pytest.fixture(scope="session")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.fixture
def tiny() -> nn.Module:
    return TinyCNN().eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
