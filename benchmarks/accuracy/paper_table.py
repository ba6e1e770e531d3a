"""Reproduce the accuracy table of the HiRED paper (Table 3) with stock lmms-eval and ``hired_llava``.

Runs lmms-eval once per method (full model, HiRED 20% and 40%, spatial sampling 40%, PruMerge,
PruMerge+, and, beyond the paper, DivPrune, DART and the query-aware CDPruner at HiRED's 20%) on the
paper's eight tasks, each into its own folder under ``--out``, then writes
``<out>/table.md`` with ``hired report``. A run whose folder already holds a results file is skipped,
so an interrupted sweep resumes. Needs ``pip install "hired[eval]"``, GPUs and the hub (models and
datasets download on first use).

    python benchmarks/accuracy/paper_table.py --gpus 8 --out results/accuracy
    python benchmarks/accuracy/paper_table.py --dry-run            # print the commands only
    python benchmarks/accuracy/paper_table.py --only full,hired-20 --tasks textvqa_val --limit 200
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

MODEL = "llava-hf/llava-v1.6-vicuna-7b-hf"
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


def lmms_eval_command(args, name: str, method_args: str) -> list[str]:
    """The lmms-eval command line of one run (``accelerate launch`` data parallel when ``--gpus`` > 1)."""
    launcher = [sys.executable, "-m", "lmms_eval"]
    if args.gpus > 1:
        launcher = ["accelerate", "launch", "--num_processes", str(args.gpus), "-m", "lmms_eval"]
    model_args = f"pretrained={args.model},{method_args},dtype={args.dtype}"
    cmd = launcher + [
        "--model", "hired_llava",
        "--model_args", model_args,
        "--tasks", args.tasks,
        "--batch_size", str(args.batch_size),
        "--log_samples",
        "--output_path", str(Path(args.out) / name),
    ]  # fmt: skip
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    if args.include_path:
        cmd += ["--include_path", args.include_path]
    return cmd


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=MODEL, help=f"LLaVA-NeXT or LLaVA-1.5 folder or hub id (default {MODEL})")
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
    return args


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


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    runs = selected_runs(args)
    for name, method_args in runs.items():
        cmd = lmms_eval_command(args, name, method_args)
        done = list((out / name).rglob("*_results.json")) if (out / name).is_dir() else []
        if done and not args.force:
            print(f"[{name}] already done ({done[0]}); --force reruns it")
            continue
        print(f"[{name}] {shlex.join(cmd)}", flush=True)
        if args.dry_run:
            continue
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        print(f"[{name}] finished in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    report = [sys.executable, "-m", "hired.cli", "report", *[str(out / n) for n in runs], "--out", str(out / "table.md")]
    print(shlex.join(report), flush=True)
    if not args.dry_run:
        subprocess.run(report, check=True)
        print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
