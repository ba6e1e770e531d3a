"""``hired_llava`` on a tiny saved InternVL (112 px tiles plus a thumbnail, InternViT with [CLS], 0.5 pixel
shuffle: 16 tokens per tile), offline: the documents of the OneVision tests (0, 1 and 2 images) in process,
batched and one by one, with the visual-token counts from the saved processor's own placeholders; and end
to end through lmms-eval."""

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


@pytest.fixture(scope="session")
def internvl_folder(tmp_path_factory) -> Path:
    from hired.testing import save_tiny

    return save_tiny(tmp_path_factory.mktemp("models") / "tiny-internvl", "internvl")


def _expected(folder, images, budget: float | None) -> tuple[int, int]:
    """``(kept, stock)`` of one document: per image N = the stock processor's context tokens (16 per tile,
    thumbnail included), of which ``floor(budget * N)`` are kept."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    kept = stock = 0
    for image in images:
        ids = processor(images=image, text=processor.image_token, return_tensors="pt")["input_ids"]
        n = int((ids == processor.image_token_id).sum())
        stock += n
        kept += math.floor(budget * n) if budget else n
    return kept, stock


def test_loads_internvl_and_scores_by_cls_attention(internvl_folder):
    from hired.adapters.transformers import score_kind

    lm = _model(internvl_folder, method="hired", budget=BUDGET)
    assert type(lm.model).__name__ == "InternVLForConditionalGeneration"
    assert lm.family.name == "internvl" and lm.processor.tokenizer.padding_side == "left"
    assert score_kind(lm.model) == "cls"  # InternViT has a [CLS] token
    # without a chat template each image is InternVL's context token (the processor wraps it in <img> </img>)
    assert lm.build_prompt("what?", 2) == "USER: " + "<IMG_CONTEXT>\n" * 2 + "what? ASSISTANT:"


@pytest.mark.parametrize("method", ["hired", "dart", "none"])
def test_batches_match_one_by_one_and_the_counts(internvl_folder, method):
    rows = check_batches_and_counts(internvl_folder, method, _expected)
    assert rows[2][1]["visual_tokens"] > rows[0][1]["visual_tokens"] > 0
    # the multi-image document: a 2x1 grid with its thumbnail and one tile, 16 tokens a tile
    assert rows[2][1]["visual_tokens_stock"] == (3 + 1) * 16


def test_loglikelihood_batched_equals_one_by_one(internvl_folder):
    check_loglikelihood_batched_equals_one_by_one(internvl_folder)


def test_lmms_eval_end_to_end_on_internvl(internvl_folder, task_dir, hf_home, tmp_path):
    check_end_to_end(internvl_folder, _expected, task_dir, hf_home, tmp_path)
