"""``hired bench``: the efficiency benchmark (:mod:`hired.bench`) from the command line."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from hired.bench.archs import ARCHS, build_arch
from hired.bench.report import markdown, plot
from hired.bench.runner import PAPER_BATCH_SIZES, PAPER_BUDGETS, MethodSpec, Settings, run_benchmark
from hired.bench.tower import build_tower, tower_benchmark, tower_markdown
from hired.cli.common import CommandError, add_list_argument, command_errors, model_help
from hired.images import load_image
from hired.inference import demo_image
from hired.loading import DTYPES, load_model, torch_dtype
from hired.methods.options import assign_options, split_option

CPU_BATCH_SIZES = (1,)
"""Default batch size on a CPU (the paper's 1, 2, 4 on CUDA): keeps ``--arch small`` to a few minutes."""

DEFAULT_IMAGE_SIZE = 600
"""The paper's 600 x 600 image: 5 partitions (full image + 2x2 grid) in LLaVA-NeXT."""


def add_bench_parser(sub) -> argparse.ArgumentParser:
    """Register ``hired bench`` on an ``argparse`` sub-parser collection."""
    p = sub.add_parser(
        "bench",
        help="efficiency benchmark: TTFT (split), throughput, peak memory vs full and the oracle",
        description=(
            "Time a method against the full model and the oracle (the same number of visual tokens with no "
            "selection work). Defaults reproduce the HiRED paper's setting: a 600x600 image, 15 new tokens, "
            "budgets 1.0/0.4/0.2, batch 1/2/4 and float16 on CUDA (batch 1 and float32 on a CPU)."
        ),
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--model",
        help=model_help(),
    )
    src.add_argument(
        "--arch", choices=sorted(ARCHS), help="a known architecture with random weights (needs --random-weights)"
    )
    p.add_argument("--random-weights", action="store_true", help="confirm --arch: random weights, nothing downloaded")
    p.add_argument("--methods", default="hired", help="comma-separated method names ('hired methods'), default hired")
    p.add_argument(
        "--option",
        action="append",
        metavar="[NAME:]KEY=VALUE",
        help="method option, parsed by its type: NAME:KEY=VALUE for method NAME, KEY=VALUE for every "
        "method that has it; repeatable",
    )
    add_list_argument(
        p,
        "--budgets",
        float,
        default=PAPER_BUDGETS,
        help="budgets, separated by commas or spaces (default 1.0,0.4,0.2)",
    )
    add_list_argument(
        p,
        "--batch-sizes",
        int,
        default=None,
        help="batch sizes, separated by commas or spaces (default 1,2,4 on CUDA, 1 on CPU)",
    )
    p.add_argument("--runs", type=int, default=3, help="timed runs per row (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up runs per row, not timed (default 1)")
    p.add_argument("--new-tokens", type=int, default=15, help="greedy tokens per run, exactly (default 15)")
    p.add_argument("--image", help="image file (default: a synthetic 600x600 picture)")
    p.add_argument(
        "--image-size", type=int, default=DEFAULT_IMAGE_SIZE, help="side of the synthetic square image (default 600)"
    )
    p.add_argument(
        "--tower-only",
        action="store_true",
        help="time the vision step alone (get_image_features: tower, selection, projection), each method against "
        "its oracle; with --arch the language model is not built, so 7B shapes run on a CPU",
    )
    p.add_argument("--prompt", default=None, help="question about the image (wrapped in the chat template)")
    p.add_argument("--device", default=None, help="torch device (default cuda if available, else cpu)")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: float16 on CUDA, float32 on CPU")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-full", action="store_true", help="skip the full (stock) model rows")
    p.add_argument("--no-oracle", action="store_true", help="skip the oracle rows")
    p.add_argument(
        "--no-reference-attention", action="store_true", help="skip the reference attention path (full N x N maps) rows"
    )
    p.add_argument("--json", metavar="PATH", help="also write the results (with every run) as JSON")
    p.add_argument("--markdown", metavar="PATH", help="also write the Markdown table to a file")
    p.add_argument("--plot", metavar="PATH.png", help="TTFT and memory vs budget (needs matplotlib: hired-vlm[viz])")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench)
    return p


def method_specs(args) -> tuple[MethodSpec, ...]:
    """The :class:`~hired.bench.runner.MethodSpec` of each of ``--methods``, with its typed ``--option`` values."""
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    if not names:
        raise CommandError("--methods needs at least one method name")
    with command_errors():
        for item in args.option or []:
            _, key, text = split_option(item)
            if key == "budget" and text.strip().lower() not in ("none", "null"):
                raise CommandError("set budgets with --budgets; --option NAME:budget=none asks for an adaptive form")
        per = assign_options(args.option, names, "--option", "--methods")
    return tuple(MethodSpec(n, options) for n, options in zip(names, per))


def _image(args):
    if args.image:
        return load_image(args.image), args.image
    size = (args.image_size, args.image_size)
    return demo_image(size), f"synthetic {args.image_size}x{args.image_size} (hired.inference.demo_image)"


def _command(args, settings: Settings, device: str) -> str:
    """The command line that reproduces this run, every setting spelled out."""
    parts = ["hired", "bench"]
    parts += ["--arch", args.arch, "--random-weights"] if args.arch else ["--model", args.model]
    parts += ["--methods", args.methods]
    for item in args.option or []:
        parts += ["--option", item]
    parts += ["--budgets", ",".join(f"{b:g}" for b in settings.budgets)]
    if not args.tower_only:
        parts += ["--batch-sizes", ",".join(str(b) for b in settings.batch_sizes)]
    parts += ["--runs", str(settings.runs), "--warmup", str(settings.warmup)]
    if not args.tower_only:
        parts += ["--new-tokens", str(settings.new_tokens)]
    parts += ["--device", device, "--dtype", args.dtype]
    if args.threads is not None:
        parts += ["--threads", str(args.threads)]
    if args.image:
        parts += ["--image", args.image]
    elif args.image_size != DEFAULT_IMAGE_SIZE:
        parts += ["--image-size", str(args.image_size)]
    if args.tower_only:
        parts += ["--tower-only"]
    if args.prompt:
        parts += ["--prompt", args.prompt]
    parts += [
        flag
        for flag, on in (
            ("--no-full", args.no_full),
            ("--no-oracle", args.no_oracle),
            ("--no-reference-attention", args.no_reference_attention),
        )
        if on
    ]
    return " ".join(shlex.quote(p) for p in parts)


def cmd_bench(args) -> int:
    """Check the arguments, then build or load the model, run, print the table and write the files."""
    import torch

    if args.arch and not args.random_weights:
        raise CommandError("--arch builds the model with random weights; add --random-weights to confirm")
    if args.random_weights and not args.arch:
        raise CommandError("--random-weights goes with --arch NAME")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch.device(device)
    except RuntimeError as err:
        raise CommandError(f"bad --device {device!r}: {err}") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CommandError(f"--device {device} but CUDA is not available")
    batch_sizes = args.batch_sizes or (PAPER_BATCH_SIZES if device.startswith("cuda") else CPU_BATCH_SIZES)
    settings = Settings(
        methods=method_specs(args),
        budgets=args.budgets,
        batch_sizes=batch_sizes,
        runs=args.runs,
        warmup=args.warmup,
        new_tokens=args.new_tokens,
        full=not args.no_full,
        oracle=not args.no_oracle,
        reference_attention=not args.no_reference_attention,
        question=args.prompt or Settings.question,
        progress=not args.no_progress,
    )
    try:
        settings.check()
    except ValueError as err:
        raise CommandError(str(err)) from None
    if args.threads is not None and args.threads < 1:
        raise CommandError(f"--threads must be at least 1, got {args.threads}")
    if args.image_size < 1:
        raise CommandError(f"--image-size must be at least 1, got {args.image_size}")
    if args.tower_only and args.plot:
        raise CommandError("--plot draws the whole-model benchmark; leave it out with --tower-only")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CommandError('--plot needs matplotlib: pip install "hired-vlm[viz]"') from None
    threads = torch.get_num_threads()
    try:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        return _bench(args, settings, device)
    finally:
        torch.set_num_threads(threads)


def _bench(args, settings: Settings, device: str) -> int:
    image, image_name = _image(args)
    if args.tower_only:
        return _tower(args, settings, device, image, image_name)
    if args.arch:
        model, processor = build_arch(args.arch, device, torch_dtype(args.dtype, device))
        name = f"{args.arch} (random weights)"
    else:
        model, processor = load_model(args.model, device, args.dtype)
        name = args.model
    command = _command(args, settings, device)
    result = run_benchmark(model, processor, image, settings, model_name=name, image_name=image_name, command=command)
    table = markdown(result)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"JSON written to {args.json}", file=sys.stderr)
    if args.plot:
        plot(result, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _tower(args, settings: Settings, device: str, image, image_name: str) -> int:
    """``--tower-only``: the vision step of each method at each budget against its oracle."""
    if device != "cpu" and args.arch:
        raise CommandError("--tower-only with --arch builds the vision step on the CPU; use --device cpu")
    if args.arch:
        model, processor = build_tower(args.arch, torch_dtype(args.dtype, device))
        name = f"{args.arch} (random weights, vision step only)"
    else:
        model, processor = load_model(args.model, device, args.dtype)
        name = args.model
    methods = [spec.build(b) for spec in settings.methods for b in spec.budgets_for(settings.budgets)]
    progress = None if args.no_progress else (lambda label: print(label, file=sys.stderr, flush=True))
    command = _command(args, settings, device)
    with command_errors():
        result = tower_benchmark(
            model, processor, image, methods, settings.runs, settings.warmup, name, image_name, command, progress
        )
    table = tower_markdown(result)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"JSON written to {args.json}", file=sys.stderr)
    return 0
