"""LightningCLI entry point: the callbacks are configured in YAML under ``trainer.callbacks``.

python examples/cli.py fit --config examples/digits_config.yaml
"""

import sys
from pathlib import Path

from pytorch_lightning.cli import LightningCLI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.digits import DigitsClassifier, DigitsDataModule


def main(args: list[str] | None = None) -> LightningCLI:
    return LightningCLI(DigitsClassifier, DigitsDataModule, args=args, save_config_callback=None)


if __name__ == "__main__":
    main()
