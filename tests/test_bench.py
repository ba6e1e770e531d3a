"""The efficiency benchmark's measuring and reporting code on tiny models (structure and sanity, not speed)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import require_torchvision

import hired
from hired.bench import (
    ARCHS,
    MethodSpec,
    Settings,
    build_arch,
    markdown,
    oracle,
    plot,
    reference_attention,
    run_benchmark,
)
from hired.bench.timing import PARTS, CpuMemory
from hired.cli import main
from hired.core.grid import Geometry, layout_for
from hired.inference import demo_image
from hired.methods.base import num_image_tokens
from hired.testing import save_tiny

PROMPT = "USER: <image>\nWhat is this? ASSISTANT:"
TINY = dict(runs=1, warmup=0, new_tokens=3, progress=False)


def _geometry(model) -> Geometry:
    vc = model.config.vision_config
    pins = getattr(model.config, "image_grid_pinpoints", None)
    return Geometry(int(vc.image_size), int(vc.patch_size), tuple(tuple(p) for p in pins) if pins else None)


def _expected_tokens(model, method, image, newline: bool) -> int:
    layout = layout_for((image.height, image.width), _geometry(model))
    return num_image_tokens(method, layout, newline)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def image():
    return demo_image((100, 200))  # 1x2 grid on the tiny LLaVA-NeXT: 3 partitions of 36 patches


@pytest.fixture(scope="module")
def next_result(_llava_next_session, image):
    model, processor = _llava_next_session
    settings = Settings(budgets=(0.25,), batch_sizes=(1, 2), **{**TINY, "runs": 2})
    result = run_benchmark(model, processor, image, settings, model_name="tiny")
    assert hired.applied_method(model) is None
    assert not {"get_image_features", "_hired_state"} & set(model.model.__dict__)
    assert not {"replace_image_token", "_hired_state"} & set(processor.__dict__)
    return result


def test_json_structure(next_result):
    meta = next_result["meta"]
    for key in ("device", "device_name", "dtype", "torch", "transformers", "memory", "date", "runs", "warmup"):
        assert meta[key] not in (None, ""), key
    assert meta["torch"] == torch.__version__ and meta["runs"] == 2
    json.loads(json.dumps(next_result))  # JSON-ready
    rows = next_result["rows"]
    # per batch: full, then per budget: method, oracle, reference path
    assert [(r["batch"], r["kind"], r["budget"]) for r in rows] == [
        (b, kind, budget)
        for b in (1, 2)
        for kind, budget in [("full", None)] + [(k, 0.25) for k in ("method", "oracle", "reference")]
    ]
    for row in rows:
        assert len(row["runs"]) == 2
        for key, stat in row["summary"].items():
            assert stat["min"] <= stat["median"] <= stat["max"], key
        if row["kind"] in ("method", "reference"):
            key = (row["batch"], row["budget"])
            orc = next(r for r in rows if r["kind"] == "oracle" and (r["batch"], r["budget"]) == key)
            med, low = row["summary"]["ttft"], orc["summary"]["ttft"]
            assert row["overhead_vs_oracle"] == pytest.approx(med["median"] / low["median"] - 1)
            assert row["overhead_vs_oracle_min"] == pytest.approx(med["min"] / low["min"] - 1)
            assert row["overhead_vs_oracle_paired"] > -1.0
        else:
            assert "overhead_vs_oracle" not in row


def test_runs_are_sane(next_result):
    for row in next_result["rows"]:
        for run in row["runs"]:
            assert run["ttft"] > 0 and run["total"] > run["ttft"] and run["decode"] > 0
            for part in PARTS:
                assert run[part] >= 0, part
            assert sum(run[p] for p in PARTS) <= run["ttft"] * (1 + 1e-6)
            assert sum(run[p] for p in PARTS) == pytest.approx(run["ttft"], rel=1e-6)
            assert run["vision"] > 0 and run["prefill"] > 0
            assert 0 < run["llm"] <= run["prefill"]
            assert run["e2e_tok_s"] == pytest.approx(row["batch"] * 3 / run["total"])
            assert run["decode_tok_s"] == pytest.approx(row["batch"] * 2 / run["decode"])
            assert run["peak_memory"] > 0 and 0 <= run["run_memory"] <= run["peak_memory"]


def test_token_counts(next_result, _llava_next_session, image):
    model, _ = _llava_next_session
    full = _expected_tokens(model, hired.HiRED(budget=1.0, keep_newline=True), image, True)  # every valid patch + rows
    for row in next_result["rows"]:
        assert len(row["tokens_per_image"]) == row["batch"]
        assert row["stock_tokens_per_image"] == full
        if row["kind"] == "full":
            assert row["tokens_per_image"] == [full] * row["batch"]
        else:
            want = _expected_tokens(model, hired.HiRED(budget=row["budget"]), image, True)
            assert want < full
            assert row["tokens_per_image"] == [want] * row["batch"]


def test_oracle_count_equals_method_kept_count(next_result):
    rows = next_result["rows"]
    methods = [r for r in rows if r["kind"] == "method"]
    oracles = [r for r in rows if r["kind"] == "oracle"]
    assert len(methods) == len(oracles) == 2
    for m, o in zip(methods, oracles):
        assert (m["batch"], m["budget"]) == (o["batch"], o["budget"])
        assert o["features_per_image"] == m["kept_per_image"] == o["tokens_per_image"] == m["tokens_per_image"]


@pytest.mark.parametrize("family", ["llava", "llava_next_newline"])
def test_oracle_matches_other_models_and_options(family, llava, llava_next, image):
    model, processor = llava if family == "llava" else llava_next
    options = {"keep_newline": True} if family == "llava_next_newline" else {}
    settings = Settings(
        methods=(MethodSpec("hired", options),),
        budgets=(0.3,),
        batch_sizes=(2,),
        full=False,
        reference_attention=False,
        **TINY,
    )
    rows = run_benchmark(model, processor, image, settings)["rows"]
    assert [r["kind"] for r in rows] == ["method", "oracle"]
    method, orc = rows
    want = _expected_tokens(model, hired.HiRED(budget=0.3, **options), image, family != "llava")
    assert orc["features_per_image"] == method["kept_per_image"] == [want, want]
    assert method["tokens_per_image"] == orc["tokens_per_image"] == [want, want]


def test_oracle_context_feeds_the_count_and_restores(llava_next, image):
    model, processor = llava_next
    with oracle(model, processor, [5, 9]) as record:
        inputs = processor(images=[image, image], text=[PROMPT, PROMPT], return_tensors="pt", padding=True)
        assert (inputs["input_ids"] == processor.image_token_id).sum(dim=1).tolist() == [5, 9]
        out = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
        assert out.shape[1] == inputs["input_ids"].shape[1] + 2
        assert record.features_per_image == [5, 9]
    stock = processor(images=image, text=PROMPT, return_tensors="pt")
    assert int((stock["input_ids"] == processor.image_token_id).sum()) > 9
    hired.apply(model, processor, hired.HiRED(budget=0.2))
    with pytest.raises(ValueError, match="stock model"):
        with oracle(model, processor, [5]):
            pass
    with pytest.raises(ValueError, match="positive"):
        hired.remove(model, processor)
        with oracle(model, processor, [0]):
            pass


def test_reference_attention_returns_full_maps_and_restores(llava_next, image):
    model, processor = llava_next
    tower = model.model.vision_tower
    seen = []
    handle = tower.register_forward_hook(lambda _m, _a, out: seen.append(out.attentions))
    try:
        hired.apply(model, processor, hired.HiRED(budget=0.3))
        inputs = processor(images=image, text=PROMPT, return_tensors="pt")
        with reference_attention(model):
            assert tower.config._attn_implementation == "eager"
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    finally:
        handle.remove()
    maps, after = seen
    n = model.config.vision_config.num_hidden_layers
    tokens = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2 + 1
    assert len(maps) == n and maps[0].shape == (3, model.config.vision_config.num_attention_heads, tokens, tokens)
    assert after is None and tower.config._attn_implementation == "sdpa"


def test_markdown_and_plot(next_result, tmp_path):
    text = markdown(next_result)
    meta = next_result["meta"]
    assert meta["device_name"] in text and meta["torch"] in text and meta["transformers"] in text
    table = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(table) == len(next_result["rows"])
    assert "oracle(hired)" in text and "%" in table[1]
    path = plot(next_result, tmp_path / "bench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cpu_memory_meter_sees_a_run_peak():
    meter = CpuMemory()
    if not meter.resettable:
        pytest.fail("/proc/self/clear_refs should be writable on Linux")
    meter.start()
    block = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, touched
    del block
    peak, base = meter.stop()
    assert peak - base >= 60 * 1024 * 1024
    meter.start()
    peak, base = meter.stop()
    assert peak - base < 32 * 1024 * 1024  # the mark was reset: the earlier block is not counted again


def test_arch_shapes_match_the_checkpoints():
    model, processor = build_arch("llava-next-7b", device="meta", dtype=torch.float16)
    vc, tc = model.config.vision_config, model.config.text_config
    shape = (vc.num_hidden_layers, vc.hidden_size, vc.num_attention_heads, vc.image_size, vc.patch_size)
    assert shape == (24, 1024, 16, 336, 14)
    assert (tc.num_hidden_layers, tc.hidden_size, tc.intermediate_size, tc.vocab_size) == (32, 4096, 11008, 32064)
    assert model.config.vision_feature_layer == -2
    pins = [list(p) for p in model.config.image_grid_pinpoints]
    assert pins == [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    assert abs(sum(p.numel() for p in model.parameters()) - 7.063e9) < 0.001e9  # llava-v1.6-vicuna-7b: 7.06B
    assert model.dtype == torch.float16
    assert processor.image_token_id < tc.vocab_size
    llava, _ = build_arch("llava-1.5-7b", device="meta", dtype="float16")
    assert type(llava).__name__ == "LlavaForConditionalGeneration"
    with pytest.raises(ValueError, match="unknown architecture 'nope'"):
        build_arch("nope")


def test_arch_too_large_for_the_device_is_a_clear_error(monkeypatch):
    from hired.bench import archs

    monkeypatch.setattr(archs, "_available_bytes", lambda device: 100 * 10**6)
    with pytest.raises(ValueError, match=r"small needs about 0\.2 GB for its float32 weights but cpu has 0\.1 GB free"):
        build_arch("small")


def test_small_arch_has_the_paper_geometry():
    model, processor = build_arch("small")
    inputs = processor(images=demo_image((600, 600)), text=PROMPT, return_tensors="pt")
    assert inputs["pixel_values"].shape[1] == 5  # full image + 2x2 grid
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 2928  # 5 x 576 + 48 newlines, as 7B
    vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    llm = sum(p.numel() for p in model.model.language_model.layers.parameters())
    assert llm > 10 * vision  # the language model dominates the cost
    assert set(ARCHS) >= {"llava-next-7b", "llava-1.5-7b", "small"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(save_tiny(tmp_path_factory.mktemp("bench") / "tiny"))


def test_cli_end_to_end(tiny_dir, tmp_path, capsys):
    args = [
        "bench",
        "--model",
        tiny_dir,
        "--budgets",
        "0.5,0.25",
        "--batch-sizes",
        "1",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--new-tokens",
        "2",
        "--threads",
        "1",
        "--no-progress",
        "--json",
        str(tmp_path / "r.json"),
        "--markdown",
        str(tmp_path / "r.md"),
        "--plot",
        str(tmp_path / "r.png"),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "r.json").read_text())
    assert [r["kind"] for r in result["rows"]] == ["full"] + ["method", "oracle", "reference"] * 2
    assert result["meta"]["image_size"] == [600, 600] and result["meta"]["torch_threads"] == 1
    assert "--budgets 0.5,0.25" in result["meta"]["command"]
    assert (tmp_path / "r.md").read_text() in out
    assert (tmp_path / "r.png").stat().st_size > 0


def _run_bad(argv, capsys) -> str:
    try:
        rc = main(argv)
    except SystemExit as exc:
        return str(exc.code) + capsys.readouterr().err
    assert rc != 0
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--arch", "small"], "add --random-weights"),
        (["--model", "x", "--random-weights"], "--random-weights goes with --arch"),
        (["--model", "x", "--budgets", "1.5"], "budget must be in (0, 1]"),
        (["--model", "x", "--batch-sizes", "0"], "batch sizes must be positive"),
        (["--model", "x", "--runs", "0"], "runs must be at least 1"),
        (["--model", "x", "--new-tokens", "1"], "new tokens must be at least 2"),
        (["--model", "x", "--methods", "nope"], "unknown method 'nope'"),
        (["--model", "x", "--option", "alpha=2"], "alpha must be in [0, 1]"),
        (["--model", "x", "--option", "budget=0.3"], "--budgets"),
        (["--model", "x", "--option", "spatial:seed=1"], "not in --methods"),
        (["--model", "x", "--threads", "0"], "--threads must be at least 1"),
        (["--model", "x", "--image", "missing.png"], "image not found"),
    ],
)
def test_bad_arguments_give_one_clear_error(extra, message, capsys):
    assert message in _run_bad(["bench", "--no-progress", *extra], capsys)


def test_adaptive_method_without_two_pass_inputs_is_a_clear_error(monkeypatch, capsys):
    from dataclasses import dataclass

    from hired.methods.base import _REGISTRY, Method

    @dataclass(frozen=True)
    class Adaptive(Method):
        name = "adaptive_test"
        adaptive = True

    monkeypatch.setitem(_REGISTRY, "adaptive_test", Adaptive)
    monkeypatch.delattr(hired, "prepare_inputs", raising=False)
    err = _run_bad(["bench", "--model", "x", "--methods", "adaptive_test", "--no-progress"], capsys)
    assert "adaptive number of tokens" in err and "prepare_inputs" in err


def test_adaptive_method_runs_on_two_pass_inputs(llava_next, image):
    model, processor = llava_next
    settings = Settings(
        methods=(MethodSpec("prumerge", {"budget": None}),),
        budgets=(0.5, 0.25),
        batch_sizes=(1,),
        full=False,
        reference_attention=False,
        **TINY,
    )
    rows = run_benchmark(model, processor, image, settings)["rows"]
    assert [(r["kind"], r["budget"]) for r in rows] == [("method", None), ("oracle", None)]
    method, orc = rows
    assert orc["features_per_image"] == method["kept_per_image"]
    assert method["tokens_per_image"] == orc["tokens_per_image"] == method["kept_per_image"]
    for row in rows:
        run = row["runs"][0]
        assert all(run[p] >= 0 for p in PARTS) and run["vision"] > 0
        assert sum(run[p] for p in PARTS) == pytest.approx(run["ttft"], rel=1e-6)


def test_projecting_every_patch_to_choose_counts_as_selection(llava_next):
    """A method that scores projected features calls the projector twice; the probes time the last call
    (the kept tokens) as the projector, so the first one is part of selection."""
    from hired.bench.timing import Probes

    class Counter:
        n = 0

        def mark(self):
            self.n += 1
            return self.n

    model, processor = llava_next
    hired.apply(model, processor, hired.DivPrune(budget=0.3))
    clock = Counter()
    probes = Probes(model, clock)
    calls = []
    handle = model.model.multi_modal_projector.register_forward_pre_hook(lambda *_: calls.append(clock.n))
    try:
        with torch.no_grad():
            model(**processor(images=demo_image((120, 200)), text=PROMPT, return_tensors="pt"))
    finally:
        handle.remove()
        probes.remove()
    assert len(calls) == 2 and probes.marks["projector_start"] == calls[-1]
    assert probes.marks["vision_end"] < calls[0] < probes.marks["projector_start"] < probes.marks["llm_start"]


# ------------------------------------------------------------------------------------------ LLaVA-OneVision


@pytest.fixture(scope="module")
def onevision():
    """A tiny LLaVA-OneVision (SigLIP without [CLS]; its processor needs torchvision, else the tests skip)."""
    require_torchvision()
    from hired.testing import tiny_llava_onevision

    model, processor = tiny_llava_onevision(seed=0)
    yield model, processor
    assert hired.applied_method(model) is None


def test_onevision_arch_shapes_match_the_checkpoint():
    require_torchvision()
    model, processor = build_arch("llava-onevision-7b", device="meta", dtype=torch.float16)
    assert type(model).__name__ == "LlavaOnevisionForConditionalGeneration"
    vc, tc, cfg = model.config.vision_config, model.config.text_config, model.config
    assert vc.model_type == "siglip_vision_model" and not vc.vision_use_head
    shape = (
        vc.num_hidden_layers,
        vc.hidden_size,
        vc.num_attention_heads,
        vc.intermediate_size,
        vc.image_size,
        vc.patch_size,
    )
    assert shape == (27, 1152, 16, 4304, 384, 14)
    assert tc.model_type == "qwen2"
    text = (
        tc.num_hidden_layers,
        tc.hidden_size,
        tc.num_attention_heads,
        tc.num_key_value_heads,
        tc.intermediate_size,
        tc.vocab_size,
    )
    assert text == (28, 3584, 28, 4, 18944, 152064)
    assert (cfg.vision_feature_layer, cfg.vision_feature_select_strategy, cfg.vision_aspect_ratio) == (
        -1,
        "full",
        "anyres_max_9",
    )
    assert [tuple(p) for p in cfg.image_grid_pinpoints] == [
        (384 * i, 384 * j) for i in range(1, 7) for j in range(1, 7)
    ]
    assert not any(name.split(".")[-1] == "head" for name, _ in model.model.vision_tower.named_modules())
    # SigLIP-so400m without head 0.413 B, Qwen2-7B with its own output layer 7.616 B, projector 0.017 B
    assert abs(sum(p.numel() for p in model.parameters()) - 8.046e9) < 0.002e9
    assert processor.num_image_tokens == 729 and processor.vision_aspect_ratio == "anyres_max_9"
    assert processor.image_token_id < tc.vocab_size and processor.video_token_id < tc.vocab_size


def test_onevision_small_has_the_onevision_geometry():
    require_torchvision()
    from hired.families import family_of

    model, processor = build_arch("onevision-small")
    big, _ = build_arch("llava-onevision-7b", device="meta")
    keys = ("image_grid_pinpoints", "vision_feature_layer", "vision_feature_select_strategy", "vision_aspect_ratio")
    assert {k: getattr(model.config, k) for k in keys} == {k: getattr(big.config, k) for k in keys}
    assert (model.config.vision_config.image_size, model.config.vision_config.patch_size) == (384, 14)
    inner, family = family_of(model)
    inputs = processor(images=demo_image((600, 600)), text=PROMPT, return_tensors="pt")
    assert inputs["pixel_values"].shape[1] == 5  # full image + 2x2 grid
    layout = family.layout((600, 600), family.geometry(model.config))
    assert (layout.num_partitions, layout.tokens) == (5, 729)
    stock = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert stock == family.stock_tokens(layout) == 729 + 54 * 55  # base crop + 54 rows of 54 patches and a newline
    with torch.no_grad():
        out = inner.vision_tower(inputs["pixel_values"][0], output_hidden_states=True)
    assert out.hidden_states[-1].shape[:2] == (5, 729)  # no [CLS]: every token is a patch
    vision = sum(p.numel() for p in inner.vision_tower.parameters())
    llm = sum(p.numel() for p in inner.language_model.layers.parameters())
    assert llm > 10 * vision  # the language model dominates the cost, as in the 7B model
    assert set(ARCHS) >= {"llava-onevision-7b", "onevision-small"}


def test_onevision_oracle_feeds_the_count_single_and_multi_image(onevision):
    model, processor = onevision
    image, other = demo_image((100, 200)), demo_image((90, 90))
    prompts = ["USER: <image>\nWhat? ASSISTANT:", "USER: <image>\n<image>\nBoth? ASSISTANT:"]
    with oracle(model, processor, [7, 5, 3]) as record:
        inputs = processor(images=[[image], [image, other]], text=prompts, return_tensors="pt", padding=True)
        assert inputs["batch_num_images"].tolist() == [1, 2]  # the second prompt's images: one crop each
        assert (inputs["input_ids"] == processor.image_token_id).sum(dim=1).tolist() == [7, 8]
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
        assert out.shape[1] == inputs["input_ids"].shape[1] + 2
        assert record.features_per_image == [7, 5, 3]
    with pytest.raises(ValueError, match="cannot feed 37 tokens from an image of 36 patches"):
        with oracle(model, processor, [1, 37]):  # a multi-image prompt's image is one crop of 36 patches
            inputs = processor(images=[[image, other]], text=prompts[1:], return_tensors="pt")
            with torch.no_grad():
                model(**inputs)
    assert not {"get_image_features"} & set(model.model.__dict__)
    assert not {"replace_image_token"} & set(processor.__dict__)


@pytest.mark.parametrize("options", [{}, {"keep_newline": True}])
def test_onevision_oracle_matches_the_method(onevision, image, options):
    model, processor = onevision
    settings = Settings(
        methods=(MethodSpec("hired", options), MethodSpec("cls_topk")),
        budgets=(0.3,),
        batch_sizes=(2,),
        full=False,
        **TINY,
    )
    result = run_benchmark(model, processor, image, settings)
    rows = result["rows"]
    assert [r["kind"] for r in rows] == ["method", "oracle", "reference"] * 2
    from hired.families import get_family

    family = get_family("onevision")
    layout = family.layout((image.height, image.width), family.geometry(model.config))
    for method, orc, ref in (rows[:3], rows[3:]):
        assert method["score_kind"] == ref["score_kind"] == "received"
        spec = method["method"]
        want = num_image_tokens(
            hired.get_method(spec, budget=0.3, **(options if spec == "hired" else {})), layout, True
        )
        assert orc["features_per_image"] == method["tokens_per_image"] == orc["tokens_per_image"] == [want, want]
        assert method["stock_tokens_per_image"] == family.stock_tokens(layout)
    assert result["meta"]["family"] == "onevision"


def test_oracle_feeds_qwen2_5_vl_the_given_counts():
    """Qwen2.5-VL (merger inside the tower, M-RoPE): the oracle feeds the first N merged tokens of each
    image, the prompt holds N placeholders, and generate runs with valid ids; stock again afterwards."""
    require_torchvision()
    import numpy as np
    from PIL import Image

    from hired.inference import build_prompt
    from hired.testing import tiny_qwen2_5_vl

    model, processor = tiny_qwen2_5_vl()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 230, 3), dtype=np.uint8))
    prompt = build_prompt(processor, "what is this?")
    assert "<|vision_start|><image><|vision_end|>" in prompt
    image_id = model.config.image_token_id
    stock = processor(images=[image], text=[prompt], return_tensors="pt")
    with oracle(model, processor, [5]) as record:
        inputs = processor(images=[image], text=[prompt], return_tensors="pt")
        assert int((inputs["input_ids"] == image_id).sum()) == 5
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert record.features_per_image == [5]
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    after = processor(images=[image], text=[prompt], return_tensors="pt")
    assert torch.equal(after["input_ids"], stock["input_ids"])
    assert int((stock["input_ids"] == image_id).sum()) > 5


def test_qwen_archs_match_the_checkpoint_and_run_the_bench():
    """qwen2.5-vl-7b has Qwen2.5-VL-7B-Instruct's shapes (8.29B parameters); qwen2.5-vl-small runs the
    benchmark end to end: the method keeps floor(0.2 N) merged tokens, the oracle feeds as many."""
    require_torchvision()
    from hired.bench.runner import MethodSpec, Settings, run_benchmark

    big, _ = build_arch("qwen2.5-vl-7b", device="meta", dtype=torch.bfloat16)
    vc, tc = big.config.vision_config, big.config.text_config
    assert (vc.depth, vc.hidden_size, vc.num_heads, vc.fullatt_block_indexes) == (32, 1280, 16, [7, 15, 23, 31])
    assert (tc.num_hidden_layers, tc.hidden_size, tc.num_key_value_heads, tc.vocab_size) == (28, 3584, 4, 152064)
    assert abs(sum(p.numel() for p in big.parameters()) - 8.292e9) < 0.001e9
    model, processor = build_arch("qwen2.5-vl-small")
    settings = Settings(
        methods=(MethodSpec("hired"),), budgets=(0.2,), batch_sizes=(1,), runs=1, warmup=0, new_tokens=2, progress=False
    )
    result = run_benchmark(model, processor, demo_image((600, 600)), settings)
    rows = {row["label"]: row for row in result["rows"]}
    assert rows["full"]["tokens_per_image"] == [441]  # 588 x 588 px: 21 x 21 merged tokens
    assert rows["hired"]["tokens_per_image"] == [88] and rows["oracle(hired)"]["tokens_per_image"] == [88]
    assert rows["oracle(hired)"]["features_per_image"] == [88]
    assert rows["hired"]["score_kind"] == "received"
    assert all(row["summary"]["ttft"]["median"] > 0 for row in result["rows"])
    assert hired.applied_method(model) is None


def test_oracle_feeds_internvl_one_tensor_inside_its_image_wrappers():
    """InternVL: the oracle writes ``<img>``, N context tokens, ``</img>`` per image; the forward gets one
    joined tensor; which tiles form which image comes from the processor's ``image_sizes``, carried from the
    forward to the vision step; the features are the stock ones' first N merged tokens, thumbnail first."""
    require_torchvision()
    from hired.testing import tiny_internvl

    model, processor = tiny_internvl()
    images = [demo_image((200, 200)), demo_image((60, 130))]  # 2x2 tiles + thumbnail; 1x2 + thumbnail
    prompt = "USER: <IMG_CONTEXT>\n<IMG_CONTEXT>\nBoth? ASSISTANT:"
    stock = processor(images=images, text=[prompt], return_tensors="pt")
    with oracle(model, processor, [7, 3]) as record:
        inputs = processor(images=images, text=[prompt], return_tensors="pt")
        assert inputs["image_sizes"].tolist() == [[200, 200, 2, 2], [60, 130, 1, 2]]
        text = processor.tokenizer.decode(inputs["input_ids"][0])
        ctx = processor.image_token
        assert f"<img>{ctx * 7}</img>" in text and f"<img>{ctx * 3}</img>" in text and text.count("<img>") == 2
        with torch.inference_mode():
            out = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
            features = out.pooler_output
            generated = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
        assert record.features_per_image == [7, 3]
        assert generated.shape[1] == inputs["input_ids"].shape[1] + 2
    assert torch.is_tensor(features) and features.shape[0] == 10
    with torch.inference_mode():
        tiles = model.model.get_image_features(pixel_values=stock["pixel_values"]).pooler_output  # (8, 16, D)
    first = torch.cat([tiles[4:5], tiles[:4]]).flatten(0, 1)[:7]  # thumbnail (the last tile) first
    second = torch.cat([tiles[7:8], tiles[5:7]]).flatten(0, 1)[:3]
    torch.testing.assert_close(features, torch.cat([first, second]))
    assert not {"get_image_features"} & set(model.model.__dict__) and not model.model._forward_pre_hooks
    assert not {"replace_image_token", "_process_images"} & set(processor.__dict__)
    again = processor(images=images, text=[prompt], return_tensors="pt")
    assert "image_sizes" not in again and torch.equal(again["input_ids"], stock["input_ids"])


_NEW_FAMILY_ARCHS = {
    # arch: (image (height, width), stock tokens, kept at 0.2)
    "qwen3-vl-small": ((600, 600), 361, 72),  # 608 x 608 px: 19 x 19 merged tokens of 32 px
    "qwen3.5-small": ((600, 600), 361, 72),
    "internvl-small": ((448, 896), 768, 153),  # 1x2 tiles of 448 px + thumbnail, 256 tokens each
}


@pytest.mark.parametrize("arch", sorted(_NEW_FAMILY_ARCHS))
def test_small_archs_of_the_new_families_run_the_full_bench(arch):
    """The CPU-sized Qwen3-VL, Qwen3.5 and InternVL: small's widths and depths, the family's geometry, and
    one full-bench row each: HiRED keeps floor(0.2 N) tokens, the oracle feeds exactly as many."""
    require_torchvision()
    size, stock, kept = _NEW_FAMILY_ARCHS[arch]
    model, processor = build_arch(arch)
    cfg, vc, tc = model.config, model.config.vision_config, model.config.text_config
    heads = getattr(vc, "num_heads", None) or vc.num_attention_heads
    layers = getattr(vc, "depth", None) or vc.num_hidden_layers
    assert (layers, vc.hidden_size, heads) == (8, 128, 2)
    assert (tc.num_hidden_layers, tc.hidden_size, tc.num_key_value_heads, tc.vocab_size) == (8, 512, 2, 32064)
    inner = model.model
    tower = inner.visual if arch.startswith("qwen") else inner.vision_tower
    assert sum(p.numel() for p in inner.language_model.layers.parameters()) > 5 * sum(
        p.numel() for p in tower.parameters()
    )
    if arch == "qwen3-vl-small":
        assert list(vc.deepstack_visual_indexes) == [2, 4, 6] and tc.rope_parameters["mrope_section"] == [12, 10, 10]
    elif arch == "qwen3.5-small":
        assert tc.layer_types == ["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 3 + [
            "full_attention"
        ]
        linear = (tc.linear_num_key_heads, tc.linear_num_value_heads, tc.linear_key_head_dim, tc.linear_value_head_dim)
        assert linear == (4, 8, 64, 64)
        rope = tc.rope_parameters
        assert sum(rope["mrope_section"]) == int(tc.head_dim * rope["partial_rotary_factor"]) // 2 == 8
    else:
        assert (list(vc.image_size), list(vc.patch_size), cfg.image_seq_length) == ([448, 448], [14, 14], 256)
        assert (processor.image_processor.min_patches, processor.image_processor.max_patches) == (1, 12)
    settings = Settings(budgets=(0.2,), batch_sizes=(1,), **{**TINY, "new_tokens": 2})
    result = run_benchmark(model, processor, demo_image(size), settings)
    rows = {row["label"]: row for row in result["rows"]}
    reference = arch == "internvl-small"  # InternViT returns attention maps, the Qwen towers do not
    assert set(rows) == {"full", "hired", "oracle(hired)"} | ({"hired (reference attention)"} if reference else set())
    assert rows["full"]["tokens_per_image"] == [stock] and rows["hired"]["stock_tokens_per_image"] == stock
    assert rows["hired"]["kept_per_image"] == rows["hired"]["tokens_per_image"] == [kept]
    assert rows["oracle(hired)"]["features_per_image"] == rows["oracle(hired)"]["tokens_per_image"] == [kept]
    assert all(row["summary"]["ttft"]["median"] > 0 for row in rows.values())
    assert "overhead_vs_oracle" in rows["hired"] and result["meta"]["family"] == ARCHS[arch].family
    assert hired.applied_method(model) is None


@pytest.mark.parametrize(
    "arch, extra",
    [
        ("onevision-small", "onevision"),
        ("qwen2.5-vl-small", "qwen"),
        ("qwen3-vl-small", "qwen"),
        ("qwen3.5-small", "qwen"),
        ("internvl-small", "internvl"),
    ],
)
def test_arch_without_torchvision_names_the_extra(arch, extra, monkeypatch):
    """An architecture whose processor imports torchvision says which extra installs it (its family's)."""
    import sys

    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision → ImportError
    with pytest.raises(
        ImportError, match=rf'^{arch}: .*processor needs torchvision.*pip install "hired-vlm\[{extra}\]"'
    ):
        build_arch(arch, device="meta")
