"""The transformers adapter on tiny random-weight Qwen2.5-VL and Qwen3-VL models (native-resolution ViT,
2x2 merger, M-RoPE; Qwen3-VL adds DeepStack features to the first decoder layers).

Expected values come from the stock model: placeholder counts from ``image_grid_thw``, M-RoPE ids from a
stock run of the same prompt (every text token and every kept visual token must get the id it has
there, in the prompt pass and while decoding), received attention from the attention weights the
stock blocks compute (recorded through transformers' ``AttentionInterface``).
"""

from __future__ import annotations

import copy
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from conftest import make_image, placeholder_runs, require_torchvision

import hired
from hired.methods.base import get_method, list_methods

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PROMPT = "USER: <|vision_start|><image><|vision_end|>\nwhat is this? ASSISTANT:"
SIZES = [(150, 230), (100, 100), (300, 120), (60, 400), (200, 200)]


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def _qwen_session(request):
    """A tiny Qwen2.5-VL (window attention), Qwen3-VL (DeepStack) and Qwen3.5 (hybrid linear-attention
    decoder): every test runs on each."""
    require_torchvision()
    from hired.testing import tiny_qwen2_5_vl, tiny_qwen3_5, tiny_qwen3_vl

    build = {"qwen2_5_vl": tiny_qwen2_5_vl, "qwen3_vl": tiny_qwen3_vl, "qwen3_5": tiny_qwen3_5}[request.param]
    with torch.no_grad():
        return build(seed=0)


@pytest.fixture
def qwen(_qwen_session):
    model, processor = _qwen_session
    assert hired.applied_method(model) is None
    yield model, processor
    if hired.applied_method(model) is not None:
        hired.remove(model, processor)
    left = [
        a
        for a in ("get_image_features", "get_placeholder_mask", "get_rope_index", "_hired_state")
        if a in model.model.__dict__
    ]
    assert not left, f"hired state left on the model: {left}"


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


class _Positions:
    """Records the (t, h, w) position ids each language-model call receives."""

    def __init__(self, model):
        self.calls: list[torch.Tensor] = []
        self._handle = model.model.language_model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module, _args, kwargs):
        self.calls.append(kwargs["position_ids"][-3:].clone())

    def close(self):
        self._handle.remove()


def _fixed_methods():
    out = []
    for name in list_methods():
        method = get_method(name, budget=0.3)
        if not method.adaptive:
            out.append(method)
    return out


# ----------------------------------------------------------------------------------------------- counts


@pytest.mark.parametrize("method", _fixed_methods(), ids=lambda m: m.name)
def test_counts_every_fixed_budget_method(qwen, method):
    model, processor = qwen
    images = [make_image(h, w, seed=i) for i, (h, w) in enumerate(SIZES)]
    stock = _inputs(processor, images, [PROMPT] * len(images))
    merged = (stock["image_grid_thw"].prod(-1) // 4).tolist()
    hired.apply(model, processor, method)
    inputs = _inputs(processor, images, [PROMPT] * len(images))
    _logits(model, inputs)  # the stock placeholder check: features == placeholders
    sels = hired.last_selection(model)
    expected = [math.floor(Fraction("0.3") * n) for n in merged]
    assert [s.num_tokens for s in sels] == expected
    assert placeholder_runs(inputs["input_ids"], model.config.image_token_id) == expected
    assert [s.num_tokens_stock for s in sels] == merged
    for sel, n in zip(sels, merged):
        (part,) = sel.partitions
        assert part.budget == len(part.kept) and all(0 <= k < n for k in part.kept)
        assert part.grid[0] * part.grid[1] == n


# ------------------------------------------------------------------------------- budget 1.0 is stock


def test_full_budget_is_bit_identical_and_remove_restores(qwen):
    model, processor = qwen
    images = [make_image(h, w, seed=10 + i) for i, (h, w) in enumerate(SIZES[:3])]
    stock_inputs = _inputs(processor, images, [PROMPT] * 3)
    stock, stock_gen = _logits(model, stock_inputs), _generate(model, stock_inputs)
    hired.apply(model, processor, hired.HiRED(budget=1.0))
    inputs = _inputs(processor, images, [PROMPT] * 3)
    assert torch.equal(inputs["input_ids"], stock_inputs["input_ids"])
    assert torch.equal(_logits(model, inputs), stock)
    assert torch.equal(_generate(model, inputs), stock_gen)
    hired.remove(model, processor)
    assert torch.equal(_logits(model, _inputs(processor, images, [PROMPT] * 3)), stock)


# ------------------------------------------------------------------------------------------ positions


@pytest.mark.parametrize(
    "method",
    [
        hired.HiRED(budget=0.3),
        hired.Spatial(budget=0.5),
        hired.DivPrune(budget=0.2),
        hired.CDPruner(budget=0.3),
        hired.Pool(budget=0.3),
    ],
    ids=lambda m: m.name,
)
def test_mrope_ids_equal_the_stock_ids_in_prefill_and_decode(qwen, method):
    """Every text token and every kept visual token gets the (t, h, w) id it has in the stock run of the
    same prompt, in the prompt pass and in every decoding step."""
    model, processor = qwen
    images = [make_image(*s, seed=20 + i) for i, s in enumerate([(150, 230), (300, 120)])]
    texts = ["USER: <|vision_start|><image><|vision_end|> and <|vision_start|><image><|vision_end|> ? ASSISTANT:"]
    stock_inputs = _inputs(processor, images, texts)
    rec = _Positions(model)
    _generate(model, stock_inputs, n=4)
    rec.close()
    stock_calls = rec.calls
    hired.apply(model, processor, method)
    rec = _Positions(model)  # after apply: its hook sees the ids hired's pre-hook gives the language model
    inputs = _inputs(processor, images, texts)
    _generate(model, inputs, n=4)
    rec.close()
    calls = rec.calls
    assert len(calls) == len(stock_calls) == 4

    image_id = model.config.image_token_id
    ids, stock_ids = inputs["input_ids"][0].tolist(), stock_inputs["input_ids"][0].tolist()
    sels = hired.last_selection(model)
    # where each pruned-prompt token sits in the stock prompt
    where, s, image = [], 0, 0
    i = 0
    while i < len(ids):
        if ids[i] == image_id:
            kept = sorted(sels[image].partitions[0].kept)
            where += [s + k for k in kept]
            i += len(kept)
            s += sels[image].num_tokens_stock
            image += 1
        else:
            assert ids[i] == stock_ids[s]
            where.append(s)
            i += 1
            s += 1
    assert s == len(stock_ids)
    prompt, stock_prompt = calls[0][:, 0], stock_calls[0][:, 0]  # (3, S)
    assert torch.equal(prompt, stock_prompt[:, where])
    for step in range(1, 4):  # decoding: the same ids as the stock run's steps
        assert torch.equal(calls[step], stock_calls[step]), f"decode step {step}"
    flat = [tuple(t) for sel in sels for t in sel.position_ids]
    assert flat == [tuple(prompt[:, j].tolist()) for j, tok in enumerate(ids) if tok == image_id]


# ------------------------------------------------------------------------------------------- batching


def _video(seed=0, frames=4):
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, size=(frames, 56, 84, 3), dtype=np.uint8)


def test_batch_matches_one_by_one(qwen):
    model, processor = qwen
    a, b, c, d = (make_image(*s, seed=30 + i) for i, s in enumerate([(150, 230), (100, 100), (60, 400), (300, 120)]))
    two = "USER: <|vision_start|><image><|vision_end|> and <|vision_start|><image><|vision_end|> ? ASSISTANT:"
    prompts = [(PROMPT, [a]), (two, [b, c]), ("USER: describe the picture . ASSISTANT:", []), (PROMPT, [d])]
    hired.apply(model, processor, hired.HiRED(budget=0.4))
    singles, single_sels = [], []
    for text, imgs in prompts:
        singles.append(_generate(model, _inputs(processor, imgs, [text]))[0])
        single_sels += hired.last_selection(model) if imgs else []
    batch = _inputs(processor, [im for _, imgs in prompts for im in imgs], [t for t, _ in prompts])
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 1  # left padding happened
    gen = _generate(model, batch)
    for i, single in enumerate(singles):
        assert torch.equal(gen[i], single), f"prompt {i}"
    assert hired.last_selection(model) == single_sels

    # a video prompt keeps the stock video tokens; an image prompt beside it is pruned as alone
    video_text = "USER: <|vision_start|><|video_pad|><|vision_end|> what happens ? ASSISTANT:"
    hired.remove(model, processor)
    stock_video = _generate(model, processor(text=[video_text], videos=[_video()], return_tensors="pt"))[0]
    hired.apply(model, processor, hired.HiRED(budget=0.4))
    alone = _generate(model, processor(text=[video_text], videos=[_video()], return_tensors="pt"))[0]
    assert torch.equal(alone, stock_video)
    mixed = processor(text=[video_text, PROMPT], videos=[_video()], images=[a], return_tensors="pt", padding=True)
    out = _generate(model, mixed)
    assert torch.equal(out[0], stock_video)
    assert torch.equal(out[1], singles[0])


def test_two_pass_inputs_match_one_pass(qwen):
    model, processor = qwen
    images = [make_image(*s, seed=40 + i) for i, s in enumerate([(150, 230), (200, 200)])]
    hired.apply(model, processor, hired.DART(budget=0.25))
    one = _inputs(processor, images, [PROMPT] * 2)
    two = hired.prepare_inputs(model, processor, images=images, text=[PROMPT] * 2, return_tensors="pt", padding=True)
    assert "pixel_values" not in two and "image_grid_thw" in two  # the M-RoPE ids need the grid
    assert torch.equal(one["input_ids"], two["input_ids"])
    assert torch.equal(_generate(model, one), _generate(model, two))


# ------------------------------------------------------------------------------------------- the score


def test_received_score_equals_the_stock_attention_weights(qwen):
    """The select score is the attention each patch receives in the last block (full attention here),
    summed over heads and over each merged token's 2x2 patches: recorded from the weights the stock
    attention computes."""
    from transformers import AttentionInterface
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qm
    from transformers.vision_utils import get_vision_window_index

    model, processor = qwen
    visual = model.model.visual
    last = visual.blocks[-1].attn
    recorded = []

    def recording_eager(module, query, key, value, attention_mask, **kwargs):
        out, weights = qm.eager_attention_forward(module, query, key, value, attention_mask, **kwargs)
        if module is last:
            recorded.append(weights.detach())  # (1, H, n, n) for one attention segment
        return out, weights

    AttentionInterface.register("hired_test_recording", recording_eager)
    images = [make_image(*s, seed=50 + i) for i, s in enumerate([(150, 230), (100, 100)])]
    hired.apply(model, processor, hired.HiRED(budget=0.3))
    inputs = _inputs(processor, images, [PROMPT] * 2)
    _logits(model, inputs)
    scores = hired.last_scores(model)
    hired.remove(model, processor)

    visual.config._attn_implementation = "hired_test_recording"
    try:
        with torch.no_grad():
            visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    finally:
        visual.config._attn_implementation = "sdpa"
    received = torch.cat([w.float().mean(dim=2).sum(dim=1)[0] for w in recorded])  # (seq,) the tower's order
    merged = received.view(-1, 4).sum(dim=1)
    if hasattr(visual, "window_size"):  # Qwen2.5-VL keeps its tokens in window order; Qwen3-VL in raster order
        window_index, _ = get_vision_window_index(
            inputs["image_grid_thw"], spatial_merge_size=2, window_size=visual.window_size, patch_size=14
        )
        merged = merged[torch.argsort(window_index)]
    expected = merged.split((inputs["image_grid_thw"].prod(-1) // 4).tolist())
    assert len(recorded) == 2  # one full-attention segment per image
    for got, want in zip(scores, expected):
        torch.testing.assert_close(got["select"][0], want, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------ budget distribution


def test_hired_regions_share_the_budget_by_the_early_layer(qwen):
    """Without ``regions`` HiRED keeps each image's global top tokens and scores no budget layer; with
    ``regions=2`` the kept tokens are :func:`region_topk` of the step's own scores (4 blocks sharing
    ``B - floor(alpha * B)`` by the budget layer's content, the rest global), ``floor(0.3 N)`` of them,
    batched as one by one; ``regions=1`` keeps what the global top-k keeps."""
    from hired.core.select import region_of, region_topk

    model, processor = qwen
    images = [make_image(h, w, seed=60 + i) for i, (h, w) in enumerate(SIZES[:4])]
    kept = {}
    for regions in (None, 1, 2):
        hired.apply(model, processor, hired.HiRED(budget=0.3, regions=regions))
        assert set(hired.score_layers(model)) == ({"select"} if regions is None else {"budget", "select"})
        _logits(model, _inputs(processor, images, [PROMPT] * len(images)))
        kept[regions] = [sel.partitions[0].kept for sel in hired.last_selection(model)]
    assert kept[1] == kept[None]
    sels, scores = hired.last_selection(model), hired.last_scores(model)
    for i, (sel, score) in enumerate(zip(sels, scores)):
        (part,) = sel.partitions
        n = part.grid[0] * part.grid[1]
        total = math.floor(Fraction("0.3") * n)
        spread = total - math.floor(Fraction("0.5") * total)
        keep = region_topk(
            score["select"],
            score["budget"],
            region_of(*part.grid, 2)[None],
            torch.ones(1, n, dtype=torch.bool),
            [total],
            [spread],
            4,
        )
        assert part.kept == keep[0].nonzero().flatten().tolist() and len(part.kept) == total
        _logits(model, _inputs(processor, [images[i]], [PROMPT]))
        assert hired.last_selection(model)[0].partitions[0].kept == part.kept  # one by one
    assert kept[2] != kept[None]  # the regions' shares moved some tokens


# ------------------------------------------------------------------------------------ clear errors


@pytest.mark.parametrize(
    "method, match",
    [
        (hired.DivPrune(budget=0.2, space="vision"), "use space='projected'"),
        (hired.HiRED(budget=0.2, score="cls"), r"no \[CLS\] token"),
        (
            hired.PruMerge(),
            r"PruMerge keeps a content-dependent .* only fixed-budget methods run yet: e.g. PruMerge\(budget=0.2\)",
        ),
        (
            hired.HiRED(adapt=1.0),
            r"HiRED keeps a content-dependent .* only fixed-budget methods run yet: e.g. HiRED\(budget=0.2, adapt=0.0\)",
        ),
    ],
    ids=["divprune-vision", "cls", "prumerge-adaptive", "hired-adapt"],
)
def test_unsupported_options_are_one_clear_error(qwen, method, match):
    model, processor = qwen
    with pytest.raises(ValueError, match=match):
        hired.apply(model, processor, method)
    assert hired.applied_method(model) is None


# ------------------------------------------------------------------------------------- query-aware


QUESTIONS = [
    "USER: <|vision_start|><image><|vision_end|>\nwhat is this? ASSISTANT:",
    "USER: <|vision_start|><image><|vision_end|>\nhow many cats are on the red sofa in the picture? ASSISTANT:",
    "USER: describe <|vision_start|><image><|vision_end|> in detail . ASSISTANT:",
]


def _cdpruner_oracle(model, processor, image, text, budget):
    """The merged tokens CDPruner keeps, computed without the adapter: the stock tower's merged features,
    the prompt's text-token embeddings from the input embedding layer, CDPruner's own ``select``."""
    from hired.families import get_family
    from hired.methods.base import Prompts

    inputs = processor(images=[image], text=[text], return_tensors="pt")
    with torch.no_grad():
        merged = model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).pooler_output
        embeds = model.model.get_input_embeddings()(inputs["input_ids"])
    family = get_family("qwen2_5_vl")
    layout = family.grid_layout(family.geometry(model.config), inputs["image_grid_thw"][0].tolist())
    prompts = Prompts(embeds=embeds, mask=inputs["input_ids"] != model.config.image_token_id, owner=torch.tensor([0]))
    method = hired.CDPruner(budget=budget)
    sel = method.select([layout], {}, None, features=merged[None], prompts=prompts)
    return sorted(sel.keep[0].nonzero().flatten().tolist())


def test_cdpruner_keeps_what_its_own_select_gives_for_the_prompt(qwen):
    """CDPruner reads each image's own prompt (the text tokens of the prompt it sits in): the kept tokens
    equal CDPruner's selection on the stock merged features and that prompt's embeddings, and change
    with the question."""
    model, processor = qwen
    image = make_image(150, 230, seed=50)
    # the stock prompts' placeholder counts: the oracle's processor runs before hired patches it
    oracle = [_cdpruner_oracle(model, processor, image, text, 0.3) for text in QUESTIONS]
    hired.apply(model, processor, hired.CDPruner(budget=0.3))
    got = []
    for text in QUESTIONS:
        _logits(model, _inputs(processor, [image], [text]))
        (sel,) = hired.last_selection(model)
        got.append(sorted(sel.partitions[0].kept))
    assert got == oracle
    assert len({tuple(k) for k in got}) > 1  # the question changes the choice


def test_cdpruner_batched_two_pass_and_reselected_equal_one_by_one(qwen):
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    model, processor = qwen
    images = [make_image(*s, seed=60 + i) for i, s in enumerate([(150, 230), (200, 200), (150, 230)])]
    hired.apply(model, processor, hired.CDPruner(budget=0.3))
    singles, kept = [], []
    for image, text in zip(images, QUESTIONS):
        singles.append(_generate(model, _inputs(processor, [image], [text]))[0])
        kept.append(hired.last_selection(model)[0].partitions[0].kept)
    batch = _inputs(processor, images, QUESTIONS)
    out = _generate(model, batch)
    assert [s.partitions[0].kept for s in hired.last_selection(model)] == kept
    assert all(torch.equal(out[i], singles[i]) for i in range(3))
    # two passes: each image selected for the prompt that holds it
    two = hired.prepare_inputs(model, processor, images=images, text=QUESTIONS, return_tensors="pt", padding=True)
    assert torch.equal(_generate(model, two), out)
    # encoded once without any prompt, then answered: every image selected again for its question
    pixels = processor.image_processor(images=[images[0]], return_tensors="pt")
    with torch.no_grad():
        encoded = model.model.get_image_features(
            pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"]
        )
    n = len(encoded.pooler_output[0])
    expected = []
    for text in (QUESTIONS[0], QUESTIONS[2]):
        expected.append(_generate(model, _inputs(processor, [images[0]], [text]))[0])
    texts = [QUESTIONS[0].replace("<image>", "<image>" * n), QUESTIONS[2].replace("<image>", "<image>" * n)]
    tokens = processor.tokenizer(texts, return_tensors="pt", padding=True)
    mm = BaseModelOutputWithPooling(pooler_output=[encoded.pooler_output[0]] * 2)
    if getattr(encoded, "deepstack_features", None) is not None:  # Qwen3-VL: each DeepStack level, per image
        mm = copy.copy(encoded)
        mm.pooler_output = [encoded.pooler_output[0]] * 2
        mm.deepstack_features = [(level[0], level[0]) for level in encoded.deepstack_features]
    types = (tokens["input_ids"] == model.config.image_token_id).long()
    with torch.no_grad():
        got = model.generate(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            mm_token_type_ids=types,
            image_grid_thw=pixels["image_grid_thw"].repeat(2, 1),
            mm_encoder_outputs={"image": mm},
            max_new_tokens=5,
            min_new_tokens=5,
            do_sample=False,
        )[:, -5:]
    assert all(torch.equal(got[i], expected[i]) for i in range(2))


# -------------------------------------------------------------------------------- Qwen3-VL DeepStack


@pytest.mark.parametrize("method", [hired.HiRED(budget=0.3), hired.DivPrune(budget=0.25)], ids=lambda m: m.name)
def test_deepstack_features_follow_the_kept_tokens(qwen, method):
    """Qwen3-VL adds, at every visual token entering its first decoder layers, that token's features of each
    DeepStack level: with dropping, each kept token gets exactly the stock run's features of that token."""
    model, processor = qwen
    if not hasattr(model.model.visual, "deepstack_merger_list"):
        pytest.skip("Qwen2.5-VL has no DeepStack")
    seen = []

    def spy(_module, _args, kwargs):
        if kwargs.get("deepstack_visual_embeds") is not None:
            seen.append(([d.clone() for d in kwargs["deepstack_visual_embeds"]], kwargs["visual_pos_masks"].clone()))

    handle = model.model.language_model.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        images = [make_image(*s, seed=70 + i) for i, s in enumerate([(150, 230), (200, 200)])]
        texts = ["USER: <|vision_start|><image><|vision_end|> and <|vision_start|><image><|vision_end|> ? ASSISTANT:"]
        _logits(model, _inputs(processor, images, texts))
        ((stock, _),) = seen
        hired.apply(model, processor, method)
        inputs = _inputs(processor, images, texts)
        _logits(model, inputs)
        sels = hired.last_selection(model)
    finally:
        handle.remove()
    got, mask = seen[1]
    assert int(mask.sum()) == sum(s.num_tokens for s in sels) < sum(s.num_tokens_stock for s in sels)
    rows, start = [], 0
    for sel in sels:
        rows += [start + k for k in sorted(sel.partitions[0].kept)]
        start += sel.num_tokens_stock
    assert len(got) == len(stock) == len(model.config.vision_config.deepstack_visual_indexes)
    for level, stock_level in zip(got, stock):
        assert torch.equal(level, stock_level[rows])


def test_an_image_whose_budget_rounds_to_no_token_keeps_one(qwen):
    """An image whose budget rounds down to no token keeps one (every image keeps a token, as vLLM needs a
    placeholder per image); the other image keeps its count, and every text token and kept token gets its
    stock (t, h, w) id, in the prompt pass and while decoding."""
    model, processor = qwen
    images = [make_image(60, 60, seed=3), make_image(300, 330, seed=4)]
    texts = ["USER: <|vision_start|><image><|vision_end|> and <|vision_start|><image><|vision_end|> ? ASSISTANT:"]
    stock_inputs = _inputs(processor, images, texts)
    rec = _Positions(model)
    _generate(model, stock_inputs, n=3)
    rec.close()
    stock_calls = rec.calls
    hired.apply(model, processor, hired.HiRED(budget=0.1))
    rec = _Positions(model)
    inputs = _inputs(processor, images, texts)
    _generate(model, inputs, n=3)
    rec.close()
    sels = hired.last_selection(model)
    assert sels[0].num_tokens == 1 and math.floor(Fraction("0.1") * sels[0].num_tokens_stock) == 0
    assert sels[1].num_tokens == math.floor(Fraction("0.1") * sels[1].num_tokens_stock) > 1

    image_id = model.config.image_token_id
    start_id = model.config.vision_start_token_id
    ids, stock_ids = inputs["input_ids"][0].tolist(), stock_inputs["input_ids"][0].tolist()
    where, s, image, i = [], 0, 0, 0
    while i < len(ids):
        assert ids[i] == stock_ids[s]
        where.append(s)
        i, s = i + 1, s + 1
        if ids[i - 1] == start_id:  # an image follows: its kept tokens, then the rest of its stock tokens
            kept = sorted(sels[image].partitions[0].kept)
            assert ids[i : i + len(kept)] == [image_id] * len(kept)
            where += [s + k for k in kept]
            i += len(kept)
            s += sels[image].num_tokens_stock
            image += 1
    assert s == len(stock_ids) and image == 2
    prompt, stock_prompt = rec.calls[0][:, 0], stock_calls[0][:, 0]
    assert torch.equal(prompt, stock_prompt[:, where])
    for step in range(1, 3):
        assert torch.equal(rec.calls[step], stock_calls[step]), f"decode step {step}"


def test_fuzzed_sizes_and_tiny_budgets_never_crash(qwen):
    """Random image sizes and aspect ratios, budgets down to 1e-3, every fixed-budget method: the prompt
    runs, and each image gets as many placeholders as the features it keeps (possibly none)."""
    model, processor = qwen
    rng = np.random.RandomState(7)
    methods = [m.name for m in _fixed_methods()]
    for case in range(12):
        sizes = [(int(rng.randint(8, 420)), int(rng.randint(8, 420))) for _ in range(int(rng.randint(1, 3)))]
        budget = float(rng.choice([1e-3, 0.01, 0.05, 0.2]))
        method = get_method(methods[case % len(methods)], budget=budget)
        hired.apply(model, processor, method)
        try:
            images = [make_image(h, w, seed=case * 3 + k) for k, (h, w) in enumerate(sizes)]
            wrapped = " ".join("<|vision_start|><image><|vision_end|>" for _ in images)
            inputs = _inputs(processor, images, [f"USER: {wrapped} ? ASSISTANT:"])
            _generate(model, inputs, n=2)
            sels = hired.last_selection(model)
            placeholders = int((inputs["input_ids"] == model.config.image_token_id).sum())
            assert placeholders == sum(s.num_tokens for s in sels), (case, sizes, method)
        finally:
            hired.remove(model, processor)
