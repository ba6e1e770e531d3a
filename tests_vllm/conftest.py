"""Fixtures for the vLLM plugin tests: tiny LLaVA-NeXT / LLaVA-1.5 / LLaVA-OneVision checkpoints in the hub
layout, and in-process vLLM engines (CPU, float32, eager) with and without the ``hired`` override."""

from __future__ import annotations

import gc
import json
import os

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import numpy as np
import pytest
from PIL import Image

from hired.testing import tiny_llava, tiny_llava_next, tiny_llava_onevision
from hired.vllm.checkpoint import save_for_vllm

# sizes (height, width) that reach every grid of the tiny pinpoints (84 px crops): 1x2, 2x1, 2x2, 1x3, 3x1
IMAGE_SIZES = [(100, 150), (160, 80), (84, 84), (60, 200), (200, 60), (170, 160), (33, 47)]
# the tiny OneVision (84 px crops, grids 1x1..3x3, anyres_max_4): every grid, and canvases it interpolates
# (2x3, 3x2 and 3x3 at (90, 174), (174, 90), (250, 250), (170, 250)) next to ones it does not
ONEVISION_SIZES = [
    (84, 84),
    (33, 47),
    (60, 130),
    (60, 200),
    (160, 80),
    (100, 150),
    (90, 181),
    (90, 174),
    (200, 60),
    (174, 146),
    (174, 90),
    (250, 250),
    (170, 250),
]
PROMPT = "USER: <image>\nwhat is in the image ? ASSISTANT:"


def make_image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.RandomState(seed + 7 * height + width)
    return Image.fromarray((rng.rand(height, width, 3) * 255).astype("uint8"))


@pytest.fixture(scope="session")
def next_path(tmp_path_factory):
    model, processor = tiny_llava_next(seed=1)
    return str(save_for_vllm(model, processor, tmp_path_factory.mktemp("tiny-llava-next")))


@pytest.fixture(scope="session")
def onevision_path(tmp_path_factory):
    model, processor = tiny_llava_onevision(seed=3)
    return str(save_for_vllm(model, processor, tmp_path_factory.mktemp("tiny-llava-onevision")))


@pytest.fixture(scope="session")
def llava_path(tmp_path_factory):
    model, processor = tiny_llava(seed=2)
    return str(save_for_vllm(model, processor, tmp_path_factory.mktemp("tiny-llava")))


def make_llm(path: str, hired: dict | None = None, **kwargs):
    from vllm import LLM

    overrides = {} if hired is None else {"hired": hired}
    with open(os.path.join(path, "config.json")) as f:
        onevision = json.load(f).get("model_type") == "llava_onevision"
    return LLM(
        model=path,
        max_model_len=2048,
        dtype="float32",
        enforce_eager=True,
        seed=0,
        hf_overrides=overrides,
        limit_mm_per_prompt={"image": 3, "video": 1} if onevision else {"image": 3},
        **kwargs,
    )


@pytest.fixture(scope="module")
def engines():
    """``engines(path, hired)`` → an in-process ``LLM``; the two most recently used stay alive (each holds
    a 1 GiB KV cache), all are shut down when the module ends."""
    cache = {}

    def get(path: str, hired: dict | None = None):
        key = (path, repr(sorted((hired or {}).items())))
        if key in cache:
            cache[key] = cache.pop(key)  # most recent last
        else:
            while len(cache) >= 2:
                cache.pop(next(iter(cache)))
                gc.collect()
            cache[key] = make_llm(path, hired)
        return cache[key]

    yield get
    cache.clear()
    gc.collect()


def greedy(max_tokens: int = 6):
    from vllm import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=0.0)


def request(image, prompt: str = PROMPT) -> dict:
    images = image if isinstance(image, list) else [image]
    return {"prompt": prompt, "multi_modal_data": {"image": images if len(images) > 1 else images[0]}}
