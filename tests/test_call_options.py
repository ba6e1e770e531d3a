"""``hired.options``: a method's options changed for the calls of one thread (or task), without ``remove``
/ ``apply``. Inside the block the processor counts and the model selects as if the changed method were
applied; other threads, and the same thread after the block, keep the applied method."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import make_image

import hired

PROMPT = "USER: <image>\nwhat is this? ASSISTANT:"
IMAGES = [(60, 130), (150, 150), (220, 100)]


def _run(model, processor, k: int):
    """Generate for image ``k``: the prompt length, the new tokens and the kept patches of this call."""
    h, w = IMAGES[k % len(IMAGES)]
    inputs = processor(images=[make_image(h, w, seed=k)], text=[PROMPT], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    kept = [[p.kept for p in sel.partitions] for sel in hired.last_selection(model)]
    return inputs["input_ids"].shape[1], out[0, -3:].tolist(), kept


def _reference(model, processor, method, ks):
    """What each call gives with ``method`` applied (the model is left with nothing applied)."""
    hired.apply(model, processor, method)
    try:
        return {k: _run(model, processor, k) for k in ks}
    finally:
        hired.remove(model, processor)


def test_a_call_with_options_runs_as_the_changed_method_applied(llava_next):
    model, processor = llava_next
    low = _reference(model, processor, hired.HiRED(budget=0.1, alpha=0.3), range(3))
    base = _reference(model, processor, hired.HiRED(budget=0.4), range(3))
    hired.apply(model, processor, hired.HiRED(budget=0.4))
    with hired.options(model, budget=0.1, alpha=0.3) as method:
        assert method == hired.HiRED(budget=0.1, alpha=0.3)
        assert hired.applied_method(model) == method
        got = {k: _run(model, processor, k) for k in range(3)}
    assert got == low
    assert hired.applied_method(model) == hired.HiRED(budget=0.4)
    assert {k: _run(model, processor, k) for k in range(3)} == base  # after the block: the applied method
    assert all(low[k][0] < base[k][0] for k in range(3))  # the options did change the count


def test_another_method_with_the_same_hooks(llava_next):
    model, processor = llava_next
    want = _reference(model, processor, hired.ClsTopK(budget=0.25), [0, 1])
    hired.apply(model, processor, hired.HiRED(budget=0.4))
    with hired.options(model, hired.ClsTopK(budget=0.25)):
        assert {k: _run(model, processor, k) for k in [0, 1]} == want


def test_blocks_nest_and_each_exit_restores_the_outer_options(llava_next):
    model, processor = llava_next
    hired.apply(model, processor, hired.HiRED(budget=0.4, alpha=0.5))
    with hired.options(model, budget=0.2):
        with hired.options(model, alpha=0.1):
            assert hired.applied_method(model) == hired.HiRED(budget=0.2, alpha=0.1)
        assert hired.applied_method(model) == hired.HiRED(budget=0.2, alpha=0.5)
    assert hired.applied_method(model) == hired.HiRED(budget=0.4, alpha=0.5)


def test_threads_with_different_options_get_what_each_gets_alone(llava_next):
    model, processor = llava_next
    budgets = [None, 0.1, 0.6, 0.25]
    refs = {b: _reference(model, processor, hired.HiRED(budget=b or 0.4), range(3)) for b in budgets}
    hired.apply(model, processor, hired.HiRED(budget=0.4))
    barrier = threading.Barrier(len(budgets))

    def worker(budget):
        barrier.wait()
        if budget is None:
            return budget, {k: _run(model, processor, k) for k in range(3)}
        with hired.options(model, budget=budget):
            return budget, {k: _run(model, processor, k) for k in range(3)}

    with ThreadPoolExecutor(len(budgets)) as pool:
        results = list(pool.map(worker, budgets))
    for budget, got in results:
        assert got == refs[budget], f"the thread at budget {budget} differs from a run alone"


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"budget": 1.5}, ValueError, "budget must be in (0, 1], got 1.5"),
        ({"budget": "abc"}, TypeError, "HiRED option budget must be a number, got 'abc'"),
        ({"nope": 1}, ValueError, "HiRED has no option nope"),
        ({"budget_layer": 1}, ValueError, "hired.options cannot change the layers the score hooks read"),
    ],
)
def test_bad_options_raise_before_anything_changes(llava_next, options, error, message):
    model, processor = llava_next
    hired.apply(model, processor, hired.HiRED(budget=0.4))
    with pytest.raises(error) as err:
        with hired.options(model, **options):
            pass
    assert message in str(err.value)
    assert hired.applied_method(model) == hired.HiRED(budget=0.4)


def test_options_need_an_applied_method(llava_next):
    model, _ = llava_next
    with pytest.raises(ValueError, match="no hired method is applied to this model"):
        with hired.options(model, budget=0.1):
            pass


def test_inputs_built_inside_fail_clearly_outside(llava_next):
    model, processor = llava_next
    hired.apply(model, processor, hired.HiRED(budget=0.4))
    with hired.options(model, budget=0.1):
        inputs = processor(images=[make_image(60, 130)], text=[PROMPT], return_tensors="pt")
    with pytest.raises(ValueError, match="hired.prepare_inputs"), torch.no_grad():
        model(**inputs)
