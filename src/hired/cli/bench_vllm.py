"""``hired bench-vllm`` (or ``python -m hired.cli.bench_vllm``): serving throughput and TTFT through vLLM
(:mod:`hired.vllm.bench`)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from hired.cli.common import Parser, floats, model_help, run_command
from hired.vllm import bench as vllm_bench


def add_bench_vllm_parser(sub) -> argparse.ArgumentParser:
    """Register ``hired bench-vllm`` on an ``argparse`` sub-parser collection."""
    p = sub.add_parser(
        "bench-vllm",
        help="serving benchmark through vLLM: requests/s, output tokens/s, TTFT with and without a method",
        description=vllm_bench.__doc__.split("\n\n")[1],
    )
    add_arguments(p)
    p.set_defaults(func=cmd_bench_vllm)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``hired bench-vllm`` on ``p``."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help=model_help() + ", which vLLM loads")
    src.add_argument(
        "--arch", help="a `hired bench` architecture with random weights, e.g. small (needs --random-weights)"
    )
    p.add_argument("--random-weights", action="store_true", help="confirm --arch: random weights, nothing downloaded")
    p.add_argument("--method", default="hired", help="fixed-budget method name (default hired)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="method option, repeatable")
    p.add_argument(
        "--budgets",
        type=floats,
        default=vllm_bench.DEFAULT_BUDGETS,
        help="comma-separated budgets, default 1.0,0.4,0.2",
    )
    p.add_argument("--requests", type=int, default=8, help="requests per throughput run (default 8)")
    p.add_argument("--new-tokens", type=int, default=16, help="tokens generated per request, exactly (default 16)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per configuration (default 3)")
    p.add_argument("--image-size", type=int, default=600, help="side of the square synthetic images (default 600)")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="vLLM dtype; auto: float32 on a CPU, float16 on CUDA",
    )
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=None,
        help="per engine (a method and its oracle run side by side); default 0.85 / engines on CUDA",
    )
    p.add_argument(
        "--kv-cache-gib",
        type=float,
        default=None,
        help="KV cache per engine in GiB; default on a CPU (unless VLLM_CPU_KVCACHE_SPACE or "
        "--gpu-memory-utilization is set): room for --requests sequences of --max-model-len tokens",
    )
    p.add_argument("--no-oracle", action="store_true", help="skip the oracle rows")
    p.add_argument("--json", metavar="PATH", help="write the results (every run) as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write the Markdown table")


def command_line() -> str:
    """The command line of this process, as the results record it."""
    prog = "hired" if Path(sys.argv[0]).name == "hired" else "python -m hired.cli.bench_vllm"
    return " ".join([prog] + [shlex.quote(a) for a in sys.argv[1:]])


def cmd_bench_vllm(args) -> int:
    """Run the benchmark, print the Markdown table and write the files asked for."""
    result = vllm_bench.run_bench_vllm(args, command_line())
    table = vllm_bench.markdown(result)
    print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m hired.cli.bench_vllm``: ``hired bench-vllm`` alone."""
    parser = Parser(prog="python -m hired.cli.bench_vllm", description=vllm_bench.__doc__.split("\n\n")[1])
    add_arguments(parser)
    return run_command(cmd_bench_vllm, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
