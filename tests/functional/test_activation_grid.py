import pytest
import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from lightning_viz.functional.activation_grid import feature_map_tiles, top_feature_maps
from lightning_viz.functional.images import colormap_table, to_uint8
from lightning_viz.testing import TinyCNN
from tests.helpers import assert_untouched, hook_count, train_flags

# layers after their activation, where torchvision's extractor returns exactly what the layer
# gave: `layer1.0.relu` runs twice per block, and the first call is the one shown; a container
# (`layer2`, `features`) gives its last child's output
AFTER_ACTIVATION = {
    "vgg11": ["features.1", "features.9", "features"],
    "resnet18": ["relu", "layer1.0.relu", "layer2"],
}


def hooked_outputs(model: nn.Module, images: torch.Tensor, names: list[str]) -> dict:
    """Each named module's output at its first call, cloned before an in-place ReLU can change
    it, from a plain full forward."""
    outputs, modules = {}, dict(model.named_modules())

    def hook(name):
        def record(module, args, output):
            if name not in outputs:
                outputs[name] = output.clone()

        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in names]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def assert_top_k_of(found, activation: torch.Tensor, k: int) -> None:
    """``found`` shows the k channels of largest mean of ``activation``, their maps and means."""
    means = activation.mean(dim=(2, 3))
    expected = means.topk(k, dim=1)
    assert found.channels.dtype == torch.long
    assert found.channels.shape == (len(activation), k)
    assert torch.allclose(found.means, expected.values, rtol=1e-5, atol=1e-6)
    # the same channels as the true top-k (ties among equal means may come in any order)
    assert torch.equal(means.gather(1, found.channels), found.means)
    assert found.means[:, :-1].ge(found.means[:, 1:]).all()  # strongest first
    index = found.channels[:, :, None, None].expand(-1, -1, *activation.shape[-2:])
    assert torch.equal(found.maps, activation.gather(1, index))


@pytest.mark.parametrize("model_name", ["vgg11", "resnet18"])
def test_maps_equal_torchvision_feature_extraction_and_are_the_top_k_by_mean(
    request, model_name, images
):
    model = request.getfixturevalue(model_name)
    layers = AFTER_ACTIVATION[model_name]
    extractor = create_feature_extractor(model, return_nodes=layers)
    with torch.no_grad():
        expected = extractor(images)
    found = top_feature_maps(model, images, layers, k=5)
    assert list(found) == [name for name, _ in model.named_modules() if name in layers]
    for name in layers:
        assert found[name].maps.dtype == torch.float32
        assert expected[name].abs().max() > 0
        assert_top_k_of(found[name], expected[name], 5)


@pytest.mark.parametrize(("model_name", "layer"), [("vgg11", "features.0"), ("resnet18", "bn1")])
def test_a_layer_before_its_in_place_relu_is_shown_with_its_negative_values(
    request, model_name, layer, images
):
    model = request.getfixturevalue(model_name)
    expected = hooked_outputs(model, images, [layer])[layer]
    found = top_feature_maps(model, images, layer, k=3)[layer]
    assert_top_k_of(found, expected, 3)
    assert found.maps.min() < 0  # not the ReLU's output


class Emits(nn.Module):
    """A model whose layer ``out`` returns a fixed activation whatever the input."""

    def __init__(self, activation: torch.Tensor) -> None:
        super().__init__()
        self.out = nn.Identity()
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.activation)


def test_dead_and_zero_fractions_follow_their_definitions(resnet18, images):
    activation = hooked_outputs(resnet18, images, ["layer2.0.relu"])["layer2.0.relu"]
    activation[0, :5] = 0  # five channels silent on the first image
    found = top_feature_maps(Emits(activation), images, "out", k=4)["out"]
    positive = activation > 0
    dead = (~positive.flatten(2).any(dim=2)).float().mean(dim=1)
    assert torch.equal(found.dead_fraction, dead)
    assert found.dead_fraction[0] >= 5 / activation.shape[1]
    assert torch.allclose(found.zero_fraction, 1 - positive.flatten(1).float().mean(dim=1))


def test_the_forward_stops_at_the_deepest_layer(resnet18, vgg11, images):
    calls: dict[str, int] = {}
    models = {"resnet18": resnet18, "vgg11": vgg11}
    handles = [
        module.register_forward_hook(
            lambda m, a, o, key=f"{model_name}.{name}": calls.update({key: calls.get(key, 0) + 1})
        )
        for model_name, model in models.items()
        for name, module in model.named_modules()
        if name
    ]
    try:
        top_feature_maps(resnet18, images, ["relu", "layer2.0"], k=2)
        top_feature_maps(vgg11, images, ["features.4"], k=2)
    finally:
        for handle in handles:
            handle.remove()
    assert calls["resnet18.layer2.0"] == 1
    assert calls["vgg11.features.4"] == 1
    never = ["resnet18.layer2.1", "resnet18.layer3", "resnet18.layer4", "resnet18.fc"]
    never += ["vgg11.features.5", "vgg11.avgpool", "vgg11.classifier"]
    assert not [name for name in never if name in calls]
    assert hook_count(resnet18) == hook_count(vgg11) == 0


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode, torch.enable_grad])
def test_untouched_and_the_same_under_any_grad_mode(context, images):
    model = TinyCNN().eval()
    model.conv2.train()
    flags = train_flags(model)
    expected = top_feature_maps(model, images, ["relu1", "conv2"], k=4)
    with context():
        found = top_feature_maps(model, images.clone(), ["relu1", "conv2"], k=4)
    for name in expected:
        for actual, wanted in zip(found[name], expected[name], strict=True):
            assert torch.equal(actual, wanted)
            assert not actual.requires_grad
    assert_untouched(model, flags)


def test_autocast_is_off_and_uint8_images_reach_the_model_as_they_are(images):
    seen = []

    class Normalizes(TinyCNN):
        def forward(self, x):
            seen.append(x.dtype)
            return super().forward(x.float() / 255)

    model = Normalizes().eval()
    pixels = (images.clamp(-2, 2) * 60 + 128).to(torch.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        found = top_feature_maps(model, pixels, "conv2", k=2)["conv2"]
    assert seen == [torch.uint8]
    assert found.maps.dtype == torch.float32
    expected = hooked_outputs(model, pixels, ["conv2"])["conv2"]
    assert_top_k_of(found, expected, 2)


def test_k_larger_than_a_layer_shows_all_its_channels(images):
    found = top_feature_maps(TinyCNN().eval(), images, ["relu1", "conv2"], k=12)
    assert found["relu1"].channels.shape == (3, 8)  # 8 channels
    assert found["conv2"].channels.shape == (3, 12)  # 16 channels
    assert sorted(found["relu1"].channels[0].tolist()) == list(range(8))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"layers": "conv2", "k": 0}, "`k` must be a positive integer, got 0"),
        ({"layers": "conv2", "k": 2.5}, "`k` must be a positive integer, got 2.5"),
        ({"layers": "conv2", "k": True}, "`k` must be a positive integer, got True"),
        ({"layers": "conv3"}, r"unknown layer 'conv3'; closest valid names: 'conv2'"),
        ({"layers": []}, "`layers` is empty"),
        ({"layers": "head"}, r"layer 'head' \(Linear\) returned shape \(3, 10\); expected a 4-D"),
    ],
)
def test_clear_errors_for_bad_arguments_and_no_hook_left(arguments, message, images):
    model = TinyCNN().eval()
    with pytest.raises(ValueError, match=message):
        top_feature_maps(model, images, **arguments)
    assert hook_count(model) == 0


def test_clear_errors_for_images_on_another_device_or_not_a_batch(images):
    model = TinyCNN().eval()
    with pytest.raises(ValueError, match="`images` are on meta but the model is on cpu"):
        top_feature_maps(model, images.to("meta"), "conv2")
    with pytest.raises(ValueError, match=r"`images` must have shape \(N, C, H, W\) with N >= 1"):
        top_feature_maps(model, images[0], "conv2")
    with pytest.raises(ValueError, match="did not run in the forward"):
        top_feature_maps(model, images, "conv2", forward=lambda x: model.conv1(x))
    assert hook_count(model) == 0


def colours(cmap: str, positions: torch.Tensor) -> torch.Tensor:
    """The uint8 RGB of ``cmap`` at [0, 1] positions, as the tiles index it: (..., 3)."""
    return to_uint8(colormap_table(cmap))[(positions * 255).round().long()]


def test_tiles_share_one_scale_per_image():
    maps = torch.zeros(2, 2, 4, 4)
    maps[0, 0, 1, 1], maps[0, 1, 2, 2] = 4.0, 1.0  # a strong and a weak map of one image
    maps[1, 0, 0, 0], maps[1, 1] = 0.5, 0.25  # another image, ten times weaker
    shown = feature_map_tiles(maps)
    assert shown.tiles.dtype == torch.uint8
    assert shown.tiles.shape == (2, 2, 3, 4, 4)
    assert torch.equal(shown.scale, torch.tensor([4.0, 0.5]))
    assert not shown.signed
    pixels = shown.tiles.permute(0, 1, 3, 4, 2)  # (N, k, h, w, 3)
    assert torch.equal(pixels[0, 0, 1, 1], colours("viridis", torch.tensor(1.0)))
    assert torch.equal(pixels[0, 1, 2, 2], colours("viridis", torch.tensor(0.25)))  # weak stays
    assert torch.equal(pixels[0, 1, 0, 0], colours("viridis", torch.tensor(0.0)))
    assert torch.equal(pixels[1, 0, 0, 0], colours("viridis", torch.tensor(1.0)))
    assert torch.equal(pixels[1, 1], colours("viridis", torch.tensor(0.5)).expand(4, 4, 3))


def test_negative_values_take_the_diverging_map_with_zero_in_the_middle():
    maps = torch.tensor([[[[-2.0, 0.0], [1.0, 2.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    shown = feature_map_tiles(maps, cmap="viridis", signed_cmap="RdBu_r")
    assert shown.signed
    assert torch.equal(shown.scale, torch.tensor([2.0, 0.0]))
    pixels = shown.tiles[0, 0].permute(1, 2, 0)
    assert torch.equal(pixels[0, 0], colours("RdBu_r", torch.tensor(0.0)))
    assert torch.equal(pixels[0, 1], colours("RdBu_r", torch.tensor(0.5)))
    assert torch.equal(pixels[1, 0], colours("RdBu_r", torch.tensor(0.75)))
    assert torch.equal(pixels[1, 1], colours("RdBu_r", torch.tensor(1.0)))
    # an image whose maps are all 0 is all mid-colour, not NaN
    assert torch.equal(shown.tiles[1, 0, :, 0, 0], colours("RdBu_r", torch.tensor(0.5)))


def test_tiles_are_enlarged_with_square_pixels_and_shrunk_by_area():
    maps = torch.arange(16.0).view(1, 1, 4, 4)
    enlarged = feature_map_tiles(maps, size=(96, 96)).tiles[0, 0]
    assert enlarged.shape == (3, 96, 96)
    small = feature_map_tiles(maps).tiles[0, 0]
    assert torch.equal(enlarged, small.repeat_interleave(24, 1).repeat_interleave(24, 2))
    uneven = feature_map_tiles(maps, size=(7, 10)).tiles[0]  # not whole factors
    assert torch.equal(
        uneven, nn.functional.interpolate(small[None], (7, 10), mode="nearest-exact")
    )
    wide = torch.zeros(1, 1, 8, 8)
    wide[..., ::2] = 1.0  # stripes one pixel wide: averaged two by two into 0.5
    shrunk = feature_map_tiles(wide, size=(4, 4)).tiles[0, 0].permute(1, 2, 0)
    assert torch.equal(shrunk, colours("viridis", torch.tensor(0.5)).expand(4, 4, 3))


def test_tiles_reject_bad_maps_and_colormaps():
    with pytest.raises(ValueError, match=r"`maps` must be \(N, k, h, w\), got \(2, 4, 4\)"):
        feature_map_tiles(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="unknown matplotlib colormap 'nope'"):
        feature_map_tiles(torch.zeros(1, 1, 4, 4), cmap="nope")
