"""The vision step alone, at a checkpoint's real shapes: the cost of a method's score hooks in the tower.

The language model of a 7B model does not change with the score hooks and dominates a CPU run, so this
times only the vision step: ``get_image_features`` of the model, with the method applied
(``hired.apply``, its hooks recording inside the tower) against the oracle (the stock tower, the same
kept count, no hooks: :func:`hired.bench.oracle.oracle`), interleaved run by run. Per run it records

* ``tower``: the tower's forward (a forward pre-hook and hook on the tower module), hooks included;
* ``step``: the whole ``get_image_features`` call (tower, selection, projection of the kept tokens);
* ``score`` (method only): the time spent in the score computation
  (:meth:`hired.engine.scores.LayerScores.score`), a direct reading of the hooks' own cost.

:func:`build_tower` builds an architecture of :mod:`hired.bench.archs` with its language model on the
``meta`` device (no memory) and random weights only where the vision step needs them (the tower, the
projector, LLaVA's image-newline vector), so a 7B model's vision step runs on a laptop.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import platform
import statistics
import time
from collections.abc import Iterator

import torch
from torch import nn

from hired.bench.archs import build_arch
from hired.bench.oracle import oracle
from hired.engine.scores import LayerScores
from hired.families import family_of
from hired.machine import cpu_name

__all__ = ["build_tower", "tower_benchmark", "tower_markdown"]


def build_tower(name: str, dtype: torch.dtype | str = torch.float32, seed: int = 0, attn_implementation: str = "sdpa"):
    """``(model, processor)`` of architecture ``name`` with random weights in its vision step only.

    The model is built on the ``meta`` device; its tower (merger included), projector and image-newline
    vector are then rebuilt on the CPU from their configs, so ``get_image_features`` runs while the
    language model holds no memory (a forward through it fails)."""
    model, processor = build_arch(name, "meta", dtype, attn_implementation, seed)
    inner, family = family_of(model)
    dtype = next(model.parameters()).dtype
    torch.manual_seed(seed)
    with torch.device("cpu"):
        tower = family.tower(inner)
        _replace(
            inner, tower, type(tower)._from_config(tower.config, dtype=dtype, attn_implementation=attn_implementation)
        )
        projector = getattr(inner, "multi_modal_projector", None)
        if projector is not None:
            _replace(inner, projector, type(projector)(inner.config).to(dtype))
        newline = getattr(inner, "image_newline", None)
        if newline is not None:
            inner.image_newline = nn.Parameter(torch.randn(newline.shape, dtype=dtype) * newline.shape[-1] ** -0.5)
    model.eval()
    return model, processor


def _replace(parent: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for attr, child in parent.named_children():
        if child is old:
            setattr(parent, attr, new.eval())
            return
    raise ValueError(f"{type(old).__name__} is not a direct child of {type(parent).__name__}")


def _image_inputs(model: nn.Module, processor, image) -> dict:
    """What ``get_image_features`` takes for one image: the image processor's output that it names, and the
    image inputs that the family's patched processor adds (InternVL: ``image_sizes``, each image's tile
    grid; the method's and the oracle's vision step both read them)."""
    inner, family = family_of(model)
    out = processor.image_processor(images=[image], return_tensors="pt")
    names = inspect.signature(inner.get_image_features).parameters
    inputs = {k: v for k, v in dict(out).items() if k in names}
    inputs.update(family.processor_inputs(processor, [image], {}))
    inputs["pixel_values"] = inputs["pixel_values"].to(inner.dtype)
    return inputs


class _Clock:
    """Forward pre-hook / hook on the tower (its wall time per call), and the time spent in
    :meth:`LayerScores.score` (patched on the class while the clock runs)."""

    def __init__(self, tower: nn.Module):
        self.tower = tower
        self.marks: list[float] = []
        self.score = 0.0

    @contextlib.contextmanager
    def running(self) -> Iterator[_Clock]:
        original = LayerScores.score
        clock = self

        def timed(self_, *args, **kwargs):
            start = time.perf_counter()
            try:
                return original(self_, *args, **kwargs)
            finally:
                clock.score += time.perf_counter() - start

        handles = [
            self.tower.register_forward_pre_hook(lambda *_: self.marks.append(time.perf_counter())),
            self.tower.register_forward_hook(lambda *_: self.marks.append(time.perf_counter())),
        ]
        LayerScores.score = timed
        try:
            yield self
        finally:
            LayerScores.score = original
            for handle in handles:
                handle.remove()

    def reset(self) -> None:
        self.marks, self.score = [], 0.0


def _one_run(model: nn.Module, inputs: dict, clock: _Clock) -> dict[str, float]:
    inner, _ = family_of(model)
    clock.reset()
    with torch.no_grad(), clock.running():
        start = time.perf_counter()
        inner.get_image_features(**inputs)
        step = time.perf_counter() - start
    if len(clock.marks) != 2:
        raise RuntimeError(f"the vision tower ran {len(clock.marks) // 2} times in one get_image_features call")
    return {"tower": clock.marks[1] - clock.marks[0], "step": step, "score": clock.score}


def tower_benchmark(
    model: nn.Module,
    processor,
    image,
    methods: list,
    runs: int = 5,
    warmup: int = 1,
    model_name: str = "",
    image_name: str = "",
    command: str = "",
    progress=None,
) -> dict:
    """Time the vision step of ``model`` with each method of ``methods`` (method configs) against its
    oracle, interleaved run by run (``warmup`` untimed runs of each first). ``model`` must be stock;
    ``progress(label)`` is called before every run. Returns a JSON-ready dict (see :func:`tower_markdown`)."""
    import hired

    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be at least 1 and warm-up runs 0 or more, got {runs} and {warmup}")
    if hired.applied_method(model) is not None:
        raise ValueError("the tower benchmark runs on the stock model; call hired.remove(model, processor) first")
    inner, family = family_of(model)
    clock = _Clock(family.tower(inner))
    inputs = _image_inputs(model, processor, image)
    rows = []
    for method in methods:
        times: dict[str, list[dict]] = {"method": [], "oracle": []}
        counts = None
        for index in range(warmup + runs):
            for kind in ("method", "oracle"):
                if progress is not None:
                    progress(f"{method.name} @ {getattr(method, 'budget', None)}: {kind} run {index + 1}")
                if kind == "method":
                    hired.apply(model, processor, method)
                    try:
                        run = _one_run(model, inputs, clock)
                        counts = [s.num_tokens for s in hired.last_selection(model)]
                    finally:
                        hired.remove(model, processor)
                else:
                    with oracle(model, processor, counts):
                        run = _one_run(model, inputs, clock)
                if index >= warmup:
                    times[kind].append(run)
        rows.append(_row(method, counts, times))
    return {
        "model": model_name,
        "image": image_name,
        "command": command,
        "machine": _machine(),
        "pixel_values": list(inputs["pixel_values"].shape),
        "runs": runs,
        "warmup": warmup,
        "rows": rows,
    }


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _row(method, counts, times: dict[str, list[dict]]) -> dict:
    summary = {
        kind: {part: _stats([r[part] for r in runs]) for part in ("tower", "step", "score")}
        for kind, runs in times.items()
    }
    method_t, oracle_t = summary["method"], summary["oracle"]
    overhead = {
        f"{part}_{stat}": method_t[part][stat] / oracle_t[part][stat] - 1.0
        for part in ("tower", "step")
        for stat in ("median", "min")
    }
    overhead["score_share"] = method_t["score"]["median"] / oracle_t["tower"]["median"]
    overhead["score_share_min"] = method_t["score"]["min"] / oracle_t["tower"]["min"]
    return {
        "method": f"{method.name} @ {getattr(method, 'budget', None)}",
        "kept_per_image": counts,
        "summary": summary,
        "overhead": overhead,
        "runs": times,
    }


def _machine() -> dict:
    import transformers

    return {
        "cpu": f"{cpu_name()} ({os.cpu_count()} cores)",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def tower_markdown(result: dict) -> str:
    """A Markdown table of :func:`tower_benchmark`'s result: medians and minima in ms, overheads in %."""
    m = result["machine"]
    lines = [
        f"Vision step of {result['model']}, image {result['image']} (pixel values {result['pixel_values']}), "
        f"{result['runs']} runs after {result['warmup']} warm-up; {m['cpu']}, {m['torch_threads']} torch "
        f"thread(s), torch {m['torch']}, transformers {m['transformers']}.",
        "",
        "| method | kept | tower oracle ms | tower method ms | tower overhead | step overhead | score share |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        s, o = row["summary"], row["overhead"]
        ms = lambda d: f"{d['median'] * 1e3:.0f} (min {d['min'] * 1e3:.0f})"  # noqa: E731
        lines.append(
            f"| {row['method']} | {', '.join(map(str, row['kept_per_image']))} | {ms(s['oracle']['tower'])} | "
            f"{ms(s['method']['tower'])} | {o['tower_median']:+.1%} (min {o['tower_min']:+.1%}) | "
            f"{o['step_median']:+.1%} (min {o['step_min']:+.1%}) | {o['score_share']:.2%} (min {o['score_share_min']:.2%}) |"
        )
    lines += [
        "",
        "Times: median (min) of the runs. Overheads: method / oracle - 1 of the medians (of the minima). Score "
        "share: the median (minimum) time inside the score computation over the oracle's median (minimum) "
        "tower time.",
    ]
    if result.get("command"):
        lines += ["", f"Command: `{result['command']}`"]
    return "\n".join(lines) + "\n"
