"""LIME against the lime package (same masks), scikit-learn's Ridge, and a model whose answer is
known."""

import numpy as np
import pytest
import torch
from lime.lime_image import LimeImageExplainer
from sklearn.linear_model import Ridge
from torch import nn

from lightning_viz.functional.lime import (
    _weighted_ridge,
    grid_segments,
    lime,
    slic_segments,
)
from lightning_viz.testing import TinyCNN
from tests.helpers import assert_untouched, hook_count, train_flags


def masks_of(image_index: int, samples: int, segments: int, seed: int = 0) -> torch.Tensor:
    """The masks lime() draws for one image, by its documented recipe."""
    generator = torch.Generator().manual_seed(seed + image_index)
    masks = (torch.rand(samples, segments, generator=generator) < 0.5).float()
    masks[0] = 1
    return masks


class Replay(np.random.RandomState):
    """A numpy random state whose draw of masks returns the given ones."""

    def __init__(self, masks: np.ndarray) -> None:
        super().__init__(0)
        self.masks = masks

    def randint(self, low, high=None, size=None, dtype=int):
        return self.masks.reshape(-1).astype(int) if size is not None else 0


@pytest.mark.parametrize(
    ("model_name", "image_index"), [("tiny", 0), ("tiny", 2), ("vgg11", 1), ("resnet18", 2)]
)
def test_lime_matches_the_lime_package_for_the_same_masks(request, model_name, images, image_index):
    model = request.getfixturevalue(model_name)
    segments = grid_segments((64, 64), 4)
    ours = lime(model, images, segments, targets=torch.tensor([1, 4, 9]), samples=64, seed=5)
    masks = masks_of(image_index, 64, 16, seed=5).numpy()
    explainer = LimeImageExplainer(random_state=Replay(masks))

    def probabilities(batch: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(batch, dtype=torch.float32).permute(0, 3, 1, 2)
        with torch.no_grad():
            return model(x).softmax(dim=1).numpy()

    target = [1, 4, 9][image_index]
    explanation = explainer.explain_instance(
        images[image_index].permute(1, 2, 0).double().numpy(),
        probabilities,
        labels=(target,),
        hide_color=0,
        top_labels=None,
        num_samples=64,
        segmentation_fn=lambda _: segments.numpy(),
        random_seed=0,
        batch_size=64,
    )
    expected = torch.zeros(16)
    for feature, weight in explanation.local_exp[target]:
        expected[feature] = weight
    assert expected.abs().max() > 0
    assert torch.allclose(ours.weights[image_index], expected, atol=1e-5)
    assert ours.intercept[image_index].item() == pytest.approx(
        explanation.intercept[target], abs=1e-5
    )
    assert ours.score[image_index].item() == pytest.approx(explanation.score, abs=1e-5)
    assert torch.equal(ours.maps[image_index], ours.weights[image_index][segments])


def test_weighted_ridge_is_scikit_learns():
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 50, 7, generator=generator) < 0.5).float()
    y = torch.rand(2, 50, generator=generator)
    w = torch.rand(2, 50, generator=generator)
    coefficients, intercept, score = _weighted_ridge(x, y, w, penalty=0.7)
    for i in range(2):
        ridge = Ridge(alpha=0.7).fit(x[i].numpy(), y[i].numpy(), sample_weight=w[i].numpy())
        assert np.allclose(coefficients[i].numpy(), ridge.coef_, atol=1e-5)
        assert intercept[i].item() == pytest.approx(ridge.intercept_, abs=1e-5)
        expected_score = ridge.score(x[i].numpy(), y[i].numpy(), sample_weight=w[i].numpy())
        assert score[i].item() == pytest.approx(expected_score, abs=1e-5)


class LinearProbability(nn.Module):
    """Class 1's probability is ``0.1 + sum_s v_s * mean(x over segment s)``: with hidden
    segments at 0, LIME's surrogate is exact and a segment's weight is ``v_s`` times its mean."""

    def __init__(self, segments: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        one_hot = nn.functional.one_hot(segments.flatten(), len(values)).float()
        self.register_buffer("pool", one_hot / one_hot.sum(dim=0))
        self.register_buffer("values", values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means = x.mean(dim=1).flatten(1) @ self.pool  # (N, S) segment means
        p = 0.1 + means @ self.values
        return torch.stack([1 - p, p], dim=1).log()  # log-probabilities: softmax gives p back


def test_a_linear_model_over_segments_gets_its_true_weights():
    segments = grid_segments((12, 12), 3)
    values = torch.linspace(-0.08, 0.08, 9)
    images = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    model = LinearProbability(segments, values)
    explanation = lime(model, images, segments, targets=1, samples=200, ridge=1e-9)
    means = images.mean(dim=1).flatten(1) @ model.pool
    assert torch.allclose(explanation.weights, values * means, atol=1e-5)
    assert torch.allclose(explanation.intercept, torch.full((2,), 0.1), atol=1e-5)
    assert explanation.score.min() > 0.9999


def test_a_probability_that_hiding_segments_does_not_move_has_no_r2():
    # a saturated softmax: every variant scores 1.0, and 1 - 0 / 0 read as a perfect fit
    segments = grid_segments((12, 12), 3)
    images = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    saturated = LinearProbability(segments, torch.zeros(9))
    explanation = lime(saturated, images, segments, targets=1, samples=50)
    assert torch.isnan(explanation.score).all()
    assert (explanation.weights.abs() < 1e-6).all()


def test_each_image_is_seeded_by_its_index_only(tiny, images):
    segments = grid_segments((64, 64), 4)
    state = torch.random.get_rng_state()
    together = lime(tiny, images, segments, samples=32, seed=3)
    alone = lime(tiny, images[2:], segments, samples=32, seed=5)
    assert torch.allclose(together.weights[2], alone.weights[0], atol=1e-6)
    assert torch.equal(torch.random.get_rng_state(), state)
    other = lime(tiny, images, segments, samples=32, seed=4)
    assert not torch.allclose(other.weights[0], together.weights[0])


def test_grid_and_slic_segments():
    grid = grid_segments((10, 7), (2, 3))
    assert grid.shape == (10, 7)
    assert grid[0].tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert grid[:, 0].tolist() == [0] * 5 + [3] * 5
    display = torch.zeros(2, 3, 32, 32)
    display[:, :, :, 16:] = 1  # two flat halves: SLIC cuts along the edge
    labels = slic_segments(display, segments=8)
    assert labels.shape == (2, 32, 32)
    assert labels.min() == 0
    assert labels.dtype == torch.long
    left, right = set(labels[0, :, :16].unique().tolist()), set(labels[0, :, 16:].unique().tolist())
    assert not left & right


def test_per_image_segment_maps_with_different_counts(tiny, images):
    segments = torch.stack(
        [grid_segments((64, 64), 2), grid_segments((64, 64), 4), grid_segments((64, 64), 3)]
    )
    explanation = lime(tiny, images, segments, samples=16)
    assert explanation.weights.shape == (3, 16)
    assert (explanation.weights[0, 4:] == 0).all()
    assert (explanation.weights[2, 9:] == 0).all()


def test_no_hook_no_grad_no_flag_changed_and_works_under_inference_mode(tiny, images):
    flags, hooks = train_flags(tiny), hook_count(tiny)
    with torch.inference_mode():
        explanation = lime(tiny, images, grid_segments((64, 64), 4), samples=8)
    assert explanation.maps.shape == (3, 64, 64)
    assert explanation.maps.dtype == torch.float32
    assert_untouched(tiny, flags)
    assert hook_count(tiny) == hooks
    assert all(p.grad is None for p in tiny.parameters())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"segments": torch.zeros(32, 32, dtype=torch.long)}, r"`segments` must be \(H, W\)"),
        ({"segments": torch.zeros(64, 64)}, "integer labels from 0"),
        ({"segments": torch.zeros(2, 64, 64, dtype=torch.long)}, "2 maps for 3 images"),
        ({"samples": 1}, "`samples` must be a >= 2 integer"),
        ({"keep": 1.5}, r"`keep` must be a number in \[0, 1\]"),
        ({"ridge": -1.0}, "`ridge` must be a non-negative number"),
        ({"targets": 10}, r"`targets` must lie in \[0, 10\)"),
    ],
)
def test_bad_arguments_say_what_is_wrong(images, arguments, message):
    arguments = {"segments": grid_segments((64, 64), 4), **arguments}
    with pytest.raises(ValueError, match=message):
        lime(TinyCNN().eval(), images, **arguments)


def test_cells_finer_than_the_image_fail():
    with pytest.raises(ValueError, match="finer than the images"):
        grid_segments((4, 4), 5)
