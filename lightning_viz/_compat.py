"""Both Lightning namespaces: ``pytorch_lightning`` and ``lightning.pytorch`` (the unified package).

Their Trainers check callbacks with ``isinstance`` against their own ``Callback`` class, so our
callbacks derive from every ``Callback`` class that is installed.
"""

from __future__ import annotations

import pytorch_lightning as pl
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
