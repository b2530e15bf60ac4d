import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from lightning_viz.functional.receptive_field import ReceptiveField, receptive_fields
from lightning_viz.testing import DigitsCNN, sequential_cnn, tiny_vit


def layer_outputs(model: nn.Module, inputs: torch.Tensor, layers: list[str]) -> dict:
    """The output of each layer (at its first call) on ``inputs``."""
    captured = {}

    def make_hook(name):
        def hook(module, args, output):
            captured.setdefault(name, output)
            return output.clone()

        return hook

    named = dict(model.named_modules())
    handles = [named[name].register_forward_hook(make_hook(name)) for name in layers]
    try:
        model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def gradient_support_boxes(model: nn.Module, image: torch.Tensor, layers: list[str]) -> dict:
    """Per layer, per probed position (y, x) of channel 0: (top, left, bottom, right) of the
    nonzero input gradient, or None where it is zero. One row of the batch per position."""
    positions = {}
    with torch.no_grad():
        for layer, output in layer_outputs(model, image, layers).items():
            height, width = output.shape[-2:]
            positions[layer] = [(height // 2, width // 2), (0, 0), (height - 1, width - 1)]
    count = len(next(iter(positions.values())))
    batch = image.expand(count, -1, -1, -1).clone().requires_grad_(True)
    outputs = layer_outputs(model, batch, layers)
    boxes = {}
    for layer in layers:
        rows, cols = torch.tensor(positions[layer]).T
        units = outputs[layer][torch.arange(count), 0, rows, cols]
        (grad,) = torch.autograd.grad(units.sum(), batch, retain_graph=True)
        boxes[layer] = {}
        for index, (y, x) in enumerate(positions[layer]):
            nonzero_rows, nonzero_cols = grad[index].abs().sum(dim=0).nonzero(as_tuple=True)
            boxes[layer][y, x] = (
                (
                    int(nonzero_rows.min()),
                    int(nonzero_cols.min()),
                    int(nonzero_rows.max()),
                    int(nonzero_cols.max()),
                )
                if len(nonzero_rows)
                else None
            )
    return boxes


def clipped_field_box(field: ReceptiveField, y: int, x: int, height: int, width: int):
    x1, y1, x2, y2 = field.boxes(torch.tensor([y]), torch.tensor([x]))[0].long().tolist()
    return (max(y1, 0), max(x1, 0), min(y2 - 1, height - 1), min(x2 - 1, width - 1))


def linearized(model: nn.Module) -> nn.Module:
    """A copy where every ReLU is the identity and every max pool an average pool of the same
    geometry, so the input gradient of a unit is nonzero on its whole field."""
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, name, nn.Identity())
            elif isinstance(child, nn.MaxPool2d):
                pool = nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode)
                setattr(module, name, pool)
    return model


def check_fields_against_gradients(model: nn.Module, layers: list[str], size: int) -> None:
    """Linearized, the support's box is the field's box clipped to the image; as it is, the
    support lies inside it."""
    torch.manual_seed(0)
    model = model.eval()
    image = torch.randn(1, model_channels(model), size, size)
    fields = receptive_fields(model, image, layers)
    exact_supports = gradient_support_boxes(linearized(model), image, layers)
    supports = gradient_support_boxes(model, image, layers)
    for layer in layers:
        assert fields[layer].exact, layer
        for (y, x), exact_support in exact_supports[layer].items():
            expected = clipped_field_box(fields[layer], y, x, size, size)
            assert exact_support == expected, (layer, y, x)
            support = supports[layer][y, x]
            if support is not None:
                assert expected[:2] <= support[:2], (layer, y, x)
                assert support[2:] <= expected[2:], (layer, y, x)


def model_channels(model: nn.Module) -> int:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels


def test_vgg11_fields_are_the_gradient_support():
    layers = ["features.0", "features.2", "features.5", "features.10", "features.20"]
    vgg = torchvision.models.vgg11(weights=None)
    vgg.classifier = nn.Identity()  # only the features matter; the head is slow on 2 cores
    check_fields_against_gradients(vgg, layers, 48)


def test_resnet18_fields_are_the_gradient_support():
    layers = ["conv1", "maxpool", "layer1.0.conv1", "layer1.0", "layer2.0", "layer3.1", "layer4.1"]
    check_fields_against_gradients(torchvision.models.resnet18(weights=None), layers, 96)


def test_digits_cnn_fields_are_the_gradient_support():
    layers = ["features.0", "features.2", "features.3", "features.6", "features.10"]
    check_fields_against_gradients(DigitsCNN(), layers, 32)


def test_known_values():
    image = torch.randn(1, 3, 32, 32)
    stack = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))
    assert receptive_fields(stack, image, ["1"])["1"] == ReceptiveField(
        jump=(1, 1), start=(-2, -2), end=(2, 2), exact=True
    )
    assert receptive_fields(stack, image, ["1"])["1"].size == (5, 5)
    stem = nn.Sequential(nn.Conv2d(3, 4, 7, stride=2, padding=3), nn.MaxPool2d(3, 2, padding=1))
    fields = receptive_fields(stem, image, ["0", "1"])
    assert fields["0"] == ReceptiveField(jump=(2, 2), start=(-3, -3), end=(3, 3), exact=True)
    assert fields["1"] == ReceptiveField(jump=(4, 4), start=(-5, -5), end=(5, 5), exact=True)
    assert fields["1"].size == (11, 11)
    resnet = torchvision.models.resnet18(weights=None).eval()
    assert receptive_fields(resnet, torch.randn(1, 3, 64, 64), ["layer4"])["layer4"].size == (
        435,
        435,
    )


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_conv_and_pool_arguments():
    image = torch.randn(1, 2, 40, 40)
    weight = torch.randn(2, 2, 3, 5)
    cases = {
        "stride_dilation": (
            lambda x: F.conv2d(x, weight, stride=(2, 1), padding=(1, 4), dilation=(1, 2)),
            ((2, 1), (-1, -4), (1, 4)),
        ),
        "same": (
            lambda x: F.conv2d(x, torch.randn(2, 2, 4, 4), padding="same"),
            ((1, 1), (-1, -1), (2, 2)),
        ),
        "valid": (lambda x: F.conv2d(x, weight, padding="valid"), ((1, 1), (0, 0), (2, 4))),
        "groups": (
            lambda x: F.conv2d(x, torch.randn(4, 1, 3, 3), groups=2),
            ((1, 1), (0, 0), (2, 2)),
        ),
        "avg_default_stride": (lambda x: F.avg_pool2d(x, 3, padding=1), ((3, 3), (-1, -1), (1, 1))),
        "max_dilated_ceil": (
            lambda x: F.max_pool2d(x, 2, 3, dilation=2, ceil_mode=True),
            ((3, 3), (0, 0), (2, 2)),
        ),
        "max_with_indices": (
            lambda x: F.max_pool2d(x, 2, return_indices=True)[0],
            ((2, 2), (0, 0), (1, 1)),
        ),
        "pad_then_conv": (
            lambda x: F.conv2d(F.pad(x, (1, 2, 3, 4), mode="reflect"), weight),
            ((1, 1), (-3, -1), (-1, 3)),
        ),
        "adaptive_divisible": (lambda x: F.adaptive_avg_pool2d(x, 8), ((5, 5), (0, 0), (4, 4))),
    }
    for name, (function, (jump, start, end)) in cases.items():
        model = nn.Sequential(_Lambda(function))
        field = receptive_fields(model, image, ["0"])["0"]
        assert field == ReceptiveField(jump, start, end, exact=True), name


def test_conv_padding_modes_give_the_same_field():
    image = torch.randn(1, 3, 16, 16)
    zeros = nn.Sequential(nn.Conv2d(3, 3, 5, padding=2))
    reflect = nn.Sequential(nn.Conv2d(3, 3, 5, padding=2, padding_mode="reflect"))
    assert receptive_fields(zeros, image, ["0"]) == receptive_fields(reflect, image, ["0"])


def test_concatenated_branches_take_the_union():
    class Inception(nn.Module):
        def __init__(self):
            super().__init__()
            self.small = nn.Conv2d(3, 2, 3, padding=1)
            self.large = nn.Conv2d(3, 2, 7, padding=3)
            self.merge = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.merge(torch.cat([self.small(x), F.relu(self.large(x))], dim=1))

    field = receptive_fields(Inception(), torch.randn(1, 3, 16, 16), ["merge"])["merge"]
    assert field == ReceptiveField((1, 1), (-3, -3), (3, 3), exact=True)


def test_an_in_place_sum_takes_the_union():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.small = nn.Conv2d(3, 2, 3, padding=1)
            self.large = nn.Conv2d(3, 2, 7, padding=3)
            self.out = nn.ReLU(inplace=True)

        def forward(self, x):
            y = self.small(x)
            y += self.large(x)
            return self.out(y)

    field = receptive_fields(Residual(), torch.randn(1, 3, 16, 16), ["small", "out"])
    assert field["small"] == ReceptiveField((1, 1), (-1, -1), (1, 1), exact=True)
    assert field["out"] == ReceptiveField((1, 1), (-3, -3), (3, 3), exact=True)


def test_grid_changing_ops_are_approximate():
    image = torch.randn(2, 3, 32, 32)
    upsampled = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Upsample(scale_factor=2))
    assert receptive_fields(upsampled, image, ["0"])["0"].exact
    field = receptive_fields(upsampled, image, ["1"])["1"]
    assert field == ReceptiveField(jump=(1, 1), start=(-16, -16), end=(15, 15), exact=False)
    head = sequential_cnn()
    fields = receptive_fields(head, image, ["3", "5", "7"])
    assert fields["3"].exact
    assert fields["5"].exact, "an adaptive pool to 1x1 of a 16x16 map is a 16x16 pool"
    assert fields["5"].jump == (32, 32)
    assert fields["7"] == ReceptiveField((32, 32), (0, 0), (31, 31), exact=False)


def test_token_layers_are_approximate():
    vit = tiny_vit().eval()
    image = torch.randn(1, 3, 32, 32)
    fields = receptive_fields(vit, image, ["conv_proj", "encoder.layers.encoder_layer_1"])
    assert fields["conv_proj"] == ReceptiveField((8, 8), (0, 0), (7, 7), exact=True)
    tokens = fields["encoder.layers.encoder_layer_1"]
    assert not tokens.exact
    assert tokens.jump == (8, 8), "read on the 4x4 patch grid"
    assert tokens.size == (32, 32)


def test_a_broadcast_gate_keeps_the_map_field_inexactly():
    class SqueezeExcite(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.gate = nn.Linear(4, 4)
            self.out = nn.Identity()

        def forward(self, x):
            x = self.conv(x)
            return self.out(x * self.gate(x.mean(dim=(2, 3))).sigmoid()[:, :, None, None])

    field = receptive_fields(SqueezeExcite(), torch.randn(1, 3, 16, 16), ["out"])["out"]
    assert field == ReceptiveField((1, 1), (-1, -1), (1, 1), exact=False)


def test_resnet_is_exact_and_a_dict_of_every_layer():
    resnet = torchvision.models.resnet18(weights=None).eval()
    layers = ["layer1", "layer2.1.bn2", "layer3", "layer4"]
    fields = receptive_fields(resnet, torch.randn(4, 3, 64, 64), layers)
    assert list(fields) == layers
    assert all(field.exact for field in fields.values())


def test_boxes_follow_the_grid():
    field = ReceptiveField(jump=(2, 3), start=(-1, -2), end=(4, 5), exact=True)
    boxes = field.boxes(torch.tensor([0, 2]), torch.tensor([0, 1]))
    expected = torch.tensor([[-2.0, -1.0, 6.0, 5.0], [1.0, 3.0, 9.0, 9.0]])
    torch.testing.assert_close(boxes, expected)
    assert boxes.dtype == torch.float32


def test_hooks_and_mode_are_removed_also_on_errors():
    model = DigitsCNN().eval()
    image = torch.randn(1, 1, 32, 32)
    receptive_fields(model, image, ["features.3"])
    assert all(not m._forward_hooks for m in model.modules())
    assert torch._C._len_torch_function_stack() == 0

    def failing(x):
        model.features[:4](x)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        receptive_fields(model, image, ["features.6"], forward=failing)
    assert all(not m._forward_hooks for m in model.modules())
    assert torch._C._len_torch_function_stack() == 0


def test_clear_errors():
    model = DigitsCNN().eval()
    image = torch.randn(1, 1, 32, 32)
    with pytest.raises(ValueError, match="did not run"):
        receptive_fields(model, image, ["features.6"], forward=lambda x: model.features[:4](x))
    with pytest.raises(ValueError, match="closest valid names"):
        receptive_fields(model, image, ["features.66"])
    with pytest.raises(ValueError, match="shape"):
        receptive_fields(model, image[0], ["features.0"])


def test_leaves_flags_gradients_and_statistics_alone():
    model = DigitsCNN().eval()
    model.head.train()
    state = copy.deepcopy(model.state_dict())
    flags = [m.training for m in model.modules()]
    receptive_fields(model, torch.randn(3, 1, 32, 32), ["features.10"])
    assert [m.training for m in model.modules()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


class _Lambda(nn.Module):
    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, x):
        return self.function(x)
