"""The demo runs as the README says and prints what a new user needs."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import read_events

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_digits_demo(tmp_path):
    result = subprocess.run(
        [sys.executable, "examples/train_digits.py", "--epochs", "5", "--logdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert f"see them: tensorboard --logdir {tmp_path.resolve()}" in out
    assert "alerts: " in out
    accuracy = float(out.split("validation accuracy: ")[1].split()[0])
    assert accuracy > 0.5
    run = next((tmp_path / "digits").iterdir())
    tags = read_events(run).Tags()
    for image in (
        "filters/model.features.0",
        "gradcam/model.features",
        "deconv/model.features.0",
        "evolution/model.features.8",
    ):
        assert image in tags["images"]
    assert "activations/model.features.2/zero_fraction" in tags["scalars"]


@pytest.mark.slow
def test_resnet18_synthetic_example(tmp_path):
    from examples.train_resnet_synthetic import main

    trainer = main(["--epochs", "1", "--train-size", "192", "--logdir", str(tmp_path)])
    run = Path(trainer.logger.log_dir)
    tags = read_events(run).Tags()
    assert "gradcam/model.layer4" in tags["images"]
    assert "activations/model.layer1.0.relu#2/zero_fraction" in tags["scalars"]
    assert len([t for t in tags["images"] if t.startswith("deconv/")]) == 5


def test_lightning_cli_config_configures_the_callbacks(tmp_path):
    from examples.cli import main

    cli = main(
        [
            "fit",
            "--config",
            str(ROOT / "examples" / "digits_config.yaml"),
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "3",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
        ]
    )
    import lightning_viz

    kinds = {type(c): c for c in cli.trainer.callbacks}
    assert kinds[lightning_viz.FilterMonitor].image_layers == "all"
    assert kinds[lightning_viz.ActivationMonitor].every_n_steps == 10
    assert kinds[lightning_viz.GradCAMLogger].guided is True
    assert kinds[lightning_viz.DeconvLogger].rule == "deconvnet"
    tags = read_events(cli.trainer.logger.log_dir).Tags()
    assert "gradcam/model.features/guided" in tags["images"]
    assert "filters/model.features.8" in tags["images"]
