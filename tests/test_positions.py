"""``keep_positions``: the position ids that reach the language model equal the stock run's ids at every
kept visual token and every text token, in prefill and in decode.

The expected ids come from a stock run of the same prompts (captured with a forward pre-hook on the
language model) and the stock packing order from transformers' own ``pack_image_features``; hired's
layout code is not used to compute them.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from conftest import make_image
from hypothesis import given, settings
from hypothesis import strategies as st
from test_transformers_adapter import _stock_pack_order

import hired
from hired.core.positions import stock_position_ids

ONE = "USER: <image>\nwhat is this? ASSISTANT:"
TWO = "USER: <image>\nand <image>\nwhich is brighter? ASSISTANT:"
TEXT = "USER: hello there, how are you today? ASSISTANT:"
NEW = 3

# prompts with their image sizes (h, w): left padding, mixed sizes, two images in one prompt, text only
BATCH = [(ONE, [(60, 130)]), (TWO, [(150, 150), (220, 100)]), (TEXT, []), (ONE, [(90, 170)])]


@pytest.fixture
def left_padded(request):
    """The pair of ``request.param`` with its tokenizer padding on the left (restored afterwards)."""
    model, processor = request.getfixturevalue(request.param)
    side = processor.tokenizer.padding_side
    processor.tokenizer.padding_side = "left"
    yield model, processor
    processor.tokenizer.padding_side = side


def _inputs(processor, batch):
    images = [make_image(h, w, seed=h * 1000 + w) for _, sizes in batch for h, w in sizes]  # one image per size
    kwargs = {"text": [p for p, _ in batch], "return_tensors": "pt", "padding": True}
    if images:
        kwargs["images"] = images
    return kwargs


def _generate(model, processor, batch, two_pass=False):
    """Greedy generation; returns the new tokens, the position ids of every language-model call, and the
    input ids and mask of the prompt."""
    kwargs = _inputs(processor, batch)
    inputs = hired.prepare_inputs(model, processor, **kwargs) if two_pass else processor(**kwargs)
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["position_ids"].clone()), with_kwargs=True
    )
    try:
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=NEW, do_sample=False)
    finally:
        hook.remove()
    return out[:, -NEW:], seen, inputs["input_ids"], inputs["attention_mask"]


def _kept_stock_indices(model, sel, size, keep_newline) -> list[int]:
    """Indices into the image's stock token run of the tokens hired gives the language model."""
    kept = {i * p.grid[0] * p.grid[1] + k for i, p in enumerate(sel.partitions) for k in p.kept}
    order = _stock_pack_order(model, size)
    return [j for j, idx in enumerate(order) if (idx == -1 and keep_newline) or idx in kept]


def _expected_rows(model, processor, batch, sels, keep_newline):
    """Per prompt: the stock ids of the tokens hired feeds (prefill) and the stock decode ids."""
    _, stock_seen, stock_ids, stock_mask = _generate(model, processor, batch)
    image = processor.image_token_id
    rows, k = [], 0
    for r, (_, sizes) in enumerate(batch):
        ids = stock_seen[0][r][stock_mask[r].bool()].tolist()
        toks = stock_ids[r][stock_mask[r].bool()].tolist()
        expected, i = [], 0
        for size in sizes:  # walk the stock row: text as is, each image run down to its kept tokens
            start = toks.index(image, i)
            expected += ids[i:start]
            run = 0
            while start + run < len(toks) and toks[start + run] == image:
                run += 1
            kept = _kept_stock_indices(model, sels[k], size, keep_newline)
            assert len(kept) == sels[k].num_tokens and run == sels[k].num_tokens_stock
            expected += [ids[start + j] for j in kept]
            i, k = start + run, k + 1
        expected += ids[i:]
        decode = [step[r].tolist() for step in stock_seen[1:]]
        rows.append((expected, decode))
    return rows


def _got_rows(seen, input_ids, mask):
    return [
        (seen[0][r][mask[r].bool()].tolist(), [step[r].tolist() for step in seen[1:]])
        for r in range(input_ids.shape[0])
    ]


METHODS = [
    hired.HiRED(budget=0.2, keep_positions=True),
    hired.HiRED(budget=0.4, keep_newline=True, keep_positions=True),
    hired.Spatial(budget=0.3, keep_positions=True),
    hired.VisionZip(budget=0.3, keep_positions=True),
    hired.Pool(budget=0.3, keep_positions=True),
    hired.DivPrune(budget=0.3, keep_positions=True),
    hired.DART(budget=0.3, keep_newline=True, keep_positions=True),
    hired.CDPruner(budget=0.3, keep_positions=True),
    # a budget that rounds down to no token: each image keeps one, which places its ids
    hired.HiRED(budget=1e-4, keep_positions=True),
    hired.DivPrune(budget=1e-4, keep_positions=True),
]


@pytest.mark.parametrize("left_padded", ["llava_next", "llava", "llava_next_eager"], indirect=True)
@pytest.mark.parametrize("method", METHODS, ids=lambda m: f"{m.name}-{m.budget}-{getattr(m, 'keep_newline', False)}")
def test_ids_equal_the_stock_ids_in_prefill_and_decode(left_padded, method):
    model, processor = left_padded
    hired.apply(model, processor, method)
    tokens, seen, input_ids, mask = _generate(model, processor, BATCH)
    sels = hired.last_selection(model)
    hired.remove(model, processor)
    expected = _expected_rows(model, processor, BATCH, sels, method.keep_newline)
    got = _got_rows(seen, input_ids, mask)
    assert len(seen) == NEW
    for r, (want, have) in enumerate(zip(expected, got)):
        assert have[0] == want[0], f"prompt {r}: prefill ids"
        assert have[1] == want[1], f"prompt {r}: decode ids"
    # last_selection exposes the ids the kept tokens were given
    hired_ids = [i for want, _ in expected for i in want]
    assert all(sel.position_ids is not None and len(sel.position_ids) == sel.num_tokens for sel in sels)
    assert all(set(sel.position_ids) <= set(hired_ids) for sel in sels)
    # batched == one by one
    hired.apply(model, processor, method)
    for r, prompt in enumerate(BATCH):
        one_tokens, one_seen, one_ids, one_mask = _generate(model, processor, [prompt])
        assert _got_rows(one_seen, one_ids, one_mask)[0] == got[r]
        assert torch.equal(one_tokens[0], tokens[r])


@pytest.mark.parametrize("left_padded", ["llava_next", "llava"], indirect=True)
def test_two_pass_path_gives_the_same_ids(left_padded):
    model, processor = left_padded
    hired.apply(model, processor, hired.HiRED(budget=0.2, keep_positions=True))
    tokens, seen, ids, mask = _generate(model, processor, BATCH)
    two_tokens, two_seen, two_ids, two_mask = _generate(model, processor, BATCH, two_pass=True)
    assert _got_rows(two_seen, two_ids, two_mask) == _got_rows(seen, ids, mask)
    assert torch.equal(two_tokens, tokens)


@pytest.mark.parametrize("left_padded", ["llava_next", "llava"], indirect=True)
def test_adaptive_two_pass_ids_equal_the_stock_ids(left_padded):
    model, processor = left_padded
    method = hired.PruMerge(keep_positions=True)
    hired.apply(model, processor, method)
    _, seen, input_ids, mask = _generate(model, processor, BATCH, two_pass=True)
    sels = hired.last_selection(model)
    hired.remove(model, processor)
    assert _got_rows(seen, input_ids, mask) == _expected_rows(model, processor, BATCH, sels, False)


@pytest.mark.parametrize("left_padded", ["llava_next", "llava"], indirect=True)
def test_full_budget_keeps_stock_logits_bit_for_bit(left_padded):
    model, processor = left_padded
    kwargs = _inputs(processor, BATCH)
    with torch.no_grad():
        stock = model(**processor(**kwargs)).logits
        hired.apply(model, processor, hired.HiRED(budget=1.0, keep_newline=True, keep_positions=True))
        assert torch.equal(model(**processor(**kwargs)).logits, stock)
        hired.apply(model, processor, hired.HiRED(budget=0.2, keep_positions=False))
        assert hired.last_selection(model) == []


def test_packed_positions_without_the_option(llava_next):
    """Without keep_positions the ids stay the packed ones generate derives from the mask."""
    model, processor = llava_next
    hired.apply(model, processor, hired.HiRED(budget=0.2))
    _, seen, _, mask = _generate(model, processor, BATCH[:1])
    assert seen[0][0].tolist() == (mask[0].cumsum(0) - 1).tolist()
    assert hired.last_selection(model)[0].position_ids is None


@settings(max_examples=60)
@given(st.data())
def test_stock_position_ids_against_a_slow_reference(data):
    """The vectorised mapping equals a per-token walk for random rows of text, pads and image runs."""
    batch = data.draw(st.integers(1, 3))
    rows, lengths, stock_lengths, stock_index = [], [], [], []
    for _ in range(batch):
        row = ["pad"] * data.draw(st.integers(0, 3))
        for _ in range(data.draw(st.integers(0, 3))):
            row += ["text"] * data.draw(st.integers(0, 3))
            stock = data.draw(st.integers(1, 12))
            kept = sorted(data.draw(st.sets(st.integers(0, stock - 1), min_size=1, max_size=stock)))
            row += ["image"] * len(kept)
            lengths.append(len(kept))
            stock_lengths.append(stock)
            stock_index += kept
        row += ["text"] * data.draw(st.integers(1, 3))
        rows.append(row)
    width = max(map(len, rows))
    rows = [["pad"] * (width - len(r)) + r for r in rows]  # left padding
    mask = torch.tensor([[t != "pad" for t in r] for r in rows])
    packed = (mask.long().cumsum(1) - 1).masked_fill(~mask, 0)
    image = torch.tensor([[t == "image" for t in r] for r in rows])
    got, shift = stock_position_ids(packed, image, torch.tensor(stock_index, dtype=torch.long), lengths, stock_lengths)
    k = 0
    for r, row in enumerate(rows):
        pos, j = 0, 0
        while j < width:
            if row[j] == "pad":
                j += 1
                continue
            if row[j] == "text":
                assert got[r, j] == pos
                pos, j = pos + 1, j + 1
                continue
            start = pos
            for t in range(lengths[k]):
                assert got[r, j + t] == start + stock_index[sum(lengths[:k]) + t]
            pos, j, k = start + stock_lengths[k], j + lengths[k], k + 1
        assert shift[r] == pos - int(mask[r].sum())


def test_stock_position_ids_refuses_an_image_without_tokens():
    with pytest.raises(ValueError, match="at least one token per image"):
        stock_position_ids(
            torch.zeros(1, 3, dtype=torch.long),
            torch.zeros(1, 3, dtype=torch.bool),
            torch.zeros(0, dtype=torch.long),
            [0],
            [4],
        )


def test_rearranged_encoder_outputs_keep_each_images_positions(llava_next):
    """Encode images once and answer several prompts with a reordered, repeated list of their features
    (as ``hired eval --offline`` does): each prompt gets the ids of a one-image processor run."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    model, processor = llava_next
    hired.apply(model, processor, hired.HiRED(budget=0.2, keep_positions=True))
    batch = [(ONE, [(60, 130)]), (ONE, [(150, 150)])]
    pixels = processor.image_processor(_inputs(processor, batch)["images"], return_tensors="pt")
    with torch.no_grad():
        encoded = model.model.get_image_features(pixel_values=pixels["pixel_values"], image_sizes=pixels["image_sizes"])
    owner = [1, 0, 1]
    texts = [ONE.replace("<image>", "<image>" * len(encoded.pooler_output[i])) for i in owner]
    side = processor.tokenizer.padding_side
    processor.tokenizer.padding_side = "left"
    try:
        inputs = processor.tokenizer(texts, return_tensors="pt", padding=True)
        seen = []
        hook = model.model.language_model.register_forward_pre_hook(
            lambda m, a, kw: seen.append(kw["position_ids"].clone()), with_kwargs=True
        )
        mm = BaseModelOutputWithPooling(pooler_output=[encoded.pooler_output[i] for i in owner])
        with torch.no_grad():
            model.generate(**inputs, mm_encoder_outputs={"image": mm}, max_new_tokens=NEW, do_sample=False)
        hook.remove()
        got = _got_rows(seen, inputs["input_ids"], inputs["attention_mask"])
        for r, i in enumerate(owner):
            _, one_seen, one_ids, one_mask = _generate(model, processor, [batch[i]])
            assert got[r] == _got_rows(one_seen, one_ids, one_mask)[0]
        copies = BaseModelOutputWithPooling(pooler_output=[f.clone() for f in encoded.pooler_output[:1]])
        with pytest.raises(ValueError, match="keep_positions needs to know where each kept token sat"):
            with torch.no_grad():
                model(**processor.tokenizer(texts[1:2], return_tensors="pt"), mm_encoder_outputs={"image": copies})
    finally:
        processor.tokenizer.padding_side = side


@pytest.mark.parametrize("name", ["hired", "cls_topk", "spatial", "divprune", "dart", "visionzip", "random", "pool"])
def test_an_image_keeps_one_token_where_the_budget_rounds_to_none(name):
    """The rule for an image whose budget rounds down to no token: it keeps one, in every family and both
    runtimes (vLLM needs a placeholder per image; with keep_positions that token places the image's ids);
    every other count is floor(budget * P * T)."""
    from hired.core.grid import Geometry, layout_for
    from hired.methods.base import get_method

    layout = layout_for((400, 300), Geometry(crop_size=336, patch_size=14))
    for keep_positions in (False, True):
        assert get_method(name, budget=1e-4, keep_positions=keep_positions).count(layout) == 1
    assert get_method(name, budget=0.2).count(layout) == math.floor(Fraction("0.2") * layout.num_partitions * 576)
