"""Options per request: ``mm_processor_kwargs={"hired": {...}}`` overrides the model's ``hf_overrides``
entry for that request's images, in vLLM's offline engine (the OpenAI server: ``test_server.py``).

Expected values come from an engine started with the request's options as the model's entry (kept
patches, prompt ids, greedy answers) and from the core's counts."""

from __future__ import annotations

import pytest
from conftest import greedy, make_image, make_llm, request

import hired.vllm
from hired.core.grid import Geometry, layout_for
from hired.families import get_family
from hired.methods.base import get_method, num_image_tokens
from hired.testing import default_pinpoints

MODEL = {"method": "hired", "budget": 0.3, "alpha": 0.5}
GEOMETRY = Geometry(84, 14, default_pinpoints(84))  # the tiny LLaVA-NeXT's
IMAGE_ID = 4  # "<image>" in the tiny LLaVA tokenizer (checked by the llm fixture)


def with_options(req: dict, options: dict | None) -> dict:
    return req if options is None else {**req, "mm_processor_kwargs": {"hired": options}}


def count(ids: list[int]) -> int:
    return sum(t == IMAGE_ID for t in ids)


def expected(size: tuple[int, int], method: str = "hired", **options) -> int:
    """The core's count for one image of ``size`` on the tiny LLaVA-NeXT."""
    return num_image_tokens(get_method(method, **options), layout_for(size, GEOMETRY), newline=True)


@pytest.fixture
def llm(engines, next_path):
    """The tiny LLaVA-NeXT started with ``MODEL`` (module-wide, through ``engines``: an engine is only shut
    down when another starts, never while one is in use)."""
    engine = engines(next_path, MODEL)
    assert engine.get_tokenizer().convert_tokens_to_ids("<image>") == IMAGE_ID
    return engine


@pytest.mark.parametrize(
    "options, model_entry",
    [
        ({"budget": 0.1}, {**MODEL, "budget": 0.1}),
        ({"budget": 0.6, "alpha": 0.2}, {**MODEL, "budget": 0.6, "alpha": 0.2}),
        ({"method": "cls_topk", "budget": 0.2}, {"method": "cls_topk", "budget": 0.2}),
    ],
)
def test_a_request_runs_as_a_model_started_with_its_options(llm, engines, next_path, options, model_entry):
    image = make_image(100, 150, seed=3)
    mine = llm.generate([with_options(request(image), options)], greedy(), use_tqdm=False)[0]
    kept = hired.vllm.last_selection(llm)
    reference = engines(next_path, model_entry)
    want = reference.generate([request(image)], greedy(), use_tqdm=False)[0]
    want_kept = hired.vllm.last_selection(reference)
    assert mine.prompt_token_ids == want.prompt_token_ids
    assert count(mine.prompt_token_ids) == expected((100, 150), **model_entry_options(model_entry))
    assert [[p.kept for p in s.partitions] for s in kept] == [[p.kept for p in s.partitions] for s in want_kept]
    assert mine.outputs[0].token_ids == want.outputs[0].token_ids


def model_entry_options(entry: dict) -> dict:
    return {"method": entry.get("method", "hired"), **{k: v for k, v in entry.items() if k != "method"}}


def test_mixed_budgets_in_one_batch_get_exact_counts_with_the_processor_cache(llm):
    """The same image at several budgets in one batch: each request its own count (vLLM's processor and
    encoder caches key an image by its options too), the batch equal to each request sent alone, and a
    request without options at the model's budget."""
    a, b = make_image(100, 150, seed=1), make_image(160, 80, seed=2)
    cases = [
        (a, None),
        (a, {"budget": 0.1}),
        (a, {"budget": 1.0}),
        (b, {"budget": 0.1}),
        (a, {"budget": 0.1}),
        (b, None),
        (a, {"alpha": 0.9}),
    ]
    batch = llm.generate([with_options(request(img), opts) for img, opts in cases], greedy(), use_tqdm=False)
    for (img, opts), out in zip(cases, batch):
        size = (img.height, img.width)
        options = {**MODEL, **(opts or {})}
        assert count(out.prompt_token_ids) == expected(size, **model_entry_options(options)), opts
        alone = llm.generate([with_options(request(img), opts)], greedy(), use_tqdm=False)[0]
        assert alone.prompt_token_ids == out.prompt_token_ids
        assert alone.outputs[0].token_ids == out.outputs[0].token_ids
    counts = [count(o.prompt_token_ids) for o in batch[:3]]
    assert counts[1] < counts[0] < counts[2] == expected((100, 150), budget=1.0, alpha=0.5)


def test_several_images_of_one_request_share_its_options(llm):
    images = [make_image(100, 150, seed=5), make_image(84, 84, seed=6)]
    prompt = "USER: <image>\n<image>\nwhat differs ? ASSISTANT:"
    out = llm.generate([with_options(request(images, prompt), {"budget": 0.15})], greedy(), use_tqdm=False)[0]
    assert count(out.prompt_token_ids) == sum(
        expected((i.height, i.width), **{**MODEL, "budget": 0.15}) for i in images
    )
    assert [s.num_tokens for s in hired.vllm.last_selection(llm)] == [
        expected((i.height, i.width), **{**MODEL, "budget": 0.15}) for i in images
    ]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"budget": 1.5}, "mm_processor_kwargs['hired']: budget must be in (0, 1], got 1.5"),
        ({"budget": 0}, "mm_processor_kwargs['hired']: budget must be in (0, 1], got 0"),
        ({"budget": "abc"}, "mm_processor_kwargs['hired']: HiRED option budget must be a number, got 'abc'"),
        ({"nope": 1}, "mm_processor_kwargs['hired']: HiRED has no option nope; options: adapt, alpha, budget"),
        ({"method": "nope"}, "mm_processor_kwargs['hired']: unknown method 'nope'; available: "),
        ({"method": "hired", "budget": None}, "mm_processor_kwargs['hired']: "),
        ({"oracle": True}, "mm_processor_kwargs['hired']: 'oracle' is set per model"),
        ("0.1", "mm_processor_kwargs['hired']: expected a dict such as {'budget': 0.1}, got '0.1'"),
    ],
)
def test_a_bad_option_fails_that_request_alone(llm, options, message):
    image = make_image(100, 150, seed=7)
    with pytest.raises(ValueError) as err:
        llm.generate([with_options(request(image), options)], greedy(), use_tqdm=False)
    assert str(err.value).startswith(message), str(err.value)
    out = llm.generate([with_options(request(image), {"budget": 0.1})], greedy(), use_tqdm=False)[0]
    assert count(out.prompt_token_ids) == expected((100, 150), **{**MODEL, "budget": 0.1})


def test_the_message_is_the_one_start_up_gives(next_path):
    with pytest.raises(ValueError) as start_up:
        make_llm(next_path, {**MODEL, "budget": 1.5})
    assert "hf_overrides['hired']: budget must be in (0, 1], got 1.5" in str(start_up.value)


def test_a_model_started_without_hired_refuses_request_options(engines, next_path):
    stock = engines(next_path)
    with pytest.raises(ValueError, match=r"mm_processor_kwargs\['hired'\]: this model was started without hired"):
        stock.generate([with_options(request(make_image(100, 150)), {"budget": 0.1})], greedy(), use_tqdm=False)
    out = stock.generate([request(make_image(100, 150))], greedy(), use_tqdm=False)[0]
    assert count(out.prompt_token_ids) == get_family("llava_next").stock_tokens(layout_for((100, 150), GEOMETRY))
    assert hired.vllm.last_selection(stock) == []


def test_a_text_only_request_with_options_runs(llm):
    """No image, nothing to apply the options to: the request runs as any text prompt."""
    out = llm.generate(
        [{"prompt": "USER: hello ASSISTANT:", "mm_processor_kwargs": {"hired": {"budget": 0.1}}}],
        greedy(),
        use_tqdm=False,
    )[0]
    assert count(out.prompt_token_ids) == 0 and len(out.outputs[0].token_ids) == 6


# ------------------------------------------------------------------------- the other token layouts

OTHER = {
    # family: (prompt with one image, its placeholder token)
    "qwen2_5_vl": ("USER: <|vision_start|><image><|vision_end|>\nwhat is this? ASSISTANT:", "<image>"),
    "internvl": ("USER: <IMG_CONTEXT>\nwhat is this? ASSISTANT:", "<IMG_CONTEXT>"),
}


@pytest.fixture(scope="module", params=sorted(OTHER))
def other_path(request, tmp_path_factory):
    """A tiny Qwen2.5-VL (merged grid) or InternVL (tiles, pixel shuffle) saved with its processor."""
    from hired import testing

    if request.param == "internvl":
        pytest.importorskip("torchvision")
    model, processor = getattr(testing, f"tiny_{request.param}")(seed=5)
    path = tmp_path_factory.mktemp(f"tiny-{request.param}")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return request.param, str(path)


def test_merged_grid_and_tiles_take_request_options(engines, other_path):
    """A batch mixing the model's budget and three of the requests' own on Qwen2.5-VL and InternVL: each
    request's prompt and greedy answer equal those of an engine started with its options."""
    family, path = other_path
    prompt, token = OTHER[family]
    model_entry = {"method": "hired", "budget": 0.3}
    images = [make_image(150, 230, seed=1), make_image(300, 120, seed=2), make_image(100, 100, seed=3)]
    cases = [
        (images[0], None),
        (images[0], {"budget": 0.1}),
        (images[1], {"budget": 0.6}),
        (images[2], {"budget": 0.1}),
    ]
    llm = engines(path, model_entry)
    image_id = llm.get_tokenizer().convert_tokens_to_ids(token)
    batch = llm.generate([with_options(request(i, prompt), o) for i, o in cases], greedy(), use_tqdm=False)
    counts = [sum(t == image_id for t in out.prompt_token_ids) for out in batch]
    assert counts[1] < counts[0]  # the same image, at 0.1 and at the model's 0.3
    for budget in (0.1, 0.6):
        reference = engines(path, {**model_entry, "budget": budget})
        for (img, opts), out in zip(cases, batch):
            if opts is not None and opts["budget"] == budget:
                want = reference.generate([request(img, prompt)], greedy(), use_tqdm=False)[0]
                assert out.prompt_token_ids == want.prompt_token_ids, (family, budget)
                assert out.outputs[0].token_ids == want.outputs[0].token_ids, (family, budget)
