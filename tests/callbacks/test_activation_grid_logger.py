"""ActivationGridLogger through a real Trainer: images, captions, the table, its defaults."""

import re

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_viz.callbacks.activation_grid_logger import (
    ActivationGridLogger,
    default_grid_layers,
)
from lightning_viz.callbacks.probe_base import eval_mode
from lightning_viz.functional.activation_grid import top_feature_maps
from lightning_viz.functional.captions import fits
from lightning_viz.functional.images import CARD_WIDTH, colormap_table, to_uint8
from lightning_viz.testing import ImageClassifier, TinyFunctionalCNN
from tests.callbacks.test_neutrality import assert_same_training, train
from tests.helpers import (
    Classifier,
    DigitsClassifier,
    RegionClassifier,
    assert_caption,
    fit,
    hook_count,
    image_pixels,
    make_trainer,
    read_events,
    text_rows,
)

EPOCH_ENDS = [23, 46, 69]
DEFAULT_LAYERS = ["model.features.2", "model.features.10"]
TILE, BAND, GAP = 96, 16, 6
"""A tile's side, its caption band and the gap between probes' blocks."""
BLOCK = 3 * (BAND + TILE) + 2 * 2
"""A probe's block: its 9 tiles (the probe, 8 channels) in 3 rows of 3, 2 pixels apart."""
GRID_HEIGHT = 4 * BLOCK + 5 * GAP
"""The first four probes' blocks, one under the other (ten ran 3,500 pixels down the card)."""
LEGEND = 7 * BAND
"""Above the blocks: the colour bar's title and ramp, a note of four lines (how the maps are
scaled, in eval mode), and one saying which probes are drawn."""
WIDTH = 3 * (TILE + 2) - 2 + 2 * GAP
"""Three tiles: as narrow as TensorBoard's card."""


def shown_channels(events, layer: str) -> list[tuple[int, list[int], list[float]]]:
    """``(probe, channels, means)`` of each line of the list under the text's table."""
    text = events.Tensors(f"activation_grid/{layer}/channels/text_summary")[-1]
    lines = text.tensor_proto.string_val[0].decode().splitlines()
    listed = [re.fullmatch(r"- probe (\d+): (.+)", line) for line in lines]
    return [
        (
            int(match[1]),
            [int(c) for c in re.findall(r"(\d+)\u00a0\(", match[2])],
            [float(m) for m in re.findall(r"\(([-\d.e]+)\)", match[2])],
        )
        for match in listed
        if match
    ]


def assert_colour(pixel, cmap: str, index: int) -> None:
    """``pixel`` is entry ``index`` of the colormap's 256, give or take a neighbour's."""
    expected = to_uint8(colormap_table(cmap)[index]).numpy().astype(int)
    assert (abs(pixel.astype(int) - expected) <= 3).all(), (pixel, expected)


def test_grids_at_fit_start_and_every_epoch_show_the_final_models_top_channels(tmp_path):
    logger = ActivationGridLogger(strict=True)
    module = DigitsClassifier("sgd", 0.05)
    fit(module, [logger], tmp_path, epochs=3)
    assert list(logger._layers) == DEFAULT_LAYERS
    events = read_events(tmp_path)
    with eval_mode(module), torch.no_grad():
        expected = top_feature_maps(module, logger.probes.images, DEFAULT_LAYERS, k=8)
    for layer in DEFAULT_LAYERS:
        images = events.Images(f"activation_grid/{layer}")
        assert [i.step for i in images] == [0, *EPOCH_ENDS]
        # a block per probe: the probe and its 8 channels, 96-pixel tiles 2 apart under their
        # captions, blocks 6 apart, under the colour bar (title, ramp) and a note of three lines
        width = WIDTH
        assert {(i.width, i.height) for i in images} == {(width, LEGEND + GRID_HEIGHT)}
        rows = text_rows(events, f"activation_grid/{layer}/channels")
        assert [row[1] for row in rows] == [str(c) for c in range(10)]  # the probes' classes
        # the channels go in a list under the table: as its last column, their long line
        # squeezed the others in TensorBoard's text card until "probe" broke over two lines
        assert {len(row) for row in rows} == {5}
        listed = shown_channels(events, layer)
        assert [probe for probe, _, _ in listed] == list(range(10))
        channels = [shown for _, shown, _ in listed]
        assert channels == expected[layer].channels.tolist()
        means = [means for _, _, means in listed]
        assert torch.allclose(torch.tensor(means), expected[layer].means, rtol=1e-2)
        dead = torch.tensor([float(row[4].rstrip("%")) for row in rows]) / 100
        assert torch.allclose(dead, expected[layer].dead_fraction, atol=0.005)
        pixels = image_pixels(images[-1])
        for probe in (0, 3):
            top = LEGEND + GAP + probe * (BLOCK + GAP)
            assert_caption(pixels, f"true {probe}", x=GAP, y=top, width=TILE)
            for slot in (0, 4, 7):  # tile slot + 1 of the block, row by row
                row, column = divmod(slot + 1, 3)
                x, y = GAP + column * (TILE + 2), top + row * (BAND + TILE + 2)
                assert_caption(pixels, f"ch {channels[probe][slot]}", x=x, y=y, width=TILE)
        # after ReLUs the maps are non-negative: the colour bar runs through viridis
        assert_colour(pixels[BAND + BAND // 2, width // 2], "viridis", 128)
    assert hook_count(module) == 0
    assert not logger.alerts.raised


def test_large_probes_make_blocks_that_fit_the_card(tmp_path):
    """224-pixel probes: 192-pixel tiles made a 592-pixel image, its captions shrunk to 5."""
    images = torch.rand(4, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    data = DataLoader(TensorDataset(images, torch.arange(4)), batch_size=4)
    logger = ActivationGridLogger(layers=["model.conv1"], strict=True)
    trainer = make_trainer(tmp_path, [logger], max_epochs=1)
    trainer.fit(Classifier(TinyFunctionalCNN()), data, data)
    image = read_events(tmp_path).Images("activation_grid/model.conv1")[-1]
    assert CARD_WIDTH - 20 <= image.width <= CARD_WIDTH


def test_a_map_zero_everywhere_says_so_in_its_caption(tmp_path):
    """A user's U-Net showed three solid dark tiles per probe among its "top 8 channels":
    channels dead on the probe, which nothing told from weak ones."""
    module = DigitsClassifier()
    norm = module.model.features[9]  # the BatchNorm before the deepest ReLU: all its maps 0
    with torch.no_grad():
        norm.weight.zero_()
        norm.bias.fill_(-100.0)
    norm.requires_grad_(False)
    logger = ActivationGridLogger(strict=True)
    fit(module, [logger], tmp_path, epochs=1, limit_train_batches=1)
    events = read_events(tmp_path)
    for layer, dead in (("model.features.2", False), ("model.features.10", True)):
        channels = [shown for _, shown, _ in shown_channels(events, layer)]
        pixels = image_pixels(events.Images(f"activation_grid/{layer}")[-1])
        top, x = LEGEND + GAP, GAP + TILE + 2  # the first probe's first channel
        caption = f"ch {channels[0][0]}" + (" all 0" if dead else "")
        assert_caption(pixels, caption, x=x, y=top, width=TILE)


def test_a_class_name_too_long_for_true_keeps_whole(tmp_path):
    """A user's "green square" and "green star" both read "true green s…" on their tiles."""
    names = ["green square", "red", *[f"digit {i}" for i in range(2, 10)]]
    assert not fits("true green square", TILE)
    assert fits("green square", TILE)
    logger = ActivationGridLogger(class_names=names, strict=True)
    fit(DigitsClassifier(), [logger], tmp_path, epochs=1, limit_train_batches=1)
    pixels = image_pixels(read_events(tmp_path).Images(f"activation_grid/{DEFAULT_LAYERS[0]}")[-1])
    top = LEGEND + GAP  # the blocks of probes 0 and 1 (the digits 0 and 1), one under the other
    assert_caption(pixels, "green square", x=GAP, y=top, width=TILE)
    assert_caption(pixels, "true red", x=GAP, y=top + BLOCK + GAP, width=TILE)


def test_drawn_probes_none_draws_every_probe(tmp_path):
    logger = ActivationGridLogger(layers=["model.features.2"], drawn_probes=None, strict=True)
    fit(DigitsClassifier(), [logger], tmp_path, epochs=1, limit_train_batches=2)
    image = read_events(tmp_path).Images("activation_grid/model.features.2")[-1]
    # ten blocks under the colour bar and its four-line note, no line on the probes drawn
    assert (image.width, image.height) == (WIDTH, LEGEND - BAND + 10 * BLOCK + 11 * GAP)


def test_a_layer_before_its_relu_is_drawn_in_the_diverging_map(tmp_path):
    logger = ActivationGridLogger(layers=["model.features.1"], k=4, strict=True)
    fit(DigitsClassifier(), [logger], tmp_path, epochs=1, limit_train_batches=2)
    images = read_events(tmp_path).Images("activation_grid/model.features.1")
    assert [i.step for i in images] == [0, 2]
    assert images[-1].width == WIDTH  # 5 tiles: 3 columns, 2 rows
    pixels = image_pixels(images[-1])
    # the bar's middle is RdBu_r's white at 0
    assert_colour(pixels[BAND + BAND // 2, images[-1].width // 2], "RdBu_r", 128)


def scale_note(events, layer: str) -> str:
    text = events.Tensors(f"activation_grid/{layer}/channels/text_summary")[-1]
    return text.tensor_proto.string_val[0].decode().splitlines()[0]


def test_the_note_says_why_a_layer_has_negative_values(tmp_path):
    """A user's SiLU layer was said to come before its activation: it is the activation."""
    module = DigitsClassifier()
    module.model.features[2] = nn.GELU()  # after the first conv and BatchNorm
    layers = ["model.features.1", "model.features.2", "model.features.6"]
    logger = ActivationGridLogger(layers=layers, k=4, strict=True)
    fit(module, [logger], tmp_path, epochs=1, limit_train_batches=2)
    events = read_events(tmp_path)
    assert scale_note(events, layers[0]).startswith(
        "The layer has negative values (it is no activation's output): blue below 0"
    )
    assert scale_note(events, layers[1]).startswith(
        "The layer has negative values (its activation, GELU, lets some through)"
    )
    assert scale_note(events, layers[2]).startswith("Each probe's maps are scaled from 0")
    # ActivationMonitor's dead channels are read in training mode: the grid says its mode
    assert all(
        scale_note(events, layer).endswith("Eval mode, as the probe views run.") for layer in layers
    )


def test_default_layers_are_the_first_and_the_deepest_activated_maps():
    resnet = Classifier(torchvision.models.resnet18(num_classes=10)).eval()
    # at 64 pixels layer3's maps are 4x4: the deepest of at least 7x7 is in layer2
    assert default_grid_layers(resnet, torch.randn(1, 3, 64, 64)) == [
        "model.relu",
        "model.layer2.1.relu",
    ]
    assert default_grid_layers(resnet, torch.randn(1, 3, 224, 224)) == [
        "model.relu",
        "model.layer4.1.relu",
    ]
    # FeatureVisualizer's: past the stem, whose units' images are their filters' sign patterns
    assert default_grid_layers(resnet, torch.randn(1, 3, 64, 64), past_first=True) == [
        "model.layer1.0.relu",
        "model.layer2.1.relu",
    ]
    two = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
    assert default_grid_layers(two.eval(), torch.randn(1, 1, 16, 16), past_first=True) == [
        "1",
        "3",
    ]  # where a second is the deepest, the first stays
    vgg = Classifier(torchvision.models.vgg11(num_classes=10)).eval()
    assert default_grid_layers(vgg, torch.randn(1, 3, 64, 64)) == [
        "model.features.1",
        "model.features.14",
    ]
    # an autoencoder's last activation is its reconstruction, at the input's size: a visual
    # review read it as "top 1 channels by mean", a digit beside itself
    autoencoder = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 1, 3, padding=1), nn.Sigmoid(),
    )  # fmt: skip
    assert default_grid_layers(autoencoder.eval(), torch.randn(1, 1, 16, 16)) == ["1", "3"]
    # ReLU called as a function: the conv outputs, before it
    functional = TinyFunctionalCNN().eval()
    assert default_grid_layers(functional, torch.randn(1, 3, 32, 32)) == ["conv1", "conv2"]
    assert (
        default_grid_layers(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), torch.ones(1, 1, 2, 2))
        == []
    )
    assert hook_count(resnet) == hook_count(vgg) == 0


def test_default_layers_leave_out_an_auxiliary_head():
    # torchvision's segmentation nets run their auxiliary head last; it feeds no score
    fcn = torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=5, aux_loss=True
    ).eval()
    _, deepest = default_grid_layers(fcn, torch.randn(1, 3, 64, 64))
    assert not deepest.startswith("aux_classifier")
    assert deepest.startswith("classifier")
    assert hook_count(fcn) == 0


class Flat(ImageClassifier):
    """A classifier without a feature map: nothing for the grid to show."""

    def __init__(self):
        super().__init__(nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 10)), lr=0.01)


def test_a_model_without_feature_maps_gets_a_notice_and_training_goes_on(tmp_path):
    logger = ActivationGridLogger(on_alert="stop")
    with pytest.warns(UserWarning, match="ActivationGridLogger: Flat has no activation or"):
        trainer = fit(Flat(), [logger], tmp_path, epochs=1, limit_train_batches=2)
    assert trainer.current_epoch == 1
    assert [a.kind for a in logger.alerts.raised] == ["not_shown"]


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: ActivationGridLogger(k=0), "`k` must be a positive integer, got 0"),
        (lambda: ActivationGridLogger(k="8"), "`k` must be a positive integer, got '8'"),
        (lambda: ActivationGridLogger(cmap="nope"), "unknown matplotlib colormap 'nope'"),
        (lambda: ActivationGridLogger(layers=[]), "`layers` must be None or a non-empty list"),
        (lambda: ActivationGridLogger(every_n_epochs=0), "`every_n_epochs` must be a positive"),
        (lambda: ActivationGridLogger(num_probes=-1), "`num_probes` must be a positive"),
        (lambda: ActivationGridLogger(probes=torch.zeros(1)), "`probes` must be a lightning_viz"),
    ],
)
def test_bad_arguments_fail_at_construction(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        (["model.feature"], r"ActivationGridLogger: unknown layer 'model.feature'.*closest"),
        (["model.head"], r"ActivationGridLogger: layer 'model.head' returns shape \(1, 10\)"),
    ],
)
def test_unknown_or_flat_layers_fail_at_fit_start(tmp_path, layers, message):
    with pytest.raises(ValueError, match=message):
        fit(DigitsClassifier(), [ActivationGridLogger(layers=layers)], tmp_path, epochs=1)


def test_training_with_the_logger_is_bit_identical(tmp_path):
    without = train(tmp_path / "without", [])
    logger = ActivationGridLogger(strict=True)
    assert_same_training(without, train(tmp_path / "with", [logger]))
    assert len(read_events(tmp_path / "with").Images(f"activation_grid/{DEFAULT_LAYERS[0]}")) == 3


def test_default_layers_leave_out_maps_per_region_proposal():
    model = RegionClassifier().eval()
    assert default_grid_layers(model, torch.randn(2, 3, 32, 32)) == ["backbone.1"]
