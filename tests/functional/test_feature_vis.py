"""Activation maximization: lucent's parametrization, a rising objective, batching, isolation."""

import pytest
import torch
import torchvision
from lucent.optvis.param.color import to_valid_rgb
from lucent.optvis.param.spatial import fft_image

from lightning_viz.functional.feature_vis import (
    initial_spectrum,
    random_transform,
    spectrum_shape,
    spectrum_to_image,
    to_model_input,
    visualize_features,
)
from lightning_viz.testing import DigitsCNN, sequential_cnn
from tests.helpers import assert_untouched, train_flags


def digits_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return DigitsCNN().eval()


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (2, 3, 31, 33), (1, 1, 16, 16), (1, 4, 8, 8)])
def test_the_image_from_a_spectrum_is_lucents(shape):
    """Fourier parametrization, colour decorrelation (RGB only) and sigmoid as lucent's own
    functions compute them, on the same spectrum."""
    params, image_f = fft_image(shape)
    spectrum = torch.randn(params[0].shape, generator=torch.Generator().manual_seed(1))
    assert tuple(spectrum.shape) == spectrum_shape(*shape)
    with torch.no_grad():
        params[0].copy_(spectrum)
        expected = to_valid_rgb(image_f, decorrelate=shape[1] == 3)()
    ours = spectrum_to_image(spectrum, shape[2:], decorrelate=shape[1] == 3)
    assert ours.shape == shape
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)


def test_decorrelation_changes_rgb_images():
    spectrum = torch.randn(spectrum_shape(1, 3, 16, 16))
    plain = spectrum_to_image(spectrum, (16, 16), decorrelate=False)
    assert not torch.allclose(spectrum_to_image(spectrum, (16, 16), decorrelate=True), plain)


def test_the_random_transform_pads_and_is_drawn_from_the_generator():
    images = torch.rand(3, 1, 20, 20)
    first = random_transform(images, torch.Generator().manual_seed(5))
    again = random_transform(images, torch.Generator().manual_seed(5))
    other = random_transform(images, torch.Generator().manual_seed(6))
    assert first.shape == (3, 1, 44, 44)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    # the border: mid-grey padding, black where the warp moves in from outside (as kornia's),
    # or a bilinear mix of the two
    borders = [
        random_transform(images, torch.Generator().manual_seed(s))[..., 0, :] for s in range(20)
    ]
    borders = torch.stack(borders)
    assert borders.min() >= 0
    assert borders.max() <= 0.5 + 1e-6
    assert (borders == 0).any()
    assert (borders - 0.5).abs().min() < 1e-6
    # each image of the batch gets the same transform as it would alone
    torch.testing.assert_close(
        first[1:2], random_transform(images[1:2], torch.Generator().manual_seed(5))
    )
    # for a model of one input size: the same transform, the padded margin cropped away
    kept = random_transform(images, torch.Generator().manual_seed(5), keep_size=True)
    assert torch.equal(kept, first[..., 12:32, 12:32])


def test_display_images_map_to_the_models_input_statistics():
    images = torch.rand(2, 3, 4, 4)
    assert torch.equal(to_model_input(images, 0.5, 0.25), images)
    mean, std = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 2.0, 0.5])
    mapped = to_model_input(torch.full((1, 3, 2, 2), 0.75), mean, std)
    assert torch.allclose(mapped[0, :, 0, 0], mean + std)


def mean_objective(model, layer, units, shape, steps, seeds=(0, 1), **kwargs) -> float:
    results = [
        visualize_features(model, layer, units, shape, steps, seed=seed, **kwargs).objective
        for seed in seeds
    ]
    return torch.stack(results).mean().item()


@pytest.mark.parametrize(
    ("make", "layer", "units", "shape", "statistics"),
    [
        (
            digits_net,
            "features.6",
            [0, 3, 7, 11],
            (1, 32, 32),
            {"input_mean": 0.0, "input_std": 1.0},
        ),
        (lambda: sequential_cnn().eval(), "3", [1, 5, 9], (3, 24, 24), {}),
    ],
)
def test_the_units_activation_rises_with_the_steps(make, layer, units, shape, statistics):
    torch.manual_seed(0)
    model = make()
    at = {
        steps: mean_objective(model, layer, units, shape, steps, **statistics)
        for steps in (0, 16, 64)
    }
    assert at[0] < at[16] < at[64], at
    assert at[64] > 2 * at[0]


def test_rises_on_resnet18_with_decorrelated_colour():
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=10).eval()
    mean = torch.tensor([0.0, 0.0, 0.0])
    std = torch.tensor([1.0, 1.0, 1.0])
    kwargs = {"input_mean": mean, "input_std": std, "seeds": (0,)}
    at = {
        s: mean_objective(resnet, "layer1.0.relu", [0, 9], (3, 32, 32), s, **kwargs)
        for s in (0, 16)
    }
    assert at[0] < at[16], at


def test_units_batched_equal_each_unit_alone():
    model, units = digits_net(), [2, 5, 30]
    batched = visualize_features(model, "features.6", units, (1, 32, 32), steps=8, seed=3)
    for row, unit in enumerate(units):
        alone = visualize_features(model, "features.6", [unit], (1, 32, 32), steps=8, seed=3)
        torch.testing.assert_close(alone.spectrum[0], batched.spectrum[row], atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(alone.objective[0], batched.objective[row], atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(alone.images[0], batched.images[row], atol=1e-4, rtol=1e-3)


def test_leaves_the_global_rng_the_parameters_hooks_and_flags_alone():
    model = DigitsCNN()
    model.eval()
    model.features[1].train()  # a flag of its own, to be kept
    flags = train_flags(model)
    rng = torch.random.get_rng_state()
    with torch.inference_mode():  # Lightning's validation
        result = visualize_features(model, "features.10", [0, 1], (1, 32, 32), steps=3)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert_untouched(model, flags)
    assert result.spectrum.shape == spectrum_shape(2, 1, 32, 32)
    assert result.images.shape == (2, 1, 32, 32)
    assert result.images.min() >= 0
    assert result.images.max() <= 1
    assert not result.spectrum.requires_grad
    assert not result.objective.requires_grad


def test_a_warm_start_continues_from_the_spectrum():
    model, units = digits_net(), [0, 3, 7, 11]
    first = visualize_features(model, "features.6", units, (1, 32, 32), steps=16)
    evaluated = visualize_features(
        model, "features.6", units, (1, 32, 32), 0, first.spectrum, warm_scale=1.0
    )
    torch.testing.assert_close(evaluated.objective, first.objective)
    halved = visualize_features(model, "features.6", units, (1, 32, 32), 0, first.spectrum)
    torch.testing.assert_close(halved.spectrum, first.spectrum * 0.5)  # WARM_SCALE
    assert torch.equal(first.adam["step"], torch.tensor(16.0))
    warm = visualize_features(
        model, "features.6", units, (1, 32, 32), 16, first.spectrum, first.adam, seed=1
    )
    assert torch.equal(warm.adam["step"], torch.tensor(32.0))  # Adam continues
    assert warm.objective.mean() >= first.objective.mean()
    fresh = initial_spectrum(units, 1, (32, 32))
    assert not torch.allclose(warm.spectrum, fresh)


def test_bad_arguments_say_what_was_given():
    model = digits_net()
    with pytest.raises(ValueError, match="has 16; got 16"):
        visualize_features(model, "features.2", [16], (1, 32, 32), steps=1)
    with pytest.raises(ValueError, match="`units` is empty"):
        visualize_features(model, "features.2", [], (1, 32, 32))
    with pytest.raises(ValueError, match="`spectrum` must have shape"):
        visualize_features(
            model, "features.2", [0], (1, 32, 32), spectrum=torch.zeros(1, 1, 32, 16, 2)
        )
    with pytest.raises(ValueError, match="`steps` must be a non-negative integer"):
        visualize_features(model, "features.2", [0], (1, 32, 32), steps=-1)
    with pytest.raises(ValueError, match="closest valid names"):
        visualize_features(model, "features.22", [0], (1, 32, 32))
