"""What every gradient-taking probe pass needs: gradients on, autocast off, checked inputs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lightning_viz.hooks import model_device


@contextmanager
def gradient_pass(device: torch.device) -> Iterator[None]:
    """Enable autograd in fp32, also under ``torch.inference_mode`` (Lightning's validation).

    ``enable_grad`` alone does not undo inference mode; tensors made under it must be cloned
    inside this block before they join a graph.
    """
    with (
        torch.inference_mode(False),
        torch.enable_grad(),
        torch.autocast(device_type=device.type, enabled=False),
    ):
        yield


def checked_inputs(model: nn.Module, inputs: Tensor) -> Tensor:
    """Validate a probe batch and return a fresh float copy that requires grad.

    Call inside :func:`gradient_pass`: the clone turns an inference tensor into a normal one.

    Raises:
        TypeError: ``inputs`` is not a tensor.
        ValueError: ``inputs`` has no batch of images or lies on another device than the model.
    """
    if not isinstance(inputs, Tensor):
        raise TypeError(f"`inputs` must be a tensor of shape (N, C, H, W), got {type(inputs).__name__}")
    if inputs.dim() != 4 or inputs.shape[0] == 0:
        raise ValueError(f"`inputs` must have shape (N, C, H, W) with N >= 1, got {tuple(inputs.shape)}")
    device = model_device(model)
    if device is not None and inputs.device != device:
        raise ValueError(
            f"`inputs` are on {inputs.device} but the model is on {device}; "
            "move them with inputs.to(device)"
        )
    return inputs.detach().clone().float().requires_grad_(True)
