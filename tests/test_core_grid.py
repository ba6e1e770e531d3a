"""Partition geometry against transformers' own LLaVA-NeXT arithmetic, and the 2-D mapping."""

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from transformers.image_processing_utils import select_best_resolution
from transformers.models.llava_next.modeling_llava_next import unpad_image

from hired.core.grid import NEWLINE, Geometry, best_resolution, full_to_subimage, layout_for, row_chunk_to_subimage
from hired.methods import HiRED

CLIP_336 = Geometry(336, 14, ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)))
TINY = Geometry(84, 14, ((84, 168), (168, 84), (168, 168), (84, 252), (252, 84)))
sizes = st.tuples(st.integers(1, 2000), st.integers(1, 2000))


@settings(max_examples=300)
@given(size=sizes)
def test_best_resolution_matches_transformers(size):
    pins = [list(p) for p in CLIP_336.grid_pinpoints]
    assert best_resolution(size, CLIP_336.grid_pinpoints) == tuple(select_best_resolution(size, pins))


@settings(max_examples=200)
@given(size=sizes, geometry=st.sampled_from([CLIP_336, TINY]))
def test_valid_region_matches_transformers_unpadding(size, geometry):
    layout = layout_for(size, geometry)
    rows, cols = layout.grid
    side = geometry.side
    canvas = torch.zeros(1, rows * side, cols * side)
    assert unpad_image(canvas, list(size)).shape[1:] == (layout.valid_rows, layout.right - layout.left)
    assert layout.num_valid == geometry.tokens + layout.valid_rows * (layout.right - layout.left)
    assert layout.valid_mask.shape == (layout.num_partitions, geometry.tokens)


def test_known_layouts():
    assert layout_for((600, 600), CLIP_336).grid == (2, 2)
    wide = layout_for((300, 800), CLIP_336)
    assert wide.grid == (1, 3) and wide.valid_counts == (576, 480, 576, 480)
    tall = layout_for((800, 300), CLIP_336)
    assert tall.grid == (3, 1) and tall.valid_counts == (576, 480, 576, 480)
    single = layout_for((50, 70), Geometry(336, 14))
    assert single.num_partitions == 1 and single.valid_counts == (576,)


@pytest.mark.parametrize("size", [(600, 600), (300, 800), (800, 300), (500, 1400), (170, 90)])
@pytest.mark.parametrize("newline", [True, False])
def test_pack_order_visits_every_valid_patch_once(size, newline):
    layout = layout_for(size, CLIP_336 if size[0] > 200 else TINY)
    order = layout.pack_order(newline)
    tokens = order[order != NEWLINE]
    assert sorted(tokens.tolist()) == torch.nonzero(layout.valid_mask.flatten()).flatten().tolist()
    assert int((order == NEWLINE).sum()) == (layout.valid_rows if newline else 0)
    assert tokens[: layout.tokens].tolist() == list(range(layout.tokens))  # full image first, raster order


def _hot_row(side: int, rows: slice, cols: slice) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(side, side, generator=gen) * 0.01
    scores[rows, cols] = 1.0 + torch.rand(side, side, generator=gen)[rows, cols]
    return scores.flatten()


@pytest.mark.parametrize(
    "size,hot,expected",
    [
        ((600, 600), (slice(18, 24), slice(0, 6)), 2),  # 2x2, bottom-left → sub-image 2
        ((600, 600), (slice(0, 6), slice(18, 24)), 1),  # 2x2, top-right
        ((300, 800), (slice(8, 16), slice(0, 6)), 0),  # 1x3, left third
        ((300, 800), (slice(0, 24), slice(18, 24)), 2),  # 1x3, right third
        ((800, 300), (slice(18, 24), slice(4, 20)), 2),  # 3x1, bottom
        ((400, 900), (slice(10, 14), slice(10, 14)), 1),  # 1x2 or 1x3 centre
    ],
)
def test_hot_spot_sends_the_sub_budget_to_the_sub_image_covering_it(size, hot, expected):
    layout = layout_for(size, CLIP_336)
    if size == (400, 900):
        expected = layout.grid[1] // 2
    method = HiRED(budget=0.2, alpha=0.9)  # content = the top 10% of full-image patches
    row = _hot_row(24, *hot)
    content = method.content(layout, row)
    assert max(range(len(content)), key=content.__getitem__) == expected
    budgets = method.partition_budgets(layout, {"budget": row[None].expand(layout.num_partitions, -1)})
    subs = budgets[1:]
    assert all(subs[expected] > b for i, b in enumerate(subs) if i != expected)


def test_reference_row_chunk_mapping_is_not_2d():
    layout = layout_for((600, 600), CLIP_336)
    row = _hot_row(24, slice(18, 24), slice(0, 6))  # bottom-left corner of the picture
    hot = torch.topk(row, 36).indices
    assert set(full_to_subimage(layout)[hot].tolist()) == {2}
    assert set(row_chunk_to_subimage(layout)[hot].tolist()) == {3}  # the reference credits bottom-right


@settings(max_examples=100)
@given(size=sizes)
def test_mapping_only_credits_sub_images_with_valid_patches(size):
    layout = layout_for(size, CLIP_336)
    mapping = full_to_subimage(layout)
    valid = layout.valid_counts[1:]
    assume(sum(valid) > 0)  # extreme aspect ratios can leave no valid canvas row at all
    assert all(valid[i] > 0 for i in mapping.unique().tolist())
    assert mapping.shape == (layout.tokens,)


def test_reference_mapping_sends_the_budget_to_the_wrong_sub_image():
    layout = layout_for((600, 600), CLIP_336)
    row = _hot_row(24, slice(18, 24), slice(0, 6))  # bottom-left
    scores = {"budget": row[None].expand(layout.num_partitions, -1)}
    subs_2d = HiRED(budget=0.2, alpha=0.9).partition_budgets(layout, scores)[1:]
    subs_ref = HiRED(budget=0.2, alpha=0.9, mapping="reference").partition_budgets(layout, scores)[1:]
    assert max(range(4), key=subs_2d.__getitem__) == 2
    assert max(range(4), key=subs_ref.__getitem__) == 3


# LLaVA-OneVision: SigLIP 384 px crops, grids 1x1..6x6, anyres_max_9
OV_384 = Geometry(384, 14, tuple((384 * i, 384 * j) for i in range(1, 7) for j in range(1, 7)), max_crops=9)


def _onevision_stock_count(size, geometry) -> int:
    """Tokens transformers' OneVision processor promises for an image (patches + newlines, no [CLS])."""
    from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor

    side = geometry.side
    proc = LlavaOnevisionProcessor.__new__(LlavaOnevisionProcessor)
    proc.num_image_tokens = side * side
    proc.vision_aspect_ratio = f"anyres_max_{geometry.max_crops}"
    proc.image_processor = type("P", (), {"image_grid_pinpoints": [list(p) for p in geometry.grid_pinpoints]})()
    return proc._get_number_of_features(size[0], size[1], geometry.crop_size, geometry.crop_size)


@settings(max_examples=300)
@given(size=sizes)
def test_onevision_stock_length_matches_transformers(size):
    layout = layout_for(size, OV_384)
    assert layout.stock_length(True) == _onevision_stock_count(size, OV_384)
    assert layout.stock_length(False) == layout.stock_length(True) - (layout.scaled or (layout.valid_rows,))[0]


@settings(max_examples=300)
@given(size=sizes, newline=st.booleans())
def test_stock_map_covers_the_stock_sequence_in_order(size, newline):
    """Each packed entry's stock index: the identity where stock does not interpolate; otherwise every stock
    token is hit, stock rows follow the canvas rows in order, columns in order within a row, newlines land
    on newlines."""
    layout = layout_for(size, OV_384)
    order, stock = layout.pack_order(newline), layout.stock_map(newline)
    assert stock.shape == order.shape
    assert torch.equal(torch.unique(stock), torch.arange(layout.stock_length(newline)))
    if layout.scaled is None:
        assert torch.equal(stock, torch.arange(len(order)))
        return
    t = layout.tokens
    assert torch.equal(stock[:t], torch.arange(t))
    rows, cols = layout.scaled
    width = cols + int(newline)
    canvas = (stock[t:] - t).view(layout.valid_rows, -1)  # one row per unpadded canvas row
    stock_row, stock_col = canvas // width, canvas % width
    assert bool((stock_row == stock_row[:, :1]).all())  # a canvas row stays in one stock row
    assert bool((stock_row[1:, 0] >= stock_row[:-1, 0]).all())
    assert bool((stock_col[:, 1:] >= stock_col[:, :-1]).all())
    if newline:
        assert torch.equal(stock_col == cols, (order[t:] == NEWLINE).view(layout.valid_rows, -1))


def test_lone_crop_ends_with_one_newline():
    layout = layout_for((500, 300), OV_384, single=True)
    assert layout.grid == (0, 0) and layout.num_partitions == 1
    assert layout.pack_order(True).tolist() == [*range(729), NEWLINE]
    assert layout.pack_order(False).tolist() == list(range(729))
