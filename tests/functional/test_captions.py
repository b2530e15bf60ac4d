import pytest
import torch

from lightning_viz.functional.captions import (
    BAND,
    captioned,
    captioned_rows,
    class_name,
    color_bar,
    fill_table_row,
    fit_text,
    fits,
    footnote,
    labelled_table,
    stack_rows,
    text_band,
    with_name,
    wrap,
)
from lightning_viz.functional.images import (
    MAX_TILE,
    MIN_TILE,
    as_display,
    grid,
    panels_per_row,
    readable,
    to_uint8,
)


def test_text_band_draws_black_text_on_white_and_only_where_the_text_is():
    band = text_band(["ch 12", ""], width=96)
    assert band.shape == (2, 3, BAND, 96)
    assert band[1].eq(1).all()  # no text, no ink
    ink = band[0, 0] < 0.5
    assert ink.any()
    assert ink[:, :20].logical_not().all()
    assert not torch.equal(text_band(["ch 12"], 96), text_band(["ch 13"], 96))


def test_long_text_is_cut_with_an_ellipsis_and_wrapped_at_spaces():
    assert fit_text("short", 200) == "short"
    cut = fit_text("a caption far too long for a tiny tile", 60)
    assert cut.endswith("…")
    assert len(cut) < 20
    lines = wrap("one two three four five six seven", 60)
    assert len(lines) > 1
    assert " ".join(lines) == "one two three four five six seven"
    assert footnote(64, "one two three four five six seven").shape == (3, len(lines) * BAND, 64)


def test_a_name_too_long_for_its_band_is_cut_at_its_end_or_else_in_its_middle():
    """A user's 1000 names ("n00000107 great grey shrike") all read 'n00000…' cut at the end;
    cut in the middle, a short name read 'plu…gn'."""
    names = ["n00000107 great grey shrike", "n00000954 red kite", "n00000012 house finch"]
    shown = [with_name("{}", name, 96) for name in names]
    assert all(fits(text, 96) and "…" in text for text in shown)
    assert len(set(shown)) == 3
    assert shown[0].startswith("n000")
    assert shown[0].endswith("hrike")
    # where the end cut keeps half the name or more, it reads better
    assert with_name("✗ pred {}", "plus sign", 96) == "✗ pred plus s…"
    assert with_name("{}", "n01530575 brambling", 96) == "n01530575 …"
    assert with_name("pred {}", "cat", 96) == "pred cat"


def test_a_name_cut_at_its_end_is_not_the_start_of_another_class_name():
    """The demo's diverged run captioned wrong predictions "✗ pred flowe…": any of the flower's
    four quadrants, which its arrow tells apart."""
    classes = [f"{photo} {arrow}" for photo in ("temple", "flower") for arrow in "↖↗↙↘"]
    shown = {name: with_name("✗ pred {}", name, 96, classes) for name in classes}
    assert len(set(shown.values())) == len(classes)
    assert all(fits(text, 96) and text.endswith(name[-1]) for name, text in shown.items())
    assert with_name("✗ pred {}", "flower ↗", 96) == "✗ pred flowe…"  # no names: as before
    assert with_name("✗ pred {}", "plus sign", 96, ["plus sign", "cross"]) == "✗ pred plus s…"


def test_captioned_tiles_and_tables_have_their_bands():
    tiles = torch.rand(3, 3, 10, 12)
    out = captioned(tiles, ["a", "b", "c"])
    assert out.shape == (3, 3, BAND + 10, 12)
    assert torch.equal(out[:, :, BAND:], tiles)
    with pytest.raises(ValueError, match="3 tiles need 3 captions"):
        captioned(tiles, ["a"])
    table = labelled_table(torch.rand(2, 4, 3, 10, 12), ["ch 1", "ch 2"], list("abcd"))
    assert table.shape[1] == BAND + 2 * 12
    assert table.shape[2] > 4 * 14
    with pytest.raises(ValueError, match="2 row and 4 column labels"):
        labelled_table(torch.rand(2, 4, 3, 10, 12), ["x"], list("abcd"))


def test_color_bar_runs_through_the_colormap_between_its_end_labels():
    bar = color_bar(300, "gray", "-", "+", "title")
    assert bar.shape == (3, 2 * BAND, 300)
    ramp = bar[0, BAND + BAND // 2, 48 : 300 - 48]
    assert ramp[0] < 0.05
    assert ramp[-1] > 0.95
    assert (ramp.diff() >= 0).all()


def test_color_bar_wraps_a_title_wider_than_the_bar():
    title = "model.layer2.0.conv1: each probe's top-3 channels projected to pixels; mid-grey = 0"
    bar = color_bar(300, "gray", "-", "+", title)
    assert bar.shape[1] >= 3 * BAND  # wrapped over two lines or more, none cut
    assert torch.equal(bar[:, : bar.shape[1] - BAND], footnote(300, title))


def test_readable_tiles_and_panel_grids():
    assert readable(torch.rand(2, 3, 8, 8)).shape[-1] == MIN_TILE  # x12, nearest
    assert readable(torch.rand(2, 3, 5, 5)).shape[-1] == 100  # a whole factor
    assert readable(torch.rand(1, 3, 224, 224)).shape[-1] == MAX_TILE
    assert readable(torch.rand(1, 3, 120, 120)).shape[-1] == 120
    # within a limit: the largest whole factor under it, unless that falls below 72 pixels
    assert readable(torch.rand(1, 1, 28, 28), largest=99).shape[-1] == 84
    assert readable(torch.rand(1, 1, 40, 40), largest=99).shape[-1] == 80
    assert readable(torch.rand(1, 1, 50, 50), largest=99).shape[-1] == 100
    assert readable(torch.rand(1, 1, 32, 32), largest=99).shape[-1] == 96
    small = torch.tensor([[[[0.0, 1.0]]]])
    assert readable(small).unique().tolist() == [0.0, 1.0]  # nearest keeps values
    assert panels_per_row(10, 112, 194) == 2
    assert panels_per_row(1, 100, 100) == 1
    assert panels_per_row(16, 100, 100) == 4


def test_class_names_fall_back_to_indices():
    assert class_name(1, ["cat", "dog"]) == "dog"
    assert class_name(5, ["cat", "dog"]) == "5"
    assert class_name(2, None) == "2"


def test_captioned_rows_put_each_panels_tiles_side_by_side_under_their_captions():
    tiles = torch.rand(3, 2, 3, 20, 30)
    texts = [[f"probe {p}", f"ch {p}"] for p in range(3)]
    panels = captioned_rows(tiles, texts, padding=2)
    assert panels.shape == (3, 3, BAND + 20, 2 * 30 + 2)
    for p in range(3):
        for k in range(2):
            x = k * 32
            one = captioned(tiles[p, k : k + 1], [texts[p][k]])[0]
            assert torch.equal(panels[p, :, :, x : x + 30], one)
        assert (panels[p, :, :, 30:32] == 1.0).all()  # white padding between tiles
    with pytest.raises(ValueError, match="3 panels of 2 tiles need 3 rows of 2 captions"):
        captioned_rows(tiles, texts[:2])


def test_uint8_composition_gives_the_pixels_of_float_composition():
    tiles = torch.rand(2, 3, 3, 20, 30)
    texts = [[f"probe {p}", f"ch {p}", "x"] for p in range(2)]
    small = torch.rand(4, 3, 8, 8)

    def compose(dtype):
        panels = captioned_rows(as_display(tiles, dtype), texts)
        image = grid(panels, nrow=1, padding=6)
        bar = color_bar(image.shape[-1], "viridis", "-", "+", "a title", dtype=dtype)
        note = footnote(image.shape[-1], "what the tiles mean, wrapped", dtype=dtype)
        table = labelled_table(
            readable(as_display(small, dtype)).unflatten(0, (2, 2)), ["a", "b"], ["1", "2"]
        )
        return stack_rows(image, bar, note), stack_rows(table, bar)

    in_uint8 = compose(torch.uint8)
    in_float = compose(torch.float32)
    for composed, reference in zip(in_uint8, in_float, strict=True):
        assert composed.dtype == torch.uint8
        assert composed.shape == reference.shape
        assert (composed.int() - to_uint8(reference).int()).abs().max() <= 1


def test_readable_keeps_uint8_tiles_uint8_in_every_mode():
    tiles = to_uint8(torch.rand(2, 3, 10, 10))
    for mode in ("nearest", "bilinear"):
        enlarged = readable(tiles, mode=mode)
        assert enlarged.dtype == torch.uint8
        assert enlarged.shape[-1] == 100
    assert torch.equal(readable(tiles)[..., ::10, ::10], tiles)  # nearest keeps the pixels
    shrunk = readable(to_uint8(torch.rand(1, 3, 400, 400)))
    assert shrunk.dtype == torch.uint8
    assert shrunk.shape[-1] == MAX_TILE


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_a_table_row_drawn_in_place_equals_the_whole_table_drawn_again(dtype):
    cells = as_display(torch.rand(3, 2, 3, 10, 12), dtype)
    white_cells = torch.full_like(cells[0], 255 if dtype == torch.uint8 else 1.0)
    before = ["epoch 0", "epoch 1", ""]
    table = labelled_table(torch.stack([cells[0], cells[1], white_cells]), before, ["a", "b"])
    fill_table_row(table, 2, cells[2], "epoch 2")
    expected = labelled_table(cells, ["epoch 0", "epoch 1", "epoch 2"], ["a", "b"])
    assert table.dtype == dtype
    assert torch.equal(table, expected)
