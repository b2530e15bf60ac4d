"""The lightning-viz demo: first-layer filters turning from noise into edges and colour blobs.

    python examples/demo.py [--epochs 30] [--logdir lightning_logs]

Trains a small CNN with a 7x7 first layer on 32x32 crops of scikit-learn's two bundled photos
(which quarter of which photo is this crop from?) with lightning-viz's default callbacks attached,
then, next to it, the same net with a learning rate 30 times too high, which the alerts catch.
About a minute on 2 CPU cores (on the GPU when there is one). Ends by printing the numbers and
what to look at in TensorBoard.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning_viz
from examples.common import report
from lightning_viz.functional import filter_noise
from lightning_viz.testing import ImageClassifier, PhotoCNN, PhotosDataModule

FIRST_LAYER = "model.features.0"


def train(name: str, lr: float, epochs: int, logdir: str) -> tuple[pl.Trainer, list, float]:
    """One run; returns the trainer, its callbacks and the first layer's median Geary's C
    before training."""
    pl.seed_everything(0, verbose=False)
    module = ImageClassifier(PhotoCNN(), lr=lr, weight_decay=5e-3, one_cycle=True)
    noise_before = filter_noise(module.model.features[0].weight).median().item()
    # everything, in one line; budget=None renders every view at every epoch: this net's epochs
    # take about a second, so a 2% budget (the default) would show them only now and then
    callbacks = lightning_viz.default_callbacks(budget=None)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="auto",
        logger=TensorBoardLogger(logdir, name=name),
        callbacks=list(callbacks),  # Lightning appends its own callbacks to the list it gets
        log_every_n_steps=10,
        enable_checkpointing=False,
    )
    trainer.fit(module, datamodule=PhotosDataModule())
    return trainer, callbacks, noise_before


def main(argv: list[str] | None = None) -> pl.Trainer:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--logdir", default="lightning_logs")
    args = parser.parse_args(argv)

    trainer, callbacks, before = train("photos", 0.1, args.epochs, args.logdir)
    after = filter_noise(trainer.lightning_module.model.features[0].weight).median().item()
    faulty, faulty_callbacks, _ = train("photos-lr-too-high", 3.0, 3, args.logdir)

    print(
        f"\nfirst-layer filters, median Geary's C: {before:.2f} at step 0 -> {after:.2f} at the "
        "end\n  (1 = white noise, the init; towards 0 = smooth: edges and colour blobs)"
    )
    report(trainer, callbacks, args.logdir)
    print("\nthe same net with a learning rate 30 times too high:")
    report(faulty, faulty_callbacks, args.logdir)
    print(
        "\nwhat to look at in TensorBoard:\n"
        f"  IMAGES  filters/{FIRST_LAYER}: drag the step slider, noise becomes edges and blobs\n"
        "          gradcam/*: where each crop's evidence sits; deconv/* and evolution/*: what\n"
        "          the top channels respond to, and how that changed epoch by epoch;\n"
        "          activation_grid/*: each crop's most active feature maps (sparse is good)\n"
        "  CUSTOM SCALARS  each layer's filter noise, drift and activation sparsity, the alerts\n"
        "  TEXT  alerts: the table of the faulty run's alerts and what to check"
    )
    return trainer


if __name__ == "__main__":
    main()
