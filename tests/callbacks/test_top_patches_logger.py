"""TopPatchesLogger through a real Trainer: the top-k against a brute-force search, the grid,
the changed score, resume, neutrality."""

import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

import lightning_viz
from lightning_viz import TopPatchesLogger
from lightning_viz.callbacks.top_patches_logger import BLOCK_PADDING, FRAME_GREY
from lightning_viz.functional.top_patches import tie
from lightning_viz.testing import ImageClassifier, digits_loaders
from tests.callbacks.test_neutrality import assert_same_training, train
from tests.helpers import (
    DigitsClassifier,
    assert_caption,
    fit,
    hook_count,
    image_pixels,
    make_trainer,
    read_events,
)

LAYERS = ["model.features.2", "model.features.10"]
"""The defaults on the digits CNN: the first ReLU and the deepest at least 7x7 (8x8)."""


def tables(events, layer):
    """Per logged step, {unit: (values, positions)} from the ``units`` text table."""
    found = {}
    for entry in events.Tensors(f"top_patches/{layer}/units/text_summary"):
        rows = {}
        for line in entry.tensor_proto.string_val[0].decode().splitlines()[4:]:
            unit, values, positions = (cell.strip() for cell in line.strip("|").split("|"))
            rows[int(unit)] = (
                [float(v) for v in values.split(", ")],
                [int(p) for p in positions.split(", ")],
            )
        found[entry.step] = rows
    return found


def maxima(module, layer, images, units):
    """(U, N): each unit's maximum over its map on each image, by a plain forward."""
    maps = []
    handle = dict(module.named_modules())[layer].register_forward_hook(
        lambda m, args, output: maps.append(output.clone())
    )
    module.eval()
    try:
        with torch.no_grad():
            module(images)
    finally:
        handle.remove()
    return maps[0][:, units].flatten(2).amax(dim=2).T


def test_top_k_equals_a_brute_force_search_and_changed_compares_epochs(tmp_path):
    logger = TopPatchesLogger(strict=True)
    # the startup line, before the first validation batch picks the layers
    assert logger.watching() == (
        "top patches of the layers of the activation grids (chosen on the first validation batch)"
    )
    module = DigitsClassifier("sgd", 0.05)
    fit(module, [logger], tmp_path, epochs=3)
    assert logger.watching() == "top patches of " + ", ".join(LAYERS)
    events = read_events(tmp_path)
    _, val = digits_loaders()
    images = val.dataset.tensors[0]
    for layer, units in zip(LAYERS, [list(range(0, 16, 2)), list(range(0, 64, 8))], strict=True):
        logged = tables(events, layer)
        assert sorted(logged) == [23, 46, 69]
        assert sorted(logged[69]) == units  # evenly spaced over the channels
        found = maxima(module, layer, images, units)
        for row, unit in enumerate(units):
            logged_values, logged_positions = logged[69][unit]
            # the brute-force top 9 values; the logged images have them (blank background gives
            # ties, which the running top-k breaks in favour of earlier images)
            expected = found[row].topk(9).values
            assert logged_values == pytest.approx(expected.tolist(), rel=1e-2)
            assert found[row, logged_positions].tolist() == pytest.approx(expected.tolist())
            assert len(set(logged_positions)) == 9
        changed = events.Scalars(f"top_patches/{layer}/changed")
        assert [s.step for s in changed] == [46, 69]
        for scalar, (before, after) in zip(changed, [(23, 46), (46, 69)], strict=True):
            shares = [
                1 - len(set(logged[before][u][1]) & set(logged[after][u][1])) / 9 for u in units
            ]
            assert scalar.value == pytest.approx(sum(shares) / len(shares), abs=1e-6)
        grid = image_pixels(events.Images(f"top_patches/{layer}")[-1])
        assert grid.shape[1] <= 350  # as wide as TensorBoard's card
        # every patch framed in grey: a white one would vanish into the page
        tile = logger._tile
        framed = (grid[..., :3] == FRAME_GREY).all(axis=-1).sum()
        assert framed >= len(units) * 9 * (4 * tile - 4)
    assert hook_count(module) == 0


def test_a_validation_set_smaller_than_k_shows_its_images_and_no_changed_score(tmp_path):
    """Six validation images under k = 9: three blank places in each unit's block, and a
    changed score of 0 at every epoch, which read as settled units."""
    train_loader, val = digits_loaders()
    images, labels = val.dataset.tensors
    six = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images[:6], labels[:6]), 6)
    logger = TopPatchesLogger(layers=LAYERS[:1], units=2, strict=True)
    module = DigitsClassifier()
    make_trainer(tmp_path, [logger], max_epochs=2).fit(module, train_loader, six)
    events = read_events(tmp_path)
    assert "top_patches/model.features.2/changed" not in events.Tags()["scalars"]
    units = tables(events, "model.features.2")[46]
    assert all(sorted(positions) == list(range(6)) for _, positions in units.values())
    grid = image_pixels(events.Images("top_patches/model.features.2")[-1])
    tile = logger._tile
    assert grid.shape[1] == 2 * (3 * (tile + 2) - 2) + 3 * 6  # two 3x3 blocks a row
    framed = (grid[..., :3] == FRAME_GREY).all(axis=-1).sum()  # six patches a block, 3 blank
    assert 2 * 6 * (4 * tile - 4) <= framed < 2 * 9 * (4 * tile - 4)


def test_first_layer_patches_are_the_5x5_fields_of_the_maxima(tmp_path):
    logger = TopPatchesLogger(layers=["model.features.0"], units=[3], k=2, strict=True)
    module = DigitsClassifier("sgd", 0.05)
    fit(module, [logger], tmp_path, epochs=1)
    assert logger._fields["model.features.0"].size == (5, 5)
    top = logger._top["model.features.0"]
    _, val = digits_loaders()
    images = val.dataset.tensors[0]
    for slot in range(2):
        image = images[top.positions[0, slot]]
        row, col = int(top.rows[0, slot]), int(top.cols[0, slot])
        padded = torch.nn.functional.pad(image, (2, 2, 2, 2))  # the conv's zero padding
        assert torch.allclose(top.patches[0, slot], padded[:, row : row + 5, col : col + 5])


def test_a_unit_whose_top_values_all_tie_says_so(tmp_path):
    """A digits unit on flat background showed nine black tiles all 0.98, the first nine
    validation images, read as a defect in a visual review: its block now says they tie. A
    dead unit's, all 0, read "all tie" as if it responded to everything: it says "all 0"."""
    assert tie([0.98] * 9) == "all tie"
    assert tie([0.0] * 9) == "all 0"
    assert tie([2.96, 2.94, 2.9]) is None
    assert tie([float("-inf")] * 2) is None  # fewer images than k
    module = DigitsClassifier(freeze_first_conv=True)
    with torch.no_grad():
        module.model.features[0].weight[3] = 0.0  # channel 3 reads 0 everywhere
        module.model.features[1].bias[3] = 1.0  # then its BatchNorm's shift: a constant
        module.model.features[1].weight[5] = 0.0  # after the BatchNorm and ReLU, channel 5
        module.model.features[1].bias[5] = -100.0  # reads 0 everywhere: dead
    logger = TopPatchesLogger(layers=["model.features.2"], units=[3, 5], k=2, strict=True)
    fit(module, [logger], tmp_path, epochs=1)
    image = read_events(tmp_path).Images("top_patches/model.features.2")[-1]
    pixels = image_pixels(image)
    block = (image.width - 3 * BLOCK_PADDING) // 2
    assert_caption(pixels, "ch 3 (all tie)", x=BLOCK_PADDING, y=BLOCK_PADDING, width=block)
    x = 2 * BLOCK_PADDING + block
    assert_caption(pixels, "ch 5 (all 0)", x=x, y=BLOCK_PADDING, width=block)


def test_resume_continues_the_changed_score(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = TopPatchesLogger(layers=["model.features.6"], strict=True)
    fit(
        DigitsClassifier("sgd", 0.05),
        [first, checkpoint],
        tmp_path / "a",
        enable_checkpointing=True,
    )
    path = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(path, weights_only=True)  # the checkpoint loads without pickle
    resumed = TopPatchesLogger(layers=["model.features.6"], strict=True)
    fit(DigitsClassifier("sgd", 0.05), [resumed], tmp_path / "b", epochs=3, ckpt_path=str(path))
    changed = read_events(tmp_path / "b").Scalars("top_patches/model.features.6/changed")
    assert [s.step for s in changed] == [69]  # compared with the epoch before the resume


def test_top_patches_leave_training_bit_identical(tmp_path):
    without = train(tmp_path / "without", [])
    with_logger = train(tmp_path / "with", [TopPatchesLogger(strict=True)])
    assert_same_training(without, with_logger)


def test_a_model_without_spatial_maps_is_not_shown_and_fit_goes_on(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 10))
    logger = TopPatchesLogger()
    trainer = fit(ImageClassifier(model), [logger], tmp_path, epochs=1)
    assert [a.kind for a in logger.alerts.raised] == ["not_shown"]
    assert "layers=" in logger.alerts.raised[0].message
    assert trainer.current_epoch == 1


class WithSideInput(DigitsClassifier):
    """A model of two inputs: images and a side vector (tabular features), which its steps
    pass; ``self(images)`` alone fails."""

    def forward(self, x, side):
        return self.model(x) + side.sum(dim=1, keepdim=True)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x, torch.zeros(len(x), 4)), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x, torch.zeros(len(x), 4)).argmax(dim=1) == y).float().mean())


def test_a_model_of_two_inputs_is_shown_with_forward_fn(tmp_path):
    """A user's image + tabular model: TopPatchesLogger had no forward_fn, and its notice's
    advice (layers=[...]) still failed: the receptive fields need a forward on images alone."""
    plain = TopPatchesLogger()
    fit(WithSideInput(), [plain], tmp_path / "plain", epochs=1, limit_train_batches=2)
    (notice,) = plain.alerts.raised
    assert notice.kind == "not_shown"
    assert "Pass forward_fn=lambda model, images: ..." in notice.message

    logger = TopPatchesLogger(forward_fn=lambda model, x: model(x, torch.zeros(len(x), 4)))
    fit(WithSideInput(), [logger], tmp_path / "given", epochs=1, limit_train_batches=2)
    assert not logger.alerts.raised
    images = read_events(tmp_path / "given").Tags()["images"]
    assert images == [f"top_patches/{layer}" for layer in LAYERS]
    # default_callbacks passes its forward_fn on to TopPatchesLogger too
    callbacks = lightning_viz.default_callbacks(extra_views=True, forward_fn=logger.forward_fn)
    (top_patches,) = [c for c in callbacks if isinstance(c, TopPatchesLogger)]
    assert top_patches.forward_fn is logger.forward_fn


def test_bad_arguments_fail_at_construction_and_unknown_layers_at_fit_start(tmp_path):
    for bad in (0, [], [-1], "3"):
        with pytest.raises(ValueError, match="units"):
            TopPatchesLogger(units=bad)
    with pytest.raises(ValueError, match="`k`"):
        TopPatchesLogger(k=0)
    with pytest.raises(ValueError, match=r"closest valid names.*model\.features\.1"):
        fit(DigitsClassifier(), [TopPatchesLogger(layers=["model.feature.1"])], tmp_path)


def test_units_past_the_layers_channels_become_an_alert_and_training_goes_on(tmp_path):
    logger = TopPatchesLogger(layers=["model.features.0"], units=[99])
    trainer = fit(DigitsClassifier(), [logger], tmp_path, epochs=1)
    assert [a.kind for a in logger.alerts.raised] == ["failed"]
    assert "16 channels" in logger.alerts.raised[0].message
    assert trainer.current_epoch == 1


def test_a_sharded_strategy_gets_a_notice_instead_of_a_hang(tmp_path):
    """The receptive fields' forward on rank 0 alone would wait forever for the other ranks'
    shards. A CPU strategy with FSDP's name stands in for FSDP (which needs a GPU)."""
    from pytorch_lightning.strategies import SingleDeviceStrategy

    class FSDPStrategy(SingleDeviceStrategy):
        pass

    logger = TopPatchesLogger()
    strategy = FSDPStrategy(device=torch.device("cpu"))
    with pytest.warns(UserWarning, match="TopPatchesLogger: the FSDPStrategy shards the param"):
        fit(DigitsClassifier(), [logger], tmp_path, epochs=1, strategy=strategy)
    assert [a.kind for a in logger.alerts.raised] == ["not_shown"]
    assert not read_events(tmp_path).Tags()["images"]
