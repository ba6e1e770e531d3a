"""``hired report``: lmms-eval output folders → one Markdown table (:mod:`hired.eval.report`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hired.cli.common import plain
from hired.eval import report


def cmd_report(args) -> int:
    runs = report.find_runs(args.paths)
    table = report.build_table(runs, baseline=args.baseline, metrics=report.parse_metric_overrides(args.metric))
    if args.out:
        Path(args.out).write_text(table, encoding="utf-8")
        print(f"wrote {args.out} ({len(runs)} results files)")
    else:
        sys.stdout.write(table)
    return 0


def add_report_parser(sub) -> argparse.ArgumentParser:
    """``hired report``: the subcommand's parser, added to the ``hired`` command's subparsers."""
    p = sub.add_parser(
        "report",
        help="lmms-eval output folders -> Markdown table of scores and retention vs the full model",
        description=plain(report.__doc__.split("\n\n")[0]),
    )
    p.add_argument("paths", nargs="+", help="lmms-eval --output_path folders or *_results.json files")
    p.add_argument("--baseline", default="full", help="row label that retention is measured against (default full)")
    p.add_argument(
        "--metric",
        action="append",
        metavar="TASK=METRIC[*SCALE]",
        help="metric (and scale) shown for a task, e.g. pope=pope_accuracy*100; repeatable",
    )
    p.add_argument("--out", help="write the table to this file instead of printing it")
    p.set_defaults(func=cmd_report)
    return p
