import pytest
import torch
import torchvision
from captum.attr import LayerGradCam
from torch import nn

from lightning_viz.functional import class_scores, grad_cam
from lightning_viz.functional.gradcam import (
    class_maps,
    default_gradcam_layer,
    pixel_shares,
    segmented_classes,
)
from lightning_viz.testing import TinyCNN, tiny_vit
from tests.helpers import (
    RegionClassifier,
    TinyUNet,
    assert_untouched,
    relative_error,
    train_flags,
)


def captum_grad_cam(model, inputs, layer_name, targets):
    layer = dict(model.named_modules())[layer_name]
    cam = LayerGradCam(model, layer).attribute(inputs, target=targets, relu_attributions=True)
    return cam[:, 0]


@pytest.mark.parametrize(
    ("model_name", "layers"),
    [
        # features.0 is a conv followed by ReLU(inplace=True)
        ("vgg11", ["features.0", "features.8", "features.18"]),
        ("resnet18", ["layer1.0.conv1", "layer3", "layer4"]),
    ],
)
def test_grad_cam_matches_captum(request, model_name, layers, images):
    model = request.getfixturevalue(model_name)
    targets = torch.tensor([1, 4, 9])
    maps = grad_cam(model, images, layers, targets)
    assert list(maps) == layers
    for name in layers:
        expected = captum_grad_cam(model, images, name, targets)
        assert maps[name].dtype == torch.float32
        assert maps[name].shape == expected.shape
        assert expected.abs().max() > 0
        assert relative_error(maps[name], expected) < 1e-5


def test_default_target_is_the_predicted_class(vgg11, images):
    predicted = vgg11(images).argmax(dim=1)
    maps = grad_cam(vgg11, images, "features.18")
    expected = captum_grad_cam(vgg11, images, "features.18", predicted)
    assert relative_error(maps["features.18"], expected) < 1e-5


def test_other_targets_give_other_maps(vgg11, images):
    first = grad_cam(vgg11, images, "features.18", 0)["features.18"]
    second = grad_cam(vgg11, images, "features.18", 5)["features.18"]
    assert not torch.allclose(first, second)


def test_in_place_relu_after_the_layer_does_not_rewrite_the_activation(images):
    model = TinyCNN().eval()
    conv_output = model.bn1(model.conv1(images))
    assert (conv_output < 0).any()
    with torch.no_grad():
        logits = model(images)
    maps = grad_cam(model, images, model.bn1, targets=logits.argmax(1))
    expected = captum_grad_cam(model, images, "bn1", logits.argmax(1))
    assert relative_error(maps["bn1"], expected) < 1e-5


def test_one_forward_for_all_layers(vgg11, images):
    calls = []
    handle = vgg11.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        grad_cam(vgg11, images, ["features.0", "features.8", "features.18"])
    finally:
        handle.remove()
    assert len(calls) == 1


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_works_under_no_grad_and_inference_mode(context, vgg11, images):
    expected = grad_cam(vgg11, images, "features.18")["features.18"]
    with context():
        inference_images = images.clone()
        maps = grad_cam(vgg11, inference_images, "features.18")
    assert torch.equal(maps["features.18"], expected)


def test_leaves_model_untouched_also_in_inference_mode(images):
    model = TinyCNN().eval()
    model.conv2.train()
    flags = train_flags(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        grad_cam(model, images, ["conv1", "conv2"])
    assert_untouched(model, flags)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_hooks_removed_when_the_model_raises(images):
    model = TinyCNN().eval()
    with pytest.raises(RuntimeError):
        grad_cam(model, images[:, :2], ["conv2"])
    assert_untouched(model, train_flags(model))


class FrozenStem(TinyCNN):
    """A fine-tune's stem, run under torch.no_grad() inside the forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = self.pool(self.relu1(self.bn1(self.conv1(x))))
        return self.head(self.relu2(self.conv2(x)).mean(dim=(2, 3)))


def test_a_layer_run_without_autograd_is_named(images):
    """torch said only "One of the differentiated Tensors does not require grad"."""
    model = FrozenStem().eval()
    with pytest.raises(RuntimeError, match=r"layer 'conv1' \(Conv2d\) ran without autograd"):
        grad_cam(model, images, ["conv1", "conv2"])
    assert grad_cam(model, images, ["conv2"])["conv2"].shape == (3, 32, 32)


def test_unknown_layer_lists_the_closest_names(vgg11, images):
    with pytest.raises(ValueError, match=r"unknown layer 'feature.8'.*'features.8'"):
        grad_cam(vgg11, images, "feature.8")


def test_layer_with_non_4d_output_is_rejected(vgg11, images):
    with pytest.raises(ValueError, match=r"'classifier.0'.*\(3, 4096\).*4-D"):
        grad_cam(vgg11, images, "classifier.0")
    assert_untouched(vgg11, train_flags(vgg11))


def test_module_outside_the_model_is_rejected(vgg11, images):
    with pytest.raises(ValueError, match="not a submodule"):
        grad_cam(vgg11, images, nn.Conv2d(3, 3, 3))


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (torch.tensor([0, 10, 2]), r"\[0, 10\).*10"),
        (torch.tensor([0, 1]), r"shape \(3,\)"),
        (-1, "0, 10"),
    ],
)
def test_targets_out_of_range(vgg11, images, targets, message):
    with pytest.raises(ValueError, match=message):
        grad_cam(vgg11, images, "features.18", targets)


def test_inputs_on_another_device(vgg11):
    with pytest.raises(ValueError, match="on meta but the model is on cpu"):
        grad_cam(vgg11, torch.empty(1, 3, 64, 64, device="meta"), "features.18")


class TinySegmenter(nn.Module):
    """Conv features and a 1x1 classifier per pixel, upsampled: a segmentation net in small."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.classifier = nn.Conv2d(8, classes, 1)

    def forward(self, x):
        return {"out": self.classifier(self.features(x)), "aux": x.mean()}


def test_class_scores_reads_the_common_output_shapes():
    logits = torch.randn(2, 5)
    assert class_scores(logits) is logits
    assert torch.equal(class_scores((logits, torch.ones(1))), logits)
    assert torch.equal(class_scores({"logits": logits, "aux": logits + 1}), logits)
    assert torch.equal(class_scores({"whatever": logits}), logits)
    assert class_scores(torch.randn(4)).shape == (4, 1)
    maps = torch.randn(2, 3, 4, 4)
    scores = class_scores(maps)
    predicted = maps.argmax(dim=1)
    for n in range(2):
        for c in range(3):
            assert scores[n, c] == pytest.approx(maps[n, c][predicted[n] == c].sum().item())
    with pytest.raises(ValueError, match="keys \\['a', 'b'\\]"):
        class_scores({"a": logits, "b": logits})


def test_segmentation_grad_cam_matches_captum_on_the_predicted_mask(images):
    """The score is pytorch-grad-cam's SemanticSegmentationTarget on the predicted mask;
    captum's LayerGradCam on that score is the oracle."""
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    model = TinySegmenter().eval()
    target = 1  # predicted on about a quarter of the pixels
    ours = grad_cam(model, images, "features.2", targets=target)["features.2"]
    with torch.no_grad():
        masks = (model(images)["out"].argmax(dim=1) == target).float()
    assert 0 < masks.mean() < 1

    def segment_score(x):
        out = model(x)["out"]
        pairs = zip(out, masks, strict=True)
        return torch.stack([SemanticSegmentationTarget(target, m.numpy())(o) for o, m in pairs])

    expected = LayerGradCam(segment_score, model.features[2]).attribute(images)
    assert relative_error(ours, expected[:, 0].relu()) < 1e-5


def test_vit_tokens_are_read_on_their_grid_as_pytorch_grad_cam_reshapes_them():
    vit = tiny_vit(num_layers=3).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    layer = "encoder.layers.encoder_layer_1"
    ours = grad_cam(vit, images, layer, targets=4)[layer]
    assert ours.shape == (2, 4, 4)

    def reshape_transform(tensor, height=4, width=4):  # pytorch-grad-cam's ViT recipe
        result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    captured = {}
    module = vit.encoder.layers.encoder_layer_1
    handle = module.register_forward_hook(lambda m, a, o: captured.update(tokens=o))
    score = vit(images.clone().requires_grad_(True))[:, 4].sum()
    handle.remove()
    (gradient,) = torch.autograd.grad(score, captured["tokens"])
    activation, gradient = reshape_transform(captured["tokens"]), reshape_transform(gradient)
    expected = torch.relu((gradient.mean(dim=(2, 3), keepdim=True) * activation).sum(dim=1))
    assert expected.abs().max() > 0
    assert relative_error(ours, expected.detach()) < 1e-5


def test_default_layer_of_a_vit_is_the_last_block_before_its_attention():
    vit = tiny_vit(num_layers=3).eval()
    images = torch.randn(1, 3, 32, 32)
    assert default_gradcam_layer(vit, images) == "encoder.layers.encoder_layer_2.ln_1"
    torch.nn.init.zeros_(vit.heads.head.weight)  # as torchvision initializes it
    assert default_gradcam_layer(vit, images) == "encoder.layers.encoder_layer_2.ln_1"


def test_default_layer_of_a_timm_vit_is_its_last_blocks_first_norm():
    """timm's attention has its q|k|v projection as a module of its own, three times the
    residual stream's width: it was the default, and a user's ViT showed vivid frames."""
    timm = pytest.importorskip("timm")
    vit = timm.create_model(
        "vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=4, depth=2, in_chans=1
    ).eval()
    assert default_gradcam_layer(vit, torch.randn(2, 1, 32, 32)) == "blocks.1.norm1"


def test_forward_runs_the_model_another_way_with_layers_named_from_the_model(tiny, images):
    holder = nn.Module()  # no forward(): a LightningModule whose training_step calls its parts
    holder.net = tiny
    through = grad_cam(holder, images, "net.conv2", forward=holder.net)["net.conv2"]
    direct = grad_cam(tiny, images, "conv2")["conv2"]
    assert torch.equal(through, direct)


def test_default_layer_of_a_segmentation_net_is_before_its_class_maps():
    # the head's (and a wrapper's) maps are the prediction itself: Grad-CAM of them redraws it
    unet = TinyUNet().eval()
    images = torch.randn(2, 3, 32, 32)
    assert default_gradcam_layer(unet, images) == "dec"
    assert default_gradcam_layer(nn.Sequential(unet), images) == "0.dec"


def test_default_layer_of_a_segmentation_net_is_on_the_path_to_its_scores():
    # torchvision runs the auxiliary head last: its maps do not reach the "out" scores
    fcn = torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=5, aux_loss=True
    ).eval()
    assert default_gradcam_layer(fcn, torch.randn(1, 3, 64, 64)) == "classifier.3"


def test_pixel_shares_and_the_class_a_segmentation_is_about():
    maps = torch.zeros(3, 3, 2, 2)
    maps[:, 0] = 1.0  # background everywhere ...
    maps[0, 1, 0, 0] = 2.0  # ... but one pixel of class 1 in image 0
    maps[1, 2, :, 1] = 2.0  # and two of class 2 in image 1; image 2 shows only background
    shares = pixel_shares(maps)
    assert shares.tolist() == [[0.75, 0.25, 0.0], [0.5, 0.0, 0.5], [1.0, 0.0, 0.0]]
    assert segmented_classes(shares).tolist() == [1, 2, 0]
    assert class_maps({"out": maps, "aux": maps[:, :1]}) is maps
    assert class_maps((maps, 1)) is maps
    assert class_maps(torch.zeros(3, 10)) is None
    assert class_maps("not scores") is None


def test_default_layer_is_a_map_per_image_not_per_region_proposal(images):
    """A detector's default read its ROI pooling's (1161, C, 7, 7) maps, one per proposal, and
    failed at every epoch ("maps of shapes (1161, 7, 7) and (1152, 7, 7) differ")."""
    model = RegionClassifier().eval()
    assert default_gradcam_layer(model, images) == "backbone"
    assert default_gradcam_layer(model, images[:1]) == "backbone"
