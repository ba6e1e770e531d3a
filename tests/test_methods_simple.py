"""The fixed-budget baselines (Spatial, Random, ClsTopK): budget arithmetic, selection properties and
end-to-end runs on tiny random-weight LLaVA-NeXT / LLaVA-1.5 models.

Expected budgets are computed here from the formula B = floor(r * P * T) on the decimal value of r and
the valid patches of each partition, not from the methods' own code.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import hired
from hired.core.budget import even_split
from hired.core.grid import Geometry, Layout, layout_for
from hired.core.select import lattice_indices
from hired.methods import ClsTopK, ModelInfo, Random, Spatial, get_method, list_methods, num_image_tokens
from hired.testing import default_pinpoints

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

NEXT = Geometry(84, 14, default_pinpoints(84))  # tiny LLaVA-NeXT: 6 x 6 patches per partition
SINGLE = Geometry(84, 14)  # tiny LLaVA-1.5
CLIP_336 = Geometry(336, 14, ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)))
INFO = ModelInfo(num_layers=4, num_heads=2, feature_layer=2)
METHODS = [Spatial, Random, ClsTopK]
PROMPT = "USER: <image>\nwhat is this? ASSISTANT:"

sizes = st.tuples(st.integers(1, 1200), st.integers(1, 1200))
rates = st.one_of(st.floats(0.005, 1.0), st.sampled_from([0.1, 0.2, 0.25, 0.29, 0.3, 0.35, 0.5, 0.7, 1.0]))
geometries = st.sampled_from([NEXT, SINGLE, CLIP_336])


def expected_total(rate: float, layout: Layout) -> int:
    """min(max(floor(r * P * T), 1), valid patches), with r taken as the decimal the user wrote (every image
    keeps a token where it has one)."""
    b = math.floor(Fraction(repr(float(rate))) * layout.num_partitions * layout.tokens)
    return min(max(b, 1), int(layout.valid_mask.sum()))


def random_scores(layouts: list[Layout], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rows = torch.cat([torch.rand(lay.num_partitions, lay.tokens, generator=gen) for lay in layouts])
    return {"select": rows, "budget": rows.clone()}


def per_image(keep: torch.Tensor, layouts: list[Layout]) -> list[torch.Tensor]:
    return list(keep.split([lay.num_partitions for lay in layouts]))


def make_image(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, size=(h, w, 3), dtype=np.uint8), mode="RGB")


# -------------------------------------------------------------------------------------- budget helpers


valid_lists = st.integers(1, 13).flatmap(
    lambda p: st.tuples(st.integers(1, 64), st.lists(st.integers(0, 64), min_size=p - 1, max_size=p - 1))
)


@settings(max_examples=300)
@given(budget=st.integers(0, 900), tv=valid_lists)
def test_even_split_is_exact_capped_and_even(budget, tv):
    tokens, subs = tv
    valid = [tokens] + [min(v, tokens) for v in subs]
    alloc = even_split(budget, valid)
    assert len(alloc) == len(valid)
    assert sum(alloc) == min(budget, sum(valid))
    assert all(0 <= a <= v for a, v in zip(alloc, valid))
    # a partition left below its valid patches is within one of the largest share: the split is even
    # except where a partition cannot hold its share
    for a, v in zip(alloc, valid):
        if a < v:
            assert a >= max(alloc) - 1


def test_even_split_examples():
    assert even_split(10, [36, 36, 36]) == [4, 3, 3]  # remainder to the lower index
    assert even_split(100, [36, 10, 36]) == [36, 10, 36]  # all that fits
    assert even_split(60, [36, 6, 36]) == [27, 6, 27]  # what the small partition frees is shared
    assert even_split(0, [36, 36]) == [0, 0]
    with pytest.raises(ValueError):
        even_split(-1, [36])
    with pytest.raises(ValueError):
        even_split(3, [])


@settings(max_examples=300)
@given(h=st.integers(1, 30), w=st.integers(1, 30), data=st.data())
def test_lattice_indices_are_distinct_and_evenly_spread(h, w, data):
    k = data.draw(st.integers(1, h * w))
    idx = lattice_indices(h, w, k)
    assert idx.dtype == torch.long and idx.shape == (k,)
    assert len(set(idx.tolist())) == k
    assert bool((idx >= 0).all()) and bool((idx < h * w).all())
    assert idx.tolist() == sorted(idx.tolist())
    # every cell is within the ideal lattice spacing (Chebyshev distance) of a chosen cell
    spacing = max(math.sqrt(h * w / k), h / k, w / k)
    r, c = idx // w, idx % w
    rr, cc = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    dist = torch.maximum((rr.reshape(-1, 1) - r).abs(), (cc.reshape(-1, 1) - c).abs()).min(dim=1).values
    assert int(dist.max()) <= spacing


def test_lattice_indices_square_budget_is_the_regular_lattice():
    idx = lattice_indices(24, 24, 144)
    rows, cols = set((idx // 24).tolist()), set((idx % 24).tolist())
    assert rows == cols == set(range(1, 24, 2))
    assert lattice_indices(6, 6, 9).tolist() == [7, 9, 11, 19, 21, 23, 31, 33, 35]
    assert lattice_indices(3, 3, 9).tolist() == list(range(9))
    assert lattice_indices(4, 4, 0).numel() == 0
    with pytest.raises(ValueError):
        lattice_indices(2, 2, 5)
    with pytest.raises(ValueError):
        lattice_indices(0, 2, 0)


# ---------------------------------------------------------------------------------- counts and masks


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(sizes, min_size=1, max_size=4), rate=rates, geometry=geometries, seed=st.integers(0, 2**40))
@pytest.mark.parametrize("cls", METHODS)
def test_count_is_exact_and_selection_keeps_that_many_valid_patches(cls, sizes, rate, geometry, seed):
    method = cls(budget=rate)
    layouts = [layout_for(s, geometry) for s in sizes]
    selection = method.select(layouts, random_scores(layouts, seed), INFO)
    assert selection.keep.dtype == torch.bool
    assert selection.keep.shape == (sum(lay.num_partitions for lay in layouts), layouts[0].tokens)
    for layout, keep, budgets in zip(layouts, per_image(selection.keep, layouts), selection.budgets):
        total = expected_total(rate, layout)
        assert method.count(layout) == total == sum(budgets) == int(keep.sum())
        assert not bool((keep & ~layout.valid_mask).any()), "a padding patch was kept"
        assert keep.sum(dim=1).tolist() == list(budgets)
        # budgets are an even split: below its valid patches a partition is within one of the largest
        floor = math.floor(Fraction(repr(float(rate))) * layout.num_partitions * layout.tokens)
        assert list(budgets) == even_split(max(floor, 1), layout.valid_counts)
        # the count the processor promises is a function of the layout alone
        assert num_image_tokens(method, layout, newline=True) == total
        with_newline = cls(budget=rate, keep_newline=True)
        extra = layout.valid_rows if layout.num_subimages else 1
        assert num_image_tokens(with_newline, layout, newline=True) == total + extra


@pytest.mark.parametrize("cls", METHODS)
def test_budget_one_keeps_every_valid_patch(cls):
    layouts = [layout_for(s, NEXT) for s in [(90, 170), (100, 220), (60, 130)]]
    selection = cls(budget=1.0).select(layouts, random_scores(layouts), INFO)
    assert torch.equal(selection.keep, torch.cat([lay.valid_mask for lay in layouts]))


# ------------------------------------------------------------------------------------------- spatial


def _quadrants_covered(kept: torch.Tensor, side: int) -> bool:
    grid = kept.view(side, side)
    h = side // 2
    return all(bool(q.any()) for q in (grid[:h, :h], grid[:h, h:], grid[h:, :h], grid[h:, h:]))


@pytest.mark.parametrize("geometry", [SINGLE, Geometry(336, 14), NEXT, CLIP_336])
@pytest.mark.parametrize("size", [(300, 300), (150, 150), (60, 130), (100, 220), (900, 500)])
def test_spatial_covers_every_quadrant_of_a_full_partition(geometry, size):
    layout = layout_for(size, geometry)
    selection = Spatial(budget=0.25).select([layout], {}, INFO)
    for p, count in enumerate(layout.valid_counts):
        if count == layout.tokens and selection.budgets[0][p] >= 4:
            assert _quadrants_covered(selection.keep[p], layout.side), f"partition {p} of {size}"


def test_spatial_on_a_24x24_partition_is_every_other_row_and_column():
    layout = layout_for((50, 70), Geometry(336, 14))
    keep = Spatial(budget=0.25).select([layout], {}, INFO).keep[0].view(24, 24)
    expected = torch.zeros(24, 24, dtype=torch.bool)
    expected[1::2, 1::2] = True
    assert torch.equal(keep, expected)


@settings(max_examples=100, deadline=None)
@given(size=sizes, rate=rates, geometry=geometries)
def test_spatial_spreads_over_each_valid_rectangle(size, rate, geometry):
    layout = layout_for(size, geometry)
    selection = Spatial(budget=rate).select([layout], {}, INFO)
    side = layout.side
    for p, k in enumerate(selection.budgets[0]):
        valid = layout.valid_mask[p].view(side, side)
        if k == 0:
            continue
        rows = torch.nonzero(valid.any(1)).flatten()
        cols = torch.nonzero(valid.any(0)).flatten()
        h, w = rows.numel(), cols.numel()
        kept = torch.nonzero(selection.keep[p].view(side, side))
        # every valid patch has a kept patch of its partition within the ideal lattice spacing
        spacing = max(math.sqrt(h * w / k), h / k, w / k)
        cells = torch.nonzero(valid)
        dist = (cells[:, None, :] - kept[None, :, :]).abs().max(dim=2).values.min(dim=1).values
        assert int(dist.max()) <= spacing


def test_spatial_needs_no_scores_and_ignores_them():
    layouts = [layout_for(s, NEXT) for s in [(90, 170), (60, 130)]]
    method = Spatial(budget=0.3)
    assert dict(method.score_layers(INFO)) == {}
    a = method.select(layouts, {}, INFO).keep
    b = method.select(layouts, random_scores(layouts, 1), INFO).keep
    assert torch.equal(a, b)


# -------------------------------------------------------------------------------------------- random


LAYOUTS = [layout_for(s, NEXT) for s in [(90, 170), (100, 220), (60, 130), (150, 150)]]


def test_random_is_repeatable_and_independent_of_batch_and_global_state():
    method = Random(budget=0.3, seed=7)
    torch.manual_seed(0)
    batch = method.select(LAYOUTS, {}, INFO).keep
    torch.manual_seed(123)
    again = Random(budget=0.3, seed=7).select(LAYOUTS, {}, INFO).keep
    assert torch.equal(batch, again)
    # each image alone, and the batch reversed, give the same per-image selections
    for layout, keep in zip(LAYOUTS, per_image(batch, LAYOUTS)):
        assert torch.equal(method.select([layout], {}, INFO).keep, keep)
    reversed_ = per_image(method.select(LAYOUTS[::-1], {}, INFO).keep, LAYOUTS[::-1])[::-1]
    assert all(torch.equal(a, b) for a, b in zip(reversed_, per_image(batch, LAYOUTS)))


def test_random_differs_between_seeds():
    masks = [Random(budget=0.3, seed=s).select(LAYOUTS, {}, INFO).keep for s in range(5)]
    for i in range(5):
        for j in range(i + 1, 5):
            assert not torch.equal(masks[i], masks[j]), f"seeds {i} and {j} chose the same patches"
    # and the choice is not a fixed pattern: over seeds, every valid patch of the full image gets kept
    many = torch.stack([Random(budget=0.3, seed=s).select(LAYOUTS[:1], {}, INFO).keep[0] for s in range(60)])
    assert bool(many.any(dim=0).all())


def test_random_ignores_scores():
    a = Random(budget=0.3).select(LAYOUTS, random_scores(LAYOUTS, 0), INFO).keep
    b = Random(budget=0.3).select(LAYOUTS, random_scores(LAYOUTS, 1), INFO).keep
    assert torch.equal(a, b)
    assert dict(Random().score_layers(INFO)) == {}


# ------------------------------------------------------------------------------------------- cls top-k


def test_cls_topk_keeps_the_highest_scores_in_each_partition():
    layout = layout_for((90, 170), NEXT)  # 2x2 grid with padding rows in every sub-image
    p, t = layout.num_partitions, layout.tokens
    gen = torch.Generator().manual_seed(3)
    scores = torch.randperm(p * t, generator=gen).float().view(p, t)
    scores[~layout.valid_mask] = 1e6  # padding patches score highest and must still be skipped
    method = ClsTopK(budget=0.25)
    selection = method.select([layout], {"select": scores}, INFO)
    for i, k in enumerate(selection.budgets[0]):
        valid = torch.nonzero(layout.valid_mask[i]).flatten()
        top = valid[scores[i, valid].argsort(descending=True)[:k]]
        assert torch.nonzero(selection.keep[i]).flatten().tolist() == sorted(top.tolist())


def test_cls_topk_reads_the_feature_layer_by_default():
    assert dict(ClsTopK().score_layers(INFO)) == {"select": INFO.feature_layer}
    assert dict(ClsTopK(selection_layer=0).score_layers(INFO)) == {"select": 0}


def test_cls_topk_follows_the_scores():
    layout = layout_for((50, 70), SINGLE)
    ramp = torch.arange(36, dtype=torch.float)[None]
    keep_high = ClsTopK(budget=0.25).select([layout], {"select": ramp}, INFO).keep[0]
    keep_low = ClsTopK(budget=0.25).select([layout], {"select": -ramp}, INFO).keep[0]
    assert torch.nonzero(keep_high).flatten().tolist() == list(range(27, 36))
    assert torch.nonzero(keep_low).flatten().tolist() == list(range(9))


# ----------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("cls", METHODS)
@pytest.mark.parametrize("budget", [0, 0.0, -0.1, 1.01, float("nan"), "a lot", None])
def test_bad_budget_is_rejected(cls, budget):
    with pytest.raises(ValueError, match="budget"):
        cls(budget=budget)


@pytest.mark.parametrize("seed", [1.5, "7", True, None])
def test_bad_seed_is_rejected(seed):
    with pytest.raises(ValueError, match="seed"):
        Random(seed=seed)


@pytest.mark.parametrize("layer", [-1, 1.5, True, "2"])
def test_bad_selection_layer_is_rejected(layer):
    with pytest.raises(ValueError, match="selection_layer"):
        ClsTopK(selection_layer=layer)


@pytest.mark.parametrize("cls", METHODS)
def test_bad_keep_newline_is_rejected(cls):
    with pytest.raises(ValueError, match="keep_newline"):
        cls(keep_newline="yes")


def test_registry_and_defaults():
    names = list_methods()
    assert {"spatial", "random", "cls_topk"} <= set(names)
    assert get_method("cls-topk", budget=0.3) == ClsTopK(budget=0.3)
    assert get_method("Random", seed=3) == Random(seed=3)
    assert get_method("spatial") == Spatial()
    for cls in METHODS:
        assert cls().budget == 0.2 and cls().keep_newline is False
        assert "floor(budget * P * T)" in cls.__doc__ and "arXiv" in cls.__doc__
    assert "2408.10945" in Spatial.__doc__ and "2412.01818" in ClsTopK.__doc__
    with pytest.raises(ValueError, match="alpha"):
        get_method("random", alpha=0.5)
    assert hired.Spatial is Spatial and hired.Random is Random and hired.ClsTopK is ClsTopK
    with pytest.raises(dataclasses.FrozenInstanceError):
        Spatial().budget = 0.5  # frozen


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture
def models(request, next_pair, llava_pair):
    """``(model, processor, geometry)`` for the family in ``request.param``; always stock afterwards."""
    model, processor = next_pair if request.param == "llava_next" else llava_pair
    geometry = NEXT if request.param == "llava_next" else SINGLE
    yield model, processor, geometry
    if hired.applied_method(model) is not None:
        hired.remove(model, processor)


E2E_SIZES = [(90, 170), (60, 130), (100, 220)]  # 2x2 with padding, 1x2, 1x3


def _batch(processor):
    images = [make_image(h, w, seed=i) for i, (h, w) in enumerate(E2E_SIZES)]
    return processor(images=images, text=[PROMPT] * len(images), return_tensors="pt", padding=True)


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


E2E_METHODS = [
    Spatial(budget=0.3),
    Random(budget=0.3, seed=5),
    ClsTopK(budget=0.3),
    Spatial(budget=0.2, keep_newline=True),
    ClsTopK(budget=0.5, selection_layer=0, keep_newline=True),
]


@pytest.mark.parametrize("models", ["llava_next", "llava"], indirect=True)
@pytest.mark.parametrize("method", E2E_METHODS, ids=lambda m: f"{m.name}-{m.budget}-{m.keep_newline}")
def test_end_to_end_generate_counts_and_remove(models, method):
    model, processor, geometry = models
    stock_inputs = _batch(processor)
    stock = _logits(model, stock_inputs)

    hired.apply(model, processor, method)
    inputs = _batch(processor)
    newline = geometry.grid_pinpoints is not None
    image_sizes = E2E_SIZES if newline else [(84, 84)] * len(E2E_SIZES)  # LLaVA-1.5 squashes to one crop
    layouts = [layout_for(s, geometry) for s in image_sizes]
    expected = [num_image_tokens(method, lay, newline) for lay in layouts]
    placeholders = (inputs["input_ids"] == processor.image_token_id).sum(dim=1).tolist()
    assert placeholders == expected
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out.shape == (len(E2E_SIZES), inputs["input_ids"].shape[1] + 2)
    selections = hired.last_selection(model)
    assert len(selections) == len(E2E_SIZES)
    for sel, layout, n in zip(selections, layouts, expected):
        assert sel.num_kept == expected_total(method.budget, layout) == method.count(layout)
        assert sel.num_tokens == n
        assert [p.budget for p in sel.partitions] == [len(p.kept) for p in sel.partitions]
        for part, valid in zip(sel.partitions, layout.valid_mask):
            assert all(bool(valid[i]) for i in part.kept)

    hired.remove(model, processor)
    assert torch.equal(_logits(model, _batch(processor)), stock)


@pytest.mark.parametrize("models", ["llava"], indirect=True)
def test_cls_topk_equals_hired_on_a_single_partition_model(models):
    # one partition: HiRED has no budget distribution, so it is exactly per-partition CLS top-k
    model, processor, _ = models
    kept = {}
    for method in (ClsTopK(budget=0.3), hired.HiRED(budget=0.3)):
        hired.apply(model, processor, method)
        _logits(model, _batch(processor))
        kept[method.name] = [[p.kept for p in sel.partitions] for sel in hired.last_selection(model)]
    assert kept["cls_topk"] == kept["hired"]


@pytest.mark.parametrize("models", ["llava"], indirect=True)
def test_hired_regions_on_a_single_partition_model(models):
    # LLaVA-1.5's 24x24-style grid, cut into 2x2 regions: the same count as without, the budget layer read
    model, processor, _ = models
    kept = {}
    for regions in (None, 2):
        hired.apply(model, processor, hired.HiRED(budget=0.3, regions=regions))
        assert set(hired.score_layers(model)) == ({"select"} if regions is None else {"budget", "select"})
        _logits(model, _batch(processor))
        kept[regions] = [[p.kept for p in sel.partitions] for sel in hired.last_selection(model)]
    assert [[len(k) for k in img] for img in kept[2]] == [[len(k) for k in img] for img in kept[None]]
    assert kept[2] != kept[None]


@pytest.mark.parametrize("models", ["llava_next"], indirect=True)
def test_hired_regions_is_refused_where_images_have_sub_images(models):
    model, processor, _ = models
    with pytest.raises(
        ValueError,
        match=r"HiRED\(regions=2\) shares the budget over regions of an image that is "
        r"one grid .* leave regions=None",
    ):
        hired.apply(model, processor, hired.HiRED(regions=2))
    assert hired.applied_method(model) is None
    with pytest.raises(ValueError, match="regions must be a positive number"):
        hired.HiRED(regions=0)


@pytest.mark.parametrize("models", ["llava_next"], indirect=True)
def test_random_in_a_batch_matches_one_by_one(models):
    model, processor, _ = models
    hired.apply(model, processor, Random(budget=0.25, seed=11))
    _logits(model, _batch(processor))
    batch = [[p.kept for p in sel.partitions] for sel in hired.last_selection(model)]
    for i, (h, w) in enumerate(E2E_SIZES):
        one = processor(images=[make_image(h, w, seed=i)], text=[PROMPT], return_tensors="pt")
        _logits(model, one)
        assert [p.kept for p in hired.last_selection(model)[0].partitions] == batch[i]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", [Spatial(budget=0.3), Random(budget=0.3), ClsTopK(budget=0.3)], ids=str)
def test_end_to_end_on_cuda(method, next_pair):
    model, processor = next_pair
    model.to("cuda")
    try:
        hired.apply(model, processor, method)
        inputs = _batch(processor).to("cuda")
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
        sels = hired.last_selection(model)
        layouts = [layout_for(s, NEXT) for s in E2E_SIZES]
        assert [s.num_kept for s in sels] == [method.count(lay) for lay in layouts]
        if not isinstance(method, ClsTopK):  # score-free: the same patches as on the CPU
            cpu = per_image(method.select(layouts, {}, INFO).keep, layouts)
            for sel, keep in zip(sels, cpu):
                assert [p.kept for p in sel.partitions] == [torch.nonzero(k).flatten().tolist() for k in keep]
    finally:
        if hired.applied_method(model) is not None:
            hired.remove(model, processor)
        model.to("cpu")


# ------------------------------------------------------------------------------------------------ cli


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from hired.testing import save_tiny

    path = tmp_path_factory.mktemp("tiny")
    save_tiny(path / "model")
    make_image(100, 220).save(path / "image.png")
    return path


@pytest.mark.parametrize("name", ["spatial", "random", "cls_topk"])
def test_cli_generate_accepts_the_baselines(tiny_folder, name, capsys):
    from hired.cli import main

    argv = ["generate", "--model", str(tiny_folder / "model"), "--image", str(tiny_folder / "image.png")]
    argv += ["--prompt", "hi", "--method", name, "--budget", "0.3", "--max-new-tokens", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    layout = layout_for((100, 220), NEXT)
    assert f"[{name}]" in out
    assert f"-> {expected_total(0.3, layout)} (" in out


def test_cli_rejects_alpha_for_a_method_without_it(tiny_folder):
    from hired.cli import main

    argv = ["generate", "--model", str(tiny_folder / "model"), "--image", str(tiny_folder / "image.png")]
    argv += ["--prompt", "hi", "--method", "random", "--alpha", "0.5"]
    with pytest.raises(SystemExit, match="alpha"):
        main(argv)


def test_cli_option_sets_the_seed(tiny_folder, capsys):
    from hired.cli import main

    argv = ["generate", "--model", str(tiny_folder / "model"), "--image", str(tiny_folder / "image.png")]
    argv += ["--prompt", "hi", "--method", "random", "--option", "seed=3", "--max-new-tokens", "1"]
    assert main(argv) == 0
    assert "[random]" in capsys.readouterr().out
