"""The pooling baseline (``pool``): its windows, exact counts down to tiny budgets, pooled features equal to
a hand computation of the average pooling, batch equal to one by one, and its options."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from conftest import make_image, require_torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

import hired
from hired.core.grid import Geometry, layout_for
from hired.core.select import pool_windows
from hired.methods import ModelInfo, Pool, get_method, num_image_tokens
from hired.methods.pack import pack_features
from hired.methods.pool import pool_groups
from hired.testing import default_pinpoints

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

NEXT = Geometry(84, 14, default_pinpoints(84))
SINGLE = Geometry(84, 14)
INFO = ModelInfo(num_layers=4, num_heads=2, feature_layer=2)
PROMPT = "USER: <image>\nwhat is this? ASSISTANT:"
SIZES = [(90, 170), (60, 130), (100, 220), (200, 70)]  # 2x2 padded, 1x2, 1x3, 3x1
BUDGETS = [1e-3, 0.01, 0.05, 0.1, 0.14, 0.25, 0.5, 0.77, 1.0]


def expected_count(rate: float, layout) -> int:
    return min(
        max(math.floor(Fraction(repr(float(rate))) * layout.num_partitions * layout.tokens), 1), layout.num_valid
    )


# ------------------------------------------------------------------------------------------ the windows


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 30), st.integers(1, 30), st.data())
def test_windows_tile_the_grid_into_k_rectangles_around_their_anchors(height, width, data):
    k = data.draw(st.integers(1, height * width))
    owner, anchors = pool_windows(height, width, k)
    assert owner.shape == (height * width,) and anchors.shape == (k,)
    assert torch.equal(torch.bincount(owner, minlength=k) > 0, torch.ones(k, dtype=torch.bool))
    assert torch.all(anchors[1:] > anchors[:-1])  # ascending: the windows' raster order is kept
    grid = owner.view(height, width)
    for w in range(k):
        cells = torch.nonzero(grid == w)
        r0, c0 = cells.min(dim=0).values.tolist()
        r1, c1 = cells.max(dim=0).values.tolist()
        assert cells.shape[0] == (r1 - r0 + 1) * (c1 - c0 + 1)  # a full rectangle
        assert int(owner[anchors[w]]) == w  # the anchor lies in its own window, in the middle
        assert divmod(int(anchors[w]), width) == ((r0 + r1) // 2, (c0 + c1) // 2)


def test_windows_follow_the_aspect_ratio_and_spread_the_spare_ones():
    owner, anchors = pool_windows(6, 6, 5)  # 2 rows of windows: 2 then 3
    assert owner.view(6, 6).tolist() == [[0, 0, 0, 1, 1, 1]] * 3 + [[2, 2, 3, 3, 4, 4]] * 3
    assert anchors.tolist() == [1 * 6 + 1, 1 * 6 + 4, 4 * 6 + 0, 4 * 6 + 2, 4 * 6 + 4]
    wide, _ = pool_windows(4, 24, 24)  # a 4 x 24 grid pooled to 24: 2 rows of 12 windows of 2 x 2
    assert torch.equal(wide.view(4, 24), (torch.arange(4)[:, None] // 2) * 12 + torch.arange(24)[None, :] // 2)
    with pytest.raises(ValueError, match="cannot pool a 2 x 3 grid to 7 windows"):
        pool_windows(2, 3, 7)


# ----------------------------------------------------------------------------------------------- counts


@pytest.mark.parametrize("geometry", [NEXT, SINGLE], ids=["llava_next", "llava"])
@pytest.mark.parametrize("rate", BUDGETS)
def test_counts_are_promised_kept_and_pooled_in_every_partition(rate, geometry):
    method = Pool(budget=rate)
    sizes = [*SIZES, (33, 47), (400, 90), (84, 84), (1, 500)]
    layouts = [layout_for(s, geometry) for s in sizes]
    sel = method.select(layouts, {}, INFO)
    valid = torch.cat([lay.valid_mask for lay in layouts])
    start = 0
    for layout, budgets in zip(layouts, sel.budgets):
        p = layout.num_partitions
        assert method.count(layout) == sum(budgets) == expected_count(rate, layout)
        assert sel.keep[start : start + p].sum(dim=1).tolist() == budgets
        start += p
    assert not torch.any(sel.keep & ~valid)
    rows = sel.weights[sel.keep]  # convex rows over valid patches of their own partition
    assert torch.all(rows >= 0)
    torch.testing.assert_close(rows.sum(dim=1), torch.ones(rows.shape[0]), rtol=0, atol=1e-6)
    assert not torch.any((sel.weights > 0) & sel.keep[:, :, None] & ~valid[:, None, :])
    # every valid patch of a partition that keeps something feeds exactly one pooled token
    feeds = ((sel.weights > 0) & sel.keep[:, :, None]).sum(dim=1)
    pooled = sel.keep.any(dim=1)
    assert torch.equal(feeds[pooled], valid[pooled].long())


def test_a_budget_that_rounds_to_no_token_keeps_one():
    layout = layout_for((400, 300), Geometry(crop_size=336, patch_size=14))
    assert Pool(budget=1e-4).count(layout) == Pool(budget=1e-4, keep_positions=True).count(layout) == 1
    assert Pool(budget=0.2).count(layout) == math.floor(Fraction("0.2") * layout.num_partitions * 576)


# ------------------------------------------------------------------------------------- the pooled features


def test_pooled_features_equal_a_hand_computed_average_pooling():
    layout = layout_for((84, 84), SINGLE)  # one 6 x 6 partition
    feats = torch.randn(1, 36, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grid = feats[0].view(6, 6, 5)
    method = Pool(budget=0.14)  # floor(0.14 * 36) = 5 tokens: windows rows 0-2 | 3-5, 2 then 3 across
    packed = pack_features(method, [layout], method.select([layout], {}, INFO), feats, newline=False)
    boxes = [((0, 3), (0, 3)), ((0, 3), (3, 6)), ((3, 6), (0, 2)), ((3, 6), (2, 4)), ((3, 6), (4, 6))]
    hand = torch.stack([grid[r0:r1, c0:c1].reshape(-1, 5).mean(dim=0) for (r0, r1), (c0, c1) in boxes])
    torch.testing.assert_close(packed.features, hand, rtol=1e-6, atol=1e-6)  # fp32 weights
    assert packed.stock_index.tolist() == [7, 10, 24, 26, 28]  # each token sits at its window's middle patch
    # a square share of a square grid is avg_pool2d's tiling: 9 tokens = 3 x 3 windows of 2 x 2
    method = Pool(budget=0.25)
    packed = pack_features(method, [layout], method.select([layout], {}, INFO), feats, newline=False)
    pooled = F.avg_pool2d(grid.permute(2, 0, 1)[None], 2)[0].permute(1, 2, 0).reshape(9, 5)
    torch.testing.assert_close(packed.features, pooled, rtol=1e-6, atol=1e-6)  # fp32 weights


def test_padding_is_never_pooled():
    layout = layout_for((90, 170), NEXT)  # a 2x2 canvas whose lower sub-images are partly padding
    groups = pool_groups(layout, tuple(Pool(budget=0.3)._budgets(layout)))
    assert torch.equal(groups >= 0, layout.valid_mask)


# ------------------------------------------------------------------------------------------ end to end


def images():
    return [make_image(h, w, seed=i) for i, (h, w) in enumerate(SIZES)]


def kept(model):
    return [[p.kept for p in sel.partitions] for sel in hired.last_selection(model)]


@pytest.mark.parametrize("models", ["llava_next", "llava"], indirect=True)
@pytest.mark.parametrize("method", [Pool(budget=0.3), Pool(budget=0.001), Pool(budget=0.2, keep_newline=True)], ids=str)
def test_generate_batch_equals_one_by_one_and_counts_hold(models, method):
    model, processor, newline = models
    hired.apply(model, processor, method)
    inputs = processor(images=images(), text=[PROMPT] * 4, return_tensors="pt", padding=True)
    layouts = [layout_for(s if newline else (84, 84), NEXT if newline else SINGLE) for s in SIZES]
    placeholders = (inputs["input_ids"] == processor.image_token_id).sum(dim=1).tolist()
    assert placeholders == [num_image_tokens(method, lay, newline) for lay in layouts]
    with torch.no_grad():
        batch = model.generate(**inputs, max_new_tokens=3, do_sample=False)[:, -3:]
    assert [s.num_tokens for s in hired.last_selection(model)] == placeholders
    batch_kept = kept(model)
    for layout, per_image in zip(layouts, batch_kept):  # the kept patches are the windows' anchors
        groups = pool_groups(layout, tuple(method._budgets(layout)))
        assert per_image == [sorted(set(g[g >= 0].tolist())) for g in groups]
    for i, img in enumerate(images()):
        one = processor(images=[img], text=[PROMPT], return_tensors="pt")
        with torch.no_grad():
            assert torch.equal(model.generate(**one, max_new_tokens=3, do_sample=False)[:, -3:], batch[i : i + 1])
        assert kept(model)[0] == batch_kept[i]


@pytest.mark.parametrize("models", ["llava_next"], indirect=True)
def test_projector_sees_the_average_of_each_window_of_the_feature_layer(models):
    model, processor, _ = models
    hired.apply(model, processor, Pool(budget=0.25))  # 45 tokens of 5 partitions: 9 each, 3 x 3 windows of 2 x 2
    seen = []
    handle = model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    try:
        inputs = processor(images=[make_image(84, 168, seed=3)], text=[PROMPT], return_tensors="pt")
        with torch.no_grad():
            hidden = model.model.vision_tower(inputs["pixel_values"][0][:3], output_hidden_states=True)
            model(**inputs)
    finally:
        handle.remove()
    feats = hidden.hidden_states[-2][:, 1:]  # the feature layer (vision_feature_layer = -2), no [CLS]
    full = feats[0].view(6, 6, -1)  # the full image comes first in LLaVA-NeXT's order
    hand = torch.stack(
        [full[r : r + 2, c : c + 2].reshape(4, -1).mean(dim=0) for r in range(0, 6, 2) for c in range(0, 6, 2)]
    )
    assert seen[0].shape[0] == 3 * 9  # a 1x2 canvas: the full image and two sub-images
    torch.testing.assert_close(seen[0][:9], hand, rtol=1e-5, atol=1e-5)


def test_qwen_batch_equals_one_by_one_and_keeps_the_anchors():
    require_torchvision()
    from hired.testing import tiny_qwen2_5_vl

    with torch.no_grad():
        model, processor = tiny_qwen2_5_vl(seed=0)
    prompt = "USER: <|vision_start|><image><|vision_end|>\nwhat is this? ASSISTANT:"
    sizes = [(150, 230), (300, 120), (60, 400)]
    imgs = [make_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    hired.apply(model, processor, Pool(budget=0.3))
    inputs = processor(images=imgs, text=[prompt] * 3, return_tensors="pt", padding=True)
    with torch.no_grad():
        batch = model.generate(**inputs, max_new_tokens=3, do_sample=False)[:, -3:]
    sels = hired.last_selection(model)
    for sel, thw in zip(sels, inputs["image_grid_thw"].tolist()):
        rows, cols = thw[1] // 2, thw[2] // 2
        (part,) = sel.partitions
        assert sel.num_tokens == math.floor(Fraction("0.3") * rows * cols) == len(part.kept)
        assert part.kept == pool_windows(rows, cols, sel.num_tokens)[1].tolist()
    for i, img in enumerate(imgs):
        one = processor(images=[img], text=[prompt], return_tensors="pt")
        with torch.no_grad():
            assert torch.equal(model.generate(**one, max_new_tokens=3, do_sample=False)[:, -3:], batch[i : i + 1])


# ---------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize("budget", [0, -0.1, 1.5, float("nan")])
def test_bad_budgets_name_the_option(budget):
    with pytest.raises(ValueError, match=r"budget must be in \(0, 1\]"):
        Pool(budget=budget)


def test_options_are_typed_and_registered():
    with pytest.raises(TypeError, match="Pool option budget must be a number"):
        Pool(budget="0.2")
    with pytest.raises(ValueError, match="Pool has no option alpha"):
        get_method("pool", budget=0.2, alpha=0.5)
    assert get_method("pool", budget=1) == Pool(budget=1.0) and hired.Pool is Pool
    assert "pool" in hired.list_methods() and not Pool().adaptive and Pool().budget == 0.2
    assert Pool().score_layers(INFO) == {} and Pool().key_layers(INFO) == {} and Pool().feature_space() is None
