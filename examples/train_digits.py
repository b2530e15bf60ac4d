"""Train a small CNN on scikit-learn's digits with every lightning-viz callback attached.

    python examples/train_digits.py [--epochs 15] [--logdir lightning_logs]

Runs on the GPU when there is one, in about 20 seconds on 2 CPU cores, then prints where the
logs are, the TensorBoard command, and the alerts that were raised.
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
from lightning_viz.testing import DigitsCNN, ImageClassifier, digits_loaders


def main(argv: list[str] | None = None) -> pl.Trainer:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--logdir", default="lightning_logs")
    args = parser.parse_args(argv)

    pl.seed_everything(0, verbose=False)
    train, val = digits_loaders()
    logger = TensorBoardLogger(args.logdir, name="digits")
    # everything, in one line: the default set, the opt-in probe views and the validation views
    callbacks = lightning_viz.default_callbacks(extra_views=True)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="auto",
        logger=logger,
        callbacks=list(callbacks),  # Lightning appends its own callbacks to the list it gets
        log_every_n_steps=10,
        enable_checkpointing=False,
    )
    trainer.fit(ImageClassifier(DigitsCNN()), train, val)

    report(trainer, callbacks, args.logdir)
    return trainer


if __name__ == "__main__":
    main()
