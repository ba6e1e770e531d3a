"""``hired eval --offline``: accuracy of every method at every budget on hired-tiny, offline.

hired-tiny (:mod:`hired.models.tiny_vlm`) is a LLaVA-NeXT with the real DINOv2-S/14 tower, trained with
all visual tokens on two synthetic high-resolution question families: small shapes on photos
(:mod:`hired.models.task`, "first") and one dense table of small shapes or coloured cells in one sub-image of an
otherwise plain image (:mod:`hired.models.dense`, "dense"). Dropping is applied at inference only, as in
the paper. ``--task`` picks the test questions: ``first``, ``dense`` or ``both`` (the default: every
family's figures separately and together from one run, since a method can win on one family and lose on
the other). For each registered method and budget, the test split's
questions are answered greedily in batches: each image is encoded once per method by the model's own
``get_image_features`` (patched by ``hired.apply``), and its questions go through ``model.generate`` with
those features as ``mm_encoder_outputs``, as ``hired.prepare_inputs`` does; an answer is right when it
equals the expected one exactly.

    hired eval --offline                      # 1000 questions per family, budgets 0.05 0.1 0.2 0.4 1.0
    hired eval --offline --task dense         # the dense family only
    hired eval --offline --quick              # a small subset of both families (CI)
    hired eval --offline --json out.json --plot out.png
    hired eval --offline --methods hired,spatial --budgets 0.1,0.2 --option hired:keep_newline=true
    hired eval --offline --variant keep_positions=true --variant hired:score=received
    hired eval --merge a.json b.json --json all.json --plot all.png   # one table from several runs
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from pathlib import Path

BUDGETS = (0.05, 0.1, 0.2, 0.4, 1.0)
QUICK = {"images": 4, "budgets": (0.1, 1.0)}
TASKS = ("first", "dense", "both")
FAMILIES = {
    "first": "shapes on photos (hired.models.task)",
    "dense": "dense tables of shapes or cells (hired.models.dense)",
}


def family(kind: str) -> str:
    """The question family of a question kind: ``"dense"`` (shape, cell) or ``"first"``."""
    from hired.models import dense

    return "dense" if kind in dense.KINDS else "first"


def make_split(name: str, images: int, seed: int = 0):
    """The test split of ``--task name``: ``images`` images of each family it names."""
    from hired.models import dense, task

    if name not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {name!r}")
    parts = []
    if name in ("first", "both"):
        parts.append(task.make_split("test", images, seed=seed))
    if name in ("dense", "both"):
        parts.append(dense.make_split("test", images, seed=seed))
    return parts[0] if len(parts) == 1 else dense.combine(*parts)


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
    # per question family (``"first"``, ``"dense"``): {"accuracy", "visual_tokens", "questions"}
    families: dict[str, dict] = dataclasses.field(default_factory=dict)
    # per question of the split, in its order: "1" right, "0" wrong (for paired differences: :func:`paired`)
    correct: str = ""
    # a content-adaptive budget's ``reference``, calibrated on the split's images (``hired.calibrate``)
    reference: float | None = None


def paired(a: Result, b: Result) -> tuple[float, float, int]:
    """``(difference, standard error, n)`` of ``a.accuracy - b.accuracy`` on the same questions, paired:
    the standard error of the mean of the per-question differences ``sqrt(var(d) / n)``."""
    if not a.correct or len(a.correct) != len(b.correct):
        raise ValueError(f"{a.label!r} and {b.label!r} have no per-question results on the same questions")
    d = [int(x) - int(y) for x, y in zip(a.correct, b.correct)]
    n = len(d)
    mean = sum(d) / n
    var = sum((v - mean) ** 2 for v in d) / (n - 1) if n > 1 else 0.0
    return mean, (var / n) ** 0.5, n


def by_family(results: list[Result], task: str = "both") -> dict[str, list[Result]]:
    """The rows of one family each (``accuracy``, tokens, per-kind and retention of its questions only),
    and under ``"both"`` the rows as they are (every question). A run of one family (``task`` ``"first"`` or
    ``"dense"``, or rows without per-family figures, as in JSON written before the dense family existed)
    gives ``{task: results}``."""
    if task != "both" or not any(r.families for r in results):
        return {task: results}
    out: dict[str, list[Result]] = {}
    for name in FAMILIES:
        rows = []
        for r in results:
            figures = r.families.get(name)
            if figures is None:
                continue
            # a "both" split holds the first family's questions, then the dense family's (dense.combine)
            start = 0 if name == "first" else r.families.get("first", {}).get("questions", 0)
            correct = r.correct[start : start + figures["questions"]] if r.correct else ""
            rows.append(
                Result(
                    r.label,
                    r.budget,
                    figures["accuracy"],
                    {k: v for k, v in r.by_kind.items() if family(k) == name},
                    figures["visual_tokens"],
                    r.seconds,
                    None,
                    {name: figures},
                    correct,
                )
            )
        full = next((r.accuracy for r in rows if r.label == "all tokens"), None)
        for r in rows:
            if full and r.accuracy is not None:
                r.retention = r.accuracy / full
        out[name] = rows
    out["both"] = results
    return out


def configs(
    budgets=BUDGETS,
    methods: list[str] | None = None,
    options: dict[str, dict] | None = None,
    variants: list[dict[str, dict]] | None = None,
) -> list[Config]:
    """All tokens, then every registered method at every budget, HiRED's reference mapping, and the
    adaptive form of every method that has one. ``options``: method name → more options of that method.
    ``variants``: each a method name → options map; every method it names runs again with those options
    too, its rows labelled ``"name (key=value, ...)"``, so one run compares a method with and without."""
    import hired

    names = list(hired.list_methods()) if methods is None else methods
    unknown = sorted(set(names) - set(hired.list_methods()))
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; available: {', '.join(hired.list_methods())}")
    options = options or {}
    out = [Config("all tokens", None, None)]
    for name in names:
        runs = [("", dict(options.get(name, {})))]
        for variant in variants or []:
            if variant.get(name):
                suffix = ", ".join(f"{k}={v}" for k, v in variant[name].items())
                runs.append((suffix, {**options.get(name, {}), **variant[name]}))
        for suffix, extra in runs:
            out += _method_configs(name, budgets, extra, suffix)
    return out


def _method_configs(name: str, budgets, extra: dict, suffix: str) -> list[Config]:
    """One method's rows: every budget, HiRED's reference mapping, and its adaptive form if it has one."""
    import hired

    def label(base: str, note: str = "") -> str:
        notes = ", ".join(n for n in (note, suffix) if n)
        return f"{base} ({notes})" if notes else base

    out = [Config(label(name), hired.get_method(name, **{**extra, "budget": b}), b) for b in budgets]
    if name == "hired":
        out += [
            Config(
                label(name, "reference mapping"),
                hired.get_method(name, **{**extra, "budget": b, "mapping": "reference"}),
                b,
            )
            for b in budgets
        ]
    try:
        adaptive = hired.get_method(name, **{**extra, "budget": None})
    except (TypeError, ValueError):
        return out
    if getattr(adaptive, "adaptive", False):
        out.append(Config(label(name, "adaptive"), adaptive, None))
    return out


def answer(
    model, processor, images: list, questions: list[list[str]], check_count: bool = False, max_new_tokens: int = 4
) -> tuple[list[list[str]], list[int]]:
    """Greedy answers to ``questions[i]`` about ``images[i]``, and the visual tokens of each image.

    Each image is encoded once by the model's own ``get_image_features`` (patched by ``hired.apply``, if
    applied); all its questions then go through ``model.generate`` with those features as
    ``mm_encoder_outputs`` and as many ``<image>`` placeholders as were kept, as ``hired.prepare_inputs``
    does. ``check_count``: also check that the processor promises that count (fixed-count methods).
    """
    import torch
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    from hired.models.tiny_vlm import IMAGE_TOKEN, prompt

    pixels = processor.image_processor(images, return_tensors="pt")
    with torch.inference_mode():
        encoded = model.model.get_image_features(
            pixel_values=pixels["pixel_values"], image_sizes=pixels["image_sizes"], return_dict=True
        )
    counts = [len(f) for f in encoded.pooler_output]
    if check_count:
        promised = processor(images=images, text=[prompt("?")] * len(images), return_tensors="pt", padding=True)
        promised = (promised["input_ids"] == model.config.image_token_id).sum(-1).tolist()
        if promised != counts:
            raise RuntimeError(f"the processor promised {promised} image tokens, the model produced {counts}")
    owner = [i for i, qs in enumerate(questions) for _ in qs]
    texts = [prompt(q).replace(IMAGE_TOKEN, IMAGE_TOKEN * counts[i]) for i, qs in enumerate(questions) for q in qs]
    inputs = processor.tokenizer(texts, return_tensors="pt", padding=True)
    mm = BaseModelOutputWithPooling(pooler_output=[encoded.pooler_output[i] for i in owner])
    with torch.inference_mode():
        out = model.generate(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            mm_encoder_outputs={"image": mm},
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=processor.tokenizer.pad_token_id,
        )
    flat = [a.strip() for a in processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)]
    grouped, at = [], 0
    for qs in questions:
        grouped.append(flat[at : at + len(qs)])
        at += len(qs)
    return grouped, counts


def evaluate(
    model, processor, split, cfgs: list[Config], batch_size: int = 16, max_new_tokens: int = 4, progress: bool = True
) -> list[Result]:
    """Greedy exact-match accuracy of every config on every question of ``split`` (see :func:`answer`).

    A batch holds all questions of ``batch_size // questions per image`` images; for fixed-count methods
    the first batch also checks the processor's promised count against the model's. A content-adaptive
    budget (``HiRED(adapt=...)``) is first calibrated on the split's images (:func:`hired.calibrate`), so
    that its mean count is the fixed budget's; the reference it got is in ``Result.reference``.
    """
    from tqdm.auto import tqdm

    import hired

    by_image: dict[int, list] = defaultdict(list)
    position = {}
    for at, q in enumerate(split.questions):
        by_image[q.image].append(q)
        position[id(q)] = at
    order = sorted(by_image)
    per_batch = max(1, batch_size // max(len(v) for v in by_image.values()))
    images = {i: split.image(i) for i in order}
    bar = tqdm(total=len(split.questions) * len(cfgs), desc="hired eval", unit="q", disable=not progress)
    results = []
    for cfg in cfgs:
        result = Result(cfg.label, cfg.budget)
        results.append(result)
        if hired.applied_method(model) is not None:
            hired.remove(model, processor)
        method = cfg.method
        if method is not None and method.reads_pixels():  # same mean count as the fixed budget, on these images
            method = hired.calibrate(model, processor, [images[i] for i in order], method)
            result.reference = method.reference
        if method is not None:
            hired.apply(model, processor, method)
        bar.set_postfix_str(f"{cfg.label} {'' if cfg.budget is None else cfg.budget}")
        right, tokens, kinds = 0, 0, defaultdict(list)
        families: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # right, tokens, questions
        correct = ["0"] * len(split.questions)
        start = time.perf_counter()
        for s in range(0, len(order), per_batch):
            ids = order[s : s + per_batch]
            got, counts = answer(
                model,
                processor,
                [images[i] for i in ids],
                [[q.question for q in by_image[i]] for i in ids],
                check_count=s == 0 and not cfg.adaptive,
                max_new_tokens=max_new_tokens,
            )
            for i, replies, count in zip(ids, got, counts):
                for q, reply in zip(by_image[i], replies):
                    ok = reply == q.answer
                    right += ok
                    kinds[q.kind].append(ok)
                    tokens += count
                    figures = families[family(q.kind)]
                    figures[0] += ok
                    figures[1] += count
                    figures[2] += 1
                    correct[position[id(q)]] = "1" if ok else "0"
            bar.update(sum(len(by_image[i]) for i in ids))
        result.seconds = time.perf_counter() - start
        result.accuracy = right / len(split.questions)
        result.by_kind = {k: sum(v) / len(v) for k, v in sorted(kinds.items())}
        result.visual_tokens = tokens / len(split.questions)
        result.correct = "".join(correct)
        result.families = {
            name: {"accuracy": r / n, "visual_tokens": t / n, "questions": n}
            for name, (r, t, n) in sorted(families.items())
        }
    bar.close()
    if hired.applied_method(model) is not None:
        hired.remove(model, processor)
    full = next((r.accuracy for r in results if r.label == "all tokens"), None)
    for r in results:
        if full and r.accuracy is not None:
            r.retention = r.accuracy / full
    return results


def comparison(results: list[Result], base: str, variant: str, task: str = "both") -> str:
    """A Markdown table of the rows labelled ``variant`` against those labelled ``base`` at every budget of
    ``base``, per family and (for a ``"both"`` run) together: mean visual tokens per question, accuracy, and
    the paired difference ``variant - base`` with its standard error over the same questions."""
    groups = by_family(results, task)
    names = [n for n in (*FAMILIES, "both") if n in groups] if task == "both" else [task]
    lines = [
        "| budget | questions | visual tokens, base / variant | accuracy, base | variant | variant − base ± SE |",
        "|---|---|---|---|---|---|",
    ]
    budgets = sorted({r.budget for r in results if r.label == base and r.budget is not None})
    for b in budgets:
        for name in names:
            rows = {r.label: r for r in groups[name] if r.budget == b}
            if base not in rows or variant not in rows:
                raise ValueError(f"no rows {base!r} and {variant!r} at budget {b:g}")
            a, v = rows[base], rows[variant]
            diff, se, n = paired(v, a)
            lines.append(
                f"| {b:g} | {'together' if name == 'both' else name} ({n}) | {a.visual_tokens:.1f} / "
                f"{v.visual_tokens:.1f} | {a.accuracy:.3f} | {v.accuracy:.3f} | {diff:+.3f} ± {se:.3f} |"
            )
    return "\n".join(lines)


def markdown(results: list[Result], budgets=BUDGETS) -> str:
    """Accuracy (retention = accuracy / all-token accuracy) per method and budget, as a Markdown table."""
    full = next(r for r in results if r.label == "all tokens")
    head = "| method | " + " | ".join(f"{b:g}" for b in budgets) + " |"
    lines = [
        f"All tokens: accuracy {full.accuracy:.3f} ({full.visual_tokens:.0f} visual tokens per question on average)",
        "",
        "Accuracy (retention) per budget:",
        "",
        head,
        "|---" * (len(budgets) + 1) + "|",
    ]
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
        lines.append(
            "| *visual tokens (hired)* | " + " | ".join("—" if t is None else f"{t:.0f}" for t in tokens) + " |"
        )
    at = 0.2 if 0.2 in budgets else min((b for b in budgets if b < 1), default=None)
    kinds = sorted({k for r in results for k in r.by_kind})
    if at is not None and kinds:
        lines += [
            "",
            f"Accuracy per question kind, all tokens and every method at budget {at:g}:",
            "",
            "| method | " + " | ".join(kinds) + " |",
            "|---" * (len(kinds) + 1) + "|",
        ]
        for r in [full, *(r for r in results if r.budget == at)]:
            lines.append(f"| {r.label} | " + " | ".join(f"{r.by_kind.get(k, float('nan')):.2f}" for k in kinds) + " |")
    extra = [r for r in results if r.budget is None and r.label != "all tokens"]
    if extra:
        lines += ["", "Adaptive token count:", ""]
        for r in extra:
            lines.append(
                f"- {r.label}: accuracy {r.accuracy:.3f} (retention {r.retention:.2f}), "
                f"{r.visual_tokens:.0f} visual tokens per question on average "
                f"({r.visual_tokens / full.visual_tokens:.0%} of all)"
            )
    return "\n".join(lines)


def plot(results: list[Result], path: str | Path, budgets=BUDGETS, title: str | None = None) -> Path:
    """Accuracy against budget, one line per method, all tokens as a dashed line; rows run with
    ``keep_positions=True`` get a second panel, in the same colour as their packed row."""
    from hired.viz import matplotlib_classes

    Figure, FigureCanvasAgg, _, _ = matplotlib_classes()
    full = next(r for r in results if r.label == "all tokens")
    lines: dict[str, list] = {}
    for r in results:
        if r.budget is not None and r.accuracy is not None and r.label != "all tokens":
            lines.setdefault(r.label, []).append((r.budget, r.accuracy))
    note = "keep_positions=True"

    def base(label: str) -> str:
        return label.replace(f", {note}", "").replace(f" ({note})", "")

    panels = [("packed positions (as the paper)", [line for line in lines if note not in line])]
    if any(note in line for line in lines):
        panels.append((note, [line for line in lines if note in line]))
    from hired.eval.style import styles as line_styles

    styles = line_styles(base(line) for line in lines)  # one colour and marker per method, HiRED on top
    fig = Figure(figsize=(6.5 * len(panels) + 3.0, 4.8), dpi=110)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, len(panels), i + 1) for i in range(len(panels))]
    for ax, (heading, labels) in zip(axes, panels):
        for label in labels:
            xs, ys = zip(*sorted(lines[label]))
            key = base(label)
            ax.plot(xs, ys, label=key, **styles[key])
        ax.axhline(full.accuracy, color="black", linestyle="--", linewidth=1, label="all tokens")
        ax.set_xscale("log")
        ax.set_xticks(list(budgets), [f"{b:g}" for b in budgets])
        ax.minorticks_off()  # a log axis labels minor ticks (3e-1) where the budgets leave a decade open
        ax.set_xlabel("budget (share of visual tokens kept)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.set_title(heading, fontsize=10)
    handles, names = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    fig.legend(handles, names, loc="center right", fontsize=7)
    fig.suptitle(title or "hired-tiny (DINOv2-S/14), synthetic high-resolution questions", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1 - 2.9 / (6.5 * len(panels) + 3.0), 1))
    path = Path(path)
    fig.savefig(path)
    return path


def combine(payloads: list[dict]) -> tuple[list[Result], list[float]]:
    """The results of several ``hired eval --offline --json`` runs on the same questions as one list: rows
    of a run that set ``--option``s get them in their label (``"hired (keep_positions=True)"``, as
    ``--variant`` rows are labelled), the runs' "all tokens" rows must agree and are kept once, and the
    rows are sorted by label. Returns the results and the union of the budgets."""
    first = payloads[0]
    for payload in payloads[1:]:
        if task_of(payload) != task_of(first):
            raise ValueError(f"the runs differ in task: {task_of(first)!r} and {task_of(payload)!r}")
        for key in ("questions", "seed", "model"):
            if payload.get(key) != first.get(key):
                raise ValueError(f"the runs differ in {key}: {first.get(key)!r} and {payload.get(key)!r}")
    full, rows = None, {}
    for payload in payloads:
        options = payload.get("options") or {}
        for row in payload["results"]:
            result = Result(**row)
            if result.label == "all tokens":
                if full is not None and full.accuracy != result.accuracy:
                    raise ValueError(f"the runs' all-token accuracies differ: {full.accuracy} and {result.accuracy}")
                full = full or result
                continue
            name, _, note = result.label.partition(" (")
            extra = ", ".join(f"{k}={v}" for k, v in (options.get(name) or {}).items())
            if extra:
                notes = ", ".join(n for n in (note.rstrip(")"), extra) if n)
                result.label = f"{name} ({notes})"
            key = (result.label, result.budget)
            if key in rows:
                raise ValueError(f"two runs hold {result.label!r} at budget {result.budget}")
            rows[key] = result
    if full is None:
        raise ValueError("no run holds the all-tokens row")
    ordered = sorted(rows.values(), key=lambda r: (r.label, -1 if r.budget is None else r.budget))
    budgets = sorted({b for p in payloads for b in p["budgets"]})
    return [full, *ordered], budgets


def task_of(payload: dict) -> str:
    """The ``--task`` of a run's JSON (runs written before the dense family existed: ``"first"``)."""
    return payload.get("task", "first")


def report(results: list[Result], budgets, task: str, questions: dict[str, int] | None = None) -> str:
    """The Markdown of a run: one section per family and one of both together (``task`` ``"both"``), else
    the table of the one family."""
    views = by_family(results, task)
    if len(views) == 1:
        parts = [markdown(results, budgets), ""]
    else:
        parts = []
        for name, rows in views.items():
            head = "Both families together" if name == "both" else f"Family {name!r}: {FAMILIES[name]}"
            n = (questions or {}).get(name)
            parts += [f"### {head}" + (f", {n} questions" if n else ""), "", markdown(rows, budgets), ""]
    for base, variant in adaptive_pairs(results):
        parts += [f"Variant `{variant}` against base `{base}` (paired over the same questions):", ""]
        parts += [comparison(results, base, variant, task), ""]
    return "\n".join(parts).rstrip()


def adaptive_pairs(results: list[Result]) -> list[tuple[str, str]]:
    """``(base, variant)`` labels of every row with a content-adaptive budget (a label noting ``adapt=`` not
    0) whose fixed row (the same label without that note) is in ``results``, in order."""
    labels = list(dict.fromkeys(r.label for r in results))
    out = []
    for label in labels:
        name, _, notes = label.partition(" (")
        kept = [n for n in notes.rstrip(")").split(", ") if n] if notes else []
        adapt = [n for n in kept if n.startswith("adapt=")]
        if not adapt or float(adapt[0].split("=", 1)[1]) == 0:
            continue
        rest = [n for n in kept if n != adapt[0]]
        base = f"{name} ({', '.join(rest)})" if rest else name
        if base in labels:
            out.append((base, label))
    return out


def plots(results: list[Result], path: str | Path, budgets, task: str) -> list[Path]:
    """The figure of a run at ``path``; with ``task`` ``"both"`` that of both families together there and one
    per family beside it (``NAME-first.png``, ``NAME-dense.png``)."""
    path = Path(path)
    out = []
    for name, rows in by_family(results, task).items():
        where = path if name in ("both", task) else path.with_name(f"{path.stem}-{name}{path.suffix}")
        title = "hired-tiny (DINOv2-S/14): " + ("both question families" if name == "both" else FAMILIES[name])
        out.append(plot(rows, where, budgets, title))
    return out


def family_counts(results: list[Result]) -> dict[str, int]:
    """Questions per family (from the all-tokens row) and in all."""
    full = next((r for r in results if r.label == "all tokens"), None)
    counts = {k: v["questions"] for k, v in (full.families if full else {}).items()}
    if counts:
        counts["both"] = sum(counts.values())
    return counts


def machine() -> str:
    """The CPU model (Linux ``/proc/cpuinfo``) or ``platform`` facts, and the number of cores."""
    import os

    from hired.machine import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} cores"
