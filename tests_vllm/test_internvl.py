"""The plugin on InternVL (Hugging Face format, served by vLLM's ``InternS1ForConditionalGeneration``: tiles
plus a thumbnail, InternViT with [CLS], 0.5 pixel shuffle) in vLLM's offline engine, on a tiny random-weight
model saved with ``save_pretrained`` and read back by both vLLM and transformers.

Expected values come from transformers: counts from the transformers adapter's processor on the same
image, kept tokens and greedy outputs from the adapter on the same saved weights, tile grids from the image
processor's own ``get_optimal_tiled_canvas``; stock values from vLLM without ``hired``.
"""

from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from conftest import greedy, make_image

import hired
import hired.vllm
from hired.methods.base import get_method

T = 16  # tokens per 112 px tile after the pixel shuffle
PROMPT = "USER: <IMG_CONTEXT>\nwhat is this? ASSISTANT:"
TWO = "USER: <IMG_CONTEXT> and <IMG_CONTEXT>\nwhat are these? ASSISTANT:"
# (h, w) → (rows, cols) of tiles of the tiny processor (1 to 6 tiles; a thumbnail beside more than one)
SIZES = {
    (100, 100): (1, 1),
    (60, 130): (1, 2),
    (130, 60): (2, 1),
    (200, 200): (2, 2),
    (90, 300): (1, 3),
    (150, 230): (2, 3),
    (400, 70): (6, 1),
}
FIXED = [
    {"method": "hired", "budget": 0.3, "alpha": 0.4},
    {"method": "cls_topk", "budget": 0.25},
    {"method": "spatial", "budget": 0.3},
    {"method": "dart", "budget": 0.3},
    {"method": "pool", "budget": 0.3},
]


def method_of(entry: dict):
    return get_method(entry.get("method", "hired"), **{k: v for k, v in entry.items() if k != "method"})


def request(image, prompt: str = PROMPT) -> dict:
    images = image if isinstance(image, list) else [image]
    return {"prompt": prompt, "multi_modal_data": {"image": images if len(images) > 1 else images[0]}}


def make_video(frames: int = 3, seed: int = 0) -> np.ndarray:
    return (np.random.RandomState(seed).rand(frames, 112, 112, 3) * 255).astype("uint8")


def video_request(seed: int = 0) -> dict:
    return {"prompt": "USER: <video>\nwhat happens? ASSISTANT:", "multi_modal_data": {"video": make_video(seed=seed)}}


def runs(ids: list[int], start: int, end: int, ctx: int) -> list[int]:
    """Context tokens between each ``<img>`` and its ``</img>``."""
    out, inside = [], None
    for t in ids:
        if t == start:
            inside = 0
        elif t == end:
            out.append(inside)
            inside = None
        elif t == ctx and inside is not None:
            inside += 1
    return out


@pytest.fixture(scope="module")
def internvl_path(tmp_path_factory):
    """The tiny InternVL with its language model's matrices drawn wider (std 0.2), so that greedy answers
    depend on the image (at the default 0.02 every answer is the same token)."""
    pytest.importorskip("torchvision")
    from hired.testing import tiny_internvl

    model, processor = tiny_internvl(seed=4)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for weight in model.model.language_model.parameters():
            if weight.dim() == 2:
                weight.copy_(torch.randn(weight.shape, generator=gen) * 0.2)
    path = tmp_path_factory.mktemp("tiny-internvl")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def transformers_model(internvl_path):
    from transformers import AutoProcessor, InternVLForConditionalGeneration

    model = InternVLForConditionalGeneration.from_pretrained(internvl_path, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(internvl_path)


@pytest.fixture
def adapter(transformers_model):
    """``apply(method)`` → the transformers model and processor with ``method`` applied (removed after)."""
    model, processor = transformers_model

    def apply(method):
        if hired.applied_method(model) is not None:
            hired.remove(model, processor)
        hired.apply(model, processor, method)
        return model, processor

    yield apply
    if hired.applied_method(model) is not None:
        hired.remove(model, processor)


def make_llm(path: str, hired_entry: dict | None = None, **config):
    from vllm import LLM

    overrides = {**config, **({} if hired_entry is None else {"hired": hired_entry})}
    return LLM(
        model=path,
        max_model_len=2048,
        dtype="float32",
        enforce_eager=True,
        seed=0,
        hf_overrides=overrides,
        limit_mm_per_prompt={"image": 3, "video": 1},
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


def token_ids(llm) -> tuple[int, int, int]:
    tok = llm.get_tokenizer()
    return tuple(tok.convert_tokens_to_ids(t) for t in ("<img>", "</img>", "<IMG_CONTEXT>"))


def test_sizes_cover_the_grids(transformers_model):
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    _, processor = transformers_model
    ip = processor.image_processor
    grids = {s: get_optimal_tiled_canvas(s, (112, 112), ip.min_patches, ip.max_patches)[::-1] for s in SIZES}
    assert grids == SIZES


@pytest.mark.parametrize("entry", FIXED, ids=lambda e: e["method"])
def test_prompt_holds_the_adapters_count(engines, internvl_path, adapter, entry):
    """Every image gets the transformers adapter's count for its size (floor(budget * P * 16) of its P tiles'
    tokens) wrapped in <img> ... </img>; vLLM checks that the model gives as many features; the text and the
    stock counts are unchanged."""
    llm, stock = engines(internvl_path, entry), engines(internvl_path)
    _, processor = adapter(method_of(entry))
    start, end, ctx = token_ids(llm)
    requests = [request(make_image(h, w, seed=i)) for i, (h, w) in enumerate(SIZES)]
    outs, refs = llm.generate(requests, greedy(2)), stock.generate(requests, greedy(1))
    for grid, req, out, ref in zip(SIZES.values(), requests, outs, refs):
        tiles = grid[0] * grid[1] + (grid[0] * grid[1] > 1)
        expected = math.floor(Fraction(str(entry["budget"])) * tiles * T)
        tf_ids = processor(images=req["multi_modal_data"]["image"], text=PROMPT, return_tensors="pt")["input_ids"]
        assert runs(out.prompt_token_ids, start, end, ctx) == runs(tf_ids[0].tolist(), start, end, ctx) == [expected]
        assert runs(ref.prompt_token_ids, start, end, ctx) == [tiles * T]
        assert [t for t in out.prompt_token_ids if t != ctx] == [t for t in ref.prompt_token_ids if t != ctx]
        assert len(out.outputs[0].token_ids) == 2
    sels = hired.vllm.last_selection(llm)
    assert len(sels) == len(SIZES)  # one batched encoder pass


def test_the_request_settings_choose_the_grid(internvl_path, adapter):
    """``mm_processor_kwargs`` that change ``max_patches`` change the grids vLLM's processor cuts, and the
    counts and layouts follow them (the adapter's count under the same setting)."""
    entry = {"method": "hired", "budget": 0.3}
    from vllm import LLM

    llm = LLM(
        model=internvl_path,
        max_model_len=2048,
        dtype="float32",
        enforce_eager=True,
        hf_overrides={"hired": entry},
        limit_mm_per_prompt={"image": 1},
        mm_processor_kwargs={"max_patches": 3},
    )
    _, processor = adapter(method_of(entry))
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    start, end, ctx = token_ids(llm)
    sizes = [(200, 200), (150, 230), (400, 70), (60, 130)]
    grids = []
    try:
        for i, (h, w) in enumerate(sizes):
            image = make_image(h, w, seed=70 + i)
            out = llm.generate([request(image)], greedy(1))[0]
            tf_ids = processor(images=image, text=PROMPT, max_patches=3, return_tensors="pt")["input_ids"][0]
            assert out.prompt_token_ids == tf_ids.tolist()
            (sel,) = hired.vllm.last_selection(llm)
            tiles = len(sel.partitions)
            assert tiles <= 4 and runs(out.prompt_token_ids, start, end, ctx) == [math.floor(0.3 * tiles * T)]
            assert sel.num_tokens_stock == tiles * T
            grids.append(sel.grid if sel.grid != (0, 0) else (1, 1))
    finally:
        del llm
        gc.collect()
    assert grids == [get_optimal_tiled_canvas(size, (112, 112), 1, 3)[::-1] for size in sizes]
    assert grids != [SIZES.get(size) for size in sizes]  # not the grids of max_patches=6


def _assert_same_kept(vllm_sel, tf_sel, tf_scores):
    """Same budgets per partition, same kept tokens up to near-ties (scores closer than 1e-5)."""
    assert len(vllm_sel.partitions) == len(tf_sel.partitions)
    for p, (a, b) in enumerate(zip(vllm_sel.partitions, tf_sel.partitions)):
        assert a.budget == b.budget, f"partition {p}: budget {a.budget} vs {b.budget}"
        only_v, only_t = set(a.kept) - set(b.kept), set(b.kept) - set(a.kept)
        assert len(only_v) == len(only_t)
        if only_v:
            s = tf_scores[p]
            values = [float(s[i]) for i in only_v | only_t]
            assert max(values) - min(values) < 1e-5, f"partition {p}: {sorted(only_v)} vs {sorted(only_t)}"


@pytest.mark.parametrize("entry", FIXED, ids=lambda e: e["method"])
def test_kept_tokens_and_answers_equal_the_transformers_adapter(engines, internvl_path, adapter, entry):
    """The same image keeps the same tokens of the same partitions (thumbnail first, then the tiles) and
    gets the same greedy answer as from the transformers adapter on the same weights."""
    llm = engines(internvl_path, entry)
    model, processor = adapter(method_of(entry))
    answers = set()
    for i, (h, w) in enumerate(SIZES):
        image = make_image(h, w, seed=20 + i)
        out = llm.generate([request(image)], greedy(4))[0]
        (vsel,) = hired.vllm.last_selection(llm)
        inputs = processor(images=image, text=PROMPT, return_tensors="pt")
        assert out.prompt_token_ids == inputs["input_ids"][0].tolist()
        with torch.no_grad():
            gen = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        (tsel,) = hired.last_selection(model)
        assert (vsel.image_size, vsel.grid, vsel.num_tokens) == (tsel.image_size, tsel.grid, tsel.num_tokens)
        assert vsel.num_tokens_stock == tsel.num_tokens_stock
        scores = hired.last_scores(model)[0]
        if "select" in scores:
            _assert_same_kept(vsel, tsel, scores["select"])
        else:
            assert [p.kept for p in vsel.partitions] == [p.kept for p in tsel.partitions]
        answer = list(out.outputs[0].token_ids)
        assert answer == gen[0, inputs["input_ids"].shape[1] :].tolist(), (h, w)
        answers.add(tuple(answer))
    assert len(answers) > 1  # the images do matter


def _stock_requests(seed: int) -> list:
    out = [request(make_image(h, w, seed=seed + i)) for i, (h, w) in enumerate(SIZES)]
    out.append(request([make_image(60, 130, seed=seed), make_image(200, 200, seed=seed + 1)], TWO))
    out.append("USER: what is a cat? ASSISTANT:")
    return out


def test_budget_one_equals_stock(engines, internvl_path):
    """HiRED(budget=1.0) keeps every token in the stock order: the prompts and greedy answers of stock vLLM
    (single images of every grid, a two-image prompt, a text-only prompt)."""
    full, stock = engines(internvl_path, {"method": "hired", "budget": 1.0}), engines(internvl_path)
    requests = _stock_requests(seed=30)
    outs = [[o.prompt_token_ids, list(o.outputs[0].token_ids)] for o in full.generate(requests, greedy(6))]
    refs = [[o.prompt_token_ids, list(o.outputs[0].token_ids)] for o in stock.generate(requests, greedy(6))]
    assert outs == refs
    assert len({tuple(o[1]) for o in outs}) > 1


@pytest.mark.parametrize("entry", FIXED[:2], ids=lambda e: e["method"])
def test_batch_equals_one_by_one(engines, internvl_path, entry):
    """Mixed sizes, a two-image prompt and a text-only prompt in one batch give what each gives alone."""
    llm = engines(internvl_path, entry)
    requests = _stock_requests(seed=40)
    batched = [list(o.outputs[0].token_ids) for o in llm.generate(requests, greedy(6))]
    single = [list(llm.generate([r], greedy(6))[0].outputs[0].token_ids) for r in requests]
    assert batched == single
    assert len({tuple(t) for t in batched}) > 1
    fresh = request([make_image(60, 130, seed=49), make_image(200, 200, seed=49)], TWO)  # not in the caches
    two = llm.generate([fresh], greedy(1))[0]
    start, end, ctx = token_ids(llm)
    assert runs(two.prompt_token_ids, start, end, ctx) == [
        math.floor(Fraction(str(entry["budget"])) * n * T) for n in (3, 5)
    ]
    assert [s.grid for s in hired.vllm.last_selection(llm)] == [(1, 2), (2, 2)]


def test_videos_take_the_stock_path(engines, internvl_path):
    """vLLM's InternVL encodes a video's frames as single tiles (``pixel_values_videos``, one run of
    ``<video>`` tokens per frame): with hired on, a video prompt and a prompt with an image and a video
    give stock vLLM's video tokens, the image alone is reduced."""
    entry = {"method": "hired", "budget": 0.3}
    llm, stock = engines(internvl_path, entry), engines(internvl_path)
    video = llm.get_tokenizer().convert_tokens_to_ids("<video>")
    out, ref = (
        llm.generate([video_request(seed=2)], greedy(6))[0],
        stock.generate([video_request(seed=2)], greedy(6))[0],
    )
    assert out.prompt_token_ids == ref.prompt_token_ids
    assert list(out.outputs[0].token_ids) == list(ref.outputs[0].token_ids)
    assert sum(t == video for t in out.prompt_token_ids) == 3 * T
    mixed = {
        "prompt": "USER: <IMG_CONTEXT> <video>\nwhat? ASSISTANT:",
        "multi_modal_data": {"image": make_image(200, 200, seed=3), "video": make_video(seed=3)},
    }
    out, ref = llm.generate([mixed], greedy(2))[0], stock.generate([mixed], greedy(2))[0]
    start, end, ctx = token_ids(llm)
    assert sum(t == video for t in out.prompt_token_ids) == sum(t == video for t in ref.prompt_token_ids) == 3 * T
    assert runs(out.prompt_token_ids, start, end, ctx) == [math.floor(0.3 * 5 * T), 0, 0, 0]  # the frames: none


def test_an_image_whose_count_rounds_to_zero_keeps_one_token(engines, internvl_path, adapter):
    """floor(0.05 * 16) = 0: a one-tile image keeps one token (every image keeps at least one), as in the
    transformers adapter, beside an image of five tiles that keeps floor(0.05 * 80) = 4."""
    entry = {"method": "cls_topk", "budget": 0.05}
    llm = engines(internvl_path, entry)
    _, processor = adapter(method_of(entry))
    start, end, ctx = token_ids(llm)
    images = [make_image(100, 100, seed=50), make_image(200, 200, seed=50)]
    out = llm.generate([request(images, TWO)], greedy(2))[0]
    assert runs(out.prompt_token_ids, start, end, ctx) == [1, 4]
    assert out.prompt_token_ids == processor(images=images, text=TWO, return_tensors="pt")["input_ids"][0].tolist()
    assert [s.num_tokens for s in hired.vllm.last_selection(llm)] == [1, 4]
    assert len(out.outputs[0].token_ids) == 2


@pytest.mark.parametrize(
    "entry, config, message",
    [
        ({"method": "cdpruner", "budget": 0.2}, {}, r"hf_overrides\['hired'\]: method 'cdpruner' reads the prompt"),
        ({"method": "prumerge"}, {}, r"method 'prumerge' keeps a content-dependent number of tokens"),
        (
            {"method": "hired", "budget": 0.2, "keep_positions": True},
            {},
            r"hf_overrides\['hired'\]: keep_positions is not available in vLLM",
        ),
        (
            {"method": "hired", "selection_layer": 4},
            {},
            r"select layer 4 is out of range: vLLM builds the vision layers 0..3",
        ),
        (
            {"method": "hired", "budget": 0.2},
            {"vision_feature_layer": -2},
            r"hf_overrides\['hired'\]: vLLM's InternVL reads the vision tower's last layer",
        ),
    ],
    ids=["query-aware", "adaptive", "keep_positions", "layer", "feature-layer"],
)
def test_what_the_plugin_cannot_serve_fails_at_start_up(internvl_path, entry, config, message):
    with pytest.raises(ValueError, match=message):
        make_llm(internvl_path, entry, **config)


_NO_PLUGIN = r"""
import json, os, sys
sys.path.insert(0, os.path.dirname(sys.argv[2]))
from test_internvl import _stock_requests, greedy, make_llm, video_request
from vllm import ModelRegistry
llm = make_llm(sys.argv[1])
cls = ModelRegistry._try_load_model_cls("InternVLForConditionalGeneration")
outs = llm.generate(_stock_requests(seed=60) + [video_request(seed=60)], greedy(6))
print("RESULT " + json.dumps({"module": cls.__module__, "outs": [[o.prompt_token_ids, o.outputs[0].token_ids] for o in outs]}))
"""


def test_stock_path_equals_vllm_without_the_plugin(engines, internvl_path):
    """Plugin loaded, no ``hired`` entry: vLLM's own InternS1 results (images of every grid, two images, a
    video, text only), token for token, from the plugin's subclass."""
    env = {**os.environ, "VLLM_PLUGINS": "none"}  # an allow-list naming no installed plugin
    proc = subprocess.run(
        [sys.executable, "-c", _NO_PLUGIN, internvl_path, __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    reference = json.loads(lines[-1][len("RESULT ") :])
    assert reference["module"] == "vllm.model_executor.models.interns1"  # vLLM's own class ran
    llm = engines(internvl_path)
    outs = llm.generate(_stock_requests(seed=60) + [video_request(seed=60)], greedy(6))
    assert [[o.prompt_token_ids, list(o.outputs[0].token_ids)] for o in outs] == reference["outs"]
    assert hired.vllm.last_selection(llm) == []
    assert type(llm.apply_model(lambda m: m)[0]).__name__ == "HiredInternVLForConditionalGeneration"


def test_bench_vllm_runs_an_internvl_folder(internvl_path, tmp_path):
    """``hired bench-vllm --model <folder>``: stock vLLM, the method and its oracle, with InternVL's own image
    placeholder in the requests; the method's prompts are shorter than stock by the context tokens it drops
    (``floor(budget * N)`` of the stock processor's N for the benchmark's picture)."""
    from PIL import Image
    from transformers import AutoProcessor

    from hired.cli import main

    report = tmp_path / "bench.json"
    argv = ["bench-vllm", "--model", internvl_path, "--budgets", "0.5", "--requests", "2", "--runs", "1"]
    argv += ["--new-tokens", "2", "--image-size", "120", "--max-model-len", "2048", "--json", str(report)]
    assert main(argv) == 0
    rows = {r["config"]: r for r in json.loads(report.read_text())["rows"]}
    assert set(rows) == {"stock vLLM", "hired 0.5", "oracle 0.5"}
    processor = AutoProcessor.from_pretrained(internvl_path)
    ids = processor(images=Image.new("RGB", (120, 120)), text=processor.image_token, return_tensors="pt")["input_ids"]
    n = int((ids == processor.image_token_id).sum())
    dropped = n - math.floor(0.5 * n)
    assert rows["stock vLLM"]["prompt_tokens"] - rows["hired 0.5"]["prompt_tokens"] == dropped
    assert rows["oracle 0.5"]["prompt_tokens"] == rows["hired 0.5"]["prompt_tokens"]
