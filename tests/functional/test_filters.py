import math

import numpy as np
import pytest
import torch
from torch import nn

from lightning_viz.functional import filter_health, filter_noise
from lightning_viz.functional.filters import kernel_slices, patch_noise, reference_slices
from lightning_viz.testing import digits_tensors, shapes_task


def geary_reference(weight: np.ndarray) -> np.ndarray:
    """Geary's C straight from its definition, with an explicit rook weight matrix."""
    out_channels, in_channels, kh, kw = weight.shape
    n = kh * kw
    adjacency = np.zeros((n, n))
    for i in range(kh):
        for j in range(kw):
            for di, dj in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                if 0 <= i + di < kh and 0 <= j + dj < kw:
                    adjacency[i * kw + j, (i + di) * kw + j + dj] = 1
    scores = []
    for f in range(out_channels):
        numerator = denominator = 0.0
        for s in range(in_channels):
            x = weight[f, s].reshape(-1) - weight[f, s].mean()
            numerator += (adjacency * (x[:, None] - x[None, :]) ** 2).sum()
            denominator += (x**2).sum()
        scores.append((n - 1) * numerator / (2 * adjacency.sum() * denominator))
    return np.array(scores)


@pytest.mark.parametrize("shape", [(6, 3, 5, 5), (4, 2, 3, 3), (3, 1, 2, 4), (2, 5, 7, 3)])
def test_matches_the_definition(shape):
    weight = torch.randn(shape, dtype=torch.float64)
    weight[0] += torch.linspace(0, 3, shape[-1], dtype=torch.float64)
    expected = geary_reference(weight.numpy())
    np.testing.assert_allclose(filter_noise(weight).numpy(), expected, rtol=1e-5)


def test_slices_far_from_zero_keep_float32_precision():
    """Weights of 100 +- 0.001: C must not drown in the float32 rounding of their squares."""
    generator = torch.Generator().manual_seed(0)
    weight = 100 + 1e-3 * torch.randn(8, 16, 3, 3, generator=generator)
    weight[:, :, 0] += 2e-3  # some structure, so that the scores differ from 1
    expected = geary_reference(weight.double().numpy())
    np.testing.assert_allclose(filter_noise(weight).numpy(), expected, rtol=1e-6)


def test_fresh_init_scores_about_one():
    weight = torch.empty(64, 3, 7, 7)
    nn.init.kaiming_normal_(weight)
    scores = filter_noise(weight)
    assert scores.shape == (64,)
    assert scores.dtype == torch.float32
    assert 0.9 <= scores.mean().item() <= 1.1


def test_smooth_ramp_scores_low():
    ramp = torch.linspace(-1, 1, 7)
    weight = (ramp[:, None] + 0.5 * ramp[None, :]).expand(8, 3, 7, 7)
    assert (filter_noise(weight) < 0.3).all()


def test_checkerboard_scores_high():
    rows = torch.arange(5)
    board = ((rows[:, None] + rows[None, :]) % 2).float() * 2 - 1
    weight = board.expand(4, 3, 5, 5)
    assert (filter_noise(weight) > 1.5).all()


def test_constant_filter_scores_zero_and_half_precision_works():
    weight = torch.randn(3, 2, 3, 3).half()
    weight[1] = 0.7
    scores = filter_noise(weight)
    assert scores.dtype == torch.float32
    assert scores[1] == 0
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("shape", [(4, 3, 1, 1), (4, 3, 1, 5)])
def test_kernels_below_2x2_have_no_score(shape):
    with pytest.raises(ValueError, match=r"at least 2x2.*got 1x"):
        filter_noise(torch.randn(shape))


def test_rejects_non_conv_weights():
    with pytest.raises(ValueError, match=r"\(out, in, kh, kw\)"):
        filter_noise(torch.randn(10, 5))


def test_filter_health_matches_its_definitions():
    torch.manual_seed(0)
    initial = torch.randn(8, 3, 5, 5)
    weight = initial * 0.9 + 0.3 * torch.randn(8, 3, 5, 5)
    health = filter_health(weight, initial, noise_threshold=0.95)
    noise = filter_noise(weight)
    assert torch.equal(health["filter_noise"], noise)
    assert health["noise"] == noise.median()
    assert health["noisy_fraction"] == (noise >= 0.95).float().mean()
    drift = (weight - initial).norm() / initial.norm()
    assert health["drift"].item() == pytest.approx(drift.item(), rel=1e-6)
    assert health["update_noise"] == filter_noise(weight - initial).median()
    assert health["finite"] == 1.0
    weight[2, 0, 1, 1] = float("nan")
    assert filter_health(weight, initial)["finite"] == 0.0


def test_filter_health_stays_on_the_weights_device():
    health = filter_health(torch.randn(4, 2, 3, 3, device="meta"), torch.randn(4, 2, 3, 3))
    assert all(value.device.type == "meta" for value in health.values())


def test_reference_slices_keep_a_fifth_of_each_large_filter_the_same_every_time():
    assert reference_slices((16, 3, 7, 7)) is None  # small: kept whole
    state = torch.get_rng_state()
    slices = reference_slices((256, 128, 3, 3))
    assert torch.equal(torch.get_rng_state(), state)
    assert slices.shape == (256, 26)
    assert torch.equal(slices, reference_slices((256, 128, 3, 3)))
    assert all(len(set(row.tolist())) == 26 for row in slices)  # no slice twice in a filter
    assert len(set(slices.flatten().tolist())) == 128  # every in-channel is read somewhere


def test_filter_health_on_reference_slices_reads_those_slices_of_the_weight():
    torch.manual_seed(0)
    initial = torch.randn(64, 64, 3, 3)
    weight = initial * 0.95 + 0.2 * torch.randn(64, 64, 3, 3)
    slices = reference_slices(initial.shape)
    sliced = filter_health(weight, kernel_slices(initial, slices), slices=slices)
    by_definition = filter_health(kernel_slices(weight, slices), kernel_slices(initial, slices))
    whole = filter_health(weight, initial)
    for key in ("drift", "learned", "norm_ratio", "update_noise"):
        assert sliced[key].item() == pytest.approx(by_definition[key].item(), rel=1e-6)
        assert sliced[key].item() == pytest.approx(whole[key].item(), rel=0.03)
    assert torch.equal(sliced["filter_noise"], whole["filter_noise"])  # C reads every weight
    unchanged = filter_health(initial, kernel_slices(initial, slices), slices=slices)
    assert unchanged["learned"] == 0  # no quantization floor: an unmoved layer learned nothing


def test_all_finite_sees_every_nan_and_inf_and_no_overflow_of_half_precision_sums():
    from lightning_viz.functional._validation import all_finite

    weight = torch.randn(64, 64, 3, 3)
    assert all_finite(weight)
    for bad in (float("nan"), float("inf"), -float("inf")):
        broken = weight.clone()
        broken[7, 3, 1, 2] = bad
        assert not all_finite(broken)
    both = weight.clone()
    both[0, 0, 0, 0], both[1, 1, 1, 1] = float("inf"), -float("inf")  # their sum is NaN
    assert not all_finite(both)
    # 36,864 fp16 weights of 60,000 each: finite, though their sum overflows fp16 (max 65,504)
    assert all_finite(torch.full((64, 64, 3, 3), 60_000.0, dtype=torch.float16))
    assert all_finite(torch.arange(10))  # integers are always finite


@pytest.mark.parametrize("scale", [1e20, 1e35])
def test_a_diverged_layer_reads_its_measures_where_float32_squares_overflow(scale):
    """Weights of 1e20 and more: their squares overflow float32, and the norms read inf (drift)
    or inf - inf (learned) where the values are finite: the measures equal float64's."""
    torch.manual_seed(0)
    initial = 0.1 * torch.randn(8, 3, 5, 5)
    weight = initial + scale * torch.randn(8, 3, 5, 5)
    weight[:, :, 0] += scale  # structure, so that C differs from 1
    previous = torch.randn(weight.numel())
    health = filter_health(weight, initial, previous=previous)
    w, w0, update = weight.double(), initial.double(), (weight - initial).double()
    orthogonal = update - (update * w0).sum() / w0.square().sum() * w0
    expected = {
        "drift": update.norm() / w0.norm(),
        "learned": orthogonal.norm() / w0.norm(),
        "norm_ratio": w.norm() / w0.norm(),
        "step_cosine": (w.flatten() @ previous.double()) / (w.norm() * previous.double().norm()),
    }
    for name, value in expected.items():
        assert health[name].item() == pytest.approx(value.item(), rel=1e-5), name
    np.testing.assert_allclose(
        health["filter_noise"].numpy(), geary_reference(weight.double().numpy()), rtol=1e-5
    )
    assert health["update_noise"].item() == pytest.approx(
        torch.from_numpy(geary_reference(update.numpy())).median().item(), rel=1e-5
    )


def test_patch_noise_is_the_variance_weighted_geary_c_of_the_images_kernel_sized_patches():
    images = torch.randn(2, 3, 10, 15)
    images[0] += torch.linspace(0, 4, 15)  # a ramp: the first image's patches are smoother
    patches = torch.stack(
        [images[i, :, r : r + 5, c : c + 5] for i in range(2) for r in (0, 5) for c in (0, 5, 10)]
    ).double()
    noise = torch.from_numpy(geary_reference(patches.numpy()))
    variance = (patches - patches.mean(dim=(2, 3), keepdim=True)).square().sum(dim=(1, 2, 3))
    expected = (noise * variance).sum() / variance.sum()
    assert patch_noise(images, (5, 5)).item() == pytest.approx(expected.item(), rel=1e-5)
    assert patch_noise(torch.zeros(3, 10, 10), (5, 5)).isnan()  # no patch varies: unknown


def test_patch_noise_tells_photos_and_digits_from_white_noise():
    from sklearn.datasets import load_sample_images

    photos = torch.stack(
        [torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i in load_sample_images().images]
    )
    digits, _ = digits_tensors()
    shapes_on_noise, _, _ = shapes_task(16, size=32, stamp=10, channels=3, noise=0.5)
    # a user's squares on a flat background with 1% noise read 0.93 to 0.96 by the median of
    # all patches, as noise: the flat patches counted as much as the squares' edges
    squares = torch.zeros(16, 1, 28, 28)
    squares[:, :, 8:20, 8:20] = 1.0
    squares += 0.01 * torch.randn(squares.shape, generator=torch.Generator().manual_seed(0))
    for kernel in (5, 7):
        assert patch_noise(photos, (kernel, kernel)) < 0.6
        assert patch_noise(digits, (kernel, kernel)) < 0.2
        assert patch_noise(squares, (kernel, kernel)) < 0.5
        assert patch_noise(shapes_on_noise, (kernel, kernel)) > 0.75


def test_patch_noise_of_images_smaller_than_the_kernel_is_unknown():
    assert patch_noise(torch.randn(3, 4, 4), (5, 5)).isnan()


def test_moves_are_read_against_at_least_the_default_inits_norm():
    """A depthwise conv initialized by its fan-out (torchvision's MobileNetV2: about a quarter
    of PyTorch's default scale here) moves far from its own small start in a healthy first
    epoch: read against its own norm, a healthy MobileNetV2 under SGD drifted 7.3 and turned to
    a cosine of 0.14 (exploding, overwritten); against the default init's norm, 0.95 and 0.72."""
    torch.manual_seed(0)
    channels = 96
    default_std = 1 / math.sqrt(3 * 9)  # kaiming_uniform_(a=sqrt(5)) of a fan-in of 9
    initial = torch.randn(channels, 1, 3, 3) * math.sqrt(2 / (9 * channels))  # fan_out init
    update = torch.randn(channels, 1, 3, 3) * default_std
    health = filter_health(initial + update, initial, previous=initial.flatten())
    default_norm = math.sqrt(initial.numel()) * default_std
    assert initial.norm() < default_norm / 3.5
    assert health["drift"].item() == pytest.approx(update.norm().item() / default_norm, rel=1e-5)
    grown = initial.flatten() * (default_norm / initial.norm())
    now = grown + update.flatten()
    expected = torch.dot(now, grown) / (now.norm() * grown.norm())
    assert health["step_cosine"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert health["norm_ratio"].item() == pytest.approx(
        ((initial + update).norm() / initial.norm()).item(), rel=1e-5
    )  # a collapse is still read against the layer's own start
    # a layer at the default scale or above reads against its own norm, as before
    large = torch.randn(channels, 1, 3, 3)
    assert filter_health(large + update, large)["drift"].item() == pytest.approx(
        (update.norm() / large.norm()).item(), rel=1e-5
    )


def test_a_zero_initialized_layer_reads_all_its_change_as_learned_and_no_cosine_from_zeros():
    """A conv initialized to zero (ControlNet's zero convs, a residual branch's last conv): all
    of its change is orthogonal to its (zero) init, so it learned what it drifted; the cosine
    with zero weights has no direction to compare and is unknown (it read 0/0 = NaN learned,
    and a cosine of 0 from the zeros: the overwritten rule's worst reading)."""
    torch.manual_seed(0)
    initial = torch.zeros(8, 4, 3, 3)
    weight = 0.01 * torch.randn(8, 4, 3, 3)
    health = filter_health(weight, initial, previous=initial.flatten())
    assert math.isfinite(health["drift"].item())
    assert health["drift"].item() > 0
    assert health["learned"].item() == pytest.approx(health["drift"].item(), rel=1e-6)
    assert math.isnan(health["step_cosine"].item())
    later = filter_health(weight * 1.1, initial, previous=weight.flatten())
    assert later["step_cosine"].item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("shape", [(16, 4, 5), (8, 2, 3, 3, 3)])
def test_filter_health_of_1d_and_3d_convs_reads_the_moves_without_gearys_c(shape):
    """A Conv1d's or Conv3d's weight: drift and learned as for a 2-D conv, Geary's C unknown
    (it reads 2-D filters); reference slices of a large one keep whole kernels."""
    torch.manual_seed(0)
    initial = torch.randn(shape)
    weight = initial + 0.3 * torch.randn(shape)
    health = filter_health(weight, initial, previous=initial.flatten())
    drift = (weight - initial).norm() / initial.norm()
    assert health["drift"].item() == pytest.approx(drift.item(), rel=1e-5)
    assert 0 < health["learned"].item() <= health["drift"].item()
    assert 0.8 < health["step_cosine"].item() < 1
    assert math.isnan(health["noise"].item())
    assert math.isnan(health["update_noise"].item())
    large = torch.randn(shape[0] * 64, shape[1] * 16, *shape[2:])
    slices = reference_slices(large.shape)
    kept = kernel_slices(large, slices)
    assert kept.shape == (large.shape[0], slices.shape[1], *shape[2:])
    assert torch.equal(kept[3, 1], large[3, slices[3, 1]])
