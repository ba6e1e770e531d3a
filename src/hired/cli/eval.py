"""``hired eval --offline`` and ``hired eval --merge``: accuracy of every method vs budget on hired-tiny
(:mod:`hired.eval.offline`)."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone
from pathlib import Path

import hired
from hired.cli.common import CommandError, add_list_argument, command_errors
from hired.eval import offline
from hired.methods.options import assign_options, split_option


def cmd_merge(args) -> int:
    """``hired eval --merge A.json B.json ...``: one table (and JSON, plot) from several runs."""
    try:
        payloads = [json.loads(Path(p).read_text()) for p in args.merge]
        results, budgets = offline.combine(payloads)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CommandError(f"--merge: {err}") from None
    dates = sorted(p.get("date", "") for p in payloads)
    task = offline.task_of(payloads[0])
    print(
        f"hired-tiny, task {task}, {payloads[0]['questions']} test questions (seed {payloads[0]['seed']}), "
        f"{len(payloads)} runs merged ({', '.join(args.merge)}), {dates[0]} to {dates[-1]}"
    )
    print()
    print(offline.report(results, budgets, task, offline.family_counts(results)))
    if args.json:
        merged = {
            **payloads[0],
            "task": task,
            "budgets": budgets,
            "options": {},
            "variants": [],
            "merged_from": list(args.merge),
            "date": dates[-1],
            "results": [dataclasses.asdict(r) for r in results],
        }
        Path(args.json).write_text(json.dumps(merged, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    if args.plot:
        for path in offline.plots(results, args.plot, budgets, task):
            print(f"wrote {path}")
    return 0


def cmd_eval(args) -> int:
    """``hired eval --offline``: every method at every budget on hired-tiny; the table, and the JSON and plot asked for."""
    import torch

    from hired.models.tiny_vlm import load_hired_tiny  # torch and the DINOv2 tower: only when it runs

    if args.merge:
        return cmd_merge(args)
    if not args.offline:
        raise CommandError("only --offline is available here (lmms-eval tasks: see the README)")
    if args.threads:
        torch.set_num_threads(args.threads)
    budgets = tuple(args.budgets) if args.budgets else (offline.QUICK["budgets"] if args.quick else offline.BUDGETS)
    for b in budgets:
        if not 0 < b <= 1:
            raise CommandError(f"budget must be in (0, 1], got {b}")
    images = args.images or (offline.QUICK["images"] if args.quick else 250)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    names = methods if methods is not None else list(hired.list_methods())
    variants = []
    with command_errors():
        for item in args.option or []:
            if split_option(item)[1] == "budget":
                raise CommandError("set budgets with --budgets (the adaptive forms run without a budget anyway)")
        per = assign_options(args.option, names, "--option", "--methods")
        options = {n: o for n, o in zip(names, per) if o}
        for spec in args.variant or []:
            items = [item.strip() for item in spec.split(",") if item.strip()]
            if any(split_option(item, "--variant")[1] == "budget" for item in items):
                raise CommandError("--variant cannot set the budget (use --budgets)")
            chosen = assign_options(items, names, "--variant", "--methods")
            variants.append({n: o for n, o in zip(names, chosen) if o})
        cfgs = offline.configs(budgets, methods, options, variants)
    split = offline.make_split(args.task, images, seed=args.seed)
    model, processor = load_hired_tiny(args.model)
    started = datetime.now(timezone.utc)
    results = offline.evaluate(model, processor, split, cfgs, batch_size=args.batch_size, progress=not args.no_progress)
    print(
        f"hired-tiny, task {args.task}, {len(split.questions)} test questions (seed {args.seed}), {offline.machine()}, "
        f"{torch.get_num_threads()} torch threads, {started:%Y-%m-%d %H:%M} UTC"
    )
    for name, opts in options.items():
        print(f"options of {name}: " + ", ".join(f"{k}={v!r}" for k, v in sorted(opts.items())))
    for variant in variants:
        print(
            "also with "
            + "; ".join(f"{n}: " + ", ".join(f"{k}={v!r}" for k, v in o.items()) for n, o in variant.items())
        )
    print()
    print(offline.report(results, budgets, args.task, offline.family_counts(results)))
    if args.json:
        payload = {
            "model": str(args.model or "hired-tiny (packaged)"),
            "task": args.task,
            "questions": len(split.questions),
            "seed": args.seed,
            "budgets": list(budgets),
            "options": options,
            "variants": variants,
            "date": started.isoformat(timespec="seconds"),
            "machine": offline.machine(),
            "threads": torch.get_num_threads(),
            "results": [dataclasses.asdict(r) for r in results],
        }
        Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    if args.plot:
        for path in offline.plots(results, args.plot, budgets, args.task):
            print(f"wrote {path}")
    return 0


def add_eval_parser(sub) -> None:
    """Register ``hired eval`` on the ``hired`` command's subparsers."""
    p = sub.add_parser("eval", help="accuracy of every method vs budget on hired-tiny (--offline)")
    p.add_argument("--offline", action="store_true", help="the offline benchmark on hired-tiny (required)")
    p.add_argument(
        "--task",
        choices=offline.TASKS,
        default="both",
        help="test questions: the first family (shapes on photos), the dense family (tables of shapes "
        "or cells) or both, reported separately and together (default: both)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"{offline.QUICK['images'] * 4} questions per family, budgets {' '.join(map(str, offline.QUICK['budgets']))} (CI)",
    )
    p.add_argument("--images", type=int, default=None, help="test images per family, 4 questions each (default 250)")
    add_list_argument(
        p,
        "--budgets",
        float,
        default=None,
        help="budgets, separated by commas or spaces (default 0.05,0.1,0.2,0.4,1.0)",
    )
    p.add_argument("--methods", default=None, help="comma-separated method names (default: all registered)")
    p.add_argument(
        "--option",
        action="append",
        metavar="[NAME:]KEY=VALUE",
        help="method option, parsed by its type: NAME:KEY=VALUE for method NAME, KEY=VALUE for every "
        "chosen method that has it; repeatable",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="JSON",
        help="run nothing: print one table (and --json, --plot) from the --json files of several runs",
    )
    p.add_argument(
        "--variant",
        action="append",
        metavar="[NAME:]KEY=VALUE[,...]",
        help="also run the chosen methods (or NAME) with these options, in the same run, e.g. "
        "--variant keep_positions=true; repeatable, one variant each. HiRED rows with adapt > 0 are first "
        "calibrated on the run's images (hired.calibrate), so their mean count is the fixed budget's",
    )
    p.add_argument("--seed", type=int, default=0, help="test split seed")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--model", default=None, help="a folder written by python -m hired.models.train (default: packaged)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--plot", default=None, metavar="PATH", help="accuracy vs budget figure (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)
