"""The saliency family against captum (same seeds, same draws) and against known answers."""

import numpy as np
import pytest
import torch
from captum.attr import GradientShap, IntegratedGradients, NoiseTunnel, Saliency
from torch import nn

from lightning_viz.functional.saliency import (
    expected_gradients,
    integrated_gradients,
    saliency,
    smooth_grad,
)
from tests.helpers import assert_untouched, hook_count, relative_error, train_flags

TARGETS = torch.tensor([1, 4, 9])


@pytest.mark.parametrize("model_name", ["vgg11", "resnet18"])
@pytest.mark.parametrize("absolute", [True, False])
def test_saliency_matches_captum(request, model_name, absolute, images):
    model = request.getfixturevalue(model_name)
    ours = saliency(model, images, TARGETS, absolute=absolute)
    expected = Saliency(model).attribute(images, target=TARGETS, abs=absolute)
    assert ours.shape == images.shape
    assert expected.abs().max() > 0
    assert relative_error(ours, expected) < 1e-5


@pytest.mark.parametrize("model_name", ["vgg11", "resnet18"])
def test_smooth_grad_matches_captum_for_the_same_noise(request, model_name, images):
    model = request.getfixturevalue(model_name)
    ours = smooth_grad(model, images, TARGETS, samples=5, stdev=0.3, seed=7, max_batch=4)
    torch.manual_seed(7)
    expected = NoiseTunnel(Saliency(model)).attribute(
        images, target=TARGETS, nt_type="smoothgrad", nt_samples=5, stdevs=0.3
    )
    assert relative_error(ours, expected) < 1e-5
    # the noise matters: another seed gives another map
    other = smooth_grad(model, images, TARGETS, samples=5, stdev=0.3, seed=8)
    assert relative_error(other, expected) > 1e-2


def test_smooth_grad_leaves_the_global_generator_alone(tiny, images):
    state = torch.random.get_rng_state()
    smooth_grad(tiny, images, samples=3)
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("model_name", ["vgg11", "resnet18"])
def test_integrated_gradients_match_captum(request, model_name, images):
    model = request.getfixturevalue(model_name)
    baseline = torch.full_like(images[:1], 0.25)
    points = len(images) * 12
    ours = integrated_gradients(model, images, TARGETS, baseline, steps=12, max_batch=points)
    expected = IntegratedGradients(model).attribute(
        images, baselines=baseline.expand_as(images), target=TARGETS, n_steps=12
    )
    assert relative_error(ours, expected) < 1e-4  # both run the 36 points as one batch
    # in chunks the convolutions round differently; on random vgg11 that flips a ReLU on some
    # path point of the third image (on an AVX-512 CPU), which moves its attributions by 0.15%
    chunked = integrated_gradients(model, images, TARGETS, baseline, steps=12, max_batch=10)
    assert relative_error(chunked, ours) < 1e-2


def test_integrated_gradients_are_complete(resnet18, images):
    """The attributions of an image sum to the change of its score from the baseline."""
    attributions = integrated_gradients(resnet18, images, TARGETS, steps=64)
    with torch.no_grad():
        scores = resnet18(images).gather(1, TARGETS[:, None])[:, 0]
        start = resnet18(torch.zeros_like(images)).gather(1, TARGETS[:, None])[:, 0]
    change = scores - start
    assert torch.allclose(attributions.sum(dim=(1, 2, 3)), change, rtol=0.05, atol=0.02)


@pytest.mark.parametrize("model_name", ["vgg11", "resnet18"])
def test_expected_gradients_match_captum_gradient_shap_for_the_same_draws(
    request, model_name, images, monkeypatch
):
    model = request.getfixturevalue(model_name)
    references = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    ours = expected_gradients(model, images, references, TARGETS, samples=4, seed=3, max_batch=5)
    # captum draws baselines and positions from numpy's global generator: hand it ours
    generator = torch.Generator().manual_seed(3)
    index = torch.randint(5, (3, 4), generator=generator)
    positions = torch.rand((3, 4), generator=generator)
    monkeypatch.setattr(np.random, "choice", lambda n, size: index.flatten().numpy())
    monkeypatch.setattr(np.random, "uniform", lambda low, high, size: positions.flatten().numpy())
    expected = GradientShap(model).attribute(
        images, baselines=references, target=TARGETS, n_samples=4, stdevs=0.0
    )
    assert expected.abs().max() > 0
    assert relative_error(ours, expected) < 1e-4


class LinearScores(nn.Module):
    """Scores linear in the pixels, ``W x``: every gradient is ``W[t]``, so each method's answer
    is known in closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(
            torch.randn(4, 2 * 5 * 5, generator=torch.Generator().manual_seed(0))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T


def test_known_answers_on_a_linear_model():
    model = LinearScores()
    x = torch.randn(2, 2, 5, 5)
    targets = torch.tensor([3, 0])
    weights = model.weight.detach()[targets].view(2, 2, 5, 5)
    assert torch.allclose(saliency(model, x, targets, absolute=False), weights)
    assert torch.allclose(smooth_grad(model, x, targets, absolute=False), weights, atol=1e-6)
    assert torch.allclose(integrated_gradients(model, x, targets, steps=1), x * weights, atol=1e-6)
    references = torch.randn(3, 2, 5, 5)
    # the gradient is constant, so the mean over draws is the mean drawn difference times it
    eg = expected_gradients(model, x, references, targets, samples=200, seed=0)
    generator = torch.Generator().manual_seed(0)
    index = torch.randint(3, (2, 200), generator=generator)
    expected = (x[:, None] - references[index]).mean(dim=1) * weights
    assert torch.allclose(eg, expected, atol=1e-5)


def test_no_hook_no_grad_no_flag_changed_and_works_under_inference_mode(tiny, images):
    flags, hooks = train_flags(tiny), hook_count(tiny)
    with torch.inference_mode():
        maps = [
            saliency(tiny, images),
            smooth_grad(tiny, images, samples=2),
            integrated_gradients(tiny, images, steps=3),
            expected_gradients(tiny, images, images, samples=2),
        ]
    assert all(m.shape == images.shape and m.dtype == torch.float32 for m in maps)
    assert torch.equal(maps[0], saliency(tiny, images))
    assert_untouched(tiny, flags)
    assert hook_count(tiny) == hooks
    assert all(p.grad is None for p in tiny.parameters())


def test_predicted_class_by_default(tiny, images):
    predicted = tiny(images).argmax(dim=1)
    assert torch.equal(saliency(tiny, images), saliency(tiny, images, predicted))
    noisy = smooth_grad(tiny, images, samples=3, max_batch=4)
    assert torch.equal(noisy, smooth_grad(tiny, images, predicted, samples=3, max_batch=4))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, x: saliency(m, x, 10), r"`targets` must lie in \[0, 10\)"),
        (lambda m, x: saliency(m, x[0]), r"`inputs` must have shape \(N, C, H, W\)"),
        (lambda m, x: smooth_grad(m, x, samples=0), "`samples` must be a positive integer"),
        (lambda m, x: smooth_grad(m, x, stdev=-1.0), "`stdev` must be a non-negative number"),
        (lambda m, x: integrated_gradients(m, x, steps=0), "`steps` must be a positive integer"),
        (
            lambda m, x: integrated_gradients(m, x, baseline=torch.zeros(2, 3, 3)),
            "`baseline` of shape",
        ),
        (lambda m, x: integrated_gradients(m, x, max_batch=0), "`max_batch` must be a positive"),
        (
            lambda m, x: expected_gradients(m, x, torch.zeros(2, 1, 64, 64)),
            r"`references` must be \(R, C, H, W\) images shaped like the inputs",
        ),
    ],
)
def test_bad_arguments_say_what_is_wrong(tiny, images, call, message):
    with pytest.raises(ValueError, match=message):
        call(tiny, images)
