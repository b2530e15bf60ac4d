"""SaliencyLogger through a real Trainer: images, captions, the logged maps' pixels, localization,
neutrality."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_viz import Probes, SaliencyLogger
from lightning_viz.functional import (
    colorize,
    integrated_gradients,
    normalize_signed,
    overlay,
    smooth_grad,
    to_uint8,
)
from lightning_viz.functional.images import readable
from lightning_viz.testing import ShapesCNN, shapes_task
from tests.callbacks.test_neutrality import assert_same_training, train
from tests.callbacks.test_probe_loggers import EPOCH_ENDS
from tests.helpers import (
    Classifier,
    DigitsClassifier,
    assert_caption,
    fit,
    image_pixels,
    make_trainer,
    pointing_game,
    read_events,
    text_rows,
)

METHODS = ["vanilla", "smoothgrad", "integrated_gradients", "expected_gradients"]


def test_every_method_logs_captioned_maps_at_every_logged_epoch(tmp_path):
    loggers = [SaliencyLogger(method=method, samples=4, steps=4, strict=True) for method in METHODS]
    module = DigitsClassifier("sgd", 0.05)
    fit(module, loggers, tmp_path, epochs=3)
    events = read_events(tmp_path)
    for method in METHODS:
        images = events.Images(f"saliency/{method}")
        assert [i.step for i in images] == [0, *EPOCH_ENDS]
        # the panel layout of Grad-CAM: 10 probes, 2 panels per row, then the colour bar
        assert (images[-1].width, images[-1].height) == (2 * 200 + 6, 5 * 118 + 6 + 32)
        pixels = image_pixels(images[-1])
        assert_caption(pixels, "true 0", x=6, y=6, width=96)
        rows = text_rows(events, f"saliency/{method}/targets")
        assert [row[1] for row in rows] == [str(c) for c in range(10)]
    # the logged map is the functional one of the final model, coloured: PNG is lossless
    module.eval()
    probes = loggers[2].probes
    attributions = integrated_gradients(module, probes.images, probes.labels, steps=4)
    heat = normalize_signed(readable(attributions.sum(dim=1, keepdim=True))[:, 0])
    display = readable(probes.display)
    expected = to_uint8(overlay(display, colorize(heat, "RdBu_r"), 0.85))[0].permute(1, 2, 0)
    logged = image_pixels(events.Images("saliency/integrated_gradients")[-1])
    tile = logged[22 : 22 + 96, 104 : 104 + 96].astype(int)
    assert np.abs(tile - expected.numpy().astype(int)).max() <= 1


def test_trained_maps_point_at_the_shape_that_decides_the_class(tmp_path):
    """The pointing game: the strongest pixel of SmoothGrad and of integrated gradients lies in
    the pasted shape's box, for nearly every probe of a net that learned the shapes task."""
    images, labels, _ = shapes_task(1200)
    probe_images, probe_labels, boxes = shapes_task(50, seed=1)
    torch.manual_seed(0)
    module = Classifier(ShapesCNN(), lr=0.05)
    probes = Probes(probe_images, probe_labels)
    loggers = [
        SaliencyLogger(method="smoothgrad", probes=probes, strict=True),
        SaliencyLogger(method="integrated_gradients", probes=probes, strict=True),
    ]
    trainer = make_trainer(tmp_path, loggers, max_epochs=5)
    trainer.fit(module, DataLoader(TensorDataset(images, labels), batch_size=32, shuffle=True))
    module.eval()
    maps = {
        "smoothgrad": smooth_grad(module, probe_images, probe_labels).amax(dim=1),
        "integrated_gradients": integrated_gradients(module, probe_images, probe_labels).sum(1),
    }
    for method, attribution in maps.items():
        assert pointing_game(attribution, boxes) >= 0.9, method
        assert len(read_events(tmp_path).Images(f"saliency/{method}")) == 6


@pytest.mark.parametrize("method", ["smoothgrad", "expected_gradients"])
def test_random_draws_leave_training_bit_identical(tmp_path, method):
    without = train(tmp_path / "without", [])
    logger = SaliencyLogger(method=method, samples=4, strict=True)
    assert_same_training(without, train(tmp_path / "with", [logger]))


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: SaliencyLogger(method="lrp"), "`method` must be one of"),
        (lambda: SaliencyLogger(samples=0), "`samples` must be a positive integer"),
        (lambda: SaliencyLogger(steps=-1), "`steps` must be a positive integer"),
        (lambda: SaliencyLogger(stdev=-0.1), "`stdev` must be a non-negative number"),
        (lambda: SaliencyLogger(baseline=float("inf")), "`baseline` must be a finite number"),
        (lambda: SaliencyLogger(max_batch=0), "`max_batch` must be a positive integer"),
        (lambda: SaliencyLogger(cmap="nope"), "unknown matplotlib colormap 'nope'"),
    ],
)
def test_bad_arguments_fail_at_construction(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()
