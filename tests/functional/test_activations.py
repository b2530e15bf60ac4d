import math

import numpy as np
import pytest
import torch

from lightning_viz.functional import activation_stats
from lightning_viz.functional.activations import (
    SUMMED,
    activation_reductions,
    activation_sums,
    channel_health,
    reduce_activation_samples,
    sample_activations,
    stats_from_sums,
)
from lightning_viz.testing import DigitsCNN, digits_tensors, shapes_task


def test_sparsity_matches_direct_computation():
    a = torch.randn(4, 6, 5, 5).relu()
    a[:, 2] = 0
    stats = activation_stats(a)
    assert stats["zero_fraction"].item() == pytest.approx((a <= 0).float().mean().item())
    assert stats["channel_active"].tolist() == [True, True, False, True, True, True]
    assert stats["elements"].item() == a.numel()
    assert not stats["nonfinite"]


def test_channel_active_is_any_image():
    a = -torch.ones(3, 2, 4, 4)
    a[2, 1, 0, 0] = 0.1
    assert activation_stats(a)["channel_active"].tolist() == [False, True]


def test_localization_is_one_on_a_pixel_and_zero_when_spread():
    point = torch.zeros(2, 3, 8, 8)
    point[:, :, 4, 4] = 3.0
    assert activation_stats(point)["localization"].item() == pytest.approx(1.0)
    assert activation_stats(torch.ones(2, 3, 8, 8))["localization"].item() == pytest.approx(
        0.0, abs=1e-6
    )


def test_localization_averages_active_maps_only():
    a = torch.zeros(1, 3, 4, 4)
    a[0, 0, 1, 1] = 1.0  # a single pixel: 1
    a[0, 1, :2, :2] = 1.0  # 4 of 16 pixels: 1 - log 4 / log 16 = 0.5
    expected = (1.0 + (1 - math.log(4) / math.log(16))) / 2
    assert activation_stats(a)["localization"].item() == pytest.approx(expected)
    assert activation_stats(a)["active_maps"].item() == 2


def test_localization_is_one_minus_the_normalized_collision_entropy():
    a = torch.zeros(1, 1, 4, 4)
    a[0, 0, 0, :3] = torch.tensor([2.0, 1.0, 1.0])  # p = 1/2, 1/4, 1/4: sum(p^2) = 3/8
    expected = 1 - (-math.log(3 / 8)) / math.log(16)
    assert activation_stats(a)["localization"].item() == pytest.approx(expected)
    # a strong spot over a faint tail of a thousandth of its value, though the tail holds half
    # the mass, reads as localized (0.80; a Shannon entropy would say 0.39)
    spot = torch.full((1, 1, 32, 32), 0.001)
    spot[0, 0, 5, 5] = 1.0
    assert activation_stats(spot)["localization"].item() == pytest.approx(0.797, abs=1e-3)


def test_localization_undefined_without_active_channels():
    assert math.isnan(activation_stats(torch.zeros(2, 3, 4, 4))["localization"].item())


def test_histogram_matches_numpy():
    a = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    stats = activation_stats(a, bins=16)
    counts, edges = np.histogram(a.numpy(), bins=16)
    np.testing.assert_allclose(stats["histogram_edges"].numpy(), edges, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(stats["histogram_counts"].numpy(), counts)


def test_deterministic_counting_matches_scatter_add():
    from lightning_viz.functional.activations import _count_by_sorting

    index = torch.randint(0, 16, (1000,))
    expected = torch.zeros(16).scatter_add_(0, index, torch.ones(1000))
    assert torch.equal(_count_by_sorting(index, 16), expected)


def test_histogram_of_a_strided_sample():
    a = torch.randn(4, 8, 16, 16)
    stats = activation_stats(a, bins=8, histogram_samples=1000)
    sample = a.flatten()[::9]  # ceil(8192 / 1000)
    counts, _ = np.histogram(sample.numpy(), bins=8)
    np.testing.assert_array_equal(stats["histogram_counts"].numpy(), counts)
    assert stats["zero_fraction"].item() == pytest.approx((a <= 0).float().mean().item())
    with pytest.raises(ValueError, match="`histogram_samples` must be at least 1"):
        activation_stats(a, histogram_samples=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_are_flagged(bad):
    a = torch.ones(1, 2, 2, 2)
    a[0, 1, 0, 0] = bad
    assert activation_stats(a)["nonfinite"]
    assert not activation_stats(torch.ones(1, 2, 2, 2))["nonfinite"]


def test_everything_stays_on_the_input_device():
    stats = activation_stats(torch.randn(2, 3, 4, 4, device="meta"))
    assert all(value.device.type == "meta" for value in stats.values())


def test_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        activation_stats(torch.randn(3, 4))
    with pytest.raises(ValueError, match="`bins` must be at least 1"):
        activation_stats(torch.randn(1, 1, 2, 2), bins=0)


def test_sums_over_batches_give_the_statistics_of_the_batches_together():
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(3, 4, 6, 6, generator=generator)
    second = torch.randn(5, 4, 6, 6, generator=generator) - 1.0  # sparser: fewer active maps
    second[:, 1] = -1.0
    summed = activation_sums(activation_stats(first)) + activation_sums(activation_stats(second))
    combined = stats_from_sums(summed.tolist())
    together = activation_stats(torch.cat([first, second]))
    assert combined["zero_fraction"] == pytest.approx(together["zero_fraction"].item(), rel=1e-6)
    assert combined["localization"] == pytest.approx(together["localization"].item(), rel=1e-5)
    assert not combined["nonfinite"]
    # the mean of the two batches' localizations is not the combined one
    means = (activation_stats(first)["localization"] + activation_stats(second)["localization"]) / 2
    assert abs(means.item() - combined["localization"]) > 1e-3


def test_stats_from_sums_without_active_maps():
    stats = stats_from_sums(activation_sums(activation_stats(-torch.ones(2, 3, 4, 4))).tolist())
    assert stats["zero_fraction"] == 1.0
    assert math.isnan(stats["localization"])


def test_saturated_fraction_counts_values_near_the_bounds():
    a = torch.tensor([0.0, 0.01, 0.5, 0.97, 0.99, 1.0]).view(1, 1, 2, 3)
    stats = activation_stats(a, bounds=(0.0, 1.0))
    assert stats["saturated_fraction"].item() == pytest.approx(4 / 6)  # 0, 0.01, 0.99, 1
    tanh = torch.tensor([-1.0, -0.5, 0.0, 0.97]).view(1, 1, 2, 2)
    assert activation_stats(tanh, bounds=(-1.0, 1.0))["saturated_fraction"].item() == 0.5
    assert activation_stats(a)["saturated_fraction"].item() == 0.0


def test_one_by_one_maps_have_no_localization_after_summing():
    squeezed = torch.rand(4, 8, 1, 1)  # an SE block's or a small input's last stage
    stats = stats_from_sums(activation_sums(activation_stats(squeezed)).tolist())
    assert math.isnan(stats["localization"])  # undefined, not 0 ("spread evenly")
    assert stats["zero_fraction"] == 0.0


def relu_outputs(model: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    outputs = []
    hooks = [
        m.register_forward_hook(lambda m, a, out: outputs.append(out.detach().clone()))
        for m in model.modules()
        if isinstance(m, torch.nn.ReLU)
    ]
    try:
        model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


@pytest.mark.parametrize("trained_steps", [0, 60])
def test_strided_images_estimate_the_whole_batch_within_three_hundredths(trained_steps):
    torch.manual_seed(0)
    images, labels = digits_tensors()
    model = DigitsCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(trained_steps):
        batch = slice(32 * step % 1400, 32 * step % 1400 + 32)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
        optimizer.step()
    model.eval()
    for batch in (slice(0, 32), slice(500, 532), slice(1000, 1064)):
        for maps in relu_outputs(model, images[batch]):
            whole = stats_from_sums(activation_sums(activation_stats(maps)).tolist())
            strided = activation_stats(maps, max_values=2**16)
            assert strided["elements"] <= max(2**16, 4 * maps[0].numel())
            estimate = stats_from_sums(activation_sums(strided).tolist())
            for key in ("zero_fraction", "localization"):
                assert abs(estimate[key] - whole[key]) < 0.03, (key, maps.shape)


def test_strided_images_still_see_a_nan_in_an_image_they_skip():
    maps = torch.rand(32, 16, 32, 32)
    maps[1, 3, 5, 5] = float("nan")
    stats = activation_stats(maps, max_values=2**16)
    assert stats["elements"] == 4 * 16 * 32 * 32
    assert stats["nonfinite"]


def test_strided_images_of_a_resnet_estimate_the_whole_batch(resnet18):
    images, _, _ = shapes_task(32, size=64, channels=3)
    for maps in relu_outputs(resnet18, images):
        whole = stats_from_sums(activation_sums(activation_stats(maps)).tolist())
        strided = activation_stats(maps, max_values=2**16)
        assert strided["elements"] >= 4 * maps[0].numel()  # never fewer than 4 images
        estimate = stats_from_sums(activation_sums(strided).tolist())
        for key in ("zero_fraction", "localization"):
            assert abs(estimate[key] - whole[key]) < 0.02, (key, maps.shape)


def test_a_large_float16_batch_of_ordinary_values_is_finite():
    # its float16 sum would be 524,288 > 65,504, the largest float16: Inf, a false alert under
    # precision="16-mixed"
    a = torch.ones(32, 16, 32, 32, dtype=torch.float16)
    assert not activation_stats(a)["nonfinite"]
    a[5, 3, 2, 1] = float("inf")
    assert activation_stats(a)["nonfinite"]


@pytest.mark.parametrize("bounds", [None, (0.0, 1.0)])
def test_samples_of_many_steps_reduce_at_once_to_each_steps_reductions(bounds):
    torch.manual_seed(0)
    batches = [torch.randn(32, 8, 16, 16).relu() for _ in range(5)]
    batches[2][:, 3] = 0  # a channel dead in one step only
    batches[4][7, 1, 2, 2] = float("nan")  # in an image the stride skips
    samples = [sample_activations(b, max_values=2**12) for b in batches]
    reduced = reduce_activation_samples(
        torch.stack([s.images for s in samples]),
        torch.stack([s.channel_max for s in samples]),
        bins=16,
        histogram_samples=500,
        bounds=bounds,
    )
    assert reduced.sums.shape == (5, 6)
    assert reduced.histogram.shape == (5, 18)
    for step, batch in enumerate(batches):
        alone = activation_reductions(
            batch, bins=16, histogram_samples=500, bounds=bounds, max_values=2**12
        )
        torch.testing.assert_close(reduced.sums[step], alone.sums, equal_nan=True)
        torch.testing.assert_close(reduced.histogram[step], alone.histogram, equal_nan=True)
        assert reduced.active_maps[step] == alone.active_maps
    assert reduced.sums[:, SUMMED.index("nonfinite")].tolist() == [0, 0, 0, 0, 1]
    assert reduced.channel_active.all()  # channel 3 is active in the other steps


def test_reducing_in_place_gives_the_same_and_otherwise_leaves_the_samples_alone():
    torch.manual_seed(0)
    images = torch.randn(3, 4, 8, 6, 6)
    kept = images.clone()
    reduced = reduce_activation_samples(images, torch.zeros(3, 8), histogram_samples=100)
    assert torch.equal(images, kept)
    in_place = reduce_activation_samples(
        images, torch.zeros(3, 8), histogram_samples=100, overwrite=True
    )
    for mine, theirs in zip(in_place, reduced, strict=True):
        assert torch.equal(mine, theirs)
    assert not torch.equal(images, kept)  # clamped where it was negative


def test_a_sample_is_a_copy_that_later_in_place_ops_do_not_change():
    maps = torch.rand(8, 2, 4, 4)
    sample = sample_activations(maps, max_values=64)
    expected = maps[::2].clone()
    maps.zero_()
    assert torch.equal(sample.images, expected)
    assert sample.channel_max.dtype == torch.float32
    assert sample.values_per_channel == 8 * 4 * 4


def test_a_channel_positive_only_in_images_the_stride_skips_is_active():
    """A 64-channel 12x12 map in batches of 32 is read in 7 images (1,008 values per channel):
    a channel active in one other image only was counted dead."""
    maps = torch.full((32, 64, 12, 12), -0.1)  # a GELU's small negative values
    maps[:, :32] = 1.0
    maps[3, 40, 5, 5] = 0.5  # the stride of 5 reads images 0, 5, 10, ...
    sample = sample_activations(maps, max_values=2**16)
    assert len(sample.images) == 7
    reduced = reduce_activation_samples(sample.images[None], sample.channel_max[None])
    expected = torch.zeros(64, dtype=torch.bool)
    expected[:32] = expected[40] = True
    assert torch.equal(reduced.channel_active, expected)
    assert torch.equal(activation_stats(maps, max_values=2**16)["channel_active"], expected)


def test_histograms_of_the_last_steps_only_are_those_of_every_step():
    torch.manual_seed(0)
    images = torch.randn(4, 3, 8, 6, 6)
    channel_max = images.amax(dim=(1, 3, 4))
    every = reduce_activation_samples(images, channel_max, bins=8, histogram_samples=100)
    for last in (0, 1, 4):
        reduced = reduce_activation_samples(
            images, channel_max, bins=8, histogram_samples=100, histogram_steps=last
        )
        assert torch.equal(reduced.histogram, every.histogram[4 - last :])
        assert torch.equal(reduced.sums, every.sums)
    with pytest.raises(ValueError, match=r"`histogram_steps` must lie in \[0, 4\]"):
        reduce_activation_samples(images, channel_max, histogram_steps=5)


def test_a_sample_can_be_stored_where_the_caller_says():
    maps = torch.rand(8, 2, 4, 4)
    slot = torch.empty(3, 4, 2, 4, 4)[1]
    sample = sample_activations(maps, max_values=64, store=lambda images: slot.copy_(images))
    assert sample.images.data_ptr() == slot.data_ptr()
    assert torch.equal(sample.images, maps[::2])


def test_reducing_samples_checks_their_shapes():
    with pytest.raises(
        ValueError, match=r"`images` must be \(S, n, C, H, W\) and `channel_max` \(S, C\)"
    ):
        reduce_activation_samples(torch.rand(2, 3, 4, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\(S, C\), got \(3, 2, 3, 4, 4\) and \(3, 2\)"):
        reduce_activation_samples(torch.rand(3, 2, 3, 4, 4), torch.zeros(3, 2))


@pytest.mark.parametrize("bounds", [None, (0.0, 1.0)])
def test_a_health_reading_agrees_with_the_whole_statistics(bounds):
    torch.manual_seed(0)
    maps = torch.rand(6, 5, 7, 7) if bounds else torch.randn(6, 5, 7, 7)
    maps[:, 2] = -1.0  # a dead channel
    maps[3, 4, 1, 1] = float("nan")
    health = channel_health(maps, bounds)
    stats = activation_stats(maps, bounds=bounds)
    assert health.channel_active.tolist() == [True, True, False, True, False]  # 4 holds NaN
    assert torch.equal(health.channel_active, stats["channel_active"])
    assert health.nonfinite.item()
    assert stats["nonfinite"].item()
    assert not channel_health(maps[:, :4], bounds).nonfinite.item()
    assert health.values_per_channel == 6 * 7 * 7
    fraction = health.saturated.item() / (health.values_per_channel * 5)
    assert fraction == pytest.approx(stats["saturated_fraction"].item())
    # a count in float32 whatever the maps' precision (float16 holds no count past 65,504)
    assert channel_health(maps.half(), bounds).saturated.dtype == torch.float32
