"""The ``hired_llava`` model class in process: batching, visual-token counts, log-likelihoods, bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from lmms_eval.api.instance import GenerationResult, Instance
from PIL import Image

import hired
from hired.eval import lmms as hl

TASK, SPLIT = "toy", "test"


def _image(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, size=(h, w, 3), dtype=np.uint8), mode="RGB")


# documents with 0, 1 and 2 images of different sizes (so different grids share a batch)
DOCS = [
    {"q": "what is in the image ?", "images": [_image(84, 168, 0)]},
    {"q": "how many", "images": []},
    {"q": "describe the picture in detail .", "images": [_image(168, 84, 1), _image(64, 64, 2)]},
    {"q": "the sky ?", "images": [_image(168, 168, 3)]},
    {"q": "left or right", "images": [_image(84, 252, 4)]},
]


def _visual(doc):
    return doc["images"]


def _gen_requests(gen_kwargs=None) -> list[Instance]:
    kwargs = gen_kwargs or {"max_new_tokens": 4, "until": ["\n"]}
    return [
        Instance(
            request_type="generate_until",
            arguments=(d["q"], dict(kwargs), _visual, i, TASK, SPLIT),
            idx=0,
            metadata={"task": TASK, "doc_id": i, "repeats": 1},
        )
        for i, d in enumerate(DOCS)
    ]


def _ll_requests(continuations) -> list[Instance]:
    return [
        Instance(
            request_type="loglikelihood",
            arguments=(DOCS[i]["q"], cont, _visual, i, TASK, SPLIT),
            idx=0,
            metadata={"task": TASK, "doc_id": i, "repeats": 1},
        )
        for i, cont in continuations
    ]


def _model(tiny_folder, **kwargs) -> hl.HiredLlava:
    lm = hl.HiredLlava(pretrained=str(tiny_folder), device="cpu", **kwargs)
    lm.task_dict = {TASK: {SPLIT: DOCS}}
    return lm


def _rows(results):
    return [(r.text, r.token_counts.to_dict()) for r in results]


@pytest.mark.parametrize(
    "options",
    [
        {"method": "hired", "budget": "0.4"},
        {"method": "cls_topk", "budget": 0.3},
        {"method": "prumerge", "budget": "none"},  # adaptive: inputs built by hired.prepare_inputs
        {"method": "none"},
    ],
)
def test_batches_give_the_same_answers_and_counts_as_one_by_one(tiny_folder, options):
    one = _rows(_model(tiny_folder, batch_size=1, **options).generate_until(_gen_requests()))
    many = _rows(_model(tiny_folder, batch_size=3, **options).generate_until(_gen_requests()))
    assert many == one
    assert all(isinstance(text, str) for text, _ in one)
    kept = [c["visual_tokens"] for _, c in one]
    stock = [c["visual_tokens_stock"] for _, c in one]
    assert kept[1] == stock[1] == 0  # the text-only document
    if options["method"] == "none":
        assert kept == stock
    else:
        assert all(k < s for k, s, d in zip(kept, stock, DOCS) if d["images"])


def test_visual_tokens_per_sample_match_the_selection_and_the_stock_model(tiny_folder):
    method = hired.HiRED(budget=0.4)
    lm = _model(tiny_folder, method="hired", budget=0.4, batch_size=5)
    counts = [r.token_counts for r in lm.generate_until(_gen_requests())]
    stock = [r.token_counts for r in _model(tiny_folder, method="full", batch_size=5).generate_until(_gen_requests())]
    for doc, got, full in zip(DOCS, counts, stock):
        model, processor = lm.model, lm.processor
        expect = 0
        for image in doc["images"]:  # one image at a time through the applied model
            inputs = processor(images=image, text=f"{processor.image_token} x", return_tensors="pt")
            with torch.inference_mode():
                model(**inputs)
            (sel,) = hired.last_selection(model)
            expect += sel.num_tokens
            assert sel.num_tokens == sum(len(p.kept) for p in sel.partitions)  # the paper drops newlines
        assert got.visual_tokens == expect
        assert got.visual_tokens_stock == full.visual_tokens == full.visual_tokens_stock
        assert (got.visual_tokens < got.visual_tokens_stock) == bool(doc["images"])
        assert got.input_tokens - got.visual_tokens == full.input_tokens - full.visual_tokens
    assert repr(hired.applied_method(lm.model)) == repr(method)


def test_stop_strings_and_token_limit(tiny_folder):
    lm = _model(tiny_folder, method="hired", budget=0.5, batch_size=2)
    free = lm.generate_until(_gen_requests({"max_new_tokens": 6}))
    assert all(isinstance(r, GenerationResult) and r.token_counts.output_tokens <= 6 for r in free)
    # stop at the first character each answer produced: nothing (but whitespace) is left before it
    firsts = [r.text[:1] for r in free]
    stopped = []
    for i, first in enumerate(firsts):
        if first:
            stopped.append(lm.generate_until(_gen_requests({"max_new_tokens": 6, "until": [first]}))[i].text)
    assert stopped and all(text == "" for text in stopped)


def test_loglikelihood_batched_equals_direct_computation(tiny_folder):
    conts = [(0, " a cat"), (1, " two"), (2, " the sky is clear"), (3, " yes"), (4, " left")]
    lm1 = _model(tiny_folder, method="hired", budget=0.4, batch_size=1)
    lm3 = _model(tiny_folder, method="hired", budget=0.4, batch_size=3)
    one = lm1.loglikelihood(_ll_requests(conts))
    many = lm3.loglikelihood(_ll_requests(conts))
    assert [g for _, g in one] == [g for _, g in many]
    np.testing.assert_allclose([s for s, _ in many], [s for s, _ in one], rtol=1e-4, atol=1e-4)

    # direct: the log-probability of each continuation token after the prompt, one document at a time
    model, processor = lm1.model, lm1.processor
    for (i, cont), (score, greedy) in zip(conts, one):
        prompt = lm1.build_prompt(DOCS[i]["q"], len(DOCS[i]["images"]))
        kwargs = {"images": DOCS[i]["images"] or None, "return_tensors": "pt"}
        full = processor(text=prompt + cont, **kwargs)
        n_prompt = processor(text=prompt, **kwargs)["input_ids"].shape[1]
        with torch.inference_mode():
            logp = torch.log_softmax(model(**full).logits[0].float(), dim=-1)
        ids = full["input_ids"][0]
        direct = sum(logp[t - 1, ids[t]].item() for t in range(n_prompt, len(ids)))
        assert score == pytest.approx(direct, abs=1e-4)
        assert greedy == all(int(logp[t - 1].argmax()) == int(ids[t]) for t in range(n_prompt, len(ids)))
        assert score < 0


def test_greedy_continuation_is_flagged_greedy(tiny_folder):
    lm = _model(tiny_folder, method="hired", budget=0.5)
    answer = lm.generate_until(_gen_requests({"max_new_tokens": 3}))[0]
    tokens = lm.tokenizer(answer.text, add_special_tokens=False)["input_ids"]
    ((score, greedy),) = lm.loglikelihood(_ll_requests([(0, answer.text)]))
    # the decoded answer re-tokenises to the greedy tokens whenever it round-trips
    if lm.tokenizer.decode(tokens) == answer.text and len(tokens) == answer.token_counts.output_tokens:
        assert greedy
    assert score <= 0


def test_method_options_are_parsed_and_checked(tiny_folder):
    assert hl.resolve_method("hired", {"budget": "0.3", "alpha": "0.25", "mapping": "reference"}) == hired.HiRED(
        budget=0.3, alpha=0.25, mapping="reference"
    )
    assert hl.resolve_method("spatial", {"keep_newline": "true"}) == hired.Spatial(keep_newline=True)
    assert hl.resolve_method("random", {"seed": "3"}) == hired.Random(seed=3)
    assert hl.resolve_method("none", {}) is None and hl.resolve_method("FULL", {}) is None
    with pytest.raises(ValueError, match="no option"):
        hl.resolve_method("hired", {"budgt": "0.2"})
    with pytest.raises(ValueError, match="unknown method"):
        hl.resolve_method("hird", {})
    with pytest.raises(ValueError, match="budget"):
        hl.resolve_method("hired", {"budget": "1.5"})
    with pytest.raises(ValueError, match="takes no options"):
        hl.resolve_method("none", {"budget": 0.2})


def test_adaptive_method_without_prepare_inputs_is_refused(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class Adaptive(hired.HiRED):
        adaptive = True

    monkeypatch.delattr(hired, "prepare_inputs", raising=False)
    with pytest.raises(ValueError, match="prepare_inputs"):
        hl.resolve_method(Adaptive(), {})


def test_bad_arguments(tiny_folder):
    with pytest.raises(ValueError, match="batch_size"):
        hl.HiredLlava(pretrained=str(tiny_folder), batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        hl.HiredLlava(pretrained=str(tiny_folder), batch_size="auto")
    with pytest.raises(ValueError, match="dtype"):
        hl.HiredLlava(pretrained=str(tiny_folder), device="cpu", dtype="float12")
    lm = _model(tiny_folder, method="hired")
    with pytest.raises(ValueError, match="prompt holds 2"):
        lm.build_prompt("<image> <image> two?", 1)
    lm.task_dict = {TASK: {SPLIT: [{"q": "a video", "images": ["clip.mp4"]}]}}
    req = _gen_requests()[:1]
    with pytest.raises(ValueError, match="images only"):
        lm.generate_until(req)
    with pytest.raises(NotImplementedError):
        lm.generate_until_multi_round(req)


def test_entry_point_registers_the_model():
    from lmms_eval.models import get_model, list_available_models

    assert "hired_llava" in list_available_models()
    assert get_model("hired_llava") is hl.HiredLlava


def test_query_aware_scoring_selects_for_the_prompt_not_the_continuation(tiny_folder):
    """CDPruner reads the prompt; when a continuation is scored its tokens are chosen for the prompt
    alone, so every continuation of one document is scored against the same visual tokens."""
    lm = _model(tiny_folder, method="cdpruner", budget=0.3, batch_size=1)
    kept = []
    original = hired.prepare_inputs

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        kept.append([[p.kept for p in sel.partitions] for sel in hired.last_selection(lm.model)])
        return out

    hired.prepare_inputs = spy
    try:
        lm.loglikelihood(_ll_requests([(0, " a cat sitting on a red chair"), (0, " the grass is green")]))
    finally:
        hired.prepare_inputs = original
    assert len(kept) == 2 and kept[0] == kept[1]  # one call per request (batch size 1)
    prompt = lm.build_prompt(DOCS[0]["q"], 1)
    with torch.no_grad():
        hired.prepare_inputs(lm.model, lm.processor, images=DOCS[0]["images"], text=[prompt], return_tensors="pt")
    assert [[p.kept for p in sel.partitions] for sel in hired.last_selection(lm.model)] == kept[0][:1]
