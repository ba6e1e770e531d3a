"""Integration tests of the transformers adapter on tiny random-weight LLaVA-NeXT / LLaVA-1.5 models.

Expected values are derived independently of hired's own geometry code: grids, partition counts and
valid (unpadded) patches come from transformers' LLaVA-NeXT helpers (``get_anyres_image_grid_shape``,
``image_size_to_num_patches``, ``pack_image_features`` run on index "features"), and budgets from the
paper's formula B = floor(r * P * T) evaluated on the decimal value of r.
"""

from __future__ import annotations

import copy
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from conftest import make_image, placeholder_runs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

import hired
from hired.testing import tiny_llava, tiny_llava_next

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

T = 36  # 84 px crops of 14 px patches: 6 x 6 tokens per partition
SIDE = 6
PROMPT = "USER: <image>\nwhat is this? ASSISTANT:"

# image size (h, w) -> (rows, cols) of the anyres grid with the tiny pinpoints
GRID_SIZES = {
    (60, 130): (1, 2),
    (130, 60): (2, 1),
    (150, 150): (2, 2),
    (90, 170): (2, 2),  # 2x2 canvas with a large unpadded band
    (100, 220): (1, 3),
    (220, 100): (3, 1),
}
SIZES = list(GRID_SIZES)


# --------------------------------------------------------------------------------------------- helpers


def _inputs(processor, images, prompts, dtype=None):
    kwargs = {"text": prompts, "return_tensors": "pt", "padding": True}
    if images:
        kwargs["images"] = images
    out = processor(**kwargs)
    if dtype is not None and "pixel_values" in out:
        out["pixel_values"] = out["pixel_values"].to(dtype)
    return out


def _one_per_prompt(processor, sizes, seed=0):
    images = [make_image(h, w, seed=seed + i) for i, (h, w) in enumerate(sizes)]
    return _inputs(processor, images, [PROMPT] * len(images))


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def _floor_rate(rate: float, n: int) -> int:
    """floor(rate * n) on the decimal the user wrote (0.35 * 180 = 63, not 62.999...)."""
    return math.floor(Fraction(str(rate)) * n)


def _stock_grid(model, size) -> tuple[int, int]:
    """(rows, cols) of sub-images per transformers' own LLaVA-NeXT code; (0, 0) for LLaVA-1.5."""
    cfg = model.config
    if not hasattr(cfg, "image_grid_pinpoints"):
        return (0, 0)
    from transformers.models.llava_next.modeling_llava_next import (
        get_anyres_image_grid_shape,
        image_size_to_num_patches,
    )

    crop = cfg.vision_config.image_size
    rows, cols = get_anyres_image_grid_shape(list(size), cfg.image_grid_pinpoints, crop)
    assert image_size_to_num_patches(list(size), cfg.image_grid_pinpoints, crop) == 1 + rows * cols
    return rows, cols


def _stock_pack_order(model, size) -> list[int]:
    """Flat patch indices (partition * T + t) in the order the *stock* model feeds them to the LLM,
    with -1 for every image-newline token. Obtained by running transformers' ``pack_image_features``
    on features whose value is their own index."""
    if not hasattr(model.config, "image_grid_pinpoints"):
        return list(range(T))
    rows, cols = _stock_grid(model, size)
    p = 1 + rows * cols
    feats = torch.arange(p * T, dtype=torch.float64).view(p, T, 1)
    packed, _ = model.model.pack_image_features(
        [feats], torch.tensor([list(size)]), "default", image_newline=torch.tensor([-1.0], dtype=torch.float64)
    )
    return [int(v) for v in packed[0][:, 0].tolist()]


def _stock_valid(model, size) -> list[set[int]]:
    """Valid (unpadded) patch indices of each partition, local to the partition."""
    rows, cols = _stock_grid(model, size)
    valid = [set() for _ in range(1 + rows * cols)]
    for idx in _stock_pack_order(model, size):
        if idx >= 0:
            valid[idx // T].add(idx % T)
    return valid


def _check_selection(model, sel, size, budget, alpha, keep_newline):
    """Every property of one ImageSelection that follows from the spec and the stock geometry."""
    newline_model = hasattr(model.config, "image_grid_pinpoints")
    rows, cols = _stock_grid(model, size)
    p = 1 + rows * cols
    valid = _stock_valid(model, size)
    order = _stock_pack_order(model, size)
    num_valid = sum(len(v) for v in valid)
    newlines = order.count(-1) if newline_model else 0
    if newline_model:
        assert len(order) == num_valid + newlines

    # LLaVA-1.5 never sees the original size: its pixel values are one centre crop
    crop = model.config.vision_config.image_size
    assert tuple(sel.image_size) == (tuple(size) if newline_model else (crop, crop))
    assert tuple(sel.grid) == (rows, cols)
    assert len(sel.partitions) == p

    big_b = _floor_rate(budget, p * T)
    expected_kept = min(big_b, num_valid)
    assert sel.num_kept == expected_kept
    assert sum(part.budget for part in sel.partitions) == expected_kept
    assert sel.num_tokens == expected_kept + (newlines if keep_newline else 0)
    assert sel.num_tokens_stock == num_valid + newlines

    for i, part in enumerate(sel.partitions):
        assert tuple(part.grid) == (SIDE, SIDE)
        assert part.valid == len(valid[i])
        assert len(part.kept) == part.budget, f"partition {i}"
        assert all(a < b for a, b in zip(part.kept, part.kept[1:])), f"partition {i} not ascending"
        assert set(part.kept) <= valid[i], f"partition {i} keeps padding patches"
        assert 0 <= part.budget <= len(valid[i])

    # full image: floor(alpha * B) (capped at T), plus what the sub-images' caps could not absorb
    if p > 1:
        full0 = min(_floor_rate(alpha, big_b), T)
        subs = min(big_b - full0, num_valid - T)
        full = full0 + min(big_b - full0 - subs, T - full0)
        assert sel.partitions[0].budget == full


def _expected_features(model, inputs, image_idx_in_batch, size, sel, keep_newline, newline_model):
    """What hired should hand the LLM for one image: the stock projector's output for the kept
    patches, in the stock packing order, with image-newline embeddings kept only if asked."""
    inner = model.model
    pv = inputs["pixel_values"][image_idx_in_batch]
    rows, cols = _stock_grid(model, size)
    p = 1 + rows * cols
    if pv.dim() == 4:  # LLaVA-NeXT: (max partitions, C, H, W)
        pv = pv[:p]
    else:
        pv = pv[None]
    with torch.no_grad():
        hidden = inner.vision_tower(pv, output_hidden_states=True).hidden_states[model.config.vision_feature_layer]
        proj = inner.multi_modal_projector(hidden[:, 1:]).flatten(0, 1)
    kept = {i * T + k for i, part in enumerate(sel.partitions) for k in part.kept}
    rows_out = []
    for idx in _stock_pack_order(model, size):
        if idx == -1:
            if newline_model and keep_newline:
                rows_out.append(inner.image_newline.to(proj.dtype))
        elif idx in kept:
            rows_out.append(proj[idx])
    return torch.stack(rows_out)


# ------------------------------------------------------------------- 1. budget 1.0 is the stock model


@pytest.mark.parametrize("sizes", [SIZES, [(100, 220)], [(150, 150), (60, 130)]], ids=["all", "1x3", "2x2+1x2"])
def test_full_budget_with_newlines_is_bit_identical_llava_next(llava_next, sizes):
    model, processor = llava_next
    stock_inputs = _one_per_prompt(processor, sizes)
    stock = _logits(model, stock_inputs)
    # the grids are the ones this test means to cover
    assert [_stock_grid(model, s) for s in sizes] == [GRID_SIZES[s] for s in sizes]

    hired.apply(model, processor, hired.HiRED(budget=1.0, alpha=0.5, keep_newline=True))
    inputs = _one_per_prompt(processor, sizes)
    assert torch.equal(inputs["input_ids"], stock_inputs["input_ids"])
    assert torch.equal(inputs["attention_mask"], stock_inputs["attention_mask"])
    assert torch.equal(_logits(model, inputs), stock)
    sels = hired.last_selection(model)
    assert [s.num_tokens for s in sels] == [s.num_tokens_stock for s in sels]

    hired.remove(model, processor)
    after = _one_per_prompt(processor, sizes)
    assert torch.equal(after["input_ids"], stock_inputs["input_ids"])
    assert torch.equal(_logits(model, after), stock)
    assert hired.applied_method(model) is None


def test_full_budget_is_bit_identical_llava15(llava, image_factory):
    model, processor = llava
    images = [image_factory(h, w, seed=i) for i, (h, w) in enumerate(SIZES[:3])]
    stock_inputs = _inputs(processor, images, [PROMPT] * 3)
    stock = _logits(model, stock_inputs)

    hired.apply(model, processor, hired.HiRED(budget=1.0, keep_newline=True))
    inputs = _inputs(processor, images, [PROMPT] * 3)
    assert torch.equal(inputs["input_ids"], stock_inputs["input_ids"])
    assert torch.equal(_logits(model, inputs), stock)
    assert all(s.num_tokens == T and s.grid == (0, 0) for s in hired.last_selection(model))

    hired.remove(model, processor)
    after = _inputs(processor, images, [PROMPT] * 3)
    assert torch.equal(after["input_ids"], stock_inputs["input_ids"])
    assert torch.equal(_logits(model, after), stock)


def test_full_budget_without_newlines_keeps_every_valid_patch(llava_next):
    model, processor = llava_next
    hired.apply(model, processor, hired.HiRED(budget=1.0, keep_newline=False))
    inputs = _one_per_prompt(processor, SIZES)
    _logits(model, inputs)
    for sel, size in zip(hired.last_selection(model), SIZES):
        valid = _stock_valid(model, size)
        assert [set(p.kept) for p in sel.partitions] == valid
        assert sel.num_tokens == sum(map(len, valid))


# ------------------------------------------------- 2. placeholder count == selection == LLM features


def _check_counts(model, processor, sizes, method, seed=0):
    """Apply ``method``, then check placeholders, selections, features and generation for ``sizes``."""
    newline_model = hasattr(model.config, "image_grid_pinpoints")
    hired.apply(model, processor, method)
    try:
        images = [make_image(h, w, seed=seed + i) for i, (h, w) in enumerate(sizes)]
        inputs = _inputs(processor, images, [PROMPT] * len(images))
        runs = placeholder_runs(inputs["input_ids"], model.config.image_token_id)
        assert len(runs) == len(sizes)

        with torch.no_grad():
            kwargs = {"image_sizes": inputs["image_sizes"]} if "image_sizes" in inputs else {}
            feats = model.model.get_image_features(pixel_values=inputs["pixel_values"], **kwargs).pooler_output
        sels = hired.last_selection(model)
        assert len(sels) == len(sizes) == len(feats)
        for i, (sel, size) in enumerate(zip(sels, sizes)):
            assert runs[i] == sel.num_tokens == feats[i].shape[0], f"image {size}"
            _check_selection(model, sel, size, method.budget, method.alpha, method.keep_newline)
            expected = _expected_features(model, inputs, i, size, sel, method.keep_newline, newline_model)
            torch.testing.assert_close(feats[i], expected, rtol=1e-5, atol=1e-5)

        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        assert out.shape[1] > inputs["input_ids"].shape[1]
        assert [s.num_tokens for s in hired.last_selection(model)] == runs
    finally:
        hired.remove(model, processor)


@pytest.mark.parametrize(
    "budget, alpha, keep_newline",
    [
        (0.05, 0.5, False),
        (0.2, 0.5, False),
        (0.2, 0.0, False),
        (0.35, 1.0, False),  # 0.35 * 180 must floor to 63, not 62
        (0.5, 0.3, True),
        (0.75, 0.9, False),  # sub-image caps bind: budget returns to the full image
        (1.0, 0.5, False),
    ],
)
def test_counts_llava_next(llava_next, budget, alpha, keep_newline):
    model, processor = llava_next
    _check_counts(model, processor, SIZES, hired.HiRED(budget=budget, alpha=alpha, keep_newline=keep_newline))


@pytest.mark.parametrize("budget, alpha", [(0.05, 0.5), (0.29, 0.5), (0.5, 0.0), (0.99, 1.0)])
def test_counts_llava15(llava, budget, alpha):
    model, processor = llava
    _check_counts(model, processor, SIZES[:3], hired.HiRED(budget=budget, alpha=alpha))


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    h=st.integers(20, 400),
    w=st.integers(20, 400),
    budget=st.sampled_from([0.01, 0.1, 0.2, 0.33, 0.5, 0.7, 1.0]),
    alpha=st.sampled_from([0.0, 0.25, 0.5, 0.8, 1.0]),
    keep_newline=st.booleans(),
    mapping=st.sampled_from(["2d", "reference"]),
)
def test_counts_random_sizes(llava_next, h, w, budget, alpha, keep_newline, mapping):
    model, processor = llava_next
    method = hired.HiRED(budget=budget, alpha=alpha, keep_newline=keep_newline, mapping=mapping)
    _check_counts(model, processor, [(h, w)], method, seed=h * 1000 + w)


# ---------------------------------------------------------------------------------------- 3. batching


def _generate(model, inputs, n=6):
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[:, inputs["input_ids"].shape[1] :]


@pytest.mark.parametrize("family", ["llava_next", "llava"])
def test_batch_matches_one_by_one(request, family):
    model, processor = request.getfixturevalue(family)
    a, b, c, d = (make_image(*s, seed=10 + i) for i, s in enumerate([(100, 220), (150, 150), (60, 130), (220, 100)]))
    prompts = [
        ("USER: <image>\nwhat is this? ASSISTANT:", [a]),
        ("USER: <image>\n<image>\ncompare the two images . ASSISTANT:", [b, c]),
        ("USER: describe the picture in detail . ASSISTANT:", []),
        ("USER: <image>\nhow many ? ASSISTANT:", [d]),
    ]
    hired.apply(model, processor, hired.HiRED(budget=0.3, alpha=0.4))

    singles, single_sels = [], []
    for text, imgs in prompts:
        inputs = _inputs(processor, imgs, [text])
        singles.append(_generate(model, inputs)[0])
        single_sels += hired.last_selection(model) if imgs else []

    batch = _inputs(processor, [a, b, c, d], [t for t, _ in prompts])
    assert processor.tokenizer.padding_side == "left"
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 1  # padding really happened
    gen = _generate(model, batch)
    batch_sels = hired.last_selection(model)

    for i, single in enumerate(singles):
        assert torch.equal(gen[i], single), f"prompt {i}"
    assert len(batch_sels) == 4
    assert batch_sels == single_sels
    assert placeholder_runs(batch["input_ids"], model.config.image_token_id) == [s.num_tokens for s in batch_sels]


# ------------------------------------------------------------------ 4. attention kinds and dtypes


def test_sdpa_and_eager_agree(llava_next, llava_next_eager):
    sizes = [(100, 220), (150, 150), (130, 60)]
    method = hired.HiRED(budget=0.25, alpha=0.5)
    sels = {}
    for name, (model, processor) in {"sdpa": llava_next, "eager": llava_next_eager}.items():
        hired.apply(model, processor, method)
        inputs = _one_per_prompt(processor, sizes)
        gen = _generate(model, inputs, n=4)
        assert gen.shape == (len(sizes), 4)
        sels[name] = hired.last_selection(model)
        for sel, size in zip(sels[name], sizes):
            _check_selection(model, sel, size, 0.25, 0.5, False)
    assert sels["sdpa"] == sels["eager"]


def _cls_attention_rows(eager_model, pixel_values, layer):
    """(P, T) [CLS] attention over the patches at vision ``layer``, summed over heads, read from the
    eager tower's own attention probabilities (an independent path from hired's q/k hooks)."""
    with torch.no_grad():
        att = eager_model.model.vision_tower(pixel_values, output_attentions=True).attentions[layer]
    return att[:, :, 0, 1:].float().sum(dim=1)


@pytest.mark.parametrize("budget_layer, selection_layer", [(0, None), (1, 3), (3, 0)])
def test_selection_follows_cls_attention(llava_next, llava_next_eager, budget_layer, selection_layer):
    """Kept patches are the top-k of the selection layer's [CLS] attention within the valid patches,
    and the per-partition budgets are the method's allocation for the budget layer's attention."""
    from hired.core.grid import Geometry, layout_for

    model, processor = llava_next  # sdpa: hired must read attention through its hooks
    eager, _ = llava_next_eager
    sizes = [(100, 220), (150, 150), (130, 60)]
    method = hired.HiRED(budget=0.3, alpha=0.4, budget_layer=budget_layer, selection_layer=selection_layer)
    hired.apply(model, processor, method)
    inputs = _one_per_prompt(processor, sizes, seed=5)
    _logits(model, inputs)
    sels = hired.last_selection(model)
    sel_layer = 2 if selection_layer is None else selection_layer  # vision_feature_layer -2 of 4 layers
    cfg = model.config
    geometry = Geometry(84, 14, tuple(tuple(p) for p in cfg.image_grid_pinpoints))
    for i, (sel, size) in enumerate(zip(sels, sizes)):
        rows, cols = _stock_grid(model, size)
        pv = inputs["pixel_values"][i][: 1 + rows * cols]
        select_rows = _cls_attention_rows(eager, pv, sel_layer)
        budget_rows = _cls_attention_rows(eager, pv, budget_layer)
        valid = _stock_valid(model, size)
        for j, part in enumerate(sel.partitions):
            ranked = sorted(valid[j], key=lambda t: -float(select_rows[j, t]))
            assert set(part.kept) == set(ranked[: part.budget]), f"image {size} partition {j}"
        expected_budgets = method.partition_budgets(layout_for(size, geometry), {"budget": budget_rows})
        assert [p.budget for p in sel.partitions] == expected_budgets


@pytest.mark.parametrize("family", ["llava_next", "llava"])
def test_bf16_generate(family):
    build = {"llava_next": tiny_llava_next, "llava": tiny_llava}[family]
    model, processor = build(seed=3)
    model.to(torch.bfloat16)
    sizes = [(100, 220), (150, 150)]
    hired.apply(model, processor, hired.HiRED(budget=0.2, alpha=0.5))
    try:
        images = [make_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
        inputs = _inputs(processor, images, [PROMPT] * 2, dtype=torch.bfloat16)
        gen = _generate(model, inputs, n=4)
        assert gen.shape == (2, 4)
        sels = hired.last_selection(model)
        assert placeholder_runs(inputs["input_ids"], model.config.image_token_id) == [s.num_tokens for s in sels]
        for sel, size in zip(sels, sizes):
            _check_selection(model, sel, size, 0.2, 0.5, False)
    finally:
        hired.remove(model, processor)
    assert hired.applied_method(model) is None


# ----------------------------------------------------------------------------- 5. bad input, re-apply


@pytest.mark.parametrize(
    "options",
    [
        {"budget": 0},
        {"budget": 1.5},
        {"budget": -0.1},
        {"budget": float("nan")},
        {"alpha": -0.1},
        {"alpha": 1.1},
        {"budget_layer": -1},
        {"mapping": "diagonal"},
    ],
)
def test_bad_config_values_rejected(options):
    with pytest.raises(ValueError):
        hired.HiRED(**options)


def _assert_stock(model, processor, stock_inputs, stock_logits):
    assert hired.applied_method(model) is None
    assert "get_image_features" not in model.model.__dict__
    assert "replace_image_token" not in processor.__dict__
    inputs = _one_per_prompt(processor, [(100, 220), (150, 150)])
    assert torch.equal(inputs["input_ids"], stock_inputs["input_ids"])
    assert torch.equal(_logits(model, inputs), stock_logits)


@pytest.fixture
def stock_ref(llava_next):
    model, processor = llava_next
    inputs = _one_per_prompt(processor, [(100, 220), (150, 150)])
    return inputs, _logits(model, inputs)


@pytest.mark.parametrize(
    "method, exc",
    [
        (hired.HiRED(budget_layer=99), ValueError),
        (hired.HiRED(selection_layer=99), ValueError),
        (hired.HiRED(budget_layer=4), ValueError),  # the tiny tower has layers 0..3
        ("hired", TypeError),
        (None, TypeError),
    ],
    ids=["budget_layer99", "selection_layer99", "budget_layer4", "string", "none"],
)
def test_bad_method_leaves_model_stock(llava_next, stock_ref, method, exc):
    model, processor = llava_next
    with pytest.raises(exc):
        hired.apply(model, processor, method)
    _assert_stock(model, processor, *stock_ref)


def test_unsupported_models_rejected(llava_next, stock_ref):
    from transformers import LlamaConfig, LlamaForCausalLM

    _, processor = llava_next
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    for bad in (nn.Linear(4, 4), llama):
        before = dict(bad.__dict__)
        with pytest.raises(TypeError, match="does not support"):
            hired.apply(bad, processor, hired.HiRED())
        assert bad.__dict__.keys() == before.keys()
        for fn in (hired.applied_method, hired.last_selection, hired.remove):
            with pytest.raises(TypeError):
                fn(bad)
    _assert_stock(*llava_next, *stock_ref)


def test_processor_mismatch_rejected(llava_next, llava, stock_ref):
    model, processor = llava_next
    llava_model, llava_processor = llava
    with pytest.raises(TypeError, match="LlavaNextProcessor"):
        hired.apply(model, llava_processor, hired.HiRED())
    with pytest.raises(TypeError, match="LlavaProcessor"):
        hired.apply(llava_model, processor, hired.HiRED())
    assert hired.applied_method(llava_model) is None
    assert "replace_image_token" not in llava_processor.__dict__

    other_pins = tiny_llava_next(pinpoints=[[84, 168], [168, 84], [168, 168]])[1]
    with pytest.raises(ValueError, match="pinpoints"):
        hired.apply(model, other_pins, hired.HiRED())
    other_patch = copy.deepcopy(processor)
    other_patch.patch_size = 7
    with pytest.raises(ValueError, match="patch_size"):
        hired.apply(model, other_patch, hired.HiRED())
    other_strategy = copy.deepcopy(processor)
    other_strategy.vision_feature_select_strategy = "full"
    with pytest.raises(ValueError, match="vision_feature_select_strategy"):
        hired.apply(model, other_strategy, hired.HiRED())
    for p in (other_pins, other_patch, other_strategy):
        assert "replace_image_token" not in p.__dict__
    _assert_stock(model, processor, *stock_ref)


def test_full_feature_strategy_rejected():
    # (the stock tiny model cannot even run with "full": its CLIP tower has a [CLS] token, so 37 tokens
    # per partition do not fit the 6x6 grid; only the processor and the patch state are compared)
    model, processor = tiny_llava_next(seed=1)
    model.config.vision_feature_select_strategy = "full"
    processor.vision_feature_select_strategy = "full"
    inputs = _one_per_prompt(processor, [(100, 220), (150, 150)])
    with pytest.raises(ValueError, match="vision_feature_select_strategy"):
        hired.apply(model, processor, hired.HiRED())
    assert hired.applied_method(model) is None
    assert "get_image_features" not in model.model.__dict__
    assert "replace_image_token" not in processor.__dict__
    again = _one_per_prompt(processor, [(100, 220), (150, 150)])
    assert torch.equal(again["input_ids"], inputs["input_ids"])


def _counts(model, processor, sizes):
    inputs = _one_per_prompt(processor, sizes)
    runs = placeholder_runs(inputs["input_ids"], model.config.image_token_id)
    gen = _generate(model, inputs, n=2)  # would raise on a placeholder/feature mismatch
    assert gen.shape[0] == len(sizes)
    return runs, hired.last_selection(model)


def test_apply_twice_replaces_cleanly(llava_next, stock_ref):
    model, processor = llava_next
    sizes = [(100, 220), (150, 150)]
    first, second = hired.HiRED(budget=0.2), hired.HiRED(budget=0.5, alpha=0.3, keep_newline=True)
    hired.apply(model, processor, first)
    runs1, _ = _counts(model, processor, sizes)
    assert hired.apply(model, processor, second) is model
    assert hired.applied_method(model) == second
    runs2, sels2 = _counts(model, processor, sizes)
    assert runs2 == [s.num_tokens for s in sels2] and runs2 != runs1
    for sel, size in zip(sels2, sizes):
        _check_selection(model, sel, size, 0.5, 0.3, True)
    hired.remove(model, processor)  # one remove undoes both applies
    _assert_stock(model, processor, *stock_ref)
    with pytest.raises(ValueError):
        hired.remove(model, processor)


def test_failed_apply_keeps_previous_method(llava_next, llava, stock_ref):
    model, processor = llava_next
    sizes = [(100, 220), (150, 150)]
    method = hired.HiRED(budget=0.2, alpha=0.6)
    hired.apply(model, processor, method)
    runs, _ = _counts(model, processor, sizes)
    with pytest.raises(ValueError):
        hired.apply(model, processor, hired.HiRED(selection_layer=99))
    with pytest.raises(TypeError):
        hired.apply(model, llava[1], hired.HiRED(budget=0.9))
    assert hired.applied_method(model) is method
    runs_after, sels = _counts(model, processor, sizes)
    assert runs_after == runs == [s.num_tokens for s in sels]
    for sel, size in zip(sels, sizes):
        _check_selection(model, sel, size, 0.2, 0.6, False)
    hired.remove(model, processor)
    _assert_stock(model, processor, *stock_ref)


def test_apply_to_inner_model_and_processor_none(llava_next, stock_ref):
    model, processor = llava_next
    hired.apply(model.model, None, hired.HiRED(budget=0.2))  # the bare LlavaNextModel is supported too
    assert hired.applied_method(model) == hired.HiRED(budget=0.2)
    assert "replace_image_token" not in processor.__dict__  # processor untouched
    hired.remove(model)
    _assert_stock(model, processor, *stock_ref)


# --------------------------------------------------------------------------- 6. introspection API


def test_introspection(llava_next):
    model, processor = llava_next
    assert hired.applied_method(model) is None
    assert hired.last_selection(model) == [] and hired.last_scores(model) == []  # nothing applied
    with pytest.raises(ValueError):
        hired.remove(model, processor)
    method = hired.HiRED(budget=0.4, alpha=0.2, selection_layer=1)
    assert hired.apply(model, processor, method) is model
    assert hired.applied_method(model) is method
    assert hired.score_layers(model) == {"budget": 0, "select": 1}
    assert hired.last_selection(model) == []  # no forward yet
    hired.remove(model, processor)
    assert hired.applied_method(model) is None and hired.score_layers(model) == {}
    assert hired.last_selection(model) == []


def test_get_method_matches_dataclass():
    assert hired.get_method("HiRED", budget=0.3, alpha=0.2) == hired.HiRED(budget=0.3, alpha=0.2)
    with pytest.raises(ValueError):
        hired.get_method("hired", bogus=1)


# ------------------------------------------------------------------------------------ known bugs


def test_processor_serving_another_model_is_refused(llava_next, image_factory):
    model, processor = llava_next
    stock_ids = _one_per_prompt(processor, [(150, 150)])["input_ids"]
    other, _ = tiny_llava_next(seed=1)
    hired.apply(model, processor, hired.HiRED(budget=0.2))
    reduced_ids = _one_per_prompt(processor, [(150, 150)])["input_ids"]
    with pytest.raises(ValueError, match="already serves hired on another model"):
        hired.apply(other, processor, hired.HiRED(budget=0.5))
    assert hired.applied_method(other) is None
    assert torch.equal(_one_per_prompt(processor, [(150, 150)])["input_ids"], reduced_ids)  # untouched
    hired.remove(model, processor)
    assert "replace_image_token" not in processor.__dict__
    assert torch.equal(_one_per_prompt(processor, [(150, 150)])["input_ids"], stock_ids)


@pytest.mark.parametrize("bad", [Image.new("RGB", (0, 5)), np.zeros((0, 7, 3), np.uint8)])
def test_zero_size_image_is_one_clear_error(llava_next, bad):
    model, processor = llava_next
    hired.apply(model, processor, hired.HiRED(budget=0.2))
    good = Image.new("RGB", (40, 30))
    with pytest.raises(ValueError, match=r"image 1 has zero size"):
        processor(
            images=[good, bad], text=["USER: <image>\nhi", "USER: <image>\nhi"], return_tensors="pt", padding=True
        )
    hired.remove(model, processor)
    assert "_process_images" not in processor.__dict__


def test_applied_processor_prints_and_saves_and_model_copy_is_refused(llava_next, tmp_path):
    model, processor = llava_next
    stock_repr = repr(processor)
    hired.apply(model, processor, hired.HiRED(budget=0.2))
    assert repr(processor) == stock_repr  # transformers deep-copies the attributes to print them
    processor.save_pretrained(tmp_path)
    saved = (tmp_path / "processor_config.json").read_text()
    assert "hired" not in saved and "replace_image_token" not in saved
    with pytest.raises(TypeError, match="deep-copy it before hired.apply"):
        copy.deepcopy(model)
    hired.remove(model, processor)
    copy.deepcopy(model)  # stock again
