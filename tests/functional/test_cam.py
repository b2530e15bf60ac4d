import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchcam.methods import CAM

from lightning_viz.functional.cam import GapLinearHead, class_activation_map, gap_linear_head
from lightning_viz.testing import DigitsCNN, ShapesCNN, TinyCNN, tiny_vit
from tests.helpers import assert_untouched, relative_error, train_flags

NOT_GAP_LINEAR = r"does not end in global average pooling and one linear layer.*use Grad-CAM"


def torch_cam(model, images, layer, classifier, targets):
    """torch-cam's raw CAM (not normalized; its CAM applies no ReLU) and the model's scores."""
    with CAM(model, layer, classifier) as extractor:
        with torch.no_grad():
            logits = model(images)
        if targets is None:
            targets = logits.argmax(dim=1)
        return extractor(class_idx=targets.tolist(), normalized=False)[0], logits


def torchvision_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(num_classes=10).eval()


@pytest.mark.parametrize("targets", [torch.tensor([1, 4, 9]), None])
def test_cam_matches_torch_cam(resnet18, images, targets):
    maps, logits = class_activation_map(resnet18, images, targets)
    expected, expected_logits = torch_cam(resnet18, images, "layer4", "fc", targets)
    assert maps.dtype == logits.dtype == torch.float32
    assert maps.shape == (3, 2, 2)  # layer4 of a ResNet at 64 pixels
    assert expected.abs().max() > 0.1
    assert relative_error(maps, expected) < 1e-5
    assert torch.equal(logits, expected_logits)
    assert maps.grad_fn is None
    assert logits.grad_fn is None


@pytest.mark.parametrize(
    ("model_name", "head"),
    [
        ("resnet18", GapLinearHead("layer4", "fc", rectified=False)),
        # F.relu between `features` and the pooling: the averaged map is relu(features)
        ("densenet121", GapLinearHead("features", "classifier", rectified=True)),
        # Dropout then Linear: dropout is the identity in eval mode
        ("mobilenet_v2", GapLinearHead("features", "classifier.1", rectified=False)),
    ],
)
def test_maps_spread_each_score_over_the_places_that_produce_it(model_name, head, images):
    """The defining identity of CAM: a map's spatial mean plus the class's bias is its score."""
    model = torchvision_model(model_name)
    assert gap_linear_head(model, images[:1]) == head
    targets = torch.tensor([0, 3, 7])
    maps, logits = class_activation_map(model, images, targets)
    bias = model.get_submodule(head.classifier).bias
    scores = logits.gather(1, targets[:, None])[:, 0]
    assert relative_error(maps.mean(dim=(1, 2)), scores - bias[targets]) < 1e-5
    assert maps.abs().max() > 0


def test_densenet_reads_the_rectified_features_it_averages(images):
    densenet = torchvision_model("densenet121")
    with torch.no_grad():
        features = densenet.features(images)
    assert (features < 0).any()  # the ReLU between them matters
    targets = torch.tensor([2, 2, 5])
    maps, _ = class_activation_map(densenet, images, targets)
    weights = densenet.classifier.weight[targets]
    expected = torch.einsum("nc,nchw->nhw", weights, features.relu())
    assert relative_error(maps, expected) < 1e-5
    plain = torch.einsum("nc,nchw->nhw", weights, features)
    assert relative_error(maps, plain) > 0.1


@pytest.mark.parametrize(
    ("model", "channels", "head"),
    [
        (DigitsCNN(), 1, GapLinearHead("features", "head", rectified=False)),
        (ShapesCNN(), 1, GapLinearHead("features", "head", rectified=False)),
        (TinyCNN(), 3, GapLinearHead("relu2", "head", rectified=False)),
    ],
)
def test_the_small_models_end_in_a_gap_linear_head(model, channels, head):
    assert gap_linear_head(model.eval(), torch.randn(1, channels, 32, 32)) == head


@pytest.mark.parametrize(
    ("model_name", "found"),
    [
        ("vgg11", r"'avgpool' \(512, 7, 7\) it runs Linear -> ReLU -> Dropout -> Linear"),
        (
            "mobilenet_v3_small",
            r"'features' \(576, 2, 2\) it runs AdaptiveAvgPool2d -> Linear -> Hardswish -> "
            "Dropout -> Linear,",
        ),
    ],
)
def test_other_heads_are_refused_with_what_was_found(request, model_name, found, images):
    vgg = model_name == "vgg11"
    model = request.getfixturevalue("vgg11") if vgg else torchvision_model(model_name)
    with pytest.raises(ValueError, match=NOT_GAP_LINEAR) as error:
        class_activation_map(model, images)
    assert error.match(found)
    with pytest.raises(ValueError, match=NOT_GAP_LINEAR):
        gap_linear_head(model, images[:1])


class NormedHead(nn.Module):
    """ConvNeXt's head: global average pooling, LayerNorm2d of the 1x1 map, flatten, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 8, 3, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.norm = torchvision.models.convnext.LayerNorm2d(8)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.flatten(self.norm(self.pool(self.features(x)))))


def test_a_norm_after_the_pooling_is_named_not_taken_for_a_too_small_map(images):
    """The 1x1 map a ConvNeXt head normalizes was read as maps shrunk by small probes, and the
    message advised larger ones, which cannot help."""
    with pytest.raises(ValueError, match=NOT_GAP_LINEAR) as error:
        class_activation_map(NormedHead(), images)
    assert error.match(r"'features' \(8, 31, 31\) it runs AdaptiveAvgPool2d -> LayerNorm2d -> ")
    assert "1x1" not in str(error.value)


class PooledToOneCell(nn.Module):
    """A max pooling shrinks the probes' maps to 1x1 before the last conv and the head's
    global average pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2)
        self.shrink = nn.MaxPool2d(31)
        self.conv = nn.Conv2d(8, 16, 1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        maps = self.relu(self.conv(self.shrink(self.stem(x))))
        return self.head(self.pool(maps).flatten(1))


def test_maps_pooled_to_one_cell_before_the_head_are_told_so(images):
    """The max pooling was taken for the head's, and the message called the head something
    other than global average pooling and one linear layer."""
    with pytest.raises(
        ValueError, match=r"1x1 at the probes' size from 'conv' \(16, 1, 1\) on, before its "
    ):
        class_activation_map(PooledToOneCell(), images)


def test_a_vision_transformer_is_refused_naming_the_end_of_its_head():
    with pytest.raises(ValueError, match=NOT_GAP_LINEAR) as error:
        gap_linear_head(tiny_vit().eval(), torch.randn(1, 3, 32, 32))
    assert error.match(
        r"'conv_proj' \(32, 4, 4\) it runs \d+ modules, then .* LayerNorm -> Linear,"
    )


def test_a_timm_vision_transformer_is_refused_naming_its_patch_embedding():
    """Its attention's (N, heads, tokens, dim) tensors were named as the last feature map:
    'blocks.11.attn.k_norm' (3, 17, 64)."""
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=10, depth=2).eval()
    with pytest.raises(ValueError, match=NOT_GAP_LINEAR) as error:
        gap_linear_head(vit, torch.randn(1, 3, 64, 64))
    assert error.match(r"after its last feature map 'patch_embed.proj' \(192, 4, 4\) it runs")


def test_a_timm_mobilenetv3_conv_head_after_the_pooling_is_named(images):
    """Its head pools, then runs a 1x1 conv and an activation: the activation's 1x1 output was
    taken for the pooling, and the message asked for larger probes, which cannot help."""
    import timm

    model = timm.create_model("mobilenetv3_small_050", num_classes=10).eval()
    with pytest.raises(ValueError, match=NOT_GAP_LINEAR) as error:
        gap_linear_head(model, images[:1])
    assert error.match(r"it runs AdaptiveAvgPool2d -> Identity -> Conv2d -> ")
    assert "1x1" not in str(error.value)


def test_a_resnet_on_probes_too_small_for_its_head_is_told_so(resnet18, images):
    """At 32 pixels resnet18's layer4 is 1x1: its head is GAP + linear, but a map would be one
    cell, which the message says instead of calling the head something else."""
    with pytest.raises(
        ValueError,
        match=r"1x1 at the probes' size from 'layer4.0.conv1' "
        r"\(512, 1, 1\) on, before its linear head: .* a single cell",
    ):
        class_activation_map(resnet18, images[:, :, :32, :32])
    class_activation_map(resnet18, images)  # at 64 pixels, a 2x2 map


class PixelClassifier(nn.Module):
    """An identity 1x1 conv, global average pooling, one linear layer: the CAM of class t is
    ``W[t, 0] * x_0 + W[t, 1] * x_1``, known exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(2, 2, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2, 3)
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(2)[:, :, None, None])
            self.head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.5, -1.0]]))
            self.head.bias.copy_(torch.tensor([0.25, -1.0, 4.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


def test_the_map_of_a_linear_model_is_known_exactly():
    images = torch.tensor([[[[1.0, -2.0], [0.5, 4.0]], [[0.0, 1.0], [-3.0, 2.0]]]])
    images = torch.cat([images, images.flip(-1)])
    model = PixelClassifier().eval()
    assert gap_linear_head(model, images[:1]) == GapLinearHead("features", "head", False)
    maps, logits = class_activation_map(model, images, targets=[2, 1])
    assert torch.equal(maps[0], 0.5 * images[0, 0] - images[0, 1])
    assert torch.equal(maps[1], 2.0 * images[1, 1])
    assert torch.equal(logits, model(images))


class Bfloat16Linear(nn.Linear):
    """A linear layer computed in bfloat16, as under torch.set_float32_matmul_precision("medium")
    on a GPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.bfloat16(), self.weight.bfloat16(), self.bias.bfloat16()).float()


def test_a_head_computed_in_low_precision_is_still_found(images):
    model = torchvision_model("resnet18")
    model.fc = Bfloat16Linear(512, 10)
    assert gap_linear_head(model, images[:1]) == GapLinearHead("layer4", "fc", False)


def test_a_given_layer_and_classifier_take_one_forward(resnet18, images):
    calls = []
    handle = resnet18.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    try:
        maps, _ = class_activation_map(resnet18, images, 3, resnet18.layer4, resnet18.fc)
        found, _ = class_activation_map(resnet18, images, 3)
    finally:
        handle.remove()
    assert calls == [3, 1, 3]  # found: the output shapes from one image, then the one forward
    assert torch.equal(maps, found)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"layer": "layer3"},
            r"the global average of layer 'layer3' \(256, 4, 4\) does not give the model's 10 "
            r"scores through the nn.Linear 'fc' \(512 -> 10\).*use Grad-CAM",
        ),
        ({"layer": "layer4", "classifier": "layer4.1.conv1"}, "`classifier` 'layer4.1.conv1' is"),
        ({"layer": "layer5"}, r"unknown layer 'layer5'; closest valid names: 'layer4'"),
        ({"layer": "fc"}, r"layer 'fc' \(Linear\) returned shape \(3, 10\); expected a 4-D"),
        ({"targets": 10}, r"`targets` must lie in \[0, 10\)"),
        ({"targets": [1, 2]}, r"`targets` must have shape \(3,\), got \(2,\)"),
    ],
)
def test_bad_arguments(kwargs, message, resnet18, images):
    with pytest.raises(ValueError, match=message):
        class_activation_map(resnet18, images, **kwargs)


def test_bad_images(resnet18, images):
    with pytest.raises(ValueError, match="are on meta but the model is on cpu"):
        class_activation_map(resnet18, images.to("meta"))
    with pytest.raises(ValueError, match=r"must have shape \(N, C, H, W\) with N >= 1"):
        class_activation_map(resnet18, images[0])
    with pytest.raises(ValueError, match="are on meta but the model is on cpu"):
        gap_linear_head(resnet18, images.to("meta"))


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode, torch.enable_grad])
def test_untouched_under_no_grad_and_inference_mode(context, images):
    model = TinyCNN().eval()
    flags = train_flags(model)
    expected, _ = class_activation_map(model, images, 4, layer="relu2", classifier="head")
    with context():
        inference_images = images.clone()
        maps, logits = class_activation_map(model, inference_images, 4)
    assert torch.equal(maps, expected)
    assert not maps.requires_grad
    assert not logits.requires_grad
    assert_untouched(model, flags)


def test_autocast_is_off_inside(resnet18, images):
    expected, _ = class_activation_map(resnet18, images, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps, logits = class_activation_map(resnet18, images, 1)
    assert maps.dtype == logits.dtype == torch.float32
    assert torch.equal(maps, expected)


def test_hooks_are_removed_when_the_forward_fails(resnet18, images):
    def broken(x):
        resnet18(x)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        class_activation_map(resnet18, images, layer="layer4", forward=broken)
    assert_untouched(resnet18, train_flags(resnet18))


class WithEMACopy(nn.Module):
    """A model and, defined after it, an EMA copy (equal to it at fit start) that the forward
    does not run."""

    def __init__(self) -> None:
        super().__init__()
        self.model = TinyCNN()
        self.ema = torch.optim.swa_utils.AveragedModel(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def test_the_head_is_one_the_forward_runs():
    """A user's EMA copy's head, defined last and equal to the model's at fit start, was read
    as the head; the sanity score re-initialized the model's, and CAM failed."""
    model = WithEMACopy().eval()
    head = gap_linear_head(model, torch.randn(1, 3, 32, 32))
    assert head == GapLinearHead("model.relu2", "model.head", False)
