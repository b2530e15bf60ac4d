"""The demo runs as the README says and prints what a new user needs."""

from pathlib import Path

import numpy as np
import pytest

from lightning_viz import DeconvLogger, FilterMonitor
from lightning_viz.callbacks.deconv_logger import EVOLUTION_CELL
from lightning_viz.functional import filter_noise, to_uint8
from lightning_viz.functional.captions import BAND, text_band
from tests.helpers import DigitsClassifier, assert_caption, fit, image_pixels, read_events

ROOT = Path(__file__).resolve().parents[1]


def first_row_of(pixels: np.ndarray, text: str, x: int, width: int) -> int:
    """The row at which the caption ``text`` is drawn at ``x`` (0 if nowhere in the top 200)."""
    band = to_uint8(text_band([text], width))[0].permute(1, 2, 0).numpy()
    rows = (y for y in range(200) if np.array_equal(pixels[y : y + BAND, x : x + width], band))
    return next(rows, 0)


def demo_captions(trainer) -> dict[str, tuple[np.ndarray, dict]]:
    """Per image tag of the demo run, its latest image's pixels and a caption they must carry
    (assert_caption's arguments), where the callbacks draw it."""
    events = read_events(Path(trainer.logger.log_dir))
    deconv = next(c for c in trainer.callbacks if isinstance(c, DeconvLogger))
    first_filter = filter_noise(trainer.lightning_module.model.features[0].weight)[0]
    captions = {}
    for tag in events.Tags()["images"]:
        pixels = image_pixels(events.Images(tag)[-1])
        kind, _, layer = tag.partition("/")
        if kind == "filters":  # 7x7 enlarged x12, 4 across the card
            caption = dict(text=f"0  C {first_filter:.2f}", x=2, y=2, width=84)
        elif kind == "gradcam":
            caption = dict(text="true temple ↖", x=6, y=6, width=96)
        elif kind in ("deconv", "activation_grid"):  # under the legend: the blocks run down
            y = first_row_of(pixels, "true temple ↖", x=6, width=96)
            assert y > 2 * BAND, f"{tag}: no legend above the first block"
            caption = dict(text="true temple ↖", x=6, y=y, width=96)
        elif kind == "evolution":
            # the last of 16 epoch rows (32-pixel crops enlarged to 64, 2 pixels apart, so that
            # 4 features fit the card), labelled right-aligned left of the features' columns
            pitch = EVOLUTION_CELL + 2
            label_width = pixels.shape[1] - pitch * len(deconv.features[layer])
            caption = dict(
                text="epoch 29",
                x=0,
                y=16 + 15 * pitch,
                width=label_width,
                height=pitch,
                align="right",
            )
        captions[tag] = pixels, caption
    return captions


def test_the_report_lists_notices_apart_from_the_alerts(tmp_path, capsys):
    """A budget's or a frozen layer's notice read "alerts: 1" at the end of train_digits.py,
    where the summary and the README say notices are no alerts."""
    from examples.common import report

    monitor = FilterMonitor()
    with pytest.warns(UserWarning, match="are not trained"):
        trainer = fit(DigitsClassifier(freeze_first_conv=True), [monitor], tmp_path, epochs=1)
    report(trainer, [monitor], str(tmp_path))
    out = capsys.readouterr().out
    assert "alerts: 0\n" in out
    assert (
        "notices (on lightning-viz or the setup, not on training): 1\n"
        "  - epoch 0: frozen (FilterMonitor)\n"
        "  what each means and what to check: lightning-viz summary"
    ) in out


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
    captions = demo_captions(trainer)
    kinds = {tag.split("/")[0] for tag in captions}
    assert kinds == {"filters", "gradcam", "deconv", "evolution", "activation_grid"}
    assert set(captions) == set(events.Tags()["images"])
    for pixels, caption in captions.values():
        assert_caption(pixels, **caption)


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
