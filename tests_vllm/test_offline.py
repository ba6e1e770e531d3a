"""The plugin in vLLM's offline engine (in-process, CPU) on tiny random-weight models."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from fractions import Fraction

import pytest
import torch
from conftest import IMAGE_SIZES, PROMPT, greedy, make_image, make_llm, request

import hired
import hired.vllm
from hired.core.grid import Geometry, layout_for
from hired.methods.base import get_method, num_image_tokens
from hired.testing import default_pinpoints

GEOMETRY_NEXT = Geometry(crop_size=84, patch_size=14, grid_pinpoints=default_pinpoints(84))
GEOMETRY_LLAVA = Geometry(crop_size=84, patch_size=14)


def image_id(llm) -> int:
    return llm.get_tokenizer().convert_tokens_to_ids("<image>")


def method_of(entry: dict):
    options = {k: v for k, v in entry.items() if k != "method"}
    return get_method(entry.get("method", "hired"), **options)


@pytest.mark.parametrize(
    "entry",
    [
        {"method": "hired", "budget": 0.2},
        {"method": "hired", "budget": 0.4, "alpha": 0.3, "keep_newline": True},
        {"method": "spatial", "budget": 0.3},
        {"method": "cls_topk", "budget": 0.55},
        {"method": "visionzip", "budget": 0.3},
        {"method": "prumerge_plus", "budget": 0.25, "layer": 2},  # its default (layer 3) is not built
    ],
    ids=["hired-0.2", "hired-0.4-newline", "spatial-0.3", "cls_topk-0.55", "visionzip-0.3", "prumerge_plus-0.25"],
)
def test_prompt_holds_the_core_count(engines, next_path, entry):
    """Every image of every grid gets exactly the core's count; the text around it is unchanged."""
    llm, stock = engines(next_path, entry), engines(next_path)
    method, tok = method_of(entry), image_id(llm)
    requests = [request(make_image(h, w)) for h, w in IMAGE_SIZES]
    outs = llm.generate(requests, greedy(3))
    refs = stock.generate(requests, greedy(3))
    grids = set()
    for (h, w), out, ref in zip(IMAGE_SIZES, outs, refs):
        layout = layout_for((h, w), GEOMETRY_NEXT)
        grids.add(layout.grid)
        ids = out.prompt_token_ids
        count = sum(t == tok for t in ids)
        assert count == num_image_tokens(method, layout, newline=True)
        budget = math.floor(Fraction(str(entry["budget"])) * layout.num_partitions * layout.tokens)
        newlines = layout.valid_rows if entry.get("keep_newline") else 0
        assert count == min(budget, layout.num_valid) + newlines
        assert count < sum(t == tok for t in ref.prompt_token_ids)
        assert [t for t in ids if t != tok] == [t for t in ref.prompt_token_ids if t != tok]
        assert len(out.outputs[0].token_ids) == 3
    assert grids >= {(1, 2), (2, 1), (2, 2), (1, 3), (3, 1)}


def test_several_images_in_one_prompt(engines, next_path):
    entry = {"method": "hired", "budget": 0.3}
    llm, method = engines(next_path, entry), method_of(entry)
    sizes = [(100, 150), (60, 200), (84, 84)]
    prompt = "USER: <image> and <image> and <image>\nwhat is in the image ? ASSISTANT:"
    out = llm.generate([request([make_image(h, w) for h, w in sizes], prompt)], greedy(3))[0]
    ids, tok = out.prompt_token_ids, image_id(llm)
    runs, current = [], 0
    for t in ids + [None]:
        if t == tok:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    assert runs == [num_image_tokens(method, layout_for(s, GEOMETRY_NEXT), True) for s in sizes]
    assert [len(s.partitions) for s in hired.vllm.last_selection(llm)] == [
        layout_for(s, GEOMETRY_NEXT).num_partitions for s in sizes
    ]


@pytest.mark.parametrize(
    "entry",
    [
        {"method": "hired", "budget": 0.2},
        {"method": "hired", "budget": 0.5, "keep_newline": True},
        {"method": "visionzip", "budget": 0.3},
    ],
)
def test_batch_equals_one_by_one(engines, next_path, entry):
    llm = engines(next_path, entry)
    requests = [request(make_image(h, w, seed=3)) for h, w in IMAGE_SIZES]
    batched = [o.outputs[0].token_ids for o in llm.generate(requests, greedy(6))]
    single = [llm.generate([r], greedy(6))[0].outputs[0].token_ids for r in requests]
    assert batched == single
    assert len({tuple(t) for t in batched}) > 1  # the images do matter


def test_repeated_image_gets_the_same_correct_output(engines, next_path):
    """vLLM caches processed images and encoder outputs per image: a repeat must give the same answer."""
    llm = engines(next_path, {"method": "hired", "budget": 0.2})
    a, b = make_image(150, 100, seed=5), make_image(60, 200, seed=5)
    first = llm.generate([request(a)], greedy(6))[0]
    again = llm.generate([request(b), request(a), request(a)], greedy(6))
    for out in (again[1], again[2]):
        assert out.outputs[0].token_ids == first.outputs[0].token_ids
        assert out.prompt_token_ids == first.prompt_token_ids
    assert (
        again[0].outputs[0].token_ids != first.outputs[0].token_ids
        or again[0].prompt_token_ids != first.prompt_token_ids
    )
    # a fresh engine (empty caches) agrees
    fresh = make_llm(next_path, {"method": "hired", "budget": 0.2})
    assert fresh.generate([request(a)], greedy(6))[0].outputs[0].token_ids == first.outputs[0].token_ids
    del fresh


def _assert_same_kept(vllm_sel, tf_sel, tf_scores):
    """Same budgets per partition, same kept patches up to near-ties (scores closer than 1e-5)."""
    assert len(vllm_sel.partitions) == len(tf_sel.partitions)
    for p, (a, b) in enumerate(zip(vllm_sel.partitions, tf_sel.partitions)):
        assert a.budget == b.budget, f"partition {p}: budget {a.budget} vs {b.budget}"
        only_v, only_t = set(a.kept) - set(b.kept), set(b.kept) - set(a.kept)
        assert len(only_v) == len(only_t)
        if only_v:
            s = tf_scores[p]
            values = [float(s[i]) for i in only_v | only_t]
            assert max(values) - min(values) < 1e-5, f"partition {p}: {sorted(only_v)} vs {sorted(only_t)}"


@pytest.mark.parametrize("family", ["llava_next", "llava"])
def test_kept_patches_equal_the_transformers_adapter(engines, next_path, llava_path, family):
    from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    path = next_path if family == "llava_next" else llava_path
    cls = LlavaNextForConditionalGeneration if family == "llava_next" else LlavaForConditionalGeneration
    entry = {"method": "hired", "budget": 0.3, "alpha": 0.4}
    llm = engines(path, entry)
    model = cls.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(path)
    hired.apply(model, processor, method_of(entry))
    compared = 0
    for h, w in IMAGE_SIZES:
        image = make_image(h, w, seed=11)
        llm.generate([request(image)], greedy(1))
        (vsel,) = hired.vllm.last_selection(llm)
        inputs = processor(images=image, text=PROMPT, return_tensors="pt")
        with torch.no_grad():
            model(**inputs)
        (tsel,) = hired.last_selection(model)
        assert (vsel.image_size, vsel.grid, vsel.num_tokens) == (tsel.image_size, tsel.grid, tsel.num_tokens)
        assert vsel.num_tokens_stock == tsel.num_tokens_stock
        _assert_same_kept(vsel, tsel, hired.last_scores(model)[0]["select"])
        compared += 1
    assert compared == len(IMAGE_SIZES)


_NO_PLUGIN = r"""
import json, os, sys
sys.path.insert(0, os.path.dirname(sys.argv[2]))
from conftest import IMAGE_SIZES, greedy, make_image, make_llm, request
from vllm import ModelRegistry
llm = make_llm(sys.argv[1])
cls = ModelRegistry._try_load_model_cls("LlavaNextForConditionalGeneration")
outs = llm.generate([request(make_image(h, w, seed=9)) for h, w in IMAGE_SIZES], greedy(6))
print("RESULT " + json.dumps({"module": cls.__module__, "outs": [[o.prompt_token_ids, o.outputs[0].token_ids] for o in outs]}))
"""


def test_stock_path_equals_vllm_without_the_plugin(engines, next_path):
    env = {**os.environ, "VLLM_PLUGINS": "none"}  # an allow-list naming no installed plugin
    proc = subprocess.run(
        [sys.executable, "-c", _NO_PLUGIN, next_path, __file__], env=env, capture_output=True, text=True, timeout=300
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    reference = json.loads(lines[-1][len("RESULT ") :])
    assert reference["module"].startswith("vllm.")  # vLLM's own class ran
    llm = engines(next_path)  # plugin loaded, no "hired" key
    outs = llm.generate([request(make_image(h, w, seed=9)) for h, w in IMAGE_SIZES], greedy(6))
    assert [[o.prompt_token_ids, list(o.outputs[0].token_ids)] for o in outs] == reference["outs"]
    assert hired.vllm.last_selection(llm) == []
    assert type(llm.apply_model(lambda m: m)[0]).__module__ == "hired.vllm.llava_next"


def test_llava_1_5_count(engines, llava_path):
    entry = {"method": "hired", "budget": 0.25}
    llm, stock = engines(llava_path, entry), engines(llava_path)
    tok, method = image_id(llm), method_of(entry)
    requests = [request(make_image(h, w)) for h, w in IMAGE_SIZES[:3]]
    for out, ref in zip(llm.generate(requests, greedy(3)), stock.generate(requests, greedy(3))):
        assert (
            sum(t == tok for t in out.prompt_token_ids)
            == num_image_tokens(method, layout_for((84, 84), GEOMETRY_LLAVA), newline=False)
            == math.floor(0.25 * 36)
        )
        assert sum(t == tok for t in ref.prompt_token_ids) == 36


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"budget": 1.5}, r"hf_overrides\['hired'\]: budget must be in \(0, 1\], got 1.5"),
        ({"method": "nope"}, r"hf_overrides\['hired'\]: unknown method 'nope'; available: .*hired"),
        (
            {"method": "hired", "selection_layer": 3},
            r"select layer 3 is out of range: vLLM builds the vision layers 0..2",
        ),
        ({"method": "hired", "colour": 1}, r"HiRED has no option colour"),
        ({"method": "prumerge", "budget": 0.2}, r"select layer 3 is out of range: .* layer option"),
        (
            {"method": "hired", "regions": 2},
            r"hf_overrides\['hired'\]: HiRED\(regions=2\) shares the budget over "
            r"regions of an image that is one grid",
        ),
    ],
)
def test_bad_override_fails_at_start_up(next_path, entry, message):
    with pytest.raises(ValueError, match=message):
        make_llm(next_path, entry)


def test_adaptive_methods_are_refused_with_the_alternatives():
    from hired.vllm.config import fixed_budget_methods, parse_method

    adaptive = [n for n in hired.list_methods() if getattr(get_method(n), "adaptive", False)]
    fixed = fixed_budget_methods()
    assert {"hired", "spatial", "random", "cls_topk"} <= set(fixed)
    assert not set(adaptive) & set(fixed)
    assert {"prumerge", "prumerge_plus"} <= set(adaptive)  # their published form (budget=None)
    for name in adaptive:
        with pytest.raises(ValueError, match="use a fixed-budget method: " + ", ".join(fixed)):
            parse_method({"method": name})
        method, _ = parse_method({"method": name, "budget": 0.2})  # with a budget they are fixed
        assert method.name == name and not method.adaptive
    # HiRED's content-adaptive budget reads the pixels in the vision step: refused, with its fixed form
    with pytest.raises(
        ValueError, match=r"content-dependent .* its fixed form: \{'method': 'hired', 'budget': 0.1, 'adapt': 0.0\}"
    ):
        parse_method({"method": "hired", "budget": 0.1, "adapt": 1.0})
    assert not parse_method({"method": "hired", "budget": 0.1, "adapt": 0.0})[0].adaptive


def test_keep_positions_and_wrong_types_are_refused_with_the_reason():
    from hired.vllm.config import parse_method

    with pytest.raises(
        ValueError, match=r"hf_overrides\['hired'\]: keep_positions is not available in vLLM: .*1-D RoPE"
    ):
        parse_method({"method": "hired", "budget": 0.2, "keep_positions": True})
    with pytest.raises(ValueError, match=r"hf_overrides\['hired'\]: HiRED option keep_newline must be True or False"):
        parse_method({"method": "hired", "keep_newline": "yes"})
    assert parse_method({"method": "hired", "keep_positions": False})[0] == hired.HiRED()


def test_query_aware_methods_are_refused_with_the_alternatives():
    from hired.vllm.config import fixed_budget_methods, parse_method

    assert "cdpruner" not in fixed_budget_methods() and {"divprune", "dart"} <= set(fixed_budget_methods())
    with pytest.raises(ValueError, match=r"method 'cdpruner' reads the prompt .* vLLM's encoder never sees the prompt"):
        parse_method({"method": "cdpruner", "budget": 0.2})


@pytest.mark.parametrize(
    "entry",
    [
        {"method": "cls_topk", "budget": 0.3, "score": "received"},
        {"method": "hired", "budget": 0.3, "score": "received"},
    ],
    ids=lambda e: e["method"],
)
def test_received_scores_on_a_clip_tower_keep_what_the_transformers_adapter_keeps(engines, next_path, entry):
    """score='received' (attention each patch receives, from every query) on a CLIP tower: the plugin's
    rows from the fused qkv rank patches as the transformers adapter's."""
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    llm = engines(next_path, entry)
    assert llm.apply_model(lambda m: m.hired_spec.score_kind)[0] == "received"
    model = LlavaNextForConditionalGeneration.from_pretrained(next_path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(next_path)
    hired.apply(model, processor, method_of(entry))
    for h, w in IMAGE_SIZES[:4]:
        image = make_image(h, w, seed=13)
        llm.generate([request(image)], greedy(1))
        (vsel,) = hired.vllm.last_selection(llm)
        with torch.no_grad():
            model(**processor(images=image, text=PROMPT, return_tensors="pt"))
        (tsel,) = hired.last_selection(model)
        assert vsel.num_tokens == tsel.num_tokens
        _assert_same_kept(vsel, tsel, hired.last_scores(model)[0]["select"])


def test_oracle_feeds_the_same_count_without_selection(engines, next_path):
    """The benchmark's oracle: the method's count, filled with the first patches in pack order."""
    llm = engines(next_path, {"method": "hired", "budget": 0.2, "oracle": True})
    tok = image_id(llm)
    for h, w in IMAGE_SIZES[:3]:
        out = llm.generate([request(make_image(h, w))], greedy(2))[0]
        layout = layout_for((h, w), GEOMETRY_NEXT)
        count = num_image_tokens(get_method("hired", budget=0.2), layout, newline=True)
        assert sum(t == tok for t in out.prompt_token_ids) == count
        (sel,) = hired.vllm.last_selection(llm)
        kept = sorted(p * layout.tokens + i for p, part in enumerate(sel.partitions) for i in part.kept)
        assert kept == sorted(layout.pack_order(False)[:count].tolist())
    with pytest.raises(ValueError, match="'oracle' must be true or false"):
        make_llm(next_path, {"method": "hired", "oracle": "yes"})


@pytest.mark.parametrize(
    "entry", [{"method": "divprune", "budget": 0.3}, {"method": "dart", "budget": 0.3}], ids=lambda e: e["method"]
)
def test_feature_methods_keep_what_the_transformers_adapter_keeps(engines, next_path, entry):
    """DivPrune and DART read the patch features (projected) and DART the tower's keys: vLLM passes them
    as the transformers adapter does, so the same image keeps the same patches."""
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    llm = engines(next_path, entry)
    model = LlavaNextForConditionalGeneration.from_pretrained(next_path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(next_path)
    hired.apply(model, processor, method_of(entry))
    for h, w in IMAGE_SIZES[:3]:
        image = make_image(h, w, seed=12)
        out = llm.generate([request(image)], greedy(2))[0]
        (vsel,) = hired.vllm.last_selection(llm)
        with torch.no_grad():
            model(**processor(images=image, text=PROMPT, return_tensors="pt"))
        (tsel,) = hired.last_selection(model)
        assert vsel.num_tokens == tsel.num_tokens == sum(t == image_id(llm) for t in out.prompt_token_ids)
        assert [p.kept for p in vsel.partitions] == [p.kept for p in tsel.partitions]


@pytest.mark.parametrize("entry", [{"method": "hired", "budget": 0.001}, {"method": "dart", "budget": 0.001}])
def test_random_sizes_and_tiny_budgets(engines, next_path, entry):
    """Random sizes and aspect ratios at a budget of 1e-3: nothing crashes, and every image gets the core's
    count, at least one token (an image whose budget rounds down to no token keeps one)."""
    import numpy as np

    rng = np.random.RandomState(5)
    sizes = [(int(rng.randint(4, 400)), int(rng.randint(4, 400))) for _ in range(8)]
    llm, method = engines(next_path, entry), method_of(entry)
    outs = llm.generate([request(make_image(h, w, seed=i)) for i, (h, w) in enumerate(sizes)], greedy(2))
    for (h, w), out in zip(sizes, outs):
        layout = layout_for((h, w), GEOMETRY_NEXT)
        count = sum(t == image_id(llm) for t in out.prompt_token_ids)
        assert count == num_image_tokens(method, layout, newline=True) == 1, (h, w)
        assert len(out.outputs[0].token_ids) == 2
