import itertools
import warnings

import pytest
import torch
from captum.attr import Deconvolution, GuidedBackprop
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint

from lightning_viz.functional import (
    guided_backprop,
    project_layers,
    project_to_input,
    relu_rule,
    top_channels,
)
from lightning_viz.functional.projection import ruleless_activations
from lightning_viz.testing import ChannelEnergy, TinyCNN, TinyFunctionalCNN
from tests.helpers import assert_untouched, relative_error, train_flags

CAPTUM = {"deconvnet": Deconvolution, "guided": GuidedBackprop}


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
@pytest.mark.parametrize(
    ("model_name", "layer"),
    [
        ("vgg11", "features.3"),  # conv followed by an in-place ReLU
        ("vgg11", "features.13"),
        ("resnet18", "layer2.0.conv1"),  # after blocks that call one ReLU module twice
        ("resnet18", "layer3"),
    ],
)
def test_projection_matches_captum(request, model_name, layer, rule, images):
    model = request.getfixturevalue(model_name)
    channels = torch.tensor([[3, 5], [7, 1], [0, 2]])
    projections = project_to_input(model, images, layer, channels, rule=rule)
    assert projections.shape == (3, 2, 3, 64, 64)
    for k in range(2):
        expected = CAPTUM[rule](ChannelEnergy(model, layer, channels[:, k])).attribute(images)
        assert expected.abs().max() > 0
        assert relative_error(projections[:, k], expected) < 1e-5


def test_rules_differ_and_gradient_is_plain_backprop(vgg11, images):
    channels = torch.tensor([[3], [7], [0]])
    layer = "features.8"
    by_rule = {
        r: project_to_input(vgg11, images, layer, channels, rule=r)
        for r in ("deconvnet", "guided", "gradient")
    }
    plain = images.clone().requires_grad_(True)
    energy = ChannelEnergy(vgg11, layer, channels[:, 0])(plain).sum()
    (expected,) = torch.autograd.grad(energy, plain)
    assert relative_error(by_rule["gradient"][:, 0], expected) < 1e-5
    assert not torch.allclose(by_rule["deconvnet"], by_rule["gradient"])
    assert not torch.allclose(by_rule["guided"], by_rule["deconvnet"])


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
def test_functional_relu_model_projects_like_its_module_twin(rule, images):
    modules = TinyCNN().eval()
    functional = TinyFunctionalCNN().eval()
    functional.load_state_dict(modules.state_dict())
    channels = torch.tensor([[1, 4], [0, 15], [7, 7]])
    expected = project_to_input(modules, images, "conv2", channels, rule=rule)
    actual = project_to_input(functional, images, "conv2", channels, rule=rule)
    assert torch.equal(actual, expected)


class CheckpointedCNN(TinyCNN):
    """TinyCNN with its blocks under non-reentrant activation checkpointing, always on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = lambda x: self.pool(self.relu1(self.bn1(self.conv1(x))))  # noqa: E731
        x = checkpoint(first, x, use_reentrant=False)
        x = checkpoint(lambda x: self.relu2(self.conv2(x)), x, use_reentrant=False)
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_a_checkpointed_model_projects_like_its_plain_twin(rule, images):
    """Checkpointing recomputes a block's forward in the backward, with plain ReLUs, and checks
    that they save what the forward saved: deconvnet's ReLU saved nothing, and its projection
    failed (CheckpointError: recomputed values have different metadata)."""
    plain = TinyCNN().eval()
    checkpointed = CheckpointedCNN().eval()
    checkpointed.load_state_dict(plain.state_dict())
    channels = torch.tensor([[1, 4], [0, 15], [7, 7]])
    expected = project_to_input(plain, images, "conv2", channels, rule=rule)
    assert torch.allclose(
        project_to_input(checkpointed, images, "conv2", channels, rule=rule), expected
    )
    if rule == "guided":
        expected = guided_backprop(plain, images, torch.tensor([1, 2, 3]))
        assert torch.allclose(
            guided_backprop(checkpointed, images, torch.tensor([1, 2, 3])), expected
        )


def test_in_place_tensor_relu_keeps_its_forward_semantics(images):
    class InPlaceMethod(TinyCNN):
        def forward(self, x):
            x = self.conv1(x)
            x.relu_()
            return self.head(self.conv2(self.pool(x)).mean(dim=(2, 3)))

    model = InPlaceMethod().eval()
    with torch.no_grad():
        expected_logits = model(images)
    with torch.no_grad(), relu_rule("deconvnet"):
        logits = model(images)
    assert torch.equal(logits, expected_logits)


def test_seed_max_starts_from_the_single_strongest_activation(images):
    model = TinyCNN().eval()
    channels = torch.tensor([[2], [5], [9]])
    projections = project_to_input(model, images, "conv2", channels, rule="gradient", seed="max")
    x = images.clone().requires_grad_(True)
    conv2 = model.conv2(model.pool(model.relu1(model.bn1(model.conv1(x)))))
    chosen = conv2[torch.arange(3), channels[:, 0]].flatten(1)
    peak = chosen.max(dim=1).values
    (expected,) = torch.autograd.grad((peak * peak.detach()).sum(), x)
    assert relative_error(projections[:, 0], expected) < 1e-5


def test_layers_share_one_forward_that_stops_at_the_deepest(vgg11, images):
    calls = {"conv": 0, "classifier": 0}
    handles = [
        vgg11.features[0].register_forward_pre_hook(
            lambda m, a: calls.__setitem__("conv", calls["conv"] + 1)
        ),
        vgg11.classifier.register_forward_pre_hook(
            lambda m, a: calls.__setitem__("classifier", calls["classifier"] + 1)
        ),
    ]
    channels = torch.tensor([[1, 2], [3, 4], [5, 6]])
    try:
        together = project_layers(vgg11, images, {"features.13": channels, "features.3": channels})
    finally:
        for handle in handles:
            handle.remove()
    assert calls == {"conv": 1, "classifier": 0}
    for layer in ("features.3", "features.13"):
        assert torch.equal(together[layer].images, project_to_input(vgg11, images, layer, channels))
        assert torch.equal(together[layer].channels, channels)


def test_ruleless_activations_are_named_in_one_warning(images):
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Conv2d(4, 4, 3), nn.GELU(), nn.ReLU(), nn.Conv2d(4, 4, 3)
    )
    with pytest.warns(UserWarning, match=r"GELU, SiLU have no deconvnet rule") as record:
        project_to_input(model, images, "5", torch.zeros(3, 1, dtype=torch.long))
    assert len(record) == 1


def test_ruleless_activations_are_those_before_the_deepest_layer(images):
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Conv2d(4, 4, 3), nn.GELU(), nn.ReLU(), nn.Conv2d(4, 4, 3)
    )
    assert ruleless_activations(model, images, ["5"]) == ["GELU", "SiLU"]
    assert ruleless_activations(model, images, ["2", "0"]) == ["SiLU"]
    assert ruleless_activations(model, images, ["0"]) == []
    assert ruleless_activations(model, images, ["5"], rule="gradient") == []


def test_relu_models_do_not_warn(resnet18, images):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        project_to_input(resnet18, images, "layer4", torch.zeros(3, 2, dtype=torch.long))


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_untouched_under_no_grad_and_inference_mode(context, images):
    model = TinyCNN().eval()
    model.conv2.train()
    flags = train_flags(model)
    expected = project_to_input(model, images, "conv2", torch.ones(3, 2, dtype=torch.long))
    with context():
        actual = project_to_input(
            model, images.clone(), "conv2", torch.ones(3, 2, dtype=torch.long)
        )
    assert torch.equal(actual, expected)
    assert_untouched(model, flags)


def test_hooks_removed_when_the_model_raises(images):
    model = TinyCNN().eval()
    with pytest.raises(RuntimeError):
        project_to_input(model, images[:, :1], "conv2", torch.zeros(3, 1, dtype=torch.long))
    assert_untouched(model, train_flags(model))


@pytest.mark.parametrize(
    ("channels", "message"),
    [
        (torch.tensor([[0], [16], [1]]), r"\[0, 16\).*16 channels.*0 to 16"),
        (torch.tensor([[0], [-2], [1]]), r"\[0, 16\).*-1 seeds nothing"),
        (torch.zeros(2, 1, dtype=torch.long), r"shape \(3, K\)"),
        (torch.zeros(3, 1), "integer"),
    ],
)
def test_channels_out_of_range_or_misshapen(channels, message, images):
    with pytest.raises(ValueError, match=message):
        project_to_input(TinyCNN().eval(), images, "conv2", channels)


def test_channel_minus_one_projects_nothing(images):
    model = TinyCNN().eval()
    full = project_to_input(model, images, "conv2", torch.tensor([[1, 4], [0, 15], [7, 7]]))
    holes = project_to_input(model, images, "conv2", torch.tensor([[1, -1], [-1, 15], [7, 7]]))
    assert torch.equal(holes[0, 1], torch.zeros_like(holes[0, 1]))
    assert torch.equal(holes[1, 0], torch.zeros_like(holes[1, 0]))
    assert torch.equal(holes[0, 0], full[0, 0])
    assert torch.equal(holes[2], full[2])


def test_bad_arguments(vgg11, images):
    channels = torch.zeros(3, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="`rule` must be one of"):
        project_to_input(vgg11, images, "features.3", channels, rule="deconv")
    with pytest.raises(ValueError, match="`seed` must be one of"):
        project_to_input(vgg11, images, "features.3", channels, seed="top")
    with pytest.raises(ValueError, match=r"unknown layer 'features3'.*'features.3'"):
        project_to_input(vgg11, images, "features3", channels)
    with pytest.raises(ValueError, match="4-D"):
        project_to_input(vgg11, images, "classifier.1", channels)
    with pytest.raises(ValueError, match="on meta but the model is on cpu"):
        project_to_input(vgg11, images.to("meta"), "features.3", channels)


def test_channels_can_be_chosen_from_the_same_forward(vgg11, images):
    chosen = project_layers(vgg11, images, {"features.8": lambda a: top_channels(a, 3)})
    with torch.no_grad():
        activation = vgg11.features[:9](images)
    expected = top_channels(activation, 3)
    assert torch.equal(chosen["features.8"].channels, expected)
    assert torch.equal(
        chosen["features.8"].images, project_to_input(vgg11, images, "features.8", expected)
    )


def test_top_channels_ranks_by_summed_activation():
    activations = torch.zeros(2, 4, 3, 3)
    activations[0, 2] = 1.0
    activations[0, 0, 0, 0] = 5.0
    activations[0, 3] = -1.0
    activations[1, 1, 1, 1] = 0.5
    assert top_channels(activations, 2).tolist()[0] == [2, 0]
    assert top_channels(activations, 1).tolist()[1] == [1]
    with pytest.raises(ValueError, match=r"\[1, 4\].*got 5"):
        top_channels(activations, 5)


class CountConvBackward(TorchDispatchMode):
    """Counts the conv backward kernels that run and their batch sizes (a batched-gradient
    backward falls back to one per seed)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.batch_sizes: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution_backward.default:
            self.calls += 1
            self.batch_sizes.append(args[0].shape[0])  # the gradient of the conv's output
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
@pytest.mark.parametrize("model_name", ["vgg11", "resnet18"])
def test_layers_of_different_widths_share_rows_and_match_one_pair_at_a_time(
    request, model_name, rule, images
):
    model = request.getfixturevalue(model_name)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    choice = {
        convs[1]: torch.tensor([[4, 2, 9], [0, -1, -1], [6, 3, -1]]),
        convs[-1]: torch.tensor([[3, -1], [7, 1], [-1, -1]]),  # rows of another length
    }
    together = project_layers(model, images, choice, rule=rule)
    for layer, channels in choice.items():
        assert torch.equal(together[layer].channels, channels)
        assert together[layer].images.shape == (*channels.shape, 3, 64, 64)
        for n, k in itertools.product(range(3), range(channels.shape[1])):
            projected = together[layer].images[n, k]
            if channels[n, k] < 0:
                assert projected.abs().max() == 0
                continue
            alone = project_to_input(
                model, images[n : n + 1], layer, channels[n : n + 1, k : k + 1], rule=rule
            )[0, 0]
            assert alone.abs().max() > 0
            assert relative_error(projected, alone) < 1e-5


def test_each_conv_backward_runs_once_per_layer_and_no_row_is_spent_on_minus_one(images):
    model = TinyCNN().eval()
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    channels = torch.tensor([[1, 2, -1, -1], [3, -1, -1, -1], [4, 5, 6, 7]])
    with CountConvBackward() as counter:
        project_layers(model, images, {convs[-1]: channels})
    assert counter.calls == len(convs)
    assert counter.batch_sizes == [int((channels >= 0).sum())] * len(convs)
