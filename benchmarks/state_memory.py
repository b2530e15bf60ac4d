"""What FilterMonitor keeps in host memory and in checkpoints, against the watched weights.

    python -m benchmarks.state_memory

The reference copy of the weights at train start (whole for small layers, else a fifth of each
filter's kernel slices) and the previous measurement's sample, as saved by ``torch.save`` of the
callback's state, over the float32 size of the conv weights it watches.
"""

from __future__ import annotations

import argparse
import io

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import MODELS, machine, table
from lightning_viz import FilterMonitor
from lightning_viz.testing import ImageClassifier


def measure(name: str) -> list[str]:
    torch.manual_seed(0)
    factory, shape = MODELS[name]
    module = ImageClassifier(factory(), lr=0.01, momentum=0.0)
    data = TensorDataset(torch.randn(4, *shape), torch.randint(0, 10, (4,)))
    monitor = FilterMonitor()
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        callbacks=[monitor],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(data, batch_size=4))
    watched = [
        m.weight for m in module.modules() if isinstance(m, nn.Conv2d) and min(m.kernel_size) >= 2
    ]
    weights = sum(w.numel() * 4 for w in watched)
    saved = io.BytesIO()
    torch.save(monitor.state_dict(), saved)
    state = saved.getbuffer().nbytes
    return [name, f"{weights / 2**20:.2f}", f"{state / 2**20:.2f}", f"{state / weights:.0%}"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args(argv)
    rows = [measure(name) for name in args.models]
    print(f"machine: {machine()}")
    header = ["model", "watched conv weights (MiB)", "FilterMonitor state (MiB)", "share"]
    print(table(rows, header))


if __name__ == "__main__":
    main()
