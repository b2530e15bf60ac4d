"""One training run for the DDP test: ``python tests/ddp_run.py OUT DEVICES [flaky | health]``.

With DEVICES=2 Lightning's DDP launcher starts the second process by running this file again.
The batches are the same in both modes: each of 2 ranks takes every other sample of a batch of
16, a single process takes the whole batch. ``health``: ActivationMonitor alone, with a budget
that refuses every sample after the first (each epoch's last batch is read for the health checks).
"""

import json
import os
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_viz import (
    ActivationMonitor,
    DeconvLogger,
    EmbeddingLogger,
    FeatureVisualizer,
    FilterMonitor,
    GradCAMLogger,
    TopPatchesLogger,
)
from lightning_viz.testing import digits_tensors, sequential_cnn
from tests.helpers import Classifier


def fail_on_rank_1_at_step_2(trainer: pl.Trainer) -> None:
    """Make ActivationMonitor's statistics raise on rank 1 only, at one step."""
    import lightning_viz.callbacks.activation_monitor as monitor

    original = monitor.sample_activations

    def flaky(*args, **kwargs):
        if trainer.global_rank == 1 and trainer.global_step == 2:
            raise RuntimeError("out of memory on rank 1")
        return original(*args, **kwargs)

    monitor.sample_activations = flaky


def main(out: Path, devices: int, mode: str | None) -> None:
    pl.seed_everything(0, verbose=False)
    model = sequential_cnn(in_channels=1, kernel=5)  # no BatchNorm: per-rank statistics differ
    images, labels = digits_tensors()
    rank = int(os.environ.get("LOCAL_RANK", 0))  # set by Lightning for the process it starts
    data = TensorDataset(images[:64][rank::devices], labels[:64][rank::devices])
    loader = DataLoader(data, batch_size=16 // devices, shuffle=False)
    flaky = mode == "flaky"
    callbacks = [
        FilterMonitor(every_n_steps=2, strict=True),  # within the epochs too
        # every value: the reduced scalars must equal a single process's exactly
        ActivationMonitor(every_n_steps=1, max_values=None, strict=not flaky),
        GradCAMLogger(strict=True),
        DeconvLogger(strict=True),
        # the views over the validation set: rank 0's share, no collective
        EmbeddingLogger(strict=True),
        TopPatchesLogger(strict=True),
        FeatureVisualizer(steps=8, warm_steps=4, strict=True),
    ]
    if mode == "health":
        callbacks = [ActivationMonitor(every_n_steps=100, max_values=None, budget=1e-9)]
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_epochs=2,
        callbacks=callbacks,
        logger=pl.loggers.TensorBoardLogger(str(out), name="", version=""),
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        deterministic=True,
        use_distributed_sampler=False,
    )
    if flaky:
        fail_on_rank_1_at_step_2(trainer)
    trainer.fit(Classifier(model, lr=0.1), loader, loader)
    summary = {
        "rank": trainer.global_rank,
        "alerts": [a.kind for c in callbacks for a in c.alerts.raised],
        # how noisy the first layer's images are: each rank reads its own first batch
        "input_noise": next((c._input_noise for c in callbacks if isinstance(c, FilterMonitor)), 0),
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(summary))
    if torch.distributed.is_initialized():  # as PyTorch asks: left to exit, gloo aborted once
        torch.distributed.destroy_process_group()  # ("terminate called", exit code -6 in CI)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), mode=sys.argv[3] if sys.argv[3:] else None)
