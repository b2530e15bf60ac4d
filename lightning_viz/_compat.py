"""Both Lightning namespaces: ``pytorch_lightning`` and ``lightning.pytorch`` (the unified package).

Their Trainers check callbacks with ``isinstance`` against their own ``Callback`` class, so our
callbacks derive from every ``Callback`` class that is installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

try:
    import lightning.pytorch as unified
    from lightning.pytorch.loggers import TensorBoardLogger as UnifiedTensorBoardLogger
except ImportError:  # the unified package is optional
    unified = None

CALLBACK_BASES: tuple[type, ...] = (
    (pl.Callback,) if unified is None else (pl.Callback, unified.Callback)
)
TENSORBOARD_LOGGERS: tuple[type, ...] = (
    (TensorBoardLogger,) if unified is None else (TensorBoardLogger, UnifiedTensorBoardLogger)
)


def compiled_parts(module: torch.nn.Module) -> list[str]:
    """Names of the parts of ``module`` that run torch.compile'd code ("" for a LightningModule
    whose forward Lightning compiled): code that skips hooks added after compilation."""
    from torch._dynamo.eval_frame import OptimizedModule

    parts = [name for name, m in module.named_modules() if isinstance(m, OptimizedModule)]
    if getattr(module, "_compiler_ctx", None):
        parts.insert(0, "")
    return parts


@contextmanager
def eager() -> Iterator[None]:
    """Run torch.compile'd code as plain Python in the block, so that module hooks fire."""
    with torch.compiler.set_stance("force_eager"):
        yield
