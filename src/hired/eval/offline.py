"""``hired eval --offline``: accuracy of every method at every budget on hired-tiny, offline.

hired-tiny (:mod:`hired.models.tiny_vlm`) is a LLaVA-NeXT with the real DINOv2-S/14 tower, trained with
all visual tokens on the synthetic high-resolution question task (:mod:`hired.models.task`). Dropping is
applied at inference only, as in the paper. For each registered method and budget, the test split's
questions are answered greedily in batches through ``model.generate(**processor(...))`` (adaptive
methods through ``hired.prepare_inputs``); an answer is right when it equals the expected one exactly.

    hired eval --offline                      # 1000 questions, budgets 0.05 0.1 0.2 0.4 1.0
    hired eval --offline --quick              # a small subset (CI)
    hired eval --offline --json out.json --plot out.png
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

BUDGETS = (0.05, 0.1, 0.2, 0.4, 1.0)
QUICK = {"images": 4, "budgets": (0.1, 1.0)}


@dataclasses.dataclass
class Config:
    """One row of the benchmark: a method (``None`` = all tokens) under a label."""

    label: str
    method: object | None
    budget: float | None

    @property
    def adaptive(self) -> bool:
        return bool(getattr(self.method, "adaptive", False))


@dataclasses.dataclass
class Result:
    label: str
    budget: float | None
    accuracy: float | None = None
    by_kind: dict[str, float] = dataclasses.field(default_factory=dict)
    visual_tokens: float | None = None  # mean <image> tokens per question
    seconds: float = 0.0
    retention: float | None = None
    skipped: str | None = None


def configs(budgets=BUDGETS, methods: list[str] | None = None) -> list[Config]:
    """All tokens, then every registered method at every budget, HiRED's reference mapping, and the
    adaptive form of every method that has one (listed as skipped when ``hired.prepare_inputs`` is missing)."""
    import hired

    names = list(hired.list_methods()) if methods is None else methods
    unknown = sorted(set(names) - set(hired.list_methods()))
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; available: {', '.join(hired.list_methods())}")
    out = [Config("all tokens", None, None)]
    for name in names:
        for budget in budgets:
            out.append(Config(name, hired.get_method(name, budget=budget), budget))
        if name == "hired":
            for budget in budgets:
                out.append(Config("hired (reference mapping)", hired.get_method(name, budget=budget, mapping="reference"), budget))
        try:
            adaptive = hired.get_method(name, budget=None)
        except (TypeError, ValueError):
            continue
        if getattr(adaptive, "adaptive", False):
            out.append(Config(f"{name} (adaptive)", adaptive, None))
    return out


def evaluate(model, processor, split, cfgs: list[Config], batch_size: int = 16, max_new_tokens: int = 4,
             progress: bool = True) -> list[Result]:
    """Greedy exact-match accuracy of every config on every question of ``split``."""
    import torch
    from tqdm.auto import tqdm

    import hired
    from hired.models.tiny_vlm import prompt

    images = {}
    questions = split.questions
    total = sum(len(questions) for c in cfgs)
    bar = tqdm(total=total, desc="hired eval", unit="q", disable=not progress)
    results = []
    for cfg in cfgs:
        result = Result(cfg.label, cfg.budget)
        results.append(result)
        if cfg.adaptive and not hasattr(hired, "prepare_inputs"):
            result.skipped = "adaptive token count: needs hired.prepare_inputs"
            bar.update(len(questions))
            continue
        if hired.applied_method(model) is not None:
            hired.remove(model, processor)
        if cfg.method is not None:
            hired.apply(model, processor, cfg.method)
        bar.set_postfix_str(f"{cfg.label} {'' if cfg.budget is None else cfg.budget}")
        right, tokens, kinds = 0, 0, defaultdict(list)
        start = time.perf_counter()
        for s in range(0, len(questions), batch_size):
            chunk = questions[s : s + batch_size]
            batch_images = [images.setdefault(q.image, split.image(q.image)) for q in chunk]
            texts = [prompt(q.question) for q in chunk]
            kwargs = dict(images=batch_images, text=texts, return_tensors="pt", padding=True)
            if cfg.adaptive:
                inputs = hired.prepare_inputs(model, processor, **kwargs)
            else:
                inputs = processor(**kwargs)
            tokens += int((inputs["input_ids"] == model.config.image_token_id).sum())
            with torch.inference_mode():
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=processor.tokenizer.pad_token_id)
            answers = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for q, a in zip(chunk, answers):
                ok = a.strip() == q.answer
                right += ok
                kinds[q.kind].append(ok)
            bar.update(len(chunk))
        result.seconds = time.perf_counter() - start
        result.accuracy = right / len(questions)
        result.by_kind = {k: sum(v) / len(v) for k, v in sorted(kinds.items())}
        result.visual_tokens = tokens / len(questions)
    bar.close()
    if hired.applied_method(model) is not None:
        hired.remove(model, processor)
    full = next((r.accuracy for r in results if r.label == "all tokens"), None)
    for r in results:
        if full and r.accuracy is not None:
            r.retention = r.accuracy / full
    return results


def markdown(results: list[Result], budgets=BUDGETS) -> str:
    """Accuracy (retention = accuracy / all-token accuracy) per method and budget, as a Markdown table."""
    full = next(r for r in results if r.label == "all tokens")
    head = "| method | " + " | ".join(f"{b:g}" for b in budgets) + " |"
    lines = [f"All tokens: accuracy {full.accuracy:.3f} ({full.visual_tokens:.0f} visual tokens per question on average)",
             "", "Accuracy (retention) per budget:", "", head, "|---" * (len(budgets) + 1) + "|"]
    rows: dict[str, dict] = {}
    for r in results:
        if r.label != "all tokens" and r.budget is not None:
            rows.setdefault(r.label, {})[r.budget] = r
    for label, cells in rows.items():
        text = []
        for b in budgets:
            r = cells.get(b)
            text.append("—" if r is None or r.accuracy is None else f"{r.accuracy:.3f} ({r.retention:.2f})")
        lines.append(f"| {label} | " + " | ".join(text) + " |")
    tokens = [next((r.visual_tokens for r in results if r.budget == b and r.label == "hired"), None) for b in budgets]
    if any(t is not None for t in tokens):
        lines.append("| *visual tokens (hired)* | " + " | ".join("—" if t is None else f"{t:.0f}" for t in tokens) + " |")
    extra = [r for r in results if r.budget is None and r.label != "all tokens"]
    if extra:
        lines += ["", "Adaptive token count:", ""]
        for r in extra:
            if r.skipped:
                lines.append(f"- {r.label}: skipped ({r.skipped})")
            else:
                lines.append(f"- {r.label}: accuracy {r.accuracy:.3f} (retention {r.retention:.2f}), "
                             f"{r.visual_tokens:.0f} visual tokens per question on average "
                             f"({r.visual_tokens / full.visual_tokens:.0%} of all)")
    return "\n".join(lines)


def plot(results: list[Result], path: str | Path, budgets=BUDGETS) -> Path:
    """Accuracy against budget, one line per method, all tokens as a dashed line."""
    from hired.viz import _matplotlib

    Figure, FigureCanvasAgg, _, _ = _matplotlib()
    fig = Figure(figsize=(7, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    full = next(r for r in results if r.label == "all tokens")
    lines: dict[str, list] = {}
    for r in results:
        if r.budget is not None and r.accuracy is not None and r.label != "all tokens":
            lines.setdefault(r.label, []).append((r.budget, r.accuracy))
    for label, points in lines.items():
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=label)
    ax.axhline(full.accuracy, color="black", linestyle="--", linewidth=1, label="all tokens")
    ax.set_xscale("log")
    ax.set_xticks(list(budgets), [f"{b:g}" for b in budgets])
    ax.set_xlabel("budget (share of visual tokens kept)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("hired-tiny (DINOv2-S/14), synthetic high-resolution questions")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def machine() -> str:
    """The CPU model (Linux ``/proc/cpuinfo``) or ``platform`` facts, and the number of cores."""
    import os

    from hired.machine import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} cores"


def cmd_eval(args) -> int:
    import torch

    from hired.models import task
    from hired.models.tiny_vlm import load_hired_tiny

    if not args.offline:
        raise SystemExit("hired eval: only --offline is available here (lmms-eval tasks: see the README)")
    if args.threads:
        torch.set_num_threads(args.threads)
    budgets = tuple(args.budgets) if args.budgets else (QUICK["budgets"] if args.quick else BUDGETS)
    for b in budgets:
        if not 0 < b <= 1:
            raise SystemExit(f"hired eval: budget must be in (0, 1], got {b}")
    images = args.images or (QUICK["images"] if args.quick else 250)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    try:
        cfgs = configs(budgets, methods)
    except ValueError as err:
        raise SystemExit(f"hired eval: {err}") from None
    split = task.make_split("test", images, seed=args.seed)
    model, processor = load_hired_tiny(args.model)
    started = datetime.now(timezone.utc)
    results = evaluate(model, processor, split, cfgs, batch_size=args.batch_size, progress=not args.no_progress)
    print(f"hired-tiny, {len(split.questions)} test questions (seed {args.seed}), {machine()}, "
          f"{torch.get_num_threads()} torch threads, {started:%Y-%m-%d %H:%M} UTC\n")
    print(markdown(results, budgets))
    if args.json:
        payload = {
            "model": str(args.model or "hired-tiny (packaged)"),
            "questions": len(split.questions),
            "seed": args.seed,
            "budgets": list(budgets),
            "date": started.isoformat(timespec="seconds"),
            "machine": machine(),
            "threads": torch.get_num_threads(),
            "results": [dataclasses.asdict(r) for r in results],
        }
        Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    if args.plot:
        print(f"wrote {plot(results, args.plot, budgets)}")
    return 0


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="accuracy of every method vs budget on hired-tiny (--offline)")
    p.add_argument("--offline", action="store_true", help="the offline benchmark on hired-tiny (required)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK['images'] * 4} questions, budgets "
                   f"{' '.join(map(str, QUICK['budgets']))} (CI)")
    p.add_argument("--images", type=int, default=None, help="test images, 4 questions each (default 250)")
    p.add_argument("--budgets", type=float, nargs="+", default=None, help="default 0.05 0.1 0.2 0.4 1.0")
    p.add_argument("--methods", default=None, help="comma-separated method names (default: all registered)")
    p.add_argument("--seed", type=int, default=0, help="test split seed")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--model", default=None, help="a folder written by python -m hired.models.train (default: packaged)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--plot", default=None, metavar="PATH", help="accuracy vs budget figure (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)
