"""CAMLogger through a real Trainer: images, captions, the table's numbers, localization, notices
and neutrality."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_viz import Probes
from lightning_viz.callbacks.cam_logger import CAMLogger
from lightning_viz.functional import upsample
from lightning_viz.functional.cam import class_activation_map
from lightning_viz.testing import ShapesCNN, shapes_task
from tests.callbacks.test_neutrality import assert_same_training, train
from tests.callbacks.test_probe_loggers import EPOCH_ENDS
from tests.helpers import (
    Classifier,
    DigitsClassifier,
    assert_caption,
    fit,
    hook_count,
    image_pixels,
    make_trainer,
    pointing_game,
    read_events,
    text_rows,
)


def test_cam_images_at_every_logged_epoch_with_captions_and_the_final_model_in_the_table(tmp_path):
    logger = CAMLogger(strict=True)
    module = DigitsClassifier("sgd", 0.05)
    fit(module, [logger], tmp_path, epochs=3)
    assert list(logger._layers) == ["model.features"]  # found: GAP + Linear on DigitsCNN
    assert logger._classifier == "model.head"
    events = read_events(tmp_path)
    images = events.Images("cam/model.features")
    assert [i.step for i in images] == [0, *EPOCH_ENDS]
    # the same panel layout as Grad-CAM: 10 probes, 2 panels per row, then the colour bar
    assert (images[-1].width, images[-1].height) == (2 * 200 + 6, 5 * 118 + 6 + 32)
    maps, logits = class_activation_map(module.eval(), logger.probes.images, logger.probes.labels)
    probability, predicted = logits.softmax(dim=1).max(dim=1)
    pixels = image_pixels(images[-1])
    assert_caption(pixels, "true 0", x=6, y=6, width=96)
    assert_caption(pixels, f"pred {predicted[0]} {probability[0]:.0%}", x=6 + 98, y=6, width=96)
    assert_caption(pixels, "true 3", x=6 + 200, y=6 + 118, width=96)
    steps = [e.step for e in events.Tensors("cam/model.features/targets/text_summary")]
    assert steps == [0, *EPOCH_ENDS]
    rows = text_rows(events, "cam/model.features/targets")
    assert [row[1] for row in rows] == [str(c) for c in range(10)]  # explains the true class
    assert [int(row[2]) for row in rows] == predicted.tolist()
    assert torch.allclose(torch.tensor([float(row[3]) for row in rows]), probability, atol=5e-3)
    peaks = torch.tensor([float(row[4]) for row in rows])
    assert torch.allclose(peaks, maps.flatten(1).amax(dim=1), rtol=1e-2)
    assert hook_count(module) == 0


def test_a_given_layer_before_the_relu_is_read_rectified(tmp_path):
    """The BatchNorm before DigitsCNN's last (in-place) ReLU: the head averages its ReLU."""
    logger = CAMLogger(layer="model.features.9", target="pred", strict=True)
    module = DigitsClassifier()
    fit(module, [logger], tmp_path, epochs=1, limit_train_batches=2)
    assert logger._classifier is None  # checked by the forward of each pass
    rows = text_rows(read_events(tmp_path), "cam/model.features.9/targets")
    probes = logger.probes.images
    rectified, _ = class_activation_map(module.eval(), probes, layer="model.features.9")
    found, _ = class_activation_map(module, probes)
    assert torch.allclose(rectified, found, atol=1e-6)
    peaks = torch.tensor([float(row[4]) for row in rows])
    assert torch.allclose(peaks, found.flatten(1).amax(dim=1), rtol=1e-2)


def test_cam_points_at_the_shape_that_decides_the_class(tmp_path):
    """The pointing game on the CAM of a net that learned the shapes task."""
    images, labels, _ = shapes_task(1200)
    probe_images, probe_labels, boxes = shapes_task(50, seed=1)
    torch.manual_seed(0)
    module = Classifier(ShapesCNN(), lr=0.05)
    logger = CAMLogger(probes=Probes(probe_images, probe_labels), strict=True)
    trainer = make_trainer(tmp_path, [logger], max_epochs=5)
    trainer.fit(module, DataLoader(TensorDataset(images, labels), batch_size=32, shuffle=True))
    assert list(logger._layers) == ["model.features"]
    maps, _ = class_activation_map(module.eval(), probe_images, probe_labels)
    assert pointing_game(upsample(maps, (32, 32)), boxes) >= 0.8
    assert len(read_events(tmp_path).Images("cam/model.features")) == 6


def mlp_head_cnn() -> nn.Module:
    """A small CNN whose head flattens its feature map into an MLP: no global average."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(4),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def test_a_model_without_a_gap_head_gets_a_notice_and_training_goes_on(tmp_path):
    logger = CAMLogger(on_alert="stop")
    with pytest.warns(
        UserWarning,
        match=r"CAMLogger: ImageClassifier does not end in global average pooling and one linear "
        r"layer: after its last feature map 'model.2' \(8, 8, 8\) it runs Flatten -> Linear -> "
        r"ReLU -> Linear.*GradCAMLogger",
    ):
        trainer = fit(Classifier(mlp_head_cnn()), [logger], tmp_path, limit_train_batches=2)
    assert trainer.current_epoch == 2
    assert [a.kind for a in logger.alerts.raised] == ["not_shown"]
    assert logger.alerts.raised[0].message.endswith("GradCAMLogger), which works with any head.")
    assert not [tag for tag in read_events(tmp_path).Tags()["images"] if tag.startswith("cam/")]


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (
            "model.features.4",
            r"CAMLogger: the global average of layer 'model.features.4' \(32, 16, 16\) does not "
            "give the model's 10 scores",
        ),
        ("model.feature", r"CAMLogger: unknown layer 'model.feature'"),
        ("model.head", r"CAMLogger: layer 'model.head' returns shape \(1, 10\)"),
    ],
)
def test_a_given_layer_that_no_gap_head_reads_fails_at_fit_start(tmp_path, layer, message):
    with pytest.raises(ValueError, match=message):
        fit(DigitsClassifier(), [CAMLogger(layer=layer)], tmp_path, epochs=1)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: CAMLogger(layer=3), "`layer` must be None or a layer name"),
        (lambda: CAMLogger(layer=["model.features"]), "`layer` must be None or a layer name"),
        (lambda: CAMLogger(target="best"), "`target` must be 'label', 'pred'"),
        (lambda: CAMLogger(alpha=2), r"`alpha` must be a number in \[0, 1\]"),
        (lambda: CAMLogger(cmap="nope"), "unknown matplotlib colormap 'nope'"),
        (lambda: CAMLogger(every_n_epochs=0), "`every_n_epochs` must be a positive integer"),
    ],
)
def test_bad_arguments_fail_at_construction(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_cam_logger_leaves_training_bit_identical(tmp_path):
    without = train(tmp_path / "without", [])
    logger = CAMLogger(strict=True)
    assert_same_training(without, train(tmp_path / "with", [logger]))
    assert "cam/model.features" in read_events(tmp_path / "with").Tags()["images"]
