"""``hired report``: lmms-eval output folders → one Markdown table, each score with its retention vs the full model.

Every ``*_results.json`` found under the given folders is one run. A run's row label comes from its
``--model_args``: ``full`` for ``method=none``/``full``, else the method and its options
(``hired alpha=0.5 budget=0.2``); runs of other lmms-eval models are labelled with the model's name.
Retention is ``score / score of the full run`` of the same ``pretrained`` model, in percent. The visual
tokens column is the mean, over the run's tasks, of the mean tokens the language model received per
sample (read from the results file, or from ``--log_samples`` files), and its share of the stock count.

Needs nothing but the standard library.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

# task -> (metric, scale, column title): the figures the HiRED paper's table reports
PAPER_METRICS: dict[str, tuple[str, float, str]] = {
    "vqav2_val": ("exact_match", 100.0, "VQAv2"),
    "scienceqa_img": ("exact_match", 100.0, "SQA-img"),
    "textvqa_val": ("exact_match", 100.0, "TextVQA"),
    "docvqa_val": ("anls", 100.0, "DocVQA"),
    "ocrbench": ("ocrbench_accuracy", 1000.0, "OCRBench"),
    "mme": ("mme_perception_score", 1.0, "MME"),
    "pope": ("pope_f1_score", 100.0, "POPE"),
    "chartqa": ("relaxed_overall", 100.0, "ChartQA"),
}
#: model arguments of ``hired_llava`` that are not options of the method
MODEL_KEYS = {
    "pretrained", "method", "device", "dtype", "batch_size", "max_batch_size",
    "attn_implementation", "revision", "max_new_tokens",
}  # fmt: skip
STOCK = ("none", "full")


@dataclass
class Run:
    """One lmms-eval results file."""

    path: Path
    label: str
    model: str
    date: str
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> metric -> value
    tokens: dict[str, tuple[float, float]] = field(default_factory=dict)  # task -> (mean kept, mean stock)


def parse_model_args(model_args) -> dict[str, str]:
    """``"a=1,b=x"`` (or a dict) → ``{"a": "1", "b": "x"}``."""
    if isinstance(model_args, dict):
        return {str(k): str(v) for k, v in model_args.items()}
    out = {}
    for item in str(model_args or "").split(","):
        key, sep, value = item.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def run_label(model: str, args: dict[str, str]) -> str:
    """``full``, ``hired alpha=0.5 budget=0.2``, or the lmms-eval model name for other models."""
    if model != "hired_llava":
        return model
    method = args.get("method", "hired").strip().lower()
    if method in STOCK:
        return "full"
    options = " ".join(f"{k}={v}" for k, v in sorted(args.items()) if k not in MODEL_KEYS)
    return f"{method} {options}".strip()


def _metrics(task_results: dict) -> dict[str, float]:
    """``{"exact_match": 0.61, ...}`` from lmms-eval's ``{"exact_match,none": 0.61, "alias": ...}``."""
    out = {}
    for key, value in task_results.items():
        name, _, _filter = key.partition(",")
        if name == "alias" or "_stderr" in name or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        out.setdefault(name, float(value))
    return out


def _sample_tokens(results_file: Path, task: str) -> tuple[float, float] | None:
    """Mean ``(visual_tokens, visual_tokens_stock)`` over the logged samples of ``task`` next to the results."""
    stem = results_file.name[: -len("_results.json")]
    path = results_file.with_name(f"{stem}_samples_{task}.jsonl")
    if not path.is_file():
        return None
    kept = stock = n = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        counts = [c for c in json.loads(line).get("token_counts") or [] if isinstance(c, dict)]
        if not counts or "visual_tokens" not in counts[0]:
            continue
        kept += counts[0]["visual_tokens"]
        stock += counts[0].get("visual_tokens_stock", counts[0]["visual_tokens"])
        n += 1
    return (kept / n, stock / n) if n else None


def load_run(path: Path) -> Run:
    """Read one ``*_results.json`` written by lmms-eval 0.7."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable lmms-eval results file ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ValueError(f"{path}: no 'results' block; is it an lmms-eval results file?")
    config = data.get("config") or {}
    model = str(config.get("model") or data.get("model_source") or "?")
    args = parse_model_args(config.get("model_args"))
    run = Run(
        path=path,
        label=run_label(model, args),
        model=args.get("pretrained", str(data.get("model_name") or model)),
        date=str(data.get("date") or path.name),
    )
    throughput = data.get("throughput") or {}
    for task, values in data["results"].items():
        metrics = _metrics(values) if isinstance(values, dict) else {}
        if not metrics:
            continue
        run.scores[task] = metrics
        kept = throughput.get(f"avg_visual_tokens_kept/{task}")
        stock = throughput.get(f"avg_visual_tokens_stock/{task}")
        if isinstance(kept, (int, float)) and isinstance(stock, (int, float)):
            run.tokens[task] = (float(kept), float(stock))
        else:
            from_samples = _sample_tokens(path, task)
            if from_samples is not None:
                run.tokens[task] = from_samples
    return run


def find_runs(paths: list[str | Path]) -> list[Run]:
    """Every results file under ``paths`` (files or folders, searched recursively)."""
    files = []
    for p in map(Path, paths):
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files.extend(sorted(p.rglob("*_results.json")))
        else:
            raise ValueError(f"{p}: no such file or folder")
    if not files:
        raise ValueError(f"no lmms-eval results (*_results.json) under {', '.join(map(str, paths))}")
    return [load_run(f) for f in files]


def parse_metric_overrides(items: list[str] | None) -> dict[str, tuple[str, float]]:
    """``["pope=pope_accuracy*100"]`` → ``{"pope": ("pope_accuracy", 100.0)}``."""
    out = {}
    for item in items or []:
        task, sep, rest = item.partition("=")
        metric, star, scale = rest.partition("*")
        if not sep or not task.strip() or not metric.strip():
            raise ValueError(f"--metric expects TASK=METRIC or TASK=METRIC*SCALE, got {item!r}")
        try:
            factor = float(scale) if star else 1.0
        except ValueError:
            raise ValueError(f"--metric scale must be a number, got {scale!r} in {item!r}") from None
        out[task.strip()] = (metric.strip(), factor)
    return out


def _fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


def build_table(runs: list[Run], baseline: str = "full", metrics: dict[str, tuple[str, float]] | None = None) -> str:
    """The Markdown table: one row per (model, label), one column per task, cells ``score (retention)``."""
    overrides = metrics or {}
    # newest run wins for each (model, label, task)
    cells: dict[tuple[str, str], dict[str, tuple[dict[str, float], tuple[float, float] | None, str]]] = {}
    for run in sorted(runs, key=lambda r: r.date):
        row = cells.setdefault((run.model, run.label), {})
        for task, values in run.scores.items():
            row[task] = (values, run.tokens.get(task), run.date)
    all_tasks = {t for row in cells.values() for t in row}
    order = [t for t in PAPER_METRICS if t in all_tasks] + sorted(all_tasks - set(PAPER_METRICS))

    def metric_for(task: str, values: dict[str, float]) -> tuple[str, float]:
        if task in overrides:
            return overrides[task]
        if task in PAPER_METRICS:
            return PAPER_METRICS[task][:2]
        return sorted(values)[0], 1.0

    def score(task: str, values: dict[str, float]) -> float:
        metric, scale = metric_for(task, values)
        if metric not in values:
            raise ValueError(f"task {task} has no metric {metric!r}; it has {', '.join(sorted(values))}")
        return values[metric] * scale

    models = sorted({m for m, _ in cells})
    multi_model = len(models) > 1
    header = ["method"] + (["model"] if multi_model else []) + ["visual tokens"]
    header += [PAPER_METRICS[t][2] if t in PAPER_METRICS and t not in overrides else t for t in order]
    header.append("mean retention")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in models:
        base = cells.get((model, baseline), {})
        labels = sorted((lab for m, lab in cells if m == model), key=lambda lab: (lab != baseline, lab))
        for label in labels:
            row = cells[(model, label)]
            out = [label] + ([model] if multi_model else [])
            toks = [tok for values, tok, _ in row.values() if tok is not None]
            if toks:
                kept = sum(k for k, _ in toks) / len(toks)
                stock = sum(s for _, s in toks) / len(toks)
                out.append(f"{kept:.0f} ({100 * kept / stock:.0f}%)" if stock else f"{kept:.0f}")
            else:
                out.append("–")
            retentions = []
            for task in order:
                if task not in row:
                    out.append("–")
                    continue
                value = score(task, row[task][0])
                ref = score(task, base[task][0]) if task in base else None
                if ref:
                    retentions.append(100 * value / ref)
                    out.append(f"{_fmt(value)} ({retentions[-1]:.1f}%)")
                else:
                    out.append(_fmt(value))
            out.append(f"{sum(retentions) / len(retentions):.1f}%" if retentions else "–")
            lines.append("| " + " | ".join(out) + " |")
    used = []
    for task in order:
        values = next(row[task][0] for row in cells.values() if task in row)
        metric, scale = metric_for(task, values)
        used.append(f"{task}: {metric}" + (f" x {scale:g}" if scale != 1 else ""))
    lines.append("")
    lines.append(
        f"Cells: score (retention vs `{baseline}` of the same model). Visual tokens: mean per sample over "
        "the tasks (share of the stock count). Metrics: " + "; ".join(used) + "."
    )
    if not any(lab == baseline for _, lab in cells):
        lines.append(
            f"No `{baseline}` run found, so no retention; labels: {', '.join(sorted({lab for _, lab in cells}))}."
        )
    return "\n".join(lines) + "\n"
