"""One patched model served from many threads at once: every thread gets exactly what a single thread
gets, and ``last_selection`` / ``last_scores`` describe the calling thread's own last call."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import leftovers, make_image

import hired

PROMPT = "USER: <image>\nwhat is this? ASSISTANT:"
THREADS, CALLS = 4, 3
# (h, w) pairs: every request is a batch of two images of different sizes (different grids)
SIZES = [[(60, 130), (150, 150)], [(220, 100), (90, 170)], [(100, 220), (130, 60)], [(150, 150), (60, 130)]]
METHODS = [hired.HiRED(budget=0.2), hired.VisionZip(budget=0.3), hired.PruMerge()]


def _request(k: int):
    return [make_image(h, w, seed=10 * k + i) for i, (h, w) in enumerate(SIZES[k % len(SIZES)])]


def _run(model, processor, k: int, two_pass: bool):
    """Generate for request ``k``; return the new tokens, the kept patches and the scores of this call."""
    images = _request(k)
    kwargs = dict(images=images, text=[PROMPT] * len(images), return_tensors="pt", padding=True)
    inputs = hired.prepare_inputs(model, processor, **kwargs) if two_pass else processor(**kwargs)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    kept = [[p.kept for p in sel.partitions] for sel in hired.last_selection(model)]
    sizes = [sel.image_size for sel in hired.last_selection(model)]
    scores = [s["select"] for s in hired.last_scores(model)]
    return out[:, -3:], kept, sizes, scores


def _same(a, b) -> bool:
    tokens_a, kept_a, sizes_a, scores_a = a
    tokens_b, kept_b, sizes_b, scores_b = b
    return (
        torch.equal(tokens_a, tokens_b)
        and kept_a == kept_b
        and sizes_a == sizes_b
        and all(torch.equal(x, y) for x, y in zip(scores_a, scores_b))
    )


def _threaded(model, processor, two_pass: bool):
    """THREADS threads x CALLS calls, started together; thread t's call c serves request t + c."""
    barrier = threading.Barrier(THREADS)

    def worker(t: int):
        barrier.wait()
        return [(t + c, _run(model, processor, t + c, two_pass)) for c in range(CALLS)]

    with ThreadPoolExecutor(THREADS) as pool:
        return [r for fut in [pool.submit(worker, t) for t in range(THREADS)] for r in fut.result()]


@pytest.fixture(params=["llava_next", "llava"])
def pair(request):
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
@pytest.mark.parametrize("two_pass", [False, True], ids=["processor", "prepare_inputs"])
def test_threads_get_what_one_thread_gets(pair, method, two_pass):
    model, processor = pair
    if method.adaptive and not two_pass:
        pytest.skip("an adaptive method has no processor path (tested to refuse elsewhere)")
    hired.apply(model, processor, method)
    single = {k: _run(model, processor, k, two_pass) for k in range(THREADS + CALLS - 1)}
    results = _threaded(model, processor, two_pass)
    assert len(results) == THREADS * CALLS
    for k, got in results:
        assert _same(got, single[k]), f"request {k} differs from the single-threaded run"
    # the hooks are installed once, not per call: none were added by the threads
    hooks = sum(len(m._forward_hooks) for m in model.model.vision_tower.modules())
    _run(model, processor, 0, two_pass)
    assert sum(len(m._forward_hooks) for m in model.model.vision_tower.modules()) == hooks


def test_last_selection_is_per_thread(llava_next):
    """A thread that has not run anything sees nothing, whatever the others ran."""
    model, processor = llava_next
    hired.apply(model, processor, hired.HiRED(budget=0.2))
    _run(model, processor, 0, False)
    seen = []
    thread = threading.Thread(target=lambda: seen.append(hired.last_selection(model)))
    thread.start()
    thread.join()
    assert seen == [[]]
    assert [s.image_size for s in hired.last_selection(model)] == [(60, 130), (150, 150)]


def test_text_only_prompt_clears_last_selection_but_decoding_does_not(llava_next):
    model, processor = llava_next
    hired.apply(model, processor, hired.HiRED(budget=0.2))
    inputs = processor(images=make_image(60, 130), text=PROMPT, return_tensors="pt")
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=3, do_sample=False)  # decoding steps carry no image
    assert [s.image_size for s in hired.last_selection(model)] == [(60, 130)]
    with torch.no_grad():
        model.generate(**processor(text="USER: hello ASSISTANT:", return_tensors="pt"), max_new_tokens=2)
    assert hired.last_selection(model) == [] and hired.last_scores(model) == []
    with torch.no_grad():
        model(**inputs)
    assert len(hired.last_selection(model)) == 1
    hired.apply(model, processor, hired.Spatial(budget=0.3))  # a new method: nothing seen since apply
    assert hired.last_selection(model) == []


def test_stale_inputs_get_a_hint(llava_next):
    model, processor = llava_next
    stock_inputs = processor(images=make_image(60, 130), text=PROMPT, return_tensors="pt")
    hired.apply(model, processor, hired.HiRED(budget=0.2))
    with pytest.raises(ValueError, match="do not match.*hired.prepare_inputs"):
        with torch.no_grad():
            model(**stock_inputs)


def test_remove_while_threads_generate_never_leaves_hooks_or_wrong_output(llava_next):
    """apply/remove wait for the vision steps in flight; every call either errors or equals the run of
    the configuration its inputs were built for."""
    model, processor = llava_next
    method = hired.HiRED(budget=0.2)
    stock = {k: _run(model, processor, k, False)[0] for k in range(THREADS)}
    hired.apply(model, processor, method)
    dropped = {k: _run(model, processor, k, False)[0] for k in range(THREADS)}
    stop = threading.Event()
    outcomes = []

    def worker(k: int):
        while not stop.is_set():
            images = _request(k)
            inputs = processor(images=images, text=[PROMPT] * 2, return_tensors="pt", padding=True)
            try:
                with torch.no_grad():
                    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)[:, -3:]
            except (ValueError, RuntimeError) as err:
                outcomes.append((k, err))
                continue
            outcomes.append((k, out))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for _ in range(3):
        hired.remove(model, processor)
        hired.apply(model, processor, method)
    hired.remove(model, processor)
    stop.set()
    for t in threads:
        t.join()
    assert outcomes
    for k, out in outcomes:
        if isinstance(out, Exception):
            assert "do not match" in str(out) or "hired.remove" in str(out), out
        else:
            assert torch.equal(out, stock[k]) or torch.equal(out, dropped[k])
    assert not leftovers(model, processor)  # no hook, no attribute
