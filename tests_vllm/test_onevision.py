"""The plugin on LLaVA-OneVision (SigLIP tower without [CLS], received-attention scores, anyres_max
interpolation) in vLLM's offline engine, on a tiny random-weight model built locally."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from conftest import ONEVISION_SIZES, PROMPT, greedy, make_image, make_llm, request

import hired
import hired.vllm
from hired.core.grid import Geometry, layout_for
from hired.core.scores import received_attention
from hired.methods.base import get_method, num_image_tokens
from hired.testing import onevision_pinpoints

PINS = tuple(tuple(p) for p in onevision_pinpoints(84))
GEOMETRY = Geometry(crop_size=84, patch_size=14, grid_pinpoints=PINS, max_crops=4)  # the tiny config's
GEOMETRY_VLLM = Geometry(crop_size=84, patch_size=14, grid_pinpoints=PINS, max_crops=9)  # what vLLM 0.32 counts
ALL_GRIDS = {(r, c) for r in (1, 2, 3) for c in (1, 2, 3)}


def image_id(llm) -> int:
    return llm.get_tokenizer().convert_tokens_to_ids("<image>")


def video_id(llm) -> int:
    return llm.get_tokenizer().convert_tokens_to_ids("<video>")


def method_of(entry: dict):
    return get_method(entry.get("method", "hired"), **{k: v for k, v in entry.items() if k != "method"})


def make_video(frames: int = 4, seed: int = 0) -> np.ndarray:
    return (np.random.RandomState(seed).rand(frames, 84, 84, 3) * 255).astype("uint8")


def video_request(seed: int = 0) -> dict:
    return {"prompt": "USER: <video>\nwhat happens ? ASSISTANT:", "multi_modal_data": {"video": make_video(seed=seed)}}


def runs_of(ids: list[int], tok: int) -> list[int]:
    """Lengths of the runs of ``tok`` in ``ids``."""
    runs, current = [], 0
    for t in [*ids, None]:
        if t == tok:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    return runs


def test_the_sizes_reach_every_grid_and_the_interpolation():
    layouts = [layout_for(s, GEOMETRY) for s in ONEVISION_SIZES]
    assert {lay.grid for lay in layouts} == ALL_GRIDS
    scaled = {lay.grid for lay in layouts if lay.scaled is not None}
    assert {(2, 3), (3, 2), (3, 3)} <= scaled
    assert {(2, 3), (3, 2)} <= {lay.grid for lay in layouts if lay.scaled is None}  # the same grids unscaled


@pytest.mark.parametrize(
    "entry",
    [
        {"method": "hired", "budget": 0.2},
        {"method": "hired", "budget": 0.4, "alpha": 0.3, "keep_newline": True},
        {"method": "cls_topk", "budget": 0.55},
        {"method": "spatial", "budget": 0.3},
        {"method": "visionzip", "budget": 0.3},
        {"method": "dart", "budget": 0.3},
    ],
    ids=["hired-0.2", "hired-0.4-newline", "cls_topk-0.55", "spatial-0.3", "visionzip-0.3", "dart-0.3"],
)
def test_prompt_holds_the_core_count(engines, onevision_path, entry):
    """Every image of every grid, interpolated or not, gets exactly the core's count (the budget of the
    P x T patches before interpolation), the model gives as many features; the text is unchanged."""
    llm, stock = engines(onevision_path, entry), engines(onevision_path)
    method, tok = method_of(entry), image_id(llm)
    requests = [request(make_image(h, w)) for h, w in ONEVISION_SIZES]
    outs = llm.generate(requests, greedy(3))
    refs = stock.generate(requests, greedy(3))
    for (h, w), out, ref in zip(ONEVISION_SIZES, outs, refs):
        layout = layout_for((h, w), GEOMETRY)
        ids = out.prompt_token_ids
        count = sum(t == tok for t in ids)
        assert count == num_image_tokens(method, layout, newline=True)
        budget = math.floor(Fraction(str(entry["budget"])) * layout.num_partitions * layout.tokens)
        newlines = layout.valid_rows if entry.get("keep_newline") else 0
        assert count == min(budget, layout.num_valid) + newlines
        assert [t for t in ids if t != tok] == [t for t in ref.prompt_token_ids if t != tok]
        assert len(out.outputs[0].token_ids) == 3


def test_stock_vllm_counts_with_anyres_max_9(engines, onevision_path):
    """vLLM 0.32's own OneVision counts (and interpolates) with anyres_max_9 whatever the config says: on
    the tiny model (anyres_max_4) no canvas is interpolated by stock vLLM. With hired the count is the
    method's, independent of the interpolation."""
    stock, tok = engines(onevision_path), None
    tok = image_id(stock)
    outs = stock.generate([request(make_image(h, w)) for h, w in ONEVISION_SIZES], greedy(1))
    for (h, w), out in zip(ONEVISION_SIZES, outs):
        assert sum(t == tok for t in out.prompt_token_ids) == layout_for((h, w), GEOMETRY_VLLM).stock_length(True)


def test_several_images_in_one_prompt_get_the_full_grid(engines, onevision_path):
    """vLLM cuts each image of a multi-image prompt with the full anyres grid (stock and with hired)."""
    entry = {"method": "hired", "budget": 0.3}
    llm, stock, method = engines(onevision_path, entry), engines(onevision_path), method_of(entry)
    sizes = [(100, 150), (250, 250), (84, 84)]
    prompt = "USER: <image> and <image> and <image>\nwhat is in the image ? ASSISTANT:"
    req = request([make_image(h, w) for h, w in sizes], prompt)
    out = llm.generate([req], greedy(3))[0]
    assert runs_of(out.prompt_token_ids, image_id(llm)) == [
        num_image_tokens(method, layout_for(s, GEOMETRY), True) for s in sizes
    ]
    assert [s.grid for s in hired.vllm.last_selection(llm)] == [layout_for(s, GEOMETRY).grid for s in sizes]
    ref = stock.generate([req], greedy(3))[0]
    assert runs_of(ref.prompt_token_ids, image_id(stock)) == [
        layout_for(s, GEOMETRY_VLLM).stock_length(True) for s in sizes
    ]


@pytest.mark.parametrize(
    "entry",
    [{"method": "hired", "budget": 0.2}, {"method": "visionzip", "budget": 0.3}],
    ids=["hired", "visionzip"],
)
def test_batch_equals_one_by_one(engines, onevision_path, entry):
    """Mixed sizes (interpolated canvases too), a video and a text-only prompt in one batch."""
    llm = engines(onevision_path, entry)
    requests = [request(make_image(h, w, seed=3)) for h, w in ONEVISION_SIZES]
    requests += [video_request(seed=1), "USER: hello there ASSISTANT:"]
    batched = [o.outputs[0].token_ids for o in llm.generate(requests, greedy(6))]
    single = [llm.generate([r], greedy(6))[0].outputs[0].token_ids for r in requests]
    assert batched == single
    assert len({tuple(t) for t in batched}) > 1  # the images do matter


def test_video_and_text_prompts_run_as_stock(engines, onevision_path):
    """Videos take vLLM's own path and text-only prompts carry no image: with hired on, both give what
    stock vLLM gives, token for token."""
    llm, stock = engines(onevision_path, {"method": "hired", "budget": 0.2}), engines(onevision_path)
    requests = [video_request(seed=2), "USER: what is a cat ? ASSISTANT:"]
    outs, refs = llm.generate(requests, greedy(6)), stock.generate(requests, greedy(6))
    for out, ref in zip(outs, refs):
        assert out.prompt_token_ids == ref.prompt_token_ids
        assert out.outputs[0].token_ids == ref.outputs[0].token_ids
    assert sum(t == video_id(llm) for t in outs[0].prompt_token_ids) == 4 * 3 * 3 + 1  # frames x pooled 3x3 + newline
    # a video next to an image in one prompt: the image is reduced, the video is not
    mixed = {
        "prompt": "USER: <image> <video>\nwhat ? ASSISTANT:",
        "multi_modal_data": {"image": make_image(100, 150), "video": make_video(seed=2)},
    }
    out, ref = llm.generate([mixed], greedy(4))[0], stock.generate([mixed], greedy(4))[0]
    assert sum(t == video_id(llm) for t in out.prompt_token_ids) == sum(
        t == video_id(llm) for t in ref.prompt_token_ids
    )
    assert sum(t == image_id(llm) for t in out.prompt_token_ids) == num_image_tokens(
        method_of({"method": "hired", "budget": 0.2}), layout_for((100, 150), GEOMETRY), True
    )


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


@pytest.mark.parametrize(
    "entry",
    [
        {"method": "hired", "budget": 0.3, "alpha": 0.4},
        {"method": "cls_topk", "budget": 0.25},
        {"method": "divprune", "budget": 0.3},
        {"method": "dart", "budget": 0.3},
        {"method": "pool", "budget": 0.3},
    ],
    ids=lambda e: e["method"],
)
def test_kept_patches_equal_the_transformers_adapter(engines, onevision_path, entry):
    """The same image keeps the same patches (received-attention scores, the features, DART's keys) and
    reports the same counts as the transformers adapter on the same weights, interpolated canvases too."""
    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

    llm = engines(onevision_path, entry)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(onevision_path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(onevision_path)
    hired.apply(model, processor, method_of(entry))
    # an unpadded 1x1 image's sub-image is its full image again: DivPrune / DART then face exact twins, whose
    # order float noise decides, so the diversity methods take padded and larger images only
    sizes = ONEVISION_SIZES if entry["method"] in ("hired", "cls_topk") else ONEVISION_SIZES[1::3]
    for h, w in sizes:
        image = make_image(h, w, seed=11)
        out = llm.generate([request(image)], greedy(1))[0]
        (vsel,) = hired.vllm.last_selection(llm)
        with torch.no_grad():
            model(**processor(images=image, text=PROMPT, return_tensors="pt"))
        (tsel,) = hired.last_selection(model)
        assert (vsel.image_size, vsel.grid, vsel.num_tokens) == (tsel.image_size, tsel.grid, tsel.num_tokens)
        assert vsel.num_tokens == sum(t == image_id(llm) for t in out.prompt_token_ids)
        assert vsel.num_tokens_stock == tsel.num_tokens_stock == layout_for((h, w), GEOMETRY).stock_length(True)
        assert sum(len(p.kept) for p in vsel.partitions) == method_of(entry).count(layout_for((h, w), GEOMETRY))
        scores = hired.last_scores(model)[0]
        if "select" in scores:
            _assert_same_kept(vsel, tsel, scores["select"])
        else:
            assert [p.kept for p in vsel.partitions] == [p.kept for p in tsel.partitions]


def test_received_rows_from_the_fused_qkv_equal_the_attention_maps():
    """The hooks' score: what every query gives each key, averaged over queries, summed over heads, from a
    fused (B, N, 3 * H * D) qkv output, equal to the full softmax maps (and to the core function)."""
    from hired.engine.scores import LayerScores
    from hired.vllm.partitions import fused_qk

    torch.manual_seed(0)
    batch, seq, heads, dim = 3, 300, 4, 8  # more queries than one chunk
    qkv = torch.randn(batch, seq, 3 * heads * dim)
    rows = LayerScores({"select": 0}, None, heads, "received").score(*fused_qk(qkv))
    q, k, _ = qkv.view(batch, seq, 3, heads, dim).unbind(2)
    maps = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) * dim**-0.5, dim=-1)  # (B, H, N, N)
    torch.testing.assert_close(rows, maps.mean(dim=2).sum(dim=1), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(rows, received_attention(q.flatten(2), k.flatten(2), heads), rtol=0, atol=0)
    assert rows.dtype == torch.float32 and rows.shape == (batch, seq)


_NO_PLUGIN = r"""
import json, os, sys
sys.path.insert(0, os.path.dirname(sys.argv[2]))
from test_onevision import requests_for_stock
from conftest import greedy, make_llm
from vllm import ModelRegistry
llm = make_llm(sys.argv[1])
cls = ModelRegistry._try_load_model_cls("LlavaOnevisionForConditionalGeneration")
outs = llm.generate(requests_for_stock(), greedy(6))
print("RESULT " + json.dumps({"module": cls.__module__, "outs": [[o.prompt_token_ids, o.outputs[0].token_ids] for o in outs]}))
"""


def requests_for_stock() -> list:
    """Single images of every grid, a multi-image prompt, a video and a text-only prompt."""
    out = [request(make_image(h, w, seed=9)) for h, w in ONEVISION_SIZES]
    out.append(
        request([make_image(100, 150, seed=9), make_image(84, 84, seed=9)], "USER: <image> <image>\nwhat ? ASSISTANT:")
    )
    out += [video_request(seed=9), "USER: hello ASSISTANT:"]
    return out


def test_stock_path_equals_vllm_without_the_plugin(engines, onevision_path):
    env = {**os.environ, "VLLM_PLUGINS": "none"}  # an allow-list naming no installed plugin
    proc = subprocess.run(
        [sys.executable, "-c", _NO_PLUGIN, onevision_path, __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    reference = json.loads(lines[-1][len("RESULT ") :])
    assert reference["module"].startswith("vllm.")  # vLLM's own class ran
    llm = engines(onevision_path)  # plugin loaded, no "hired" key
    outs = llm.generate(requests_for_stock(), greedy(6))
    assert [[o.prompt_token_ids, list(o.outputs[0].token_ids)] for o in outs] == reference["outs"]
    assert hired.vllm.last_selection(llm) == []
    assert type(llm.apply_model(lambda m: m)[0]).__name__ == "HiredLlavaOnevisionForConditionalGeneration"


@pytest.mark.parametrize(
    "entry, message",
    [
        (
            {"method": "cls_topk", "score": "cls"},
            r"hf_overrides\['hired'\]: ClsTopK\(score='cls'\) reads \[CLS\] "
            r"attention, but this vision tower has no \[CLS\] token",
        ),
        (
            {"method": "hired", "selection_layer": 4},
            r"select layer 4 is out of range: vLLM builds the vision layers 0..3",
        ),
        ({"method": "cdpruner", "budget": 0.2}, r"method 'cdpruner' reads the prompt"),
        ({"method": "prumerge"}, r"method 'prumerge' keeps a content-dependent number of tokens"),
    ],
    ids=["cls-score", "layer", "query-aware", "adaptive"],
)
def test_bad_override_fails_at_start_up(onevision_path, entry, message):
    with pytest.raises(ValueError, match=message):
        make_llm(onevision_path, entry)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"vision_aspect_ratio": "anyres"}, r"hf_overrides\['hired'\]: vision_aspect_ratio must be 'anyres_max_N'"),
        (
            {"vision_feature_select_strategy": "default"},
            r"hf_overrides\['hired'\]: this LLaVA-OneVision config drops "
            r"the first patch as \[CLS\]",
        ),
    ],
    ids=["aspect", "strategy"],
)
def test_a_config_hired_cannot_serve_fails_at_start_up(onevision_path, config, message):
    from vllm import LLM

    with pytest.raises(ValueError, match=message):
        LLM(
            model=onevision_path,
            max_model_len=2048,
            dtype="float32",
            enforce_eager=True,
            hf_overrides={**config, "hired": {"method": "hired", "budget": 0.2}},
            limit_mm_per_prompt={"image": 1},
        )


def test_oracle_feeds_the_same_count_without_selection(engines, onevision_path):
    llm = engines(onevision_path, {"method": "hired", "budget": 0.2, "oracle": True})
    for h, w in [(100, 150), (250, 250)]:
        out = llm.generate([request(make_image(h, w))], greedy(2))[0]
        layout = layout_for((h, w), GEOMETRY)
        count = num_image_tokens(get_method("hired", budget=0.2), layout, newline=True)
        assert sum(t == image_id(llm) for t in out.prompt_token_ids) == count
        (sel,) = hired.vllm.last_selection(llm)
        kept = sorted(p * layout.tokens + i for p, part in enumerate(sel.partitions) for i in part.kept)
        assert kept == sorted(layout.pack_order(False)[:count].tolist())


def test_spec_refuses_other_towers_and_families_with_one_message():
    """Checked without an engine: a tower other than CLIP / SigLIP, an unknown family, LLaVA-NeXT with the
    'full' strategy; a SigLIP OneVision gets received scores, a CLIP one [CLS] rows."""
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaOnevisionConfig, PixtralVisionConfig

    from hired.vllm.config import spec_from_config

    def onevision(vision, strategy):
        cfg = LlavaOnevisionConfig(
            vision_config=vision,
            image_grid_pinpoints=[list(p) for p in PINS],
            vision_feature_select_strategy=strategy,
            vision_feature_layer=-1,
        )
        cfg.hired = {"method": "hired", "budget": 0.2}
        return cfg

    with pytest.raises(ValueError, match=r"hf_overrides\['hired'\]: needs a CLIP or SigLIP vision tower .*'pixtral'"):
        spec_from_config(onevision(PixtralVisionConfig(), "full"), "onevision")
    clip = CLIPVisionConfig(image_size=84, patch_size=14, num_hidden_layers=2, num_attention_heads=2, hidden_size=32)
    cfg = onevision(clip, "default")
    with pytest.raises(ValueError, match=r"hf_overrides\['hired'\]: unknown model family 'qwen'"):
        spec_from_config(cfg, "qwen")
    spec = spec_from_config(cfg, "onevision")
    assert spec.score_kind == "cls" and spec.info.has_cls and spec.newline and spec.geometry.max_crops == 9
    with pytest.raises(
        ValueError,
        match=r"hf_overrides\['hired'\]: LLaVA-OneVision with vision_feature_select_strategy='full' "
        r"and a tower with a \[CLS\] token",
    ):
        spec_from_config(onevision(clip, "full"), "onevision")
    nxt = LlavaNextConfig(
        vision_config=clip, vision_feature_select_strategy="full", image_grid_pinpoints=[[84, 168], [168, 84]]
    )
    nxt.hired = {"method": "hired"}
    with pytest.raises(
        ValueError, match=r"hf_overrides\['hired'\]: LLaVA-NeXT needs vision_feature_select_strategy='default'"
    ):
        spec_from_config(nxt, "llava_next")
