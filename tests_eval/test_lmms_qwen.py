"""``hired_llava`` on tiny saved Qwen2.5-VL and Qwen3-VL models (native-resolution ViT, 2x2 merger, M-RoPE), offline: the
documents of the OneVision tests (0, 1 and 2 images) in process, batched and one by one, with the
visual-token counts from the processor's ``image_grid_thw``; and end to end through lmms-eval."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from test_lmms_onevision import (
    BUDGET,
    _model,
    check_batches_and_counts,
    check_end_to_end,
    check_loglikelihood_batched_equals_one_by_one,
)


@pytest.fixture(scope="session", params=["qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def qwen_folder(request, tmp_path_factory) -> Path:
    from hired.testing import save_tiny

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
    from hired.adapters.transformers import score_kind

    lm = _model(qwen_folder, method="hired", budget=BUDGET)
    assert type(lm.model).__name__ in (
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen3VLForConditionalGeneration",
        "Qwen3_5ForConditionalGeneration",
    )
    assert lm.family.name in ("qwen2_5_vl", "qwen3_vl", "qwen3_5") and lm.processor.tokenizer.padding_side == "left"
    assert score_kind(lm.model) == "received"  # no [CLS] token
    # without a chat template each image is Qwen's wrapped placeholder
    assert lm.build_prompt("what?", 2) == "USER: " + "<|vision_start|><image><|vision_end|>\n" * 2 + "what? ASSISTANT:"


@pytest.mark.parametrize("method", ["hired", "dart", "none"])
def test_batches_match_one_by_one_and_the_counts(qwen_folder, method):
    rows = check_batches_and_counts(qwen_folder, method, _expected)
    assert rows[2][1]["visual_tokens"] > rows[0][1]["visual_tokens"] > 0


def test_loglikelihood_batched_equals_one_by_one(qwen_folder):
    check_loglikelihood_batched_equals_one_by_one(qwen_folder)


def test_lmms_eval_end_to_end_on_qwen(qwen_folder, task_dir, hf_home, tmp_path):
    check_end_to_end(qwen_folder, _expected, task_dir, hf_home, tmp_path)
