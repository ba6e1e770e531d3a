"""Reproduce the accuracy table of the HiRED paper (Table 3) with stock lmms-eval and ``hired_llava``.

Runs lmms-eval once per method (full model, HiRED 20% and 40%, spatial sampling 40%, PruMerge,
PruMerge+, and, beyond the paper, DivPrune, DART and the query-aware CDPruner at HiRED's 20%) on the
paper's eight tasks, each into its own folder under ``--out``, then writes
``<out>/table.md`` with ``hired report``. A run whose folder already holds a results file is skipped,
so an interrupted sweep resumes. Needs ``pip install "hired-vlm[eval]"``, GPUs and the hub (models and
datasets download on first use).

    python benchmarks/accuracy/paper_table.py --gpus 8 --out results/accuracy
    python benchmarks/accuracy/paper_table.py --dry-run            # print the commands only
    python benchmarks/accuracy/paper_table.py --only full,hired-20 --tasks textvqa_val --limit 200
    python benchmarks/accuracy/paper_table.py --model llava-next-7b --model onevision-7b --gpus 8   # both models
    python benchmarks/accuracy/paper_table.py --model qwen2.5-vl-7b --gpus 8

``--model`` takes a local folder, a hub id or a short name of ``MODELS`` (``llava-next-7b``, the paper's
LLaVA-NeXT; ``onevision-7b``, ``llava-hf/llava-onevision-qwen2-7b-ov-hf``, which needs
``pip install "hired-vlm[eval,onevision]"``: its processor imports torchvision; ``qwen2.5-vl-7b``,
``Qwen/Qwen2.5-VL-7B-Instruct``, ``pip install "hired-vlm[eval,qwen]"``, as do ``qwen3-vl-8b`` and
``qwen3.5-27b``; ``internvl3.5-8b``, ``OpenGVLab/InternVL3_5-8B-HF``, ``pip install "hired-vlm[eval,internvl]"``),
and may be repeated: every
model runs every selected run it can (a run the model's family refuses, such as PruMerge's adaptive count
on Qwen2.5-VL, is skipped with the reason; the family is known for the short names and read from a local
folder's ``config.json``), and ``hired report`` puts all rows in one table, each score's retention
taken against the full run of its own model. With one model the runs go to ``<out>/<run>``; with several,
to ``<out>/<model>/<run>`` (``<model>``: the short name, or the folder's or hub id's last part).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

MODELS = {
    "llava-next-7b": "llava-hf/llava-v1.6-vicuna-7b-hf",  # the paper's model
    "onevision-7b": "llava-hf/llava-onevision-qwen2-7b-ov-hf",  # SigLIP without [CLS]: received-attention scores
    "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",  # native-resolution ViT, M-RoPE: one grid of merged tokens
    "qwen3-vl-8b": "Qwen/Qwen3-VL-8B-Instruct",  # Qwen2.5-VL's layout plus DeepStack
    "qwen3.5-27b": "Qwen/Qwen3.5-27B",  # Qwen3-VL's tower, hybrid linear-attention decoder
    "internvl3.5-8b": "OpenGVLab/InternVL3_5-8B-HF",  # tiles plus a thumbnail, [CLS] scores
}
FAMILIES = {
    "llava-hf/llava-v1.6-vicuna-7b-hf": "llava_next",
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": "onevision",
    "Qwen/Qwen2.5-VL-7B-Instruct": "qwen2_5_vl",
    "Qwen/Qwen3-VL-8B-Instruct": "qwen3_vl",
    "Qwen/Qwen3.5-27B": "qwen3_5",
    "OpenGVLab/InternVL3_5-8B-HF": "internvl",
}  # model → hired family, for the short names' models
MODEL = MODELS["llava-next-7b"]
ONEVISION_MODEL = MODELS["onevision-7b"]
TASKS = "scienceqa_img,vqav2_val,textvqa_val,docvqa_val,chartqa,ocrbench,mme,pope"
# run name -> hired_llava method arguments (the rows of the paper's Table 3)
RUNS = {
    "full": "method=full",
    "hired-20": "method=hired,budget=0.2,alpha=0.5",
    "hired-40": "method=hired,budget=0.4,alpha=0.5",
    "spatial-40": "method=spatial,budget=0.4",
    "prumerge": "method=prumerge,budget=none",
    "prumerge_plus": "method=prumerge_plus,budget=none",
    # not in the paper's table: the diversity methods at HiRED's 20% budget, for a like-for-like comparison
    "divprune-20": "method=divprune,budget=0.2",
    "dart-20": "method=dart,budget=0.2",
    "cdpruner-20": "method=cdpruner,budget=0.2",
}


def lmms_eval_command(
    args, name: str, method_args: str, model: str | None = None, out: Path | None = None
) -> list[str]:
    """The lmms-eval command line of one run of ``model`` (default: the first ``--model``) into ``out``
    (default ``<--out>/<name>``); ``accelerate launch`` data parallel when ``--gpus`` > 1."""
    launcher = [sys.executable, "-m", "lmms_eval"]
    if args.gpus > 1:
        launcher = ["accelerate", "launch", "--num_processes", str(args.gpus), "-m", "lmms_eval"]
    model = model or models(args)[0][1]
    out = Path(args.out) / name if out is None else out
    model_args = f"pretrained={model},{method_args},dtype={args.dtype}"
    cmd = launcher + [
        "--model", "hired_llava",
        "--model_args", model_args,
        "--tasks", args.tasks,
        "--batch_size", str(args.batch_size),
        "--log_samples",
        "--output_path", str(out),
    ]  # fmt: skip
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    if args.include_path:
        cmd += ["--include_path", args.include_path]
    return cmd


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="MODEL",
        help=f"LLaVA-NeXT, LLaVA-1.5, LLaVA-OneVision or Qwen2.5-VL folder or hub id, or a short name "
        f"({', '.join(f'{k}: {v}' for k, v in MODELS.items())}); repeatable (default {MODEL})",
    )
    p.add_argument("--tasks", default=TASKS, help=f"comma-separated lmms-eval tasks (default: the paper's, {TASKS})")
    p.add_argument("--out", default="results/accuracy", help="output folder (one subfolder per run)")
    p.add_argument("--gpus", type=int, default=1, help="data-parallel processes, one GPU each (default 1)")
    p.add_argument("--batch-size", type=int, default=4, help="batch size per process (default 4)")
    p.add_argument("--dtype", default="float16", help="model dtype (default float16, as the paper)")
    p.add_argument("--only", help="comma-separated built-in runs to do (default all): " + ", ".join(RUNS))
    p.add_argument("--run", action="append", default=[], metavar="NAME=ARGS",
                   help="an extra run, e.g. 'visionzip-20=method=visionzip,budget=0.2'; repeatable, done after --only's")  # fmt: skip
    p.add_argument("--limit", type=float, help="lmms-eval --limit: documents per task (quick looks only)")
    p.add_argument("--include-path", help="lmms-eval --include_path for local task YAMLs")
    p.add_argument("--force", action="store_true", help="rerun runs that already have results")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(argv)
    if args.gpus < 1 or args.batch_size < 1:
        p.error("--gpus and --batch-size must be positive")
    args.model = args.model or [MODEL]
    try:
        models(args)
    except ValueError as err:
        p.error(str(err))
    return args


def models(args) -> list[tuple[str, str]]:
    """``(folder name, model)`` of every ``--model``: short names become their hub ids; the folder name is
    the short name, or the last part of the folder or hub id. ``ValueError`` for an empty or repeated one."""
    items = [args.model] if isinstance(args.model, str) else list(args.model)
    out, seen = [], set()
    for item in items:
        text = str(item).strip()
        if not text:
            raise ValueError("--model is empty: give a folder, a hub id or one of " + ", ".join(MODELS))
        model = MODELS.get(text, text)
        name = text if text in MODELS else Path(text.rstrip("/")).name or text
        if model in {m for _, m in out}:
            raise ValueError(f"--model {text} is given twice")
        if name in seen:
            raise ValueError(f"two --model values share the folder name {name!r}; give distinct ones")
        seen.add(name)
        out.append((name, model))
    return out


def selected_runs(args) -> dict[str, str]:
    """The built-in runs (or those ``--only`` names), then the ``--run`` extras."""
    runs = dict(RUNS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in runs]
        if unknown:
            raise SystemExit(f"paper_table: unknown run(s) {', '.join(unknown)}; known: {', '.join(runs)}")
        runs = {n: runs[n] for n in names}
    for item in args.run:
        name, sep, method_args = item.partition("=")
        if not sep or not name.strip() or "method=" not in method_args:
            raise SystemExit(f"paper_table: --run expects NAME=method=...,KEY=VALUE, got {item!r}")
        runs[name.strip()] = method_args.strip()
    return runs


def model_family(model: str) -> str | None:
    """The hired family name of ``model``: known for the short names' models, read from a local folder's
    ``config.json`` (its ``model_type``); ``None`` when unknown (a hub id not listed: every run is tried)."""
    if model in FAMILIES:
        return FAMILIES[model]
    config = Path(model) / "config.json"
    if not config.is_file():
        return None
    import json
    import types

    from hired.loading import model_class_for

    try:
        family, _ = model_class_for(types.SimpleNamespace(**json.loads(config.read_text())), model)
    except ValueError:
        return None  # lmms-eval will say what is wrong with it
    return family.name


def refused(family: str | None, method_args: str) -> str | None:
    """Why ``family`` cannot run a run's ``method=...,key=value`` arguments (hired's own checks), or ``None``."""
    if family is None:
        return None
    from hired.families import get_family
    from hired.methods.base import get_method
    from hired.methods.options import parse_method_options

    options = dict(item.split("=", 1) for item in method_args.split(",") if "=" in item)
    name = options.pop("method")
    if name in ("full", "none"):
        return None
    try:
        get_family(family).check_method(get_method(name, **parse_method_options(name, options)))
    except ValueError as err:
        return str(err)
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    runs = selected_runs(args)
    chosen = models(args)
    folders = []
    for model_name, model in chosen:
        family = model_family(model)
        for name, method_args in runs.items():
            folder = out / name if len(chosen) == 1 else out / model_name / name
            tag = name if len(chosen) == 1 else f"{model_name}/{name}"
            why = refused(family, method_args)
            if why is not None:
                print(f"[{tag}] skipped: {why}")
                continue
            folders.append(folder)
            cmd = lmms_eval_command(args, name, method_args, model=model, out=folder)
            done = list(folder.rglob("*_results.json")) if folder.is_dir() else []
            if done and not args.force:
                print(f"[{tag}] already done ({done[0]}); --force reruns it")
                continue
            print(f"[{tag}] {shlex.join(cmd)}", flush=True)
            if args.dry_run:
                continue
            start = time.perf_counter()
            subprocess.run(cmd, check=True)
            print(f"[{tag}] finished in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    report = [sys.executable, "-m", "hired.cli", "report", *[str(f) for f in folders], "--out", str(out / "table.md")]
    print(shlex.join(report), flush=True)
    if not args.dry_run:
        subprocess.run(report, check=True)
        print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
