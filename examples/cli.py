"""LightningCLI entry point: the callbacks are configured in YAML under ``trainer.callbacks``.

    python examples/cli.py fit --config examples/digits_config.yaml

Works with the demo install (``pip install -e ".[demo]"``); about 15 seconds on 2 CPU cores.
Ends by printing where the logs are and the alerts, as the other examples do.
"""

import sys
from pathlib import Path

from pytorch_lightning.cli import LightningCLI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.common import report
from lightning_viz.callbacks.base import VizCallback
from lightning_viz.testing import DigitsCNN, DigitsDataModule, ImageClassifier


class DigitsClassifier(ImageClassifier):
    """ImageClassifier around DigitsCNN, configurable by plain numbers (for LightningCLI)."""

    def __init__(self, width: int = 16, lr: float = 0.05) -> None:
        super().__init__(DigitsCNN(width), lr)


def main(args: list[str] | None = None) -> LightningCLI:
    return LightningCLI(DigitsClassifier, DigitsDataModule, args=args, save_config_callback=None)


if __name__ == "__main__":
    trainer = main().trainer
    callbacks = [c for c in trainer.callbacks if isinstance(c, VizCallback)]
    report(trainer, callbacks, trainer.logger.save_dir)
