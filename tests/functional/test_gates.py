import pytest
import torchvision
from torch import nn

from lightning_viz.functional.alert_rules import FilterThresholds, filter_findings
from lightning_viz.functional.gates import scale_gates


def watched(model: nn.Module) -> dict[str, nn.Module]:
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d) and min(module.kernel_size) >= 2
    }


def test_a_zero_init_residual_resnet_gates_every_block_conv_and_not_the_stem():
    model = torchvision.models.resnet18(zero_init_residual=True)
    gates = scale_gates(model, watched(model))
    assert sorted(gates) == sorted(n for n in watched(model) if n != "conv1")
    assert gates["layer1.0.conv1"] == gates["layer1.0.conv2"] == "layer1.0.bn2.weight"
    assert gates["layer4.1.conv2"] == "layer4.1.bn2.weight"


def test_the_usual_init_gates_nothing():
    model = torchvision.models.resnet18()
    assert scale_gates(model, watched(model)) == {}


@pytest.mark.parametrize(
    ("name", "free", "scale"),
    [
        # the last BatchNorm sits in a conv-norm-act unit, two modules below the block; the
        # 1x1 shortcut conv, registered after it, is not watched
        ("regnetx_002", ["stem.conv"], "s1.b1.conv3.bn.weight"),
        # the layer scale is the block's own parameter; the downsampling convs sit between
        # blocks
        (
            "convnext_atto",
            ["stem.0", "stages.1.downsample.1", "stages.2.downsample.1", "stages.3.downsample.1"],
            "stages.0.blocks.0.gamma",
        ),
        # a layer scale in a block with no watched conv, three modules below the nearest that
        # holds one (the downsampling convs of later stages) gates nothing
        ("poolformer_s12", None, None),
    ],
)
def test_timm_blocks(name, free, scale):
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False, num_classes=3)
    layers = watched(model)
    gates = scale_gates(model, layers)
    assert [n for n in layers if n not in gates] == (free or list(layers))
    if scale is not None:
        assert scale in gates.values()


def block(width: int, last_scale: float) -> nn.Module:
    unit = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width))
    nn.init.constant_(unit[1].weight, last_scale)
    return unit


def test_a_zero_scale_in_a_plain_chain_gates_nothing_and_a_frozen_one_neither():
    """A zero BatchNorm scale in a chain of convs stops every gradient above it: a fault, not a
    design the rules should spare. A frozen zero scale never opens."""
    chain = nn.Sequential(nn.Conv2d(3, 8, 3), block(8, 0.0)[0], block(8, 0.0)[1])
    assert scale_gates(chain, watched(chain)) == {}
    model = nn.Sequential(nn.Conv2d(3, 8, 3), block(8, 0.0), block(8, 1.0))
    assert scale_gates(model, watched(model)) == {"1.0": "1.1.weight"}
    model[1][1].weight.requires_grad_(False)
    assert scale_gates(model, watched(model)) == {}


def test_a_scale_above_1e_3_gates_nothing():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), block(8, 2e-3), block(8, 1.0))
    assert scale_gates(model, watched(model)) == {}
    nn.init.constant_(model[1][1].weight, 9e-4)
    assert scale_gates(model, watched(model)) == {"1.0": "1.1.weight"}


def test_a_gated_layer_is_not_read_by_not_learning():
    values = {
        "drift": 1e-4,
        "learned": 1e-4,
        "norm_ratio": 1.0,
        "step_cosine": 1.0,
        "update_noise": 1.0,
        "finite": 1.0,
    }
    kinds = {
        gated: {
            f.kind
            for f in filter_findings(
                "layer", values, 100, FilterThresholds(), network_learned=0.5, gated=gated
            )
            if f.firing
        }
        for gated in (False, True)
    }
    assert kinds == {False: {"not_learning"}, True: set()}


def test_a_lazy_modules_shapeless_parameters_are_passed_over():
    """A GAN built of lazy modules aborted fit(): their parameters have no shape until the first
    forward."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.LazyConv2d(8, 3), nn.LazyBatchNorm2d())
    assert scale_gates(model, watched(model)) == {}
