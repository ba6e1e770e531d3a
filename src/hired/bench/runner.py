"""The benchmark loop: per batch size, the stock model ("full"), then per method and budget the method,
its oracle and (for methods that read [CLS] attention) the method on the reference attention path.

The cases of one group (a method at one budget and batch size, its oracle, its reference path) are
interleaved run by run, so a slow phase of a shared machine hits them alike; every case gets its own
warm-up runs first. Every run is one ``generate`` call of ``new_tokens`` greedy tokens (exactly that
many: ``min_new_tokens`` holds EOS back) on ``batch`` copies of the image and prompt.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import os
import platform
import statistics
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hired.bench.oracle import oracle, reference_attention
from hired.bench.timing import PARTS, Clock, Probes, memory_meter
from hired.machine import cpu_name

PAPER_BUDGETS = (1.0, 0.4, 0.2)
PAPER_BATCH_SIZES = (1, 2, 4)
DEFAULT_QUESTION = "What is shown in this image?"

_METRICS = (
    "ttft",
    *PARTS,
    "llm",
    "decode",
    "total",
    "decode_tok_s",
    "e2e_tok_s",
    "peak_memory",
    "run_memory",
)


@dataclass(frozen=True)
class MethodSpec:
    """A registered method by name with fixed options; the budget is set per row.

    ``options={"budget": None}`` asks for a method's adaptive form (PruMerge, PruMerge+): it then runs
    once per batch size, at the count it chooses, instead of once per budget.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def build(self, budget: float | None):
        import hired

        options = dict(self.options)
        if budget is not None:
            options["budget"] = budget
        return hired.get_method(self.name, **options)

    @property
    def cls(self):
        from hired.methods.base import method_class

        return method_class(self.name)

    def budgets_for(self, budgets: tuple[float, ...]) -> tuple[float | None, ...]:
        """The budgets this method runs at: ``budgets``, or ``(None,)`` (no budget option, or adaptive)."""
        has_budget = "budget" in {f.name for f in dataclasses.fields(self.cls)}
        if not has_budget or ("budget" in self.options and self.options["budget"] is None):
            return (None,)
        return tuple(budgets)

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.cls.name}({opts})" if opts else self.cls.name


def is_adaptive(method) -> bool:
    """Whether ``method`` keeps a content-dependent number of tokens (known only after the vision tower)."""
    return bool(getattr(method, "adaptive", False))


@dataclass(frozen=True)
class Settings:
    """What to run. ``budgets`` apply to every method with a ``budget`` option (others run once)."""

    methods: tuple[MethodSpec, ...] = (MethodSpec("hired"),)
    budgets: tuple[float, ...] = PAPER_BUDGETS
    batch_sizes: tuple[int, ...] = PAPER_BATCH_SIZES
    runs: int = 3
    warmup: int = 1
    new_tokens: int = 15
    full: bool = True
    oracle: bool = True
    reference_attention: bool = True
    question: str = DEFAULT_QUESTION
    progress: bool = True

    def check(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        import hired

        if self.runs < 1:
            raise ValueError(f"runs must be at least 1, got {self.runs}")
        if self.warmup < 0:
            raise ValueError(f"warm-up runs must be 0 or more, got {self.warmup}")
        if self.new_tokens < 2:
            raise ValueError(
                f"new tokens must be at least 2 (a first token and one decode step), got {self.new_tokens}"
            )
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch sizes must be positive integers, got {list(self.batch_sizes)}")
        for b in self.budgets:
            if not 0.0 < float(b) <= 1.0:
                raise ValueError(f"budget must be in (0, 1], got {b}")
        if not self.methods and not self.full:
            raise ValueError("nothing to run: no method and no full model")
        for spec in self.methods:
            budgets = spec.budgets_for(self.budgets)
            if not budgets:
                raise ValueError(f"method {spec.cls.name!r} needs at least one budget")
            for budget in budgets:
                method = spec.build(budget)  # validates the options
                if is_adaptive(method) and not hasattr(hired, "prepare_inputs"):
                    raise ValueError(
                        f"method {spec.cls.name!r} keeps an adaptive number of tokens, known only after the "
                        "vision tower runs; benchmarking it needs hired.prepare_inputs (two-pass inputs), "
                        "which this version of hired does not have"
                    )


@dataclass
class _Case:
    label: str
    kind: str  # "full" | "method" | "oracle" | "reference"
    batch: int
    spec: MethodSpec | None = None
    budget: float | None = None
    method: Any = None
    runs: list[dict] = field(default_factory=list)
    tokens_per_image: list[int] = field(default_factory=list)
    kept_per_image: list[int] | None = None
    features_per_image: list[int] | None = None


def _groups(settings: Settings, info) -> list[list[_Case]]:
    groups = []
    for batch in settings.batch_sizes:
        if settings.full:
            groups.append([_Case("full", "full", batch)])
        for spec in settings.methods:
            for budget in spec.budgets_for(settings.budgets):
                method = spec.build(budget)
                group = [_Case(spec.label, "method", batch, spec, budget, method)]
                if settings.oracle:
                    group.append(_Case(f"oracle({spec.label})", "oracle", batch, spec, budget, method))
                if settings.reference_attention and info is not None and method.score_layers(info):
                    group.append(_Case(f"{spec.label} (reference attention)", "reference", batch, spec, budget, method))
                groups.append(group)
    return groups


def _model_info(model):
    """The adapter's view of the tower (for ``score_layers`` and ``score_kind``), from the model's
    :mod:`hired.families` description; ``None`` for a model no family describes."""
    from hired.adapters.vision import has_cls_token
    from hired.families import family_of

    try:
        inner, family = family_of(model)
    except TypeError:
        return None
    return family.model_info(inner.config, has_cls_token(family.tower(inner)))[0]


def _family(model):
    """The model's :class:`hired.families.Family`, ``None`` for a model of no known family."""
    from hired.families import family_of

    try:
        return family_of(model)[1]
    except TypeError:
        return None


def _image_token_id(model) -> int:
    inner = getattr(model, "model", model)
    return int(inner.config.image_token_id)


@contextmanager
def _case_context(model, processor, case: _Case, counts: list[int] | None) -> Iterator[Any]:
    import hired

    if case.kind == "full":
        yield None
    elif case.kind == "oracle":
        with oracle(model, processor, counts) as record:
            yield record
    else:
        hired.apply(model, processor, case.method)
        try:
            with ExitStack() as stack:
                if case.kind == "reference":
                    stack.enter_context(reference_attention(model))
                yield None
        finally:
            hired.remove(model, processor)


def _inputs(model, processor, case: _Case, images, prompts):
    import hired

    if case.kind in ("method", "reference") and is_adaptive(case.method):
        inputs = hired.prepare_inputs(model, processor, images=images, text=prompts, return_tensors="pt", padding=True)
    else:
        inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    inputs = {k: (v.to(model.device) if torch.is_tensor(v) else v) for k, v in dict(inputs).items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    return inputs


def run_once(
    model: nn.Module,
    processor,
    images: list,
    prompts: list[str],
    new_tokens: int,
    probes: Probes,
    meter,
    case: _Case | None = None,
) -> tuple[dict[str, float], torch.Tensor]:
    """One timed ``generate`` of exactly ``new_tokens`` greedy tokens; returns the run's figures and the
    prompt's ``input_ids`` ``(batch, length)``. The model and processor are used as they are."""
    case = case or _Case("run", "full", len(images))
    clock = probes.clock
    batch = len(images)
    clock.sync()
    meter.start()
    probes.reset()
    probes.set("start")
    inputs = _inputs(model, processor, case, images, prompts)
    probes.set("inputs")
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            streamer=probes.streamer,
        )
    probes.set("end")
    clock.sync()
    peak, base = meter.stop()
    made = out.shape[1] - inputs["input_ids"].shape[1]
    if made != new_tokens:
        raise RuntimeError(f"generate made {made} new tokens, expected {new_tokens}")
    run = probes.seconds()
    run["decode_tok_s"] = batch * (new_tokens - 1) / run["decode"] if run["decode"] > 0 else float("inf")
    run["e2e_tok_s"] = batch * new_tokens / run["total"]
    run["peak_memory"] = float(peak)
    run["run_memory"] = float(max(peak - base, 0))
    return run, inputs["input_ids"].cpu()


def _summary(runs: list[dict]) -> dict[str, dict[str, float]]:
    out = {}
    for key in _METRICS:
        values = [r[key] for r in runs]
        out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def device_name(device: torch.device) -> str:
    """The accelerator's name, or the CPU model with its core count (``lscpu``'s model name)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({os.cpu_count()} cores)"


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def run_benchmark(
    model: nn.Module,
    processor,
    image,
    settings: Settings | None = None,
    *,
    model_name: str = "model",
    image_name: str = "image",
    command: str | None = None,
) -> dict:
    """Time ``model`` on ``image`` as ``settings`` say; returns a JSON-ready dict (``meta`` and ``rows``).

    The model must be a stock model of a supported family (:data:`hired.families.FAMILIES`; no method
    applied); it is stock again afterwards.
    """
    import transformers
    from tqdm.auto import tqdm

    import hired
    from hired.inference import build_prompt

    settings = settings or Settings()
    settings.check()
    if hired.applied_method(model) is not None:
        raise ValueError("hired bench needs the stock model; call hired.remove(model, processor) first")
    device = model.device
    info = _model_info(model)
    family = _family(model)
    if family is not None and not family.tower_attentions:  # no attention maps: no reference path
        settings = dataclasses.replace(settings, reference_attention=False)
    groups = _groups(settings, info)
    total = sum(len(g) * (settings.warmup + settings.runs) for g in groups)
    prompt = build_prompt(processor, settings.question)
    token_id = _image_token_id(model)
    clock = Clock(device)
    meter = memory_meter(device)
    probes = Probes(model, clock)
    load_start = _load()
    stock_tokens = None
    # objects alive now (the model, libraries) are left out of the per-run garbage collection: it stays fast
    gc.collect()
    gc.freeze()
    try:
        with tqdm(total=total, desc="hired bench", unit="run", disable=not settings.progress, file=sys.stderr) as bar:
            for group in groups:
                batch = group[0].batch
                images, prompts = [image] * batch, [prompt] * batch
                counts: list[int] | None = None
                for index in range(settings.warmup + settings.runs):
                    for case in group:
                        at = f" @ {case.budget}" if case.budget else ""
                        bar.set_postfix_str(f"batch {batch}, {case.label}{at}")
                        with _case_context(model, processor, case, counts) as record:
                            run, input_ids = run_once(
                                model, processor, images, prompts, settings.new_tokens, probes, meter, case
                            )
                            if case.kind in ("method", "reference"):
                                case.kept_per_image = [s.num_tokens for s in hired.last_selection(model)]
                        case.tokens_per_image = (input_ids == token_id).sum(dim=1).tolist()
                        if case.kind == "method":
                            counts = case.tokens_per_image
                        elif case.kind == "oracle":
                            case.features_per_image = list(record.features_per_image)
                        elif case.kind == "full" and stock_tokens is None:
                            stock_tokens = case.tokens_per_image[0]
                        if index >= settings.warmup:
                            case.runs.append(run)
                        bar.update(1)
    finally:
        probes.remove()
        gc.unfreeze()
    if stock_tokens is None:
        stock_tokens = _stock_tokens(processor, image, prompt, token_id)
    rows = []
    for group in groups:
        oracle_runs = next((c.runs for c in group if c.kind == "oracle"), None)
        for case in group:
            summary = _summary(case.runs)
            row = {
                "label": case.label,
                "kind": case.kind,
                "method": case.spec.cls.name if case.spec else None,
                "options": dict(case.spec.options) if case.spec else {},
                "budget": case.budget,
                "adaptive": is_adaptive(case.method),
                "batch": case.batch,
                "tokens_per_image": case.tokens_per_image,
                "stock_tokens_per_image": stock_tokens,
                "summary": summary,
                "runs": case.runs,
            }
            if case.kept_per_image is not None:
                row["kept_per_image"] = case.kept_per_image
            if case.method is not None and info is not None and case.method.score_layers(info):
                row["score_kind"] = case.method.score_kind(info)  # "cls" or "received" (towers without [CLS])
            if case.features_per_image is not None:
                row["features_per_image"] = case.features_per_image
            if case.kind in ("method", "reference") and oracle_runs:
                row.update(_overheads(case.runs, oracle_runs))
            rows.append(row)
    height, width = image.height, image.width
    meta = {
        "model": model_name,
        "model_class": type(model).__name__,
        "family": getattr(_family(model), "name", None),
        "device": str(device),
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads() if device.type == "cpu" else None,
        "dtype": str(model.dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "hired": hired.__version__,
        "python": platform.python_version(),
        "image": image_name,
        "image_size": [height, width],
        "prompt": prompt,
        "new_tokens": settings.new_tokens,
        "warmup": settings.warmup,
        "runs": settings.runs,
        "memory": meter.kind,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_start": load_start,
        "load_average_end": _load(),
        "command": command,
    }
    return {"meta": meta, "rows": rows}


def _overheads(runs: list[dict], oracle_runs: list[dict]) -> dict[str, float]:
    """TTFT overhead over the oracle: ratio of medians - 1 (the headline), ratio of minima - 1 (least
    disturbed by other load on the machine) and the median of run-by-run ratios - 1 (runs alternate)."""
    ttft = [r["ttft"] for r in runs]
    ref = [r["ttft"] for r in oracle_runs]
    return {
        "overhead_vs_oracle": statistics.median(ttft) / statistics.median(ref) - 1.0,
        "overhead_vs_oracle_min": min(ttft) / min(ref) - 1.0,
        "overhead_vs_oracle_paired": statistics.median(a / b for a, b in zip(ttft, ref)) - 1.0,
    }


def _stock_tokens(processor, image, prompt: str, token_id: int) -> int:
    ids = processor(images=[image], text=[prompt], return_tensors="pt")["input_ids"]
    return int((ids == token_id).sum())
