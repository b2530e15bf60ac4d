import matplotlib
import pytest
import torch
from torchvision.utils import make_grid

from lightning_viz.functional import (
    colorize,
    grid,
    normalize,
    normalize_magnitude,
    normalize_signed,
    overlay,
    to_rgb,
    to_uint8,
    upsample,
)


def test_normalize_maps_each_image_to_unit_range():
    maps = torch.stack([torch.linspace(2, 6, 16).view(4, 4), torch.full((4, 4), 3.0)])
    result = normalize(maps)
    assert result[0].min() == 0
    assert result[0].max().item() == pytest.approx(1.0)
    assert torch.equal(result[1], torch.zeros(4, 4))


def test_normalize_is_linear_within_an_image():
    maps = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]])
    assert torch.allclose(normalize(maps), torch.tensor([[[0.0, 0.25], [0.5, 1.0]]]), atol=1e-6)


def test_normalize_signed_keeps_zero_at_half_and_clips_outliers():
    values = torch.linspace(-1, 1, 201)
    values[-1] = 100.0
    result = normalize_signed(values[None])[0]
    assert result[100].item() == pytest.approx(0.5)
    assert result[-1].item() == 1.0
    assert result[0].item() == pytest.approx(0.0, abs=0.02)
    assert result.min() >= 0
    with pytest.raises(ValueError, match="percentile"):
        normalize_signed(values[None], percentile=0)
    # at least a scale of 0.05: a map of changes under 0.001 stays near 0.5, faint
    tiny = torch.tensor([[-0.001, 0.0, 0.0005]])
    assert normalize_signed(tiny, 100, least=0.05)[0].tolist() == pytest.approx([0.49, 0.5, 0.505])
    assert normalize_signed(values[None], 100, least=0.05)[0, -1] == 1.0  # above it: its own


def test_normalize_magnitude_puts_the_percentile_at_one_and_clips_above():
    values = torch.arange(101.0)
    values[-1] = 1000.0
    result = normalize_magnitude(values[None], percentile=99)[0]
    assert result[0].item() == 0.0
    assert result[50].item() == pytest.approx(50 / 99, rel=1e-5)  # the 99th percentile is 99
    assert result[99:].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="percentile"):
        normalize_magnitude(values[None], percentile=101)


def test_colorize_matches_matplotlib():
    maps = torch.rand(2, 5, 7)
    rgb = colorize(maps, "viridis")
    assert rgb.shape == (2, 3, 5, 7)
    expected = torch.as_tensor(matplotlib.colormaps["viridis"](maps.numpy())[..., :3]).permute(
        0, 3, 1, 2
    )
    assert (rgb - expected.float()).abs().max() < 0.02
    with pytest.raises(ValueError, match="unknown matplotlib colormap 'nope'"):
        colorize(maps, "nope")


def test_colorize_ends_of_jet():
    rgb = colorize(torch.tensor([[[0.0, 1.0]]]))
    blue, red = rgb[0, :, 0, 0], rgb[0, :, 0, 1]
    assert torch.allclose(blue, torch.tensor([0.0, 0.0, 0.5]))
    assert torch.allclose(red, torch.tensor([0.5, 0.0, 0.0]))


def test_overlay_blends_with_alpha():
    images = torch.zeros(1, 3, 2, 2)
    heat = torch.ones(1, 3, 2, 2)
    assert torch.allclose(overlay(images, heat, 0.25), torch.full((1, 3, 2, 2), 0.25))
    with pytest.raises(ValueError, match="alpha"):
        overlay(images, heat, 1.5)
    with pytest.raises(ValueError, match="one shape"):
        overlay(images, heat[:, :, :1], 0.5)


def test_overlay_keeps_the_heatmaps_hue_over_a_coloured_image():
    """Red evidence over a green square read olive (0.5, 0.5, 0), as if weaker: the heatmap
    goes over the image's brightness, and stays red."""
    green = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    blended = overlay(green, red, 0.5).flatten()
    assert torch.allclose(blended, torch.tensor([0.5 + 0.5 * 0.587, 0.5 * 0.587, 0.5 * 0.587]))


def test_upsample_is_bilinear_to_the_input_size():
    maps = torch.tensor([[[0.0, 1.0]]])
    result = upsample(maps, (1, 4))
    assert torch.allclose(result, torch.tensor([[[0.0, 0.25, 0.75, 1.0]]]))


def test_to_rgb_and_grid():
    grey = torch.rand(5, 1, 4, 4)
    rgb = to_rgb(grey)
    assert rgb.shape == (5, 3, 4, 4)
    assert torch.equal(rgb[:, 0], rgb[:, 2])
    tiled = grid(rgb, nrow=3)
    assert torch.equal(tiled, make_grid(rgb, nrow=3, padding=2, pad_value=1.0))
    assert tiled.shape == (3, 2 * 6 + 2, 3 * 6 + 2)
    assert grid(rgb[:1], nrow=3).shape == (3, 6 + 2, 6 + 2)  # one tile is padded like many
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\) or \(N, 3, H, W\)"):
        to_rgb(torch.rand(2, 2, 4, 4))


def test_to_uint8_rounds_and_clips():
    values = torch.tensor([-0.5, 0.0, 0.5, 1.0, 2.0])
    assert to_uint8(values).tolist() == [0, 0, 128, 255, 255]


@pytest.mark.parametrize("percentile", [50.0, 99.0, 100.0])
@pytest.mark.parametrize("size", [1, 2, 7, 1024])
def test_normalize_signed_scale_is_torchs_quantile(percentile, size):
    from lightning_viz.functional.images import _row_quantile

    values = torch.randn(3, size, generator=torch.Generator().manual_seed(size)).abs()
    expected = torch.quantile(values, percentile / 100, dim=1, keepdim=True)
    assert torch.allclose(_row_quantile(values, percentile / 100), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_outline_draws_each_masks_border_outside_it(dtype):
    from lightning_viz.functional.images import REGION_COLOR, REGION_EDGE, outline

    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, 1:3, 1:3] = True  # a 2x2 square inside
    masks[1, :2, 2:] = True  # a square in the top-right corner
    scale = 255 if dtype == torch.uint8 else 1.0
    grey = torch.full((2, 1, 8, 8), 0.5 * scale).to(dtype)  # enlarged 2x by the outline
    drawn = outline(grey, masks, width=1)
    assert drawn.shape == (2, 3, 8, 8)
    assert drawn.dtype == dtype
    yellow = (drawn == (torch.tensor(REGION_COLOR) * scale).to(dtype).view(3, 1, 1)).all(dim=1)
    dark = (drawn == (torch.tensor(REGION_EDGE) * scale).to(dtype).view(3, 1, 1)).all(dim=1)
    expected_dark = torch.zeros(2, 8, 8, dtype=torch.bool)
    expected_dark[0, 1:7, 1:7] = True  # the line along the region, just outside it
    expected_dark[0, 2:6, 2:6] = False  # the region's own pixels stay as they were
    expected_yellow = torch.ones(2, 8, 8, dtype=torch.bool)
    expected_yellow[0, 1:7, 1:7] = False  # then the yellow beyond it
    expected_dark[1, :5, 3:] = True
    expected_dark[1, :4, 4:] = False
    expected_dark[1, 1, 4:7] = expected_dark[1, 1:4, 6] = True  # inside along the image's edge
    expected_yellow[1] = False
    expected_yellow[1, :6, 2:] = True
    expected_yellow[1, :5, 3:] = False
    expected_yellow[1, 0, 4:] = expected_yellow[1, :4, 7] = True
    assert torch.equal(dark, expected_dark)
    assert torch.equal(yellow, expected_yellow)
    assert torch.equal(drawn[0, :, 3, 3], grey[0, :, 3, 3].expand(3))
    # on a yellow object, the dark line still marks where it ends
    on_yellow = outline(
        (torch.tensor(REGION_COLOR) * scale).to(dtype).view(1, 3, 1, 1).expand(1, 3, 8, 8),
        masks[:1],
        width=1,
    )
    assert (on_yellow != on_yellow[..., :1, :1]).any(dim=1)[0].equal(expected_dark[0])
    # shrunk, a region keeps every pixel it covers: a 2x2 one on a 64x64 mask is still drawn
    small = torch.zeros(1, 64, 64, dtype=torch.bool)
    small[0, 33:35, 33:35] = True
    assert (outline(torch.zeros(1, 3, 16, 16), small, width=1) != 0).any()


def test_wide_tiles_fill_the_width_they_are_given():
    from lightning_viz.functional.images import WIDE_TILE, is_wide, wide_readable

    line = torch.rand(2, 1, 32, 128)  # a line of text
    assert is_wide(line)
    assert not is_wide(torch.rand(2, 1, 32, 63))
    enlarged = wide_readable(line)
    assert enlarged.shape == (2, 1, 32 * 3, 128 * 3)  # WIDE_TILE // 128: x3, pixels copied
    assert torch.equal(enlarged[..., ::3, ::3], line)
    clip = wide_readable(torch.rand(1, 3, 64, 1000))  # a long clip: shrunk, its aspect kept
    assert clip.shape[-1] == WIDE_TILE
    assert clip.shape[-2] == round(64 * WIDE_TILE / 1000)
    assert wide_readable(line, width=200).shape[-1] == 128  # no whole factor fits: as it is


def test_strongest_crop_keeps_the_window_where_each_image_is_strongest():
    from lightning_viz.functional.images import strongest_crop

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(3, 2, 8, 40, generator=generator) * 0.01
    for i, column in enumerate((0, 17, 35)):  # a signed feature at the start, middle and end
        images[i, :, 2:6, column : column + 5] = torch.tensor([-3.0, 3.0])[:, None, None]
    crops = strongest_crop(images, 8)
    assert crops.shape == (3, 2, 8, 8)
    energy = images.abs().sum(dim=(1, 2))
    for i in range(3):
        best = max(range(40 - 8 + 1), key=lambda s: float(energy[i, s : s + 8].sum()))
        assert torch.equal(crops[i], images[i, ..., best : best + 8])
        assert crops[i].abs().amax() == 3  # the feature is in it, whole
        assert (crops[i].abs() == 3).sum() == 2 * 4 * 5
    assert torch.equal(strongest_crop(images, 64), images)  # narrower than the crop: whole
