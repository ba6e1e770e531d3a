"""``hired_llava`` on tiny saved Qwen2.5-VL and Qwen3-VL models (native-resolution ViT, 2x2 merger, M-RoPE), offline: the
documents of the OneVision tests (0, 1 and 2 images) in process, batched and one by one, with the
visual-token counts from the processor's ``image_grid_thw``; and end to end through lmms-eval."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import NUM_DOCS
from test_lmms_e2e import _env, _lmms_eval
from test_lmms_onevision import DOCS, _model, _requests

BUDGET = 0.3


@pytest.fixture(scope="session", params=["qwen2_5_vl", "qwen3_vl"])
def qwen_folder(request, tmp_path_factory) -> Path:
    from hired.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("models") / f"tiny-{request.param}", request.param)


def _expected(folder, images, budget: float | None) -> tuple[int, int]:
    """``(kept, stock)`` of one document: per image N = t * h * w / 4 merged tokens of the processor's
    ``image_grid_thw``, of which ``floor(budget * N)`` are kept."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    kept = stock = 0
    for image in images:
        t, h, w = processor.image_processor(images=image, return_tensors="pt")["image_grid_thw"][0].tolist()
        n = t * h * w // 4
        stock += n
        kept += math.floor(budget * n) if budget else n
    return kept, stock


def test_loads_qwen_and_scores_by_received_attention(qwen_folder):
    from hired.adapters.transformers import _applied_state

    lm = _model(qwen_folder, method="hired", budget=BUDGET)
    assert type(lm.model).__name__ in ("Qwen2_5_VLForConditionalGeneration", "Qwen3VLForConditionalGeneration")
    assert lm.family.name in ("qwen2_5_vl", "qwen3_vl") and lm.processor.tokenizer.padding_side == "left"
    assert _applied_state(lm.model).score_kind == "received"  # no [CLS] token
    # without a chat template each image is Qwen's wrapped placeholder
    assert lm.build_prompt("what?", 2) == "USER: " + "<|vision_start|><image><|vision_end|>\n" * 2 + "what? ASSISTANT:"


@pytest.mark.parametrize("method", ["hired", "dart", "none"])
def test_batches_match_one_by_one_and_the_counts(qwen_folder, method):
    options = {"method": method, **({"budget": BUDGET} if method != "none" else {})}
    one = _model(qwen_folder, batch_size=1, **options).generate_until(_requests("generate_until"))
    many = _model(qwen_folder, batch_size=3, **options).generate_until(_requests("generate_until"))
    rows = [(r.text, r.token_counts.to_dict()) for r in one]
    assert [(r.text, r.token_counts.to_dict()) for r in many] == rows
    for doc, (_, counts) in zip(DOCS, rows):
        kept, stock = _expected(qwen_folder, doc["images"], BUDGET if method != "none" else None)
        assert (counts["visual_tokens"], counts["visual_tokens_stock"]) == (kept, stock)
    assert rows[1][1]["visual_tokens"] == 0 and rows[2][1]["visual_tokens"] > rows[0][1]["visual_tokens"] > 0


def test_loglikelihood_batched_equals_one_by_one(qwen_folder):
    conts = [(0, " a cat"), (1, " two"), (2, " the sky is clear"), (3, " yes")]
    one = _model(qwen_folder, method="hired", budget=BUDGET, batch_size=1).loglikelihood(_requests("loglikelihood", conts))
    many = _model(qwen_folder, method="hired", budget=BUDGET, batch_size=4).loglikelihood(_requests("loglikelihood", conts))
    assert [g for _, g in many] == [g for _, g in one]
    np.testing.assert_allclose([s for s, _ in many], [s for s, _ in one], rtol=1e-4, atol=1e-4)
    assert all(s < 0 for s, _ in one)


def test_lmms_eval_end_to_end_on_qwen(qwen_folder, task_dir, hf_home, tmp_path):
    import datasets

    args = f"pretrained={qwen_folder},method=hired,budget={BUDGET}"
    results, samples = _lmms_eval([sys.executable], args, task_dir, tmp_path, _env(hf_home))
    assert results["config"]["model"] == "hired_llava"
    assert [s["doc_id"] for s in samples] == list(range(NUM_DOCS))
    docs = datasets.load_dataset("parquet", data_files=str(next(task_dir.glob("*.parquet"))), split="train")
    expected = [_expected(qwen_folder, [doc["image"].convert("RGB")], BUDGET) for doc in docs]
    got = [(s["token_counts"][0]["visual_tokens"], s["token_counts"][0]["visual_tokens_stock"]) for s in samples]
    assert got == expected and all(k < s for k, s in got)
    thr = results["throughput"]
    assert thr["avg_visual_tokens_kept/hired_easyvqa"] == pytest.approx(sum(k for k, _ in expected) / NUM_DOCS)
    assert thr["avg_visual_tokens_stock/hired_easyvqa"] == pytest.approx(sum(s for _, s in expected) / NUM_DOCS)
