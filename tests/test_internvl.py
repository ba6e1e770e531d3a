"""The transformers adapter on a tiny random-weight InternVL (InternViT with [CLS], 112 px tiles of 14 px
patches, 0.5 pixel shuffle: 16 tokens per tile, up to 6 tiles plus a thumbnail; Qwen2 decoder).

Expected values come from transformers, not from hired's geometry: tile counts from the stock
processor's placeholders (``image_seq_length`` per tile), tile grids from the image processor's own
``get_optimal_tiled_canvas``, the stock token order and position ids from stock runs, the [CLS] scores
from the stock tower's eager attention maps merged by the model's own ``pixel_shuffle``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from conftest import make_image

import hired
from hired.methods.base import get_method, list_methods

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

T = 16  # tokens per 112 px tile after the pixel shuffle
TILE = 112
PROMPT = "USER: <IMG_CONTEXT>\nwhat is this? ASSISTANT:"
# (h, w) → (rows, cols) of tiles, per transformers' get_optimal_tiled_canvas (1 to 6 tiles)
SIZES = {
    (100, 100): (1, 1),
    (60, 130): (1, 2),
    (130, 60): (2, 1),
    (200, 200): (2, 2),
    (90, 300): (1, 3),
    (300, 90): (3, 1),
    (150, 230): (2, 3),
    (400, 70): (6, 1),
}


def _inputs(processor, images, texts, **kwargs):
    args = {"text": texts, "return_tensors": "pt", "padding": True, **kwargs}
    if images:
        args["images"] = images
    return processor(**args)


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def _generate(model, inputs, n=5):
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[:, inputs["input_ids"].shape[1] :]


def _image_runs(processor, input_ids) -> list[int]:
    """Context tokens between each ``<img>`` and its ``</img>``, row by row."""
    start, end, ctx = processor.start_image_token_id, processor.end_image_token_id, processor.image_token_id
    runs = []
    for row in input_ids.tolist():
        inside = None
        for tok in row:
            if tok == start:
                inside = 0
            elif tok == end:
                runs.append(inside)
                inside = None
            elif tok == ctx:
                assert inside is not None, "a context token outside <img> ... </img>"
                inside += 1
    return runs


def _stock_grid(processor, size) -> tuple[int, int]:
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    ip = processor.image_processor
    cols, rows = get_optimal_tiled_canvas(size, (TILE, TILE), ip.min_patches, ip.max_patches)
    return rows, cols


def _fixed_methods(budget=0.3):
    return [m for m in (get_method(name, budget=budget) for name in list_methods()) if not m.adaptive]


def test_sizes_cover_the_grids(internvl):
    _, processor = internvl
    assert {size: _stock_grid(processor, size) for size in SIZES} == SIZES
    images = [make_image(*s, seed=i) for i, s in enumerate(SIZES)]
    runs = _image_runs(processor, _inputs(processor, images, [PROMPT] * len(images))["input_ids"])
    tiles = [r * c + (r * c > 1) for r, c in SIZES.values()]
    assert runs == [T * n for n in tiles]  # the stock processor: one thumbnail beside more than one tile


# ---------------------------------------------------------------------------------------------- counts


@pytest.mark.parametrize("method", _fixed_methods(), ids=lambda m: m.name)
def test_counts_every_fixed_budget_method(internvl, method):
    """Placeholders == features reaching the language model == floor(0.3 * P * T) from the image size."""
    model, processor = internvl
    sizes = list(SIZES)
    images = [make_image(*s, seed=i) for i, s in enumerate(sizes)]
    stock = _image_runs(processor, _inputs(processor, images, [PROMPT] * len(images))["input_ids"])
    hired.apply(model, processor, method)
    inputs = _inputs(processor, images, [PROMPT] * len(images))
    assert inputs["image_sizes"].tolist() == [[h, w, *_stock_grid(processor, (h, w))] for h, w in sizes]
    seen = []
    handle = model.model.language_model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["inputs_embeds"].shape), with_kwargs=True
    )
    try:
        _logits(model, inputs)  # the stock placeholder check: features == placeholders
    finally:
        handle.remove()
    assert seen[0][1] == inputs["input_ids"].shape[1]
    expected = [math.floor(Fraction("0.3") * n) for n in stock]
    sels = hired.last_selection(model)
    assert [s.num_tokens for s in sels] == expected
    assert _image_runs(processor, inputs["input_ids"]) == expected
    assert [s.num_tokens_stock for s in sels] == stock
    for sel, size in zip(sels, sizes):
        rows, cols = SIZES[size]
        assert sel.grid == ((rows, cols) if rows * cols > 1 else (0, 0))
        assert sum(len(p.kept) for p in sel.partitions) == sel.num_kept
        assert all(p.grid == (4, 4) and p.valid == T and all(0 <= k < T for k in p.kept) for p in sel.partitions)


# ------------------------------------------------------------------------------------ budget 1.0 is stock


def test_full_budget_is_bit_identical_and_remove_restores(internvl):
    model, processor = internvl
    images = [make_image(*s, seed=10 + i) for i, s in enumerate([(150, 230), (100, 100), (300, 90)])]
    texts = [PROMPT, "USER: <IMG_CONTEXT> and <IMG_CONTEXT> ? ASSISTANT:"]
    stock_inputs = _inputs(processor, images, texts)
    stock, stock_gen = _logits(model, stock_inputs), _generate(model, stock_inputs)
    hired.apply(model, processor, hired.HiRED(budget=1.0))
    inputs = _inputs(processor, images, texts)
    assert torch.equal(inputs["input_ids"], stock_inputs["input_ids"])
    assert torch.equal(_logits(model, inputs), stock)
    assert torch.equal(_generate(model, inputs), stock_gen)
    sels = hired.last_selection(model)
    assert [s.num_tokens for s in sels] == [s.num_tokens_stock for s in sels] == [7 * T, T, 4 * T]
    hired.remove(model, processor)
    after = _inputs(processor, images, texts)
    assert set(after) == set(stock_inputs)  # no image_sizes any more
    assert torch.equal(_logits(model, after), stock)
    assert torch.equal(_generate(model, after), stock_gen)


def test_text_only_prompt(internvl):
    model, processor = internvl
    text = ["USER: describe the picture in detail . ASSISTANT:"]
    stock = _generate(model, _inputs(processor, None, text))
    hired.apply(model, processor, hired.HiRED(budget=0.2))
    _logits(model, _inputs(processor, [make_image(150, 230)], [PROMPT]))
    assert hired.last_selection(model) != []
    assert torch.equal(_generate(model, _inputs(processor, None, text)), stock)
    assert hired.last_selection(model) == []


# ---------------------------------------------------------------------------------------------- batching


@pytest.mark.parametrize("keep_positions", [False, True], ids=["packed", "keep_positions"])
def test_batch_matches_one_by_one(internvl, keep_positions):
    """Mixed sizes, several images per prompt and a text-only prompt, batched with left padding."""
    model, processor = internvl
    a, b, c, d = (make_image(*s, seed=20 + i) for i, s in enumerate([(150, 230), (100, 100), (60, 130), (400, 70)]))
    prompts = [
        (PROMPT, [a]),
        ("USER: <IMG_CONTEXT>\n<IMG_CONTEXT>\ncompare the two images . ASSISTANT:", [b, c]),
        ("USER: describe the picture in detail . ASSISTANT:", []),
        (PROMPT, [d]),
    ]
    hired.apply(model, processor, hired.HiRED(budget=0.3, alpha=0.4, keep_positions=keep_positions))
    singles, single_sels = [], []
    for text, imgs in prompts:
        singles.append(_generate(model, _inputs(processor, imgs, [text]))[0])
        single_sels += hired.last_selection(model) if imgs else []
    batch = _inputs(processor, [im for _, imgs in prompts for im in imgs], [t for t, _ in prompts])
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 1  # left padding happened
    gen = _generate(model, batch)
    for i, single in enumerate(singles):
        assert torch.equal(gen[i], single), f"prompt {i}"
    sels = hired.last_selection(model)
    if keep_positions:  # ids are the batch's (left padding shifts them): compare the rest
        sels = [dataclasses.replace(s, position_ids=None) for s in sels]
        single_sels = [dataclasses.replace(s, position_ids=None) for s in single_sels]
    assert sels == single_sels
    assert [s.grid for s in sels] == [(2, 3), (0, 0), (1, 2), (6, 1)]


def test_two_pass_inputs_match_one_pass(internvl):
    model, processor = internvl
    images = [make_image(*s, seed=40 + i) for i, s in enumerate([(150, 230), (200, 200)])]
    hired.apply(model, processor, hired.DART(budget=0.25))
    one = _inputs(processor, images, [PROMPT] * 2)
    two = hired.prepare_inputs(model, processor, images=images, text=[PROMPT] * 2, return_tensors="pt", padding=True)
    assert "pixel_values" not in two and "image_sizes" not in two
    assert torch.equal(one["input_ids"], two["input_ids"])
    assert torch.equal(_generate(model, one), _generate(model, two))


def test_adaptive_and_query_aware_methods(internvl):
    """PruMerge without a budget runs through prepare_inputs; CDPruner, which generate() encodes before it
    has the prompt and selects again in the forward, gives batched prompts what it gives them one by one,
    in one pass and in two."""
    model, processor = internvl
    images = [make_image(*s, seed=45 + i) for i, s in enumerate([(150, 230), (200, 200)])]
    hired.apply(model, processor, hired.PruMerge())
    inputs = hired.prepare_inputs(model, processor, images=images, text=[PROMPT] * 2, return_tensors="pt", padding=True)
    _logits(model, inputs)
    assert _image_runs(processor, inputs["input_ids"]) == [s.num_tokens for s in hired.last_selection(model)]
    hired.apply(model, processor, hired.CDPruner(budget=0.3))
    texts = [PROMPT, "USER: <IMG_CONTEXT>\nhow many cats are on the red sofa in the picture? ASSISTANT:"]
    singles = [_generate(model, _inputs(processor, [im], [t]))[0] for im, t in zip(images, texts)]
    batch = _generate(model, _inputs(processor, images, texts))
    assert all(torch.equal(batch[i], singles[i]) for i in range(2))
    two = hired.prepare_inputs(model, processor, images=images, text=texts, return_tensors="pt", padding=True)
    assert torch.equal(_generate(model, two), batch)


# ----------------------------------------------------------------------------------------------- positions


class _Positions:
    """The position ids each language-model call receives (``arange`` when none are given)."""

    def __init__(self, model):
        self.calls: list[torch.Tensor] = []
        self._handle = model.model.language_model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module, _args, kwargs):
        ids = kwargs.get("position_ids")
        if ids is None:
            ids = torch.arange(kwargs["inputs_embeds"].shape[1])[None]
        self.calls.append(ids.clone())

    def close(self):
        self._handle.remove()


def test_keep_positions_gives_kept_tokens_their_stock_ids(internvl):
    """Every text token (``<img>`` and ``</img>`` included) and every kept token gets its id in the stock
    run of the same prompt, in the prompt pass and while decoding; without keep_positions they are packed."""
    model, processor = internvl
    images = [make_image(*s, seed=50 + i) for i, s in enumerate([(150, 230), (100, 100)])]
    text = ["USER: <IMG_CONTEXT> and <IMG_CONTEXT> ? ASSISTANT:"]
    stock_inputs = _inputs(processor, images, text)
    rec = _Positions(model)
    _generate(model, stock_inputs, n=3)
    rec.close()
    stock_calls = rec.calls
    ctx = processor.image_token_id
    stock_ids = stock_inputs["input_ids"][0].tolist()
    starts = [i for i, t in enumerate(stock_ids) if t == ctx and stock_ids[i - 1] != ctx]

    for keep in (True, False):
        hired.apply(model, processor, hired.HiRED(budget=0.3, keep_positions=keep))
        inputs = _inputs(processor, images, text)
        rec = _Positions(model)
        _generate(model, inputs, n=3)
        rec.close()
        sels = hired.last_selection(model)
        ids = inputs["input_ids"][0].tolist()
        text_pos = [i for i, t in enumerate(ids) if t != ctx]
        stock_text = [i for i, t in enumerate(stock_ids) if t != ctx]
        assert [ids[i] for i in text_pos] == [stock_ids[i] for i in stock_text]
        where = list(zip(text_pos, stock_text))
        kept_at = []
        for sel, start in zip(sels, starts):
            n = len(sel.partitions) - 1  # tiles (the thumbnail is partition 0 and comes last)
            stock_index = [(p - 1) * T + k for p, part in enumerate(sel.partitions) if p for k in part.kept]
            stock_index += [n * T + k for k in sel.partitions[0].kept]  # one tile: n = 0, no thumbnail
            kept_at += [start + k for k in sorted(stock_index)]
        prompt, stock_prompt = rec.calls[0][0], stock_calls[0][0]
        image_pos = [i for i, t in enumerate(ids) if t == ctx]
        assert len(image_pos) == len(kept_at) == sum(s.num_tokens for s in sels)
        if keep:
            assert [int(prompt[i]) for i, _ in where] == [int(stock_prompt[s]) for _, s in where]
            assert [int(prompt[i]) for i in image_pos] == [int(stock_prompt[s]) for s in kept_at]
            assert [p for sel in sels for p in sel.position_ids] == [int(prompt[i]) for i in image_pos]
            for step in range(1, 3):
                assert torch.equal(rec.calls[step], stock_calls[step]), f"decode step {step}"
        else:
            assert prompt.tolist() == list(range(len(ids)))
        hired.remove(model, processor)


# --------------------------------------------------------------------------------------------- the score


@pytest.mark.parametrize("qk_norm", [False, True], ids=["plain", "qk-norm"])
def test_scores_are_cls_attention_summed_over_each_merged_token(internvl, qk_norm):
    """The score of a merged token is the [CLS] attention of the stock tower's eager maps, summed over the
    heads and over the 2x2 patches the model's pixel shuffle merges into it; partition 0 is the thumbnail.
    With qk norm (InternViT-6B) the scores read the normed queries and keys, as the attention does."""
    from hired.testing import tiny_internvl

    model, processor = tiny_internvl(seed=0, qk_norm=qk_norm, attn_implementation="eager")
    if qk_norm:  # norm weights other than ones, so that reading before the norm would give other scores
        with torch.no_grad():
            for name, weight in model.model.vision_tower.named_parameters():
                if "q_norm" in name or "k_norm" in name:
                    weight.uniform_(0.2, 3.0)
    image = make_image(200, 200, seed=60)
    hired.apply(model, processor, hired.HiRED(budget=0.3, budget_layer=1, selection_layer=2))
    inputs = _inputs(processor, [image], [PROMPT])
    _logits(model, inputs)
    (scores,) = hired.last_scores(model)
    layers = hired.score_layers(model)
    hired.remove(model, processor)
    with torch.no_grad():
        maps = model.model.vision_tower(inputs["pixel_values"], output_attentions=True).attentions
    index = torch.arange(64, dtype=torch.float32).view(1, 8, 8, 1)  # each patch's own index as its feature
    merged = model.model.pixel_shuffle(index, scale_factor=0.5).reshape(T, 4).long()  # the patches of each token
    order = [4, 0, 1, 2, 3]  # the stock tiles, thumbnail last → hired's partitions, thumbnail first
    for role, layer in layers.items():
        cls_row = maps[layer][:, :, 0, 1:].float().sum(dim=1)  # (tiles, 64)
        expected = cls_row[:, merged].sum(dim=-1)[order]  # (tiles, 16)
        torch.testing.assert_close(scores[role], expected, rtol=1e-4, atol=1e-6)


def test_hired_gives_the_thumbnail_alpha_and_the_tiles_the_rest_by_the_thumbnail(internvl):
    """B = floor(0.3 * 5 * 16) = 24 on a 2x2 grid: the thumbnail keeps floor(0.5 * 24) = 12, the tiles 12
    in proportion to how many of the thumbnail's top tokens by the budget layer lie over each of them."""
    model, processor = internvl
    hired.apply(model, processor, hired.HiRED(budget=0.3, alpha=0.5))
    for seed in range(3):
        _logits(model, _inputs(processor, [make_image(200, 200, seed=70 + seed)], [PROMPT]))
        (sel,), (scores,) = hired.last_selection(model), hired.last_scores(model)
        budgets = [p.budget for p in sel.partitions]
        assert budgets[0] == 12 and sum(budgets[1:]) == 12
        # content of a tile: how many of the thumbnail's top 8 tokens lie over it (its quadrant)
        top = torch.sort(scores["budget"][0], descending=True, stable=True).indices[:8].tolist()
        content = [sum(1 for t in top if (t // 4 >= 2, t % 4 >= 2) == (r, c)) for r in (0, 1) for c in (0, 1)]
        assert all(abs(b - 12 * n / 8) < 1 for b, n in zip(budgets[1:], content)), (budgets, content)
        for part in sel.partitions:  # the top tokens of each partition by the selection layer
            assert len(part.kept) == part.budget


# ------------------------------------------------------------------------------------------ robustness


def test_an_image_whose_budget_rounds_to_no_token_keeps_one(internvl):
    """floor(0.05 * 16) = 0: the one-tile image keeps one token (every image keeps a token); the prompt runs."""
    model, processor = internvl
    hired.apply(model, processor, hired.HiRED(budget=0.05))
    images = [make_image(100, 100, seed=1), make_image(150, 230, seed=2)]
    inputs = _inputs(processor, images, ["USER: <IMG_CONTEXT> and <IMG_CONTEXT> ? ASSISTANT:"])
    _generate(model, inputs, n=2)
    assert [s.num_tokens for s in hired.last_selection(model)] == [1, math.floor(0.05 * 7 * T)]
    assert _image_runs(processor, inputs["input_ids"]) == [1, 5]


def test_fuzzed_sizes_and_tiny_budgets_never_crash(internvl):
    model, processor = internvl
    rng = np.random.RandomState(7)
    methods = [m.name for m in _fixed_methods()]
    for case in range(12):
        sizes = [(int(rng.randint(8, 500)), int(rng.randint(8, 500))) for _ in range(int(rng.randint(1, 4)))]
        budget = float(rng.choice([1e-3, 0.01, 0.05, 0.2]))
        method = get_method(methods[case % len(methods)], budget=budget)
        hired.apply(model, processor, method)
        try:
            images = [make_image(h, w, seed=case * 3 + k) for k, (h, w) in enumerate(sizes)]
            inputs = _inputs(processor, images, [f"USER: {' '.join(['<IMG_CONTEXT>'] * len(images))} ? ASSISTANT:"])
            _generate(model, inputs, n=2)
            sels = hired.last_selection(model)
            assert _image_runs(processor, inputs["input_ids"]) == [s.num_tokens for s in sels], (case, sizes)
        finally:
            hired.remove(model, processor)


# ------------------------------------------------------------------------------------------ clear errors


def test_bad_configs_are_refused(internvl):
    from hired.engine import make_plan
    from hired.families import get_family

    model, processor = internvl
    family = get_family("internvl")
    with pytest.raises(ValueError, match=r"no \[CLS\] token"):
        make_plan(hired.HiRED(budget=0.2), family, model.config, has_cls=False)
    bad = copy.deepcopy(model)
    bad.config.vision_feature_select_strategy = "full"
    with pytest.raises(ValueError, match="vision_feature_select_strategy='default'"):
        hired.apply(bad, None, hired.HiRED(budget=0.2))
    bad.config.vision_feature_select_strategy = "default"
    bad.config.vision_config.use_mean_pooling = False
    with pytest.raises(ValueError, match="use_mean_pooling"):
        hired.apply(bad, None, hired.HiRED(budget=0.2))
    bad.config.vision_config.use_mean_pooling = True
    bad.config.downsample_ratio = 0.3
    with pytest.raises(ValueError, match="downsample_ratio"):
        hired.apply(bad, None, hired.HiRED(budget=0.2))
    other = copy.copy(processor)
    other.image_seq_length = 64
    with pytest.raises(ValueError, match="image_seq_length"):
        hired.apply(model, other, hired.HiRED(budget=0.2))
    assert hired.applied_method(model) is None and hired.applied_method(bad) is None


def test_direct_get_image_features(internvl):
    """One tile: one image; several tiles need image_sizes (given: as through the processor)."""
    model, processor = internvl
    hired.apply(model, processor, hired.HiRED(budget=0.5))
    inputs = _inputs(processor, [make_image(150, 230, seed=3)], [PROMPT])
    tiles = inputs["pixel_values"]
    with torch.no_grad():
        one = model.model.get_image_features(pixel_values=tiles[:1])
        assert one.pooler_output.shape[0] == 8
        with pytest.raises(ValueError, match="without image_sizes"):
            model.model.get_image_features(pixel_values=tiles)
        given = model.model.get_image_features(pixel_values=tiles, image_sizes=inputs["image_sizes"])
        assert given.pooler_output.shape[0] == math.floor(0.5 * 7 * T)
        with pytest.raises(ValueError, match="image_sizes imply"):
            model.model.get_image_features(pixel_values=tiles[:3], image_sizes=inputs["image_sizes"])
