"""DDP through Lightning (2 CPU processes, gloo): no hang, exact statistics, images written once."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import read_events

SCRIPT = Path(__file__).with_name("ddp_run.py")


def run(out: Path, devices: int, *extra: str) -> None:
    out.mkdir()
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), str(devices), *extra],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=SCRIPT.parents[1],
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_ddp_matches_a_single_process_over_the_same_batches(tmp_path):
    run(tmp_path / "ddp", 2)
    run(tmp_path / "single", 1)
    ddp, single = read_events(tmp_path / "ddp"), read_events(tmp_path / "single")
    for key in ("zero_fraction", "localization", "dead_fraction"):
        for layer in ("model.1", "model.4"):
            tag = f"activations/{layer}/{key}"
            expected = [(e.step, e.value) for e in single.Scalars(tag)]
            actual = [(e.step, e.value) for e in ddp.Scalars(tag)]
            assert [s for s, _ in actual] == [s for s, _ in expected]
            for (_, a), (_, e) in zip(actual, expected, strict=True):
                assert a == pytest.approx(e, rel=1e-4, abs=1e-6), tag
    # FilterMonitor within the epochs too (every_n_steps=2): the same steps and weights
    drift = "filters/model.0/drift"
    assert [e.step for e in ddp.Scalars(drift)] == [e.step for e in single.Scalars(drift)]
    assert [e.step for e in single.Scalars(drift)] == [0, 2, 4, 6, 8]
    expected = [e.value for e in single.Scalars(drift)]
    assert [e.value for e in ddp.Scalars(drift)] == pytest.approx(expected, rel=1e-5)
    # images and text from global rank 0 only: one entry per logged step, one events file
    assert len(list((tmp_path / "ddp").glob("events.out.tfevents.*"))) == 1
    cam = "gradcam/model.4"
    assert [i.step for i in ddp.Images(cam)] == [i.step for i in single.Images(cam)] == [0, 4, 8]
    assert len(ddp.Images("deconv/model.0")) == 2
    for tag in ("embedding/model.7", "top_patches/model.1", "feature_vis/model.1"):
        assert [i.step for i in ddp.Images(tag)] == [i.step for i in single.Images(tag)], tag
    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["alerts"] == ranks[1]["alerts"]
    # every rank decides whether noisy_filters reads the first layer on the same number: the
    # mean of what each read in its own first batch
    assert 0 < ranks[0]["input_noise"] == ranks[1]["input_noise"] < 0.8


@pytest.mark.slow
def test_a_failure_on_one_rank_does_not_hang_the_others(tmp_path):
    """Rank 1's statistics fail at one step: every rank skips that step's reduction together."""
    run(tmp_path / "ddp", 2, "flaky")
    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["alerts"].count("failed") == 0
    assert ranks[1]["alerts"].count("failed") == 1
    steps = [
        e.step for e in read_events(tmp_path / "ddp").Scalars("activations/model.1/zero_fraction")
    ]
    assert steps == [1, 2, 4, 5, 6, 7, 8]  # the step sampled at global step 2 is skipped


@pytest.mark.slow
def test_the_health_checks_under_ddp_are_those_of_a_single_process(tmp_path):
    """Past the budget, each epoch's last batch is read for the health checks alone: every rank
    reads it, and the dead fractions are reduced over ranks as a whole sample's are."""
    run(tmp_path / "ddp", 2, "health")
    run(tmp_path / "single", 1, "health")
    ddp, single = read_events(tmp_path / "ddp"), read_events(tmp_path / "single")
    for layer in ("model.1", "model.4"):
        tag = f"activations/{layer}/dead_fraction"
        expected = [(e.step, e.value) for e in single.Scalars(tag)]
        assert [s for s, _ in expected] == [4, 8]
        assert [(e.step, e.value) for e in ddp.Scalars(tag)] == expected
        # the first epoch's last batch was a whole sample, the second's a health reading
        assert [e.step for e in ddp.Scalars(f"activations/{layer}/zero_fraction")] == [4]
    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["alerts"] == ranks[1]["alerts"] == ["over_budget"]
