"""The demo runs as the README says and prints what a new user needs."""

from pathlib import Path

import pytest

from lightning_viz.functional import filter_noise
from tests.helpers import assert_caption, image_pixels, read_events

ROOT = Path(__file__).resolve().parents[1]


def demo_captions(run: Path) -> dict[str, tuple[str, int, int, int]]:
    """Per image tag of the demo run, a caption its latest image must carry: (text, x, y,
    width), where the callbacks draw it."""
    captions = {}
    for tag in read_events(run).Tags()["images"]:
        kind = tag.split("/")[0]
        if kind == "filters":
            captions[tag] = ("0  C <the filter's C>", 2, 2, 98)  # 7x7 enlarged x14
        elif kind in ("gradcam", "deconv", "activation_grid"):
            captions[tag] = ("true temple top-left", 6, 6, 96)
        elif kind == "evolution":
            captions[tag] = ("epoch 29", -98, 0, 98)  # the last column
    return captions


@pytest.mark.slow
def test_demo_shows_filters_turning_from_noise_to_structure_with_every_image_captioned(
    tmp_path, capsys
):
    from examples.demo import main

    trainer = main(["--logdir", str(tmp_path)])  # the defaults the README runs
    out = capsys.readouterr().out
    assert f"see them: tensorboard --logdir {tmp_path.resolve()}" in out
    assert "what to look at in TensorBoard" in out
    before, after = (
        float(x)
        for x in out.split("median Geary's C: ")[1].split(" at the")[0].split(" at step 0 -> ")
    )
    assert before > 0.9  # the init is white noise
    assert after < 0.5  # the trained filters are smooth: edges and colour blobs
    accuracy = float(out.split("validation accuracy: ")[1].split()[0])
    assert accuracy > 0.7
    assert "exploding in model.features.0" in out  # the faulty run next to it is caught

    run = Path(trainer.logger.log_dir)
    events = read_events(run)
    noise = events.Scalars("filters/model.features.0/noise")
    assert noise[0].value == pytest.approx(before, abs=0.005)
    assert noise[-1].value == pytest.approx(after, abs=0.005)
    captions = demo_captions(run)
    kinds = {tag.split("/")[0] for tag in captions}
    assert kinds == {"filters", "gradcam", "deconv", "evolution", "activation_grid"}
    assert set(captions) == set(events.Tags()["images"])
    for tag, (text, x, y, width) in captions.items():
        pixels = image_pixels(events.Images(tag)[-1])
        x = x % pixels.shape[1]
        if tag.startswith("filters/"):
            first = filter_noise(trainer.lightning_module.model.features[0].weight)[0]
            text = f"0  C {first:.2f}"
        assert_caption(pixels, text, x, y, width)


@pytest.mark.slow
def test_resnet18_synthetic_example(tmp_path):
    from examples.train_resnet_synthetic import main

    trainer = main(["--epochs", "1", "--train-size", "192", "--logdir", str(tmp_path)])
    run = Path(trainer.logger.log_dir)
    tags = read_events(run).Tags()
    assert "gradcam/model.layer2" in tags["images"]  # layer4 is 2x2 at 64 pixels
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
