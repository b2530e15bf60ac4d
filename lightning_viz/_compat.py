"""Everything that depends on Lightning's or torch's internals, each with its public fallback.

Both Lightning namespaces: ``pytorch_lightning`` and ``lightning.pytorch`` (the unified package).
Their Trainers check callbacks with ``isinstance`` against their own ``Callback`` class, so our
callbacks derive from every ``Callback`` class that is installed.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytorch_lightning as pl
import torch
from google.protobuf import text_format
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import model_helpers
from tensorboard.compat import tf as tensorboard_tf
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig
from tensorboard.summary.writer import record_writer
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard._embedding import write_pbtxt

try:
    import google_crc32c
except ImportError:  # a declared dependency; without it TensorBoard's own checksums stay
    google_crc32c = None

try:
    import lightning.pytorch as unified
    from lightning.pytorch.loggers import TensorBoardLogger as UnifiedTensorBoardLogger
    from lightning.pytorch.loggers import WandbLogger as UnifiedWandbLogger
    from lightning.pytorch.utilities import model_helpers as unified_model_helpers
except ImportError:  # the unified package is optional
    unified = None

CALLBACK_BASES: tuple[type, ...] = (
    (pl.Callback,) if unified is None else (pl.Callback, unified.Callback)
)
TENSORBOARD_LOGGERS: tuple[type, ...] = (
    (TensorBoardLogger,) if unified is None else (TensorBoardLogger, UnifiedTensorBoardLogger)
)
WANDB_LOGGERS: tuple[type, ...] = (
    (WandbLogger,) if unified is None else (WandbLogger, UnifiedWandbLogger)
)


def is_overridden(method: str, module: Any) -> bool:
    """Whether ``module`` (a LightningModule of either namespace) defines ``method`` itself,
    by its own namespace's ``is_overridden`` (each one fails on the other's modules)."""
    if unified is not None and isinstance(module, unified.LightningModule):
        return unified_model_helpers.is_overridden(method, module)
    return model_helpers.is_overridden(method, module)


def state_key(callback: Any, **fields: Any) -> str:
    """Lightning's key for a callback's state in checkpoints, from its class and ``fields``
    (``Callback._generate_state_key``), so that two instances of one class coexist."""
    return callback._generate_state_key(**fields)


def compiled_parts(module: torch.nn.Module) -> list[str]:
    """Names of the parts of ``module`` that run torch.compile'd code ("" for a LightningModule
    whose forward Lightning compiled): ``torch.compile(net)`` wrappers and nets compiled in
    place (``net.compile()``, whose compiled call is a private attribute). Compiled code skips
    hooks added after compilation, or recompiles to trace them (which changes its numerics)."""
    from torch._dynamo.eval_frame import OptimizedModule

    parts = [
        name
        for name, m in module.named_modules()
        if isinstance(m, OptimizedModule) or getattr(m, "_compiled_call_impl", None) is not None
    ]
    if getattr(module, "_compiler_ctx", None) and "" not in parts:
        parts.insert(0, "")
    return parts


@contextmanager
def eager() -> Iterator[None]:
    """Run torch.compile'd code as plain Python in the block, so that module hooks fire."""
    with torch.compiler.set_stance("force_eager"):
        yield


def fit_dataloaders(trainer: Any) -> Iterator[Any]:
    """The fit's validation dataloader(s), then its training dataloader(s); None where absent.

    The public ``trainer.val_dataloaders`` / ``trainer.train_dataloader`` are set only once their
    loop has set itself up (validation: after the sanity check, if any); before that the loops'
    data sources (a private API) say what they will load.
    """
    yield _public_or_source(trainer.val_dataloaders, trainer.fit_loop.epoch_loop.val_loop)
    yield _public_or_source(trainer.train_dataloader, trainer.fit_loop)


def _public_or_source(public: Any, loop: Any) -> Any:
    if public is not None:
        return public
    source = getattr(loop, "_data_source", None)
    if source is None or source.instance is None or not source.is_defined():
        return None
    return source.dataloader()


def in_backward() -> bool:
    """Whether autograd is running a backward pass now: gradient checkpointing re-runs forward
    modules there, and a forward hook should not count that as another call. (torch has no public
    API for it; without this private one, recomputations count as calls again.)"""
    current = getattr(torch._C, "_current_graph_task_id", None)
    return current is not None and current() != -1


SHARDED_STRATEGIES = frozenset({"FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy"})
"""Lightning strategies that shard parameters across ranks (by class name: they exist in both
namespaces, and DeepSpeed's needs a package that is rarely installed)."""


def sharded_strategy(trainer: Any) -> str | None:
    """The name of the trainer's strategy when it shards parameters across ranks, else None."""
    names = {cls.__name__ for cls in type(trainer.strategy).__mro__}
    return next(iter(names & SHARDED_STRATEGIES), None)


def precision_dtype(trainer: Any) -> torch.dtype | None:
    """The dtype the Trainer's precision casts a batch's floating tensors to before the model
    sees them (``"bf16-true"``, ``"16-true"``, ``"64-true"``), by its plugin's public
    ``convert_input``; None where it leaves them as they are (32-bit, mixed precision)."""
    plugin = getattr(trainer, "precision_plugin", None)
    if plugin is None:
        return None
    dtype = plugin.convert_input(torch.zeros(())).dtype
    return None if dtype == torch.float32 else dtype


@contextmanager
def progress_note(trainer: Any, note: str) -> Iterator[None]:
    """Show ``note`` after the training progress bar's description while the block runs, so a
    bar at 100% does not look stuck (Lightning's TQDM bar; other bars are left alone)."""
    from pytorch_lightning.callbacks import TQDMProgressBar

    callback = getattr(trainer, "progress_bar_callback", None)
    try:
        # Lightning's RichProgressBar (the default when rich is installed) asserts here
        bar = callback.train_progress_bar if isinstance(callback, TQDMProgressBar) else None
        description = bar.desc
    except (AttributeError, TypeError):  # no bar, another kind of bar, or not shown yet
        bar = None
    if bar is None:  # outside the handler: an error in the block is not chained to this one
        yield
        return
    bar.set_description_str(f"{description}[{note}] ", refresh=True)
    try:
        yield
    finally:
        bar.set_description_str(description, refresh=True)


PNG_COMPRESS_LEVEL = 1
"""zlib level of logged PNGs: 3-4x faster to encode than PIL's default (6) on the enlarged,
captioned images lightning-viz logs, for files a few percent larger."""


def add_png(writer: Any, tag: str, pixels: Any, step: int) -> None:
    """``writer.add_image(tag, pixels, step)`` for (3, H, W) uint8 pixels, encoded at
    :data:`PNG_COMPRESS_LEVEL` (SummaryWriter's own encoding uses PIL's slow default level and
    offers no choice). Writes through the writer's private file writer, which torch's and
    tensorboardX's SummaryWriter both have; else the public ``add_image``."""
    file_writer = getattr(writer, "_get_file_writer", None)
    if file_writer is None:
        writer.add_image(tag, pixels, global_step=step)
        return
    channels, height, width = pixels.shape
    encoded = io.BytesIO()
    Image.fromarray(pixels.transpose(1, 2, 0)).save(
        encoded, format="PNG", compress_level=PNG_COMPRESS_LEVEL
    )
    image = Summary.Image(
        height=height, width=width, colorspace=channels, encoded_image_string=encoded.getvalue()
    )
    file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C that TensorFlow's record format puts after each event, computed by
    google-crc32c's C implementation (the same value as TensorBoard's pure-Python one)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def fast_event_checksums() -> None:
    """Make TensorBoard's event writers checksum records in C, for the whole process.

    Without TensorFlow, TensorBoard's record writer (torch's SummaryWriter writes through it)
    computes each record's CRC-32C in pure Python, about 8 MB/s, on its own writer thread at
    normal priority and holding the GIL: the 2.5 MB of images one DeconvLogger epoch logs on
    resnet18 cost 0.3 s of a CPU core there, as much as the epoch's projections, counted by no
    cost meter. The checksums and files stay the same. Where google-crc32c is missing or has no
    C build for the platform (it then runs pure Python too) nothing changes.
    """
    if google_crc32c is not None and google_crc32c.implementation == "c":
        record_writer.masked_crc32c = masked_crc32c


_STOCK_LOG_METRICS = frozenset(logger.log_metrics for logger in TENSORBOARD_LOGGERS)


def scalar_event_writer(logger: Any) -> Any | None:
    """The event-file writer behind a TensorBoardLogger without a prefix (reopened if an earlier
    fit closed it; call on global rank 0 only), to write several scalars as one event; None for
    other loggers, prefixed ones, subclasses with a ``log_metrics`` of their own and
    tensorboardX writers (their ``log_metrics`` logs them)."""
    if type(logger).log_metrics not in _STOCK_LOG_METRICS or logger._prefix:
        return None
    return event_file_writer(logger.experiment)


def event_file_writer(writer: Any) -> Any | None:
    """The event-file writer behind torch's ``SummaryWriter`` (reopened if an earlier fit closed
    it), whose ``add_summary`` writes several values as one event; None for other writers
    (tensorboardX's, whose summaries are protos of its own)."""
    if not isinstance(writer, SummaryWriter):
        return None
    return writer._get_file_writer()


def add_embedding(writer: Any, **arguments: Any) -> None:
    """``writer.add_embedding(**arguments)``, keeping the projector entries already in the log
    directory: a SummaryWriter keeps its entries in a private ``_projector_config`` that starts
    empty and rewrites ``projector_config.pbtxt`` from it, so a resumed run's writer dropped
    every earlier epoch from the Projector (their files still on disk). Of two entries of one
    name (a resume that logs a step again), the later is kept. Read and written through
    TensorBoard's gfile, as the writer does (remote log directories included)."""
    logdir = os.fspath(writer.get_logdir())
    config_file = f"{logdir.rstrip('/')}/projector_config.pbtxt"
    if not hasattr(writer, "_projector_config") and tensorboard_tf.io.gfile.exists(config_file):
        with tensorboard_tf.io.gfile.GFile(config_file, "r") as file:
            writer._projector_config = text_format.Merge(file.read(), ProjectorConfig())
    writer.add_embedding(**arguments)
    config = getattr(writer, "_projector_config", None)
    latest = {} if config is None else {e.tensor_name: e for e in config.embeddings}
    if config is not None and len(latest) < len(config.embeddings):
        kept = list(latest.values())
        del config.embeddings[:]
        config.embeddings.extend(kept)
        write_pbtxt(logdir, text_format.MessageToString(config))
