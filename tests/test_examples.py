"""The demo runs as the README says and prints what a new user needs."""

import subprocess
import sys
from pathlib import Path

from tests.helpers import read_events

ROOT = Path(__file__).resolve().parents[1]


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
