"""The requests of the load and fault run (``load.py``): good ones with their exact token counts from the
core, faults with what the server must answer.

Model: the tiny random-weight LLaVA-NeXT of ``hired.testing.tiny_llava_next(seed=1)`` (84 px crops, 14 px
patches), started with :data:`MODEL_ENTRY`."""

from __future__ import annotations

import base64
import io
import random
from dataclasses import dataclass, field

MODEL_ENTRY = {"method": "hired", "budget": 0.3, "alpha": 0.5}
MAX_IMAGES = 3  # --limit-mm-per-prompt of the server
QUESTION = "what is in the image ?"
# (height, width): every grid of the tiny pinpoints, small and larger pictures
SIZES = [(100, 150), (160, 80), (84, 84), (60, 200), (200, 60), (170, 160), (33, 47), (300, 400), (480, 640)]
# a request's own options (None: the model's entry); "method" starts from that method's defaults
OPTIONS = [
    None,
    {"budget": 0.1},
    {"budget": 0.5},
    {"budget": 1.0},
    {"budget": 0.2, "alpha": 0.9},
    {"method": "cls_topk", "budget": 0.2},
]


@dataclass
class Case:
    """One request: ``kind`` is ``good`` (must be served with the exact count and the text it gets alone),
    ``edge`` (a 200 with the exact count and its text alone, or a 4xx naming the problem; never a 5xx),
    ``bad`` (a 4xx whose message contains ``expect``) or ``known`` (a fault vLLM itself answers with a 5xx
    naming the problem: reported, not failed, while its message still contains ``expect``)."""

    label: str
    kind: str
    messages: list
    options: dict | None = None
    stream: bool = False
    sizes: list = field(default_factory=list)  # (height, width) of each image, for the count
    expect: str = ""  # bad / known: a part of the error message
    count: int | None = None  # good / edge: the core's image tokens + the text's tokens
    reference: dict | None = None  # good / edge: the answer to this request sent alone

    def payload(self, model: str, max_tokens: int) -> dict:
        body = {"model": model, "messages": self.messages, "max_tokens": max_tokens, "temperature": 0}
        if self.options is not None:
            body["mm_processor_kwargs"] = {"hired": self.options}
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body


def png(height: int, width: int, seed: int = 0, flat: bool = False) -> bytes:
    """A PNG of random pixels (``flat``: one colour, so that a huge picture stays a small file)."""
    import numpy as np
    from PIL import Image

    if flat:
        image = Image.new("RGB", (width, height), (120, 30, 200))
    else:
        rng = np.random.RandomState(seed + 7 * height + width)
        image = Image.fromarray((rng.rand(height, width, 3) * 255).astype("uint8"))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def chat(urls: list[str], text: str = QUESTION) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


class Counter:
    """Exact prompt lengths from the core: the chat template's text tokens (one ``<image>`` per image) plus
    :func:`hired.methods.base.num_image_tokens` of each image's layout under the request's options."""

    def __init__(self, path: str):
        from transformers import AutoProcessor

        from hired.core.grid import Geometry
        from hired.testing import default_pinpoints

        self.processor = AutoProcessor.from_pretrained(path)
        self.tokenizer = self.processor.tokenizer
        self.geometry = Geometry(84, 14, default_pinpoints(84))  # the tiny LLaVA-NeXT's

    def text_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def image_tokens(self, size: tuple[int, int], options: dict | None) -> int:
        from hired.core.grid import layout_for
        from hired.methods.base import get_method, num_image_tokens

        entry = dict(MODEL_ENTRY)
        if options and options.get("method", entry["method"]) != entry["method"]:
            entry = dict(options)  # another method: its defaults, then the request's options
        else:
            entry.update(options or {})
        name = entry.pop("method")
        return num_image_tokens(get_method(name, **entry), layout_for(size, self.geometry), newline=True)

    def prompt_tokens(self, case: Case) -> int:
        content = []
        for part in case.messages[0]["content"]:
            content.append({"type": "image"} if part["type"] == "image_url" else part)
        prompt = self.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        images = len(case.sizes)
        return self.text_tokens(prompt) - images + sum(self.image_tokens(s, case.options) for s in case.sizes)


def good_cases(n: int, seed: int) -> list[Case]:
    """``n`` distinct good requests: one, two or three images (a new picture each) or text only, with the
    model's options or their own, half of them streamed."""
    rng = random.Random(seed)
    shapes = ["1 image", "1 image", "2 images", "3 images", "text only"]
    out = []
    for i in range(n):
        shape = shapes[i % len(shapes)]
        images = 0 if shape == "text only" else int(shape[0])
        sizes = [rng.choice(SIZES) for _ in range(images)]
        urls = [data_url(png(h, w, seed=1000 * seed + 10 * i + j)) for j, (h, w) in enumerate(sizes)]
        text = QUESTION if images else rng.choice(["hello", "describe a cat", "what is 2 + 2 ?"])
        out.append(
            Case(
                label=shape,
                kind="good",
                messages=chat(urls, text),
                options=rng.choice(OPTIONS),
                stream=rng.random() < 0.5,
                sizes=sizes,
            )
        )
    return out


def words(counter: Counter, tokens: int) -> str:
    """Plain text of about ``tokens`` tokens (at least that many)."""
    text = "word " * max(1, tokens // max(1, counter.text_tokens("word " * 100) // 100))
    while counter.text_tokens(text) < tokens:
        text += "word " * 8
    return text


def fault_cases(counter: Counter, max_model_len: int) -> list[Case]:
    """One of each fault: inputs the server must refuse with a 4xx naming the problem, edge-size pictures
    it may serve, and a picture vLLM's image loading refuses with a 5xx."""
    picture = png(100, 150, seed=5)
    url = data_url(picture)
    huge = data_url(png(15000, 15000, flat=True))  # 225 Mpx: over PIL's decompression-bomb limit (2 x 89.5 Mpx)
    long_text = words(counter, max_model_len + 50)
    # text that fits, plus three images at the full budget that do not
    near_text = words(counter, max_model_len - 3 * counter.image_tokens((480, 640), {"budget": 1.0}) // 2)
    return [
        Case("truncated PNG", "bad", chat([data_url(picture[: len(picture) // 2])]), expect="image file is truncated"),
        Case("bad base64", "bad", chat(["data:image/png;base64,!!!not-base64@@"]), expect="base64"),
        Case("unknown hired option", "bad", chat([url]), {"nope": 1}, expect="HiRED has no option nope"),
        Case("budget 0", "bad", chat([url]), {"budget": 0}, expect="budget must be in (0, 1]"),
        Case('budget "abc"', "bad", chat([url]), {"budget": "abc"}, expect="budget must be a number, got 'abc'"),
        Case("text over max-model-len", "bad", chat([], long_text), expect="maximum context length"),
        Case(
            "text + 3 images over max-model-len",
            "bad",
            chat([data_url(png(480, 640, seed=s)) for s in (1, 2, 3)], near_text),
            {"budget": 1.0},
            expect="maximum context length",
        ),
        Case(f"{MAX_IMAGES + 1} images (limit {MAX_IMAGES})", "bad", chat([url] * (MAX_IMAGES + 1)), expect="At most"),
        Case("1x1 image", "edge", chat([data_url(png(1, 1))]), sizes=[(1, 1)]),
        Case("10000x10000 image", "edge", chat([data_url(png(10000, 10000, flat=True))]), sizes=[(10000, 10000)]),
        Case("15000x15000 image", "known", chat([huge]), expect="decompression bomb"),
    ]


def fault_share(requests: int, kinds: int) -> int:
    """How many of ``requests`` are faults: a fifth, and every kind at least once."""
    return min(requests, max(kinds, requests // 5))


def load_cases(goods: list[Case], faults: list[Case], requests: int, seed: int) -> list[Case]:
    """``requests`` requests in a random order: :func:`fault_share` faults cycling through ``faults`` (every
    other one streamed) and good ones from ``goods``."""
    n_faults = fault_share(requests, len(faults))
    picked = []
    for i in range(n_faults):
        f = faults[i % len(faults)]
        picked.append(Case(**{**f.__dict__, "stream": i % 2 == 1}))
    picked += goods[: requests - n_faults]
    random.Random(seed + 1).shuffle(picked)
    return picked
