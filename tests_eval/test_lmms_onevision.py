"""``hired_llava`` on a tiny saved LLaVA-OneVision (SigLIP without [CLS], anyres_max interpolation), offline:
in process (batching, visual-token counts, multi-image documents, log-likelihoods) and end to end through
lmms-eval's ``lmms_eval.models`` entry point on the local ``hired_easyvqa`` task."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import NUM_DOCS
from lmms_eval.api.instance import Instance
from PIL import Image
from test_lmms_e2e import _env, _lmms_eval

from hired.eval import lmms as hl
from hired.families import get_family

TASK, SPLIT = "toy", "test"
BUDGET = 0.3


def _image(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, size=(h, w, 3), dtype=np.uint8), mode="RGB")


# 0, 1 and 2 images; 300x300 is a 3x3 grid whose canvas the stock model interpolates (anyres_max_4)
DOCS = [
    {"q": "what is in the image ?", "images": [_image(84, 168, 0)]},
    {"q": "how many", "images": []},
    {"q": "describe the picture in detail .", "images": [_image(168, 84, 1), _image(64, 64, 2)]},
    {"q": "the sky ?", "images": [_image(300, 300, 3)]},
]


@pytest.fixture(scope="session")
def ov_folder(tmp_path_factory) -> Path:
    from hired.testing import save_tiny

    return save_tiny(tmp_path_factory.mktemp("models") / "tiny-onevision", "onevision")


def _requests(kind: str, continuations=None) -> list[Instance]:
    def visual(doc):
        return doc["images"]

    if kind == "generate_until":
        args = [(d["q"], {"max_new_tokens": 3, "until": ["\n"]}, visual, i, TASK, SPLIT) for i, d in enumerate(DOCS)]
    else:
        args = [(DOCS[i]["q"], cont, visual, i, TASK, SPLIT) for i, cont in continuations]
    return [
        Instance(request_type=kind, arguments=a, idx=0, metadata={"task": TASK, "doc_id": a[3], "repeats": 1})
        for a in args
    ]


def _model(folder, **kwargs) -> hl.HiredLlava:
    lm = hl.HiredLlava(pretrained=str(folder), device="cpu", **kwargs)
    lm.task_dict = {TASK: {SPLIT: DOCS}}
    return lm


def _expected(folder, images, budget: float | None) -> tuple[int, int]:
    """``(kept, stock)`` of one document from the OneVision family's layouts alone (no model): a lone image
    is cut anyres, each image of a multi-image document is one crop (with one newline in the stock model)."""
    from transformers import AutoConfig

    family = get_family("onevision")
    geometry = family.geometry(AutoConfig.from_pretrained(folder))
    kept = stock = 0
    for image in images:
        layout = family.layout((image.height, image.width), geometry, single=len(images) > 1)
        stock += family.stock_tokens(layout)
        kept += math.floor(budget * layout.num_partitions * layout.tokens) if budget else family.stock_tokens(layout)
    return kept, stock


def test_loads_onevision_and_scores_by_received_attention(ov_folder):
    from hired.adapters.transformers import score_kind

    lm = _model(ov_folder, method="hired", budget=BUDGET)
    assert type(lm.model).__name__ == "LlavaOnevisionForConditionalGeneration"
    assert lm.family.name == "onevision" and lm.processor.tokenizer.padding_side == "left"
    assert score_kind(lm.model) == "received"  # SigLIP has no [CLS]


def check_batches_and_counts(folder, method: str, expected) -> list[tuple[str, dict]]:
    """``generate_until`` on :data:`DOCS` with ``method`` (``"none"``: stock) at batch 1 and 3: the same
    texts and counts, each document's ``(kept, stock)`` equal to ``expected(folder, images, budget)``, and
    no visual token for the text-only document. Returns the rows ``(text, token counts)``."""
    options = {"method": method, **({"budget": BUDGET} if method != "none" else {})}
    one = _model(folder, batch_size=1, **options).generate_until(_requests("generate_until"))
    many = _model(folder, batch_size=3, **options).generate_until(_requests("generate_until"))
    rows = [(r.text, r.token_counts.to_dict()) for r in one]
    assert [(r.text, r.token_counts.to_dict()) for r in many] == rows
    for doc, (_, counts) in zip(DOCS, rows):
        kept, stock = expected(folder, doc["images"], BUDGET if method != "none" else None)
        assert (counts["visual_tokens"], counts["visual_tokens_stock"]) == (kept, stock)
    assert rows[1][1]["visual_tokens"] == 0
    return rows


@pytest.mark.parametrize("method", ["hired", "none"])
def test_batches_match_one_by_one_and_the_family_counts(ov_folder, method):
    rows = check_batches_and_counts(ov_folder, method, _expected)
    # the multi-image document: two single crops of 36 patches (+1 newline each in the stock model)
    assert rows[2][1]["visual_tokens_stock"] == 2 * (36 + 1)


def check_loglikelihood_batched_equals_one_by_one(folder) -> None:
    """HiRED's log-likelihoods of four continuations: batched as one by one, greedy flags equal, all < 0."""
    conts = [(0, " a cat"), (1, " two"), (2, " the sky is clear"), (3, " yes")]
    one = _model(folder, method="hired", budget=BUDGET, batch_size=1).loglikelihood(_requests("loglikelihood", conts))
    many = _model(folder, method="hired", budget=BUDGET, batch_size=4).loglikelihood(_requests("loglikelihood", conts))
    assert [g for _, g in many] == [g for _, g in one]
    np.testing.assert_allclose([s for s, _ in many], [s for s, _ in one], rtol=1e-4, atol=1e-4)
    assert all(s < 0 for s, _ in one)


def check_end_to_end(folder, expected, task_dir, hf_home, tmp_path) -> tuple[list, list]:
    """Run lmms-eval with HiRED on ``folder`` over the local task; each sample's ``(kept, stock)`` counts must
    be ``expected(folder, [image], BUDGET)`` and the throughput averages theirs. Returns the docs and counts."""
    import datasets

    args = f"pretrained={folder},method=hired,budget={BUDGET}"
    results, samples = _lmms_eval([sys.executable], args, task_dir, tmp_path, _env(hf_home))
    assert results["config"]["model"] == "hired_llava"
    assert [s["doc_id"] for s in samples] == list(range(NUM_DOCS))
    docs = datasets.load_dataset("parquet", data_files=str(next(task_dir.glob("*.parquet"))), split="train")
    counts = [expected(folder, [doc["image"].convert("RGB")], BUDGET) for doc in docs]
    got = [(s["token_counts"][0]["visual_tokens"], s["token_counts"][0]["visual_tokens_stock"]) for s in samples]
    assert got == counts and all(k < s for k, s in got)
    thr = results["throughput"]
    assert thr["avg_visual_tokens_kept/hired_easyvqa"] == pytest.approx(sum(k for k, _ in counts) / NUM_DOCS)
    assert thr["avg_visual_tokens_stock/hired_easyvqa"] == pytest.approx(sum(s for _, s in counts) / NUM_DOCS)
    return list(docs), counts


def test_loglikelihood_batched_equals_one_by_one(ov_folder):
    check_loglikelihood_batched_equals_one_by_one(ov_folder)


def test_lmms_eval_end_to_end_on_onevision(ov_folder, task_dir, hf_home, tmp_path):
    docs, expected = check_end_to_end(ov_folder, _expected, task_dir, hf_home, tmp_path)
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(ov_folder)  # the processor's own stock count agrees with the family's
    for doc, (_, stock) in zip(docs, expected):
        ids = processor(images=doc["image"].convert("RGB"), text=f"{processor.image_token} x", return_tensors="pt")[
            "input_ids"
        ]
        assert int((ids == processor.image_token_id).sum()) == stock
