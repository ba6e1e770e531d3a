"""The plugin on the merged-grid families in vLLM's offline engine, on tiny random-weight models built and
saved locally: Qwen2.5-VL (native-resolution ViT without [CLS], 2x2 merger, window attention, M-RoPE),
Qwen3-VL (full attention, DeepStack) and Qwen3.5 (hybrid linear-attention decoder, partial M-RoPE).

Expected values come from stock vLLM (placeholder counts, outputs at budget 1.0, M-RoPE ids) and from the
transformers adapter on the same saved weights (kept tokens, M-RoPE ids, greedy outputs)."""

from __future__ import annotations

import gc
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from conftest import greedy, make_image

import hired
import hired.vllm
from hired.methods.base import get_method

PROMPT = "USER: <|vision_start|><image><|vision_end|>\nwhat is this? ASSISTANT:"
TWO = "USER: <|vision_start|><image><|vision_end|> and <|vision_start|><image><|vision_end|> ? ASSISTANT:"
VIDEO = "USER: <|vision_start|><|video_pad|><|vision_end|> what happens ? ASSISTANT:"
# tiny processor: 28 px merged tokens, 4..64 merged tokens per image; wide, tall, square, clamped sizes
SIZES = [(150, 230), (100, 100), (300, 120), (60, 400), (200, 200), (33, 47), (500, 500)]
IMAGE_TOKEN = 4  # "<image>" in the tiny tokenizer


def _save_tiny(tmp_path_factory, family: str) -> str:
    """A tiny random-weight model of ``family`` (seed 5) saved with its processor; its folder."""
    from hired import testing

    path = tmp_path_factory.mktemp(f"tiny-{family}")
    model, processor = getattr(testing, f"tiny_{family}")(seed=5)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


FAMILIES = ["qwen2_5_vl", "qwen3_vl", "qwen3_5"]


@pytest.fixture(scope="module", params=FAMILIES)
def qwen_path(request, tmp_path_factory):
    """Every test runs on each family; the tests with several method entries run all of them on
    Qwen2.5-VL and their first on the others (:func:`first_entry_only`), to keep the vLLM step short."""
    return _save_tiny(tmp_path_factory, request.param)


def first_entry_only(path: str, entry: dict, entries: list[dict]) -> None:
    """Skip ``entry`` on the families other than Qwen2.5-VL unless it is one of ``entries``."""
    if "qwen2_5_vl" not in path and entry not in entries:
        pytest.skip("the other entries run on Qwen2.5-VL; the family's own path runs with the first ones")


def dtype_of(path: str) -> str:
    """float32, but bfloat16 for Qwen3.5: vLLM-CPU's Gated DeltaNet kernels take bfloat16 only."""
    return "bfloat16" if "qwen3_5" in path else "float32"


def make_llm(path: str, hired_entry: dict | None = None, **kwargs):
    from vllm import LLM

    return LLM(
        model=path,
        max_model_len=2048,
        dtype=dtype_of(path),
        enforce_eager=True,
        seed=0,
        hf_overrides={} if hired_entry is None else {"hired": hired_entry},
        limit_mm_per_prompt={"image": 3, "video": 1},
        **kwargs,
    )


@pytest.fixture(scope="module")
def engines():
    """``engines(path, entry)`` → an in-process ``LLM``; the two most recently used stay alive."""
    cache = {}

    def get(path: str, entry: dict | None = None):
        key = (path, repr(sorted((entry or {}).items())))
        if key in cache:
            cache[key] = cache.pop(key)
        else:
            while len(cache) >= 2:
                cache.pop(next(iter(cache)))
                gc.collect()
            cache[key] = make_llm(path, entry)
        return cache[key]

    yield get
    cache.clear()
    gc.collect()


@pytest.fixture(scope="module")
def transformers_model(qwen_path):
    from hired.loading import load_model

    return load_model(qwen_path, dtype=dtype_of(qwen_path))


def method_of(entry: dict):
    return get_method(entry.get("method", "hired"), **{k: v for k, v in entry.items() if k != "method"})


def request(images, prompt: str = PROMPT) -> dict:
    images = images if isinstance(images, list) else [images]
    return {"prompt": prompt, "multi_modal_data": {"image": images if len(images) > 1 else images[0]}}


def video(seed: int = 0, frames: int = 4) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, size=(frames, 56, 84, 3), dtype=np.uint8)


def runs_of(ids: list[int], tok: int = IMAGE_TOKEN) -> list[int]:
    runs, current = [], 0
    for t in [*ids, None]:
        if t == tok:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    return runs


class Positions:
    """The (3, T) M-RoPE ids of every language-model call of an in-process engine."""

    def __init__(self, llm):
        self.calls: list[torch.Tensor] = []
        self.llm = llm

        def wrap(model):
            lm = model.language_model.model
            original = lm.forward

            def forward(*args, **kwargs):
                pos = kwargs["positions"] if "positions" in kwargs else args[1]
                self.calls.append(pos.detach().clone().cpu())
                return original(*args, **kwargs)

            lm.forward = forward
            return original

        self._original = llm.apply_model(wrap)[0]

    def close(self):
        original = self._original
        self.llm.apply_model(lambda model: model.language_model.model.__dict__.pop("forward", None))
        del original


def generate_with_positions(llm, req, n: int):
    rec = Positions(llm)
    try:
        out = llm.generate([req], greedy(n))[0]
    finally:
        rec.close()
    return out, rec.calls


# ----------------------------------------------------------------------------------------------- counts


COUNT_ENTRIES = [
    {"method": "hired", "budget": 0.3},
    {"method": "spatial", "budget": 0.5},
    {"method": "visionzip", "budget": 0.3},
    {"method": "dart", "budget": 0.25},
]


@pytest.mark.parametrize("entry", COUNT_ENTRIES, ids=lambda e: f"{e['method']}-{e['budget']}")
def test_prompt_holds_floor_r_n_of_the_merged_tokens(engines, qwen_path, entry):
    """Every size gets floor(r * N) placeholders of stock vLLM's N merged tokens (the image size alone
    decides it), the model gives as many features (vLLM checks it), the text is unchanged."""
    first_entry_only(qwen_path, entry, COUNT_ENTRIES[:1])
    llm, stock = engines(qwen_path, entry), engines(qwen_path)
    requests = [request(make_image(h, w, seed=i)) for i, (h, w) in enumerate(SIZES)]
    outs, refs = llm.generate(requests, greedy(3)), stock.generate(requests, greedy(1))
    budget = Fraction(str(entry["budget"]))
    for out, ref in zip(outs, refs):
        (n,) = runs_of(ref.prompt_token_ids)
        assert runs_of(out.prompt_token_ids) == [math.floor(budget * n)]
        assert [t for t in out.prompt_token_ids if t != IMAGE_TOKEN] == [
            t for t in ref.prompt_token_ids if t != IMAGE_TOKEN
        ]
        assert len(out.outputs[0].token_ids) == 3
    sels = hired.vllm.last_selection(llm)  # the last encoder pass: one or more of the batch's images
    assert sels and all(s.num_tokens == len(s.partitions[0].kept) == s.partitions[0].budget for s in sels)


def test_processing_info_counts_from_the_image_size(engines, qwen_path):
    """The processing info's count (vLLM sizes its encoder cache and the profiling run with it) is the
    method's count for the grid vLLM's resize gives the image size."""
    from hired.vllm.merged_grid import MergedGridInfo

    llm = engines(qwen_path, {"method": "hired", "budget": 0.3})
    out = llm.generate([request(make_image(h, w)) for h, w in SIZES], greedy(1))
    from vllm.multimodal import MULTIMODAL_REGISTRY

    info = MULTIMODAL_REGISTRY.create_processor(llm.llm_engine.model_config).info
    assert isinstance(info, MergedGridInfo)
    ip = info.get_image_processor()
    for (h, w), o in zip(SIZES, out):
        count = info.get_num_image_tokens(image_width=w, image_height=h, image_processor=ip, mm_kwargs={})
        assert [count] == runs_of(o.prompt_token_ids)


# ------------------------------------------------------------------------- the transformers adapter


SAME_ENTRIES = [
    {"method": "hired", "budget": 0.3},
    {"method": "divprune", "budget": 0.3},
    {"method": "hired", "budget": 0.3, "regions": 2},
    {"method": "cls_topk", "budget": 0.25},
    {"method": "dart", "budget": 0.3},
    {"method": "pool", "budget": 0.3},
]


@pytest.mark.parametrize("entry", SAME_ENTRIES, ids=lambda e: e["method"] + ("-regions" if "regions" in e else ""))
def test_kept_tokens_and_outputs_equal_the_transformers_adapter(engines, qwen_path, transformers_model, entry):
    """The same image keeps the same merged tokens (received scores from the rotary q/k of window and
    full-attention blocks, keys for DART, merged features for DivPrune), reports the same counts, and
    gives the same greedy answer as the transformers adapter on the same weights (Qwen3-VL: with the
    DeepStack features of the kept tokens)."""
    first_entry_only(qwen_path, entry, SAME_ENTRIES[:2])
    model, processor = transformers_model
    llm = engines(qwen_path, entry)
    hired.apply(model, processor, method_of(entry))
    try:
        for i, (h, w) in enumerate(SIZES):
            image = make_image(h, w, seed=11 + i)
            out = llm.generate([request(image)], greedy(4))[0]
            (vsel,) = hired.vllm.last_selection(llm)
            inputs = processor(images=image, text=PROMPT, return_tensors="pt")
            with torch.no_grad():
                gen = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
            (tsel,) = hired.last_selection(model)
            assert inputs["input_ids"][0].tolist() == out.prompt_token_ids
            assert (vsel.image_size, vsel.num_tokens, vsel.num_tokens_stock) == (
                tsel.image_size,
                tsel.num_tokens,
                tsel.num_tokens_stock,
            )
            assert [(p.kept, p.budget, p.grid) for p in vsel.partitions] == [
                (p.kept, p.budget, p.grid) for p in tsel.partitions
            ], (h, w)
            assert list(out.outputs[0].token_ids) == gen[0, inputs["input_ids"].shape[1] :].tolist(), (h, w)
    finally:
        hired.remove(model, processor)


def test_mrope_ids_equal_the_transformers_adapter_and_stock(engines, qwen_path, transformers_model):
    """In vLLM's prompt pass every token gets the (t, h, w) id the transformers adapter gives it (text:
    the stock ids; kept visual tokens: their own stock ids), and decoding continues with the same ids;
    all of them are ids of the stock vLLM run of the same prompt."""
    model, processor = transformers_model
    entry = {"method": "hired", "budget": 0.3}
    images = [make_image(150, 230, seed=21), make_image(300, 120, seed=22)]
    req = request(images, TWO)
    llm = engines(qwen_path, entry)
    out, calls = generate_with_positions(llm, req, 4)
    sels = hired.vllm.last_selection(llm)
    stock_llm = engines(qwen_path)
    ref, stock_calls = generate_with_positions(stock_llm, req, 4)

    prefill = calls[0]  # (3, S): the whole prompt in one step
    assert prefill.shape == (3, len(out.prompt_token_ids))
    hired.apply(model, processor, method_of(entry))
    try:
        inputs = processor(images=images, text=TWO, return_tensors="pt")
        with torch.no_grad():
            model(**inputs)
        tsels = hired.last_selection(model)
    finally:
        hired.remove(model, processor)
    assert [s.partitions[0].kept for s in sels] == [s.partitions[0].kept for s in tsels]
    ids = out.prompt_token_ids
    image_slots = [j for j, t in enumerate(ids) if t == IMAGE_TOKEN]
    assert [tuple(prefill[:, j].tolist()) for j in image_slots] == [tuple(p) for s in tsels for p in s.position_ids]

    # against stock vLLM: where each pruned-prompt token sits in the stock prompt
    stock_prefill = stock_calls[0]
    where, s, image, j = [], 0, 0, 0
    stock_ids = ref.prompt_token_ids
    while j < len(ids):
        if ids[j] == IMAGE_TOKEN:
            kept = sels[image].partitions[0].kept
            where += [s + k for k in kept]
            j += len(kept)
            s += sels[image].num_tokens_stock
            image += 1
        else:
            assert ids[j] == stock_ids[s]
            where.append(s)
            j += 1
            s += 1
    assert s == len(stock_ids)
    assert torch.equal(prefill, stock_prefill[:, where])
    decode = [c for c in calls[1:]]
    stock_decode = [c for c in stock_calls[1:]]
    assert len(decode) == len(stock_decode) == 3
    for step, (a, b) in enumerate(zip(decode, stock_decode)):
        assert torch.equal(a, b), f"decode step {step + 1}"


# ------------------------------------------------------------------------------------- budget 1.0 is stock


def test_full_budget_equals_stock_vllm(engines, qwen_path):
    """Budget 1.0 keeps every merged token in raster order with its stock id: the same prompts, M-RoPE
    ids and greedy outputs as stock vLLM (single, multi-image and text-only prompts)."""
    requests = [request(make_image(h, w, seed=40 + i)) for i, (h, w) in enumerate(SIZES)]
    requests.append(request([make_image(100, 100, seed=3), make_image(60, 400, seed=4)], TWO))
    requests.append("USER: hello there ASSISTANT:")
    full = engines(qwen_path, {"method": "hired", "budget": 1.0})
    outs = [[o.prompt_token_ids, list(o.outputs[0].token_ids)] for o in full.generate(requests, greedy(6))]
    _, full_pos = generate_with_positions(full, requests[-2], 3)
    stock = engines(qwen_path)
    refs = [[o.prompt_token_ids, list(o.outputs[0].token_ids)] for o in stock.generate(requests, greedy(6))]
    _, stock_pos = generate_with_positions(stock, requests[-2], 3)
    assert outs == refs
    assert len(full_pos) == len(stock_pos) and all(torch.equal(a, b) for a, b in zip(full_pos, stock_pos))


# ---------------------------------------------------------------------------------- batching, prompts


def test_batch_of_mixed_sizes_equals_one_by_one(engines, qwen_path):
    """Mixed sizes, a two-image prompt and a text-only prompt in one batch give what each gives alone;
    the text-only prompt gives what stock vLLM gives."""
    llm = engines(qwen_path, {"method": "hired", "budget": 0.3})
    requests = [request(make_image(h, w, seed=3)) for h, w in SIZES]
    requests.append(request([make_image(150, 230, seed=5), make_image(60, 400, seed=6)], TWO))
    requests.append("USER: what is a cat ? ASSISTANT:")
    batched = [list(o.outputs[0].token_ids) for o in llm.generate(requests, greedy(6))]
    single = [list(llm.generate([r], greedy(6))[0].outputs[0].token_ids) for r in requests]
    assert batched == single
    assert len({tuple(t) for t in batched}) > 1
    stock = engines(qwen_path)
    refs = stock.generate(requests[-1:], greedy(6))
    outs = llm.generate(requests[-1:], greedy(6))
    for out, ref in zip(outs, refs):
        assert out.prompt_token_ids == ref.prompt_token_ids
        assert out.outputs[0].token_ids == ref.outputs[0].token_ids


def test_video_prompt_is_stock(engines, qwen_path):
    """Videos take vLLM's own path: with ``hired`` a video prompt has stock vLLM's prompt tokens and answer,
    and an image beside it in the batch is still reduced."""
    frames = video()
    meta = {
        "total_num_frames": len(frames),
        "fps": 2.0,
        "duration": len(frames) / 2.0,
        "frames_indices": list(range(len(frames))),
        "video_backend": "opencv",
    }  # vLLM's video items carry it
    clip = {"prompt": VIDEO, "multi_modal_data": {"video": (frames, meta)}}
    image = request(make_image(150, 230, seed=8))
    llm = engines(qwen_path, {"method": "hired", "budget": 0.3})
    outs = llm.generate([clip, image], greedy(4))
    refs = engines(qwen_path).generate([clip, image], greedy(4))
    assert outs[0].prompt_token_ids == refs[0].prompt_token_ids
    assert outs[0].outputs[0].token_ids == refs[0].outputs[0].token_ids
    assert len(outs[1].prompt_token_ids) < len(refs[1].prompt_token_ids)


def test_multi_image_prompt(engines, qwen_path):
    """Each image of a prompt is reduced on its own (its own count and selection)."""
    entry = {"method": "hired", "budget": 0.3}
    llm, stock = engines(qwen_path, entry), engines(qwen_path)
    sizes = [(150, 230), (500, 500), (33, 47)]
    prompt = "USER: " + " and ".join(["<|vision_start|><image><|vision_end|>"] * 3) + " ? ASSISTANT:"
    req = request([make_image(h, w, seed=7) for h, w in sizes], prompt)
    singles = stock.generate([request(make_image(h, w, seed=7)) for h, w in sizes], greedy(1))
    stock_counts = [runs_of(o.prompt_token_ids)[0] for o in singles]
    out = llm.generate([req], greedy(3))[0]
    assert runs_of(out.prompt_token_ids) == [math.floor(Fraction("0.3") * n) for n in stock_counts]
    sels = hired.vllm.last_selection(llm)
    assert [s.num_tokens_stock for s in sels] == stock_counts


def test_oracle_feeds_the_first_tokens(engines, qwen_path):
    llm = engines(qwen_path, {"method": "hired", "budget": 0.2, "oracle": True})
    out = llm.generate([request(make_image(150, 230))], greedy(2))[0]
    (sel,) = hired.vllm.last_selection(llm)
    count = runs_of(out.prompt_token_ids)[0]
    assert sel.partitions[0].kept == list(range(count))


# ------------------------------------------------------------------------------------------- positions code


def test_position_channels_are_exact_in_half_precision():
    from hired.vllm.merged_grid import decode_positions, encode_positions

    index = torch.tensor([0, 1, 255, 256, 257, 4095, 65535 - 300, 40000])
    for cols in (1, 7, 256, 300):
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            rc = decode_positions(encode_positions(index, cols, dtype))
            assert torch.equal(rc, torch.stack([index // cols, index % cols]))


# ------------------------------------------------------------------------------------------- clear errors


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"method": "cdpruner", "budget": 0.2}, r"method 'cdpruner' reads the prompt"),
        ({"method": "divprune", "budget": 0.2, "space": "vision"}, r"use space='projected'"),
        ({"method": "cls_topk", "score": "cls"}, r"no \[CLS\] token"),
        (
            {"method": "hired", "selection_layer": 4},
            r"select layer 4 is out of range: vLLM builds the vision layers 0..3",
        ),
        ({"method": "prumerge"}, r"method 'prumerge' keeps a content-dependent number of tokens"),
    ],
    ids=["query-aware", "vision-space", "cls-score", "layer", "adaptive"],
)
def test_refused_methods_are_one_clear_error(qwen_path, entry, message):
    from transformers import AutoConfig

    from hired.vllm.config import spec_from_config

    config = AutoConfig.from_pretrained(qwen_path)
    config.hired = entry
    with pytest.raises(ValueError, match=r"hf_overrides\['hired'\]: .*" + message):
        spec_from_config(config, config.model_type)


def test_refused_method_fails_at_start_up(qwen_path):
    with pytest.raises(ValueError, match=r"method 'cdpruner' reads the prompt"):
        make_llm(qwen_path, {"method": "cdpruner", "budget": 0.2})


def test_stock_class_without_hired(engines, qwen_path):
    llm = engines(qwen_path)
    assert type(llm.apply_model(lambda m: m)[0]).__name__.startswith("HiredQwen")
    llm.generate([request(make_image(100, 100))], greedy(1))
    assert hired.vllm.last_selection(llm) == []


def test_random_sizes_and_tiny_budgets(engines, qwen_path):
    """Random sizes and aspect ratios at a budget of 1e-3: nothing crashes, and every image gets
    max(1, floor(r * N)) placeholders (an image whose budget rounds down to no token keeps one)."""
    rng = np.random.RandomState(3)
    sizes = [(int(rng.randint(8, 500)), int(rng.randint(8, 500))) for _ in range(8)]
    requests = [request(make_image(h, w, seed=60 + i)) for i, (h, w) in enumerate(sizes)]
    stock = engines(qwen_path).generate(requests, greedy(1))
    outs = engines(qwen_path, {"method": "hired", "budget": 0.001}).generate(requests, greedy(2))
    for (h, w), out, ref in zip(sizes, outs, stock):
        (n,) = runs_of(ref.prompt_token_ids)
        assert runs_of(out.prompt_token_ids) == [max(1, math.floor(Fraction("0.001") * n))], (h, w)
        assert len(out.outputs[0].token_ids) == 2
