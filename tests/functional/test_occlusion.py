import pytest
import torch
from captum.attr import Occlusion
from torch import nn

from lightning_viz.functional.occlusion import occlusion, occlusion_windows
from lightning_viz.testing import TinyCNN
from tests.helpers import assert_untouched, relative_error, train_flags


@pytest.mark.parametrize(
    ("model_name", "window", "stride"),
    [("vgg11", 16, 12), ("resnet18", 8, 5), ("resnet18", (16, 8), (16, 6))],
)
def test_occlusion_matches_captum(request, model_name, window, stride, images):
    model = request.getfixturevalue(model_name)
    targets = torch.tensor([1, 4, 9])
    ours = occlusion(model, images, targets, window, stride, max_batch=100)
    window, stride = (window, window) if isinstance(window, int) else window, stride
    stride = (stride, stride) if isinstance(stride, int) else stride
    expected = Occlusion(lambda x: model(x).softmax(dim=1)).attribute(
        images,
        sliding_window_shapes=(3, *window),
        strides=(3, *stride),
        target=targets,
        perturbations_per_eval=64,
    )
    assert ours.shape == (3, 64, 64)
    assert ours.dtype == torch.float32
    assert expected.abs().max() > 0
    # captum's forwards are one image each, ours batched: float rounding only
    assert relative_error(ours, expected[:, 0]) < 1e-3


def test_raw_scores_and_a_baseline_match_captum(vgg11, images):
    ours = occlusion(vgg11, images, 3, window=16, stride=16, baseline=0.5, probabilities=False)
    expected = Occlusion(vgg11).attribute(
        images,
        sliding_window_shapes=(3, 16, 16),
        strides=(3, 16, 16),
        target=3,
        baselines=0.5,
        perturbations_per_eval=16,
    )
    assert relative_error(ours, expected[:, 0]) < 1e-3


def test_a_multi_label_models_sigmoid_matches_captum(resnet18, images):
    ours = occlusion(resnet18, images, 2, window=16, stride=16, probabilities="sigmoid")
    expected = Occlusion(lambda x: resnet18(x).sigmoid()).attribute(
        images, sliding_window_shapes=(3, 16, 16), strides=(3, 16, 16), target=2
    )
    assert expected.abs().max() > 0
    assert relative_error(ours, expected[:, 0]) < 1e-3
    with pytest.raises(ValueError, match="`probabilities` must be True, False or one of"):
        occlusion(resnet18, images, 2, window=16, stride=16, probabilities="sigmoids")


def test_windows_cover_every_pixel_and_are_cut_at_the_border():
    masks = occlusion_windows((10, 7), (4, 3), (3, 3))
    # rows start at 0, 3, 6 (the last cut to 6..9); columns at 0, 3, 6 (the last to 6)
    assert masks.shape == (9, 10, 7)
    assert masks.sum(dim=0).min() >= 1
    assert masks[-1].nonzero().min(dim=0).values.tolist() == [6, 6]
    assert masks[-1].sum() == 4 * 1


class Linear(nn.Module):
    """Scores that are a linear function of the pixels: the score drop of hiding a patch is the
    patch's weighted sum, known exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(2, 1, 8, 8))
        with torch.no_grad():
            self.weight[1, 0, 2:4, 4:6] = 1.0  # class 1 looks at one 2x2 spot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, None] * self.weight).sum(dim=(2, 3, 4))


def test_the_map_lights_up_where_the_evidence_is():
    images = torch.ones(1, 1, 8, 8)
    sensitivity = occlusion(Linear(), images, 1, window=2, stride=2, probabilities=False)
    expected = torch.zeros(8, 8)
    expected[2:4, 4:6] = 4.0  # hiding the spot drops the score by its sum
    assert torch.equal(sensitivity[0], expected)


def test_batches_do_not_change_the_result_and_uint8_images_stay_uint8(tiny):
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    seen = []

    def forward(x):
        seen.append(x.dtype)
        return tiny(x.float() / 255)

    small = occlusion(tiny, images, window=4, stride=4, forward=forward, max_batch=3)
    large = occlusion(tiny, images, window=4, stride=4, forward=forward)
    assert set(seen) == {torch.uint8}
    assert torch.allclose(small, large, atol=1e-6)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_untouched_under_no_grad_and_inference_mode(context, images):
    model = TinyCNN().eval()
    flags = train_flags(model)
    with context():
        result = occlusion(model, images, window=16, stride=16)
    assert result.isfinite().all()
    assert_untouched(model, flags)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 65}, r"`window` \(65, 65\) is larger than the images, \(64, 64\)"),
        ({"window": (4, 0)}, r"`window` must be a positive int or \(height, width\)"),
        ({"stride": 0}, "`stride` must be a positive int"),
        ({"max_batch": 0}, "`max_batch`"),
        ({"targets": 10, "window": 64}, r"must lie in \[0, \d+\)"),
    ],
)
def test_bad_arguments(kwargs, message, tiny, images):
    with pytest.raises(ValueError, match=message):
        occlusion(tiny, images, **kwargs)


def test_a_stride_longer_than_the_window_leaves_the_skipped_pixels_at_zero(tiny, images):
    sensitivity = occlusion(tiny, images, window=8, stride=16)
    assert sensitivity.isfinite().all()
    assert (sensitivity[:, 8:16] == 0).all()
    assert (sensitivity[:, :8] != 0).any()
