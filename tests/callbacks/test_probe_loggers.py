import ast
import copy
import math
import re
import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torchvision
from captum.attr import GuidedBackprop
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_viz
from lightning_viz import DeconvLogger, FilterMonitor, GradCAMLogger, Probes, tags
from lightning_viz.callbacks.class_view import prediction_caption
from lightning_viz.callbacks.deconv_logger import EVOLUTION_CELL, to_own_range
from lightning_viz.callbacks.gradcam_logger import default_gradcam_layer
from lightning_viz.callbacks.probe_base import eval_mode
from lightning_viz.functional import grad_cam, guided_backprop, upsample
from lightning_viz.functional.captions import (
    BAND,
    _wrapped,
    table_label_width,
    text_band,
    with_name,
)
from lightning_viz.functional.images import (
    CARD_WIDTH,
    LEGIBLE_WIDTH,
    to_rgb,
    to_uint8,
    wide_readable,
)
from lightning_viz.testing import (
    DigitsCNN,
    ShapesCNN,
    digits_tensors,
    random_loader,
    sequential_cnn,
    shapes_task,
    tiny_vit,
)
from tests.helpers import (
    Classifier,
    DigitsClassifier,
    RegionClassifier,
    TinyUNet,
    assert_caption,
    fit,
    hook_count,
    image_pixels,
    make_trainer,
    pointing_game,
    read_events,
    relative_error,
    segmentation_data,
    text_rows,
    train_flags,
)

EVOLUTION_PITCH = EVOLUTION_CELL + 2
"""Rows and columns of the digits' evolution grid: 8-pixel projections enlarged 8 times, 2
pixels apart."""

CONVS = ["model.features.0", "model.features.4", "model.features.8"]
EPOCH_ENDS = [23, 46, 69]


def deconv_channels(events, layer: str) -> list[list[int]]:
    """Each probe's projected channels, from the latest ``deconv/<layer>/channels`` text."""
    entry = events.Tensors(f"deconv/{layer}/channels/text_summary")[-1]
    text = entry.tensor_proto.string_val[0].decode()
    return [
        ast.literal_eval(line.split(": channels ")[1].removesuffix(" (drawn)"))
        for line in text.split("  \n")
    ]


def test_images_at_every_logged_epoch_and_evolution_gains_columns(tmp_path):
    gradcam, deconv = GradCAMLogger(strict=True), DeconvLogger(strict=True)
    module = DigitsClassifier("sgd", 0.05)
    fit(module, [gradcam, deconv], tmp_path, epochs=3)
    assert gradcam.probes is deconv.probes  # one probe set shared
    assert len(gradcam.probes) == 10  # by default one per class
    assert gradcam.probes.labels.tolist() == list(range(10))
    events = read_events(tmp_path)
    cam = events.Images("gradcam/model.features")
    assert [i.step for i in cam] == [0, *EPOCH_ENDS]
    # 32-pixel probes enlarged x3 to 96; a panel per probe (captions, image | map): 112 x 194,
    # 2 panels per row with 6-pixel gaps, 5 rows, then the colour bar (title and ramp)
    assert (cam[0].width, cam[0].height) == (2 * 200 + 6, 5 * 118 + 6 + 32)
    pixels = image_pixels(cam[-1])
    assert_caption(pixels, "true 0", x=6, y=6, width=96)
    assert_caption(pixels, "true 1", x=6 + 200, y=6, width=96)
    assert_caption(pixels, "true 2", x=6, y=6 + 118, width=96)
    assert [e.step for e in events.Tensors("gradcam/model.features/targets/text_summary")] == [
        0,
        *EPOCH_ENDS,
    ]
    for layer in CONVS:
        deconv_images = events.Images(f"deconv/{layer}")
        assert [i.step for i in deconv_images] == EPOCH_ENDS
        # a block per drawn probe (the first 4 of 10: ten ran 2,300 pixels down the card), as
        # narrow as TensorBoard's card: the probe and its top 3 channels in 2 rows of 2 tiles
        # (captioned, 2 pixels apart), one block per row; above them (the blocks run down the
        # page) the colour bar under its title, wrapped over 4 lines (not cut at the image's edge)
        legend = 4 * 16 + 16
        assert (deconv_images[0].width, deconv_images[0].height) == (
            2 * 98 - 2 + 12,
            legend + 4 * (2 * 112 + 2) + 5 * 6,
        )
        assert deconv_images[0].width <= CARD_WIDTH
        text = events.Tensors(f"deconv/{layer}/channels/text_summary")[-1]
        lines = text.tensor_proto.string_val[0].decode().split("  \n")
        assert [line.endswith(" (drawn)") for line in lines] == [True] * 4 + [False] * 6
        pixels = image_pixels(deconv_images[-1])
        bar_middle = pixels[4 * 16 + 8, deconv_images[0].width // 2]
        assert (abs(bar_middle.astype(int) - 128) <= 2).all()  # the grey ramp's 0
        assert_caption(pixels, "true 0", x=6, y=legend + 6, width=96)
        top = deconv_channels(events, layer)[0]
        assert_caption(pixels, f"ch {top[0]}", x=6 + 98, y=legend + 6, width=96)
        evolution = events.Images(f"evolution/{layer}")
        assert [i.step for i in evolution] == EPOCH_ENDS
        # three epoch rows from the first epoch on (max_epochs=3): the image keeps its size
        assert len({(i.width, i.height) for i in evolution}) == 1
        features = deconv.features[layer]
        assert 1 <= len(features) <= 4
        first, last = image_pixels(evolution[0]), image_pixels(evolution[-1])
        # a column per feature headed with its channel: as wide as the features, whatever the
        # number of epochs (16 epochs across shrank the tiles to a sixth on TensorBoard's card);
        # the 8-pixel projections enlarged 8 times, so that 4 columns fit the card (96-pixel
        # cells made it 450 pixels wide, its legend shrunk with it)
        assert first.shape[1] <= CARD_WIDTH
        label_width = first.shape[1] - len(features) * EVOLUTION_PITCH
        assert 40 < label_width < 70
        assert_caption(
            last,
            f"ch {features[-1]}",
            x=label_width + EVOLUTION_PITCH * (len(features) - 1),
            y=0,
            width=EVOLUTION_PITCH,
        )
        # an epoch per row, labelled on the left; at the first epoch the last row is empty
        third_row = 16 + 2 * EVOLUTION_PITCH
        assert_caption(
            last,
            "epoch 2",
            x=0,
            y=third_row,
            width=label_width,
            height=EVOLUTION_PITCH,
            align="right",
        )
        assert (first[third_row : third_row + EVOLUTION_PITCH] == 255).all()
        assert not (last[third_row : third_row + EVOLUTION_PITCH, label_width:] == 255).all()
    assert hook_count(module) == 0


def test_feature_evolution_columns_are_the_followed_features(tmp_path):
    deconv = DeconvLogger(
        layers=["model.features.4"], features=[("model.features.4", 7)], strict=True
    )
    module = DigitsClassifier("sgd", 0.05)
    fit(module, [deconv], tmp_path, epochs=2)
    assert deconv.features == {"model.features.4": [7]}
    assert deconv.column_epochs["model.features.4"] == [0, 1]
    last = deconv.columns["model.features.4"][-1]
    assert last.dtype == torch.uint8
    assert last.shape == (1, 3, 32, 32)
    probes = deconv.probes
    from lightning_viz.functional import normalize_signed, project_to_input, to_rgb, to_uint8

    with eval_mode(module), torch.no_grad():
        activation = module.model.features[:5](probes.images)
    best = activation[:, 7].sum(dim=(1, 2)).argmax()
    projection = project_to_input(
        module.eval(), probes.images[best : best + 1], "model.features.4", torch.tensor([[7]])
    )
    expected = to_uint8(to_rgb(normalize_signed(projection[:, 0])))
    assert torch.equal(last, expected)


def test_evolution_rows_drawn_one_at_a_time_match_the_table_drawn_whole(tmp_path, monkeypatch):
    """Each epoch draws only its own row into the table it drew before; the images are those
    of drawing every row every epoch."""
    import itertools

    import lightning_viz.callbacks.deconv_logger as deconv_logger

    def evolution_images(run: str) -> list:
        torch.manual_seed(0)
        deconv = DeconvLogger(layers=["model.features.0"], strict=True)
        fit(DigitsClassifier("sgd", 0.05), [deconv], tmp_path / run, epochs=3)
        images = read_events(tmp_path / run).Images("evolution/model.features.0")
        return [image_pixels(image) for image in images]

    rows_drawn = []
    fill = deconv_logger.fill_table_row
    monkeypatch.setattr(
        deconv_logger, "fill_table_row", lambda *a, **k: rows_drawn.append(a[1]) or fill(*a, **k)
    )
    by_row = evolution_images("by_row")
    assert rows_drawn == [1, 2]
    widths = itertools.count()  # never the same label width: every epoch redraws the table
    monkeypatch.setattr(deconv_logger, "table_label_width", lambda labels: next(widths))
    whole = evolution_images("whole")
    assert rows_drawn == [1, 2]
    assert len(by_row) == len(whole) == 3
    for a, b in zip(by_row, whole, strict=True):
        assert (a == b).all()


def assert_row_label(evolution, deconv: DeconvLogger, row: int, text: str) -> None:
    """Row ``row`` of a logged ``evolution/model.features.0`` grid (cells under a 16-pixel
    header, right-aligned labels left of them) is labelled ``text``."""
    label_width = evolution.width - EVOLUTION_PITCH * len(deconv.features["model.features.0"])
    pixels = image_pixels(evolution)
    y = 16 + row * EVOLUTION_PITCH
    assert_caption(pixels, text, x=0, y=y, width=label_width, height=EVOLUTION_PITCH, align="right")


def test_a_fit_stopped_early_trims_the_evolution_to_its_epochs(tmp_path):
    """The evolution grid keeps a row for every epoch up to max_epochs and is trimmed in the
    last: stopped by EarlyStopping after 2 of 10 epochs, 80% of it stayed blank."""
    from tests.callbacks.test_cost import StopAfter

    stopped = DeconvLogger(layers=[CONVS[0]], strict=True)
    fit(DigitsClassifier(), [StopAfter(epoch=1), stopped], tmp_path / "stopped", epochs=10)
    planned = DeconvLogger(layers=[CONVS[0]], strict=True)
    fit(DigitsClassifier(), [planned], tmp_path / "planned", epochs=2)
    tag = f"evolution/{CONVS[0]}"
    last = read_events(tmp_path / "stopped").Images(tag)[-1]
    assert last.step == EPOCH_ENDS[1]
    assert last.height == read_events(tmp_path / "planned").Images(tag)[-1].height


def test_resume_keeps_the_evolution_columns_and_the_probes(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    deconv = DeconvLogger(layers=["model.features.0"], strict=True)
    module = DigitsClassifier("sgd", 0.05)
    fit(module, [deconv, checkpoint], tmp_path / "a", epochs=2, enable_checkpointing=True)
    path = tmp_path / "ckpt" / "last.ckpt"
    state = torch.load(path, weights_only=True)  # the checkpoint loads without pickle
    assert any("DeconvLogger" in key for key in state["callbacks"])

    resumed = DeconvLogger(layers=["model.features.0"], strict=True)
    fit(DigitsClassifier("sgd", 0.05), [resumed], tmp_path / "b", epochs=3, ckpt_path=str(path))
    assert resumed.column_epochs["model.features.0"] == [0, 1, 2]
    assert torch.equal(resumed.probes.images.cpu(), deconv.probes.images.cpu())
    assert torch.equal(
        resumed.columns["model.features.0"][0], deconv.columns["model.features.0"][0]
    )
    evolution = read_events(tmp_path / "b").Images("evolution/model.features.0")
    assert_row_label(evolution[-1], resumed, 2, "epoch 2")


def test_resume_at_a_sparser_cadence_adds_rows_to_the_evolution(tmp_path):
    """Resumed with every_n_epochs=2 the run plans 2 epoch rows but holds 3: all are drawn."""
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    deconv = DeconvLogger(layers=["model.features.0"], strict=True)
    fit(
        DigitsClassifier(),
        [deconv, checkpoint],
        tmp_path / "a",
        epochs=2,
        limit_train_batches=2,
        enable_checkpointing=True,
    )
    resumed = DeconvLogger(layers=["model.features.0"], every_n_epochs=2, strict=True)
    fit(
        DigitsClassifier(),
        [resumed],
        tmp_path / "b",
        epochs=4,
        limit_train_batches=2,
        ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"),
    )
    assert resumed.column_epochs["model.features.0"] == [0, 1, 3]
    (evolution,) = read_events(tmp_path / "b").Images("evolution/model.features.0")
    assert_row_label(evolution, resumed, 2, "epoch 3")


def test_the_last_evolution_has_no_blank_rows_for_epochs_the_budget_skipped(tmp_path):
    deconv = DeconvLogger(layers=["model.features.0"], budget=1e-6, strict=True)
    fit(DigitsClassifier(), [deconv], tmp_path, epochs=4, limit_train_batches=2)
    assert deconv.column_epochs["model.features.0"] == [0, 3]  # the first and the last
    first, last = read_events(tmp_path).Images("evolution/model.features.0")
    assert first.height - last.height == 2 * EVOLUTION_PITCH  # 4 rows planned, 2 drawn
    assert_row_label(last, deconv, 1, "epoch 3")


def test_evolution_columns_are_capped_and_thinned(tmp_path):
    deconv = DeconvLogger(layers=["model.features.0"], max_columns=3, strict=True)
    fit(DigitsClassifier(), [deconv], tmp_path, epochs=5, limit_train_batches=2)
    assert deconv.column_epochs["model.features.0"] == [0, 3, 4]
    assert len(deconv.columns["model.features.0"]) == 3


def test_evolution_of_many_features_of_large_images_fits_the_card(tmp_path):
    """Six followed features (more than ``num_features``) of 96 x 160 images: their cells
    shrink (aspect kept) so that the grid and its legend stay within TensorBoard's card; six
    64-pixel cells made it 441 pixels wide, squeezed to 64 x 64."""
    images = torch.randn(8, 3, 96, 160, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(images, torch.arange(8) % 10), batch_size=4)
    features = [("model.0", channel) for channel in range(6)]
    deconv = DeconvLogger(layers=["model.0"], features=features, strict=True)
    make_trainer(tmp_path, [deconv], max_epochs=1).fit(Classifier(sequential_cnn()), loader)
    assert len(deconv.features["model.0"]) == 6
    assert deconv.columns["model.0"][0].shape[-2:] == (38, 64)  # stored at most 64, aspect kept
    (evolution,) = read_events(tmp_path).Images("evolution/model.0")
    label_width = table_label_width(["epoch 0"])
    assert evolution.width == label_width + 6 * (44 + 2) <= CARD_WIDTH  # cells 44 pixels wide
    pixels = image_pixels(evolution)
    first_cell = pixels[BAND + 1 : BAND + 27, label_width : label_width + 44]  # 26 high
    assert not (first_cell == 255).all(axis=-1).all(axis=0).any()  # no blank column in it


@pytest.mark.slow
def test_grad_cam_localizes_the_shape(tmp_path):
    """The pointing game: the map's peak falls inside the shape that decides the class."""
    images, labels, _ = shapes_task(1200)
    probe_images, probe_labels, boxes = shapes_task(50, seed=1)
    torch.manual_seed(0)
    module = Classifier(ShapesCNN(), lr=0.05)
    gradcam = GradCAMLogger(probes=Probes(probe_images, probe_labels), strict=True)
    trainer = make_trainer(tmp_path, [gradcam], max_epochs=5)
    trainer.fit(module, DataLoader(TensorDataset(images, labels), batch_size=32, shuffle=True))
    assert list(gradcam._layers) == ["model.features"]
    maps = grad_cam(module.eval(), probe_images, "model.features", probe_labels)
    assert pointing_game(upsample(maps["model.features"], (32, 32)), boxes) >= 0.8
    assert len(read_events(tmp_path).Images("gradcam/model.features")) == 6


def test_class_view_panels_of_64_pixel_probes_stay_legible_in_the_card(tmp_path):
    """Two panels of 128-pixel tiles a row made a 534-pixel image, which TensorBoard shrank to
    its 350-pixel card, captions to 8 pixels: one panel a row, shown at its size."""
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 10),
    )  # fmt: skip
    loader = random_loader(n=8, size=64)
    make_trainer(tmp_path, [GradCAMLogger(strict=True)], max_epochs=1).fit(
        Classifier(model), loader, loader
    )
    image = read_events(tmp_path).Images("gradcam/model.1")[-1]
    assert image.width == 6 + 2 * 128 + 2 + 6  # one panel: the probe and its map, 2 apart
    assert image.width <= CARD_WIDTH


def test_default_gradcam_layer_is_the_last_feature_map_of_at_least_7x7():
    resnet = Classifier(torchvision.models.resnet18(num_classes=10)).eval()
    assert default_gradcam_layer(resnet, torch.randn(1, 3, 224, 224)) == "model.layer4"  # 7x7
    # at 64 pixels layer4 is 2x2 and layer3 4x4: layer2's 8x8 map still shows where things are
    assert default_gradcam_layer(resnet, torch.randn(1, 3, 64, 64)) == "model.layer2"
    vgg = Classifier(torchvision.models.vgg11(num_classes=10)).eval()
    assert default_gradcam_layer(vgg, torch.randn(1, 3, 224, 224)) == "model.features"
    assert default_gradcam_layer(vgg, torch.randn(1, 3, 64, 64)) == "model.features.14"  # 8x8
    tiny = Classifier(sequential_cnn()).eval()  # no map of 7x7: the last larger than 1x1
    assert default_gradcam_layer(tiny, torch.randn(1, 3, 6, 6)) == "model.4"
    assert hook_count(resnet) == hook_count(vgg) == 0


def test_guided_backprop_matches_captum(vgg11, images):
    targets = torch.tensor([2, 5, 7])
    expected = GuidedBackprop(vgg11).attribute(images, target=targets)
    assert relative_error(guided_backprop(vgg11, images, targets), expected) < 1e-5


def test_guided_gradcam_image_and_targets(tmp_path):
    gradcam = GradCAMLogger(target="pred", guided=True, strict=True)
    fit(DigitsClassifier(), [gradcam], tmp_path, epochs=1, limit_train_batches=2)
    events = read_events(tmp_path)
    assert len(events.Images("gradcam/model.features/guided")) == 2
    text = events.Tensors("gradcam/model.features/targets/text_summary")[-1]
    lines = text.tensor_proto.string_val[0].decode().splitlines()
    table = lines[lines.index(next(line for line in lines if line.startswith("| probe"))) :]
    # "probability" beside "explains class" read as the explained class's where it differs
    assert table[0].startswith("| probe | explains class | predicted | its probability |")
    explained, predicted = zip(
        *[(row.split("|")[2], row.split("|")[3]) for row in table[2:]], strict=True
    )
    assert explained == predicted  # target="pred" explains the predicted class


def test_a_long_class_name_is_captioned_whole_and_its_probability_left_to_the_text(tmp_path):
    """'pred number 7 93%' is wider than a 96-pixel tile: the map's caption keeps the class."""
    names = [f"number {i}" for i in range(10)]
    logger = GradCAMLogger(class_names=names, target="pred", strict=True)
    fit(DigitsClassifier(), [logger], tmp_path, epochs=1, limit_train_batches=1)
    events = read_events(tmp_path)
    predicted = text_rows(events, "gradcam/model.features/targets")[0][2]
    pixels = image_pixels(events.Images("gradcam/model.features")[-1])
    assert_caption(pixels, "true number 0", x=6, y=6, width=96)
    assert_caption(pixels, f"pred {predicted}", x=6 + 98, y=6, width=96)


def test_the_table_shows_small_probabilities_of_a_thousand_classes(tmp_path):
    """Every row of a 1000-class model's table read 0.00 (a user trial)."""
    module = DigitsClassifier()
    module.model.head = nn.Linear(module.model.head.in_features, 1000)
    with torch.no_grad():  # every class 1/1000
        module.model.head.weight.zero_()
        module.model.head.bias.zero_()
    fit(module, [GradCAMLogger(strict=True)], tmp_path, epochs=1, limit_train_batches=1)
    rows = text_rows(read_events(tmp_path), "gradcam/model.features/targets")
    assert [float(row[3]) for row in rows] == pytest.approx([0.001] * 10, rel=0.05)


def test_probe_captions_of_names_alike_at_their_start_stay_apart():
    """Cut at the end, every probe of a synset-named dataset read 'true n000…'."""
    logger = GradCAMLogger(class_names=["n00000107 great grey shrike", "n00000954 red kite"])
    probes = Probes(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]))
    first, second = (logger.probe_caption(probes, i, 96) for i in range(2))
    assert first != second
    assert first.startswith("n000")
    assert first.endswith("hrike")


def test_captions_of_class_names_alike_but_for_their_end_stay_apart(tmp_path):
    """The demo's diverged run captioned its maps "✗ pred flowe…": any of the flower's four
    quadrants, which the arrow at the end of each class name tells apart."""
    names = [f"the digit {i}" for i in range(10)]
    module = DigitsClassifier()
    with torch.no_grad():  # every probe predicted as 2
        module.model.head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(2), 10) * 50.0)
    logger = GradCAMLogger(class_names=names, strict=True)
    fit(module, [logger], tmp_path, epochs=1, limit_train_batches=1)
    pixels = image_pixels(read_events(tmp_path).Images("gradcam/model.features")[0])
    assert with_name("✗ pred {}", names[2], 96) == "✗ pred the di…"  # cut as any class
    assert_caption(pixels, "✗ pred the…2", x=6 + 98, y=6, width=96)
    assert with_name("{}", names[0], 60) == "the dig…"
    assert logger.probe_caption(logger.probes, 0, 60) == "the…it 0"


def test_a_map_of_a_class_the_model_gets_wrong_names_that_class_before_the_prediction(tmp_path):
    """A map explains the true class; under 'pred 2 100%' alone it read as evidence for 2."""
    module = DigitsClassifier()
    with torch.no_grad():  # every probe predicted as 2
        module.model.head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(2), 10) * 50.0)
    fit(module, [GradCAMLogger(strict=True)], tmp_path, epochs=1, limit_train_batches=1)
    events = read_events(tmp_path)
    pixels = image_pixels(events.Images("gradcam/model.features")[0])
    assert_caption(pixels, "true 0", x=6, y=6, width=96)
    assert_caption(pixels, "for 0, pred 2", x=6 + 98, y=6, width=96)  # 'for 0 <1%, ...' is wider
    assert_caption(pixels, "true 2", x=6, y=6 + 118, width=96)
    assert_caption(pixels, "pred 2 100%", x=6 + 98, y=6 + 118, width=96)


def test_a_wrong_predictions_caption_keeps_both_classes_as_far_as_they_fit():
    assert prediction_caption("0", 0.08, 128, predicted="2", labelled=True) == "for 0 8%, pred 2"
    assert prediction_caption("0", 0.08, 96, predicted="2", labelled=True) == "for 0, pred 2"
    # the probe's caption beside it names its true class: the prediction is what must show
    wrong = prediction_caption("normal", 0.2, 128, predicted="lesion", labelled=True)
    assert wrong == "✗ pred lesion"  # 'for normal' alone hid four probes predicted 'lesion'
    # a fixed class is not the probe's: its map keeps it
    assert prediction_caption("number 0", 0.08, 96, predicted="number 2") == "for number 0"
    assert prediction_caption("2", 0.91, 96) == "pred 2 91%"
    # a multi-label model's classes, each on its own: no one prediction
    assert prediction_caption("even", 0.99, 96, labelled=True, independent=True) == "even 99%"
    assert prediction_caption("even", 0.12, 96, labelled=True, independent=True) == "✗ even 12%"
    assert prediction_caption("even", 0.12, 96, independent=True) == "even 12%"
    shrike = prediction_caption("n00000107 great grey shrike", 0.9, 96)
    kite = prediction_caption("n00000954 red kite", 0.9, 96)
    assert shrike.startswith("pred n0")
    assert "…" in shrike
    assert shrike != kite


def test_a_caption_rounds_no_share_to_none_or_all():
    """A segmenter's Grad-CAM of a class on 0.46% of the probe's pixels read 'square on 0%'."""
    assert prediction_caption("square", 0.0046, 112, segmented=True) == "square on <1%"
    assert prediction_caption("square", 0.0, 96, segmented=True) == "square on 0%"
    assert prediction_caption("2", 0.9996, 96) == "pred 2 >99%"
    assert prediction_caption("2", 1.0, 96) == "pred 2 100%"
    assert prediction_caption("2", 0.006, 96) == "pred 2 1%"


def test_empty_gradcam_maps_are_said_and_left_out_of_the_scores(tmp_path):
    """A head of zeros gives every class score a zero gradient: every Grad-CAM map is empty
    at fit start, which the image's note and the text say, and no score rates them."""
    module = DigitsClassifier()
    with torch.no_grad():
        module.model.head.weight.zero_()
    fit(module, [GradCAMLogger(strict=True)], tmp_path, epochs=1, limit_train_batches=1)
    events = read_events(tmp_path)
    first, second = [
        text.tensor_proto.string_val[0].decode()
        for text in events.Tensors("gradcam/model.features/targets/text_summary")
    ]
    every_map_empty = "The maps of every probe are empty"
    assert every_map_empty in first
    assert math.isnan(events.Scalars("sanity/gradcam/model.features")[0].value)
    # one step later, some maps are not empty, but they have nothing to compare with: no score,
    # where a rank correlation of 0.00 with the empty maps read as maps that changed entirely
    assert every_map_empty not in second
    assert second.startswith(
        "not settled: every map is empty (one value everywhere) now or at the previous render"
    )
    assert math.isnan(events.Scalars("stability/gradcam/model.features")[-1].value)


def test_probe_pass_restores_each_flag_and_leaves_no_grad(tmp_path):
    class Watch(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            self.flags = train_flags(pl_module)
            self.grads = [p.grad for p in pl_module.parameters()]

    module = DigitsClassifier()
    module.model.features[1].eval()  # a frozen BatchNorm stays in eval mode
    watch = Watch()
    fit(
        module,
        [watch, GradCAMLogger(strict=True), DeconvLogger(strict=True)],
        tmp_path,
        epochs=1,
        limit_train_batches=2,
    )
    assert watch.flags["model.features.1"] is False
    assert watch.flags["model.features.5"] is True


@pytest.mark.parametrize(
    ("probes", "message"),
    [
        (
            Probes(torch.randn(2, 3, 32, 32)),
            r"probes have 3 channels but .*'model.features.0' expects 1",
        ),
        (
            Probes(torch.randn(2, 1, 3, 3)),
            r"cannot run on the first probe, of shape \(1, 1, 3, 3\)",
        ),
    ],
)
@pytest.mark.parametrize("callback", [GradCAMLogger, DeconvLogger])
def test_bad_probes_fail_at_fit_start(tmp_path, callback, probes, message):
    with pytest.raises(ValueError, match=message):
        fit(DigitsClassifier(), [callback(probes=probes)], tmp_path, epochs=1)


def test_explicit_probe_labels_and_targets_out_of_range_fail_at_fit_start(tmp_path):
    probes = Probes(torch.randn(2, 1, 32, 32), torch.tensor([0, 10]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\).*0 to 10"):
        fit(DigitsClassifier(), [GradCAMLogger(probes=probes)], tmp_path, epochs=1)
    with pytest.raises(ValueError, match=r"`target`=99 is not a class of a model with 10"):
        fit(DigitsClassifier(), [GradCAMLogger(target=99)], tmp_path, epochs=1)
    # DeconvLogger reads no labels: the same probes are fine for it
    fit(DigitsClassifier(), [DeconvLogger(probes=probes, strict=True)], tmp_path, epochs=1)


class RegressionHead(DigitsClassifier):
    """One output per image, trained on the digit's value: (N, 1), integer targets 0-9."""

    def __init__(self):
        super().__init__("sgd", 0.01)
        self.model.head = nn.Linear(64, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x)[:, 0], y.float())

    def validation_step(self, batch, batch_idx):
        pass


def test_a_regression_head_is_explained_by_its_output(tmp_path):
    gradcam = GradCAMLogger(strict=True)
    fit(RegressionHead(), [gradcam], tmp_path, epochs=1, limit_train_batches=2)
    assert not gradcam.alerts.raised
    assert "gradcam/model.features" in read_events(tmp_path).Tags()["images"]


class Autoencoder(DigitsClassifier):
    """Returns an image: there is no class score to explain."""

    def __init__(self):
        super().__init__("sgd", 0.01)
        self.decoder = nn.Conv2d(64, 1, 1)

    def forward(self, x):
        features = self.model.features(x)
        return torch.nn.functional.interpolate(self.decoder(features), size=x.shape[-2:])

    def training_step(self, batch, batch_idx):
        x, _ = batch
        return torch.nn.functional.mse_loss(self(x), x)

    def validation_step(self, batch, batch_idx):
        pass


def test_an_autoencoder_gets_a_notice_from_gradcam_and_deconv_images(tmp_path):
    gradcam, deconv = GradCAMLogger(on_alert="stop"), DeconvLogger(strict=True)
    with pytest.warns(UserWarning, match=r"GradCAMLogger: the model returns an image the size of"):
        trainer = fit(Autoencoder(), [gradcam, deconv], tmp_path, epochs=2, limit_train_batches=2)
    assert trainer.current_epoch == 2
    assert [a.kind for a in gradcam.alerts.raised] == ["not_shown"]
    images = read_events(tmp_path).Tags()["images"]
    assert not [tag for tag in images if tag.startswith("gradcam/")]
    assert "deconv/model.features.0" in images
    # its output conv is a decoder, not a segmentation head: it is projected too
    assert "deconv/decoder" in images


def test_target_label_needs_labels(tmp_path):
    with pytest.raises(ValueError, match="target='label' needs probes with labels"):
        fit(
            DigitsClassifier(),
            [GradCAMLogger(target="label", probes=Probes(torch.randn(2, 1, 32, 32)))],
            tmp_path,
        )


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: GradCAMLogger(target="best"), "`target` must be 'label', 'pred'"),
        (lambda: GradCAMLogger(cmap="nope"), "unknown matplotlib colormap 'nope'"),
        (lambda: GradCAMLogger(alpha=2), r"`alpha` must be a number in \[0, 1\]"),
        (lambda: GradCAMLogger(probes=torch.zeros(1)), "`probes` must be a lightning_viz.Probes"),
        (lambda: DeconvLogger(rule="gradient"), r"`rule` must be one of \('deconvnet', 'guided'\)"),
        (lambda: DeconvLogger(top_k=0), "`top_k` must be a positive integer"),
        (
            lambda: DeconvLogger(features=[("x", -1)]),
            r"`features` must be \(layer, channel\) pairs",
        ),
    ],
)
def test_bad_arguments_fail_at_construction(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_unknown_layers_fail_at_fit_start(tmp_path):
    with pytest.raises(ValueError, match=r"unknown layer 'model.features.30'.*closest"):
        fit(DigitsClassifier(), [DeconvLogger(features=[("model.features.30", 1)])], tmp_path)
    with pytest.raises(ValueError, match=r"unknown layer 'model.feature'"):
        fit(DigitsClassifier(), [GradCAMLogger(layers=["model.feature"])], tmp_path)


class NormalizesUint8(DigitsClassifier):
    """Takes uint8 images and normalizes them itself, as many data pipelines do."""

    def forward(self, x):
        return self.model(x.float() / 255 * 4 - 2)


class WithHalfTeacher(nn.Module):
    """An fp32 student beside a frozen bf16 teacher, registered first."""

    def __init__(self) -> None:
        super().__init__()
        self.teacher = DigitsCNN().to(torch.bfloat16).requires_grad_(False)
        self.student = DigitsCNN()

    def forward(self, x):
        return self.student(x)


def test_probes_take_the_trainers_precision_not_the_first_parameters_dtype(tmp_path):
    """The probes were cast to the first parameter's dtype: a bf16 teacher registered first made
    every probe view show nothing on an fp32 run."""
    callbacks = [GradCAMLogger(strict=True), DeconvLogger(strict=True)]
    fit(Classifier(WithHalfTeacher()), callbacks, tmp_path, epochs=1, limit_train_batches=2)
    assert not [a for c in callbacks for a in c.alerts.raised]
    images = read_events(tmp_path).Tags()["images"]
    assert "gradcam/model.student.features" in images
    assert "deconv/model.student.features.0" in images


def test_uint8_images_are_probed_as_the_model_takes_them(tmp_path):
    images, labels = digits_tensors()
    pixels = ((images - images.min()) / (images.max() - images.min()) * 255).to(torch.uint8)
    loader = DataLoader(TensorDataset(pixels[:256], labels[:256]), batch_size=64)
    callbacks = lightning_viz.default_callbacks()
    for callback in callbacks:
        callback.strict = True
    trainer = make_trainer(tmp_path, callbacks, max_epochs=1)
    trainer.fit(NormalizesUint8(), loader, loader)
    assert callbacks[2].probes.images.dtype == torch.uint8
    images_logged = read_events(tmp_path).Tags()["images"]
    assert "gradcam/model.features" in images_logged
    assert "deconv/model.features.0" in images_logged
    assert not [a for c in callbacks for a in c.alerts.raised if a.kind != "over_budget"]


class DigitsSegmenter(DigitsClassifier):
    """Per-pixel classes, returned as torchvision's segmentation models do: {"out", "aux"}."""

    def __init__(self):
        super().__init__("sgd", 0.05)
        self.classifier = nn.Conv2d(64, 3, 1)

    def forward(self, x):
        out = self.classifier(self.model.features(x))
        out = torch.nn.functional.interpolate(out, size=x.shape[-2:], mode="bilinear")
        return {"out": out, "aux": out.detach()}

    def training_step(self, batch, batch_idx):
        x, _ = batch
        masks = (x[:, 0] > 0.5).long() + (x[:, 0] > 1.5).long()  # background, stroke, core
        return torch.nn.functional.cross_entropy(self(x)["out"], masks)

    def validation_step(self, batch, batch_idx):
        pass


def test_a_segmenter_gets_grad_cam_of_its_predicted_regions(tmp_path):
    gradcam = GradCAMLogger(strict=True)
    fit(
        DigitsSegmenter(),
        [gradcam, DeconvLogger(strict=True)],
        tmp_path,
        epochs=1,
        limit_train_batches=4,
    )
    assert not gradcam.alerts.raised
    images = read_events(tmp_path).Tags()["images"]
    # the last feature map before the per-pixel classifier, whose maps are the prediction
    assert list(gradcam._layers) == ["model.features"]
    assert "gradcam/model.features" in images
    assert "deconv/model.features.0" in images


def test_a_segmenter_explains_what_each_probe_shows_besides_the_background(tmp_path):
    # the class of most pixels is the background on every probe, and the probability of a
    # class score summed over thousands of pixels is 100% whatever the image: explaining that
    # gave the same background map on every probe and occlusion maps that were all empty
    callbacks = [GradCAMLogger(strict=True), lightning_viz.OcclusionLogger(strict=True)]
    fit(DigitsSegmenter(), callbacks, tmp_path, epochs=1, limit_train_batches=4)
    events = read_events(tmp_path)
    for rows in (
        text_rows(events, "gradcam/model.features/targets"),
        text_rows(events, "occlusion/sensitivity/targets"),
    ):
        assert len(rows) == 10
        explained = {row[1] for row in rows}
        shares = [float(row[3]) for row in rows]
        assert explained <= {"1", "2"}  # a stroke class, not the background (0)
        assert all(0.05 < share < 0.6 for share in shares), shares  # of the probe's pixels
    drops = [float(row[4]) for row in text_rows(events, "occlusion/sensitivity/targets")]
    assert min(drops) > 0  # hiding the stroke lowers its summed score
    gradcam = events.Tensors("gradcam/model.features/targets/text_summary")[-1]
    text = gradcam.tensor_proto.string_val[0].decode()
    assert "| probe | explains class | most pixels | its share of pixels |" in text
    rows = text_rows(events, "gradcam/model.features/targets")
    assert {row[2] for row in rows} == {"0"}  # most of each digit's pixels: the background


class ThresholdSegmenter(pl.LightningModule):
    """Two per-pixel classes of a grey image, fixed: 1 where a pixel is above 2/3, else 0."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([-1.0, 5.0]).view(2, 1, 1, 1))
            self.head.bias.copy_(torch.tensor([1.5, -2.5]))

    def forward(self, x):
        return self.head(x)

    def training_step(self, batch, batch_idx):
        return self(batch[0]).sum() * 0.0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_a_class_a_segmenter_predicts_on_no_pixel_of_a_probe_has_no_map(tmp_path):
    """A segmenter's SmoothGrad, occlusion and LIME drew evidence for classes its captions said
    cover 0% of the probe, where Grad-CAM was empty: the copies they perturb (noise, a patch
    hidden, segments hidden) have the class on a few pixels. Its maps are now empty, and the
    note says why."""
    images = 0.8 + 0.2 * torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    images[2:, :, :, :8] -= 0.7  # class 1 everywhere on the first two, class 0 on half of these
    probes = Probes(images, torch.zeros(4, dtype=torch.long))  # explain class 0
    common = {"probes": probes, "strict": True}
    views = [
        lightning_viz.OcclusionLogger(**common),
        lightning_viz.SaliencyLogger(method="smoothgrad", **common),
        lightning_viz.LIMELogger(segmentation="grid", cells=4, samples=32, **common),
    ]
    loader = DataLoader(TensorDataset(images, torch.zeros(4)), batch_size=4)
    make_trainer(tmp_path, views, max_epochs=1).fit(ThresholdSegmenter(), loader)
    events = read_events(tmp_path)
    note = (
        "The maps of probes 0 (true 0), 1 (true 0) are empty (one value everywhere): the class "
        "explained is predicted on none of their pixels, and the scores leave them out."
    )
    for tag in ("occlusion/sensitivity", "saliency/smoothgrad", "lime/weights"):
        text = events.Tensors(f"{tag}/targets/text_summary")[-1]
        assert note in text.tensor_proto.string_val[0].decode(), tag
    largest = [float(row[4]) for row in text_rows(events, "lime/weights/targets")]
    assert largest[:2] == [0.0, 0.0]
    assert min(largest[2:]) > 0


class CountedOcclusion(lightning_viz.OcclusionLogger):
    """Records the batch sizes of the model's forwards in each render."""

    renders: list[list[int]]

    def visualize(self, trainer, pl_module, probes):
        sizes: list[int] = []
        handle = pl_module.register_forward_pre_hook(lambda _, args: sizes.append(len(args[0])))
        try:
            super().visualize(trainer, pl_module, probes)
        finally:
            handle.remove()
        self.renders = [*getattr(self, "renders", []), sizes]


def test_a_segmenters_class_view_reads_its_probes_once_per_render(tmp_path):
    """The pixel shares and the class scores come from one forward of the probes (they were
    two); the other whole-probe forward is occlusion's reference."""
    occlusion = CountedOcclusion(strict=True)
    fit(DigitsSegmenter(), [occlusion], tmp_path, epochs=1, limit_train_batches=2)
    assert len(occlusion.renders) == 2  # fit start, epoch end
    for sizes in occlusion.renders:
        assert sizes.count(10) == 2
        assert sum(sizes) == 2 * 10 + 10 * 49  # and the 49 occluded copies of each probe


class MaskSegmenter(pl.LightningModule):
    """A small U-Net trained on per-pixel masks (255: ignored)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyUNet(classes=4)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        images, masks = batch
        return nn.functional.cross_entropy(self(images), masks, ignore_index=255)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def test_a_segmenter_on_masks_explains_each_probes_class_and_scores_it_on_the_mask(tmp_path):
    images, masks = segmentation_data(32)
    loader = DataLoader(TensorDataset(images, masks), batch_size=8)
    gradcam = GradCAMLogger(strict=True)
    trainer = make_trainer(tmp_path, [gradcam], max_epochs=2, log_every_n_steps=1)
    trainer.fit(MaskSegmenter(), loader)
    assert gradcam.probes.labels[:3].tolist() == [1, 2, 3]
    assert gradcam.probes.masks is not None
    events = read_events(tmp_path)
    rows = text_rows(events, "gradcam/net.dec/targets")
    assert [row[1] for row in rows] == [str(c) for c in gradcam.probes.labels.tolist()]
    assert "localization/gradcam/net.dec/pointing_game" in events.Tags()["scalars"]


def test_an_untrained_segmenters_curves_are_not_judged(tmp_path, monkeypatch):
    """A segmentation's summed class score is over the pixels each perturbed image predicts as
    the class: an untrained net's deletion curves jumped (from 11 to 0, from 26 to 71), passed
    the drop meant for a probability, and the faithfulness note judged them (here with the
    random order made the map's own, so that a judged map is noted). Its class probability
    over the probe's own pixels of the class barely moves: nothing to judge."""
    from lightning_viz.callbacks import class_view

    monkeypatch.setattr(class_view, "random_maps", lambda maps: maps)
    pl.seed_everything(0, verbose=False)
    untrained = MaskSegmenter()
    untrained.configure_optimizers = lambda: torch.optim.SGD(untrained.parameters(), lr=0.0)
    images, masks = segmentation_data(32)
    gradcam = GradCAMLogger(scores=["faithfulness"], strict=True)
    make_trainer(tmp_path, [gradcam], max_epochs=1, log_every_n_steps=1).fit(
        untrained, DataLoader(TensorDataset(images, masks), batch_size=8)
    )
    events = read_events(tmp_path)
    texts = events.Tensors("gradcam/net.dec/targets/text_summary")
    assert len(texts) == 2
    for text in texts:
        assert "not faithful" not in text.tensor_proto.string_val[0].decode()
    # an empty map ranks the pixels by position alone: it gets no faithfulness score, and the
    # mean leaves it out (its AUCs were in the table and the mean, under a note saying not)
    note = re.search(
        r"The maps of probes? (.+?) are empty", texts[-1].tensor_proto.string_val[0].decode()
    )
    assert note is not None
    empty = {int(i) for i in re.findall(r"(\d+) \(true", note[1])}
    rows = text_rows(events, "gradcam/net.dec/targets")
    assert 0 < len(empty) < len(rows)
    for i, row in enumerate(rows):
        assert (row[4:7] == ["-", "-", "-"]) == (i in empty), row
    rated = [float(row[4]) for i, row in enumerate(rows) if i not in empty]
    logged = events.Scalars("faithfulness/gradcam/net.dec/deletion")[-1].value
    assert logged == pytest.approx(sum(rated) / len(rated), abs=0.006)


@pytest.mark.slow
def test_a_trained_segmenters_maps_are_faithful_over_their_class_pixels(tmp_path):
    """Read as the class's probability of the whole image (a softmax over sums of thousands of
    pixel scores), every faithfulness curve of a segmenter was 0 from start to end (deletion,
    insertion and random AUCs 0.00); over the pixels the probe predicts as the class, Grad-CAM's
    order deletes the evidence faster than a random one."""
    pl.seed_everything(0, verbose=False)
    images, masks = segmentation_data(32)
    colors = torch.eye(3)[masks.clamp(min=1, max=3) - 1] * (masks % 255 > 0)[..., None]
    images = 0.3 * images + colors.permute(0, 3, 1, 2)  # each square painted in its class colour
    gradcam = GradCAMLogger(scores=["faithfulness"], strict=True)
    make_trainer(tmp_path, [gradcam], max_epochs=6, log_every_n_steps=1).fit(
        MaskSegmenter(), DataLoader(TensorDataset(images, masks), batch_size=8)
    )
    rows = text_rows(read_events(tmp_path), "gradcam/net.dec/targets")
    columns = {"share": 3, "deletion": 4, "insertion": 5, "random": 6}
    rated = [row for row in rows if row[4] != "-"]  # an empty map has no faithfulness score
    segmented = [{k: float(row[i]) for k, i in columns.items()} for row in rated]
    segmented = [row for row in segmented if row["share"] >= 0.2]
    assert len(segmented) >= 2
    for row in segmented:
        assert row["deletion"] < row["random"] < row["insertion"]


class WithTeacher(DigitsClassifier):
    """A frozen copy of the network that never runs in forward (a distillation teacher)."""

    def __init__(self):
        super().__init__("sgd", 0.05)
        self.teacher = copy.deepcopy(self.model).requires_grad_(False)


def test_deconv_defaults_skip_layers_that_never_run_in_forward(tmp_path):
    deconv = DeconvLogger(strict=True)
    fit(WithTeacher(), [deconv], tmp_path, epochs=1, limit_train_batches=2)
    assert list(deconv._layers) == ["model.features.0", "model.features.4", "model.features.8"]
    assert not deconv.alerts.raised
    assert "deconv/model.features.8" in read_events(tmp_path).Tags()["images"]


def test_deconv_defaults_leave_out_a_frozen_stem(tmp_path):
    """A user's fine-tune with a frozen stem: its projections and evolution rows never
    changed, a layer of the five spent on it; a net frozen whole keeps its convs."""
    deconv = DeconvLogger(strict=True)
    module = DigitsClassifier(freeze_first_conv=True)
    fit(module, [deconv], tmp_path, epochs=1, limit_train_batches=2)
    assert list(deconv._layers) == ["model.features.4", "model.features.8"]
    frozen = DigitsClassifier().requires_grad_(False)
    frozen.model.head.requires_grad_(True)
    whole = DeconvLogger(strict=True)
    fit(frozen, [whole], tmp_path / "whole", epochs=1, limit_train_batches=2)
    assert list(whole._layers) == CONVS


def test_deconv_defaults_leave_out_a_segmenters_class_head(tmp_path):
    """A user's U-Net: the 1x1 conv that outputs the class maps was projected by default, its
    channels (the classes) captioned "ch 0..3"; a classifier's Linear head is not a conv."""
    images, masks = segmentation_data(16)
    deconv = DeconvLogger(strict=True)
    trainer = make_trainer(tmp_path, [deconv], max_epochs=1, log_every_n_steps=1)
    trainer.fit(MaskSegmenter(), DataLoader(TensorDataset(images, masks), batch_size=8))
    assert list(deconv._layers) == ["net.enc.0", "net.bottleneck.1", "net.dec.0"]
    assert "deconv/net.head" not in read_events(tmp_path).Tags()["images"]
    # named, it is projected
    named = DeconvLogger(layers=["net.head"], strict=True)
    trainer = make_trainer(tmp_path / "named", [named], max_epochs=1, log_every_n_steps=1)
    trainer.fit(MaskSegmenter(), DataLoader(TensorDataset(images, masks), batch_size=8))
    assert "deconv/net.head" in read_events(tmp_path / "named").Tags()["images"]


def test_deconv_defaults_leave_out_the_1x1_maps_of_squeeze_excitation_blocks(tmp_path):
    """A user's MobileNetV3: the defaults projected its squeeze-excitation convs, whose maps
    are 1x1 (flat grey tiles)."""
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    deconv = DeconvLogger(strict=True)
    trainer = make_trainer(tmp_path, [deconv], max_epochs=1)
    with pytest.warns(UserWarning, match="no deconvnet rule"):  # its Hardswish
        trainer.fit(Classifier(model), random_loader(n=4, size=64), random_loader(n=4, size=64))
    assert len(deconv._layers) == 5
    assert not [name for name in deconv._layers if ".fc" in name]  # SE's fc1, fc2


def test_deconv_defaults_leave_out_maps_per_region_proposal(tmp_path):
    """A detector's defaults: a conv of its region head runs on (proposals, C, 7, 7) maps."""
    deconv = DeconvLogger(strict=True)
    trainer = make_trainer(tmp_path, [deconv], max_epochs=1)
    loader = random_loader(n=4, size=32, classes=4)
    trainer.fit(Classifier(RegionClassifier()), loader, loader)
    assert list(deconv._layers) == ["model.backbone.0"]


def test_deconv_draws_each_projection_on_its_own_range_however_small():
    """A detector's RPN box-regression channels project to about 1e-10: under normalize_signed's
    floor of 1e-8 their tiles were flat grey."""
    projections = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(to_own_range(projections * 1e-10), to_own_range(projections))
    assert to_own_range(projections * 1e-10).std() > 0.1
    assert torch.equal(to_own_range(torch.zeros(1, 3, 4, 4)), torch.full((1, 3, 4, 4), 0.5))


class GELUNet(nn.Sequential):
    def __init__(self):
        super().__init__(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 10),
        )


@pytest.mark.parametrize(("layers", "ruleless"), [(None, ["GELU"]), (["model.0"], [])])
def test_deconv_says_once_and_in_its_legend_where_plain_gradients_pass(tmp_path, layers, ruleless):
    """A GELU net's projections are part gradient map: said once per fit by DeconvLogger, by
    name, and in the legend; it was an unnamed warning from inside the library. A GELU after
    the deepest projected layer changes nothing and is not said."""
    deconv = DeconvLogger(layers=layers, strict=True)
    trainer = make_trainer(tmp_path, [deconv], max_epochs=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Classifier(GELUNet()), random_loader(n=8, size=16), random_loader(n=8, size=16))
    said = [str(w.message) for w in caught if "rule" in str(w.message)]
    assert deconv._ruleless == ruleless
    if ruleless:
        assert said == [
            "lightning-viz: DeconvLogger: GELU has no deconvnet rule: the projections pass plain "
            "gradients through it, a mix of deconvnet reconstruction and gradient map (each "
            "image's legend says so)"
        ]
        assert deconv._rule_said == "deconvnet; plain gradients through GELU"
    else:
        assert said == []
        assert deconv._rule_said == "deconvnet"
    assert len(read_events(tmp_path).Images("deconv/model.0")) == 3


def test_guided_gradcam_says_once_and_in_its_legend_where_plain_gradients_pass(tmp_path):
    """GradCAMLogger(guided=True) on a GELU net warned at every epoch, unnamed, from inside the
    library; the guided image did not say it."""
    gradcam = GradCAMLogger(guided=True, strict=True)
    trainer = make_trainer(tmp_path, [gradcam], max_epochs=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Classifier(GELUNet()), random_loader(n=8, size=16), random_loader(n=8, size=16))
    said = [str(w.message) for w in caught if "rule" in str(w.message)]
    assert said == [
        "lightning-viz: GradCAMLogger: GELU has no guided rule: guided Grad-CAM passes plain "
        "gradients through it, a mix of guided backprop and gradient (each guided image's "
        "legend says so)"
    ]
    assert gradcam._plain_gradients == " (plain gradients through GELU)"
    assert len(read_events(tmp_path).Images("gradcam/model.3/guided")) == 4  # fit start, 3 epochs


def test_28_pixel_probes_sit_two_panels_to_a_row_under_captions_of_their_width(tmp_path):
    """Enlarged x4 to 112 pixels, MNIST-sized probes left one probe per row: ten probes made a
    238 x 1458 column. x3 puts two side by side, and the captions are chosen for 84 pixels."""
    images, labels = digits_tensors(size=28)
    loader = DataLoader(TensorDataset(images[:256], labels[:256]), 64)
    gradcam = GradCAMLogger(strict=True)
    make_trainer(tmp_path, [gradcam], max_epochs=1).fit(
        Classifier(sequential_cnn(1)), loader, loader
    )
    (image,) = read_events(tmp_path).Images("gradcam/model.4")[-1:]
    assert image.width == 4 * 84 + 22  # two panels of two 84-pixel tiles, 6 pixels apart
    assert image.height < 700  # five rows of panels, then the colour bar
    assert_caption(image_pixels(image), "true 0", x=6, y=6, width=84)


@pytest.mark.parametrize("size", [28, 13, 40])
def test_every_class_view_draws_probes_of_sizes_enlarged_by_another_factor(tmp_path, size):
    """Probes of 28 pixels go to 84 (two panels a row) where readable() makes 112: saliency and
    LIME drew their maps at 112 over 84-pixel images and failed; so did 13, 17 to 23, 36 to 47
    pixels and more."""
    images, labels = digits_tensors(size=size)
    loader = DataLoader(TensorDataset(images[:64], labels[:64]), 32)
    probes = dict(num_probes=2, strict=True)
    views = [
        GradCAMLogger(guided=True, **probes),
        lightning_viz.OcclusionLogger(**probes),
        lightning_viz.SaliencyLogger(**probes),
        lightning_viz.LIMELogger(samples=16, **probes),
        lightning_viz.CAMLogger(**probes),
    ]
    make_trainer(tmp_path, views, max_epochs=1).fit(Classifier(sequential_cnn(1)), loader)
    drawn = read_events(tmp_path).Tags()["images"]
    assert len(drawn) == 6  # Grad-CAM and its guided image, then one image per other view
    assert not [a for view in views for a in view.alerts.raised if a.kind != "over_budget"]


def test_deconv_with_only_1x1_maps_says_so(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8, 10))
    deconv = DeconvLogger()
    trainer = make_trainer(tmp_path, [deconv], max_epochs=1)
    with pytest.warns(UserWarning, match="nn.Conv2d layers with maps larger than 1x1 ran"):
        trainer.fit(Classifier(model), random_loader(n=4, size=1), random_loader(n=4, size=1))


def test_default_callbacks_on_a_vision_transformer(tmp_path):
    vit = tiny_vit(random_head=False)  # torchvision's zero head, as a fresh model has it
    callbacks = lightning_viz.default_callbacks()
    trainer = make_trainer(tmp_path, callbacks, max_epochs=2, log_every_n_steps=2)
    with pytest.warns(UserWarning, match="ActivationMonitor: none of the 2 watched activation"):
        trainer.fit(Classifier(vit), random_loader(n=16, size=32), random_loader(n=8, size=32))
    gradcam = callbacks[2]
    assert list(gradcam._layers) == ["model.encoder.layers.encoder_layer_1.ln_1"]
    images = read_events(tmp_path).Tags()["images"]
    assert "gradcam/model.encoder.layers.encoder_layer_1.ln_1" in images
    assert "deconv/model.conv_proj" in images
    assert "filters/model.conv_proj" in images
    kinds = sorted(a.kind for c in callbacks for a in c.alerts.raised if a.kind != "over_budget")
    # ActivationMonitor's not_shown, on token outputs; noisy_inputs: the images are random
    assert kinds == ["noisy_inputs", "not_shown"]


def test_explicit_nan_probes_and_non_4d_layers_fail_at_fit_start(tmp_path):
    images = torch.randn(2, 1, 32, 32)
    images[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="probe images contain NaN or Inf"):
        Probes(images)
    with pytest.raises(ValueError, match=r"layer 'model.head' returns shape \(1, 10\); it needs"):
        fit(DigitsClassifier(), [GradCAMLogger(layers=["model.head"])], tmp_path, epochs=1)
    with pytest.raises(ValueError, match=r"DeconvLogger: layer 'model.head' returns shape"):
        fit(DigitsClassifier(), [DeconvLogger(layers=["model.head"])], tmp_path, epochs=1)


def test_a_rich_progress_bar_is_left_alone(tmp_path):
    """Lightning's RichProgressBar (its default when rich is installed) asserts when asked for
    its training bar before training shows it: the probe views render at fit start all the same."""
    pytest.importorskip("rich")
    from pytorch_lightning.callbacks import RichProgressBar

    gradcam = GradCAMLogger(strict=True)
    fit(
        DigitsClassifier(),
        [gradcam, RichProgressBar()],
        tmp_path,
        epochs=1,
        enable_progress_bar=True,
    )
    assert [e.step for e in read_events(tmp_path).Images("gradcam/model.features")] == [0, 23]


def test_image_origin_lower_draws_every_tile_upside_down_under_the_same_captions(tmp_path):
    """A spectrogram stored with its lowest frequency in row 0 was drawn with it at the top: a
    rising chirp read as a falling one, and no argument turned the pictures."""
    images, labels = digits_tensors()
    probes = Probes(images[:4], labels[:4])
    pixels = {}
    for origin in ("upper", "lower"):
        views = [GradCAMLogger(probes=probes, image_origin=origin, strict=True)]
        torch.manual_seed(0)  # the same model twice
        fit(DigitsClassifier(), views, tmp_path / origin, epochs=1, limit_train_batches=1)
        event = read_events(tmp_path / origin).Images("gradcam/model.features")[-1]
        pixels[origin] = image_pixels(event)
    upper, lower = pixels["upper"], pixels["lower"]
    assert upper.shape == lower.shape
    top = 6 + BAND  # the first panel: its probe's 96-pixel tile, then the map's, 2 apart
    for left in (6, 6 + 98):
        tile = (slice(top, top + 96), slice(left, left + 96))
        assert not np.array_equal(upper[tile], upper[tile][::-1])
        assert np.array_equal(lower[tile], upper[tile][::-1])
    assert np.array_equal(lower[:top], upper[:top])  # the captions stay as they were
    with pytest.raises(ValueError, match=r"`image_origin` must be one of \('upper', 'lower'\)"):
        GradCAMLogger(image_origin="bottom")


def test_pictures_of_a_diverged_model_say_so_on_top(tmp_path):
    """A user's diverged model drew Grad-CAM maps as convincing as a healthy one's, and nothing
    on them said that training had failed."""
    images, labels = digits_tensors()
    probes = Probes(images[:4], labels[:4])
    tops, active = {}, {}
    for name, lr in (("healthy", 1e-3), ("diverged", 5.0)):
        monitor = FilterMonitor()
        views = [GradCAMLogger(probes=probes), DeconvLogger(probes=probes, evolution=False)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit(DigitsClassifier("sgd", lr), [monitor, *views], tmp_path / name, epochs=1)
        events = read_events(tmp_path / name)
        tops[name] = {
            tag: image_pixels(events.Images(tag)[-1])
            for tag in ("gradcam/model.features", "deconv/model.features.0")
        }
        active[name] = sorted({kind for _, kind in monitor.alerts.active} & tags.DIVERGED_KINDS)
    assert not active["healthy"]
    assert "exploding" in active["diverged"]
    for tag, diverged in tops["diverged"].items():
        width = diverged.shape[1]
        line = _wrapped(
            f"ALERT {', '.join(active['diverged'])} in training (the alerts in the TEXT tab): a "
            "model that diverged can still draw convincing pictures.",
            width - 4,
        )[0]
        banner = to_uint8(text_band([line], width, align="left"))[0].permute(1, 2, 0).numpy()
        assert np.array_equal(diverged[:BAND], banner), tag
        healthy = tops["healthy"][tag]
        assert healthy.shape[1] == width
        assert not np.array_equal(healthy[:BAND], banner), tag


def _holds(image: np.ndarray, tile: np.ndarray) -> bool:
    """Whether ``image`` holds ``tile`` somewhere within 20 pixels of its left edge."""
    height, width = tile.shape[:2]
    return any(
        np.array_equal(image[y : y + height, x : x + width], tile)
        for y in range(image.shape[0] - height + 1)
        for x in range(min(20, image.shape[1] - width + 1))
    )


def test_wide_probes_are_drawn_as_wide_as_the_card_allows(tmp_path):
    """A 64x404 spectrogram clip, sized by its longer side as a photo is, was drawn 30 pixels
    high in Grad-CAM, 25 in the activation grids."""
    images, labels = digits_tensors()
    wide = torch.nn.functional.interpolate(images[:4], size=(16, 64), mode="bilinear")
    probes = Probes(wide, labels[:4])
    views = [
        GradCAMLogger(probes=probes, strict=True),
        DeconvLogger(probes=probes, evolution=False, strict=True),
        lightning_viz.ActivationGridLogger(probes=probes, strict=True),
    ]
    fit(DigitsClassifier(), views, tmp_path, epochs=1, limit_train_batches=1)
    events = read_events(tmp_path)
    display = to_uint8(probes.display[:1])
    for tag, width in (
        ("gradcam/model.features.6", LEGIBLE_WIDTH - 12),  # 64 x6: 384 pixels wide, 96 high
        ("deconv/model.features.0", CARD_WIDTH - 12),  # x5: 80 high (in two columns, 30)
        ("activation_grid/model.features.2", (CARD_WIDTH - 14) // 2),  # x2, two columns
    ):
        pixels = image_pixels(events.Images(tag)[-1])
        assert pixels.shape[1] <= (LEGIBLE_WIDTH if tag.startswith("gradcam") else CARD_WIDTH)
        tile = to_rgb(wide_readable(display, width))[0].permute(1, 2, 0).numpy()
        assert tile.shape[1] > width - 64
        assert _holds(pixels, tile), tag
    gradcam = image_pixels(events.Images("gradcam/model.features.6")[-1])
    assert_caption(gradcam, "true 0", x=6, y=6, width=384)
    assert gradcam.shape[1] == 6 + 384 + 6  # the map under the image, not beside it


def test_the_evolution_of_wide_probes_shows_the_square_where_each_feature_is_strongest(
    tmp_path,
):
    """16x64 probes: each followed feature's cell is the 16x16 square where its projection is
    strongest, enlarged to a 64-pixel cell; whole, a 64x404 clip's cell was 10 pixels high.
    Columns drawn whole by an earlier version (a checkpoint's) are left out, not stacked."""
    images, labels = digits_tensors()
    wide = torch.nn.functional.interpolate(images[:4], size=(16, 64), mode="bilinear")
    layer = "model.features.0"
    deconv = DeconvLogger(layers=[layer], probes=Probes(wide, labels[:4]), strict=True)
    deconv.load_state_dict(
        {
            "columns": {layer: [torch.zeros(4, 3, 16, 64, dtype=torch.uint8)]},
            "column_epochs": {layer: [0]},
        }
    )
    fit(DigitsClassifier(), [deconv], tmp_path, epochs=1, limit_train_batches=1)
    assert deconv.column_epochs[layer] == [0]
    (column,) = deconv.columns[layer]
    assert column.shape == (4, 3, 16, 16)
    (evolution,) = read_events(tmp_path).Images(f"evolution/{layer}")
    pixels = image_pixels(evolution)
    label_width = table_label_width(["epoch 0"])
    cells = pixels[BAND : BAND + EVOLUTION_CELL, label_width:]
    assert cells.shape[0] == EVOLUTION_CELL
    assert not (cells == 255).all(axis=-1).all(axis=1).any()  # cells 64 high: no blank row
    assert np.array_equal(
        cells[:, :EVOLUTION_CELL],
        to_rgb(column[:1])
        .repeat_interleave(4, dim=-2)
        .repeat_interleave(4, dim=-1)[0]
        .permute(1, 2, 0)
        .numpy(),
    )


class Contrastive(pl.LightningModule):
    """A self-supervised encoder and projection head: its output is a 16-d embedding, trained
    without labels (two noisy views of each image pulled together)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.projection = nn.Linear(8, 16)

    def forward(self, x):
        return self.projection(self.encoder(x))

    def training_step(self, batch, batch_idx):
        (x,) = batch
        one, two = self(x + 0.1 * torch.randn_like(x)), self(x + 0.1 * torch.randn_like(x))
        return -nn.functional.cosine_similarity(one, two).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_class_views_on_a_model_trained_without_labels_say_why_they_show_nothing(tmp_path):
    """A user's SimCLR model: Grad-CAM explained the highest of its 32 projection outputs as a
    predicted class ("pred 23 24%"), and nothing said that it meant nothing."""
    images = digits_tensors()[0][:32]
    loader = DataLoader(TensorDataset(images), batch_size=8)
    for target in (None, "pred"):
        gradcam = GradCAMLogger(target=target)
        trainer = make_trainer(tmp_path / str(target), [gradcam], max_epochs=1)
        trainer.fit(Contrastive(), loader, loader)
        shown = read_events(tmp_path / str(target)).Tags()["images"]
        if target is None:
            assert shown == []
            ((kind, message),) = [(a.kind, a.message) for a in gradcam.alerts.raised]
            assert kind == "not_shown"
            assert "hold no labels" in message
            assert "target='pred'" in message
        else:  # a classifier's validation batches without labels: the user says so
            assert shown == ["gradcam/encoder.1"]


def test_notes_name_probes_by_index_and_by_what_their_tiles_say():
    """The tiles carry no index: a segmenter's probe 2 showed "true 3", and a note under its
    Grad-CAM that named "probes 3, 4, 5" pointed at the wrong tiles."""
    images = torch.zeros(3, 1, 8, 8)
    names = [f"digit {i}" for i in range(10)]
    logger = GradCAMLogger(class_names=names)
    labelled = Probes(images, torch.tensor([2, 3, 4]))
    assert logger.probe_names(labelled, [1, 2]) == "probes 1 (true digit 3), 2 (true digit 4)"
    assert logger.probe_names(labelled, [0]) == "probe 0 (true digit 2)"
    assert logger.probe_names(Probes(images), [0, 2]) == "probes 0, 2"
    assert logger.probe_names(labelled, [0, 1, 2]) == "every probe"
