"""What the tools and the command line share to run a model: the prompt of one question about one image,
a greedy answer with its visual-token count, fair (warmed-up, interleaved) timings and a synthetic demo
picture. torch, transformers and PIL are imported when used.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any


def build_prompt(processor, question: str) -> str:
    """The question with one image: the processor's chat template if it has one, else ``USER: <image>
    ... ASSISTANT:`` with the family's placeholder (Qwen2.5-VL wraps it in its vision start / end tokens)."""
    from hired.families import family_of_processor

    token = processor.image_token
    if token in question:
        return question
    if getattr(processor, "chat_template", None):
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True)
    family = family_of_processor(processor)
    placeholder = family.image_placeholder(processor) if family is not None else token
    return f"USER: {placeholder}\n{question} ASSISTANT:"


def answer(model, processor, image, prompt: str, max_new_tokens: int) -> tuple[str, int, float]:
    """Greedy answer, the number of prompt tokens that were ``<image>`` placeholders, and the seconds taken
    (preprocessing and generation, one run: see :func:`median_time` for timings to compare). Adaptive
    methods (PruMerge without a budget) go through ``hired.prepare_inputs``."""
    import torch

    import hired

    start = time.perf_counter()
    method = hired.applied_method(model)
    if method is not None and method.adaptive:  # the count is known only after encoding: two passes
        inputs = hired.prepare_inputs(model, processor, images=image, text=prompt, return_tensors="pt")
    else:
        inputs = processor(images=image, text=prompt, return_tensors="pt")
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    n_image = int((inputs["input_ids"] == processor.image_token_id).sum())
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    seconds = time.perf_counter() - start
    text = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    return text.strip(), n_image, seconds


def median_times(
    fns: Mapping[str, Callable[[], Any]],
    runs: int = 3,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
    setup: Mapping[str, Callable[[], Any]] | None = None,
) -> dict[str, tuple[Any, float, list[float]]]:
    """Time several configurations fairly: each of ``fns`` is called ``warmup`` times untimed, then all are
    called in turn ``runs`` rounds over (interleaved, so a change of machine load hits all alike).
    ``setup[name]``, if given, runs untimed before every call of ``fns[name]`` (e.g. applying a method).

    Returns name → ``(last result, median seconds, the timed seconds)``. One-shot timings of a first call
    (lazy initialisation, cold caches) are not comparable; medians after a warm-up are.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"timing needs runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    setup = setup or {}
    for name, fn in fns.items():
        for _ in range(warmup):
            setup.get(name, _nothing)()
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    results: dict[str, Any] = {}
    for _ in range(runs):
        for name, fn in fns.items():
            setup.get(name, _nothing)()
            start = clock()
            results[name] = fn()
            times[name].append(clock() - start)
    return {name: (results[name], statistics.median(times[name]), times[name]) for name in fns}


def _nothing() -> None:
    pass


def median_time(
    fn: Callable[[], Any], runs: int = 3, warmup: int = 1, clock: Callable[[], float] = time.perf_counter
) -> tuple[Any, float, list[float]]:
    """:func:`median_times` of one function: ``(last result, median seconds, the timed seconds)``."""
    return median_times({"fn": fn}, runs, warmup, clock)["fn"]


def demo_image(size: tuple[int, int] = (300, 560)):
    """A synthetic picture (gradient sky, ground, a few shapes) so the demo needs no file."""
    from PIL import Image, ImageDraw

    h, w = size
    img = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(img)
    for y in range(h):
        shade = int(120 + 100 * y / h)
        draw.line([(0, y), (w, y)], fill=(shade // 2, shade // 2 + 40, 255) if y < h * 0.6 else (40, shade, 60))
    draw.ellipse([w * 0.72, h * 0.08, w * 0.86, h * 0.30], fill=(255, 220, 40))
    draw.rectangle([w * 0.12, h * 0.45, w * 0.30, h * 0.80], fill=(200, 30, 30))
    draw.polygon([(w * 0.45, h * 0.85), (w * 0.55, h * 0.55), (w * 0.65, h * 0.85)], fill=(250, 250, 250))
    return img
