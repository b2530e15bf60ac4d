"""What every probe pass needs: checked inputs, gradients on, autocast off, a batch size, the
global random generators left as they were."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn

from lightning_viz.functional._capture import model_device

MAX_BATCH = {"cpu": 64, "other": 256}
"""Images per forward for the views that run many variants of each probe (occlusion, SmoothGrad,
integrated gradients): large batches on an accelerator, where small ones are launch-bound; 64 on
a CPU, where larger ones gain nothing and spill the caches (resnet18 at 64x64 on 2 cores: 1.77 ms
per image at 64, 2.15 ms at 392)."""


def default_max_batch(device: torch.device) -> int:
    """:data:`MAX_BATCH` for the device the images are on."""
    return MAX_BATCH["cpu" if device.type == "cpu" else "other"]


@contextmanager
def gradient_pass(model: nn.Module, inputs: Tensor) -> Iterator[Tensor]:
    """Check a probe batch and yield a float copy that requires grad, with autograd on and
    autocast off (a half-precision model is run on the copy cast to its dtype by the caller's
    forward: the callbacks' :func:`~lightning_viz.callbacks.probe_base.in_training_precision`).

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


@contextmanager
def untouched_rng() -> Iterator[None]:
    """Whatever the block draws, torch's (CPU and every initialized CUDA device's), numpy's
    global and Python's generators end as they were: a model whose forward draws noise in eval
    mode, or a view that draws its own, leaves training's random stream alone. The legacy numpy
    global state is what user transforms draw from, so that is what is saved."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    python_state, numpy_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)  # noqa: NPY002
