"""Seeded fuzzing of the partition families (LLaVA-NeXT, LLaVA-1.5, LLaVA-OneVision) in the transformers
runtime, as the merged-grid and InternVL tests fuzz theirs: random sizes and aspect ratios (a few pixels
to several crops, so grids and padded canvases vary), budgets down to 1e-3, every fixed-budget method,
packed and with ``keep_positions``, one or several images per prompt. Nothing may crash, and each
image's placeholders must equal the features it keeps, at least one (an image whose budget rounds down
to no token keeps one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_image, require_torchvision

import hired
from hired.methods.base import get_method, list_methods

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FIXED = [n for n in list_methods() if not get_method(n, budget=0.3).adaptive]


@pytest.fixture(scope="module", params=["llava_next", "llava", "onevision"])
def family_model(request):
    from hired import testing

    if request.param == "onevision":
        require_torchvision()
        build = testing.tiny_llava_onevision
    else:
        build = getattr(testing, f"tiny_{request.param}")
    with torch.no_grad():
        return build(seed=0)


def test_fuzzed_sizes_and_tiny_budgets_never_crash(family_model):
    model, processor = family_model
    rng = np.random.RandomState(11)
    token_id = model.config.image_token_id
    for case in range(14):
        sizes = [(int(rng.randint(4, 700)), int(rng.randint(4, 700))) for _ in range(int(rng.randint(1, 3)))]
        budget = float(rng.choice([1e-3, 0.01, 0.05, 0.2, 0.7]))
        keep_positions = bool(case % 2)
        method = get_method(FIXED[case % len(FIXED)], budget=budget, keep_positions=keep_positions)
        hired.apply(model, processor, method)
        try:
            images = [make_image(h, w, seed=case * 3 + k) for k, (h, w) in enumerate(sizes)]
            prompt = "USER: " + " ".join("<image>" for _ in images) + " what is it ? ASSISTANT:"
            inputs = processor(images=images, text=[prompt], return_tensors="pt")
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
            assert out.shape[1] == inputs["input_ids"].shape[1] + 2
            sels = hired.last_selection(model)
            assert len(sels) == len(images), (case, sizes, method)
            placeholders = int((inputs["input_ids"] == token_id).sum())
            assert placeholders == sum(s.num_tokens for s in sels), (case, sizes, method)
            assert all(s.num_tokens >= 1 for s in sels), (case, sizes, method)
        finally:
            hired.remove(model, processor)
