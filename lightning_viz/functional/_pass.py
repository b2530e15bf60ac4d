"""What every gradient-taking probe pass needs: checked inputs, gradients on, autocast off."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lightning_viz.functional._capture import model_device


@contextmanager
def gradient_pass(model: nn.Module, inputs: Tensor) -> Iterator[Tensor]:
    """Check a probe batch and yield a float copy that requires grad, with autograd on in fp32.

    Works under ``torch.inference_mode`` (Lightning's validation), which ``enable_grad`` alone
    does not undo; the copy is made inside, so it is a normal tensor even when ``inputs`` is not.

    Raises:
        TypeError: ``inputs`` is not a tensor.
        ValueError: ``inputs`` is not a batch of images or lies on another device than the model.
    """
    if not isinstance(inputs, Tensor):
        raise TypeError(
            f"`inputs` must be a tensor of shape (N, C, H, W), got {type(inputs).__name__}"
        )
    if inputs.dim() != 4 or inputs.shape[0] == 0:
        raise ValueError(
            f"`inputs` must have shape (N, C, H, W) with N >= 1, got {tuple(inputs.shape)}"
        )
    device = model_device(model)
    if device is not None and inputs.device != device:
        raise ValueError(
            f"`inputs` are on {inputs.device} but the model is on {device}; "
            "move them with inputs.to(device)"
        )
    with (
        torch.inference_mode(False),
        torch.enable_grad(),
        torch.autocast(device_type=inputs.device.type, enabled=False),
    ):
        yield inputs.detach().clone().float().requires_grad_(True)
