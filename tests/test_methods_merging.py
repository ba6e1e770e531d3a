"""The merging baselines (PruMerge, PruMerge+, VisionZip): outlier rule, merge weights, counts, and end-to-end
runs (processor path and the two-pass ``prepare_inputs`` path) on the tiny LLaVA-NeXT / LLaVA-1.5 models.

Expected values are computed here independently (numpy percentiles, explicit loops), not with the code
under test.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from conftest import last_record, make_image
from hypothesis import given, settings
from hypothesis import strategies as st

import hired
from hired.core.grid import Geometry, layout_for
from hired.core.merge import group_merge_weights, iqr_outliers, knn_merge_weights
from hired.methods import ModelInfo, PruMerge, PruMergePlus, VisionZip, get_method, num_image_tokens
from hired.methods.base import newline_tokens
from hired.methods.pack import pack_features
from hired.testing import default_pinpoints

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

NEXT = Geometry(84, 14, default_pinpoints(84))
SINGLE = Geometry(84, 14)
INFO = ModelInfo(num_layers=4, num_heads=2, feature_layer=2)
PROMPT = "USER: <image>\nwhat is this? ASSISTANT:"
SIZES = [(90, 170), (60, 130), (100, 220), (200, 70)]  # 2x2 padded, 1x2, 1x3, 3x1
FIXED = [PruMerge(budget=0.3), PruMergePlus(budget=0.3), VisionZip(budget=0.3), VisionZip(budget=0.5, contextual=0.5)]
ADAPTIVE = [PruMerge(), PruMergePlus(), PruMerge(neighbours=3, keep_newline=True)]


def numpy_outliers(row: np.ndarray) -> np.ndarray:
    """Indices above Q3 + 1.5 IQR, numpy's percentile rule (what the authors' code computes)."""
    q1, q3 = np.percentile(row, 25), np.percentile(row, 75)
    return np.nonzero(row > q3 + 1.5 * (q3 - q1))[0]


def batch_inputs(layouts, seed=0, dim=8):
    gen = torch.Generator().manual_seed(seed)
    n = sum(lay.num_partitions for lay in layouts)
    t = layouts[0].tokens
    scores = torch.rand(n, t, generator=gen).softmax(dim=1) * 2
    keys = torch.randn(n, t, dim, generator=gen)
    valid = torch.cat([lay.valid_mask for lay in layouts])
    return scores, keys, valid


def assert_convex(weights, keep, valid):
    """Rows of kept slots: non-negative, sum to one, support on valid patches of the same partition."""
    rows = weights[keep]  # (kept, T)
    assert torch.all(rows >= 0)
    torch.testing.assert_close(rows.sum(dim=1), torch.ones(rows.shape[0]), rtol=0, atol=1e-5)
    support = (weights > 0) & keep[:, :, None]
    assert not torch.any(support & ~valid[:, None, :])


# ------------------------------------------------------------------------------------------- core rules


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=4, max_size=40), st.data())
def test_iqr_outliers_match_numpy_percentiles(values, data):
    row = np.array(values, dtype=np.float32)
    valid = np.array(data.draw(st.lists(st.booleans(), min_size=len(row), max_size=len(row))))
    valid[0] = True
    got = iqr_outliers(torch.from_numpy(row)[None], torch.from_numpy(valid)[None])[0].numpy()
    expected = np.zeros(len(row), bool)
    idx = np.nonzero(valid)[0]
    expected[idx[numpy_outliers(row[idx].astype(np.float64))]] = True
    assert np.array_equal(got, expected)


def test_prumerge_adaptive_count_is_the_outlier_rule_on_a_constructed_row():
    layout = layout_for((84, 84), SINGLE)  # one 6x6 partition
    row = torch.linspace(0.010, 0.020, 36)  # quartiles about 0.0125 and 0.0175: upper fence about 0.025
    row[[3, 17, 30]] = torch.tensor([0.5, 0.3, 0.2])  # three clear outliers
    row[5] = 0.024  # high, but inside the fence
    keys = torch.randn(1, 36, 8)
    sel = PruMerge().select([layout], {"select": row[None]}, INFO, keys={"merge": keys})
    assert torch.nonzero(sel.keep[0]).flatten().tolist() == [3, 17, 30]
    assert sel.budgets == [[3]]
    assert numpy_outliers(row.numpy().astype(np.float64)).tolist() == [3, 17, 30]


def test_prumerge_keeps_the_best_patch_when_nothing_stands_out():
    layout = layout_for((84, 84), SINGLE)
    row = torch.linspace(0.0, 1.0, 36)  # uniform: no outliers
    sel = PruMerge().select([layout], {"select": row[None]}, INFO, keys={"merge": torch.randn(1, 36, 4)})
    assert sel.budgets == [[1]] and torch.nonzero(sel.keep[0]).flatten().tolist() == [35]


def test_prumerge_plus_adds_three_lattice_points_per_outlier():
    layout = layout_for((84, 84), SINGLE)
    row = torch.linspace(0.010, 0.020, 36)
    row[[7, 28]] = 0.4
    sel = PruMergePlus().select([layout], {"select": row[None]}, INFO, keys={"merge": torch.randn(1, 36, 4)})
    kept = set(torch.nonzero(sel.keep[0]).flatten().tolist())
    assert {7, 28} <= kept
    assert 6 <= len(kept) <= 8 and sel.budgets == [[len(kept)]]  # 2 outliers + 6 lattice points (overlaps merge)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10), st.integers(0, 2**31 - 1))
def test_knn_merge_is_convex_and_uses_the_k_nearest_dropped_patches(k, seed):
    layout = layout_for((84, 84), SINGLE)
    scores, keys, valid = batch_inputs([layout], seed)
    keep = torch.zeros_like(valid)
    keep[0, torch.randperm(36, generator=torch.Generator().manual_seed(seed))[:5]] = True
    weights = knn_merge_weights(keys, scores, keep, valid, k)
    assert_convex(weights, keep, valid)
    unit = torch.nn.functional.normalize(keys[0], dim=-1)
    dropped = torch.nonzero(~keep[0]).flatten()
    for t in torch.nonzero(keep[0]).flatten().tolist():
        sims = unit[t] @ unit[dropped].T
        near = dropped[sims.argsort(descending=True)[:k]].tolist()
        support = set(torch.nonzero(weights[0, t]).flatten().tolist())
        assert support == {t, *near}
        # weights proportional to attention
        w = weights[0, t, list(support)]
        a = scores[0, list(support)]
        torch.testing.assert_close(w, a / a.sum(), rtol=1e-5, atol=1e-6)


def test_group_merge_partitions_members_among_targets():
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(2, 36, 6, generator=gen)
    targets = torch.zeros(2, 36, dtype=torch.bool)
    targets[:, [0, 10, 20]] = True
    members = torch.zeros_like(targets)
    members[:, 21:] = True
    weights = group_merge_weights(keys, targets, members)
    valid = torch.ones_like(targets)
    assert_convex(weights, targets, valid)
    unit = torch.nn.functional.normalize(keys, dim=-1)
    for p in range(2):
        owner = (unit[p, 21:] @ unit[p, [0, 10, 20]].T).argmax(dim=1)
        for j, o in enumerate(owner.tolist()):
            t = [0, 10, 20][o]
            assert weights[p, t, 21 + j] > 0
        # each member feeds exactly one target; groups are plain means
        assert torch.equal((weights[p][targets[p]][:, 21:] > 0).sum(dim=0), torch.ones(15, dtype=torch.long))
        for t in (0, 10, 20):
            nz = weights[p, t][weights[p, t] > 0]
            torch.testing.assert_close(nz, torch.full_like(nz, 1 / nz.numel()))


# ------------------------------------------------------------------------------------------- the methods


sizes = st.tuples(st.integers(1, 900), st.integers(1, 900))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(sizes, min_size=1, max_size=3),
    st.floats(0.01, 1.0),
    st.sampled_from(["prumerge", "prumerge_plus", "visionzip"]),
    st.sampled_from([NEXT, SINGLE]),
    st.integers(0, 1000),
)
def test_fixed_budget_count_is_exact_and_tokens_are_convex(size_list, rate, name, geometry, seed):
    method = get_method(name, budget=rate)
    layouts = [layout_for(s, geometry) for s in size_list]
    scores, keys, valid = batch_inputs(layouts, seed)
    sel = method.select(layouts, {"select": scores}, INFO, keys={"merge": keys})
    start = 0
    for layout, budgets in zip(layouts, sel.budgets):
        p = layout.num_partitions
        expected = min(max(math.floor(Fraction(repr(float(rate))) * p * layout.tokens), 1), layout.num_valid)
        assert method.count(layout) == sum(budgets) == expected
        assert sel.keep[start : start + p].sum(dim=1).tolist() == budgets
        start += p
    assert not torch.any(sel.keep & ~valid)
    assert_convex(sel.weights, sel.keep, valid)


def test_visionzip_splits_dominant_and_contextual_tokens():
    layout = layout_for((84, 84), SINGLE)
    scores, keys, valid = batch_inputs([layout], 3)
    method = VisionZip(budget=0.5, contextual=0.25)  # 18 tokens: 4 contextual (round(4.5) = 4), 14 dominant
    sel = method.select([layout], {"select": scores}, INFO, keys={"merge": keys})
    dominant = set(scores[0].argsort(descending=True)[:14].tolist())
    merged = (sel.weights[0].diagonal() < 1) & sel.keep[0]
    plain = set(torch.nonzero(sel.keep[0] & ~merged).flatten().tolist())
    assert sel.budgets == [[18]] and dominant <= set(torch.nonzero(sel.keep[0]).flatten().tolist())
    assert len(set(torch.nonzero(sel.keep[0]).flatten().tolist()) - dominant) == 4
    assert plain >= dominant - plain  # dominant tokens are kept as they are
    # every non-dominant valid patch ends up in exactly one contextual token
    ctx_rows = sel.weights[0][sorted(set(torch.nonzero(sel.keep[0]).flatten().tolist()) - dominant)]
    rest = sorted(set(range(36)) - dominant)
    assert torch.equal((ctx_rows[:, rest] > 0).sum(dim=0), torch.ones(len(rest), dtype=torch.long))


def test_adaptive_methods_refuse_a_count_and_name_the_two_pass_path():
    layout = layout_for((90, 170), NEXT)
    for method in ADAPTIVE:
        assert method.adaptive
        with pytest.raises(ValueError, match="prepare_inputs"):
            num_image_tokens(method, layout, True)
        with pytest.raises(ValueError, match="budget"):
            method.count(layout)
    assert not PruMerge(budget=0.2).adaptive and not VisionZip().adaptive and not hired.HiRED().adaptive


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"budget": 0.0}, "budget"),
        ({"budget": 2}, "budget"),
        ({"neighbours": -1}, "neighbours"),
        ({"neighbours": 2.5}, "neighbours"),
        ({"layer": -1}, "layer"),
        ({"keep_newline": 1}, "keep_newline"),
    ],
)
def test_prumerge_bad_options(kwargs, match):
    for cls in (PruMerge, PruMergePlus):
        with pytest.raises(ValueError, match=match):
            cls(**kwargs)


@pytest.mark.parametrize("kwargs, match", [({"contextual": 1.5}, "contextual"), ({"budget": None}, "budget")])
def test_visionzip_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VisionZip(**kwargs)


def test_registry_lists_the_merging_methods_with_papers_and_budget_semantics():
    names = hired.list_methods()
    for name, cls in (("prumerge", PruMerge), ("prumerge_plus", PruMergePlus), ("visionzip", VisionZip)):
        assert name in names and names[name]
        assert "arXiv" in cls.__doc__ and "Budget semantics" in cls.__doc__
    assert get_method("prumerge-plus", budget=0.3) == PruMergePlus(budget=0.3)
    assert hired.PruMerge is PruMerge and hired.VisionZip is VisionZip


def test_pack_features_applies_the_weights():
    layouts = [layout_for(s, NEXT) for s in SIZES[:2]]
    scores, keys, valid = batch_inputs(layouts, 1)
    feats = torch.randn(scores.shape[0], scores.shape[1], 5, dtype=torch.float64)
    method = PruMergePlus(budget=0.4)
    sel = method.select(layouts, {"select": scores}, INFO, keys={"merge": keys})
    packed = pack_features(method, layouts, sel, feats, newline=True)
    merged = torch.bmm(sel.weights.double(), feats)
    expected = torch.cat([merged[p][sel.keep[p]] for p in range(scores.shape[0])])  # per partition, raster order
    assert packed.lengths == [method.count(lay) for lay in layouts]
    # pack order regroups sub-image rows into canvas rows; compare as multisets of rows
    got = packed.features[~packed.is_newline]
    assert torch.allclose(got.sort(dim=0).values, expected.sort(dim=0).values)


# ------------------------------------------------------------------------------------------ end to end


def images():
    return [make_image(h, w, seed=i) for i, (h, w) in enumerate(SIZES)]


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def kept(model):
    return [[p.kept for p in sel.partitions] for sel in hired.last_selection(model)]


@pytest.mark.parametrize("models", ["llava_next", "llava"], indirect=True)
@pytest.mark.parametrize("method", FIXED, ids=lambda m: f"{m.name}-{m.budget}")
def test_fixed_budget_end_to_end_generate_batch_and_remove(models, method):
    model, processor, newline = models
    stock = logits(model, processor(images=images(), text=[PROMPT] * 4, return_tensors="pt", padding=True))
    hired.apply(model, processor, method)
    inputs = processor(images=images(), text=[PROMPT] * 4, return_tensors="pt", padding=True)
    geometry = NEXT if newline else SINGLE
    layouts = [layout_for(s if newline else (84, 84), geometry) for s in SIZES]
    placeholders = (inputs["input_ids"] == processor.image_token_id).sum(dim=1).tolist()
    assert placeholders == [num_image_tokens(method, lay, newline) for lay in layouts]
    with torch.no_grad():
        batch = model.generate(**inputs, max_new_tokens=3, do_sample=False)[:, -3:]
    batch_kept = kept(model)
    # two-pass inputs give the same tokens
    two_pass = hired.prepare_inputs(
        model, processor, images=images(), text=[PROMPT] * 4, return_tensors="pt", padding=True
    )
    assert torch.equal(two_pass["input_ids"], inputs["input_ids"])
    with torch.no_grad():
        assert torch.equal(model.generate(**two_pass, max_new_tokens=3, do_sample=False)[:, -3:], batch)
    for i, img in enumerate(images()):
        one = processor(images=[img], text=[PROMPT], return_tensors="pt")
        with torch.no_grad():
            assert torch.equal(model.generate(**one, max_new_tokens=3, do_sample=False)[:, -3:], batch[i : i + 1])
        assert kept(model)[0] == batch_kept[i]
    hired.remove(model, processor)
    after = logits(model, processor(images=images(), text=[PROMPT] * 4, return_tensors="pt", padding=True))
    assert torch.equal(after, stock)


@pytest.mark.parametrize("models", ["llava_next", "llava"], indirect=True)
@pytest.mark.parametrize("method", ADAPTIVE, ids=lambda m: f"{m.name}-{m.neighbours}-{m.keep_newline}")
def test_adaptive_end_to_end_through_prepare_inputs(models, method):
    model, processor, newline = models
    hired.apply(model, processor, method)
    with pytest.raises(ValueError, match="prepare_inputs"):
        processor(images=images(), text=[PROMPT] * 4, return_tensors="pt", padding=True)
    inputs = hired.prepare_inputs(
        model, processor, images=images(), text=[PROMPT] * 4, return_tensors="pt", padding=True
    )
    assert "pixel_values" not in inputs
    sels = hired.last_selection(model)
    scores = hired.last_scores(model)
    layouts = last_record(model).layouts
    placeholders = (inputs["input_ids"] == processor.image_token_id).sum(dim=1).tolist()
    assert placeholders == [s.num_tokens for s in sels]
    for sel, score, layout in zip(sels, scores, layouts):
        for part, row, valid in zip(sel.partitions, score["select"], layout.valid_mask):
            idx = torch.nonzero(valid).flatten().numpy()
            out = idx[numpy_outliers(row.numpy()[idx].astype(np.float64))].tolist()
            out = out or [int(idx[row.numpy()[idx].argmax()])]  # never an empty partition
            if isinstance(method, PruMerge):
                assert part.kept == sorted(out)
            else:
                assert set(out) < set(part.kept) or len(out) * 4 > part.valid
            assert part.budget == len(part.kept)
        newlines = newline_tokens(layout) if newline and method.keep_newline else 0
        assert sel.num_tokens == sel.num_kept + newlines
    with torch.no_grad():
        batch = model.generate(**inputs, max_new_tokens=3, do_sample=False)[:, -3:]
    batch_kept = kept(model)
    for i, img in enumerate(images()):
        one = hired.prepare_inputs(model, processor, images=[img], text=[PROMPT], return_tensors="pt")
        with torch.no_grad():
            assert torch.equal(model.generate(**one, max_new_tokens=3, do_sample=False)[:, -3:], batch[i : i + 1])
        assert kept(model)[0] == batch_kept[i]


@pytest.mark.parametrize("models", ["llava_next"], indirect=True)
def test_projector_sees_convex_combinations_of_the_feature_layer(models):
    model, processor, _ = models
    method = VisionZip(budget=0.4, contextual=0.3)
    hired.apply(model, processor, method)
    seen = []
    handle = model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    try:
        inputs = processor(images=images()[:2], text=[PROMPT] * 2, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.model.vision_tower(
                torch.cat([pv[: layout_for(s, NEXT).num_partitions] for pv, s in zip(inputs["pixel_values"], SIZES)]),
                output_hidden_states=True,
            )
            logits(model, inputs)
    finally:
        handle.remove()
    feats = out.hidden_states[-2][:, 1:]  # the feature layer (vision_feature_layer = -2), no [CLS]
    record = last_record(model)
    layouts, selection = record.layouts, record.selection
    expected = pack_features(method, layouts, selection, feats, newline=True).features
    torch.testing.assert_close(seen[0], expected, rtol=1e-5, atol=1e-5)
    # each row lies in the convex hull: weights are non-negative and sum to one
    valid = torch.cat([lay.valid_mask for lay in layouts])
    assert_convex(selection.weights, selection.keep, valid)


def test_prepare_inputs_needs_the_applied_processor(next_pair):
    model, processor = next_pair
    with pytest.raises(ValueError, match="no hired method"):
        hired.prepare_inputs(model, processor, images=images()[:1], text=[PROMPT])
    hired.apply(model, None, PruMerge())
    try:
        with pytest.raises(ValueError, match="processor"):
            hired.prepare_inputs(model, processor, images=images()[:1], text=[PROMPT])
    finally:
        hired.remove(model)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from hired.testing import save_tiny

    path = tmp_path_factory.mktemp("tiny")
    save_tiny(path / "model")
    make_image(100, 220).save(path / "image.png")
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["--method", "prumerge"],
        ["--method", "prumerge_plus"],
        ["--method", "prumerge", "--budget", "0.3"],
        ["--method", "visionzip", "--budget", "0.3"],
    ],
)
def test_cli_generate_runs_the_merging_methods(tiny_folder, argv, capsys):
    from hired.cli import main

    base = ["generate", "--model", str(tiny_folder / "model"), "--image", str(tiny_folder / "image.png")]
    assert main(base + ["--prompt", "hi", "--max-new-tokens", "2"] + argv) == 0
    out = capsys.readouterr().out
    assert f"[{argv[1]}]" in out and "kept per partition" in out
    if "--budget" in argv:
        assert f"-> {math.floor(0.3 * 4 * 36)} (" in out


def test_default_layers_follow_the_authors_code():
    info = ModelInfo(num_layers=24, num_heads=16, feature_layer=22)  # LLaVA's CLIP, vision_feature_layer=-2
    assert PruMerge().score_layers(info) == {"select": 23} and PruMerge().key_layers(info) == {"merge": 23}
    assert VisionZip().score_layers(info) == {"select": 22} and VisionZip().key_layers(info) == {"merge": 22}
    assert PruMergePlus(layer=5).key_layers(info) == {"merge": 5}
    with pytest.raises(ValueError, match="keys of encoder layer 22"):
        VisionZip().select([layout_for((84, 84), SINGLE)], {"select": torch.rand(1, 36)}, info)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", [PruMerge(), PruMergePlus(budget=0.3), VisionZip(budget=0.3)], ids=str)
def test_merging_on_cuda_matches_the_cpu_count(method, next_pair):
    model, processor = next_pair
    hired.apply(model, processor, method)
    try:
        hired.prepare_inputs(model, processor, images=images(), text=[PROMPT] * 4, return_tensors="pt", padding=True)
        cpu_counts = [s.num_tokens for s in hired.last_selection(model)]
        model.to("cuda")
        inputs = hired.prepare_inputs(
            model, processor, images=images(), text=[PROMPT] * 4, return_tensors="pt", padding=True
        ).to("cuda")
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
        counts = [s.num_tokens for s in hired.last_selection(model)]
        assert inputs["mm_encoder_outputs"]["image"].pooler_output[0].device.type == "cuda"
        if not method.adaptive:
            assert counts == cpu_counts
        assert (inputs["input_ids"] == processor.image_token_id).sum(dim=1).tolist() == counts
    finally:
        hired.remove(model, processor)
        model.to("cpu")
