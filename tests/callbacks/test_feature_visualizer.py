"""FeatureVisualizer through a real Trainer: grids, objective, units, warm starts, resume."""

import copy

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_viz.callbacks.feature_visualizer as feature_visualizer
from lightning_viz.callbacks.feature_visualizer import FIT_START, FeatureVisualizer
from lightning_viz.functional.captions import BAND, compact, table_label_width
from lightning_viz.functional.images import CARD_WIDTH
from lightning_viz.testing import ImageClassifier, TinyCNN, random_loader, tiny_vit
from tests.callbacks.test_neutrality import assert_same_training, train
from tests.helpers import (
    Classifier,
    DigitsClassifier,
    assert_caption,
    fit,
    hook_count,
    image_pixels,
    make_trainer,
    read_events,
    text_rows,
)

LAYERS = ["model.features.6", "model.features.10"]
"""The defaults: past the first conv, whose units' images are their filters' sign patterns."""
LOGGED_STEPS = [0, 23, 46]
"""Fit start, then the end of each of the two epochs."""
FAST = {"steps": 16, "warm_steps": 8}


def test_grids_objective_and_units_at_fit_start_and_every_epoch(tmp_path):
    visualizer = FeatureVisualizer(strict=True, **FAST)
    module = DigitsClassifier("sgd", 0.05)
    fit(module, [visualizer], tmp_path, epochs=2)
    assert list(visualizer._layers) == LAYERS
    events = read_events(tmp_path)
    for layer in LAYERS:
        units = visualizer.units[layer]
        assert len(units) == 6
        assert len(set(units)) == 6
        assert visualizer.column_epochs[layer] == [FIT_START, 0, 1]
        images = events.Images(f"feature_vis/{layer}")
        assert [i.step for i in images] == LOGGED_STEPS
        # 6 rows of 96-pixel tiles (32-pixel digits enlarged 3x), 3 columns from the start
        sizes = {(i.width, i.height) for i in images}
        assert len(sizes) == 1
        width, height = sizes.pop()
        assert 3 * 98 < width <= CARD_WIDTH
        assert height > 16 + 6 * 98
        # each cell under its objective: colourful noise over 0 is an input the unit ignores
        pixels = image_pixels(images[-1])
        label_width = table_label_width([f"ch {u}" for u in units])
        for column, objectives in enumerate(visualizer.objectives[layer]):
            x = label_width + column * 98
            assert_caption(pixels, compact(objectives[0]), x=x, y=BAND, width=96)
        scalars = events.Scalars(f"feature_vis/{layer}/objective")
        assert [s.step for s in scalars] == LOGGED_STEPS
        expected = torch.tensor(visualizer.objectives[layer]).mean(dim=1)
        assert torch.allclose(torch.tensor([s.value for s in scalars]), expected, rtol=1e-5)
        rows = text_rows(events, f"feature_vis/{layer}/units")
        assert [row[0] for row in rows] == [f"ch {u}" for u in units]
        table = torch.tensor([[float(v) for v in row[1:]] for row in rows])
        assert torch.allclose(table, torch.tensor(visualizer.objectives[layer]).T, rtol=1e-3)
        assert visualizer.columns[layer][-1].dtype == torch.uint8
        assert visualizer.columns[layer][-1].shape == (6, 3, 32, 32)
        assert visualizer.spectra[layer].device.type == "cpu"
    # the deep units get more selective as the net trains (in expectation)
    deep = torch.tensor(visualizer.objectives[LAYERS[1]]).mean(dim=1)
    assert deep[-1] > deep[0]
    assert hook_count(module) == 0
    assert all(p.grad is None for p in module.parameters())
    assert not visualizer.alerts.raised


def test_default_units_are_the_most_active_channels_on_the_probes_at_fit_start(tmp_path):
    visualizer = FeatureVisualizer(layers=["model.features.6"], num_units=3, strict=True, **FAST)
    module = DigitsClassifier("sgd", 0.05)
    untrained = copy.deepcopy(module).eval()
    fit(module, [visualizer], tmp_path, epochs=1, limit_train_batches=2)
    with torch.no_grad():
        activation = untrained.model.features[:7](visualizer.probes.images)
    top = activation.mean(dim=(0, 2, 3)).topk(3).indices.tolist()
    assert visualizer.units["model.features.6"] == top


@pytest.mark.slow
def test_leaves_training_bit_identical(tmp_path):
    without = train(tmp_path / "without", [])
    assert_same_training(without, train(tmp_path / "with", [FeatureVisualizer(strict=True)]))


def test_resume_continues_the_warm_start_and_the_grid(tmp_path, monkeypatch):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = FeatureVisualizer(layers=["model.features.2"], num_units=2, strict=True, **FAST)
    fit(
        DigitsClassifier("sgd", 0.05),
        [first, checkpoint],
        tmp_path / "a",
        epochs=2,
        limit_train_batches=2,
        enable_checkpointing=True,
    )
    path = tmp_path / "ckpt" / "last.ckpt"
    state = torch.load(path, weights_only=True)  # the checkpoint loads without pickle
    saved = next(v for k, v in state["callbacks"].items() if "FeatureVisualizer" in k)
    assert torch.equal(saved["spectra"]["model.features.2"], first.spectra["model.features.2"])

    started_from = []
    original = feature_visualizer.visualize_features

    def recording(*args, **kwargs):
        started_from.append((kwargs["spectrum"], kwargs["steps"], kwargs["adam"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(feature_visualizer, "visualize_features", recording)
    resumed = FeatureVisualizer(layers=["model.features.2"], num_units=2, strict=True, **FAST)
    fit(
        DigitsClassifier("sgd", 0.05),
        [resumed],
        tmp_path / "b",
        epochs=3,
        limit_train_batches=2,
        ckpt_path=str(path),
    )
    # no new fit-start render: one warm render at the end of epoch 2, from the saved spectrum
    assert len(started_from) == 1
    spectrum, steps, adam = started_from[0]
    assert steps == FAST["warm_steps"]
    assert torch.equal(spectrum.cpu(), first.spectra["model.features.2"])
    for key in ("step", "exp_avg", "exp_avg_sq"):  # Adam continues too
        assert torch.equal(adam[key].cpu(), first.adam["model.features.2"][key])
    assert torch.equal(saved["adam"]["model.features.2"]["step"], adam["step"].cpu())
    assert resumed.units == first.units
    assert resumed.column_epochs["model.features.2"] == [FIT_START, 0, 1, 2]
    kept = resumed.columns["model.features.2"][:3]
    assert all(
        torch.equal(a, b) for a, b in zip(kept, first.columns["model.features.2"], strict=True)
    )
    images = read_events(tmp_path / "b").Images("feature_vis/model.features.2")
    assert [i.step for i in images] == [6]


def test_state_dict_round_trip_and_thinning(tmp_path):
    visualizer = FeatureVisualizer(
        layers=["model.features.2"], num_units=2, max_columns=3, strict=True, **FAST
    )
    fit(DigitsClassifier(), [visualizer], tmp_path, epochs=4, limit_train_batches=2)
    assert visualizer.column_epochs["model.features.2"] == [FIT_START, 2, 3]
    assert len(visualizer.columns["model.features.2"]) == 3
    assert len(visualizer.objectives["model.features.2"]) == 3
    copy = FeatureVisualizer(layers=["model.features.2"])
    copy.load_state_dict(visualizer.state_dict())
    assert copy.units == visualizer.units
    assert copy.renders == 5
    assert torch.equal(copy.spectra["model.features.2"], visualizer.spectra["model.features.2"])
    images = read_events(tmp_path).Images("feature_vis/model.features.2")
    assert len({(i.width, i.height) for i in images}) == 1


def test_given_units_are_visualized(tmp_path):
    visualizer = FeatureVisualizer(units={"model.features.10": [3, 40]}, strict=True, **FAST)
    fit(DigitsClassifier(), [visualizer], tmp_path, epochs=1, limit_train_batches=2)
    assert list(visualizer._layers) == ["model.features.10"]
    assert visualizer.units == {"model.features.10": [3, 40]}


def test_given_units_outside_the_layer_fail_at_fit_start(tmp_path):
    visualizer = FeatureVisualizer(units={"model.features.2": [16]}, **FAST)
    with pytest.raises(ValueError, match=r"channels below 16 \(its channel count\), got \[16\]"):
        fit(DigitsClassifier(), [visualizer], tmp_path, epochs=1, limit_train_batches=2)


class Flat(ImageClassifier):
    def __init__(self) -> None:
        super().__init__(nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 10)), lr=0.01)


def test_a_model_without_feature_maps_gets_a_notice_and_training_goes_on(tmp_path):
    visualizer = FeatureVisualizer(on_alert="stop")
    with pytest.warns(UserWarning, match="FeatureVisualizer: Flat has no activation or"):
        trainer = fit(Flat(), [visualizer], tmp_path, epochs=1, limit_train_batches=2)
    assert trainer.current_epoch == 1
    assert [a.kind for a in visualizer.alerts.raised] == ["not_shown"]


def test_a_model_of_one_input_size_is_shown_images_of_that_size(tmp_path):
    """A ViT built for 32 pixels failed every render on the transforms' 56-pixel images."""
    visualizer = FeatureVisualizer(layers=["model.conv_proj"], num_units=2, strict=True, **FAST)
    trainer = make_trainer(tmp_path, [visualizer], max_epochs=1, log_every_n_steps=1)
    trainer.fit(Classifier(tiny_vit()), random_loader(n=8, size=32), random_loader(n=8, size=32))
    assert visualizer._keep_size
    events = read_events(tmp_path)
    assert len(events.Images("feature_vis/model.conv_proj")) == 2  # fit start, epoch end
    assert not visualizer.alerts.raised


def test_a_strip_shaped_input_keeps_its_shape_in_the_grid(tmp_path):
    """A user's 48x160 strips were squeezed into 64x64 thumbnails."""
    images = torch.randn(8, 3, 48, 160, generator=torch.Generator().manual_seed(0))
    data = DataLoader(TensorDataset(images, torch.arange(8) % 2), batch_size=4)
    visualizer = FeatureVisualizer(layers=["model.conv2"], num_units=2, strict=True, **FAST)
    trainer = make_trainer(tmp_path, [visualizer], max_epochs=1, log_every_n_steps=1)
    trainer.fit(Classifier(TinyCNN(num_classes=2)), data, data)
    thumbnails = visualizer.columns["model.conv2"][0]
    assert max(thumbnails.shape[-2:]) == 64
    assert thumbnails.shape[-1] / thumbnails.shape[-2] == pytest.approx(160 / 48, rel=0.05)


def test_columns_of_another_shape_from_a_checkpoint_are_left_out_not_a_failure():
    """An earlier version kept a strip's columns squeezed square: stacked beside a new one,
    every render failed (a review)."""
    visualizer = FeatureVisualizer(layers=["a"], num_units=2)
    visualizer.units = {"a": [0, 1]}
    visualizer.columns = {"a": [torch.zeros(2, 3, 64, 64, dtype=torch.uint8)]}
    visualizer.column_epochs, visualizer.objectives = {"a": [FIT_START]}, {"a": [[0.1, 0.2]]}
    strip = torch.zeros(2, 3, 19, 64, dtype=torch.uint8)
    with pytest.warns(UserWarning, match="no TensorBoardLogger"):
        visualizer._add_column(pl.Trainer(logger=False), "a", strip, torch.tensor([0.3, 0.4]), 0)
    assert [column.shape for column in visualizer.columns["a"]] == [strip.shape]
    assert visualizer.column_epochs["a"] == [0]
    assert visualizer.objectives["a"] == [pytest.approx([0.3, 0.4])]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"num_units": 0}, "`num_units` must be a positive integer, got 0"),
        ({"steps": 0}, "`steps` must be a positive integer, got 0"),
        ({"warm_steps": 1.5}, "`warm_steps` must be a positive integer, got 1.5"),
        ({"max_columns": -1}, "`max_columns` must be a positive integer, got -1"),
        ({"seed": -2}, "`seed` must be a non-negative integer, got -2"),
        ({"units": {"a": []}}, "non-empty lists of channel indices .*got 'a': \\[\\]"),
        ({"units": [1, 2]}, "`units` must be None or a non-empty"),
        (
            {"layers": ["a"], "units": {"b": [1]}},
            r"`units` names layers \['b'\] that are not in `layers` \['a'\]",
        ),
        ({"layers": []}, "`layers` must be None or a non-empty list"),
    ],
)
def test_bad_arguments_fail_at_construction(arguments, message):
    with pytest.raises(ValueError, match=message):
        FeatureVisualizer(**arguments)
