"""The pooling baseline (``pool``) in vLLM's offline engine: the counts the image size promises, the same pooled
tokens and the same greedy answers as the transformers adapter on the same saved tiny weights, batch equal
to one by one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import IMAGE_SIZES, PROMPT, greedy, make_image, request

import hired
import hired.vllm
from hired.core.grid import Geometry, layout_for
from hired.methods import Pool, num_image_tokens
from hired.methods.pool import pool_groups
from hired.testing import default_pinpoints

GEOMETRY_NEXT = Geometry(crop_size=84, patch_size=14, grid_pinpoints=default_pinpoints(84))
GEOMETRY_LLAVA = Geometry(crop_size=84, patch_size=14)


def image_id(llm) -> int:
    return llm.get_tokenizer().convert_tokens_to_ids("<image>")


def anchors(method: Pool, layout) -> list[list[int]]:
    """The patches a pooled image keeps (its windows' anchors), per partition."""
    groups = pool_groups(layout, tuple(method._budgets(layout)))
    return [sorted(set(g[g >= 0].tolist())) for g in groups]


@pytest.mark.parametrize(
    "family, entry",
    [
        ("llava_next", {"method": "pool", "budget": 0.3}),
        ("llava_next", {"method": "pool", "budget": 0.1, "keep_newline": True}),
        ("llava", {"method": "pool", "budget": 0.25}),
    ],
    ids=["llava_next", "llava_next-newline", "llava"],
)
def test_pooled_tokens_and_answers_equal_the_transformers_adapter(engines, next_path, llava_path, family, entry):
    from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    newline = family == "llava_next"
    path = next_path if newline else llava_path
    cls = LlavaNextForConditionalGeneration if newline else LlavaForConditionalGeneration
    method = Pool(**{k: v for k, v in entry.items() if k != "method"})
    llm = engines(path, entry)
    model = cls.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(path)
    hired.apply(model, processor, method)
    answers = set()
    for i, (h, w) in enumerate(IMAGE_SIZES):
        image = make_image(h, w, seed=11 + i)
        out = llm.generate([request(image)], greedy(4))[0]
        (vsel,) = hired.vllm.last_selection(llm)
        inputs = processor(images=image, text=PROMPT, return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        (tsel,) = hired.last_selection(model)
        layout = layout_for((h, w) if newline else (84, 84), GEOMETRY_NEXT if newline else GEOMETRY_LLAVA)
        count = num_image_tokens(method, layout, newline)
        assert vsel.num_tokens == tsel.num_tokens == count == sum(t == image_id(llm) for t in out.prompt_token_ids)
        assert [p.kept for p in vsel.partitions] == [p.kept for p in tsel.partitions] == anchors(method, layout)
        assert inputs["input_ids"][0].tolist() == out.prompt_token_ids
        answer = list(out.outputs[0].token_ids)
        assert answer == gen[0, inputs["input_ids"].shape[1] :].tolist(), (h, w)
        answers.add(tuple(answer))
    assert len(answers) > 1  # the images do matter


def test_batch_equals_one_by_one(engines, next_path):
    llm = engines(next_path, {"method": "pool", "budget": 0.3})
    requests = [request(make_image(h, w, seed=3)) for h, w in IMAGE_SIZES]
    batched = [o.outputs[0].token_ids for o in llm.generate(requests, greedy(6))]
    single = [llm.generate([r], greedy(6))[0].outputs[0].token_ids for r in requests]
    assert batched == single


def test_random_sizes_and_tiny_budgets(engines, next_path):
    """Random sizes and aspect ratios at a budget of 1e-3: every image gets the core's count, one token."""
    rng = np.random.RandomState(5)
    sizes = [(int(rng.randint(4, 400)), int(rng.randint(4, 400))) for _ in range(8)]
    llm, method = engines(next_path, {"method": "pool", "budget": 0.001}), Pool(budget=0.001)
    outs = llm.generate([request(make_image(h, w, seed=i)) for i, (h, w) in enumerate(sizes)], greedy(2))
    for (h, w), out in zip(sizes, outs):
        layout = layout_for((h, w), GEOMETRY_NEXT)
        count = sum(t == image_id(llm) for t in out.prompt_token_ids)
        assert count == num_image_tokens(method, layout, newline=True) == 1, (h, w)
        assert len(out.outputs[0].token_ids) == 2
