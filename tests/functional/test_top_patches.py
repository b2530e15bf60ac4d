import math

import pytest
import torch
import torch.nn.functional as F

from lightning_viz.functional.receptive_field import ReceptiveField, receptive_fields
from lightning_viz.functional.top_patches import (
    TopK,
    changed_fraction,
    empty_top_k,
    update_top_k,
)
from lightning_viz.testing import DigitsCNN

NO_FIELD = ReceptiveField(jump=(1, 1), start=(0, 0), end=(0, 0), exact=True)


def brute_force_top_k(maps_all: torch.Tensor, k: int, units=None):
    """(values, positions, rows, cols), each (U, k): per unit, the k images with the largest map
    maximum (its first position in row-major order), larger values first, then earlier images;
    -inf / -1 where fewer than k images exist."""
    units = range(maps_all.shape[1]) if units is None else units.tolist()
    width = maps_all.shape[-1]
    results = []
    for unit in units:
        candidates = []
        for position, image_map in enumerate(maps_all[:, unit]):
            flat = image_map.flatten().tolist()
            best = max(flat)
            index = flat.index(best)
            candidates.append((-best, position, index // width, index % width))
        candidates = sorted(candidates)[:k]
        candidates += [(math.inf, -1, -1, -1)] * (k - len(candidates))
        results.append(candidates)
    table = torch.tensor(results, dtype=torch.float64)
    return -table[..., 0].float(), table[..., 1].long(), table[..., 2].long(), table[..., 3].long()


def stream(maps_all, images_all, batch_sizes, k, units=None, field=NO_FIELD, size=1):
    top = empty_top_k(
        maps_all.shape[1] if units is None else len(units), k, images_all.shape[1], size, "cpu"
    )
    start = 0
    for batch_size in batch_sizes:
        end = start + batch_size
        top = update_top_k(top, maps_all[start:end], images_all[start:end], field, start, units)
        start = end
    return top


def assert_matches_brute_force(top: TopK, maps_all, k, units=None):
    values, positions, rows, cols = brute_force_top_k(maps_all, k, units)
    torch.testing.assert_close(top.values, values)
    assert torch.equal(top.positions, positions)
    assert torch.equal(top.rows, rows)
    assert torch.equal(top.cols, cols)


@pytest.mark.parametrize("units", [None, torch.tensor([5, 0, 3])])
def test_streaming_equals_brute_force(units):
    torch.manual_seed(0)
    maps_all = torch.randn(13, 6, 4, 5)
    top = stream(maps_all, torch.randn(13, 1, 8, 8), [3, 1, 5, 4], k=4, units=units)
    assert_matches_brute_force(top, maps_all, 4, units)


def test_ties_go_to_the_earlier_image_and_the_first_maximum():
    torch.manual_seed(1)
    maps_all = torch.randint(0, 3, (17, 4, 3, 3)).float()
    top = stream(maps_all, torch.randn(17, 1, 4, 4), [2, 6, 1, 8], k=5)
    assert_matches_brute_force(top, maps_all, 5)
    constant = torch.ones(200, 2, 3, 3)
    top = stream(constant, torch.randn(200, 1, 4, 4), [100, 100], k=30)
    assert top.positions.tolist() == [list(range(30))] * 2
    assert top.rows.tolist() == [[0] * 30] * 2


def test_k_larger_than_the_images_so_far_is_filled_with_empties():
    torch.manual_seed(2)
    maps_all = torch.randn(5, 3, 2, 2)
    images_all = torch.randn(5, 1, 4, 4)
    top = stream(maps_all[:2], images_all[:2], [2], k=6)
    assert_matches_brute_force(top, maps_all[:2], 6)
    assert torch.isinf(top.values[:, 2:]).all()
    assert (top.positions[:, 2:] == -1).all()
    assert (top.patches[:, 2:] == 0).all()
    top = stream(maps_all, images_all, [2, 3], k=6)
    assert_matches_brute_force(top, maps_all, 6)


def test_first_position_may_be_a_device_scalar_and_the_input_is_left_alone():
    torch.manual_seed(3)
    maps, images = torch.randn(4, 3, 2, 2), torch.randn(4, 1, 4, 4)
    top = empty_top_k(3, 2, 1, 1, "cpu")
    by_int = update_top_k(top, maps, images, NO_FIELD, 7)
    by_tensor = update_top_k(top, maps, images, NO_FIELD, torch.tensor(7))
    assert torch.equal(by_int.positions, by_tensor.positions)
    assert by_int.positions.min() >= 7
    assert torch.equal(top.positions, torch.full((3, 2), -1))


def padded_crop(image: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    """image[:, top : top + size, left : left + size], zeros where that lies outside the image."""
    margin = size
    padded = F.pad(image, (margin, margin, margin, margin))
    return padded[:, top + margin : top + margin + size, left + margin : left + margin + size]


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_patches_are_the_field_crops_when_the_field_is_patch_sized(dtype):
    torch.manual_seed(4)
    field = ReceptiveField(jump=(2, 3), start=(-2, -1), end=(2, 3), exact=True)
    maps_all = torch.randn(9, 4, 4, 3)
    images_all = torch.randint(0, 256, (9, 2, 8, 9)).to(dtype)
    top = stream(maps_all, images_all, [4, 5], k=3, field=field, size=5)
    for unit in range(4):
        for slot in range(3):
            position = top.positions[unit, slot]
            row, col = top.rows[unit, slot], top.cols[unit, slot]
            expected = padded_crop(images_all[position].float(), -2 + 2 * row, -1 + 3 * col, 5)
            torch.testing.assert_close(top.patches[unit, slot], expected)


def test_patches_outside_the_image_are_zero():
    image = torch.ones(1, 1, 6, 6)
    maps = torch.zeros(1, 1, 3, 3)
    maps[0, 0, 0, 0] = 1
    field = ReceptiveField(jump=(2, 2), start=(-4, -4), end=(3, 3), exact=True)
    top = update_top_k(empty_top_k(1, 1, 1, 4, "cpu"), maps, image, field, 0)
    expected = torch.tensor(
        [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]] + [[0.0, 0.0, 1.0, 1.0]] * 2
    )
    torch.testing.assert_close(top.patches[0, 0, 0], expected)


def test_a_shrink_averages_every_pixel():
    image = torch.randn(1, 2, 12, 12)
    field = ReceptiveField(jump=(1, 1), start=(0, 0), end=(11, 11), exact=True)
    top = update_top_k(empty_top_k(1, 1, 2, 4, "cpu"), torch.ones(1, 1, 1, 1), image, field, 0)
    torch.testing.assert_close(top.patches[0, 0], F.avg_pool2d(image[0], 3))


def test_patches_of_a_real_layer_are_its_receptive_field():
    torch.manual_seed(5)
    model = DigitsCNN().eval()
    images = torch.randn(12, 1, 32, 32)
    field = receptive_fields(model, images, ["features.6"])["features.6"]
    assert field.size == (10, 10)
    with torch.no_grad():
        maps = model.features[:7](images)
    top = empty_top_k(4, 3, 1, 10, "cpu")
    units = torch.tensor([0, 7, 3, 9])
    for start in range(0, 12, 5):
        batch = slice(start, start + 5)
        top = update_top_k(top, maps[batch], images[batch], field, start, units)
    assert_matches_brute_force(top, maps, 3, units)
    for unit in range(4):
        for slot in range(3):
            top_row = field.start[0] + field.jump[0] * top.rows[unit, slot]
            left = field.start[1] + field.jump[1] * top.cols[unit, slot]
            expected = padded_crop(images[top.positions[unit, slot]], top_row, left, 10)
            torch.testing.assert_close(top.patches[unit, slot], expected)


def test_no_host_sync(monkeypatch):
    torch.manual_seed(6)
    maps, images = torch.randn(5, 4, 3, 3), torch.randn(5, 3, 8, 8)
    field = ReceptiveField(jump=(2, 2), start=(-1, -1), end=(2, 2), exact=True)
    top = empty_top_k(2, 3, 3, 4, "cpu")
    units, first_position = torch.tensor([1, 3]), torch.tensor(10)

    def host_sync(*args, **kwargs):
        raise AssertionError("host sync")

    for name in ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, host_sync)
    top = update_top_k(top, maps, images, field, first_position, units)
    fraction = changed_fraction(top.positions, top.positions)
    monkeypatch.undo()
    assert top.positions.min() >= 10
    assert fraction.tolist() == [0.0, 0.0]


def test_changed_fraction_known_values():
    previous = torch.tensor(
        [[0, 1, 2], [0, 1, 2], [-1, -1, -1], [3, -1, -1], [0, 1, -1], [4, 5, 6]]
    )
    current = torch.tensor([[2, 1, 0], [0, 5, 6], [-1, -1, -1], [3, -1, -1], [0, 1, 2], [7, 8, 9]])
    expected = torch.tensor([0.0, 2 / 3, 0.0, 0.0, 1 / 3, 1.0])
    torch.testing.assert_close(changed_fraction(previous, current), expected)


def test_shape_errors():
    top = empty_top_k(3, 2, 1, 4, "cpu")
    images = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="holds 3 units"):
        update_top_k(top, torch.randn(2, 4, 2, 2), images, NO_FIELD, 0)
    with pytest.raises(ValueError, match="same"):
        update_top_k(top, torch.randn(3, 3, 2, 2), images, NO_FIELD, 0)
    with pytest.raises(ValueError, match="1-channel"):
        update_top_k(top, torch.randn(2, 3, 2, 2), torch.randn(2, 3, 8, 8), NO_FIELD, 0)
    with pytest.raises(ValueError, match="4-D"):
        update_top_k(top, torch.randn(2, 3, 4), images, NO_FIELD, 0)
