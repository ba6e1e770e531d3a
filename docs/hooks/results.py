"""MkDocs hook: result tables built from the committed JSON files, and the result plots published.

A page writes a marker on a line of its own (indented inside a list item, the table keeps that indent)::

    <!-- results: VIEW PATH [PATH ...] [KEY=VALUE ...] -->

PATH is relative to the repository root (the folder that holds ``mkdocs.yml``) and must lie inside it;
the hook reads nothing else. The tables that the commands print come from the library's own functions
(so ``hired`` and its dependencies must be installed where the site is built); the hook only picks the
files, merges them and lays out the views that no command prints. VIEW picks the table:

``offline``
    ``hired eval --offline --json`` (one family): the all-token line, accuracy (retention) per method and
    budget, accuracy per question kind at budget 0.2, the adaptive rows: ``hired.eval.offline.markdown``
    (``budgets=B,B,...`` picks the columns; default the run's budgets; ``family=first|dense|both`` one
    family's rows of a ``--task both`` run, default all rows).
``offline-variant``
    the rows of ``base=LABEL`` against ``variant=LABEL`` per budget, with the paired difference and its
    standard error over the same questions (``hired.eval.offline.paired``), and each question kind's
    accuracy; ``name=`` and ``vname=`` give the column headings, ``short=`` and ``vshort=`` their names in
    the per-kind columns.
``offline-compare``
    a ``--task both`` run: ``variant=LABEL`` against ``base=LABEL`` at every budget, per family and
    together: mean visual tokens, accuracies, and the paired difference with its standard error
    (``hired.eval.offline.comparison``).
``bench``
    ``hired bench --json``: every row, the table of ``hired.bench.markdown`` (``hired.bench.report.table``).
``bench-compact``
    ``hired bench --json``: batch, budget, visual tokens, TTFT of the full model (on the budget-1.0 row),
    of the method and of its oracle, and the method over the oracle; ``select=BATCH:BUDGET,...`` keeps
    those rows only.
``bench-methods``
    ``hired bench --json`` of one or more files: each method row at ``batch=`` (default 1) with its TTFT,
    vision and selection times and its overhead over the oracle (other batch sizes in parentheses).
``vllm``
    ``hired bench-vllm --json`` of one or more files: the throughput and TTFT table and the
    method-vs-oracle table of ``hired.vllm.bench.markdown`` (``hired.vllm.bench.table`` and
    ``hired.vllm.bench.overhead_table``) over the rows of every file. Rows of a later file get its
    ``labelN=`` text (N = 2, 3, ...) appended; its stock-vLLM row is left out (the same configuration as
    the first file's).

The hook also publishes every PNG under ``benchmarks/results/`` at ``results/...`` on the site, so a page
can show a plot next to the table built from the same run.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

from hired.bench import report as bench_report
from hired.eval import offline
from hired.vllm import bench as vllm_bench

MARKER = re.compile(r"^(?P<indent>[ \t]*)<!--\s*results:\s*(?P<args>.*?)\s*-->[ \t]*$", re.MULTILINE)
RESULTS = "benchmarks/results"


def _root(config) -> Path:
    return Path(config["config_file_path"]).resolve().parent


def _load(root: Path, rel: str) -> dict:
    path = (root / rel).resolve()
    if root not in path.parents:
        raise PluginError(f"results hook: {rel!r} lies outside the repository")
    if not path.is_file():
        raise PluginError(f"results hook: no such file {rel!r}")
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- hired eval --offline


def _results(payload: dict) -> list[offline.Result]:
    return [offline.Result(**row) for row in payload["results"]]


def _offline(payload: dict, opts: dict) -> str:
    budgets = [float(b) for b in opts["budgets"].split(",")] if "budgets" in opts else payload["budgets"]
    results = _results(payload)
    if "family" in opts:  # one family's rows of a --task both run (first, dense, both)
        groups = offline.by_family(results, offline.task_of(payload))
        if opts["family"] not in groups:
            raise PluginError(f"results hook: no family {opts['family']!r}; the run has {', '.join(groups)}")
        results = groups[opts["family"]]
    return offline.markdown(results, budgets)


def _signed(x: float) -> str:
    return f"{x:+.3f}".replace("-", "−")


def _offline_variant(payload: dict, opts: dict) -> str:
    base, variant = opts["base"], opts["variant"]
    name, vname = opts.get("name", base), opts.get("vname", variant)
    rows = {(r.label, r.budget): r for r in _results(payload)}
    budgets = sorted(b for (label, b) in rows if label == base and b is not None)
    kinds = sorted({k for r in rows.values() for k in r.by_kind})
    lines = [
        f"| budget | {name} | {vname} | difference | "
        + " | ".join(f"{k}: {opts.get('short', name)} / {opts.get('vshort', vname)}" for k in kinds)
        + " |",
        "|---" * (4 + len(kinds)) + "|",
    ]
    for b in budgets:
        a, v = rows[(base, b)], rows[(variant, b)]
        try:
            diff, se, _ = offline.paired(v, a)
        except ValueError as err:
            raise PluginError(f"results hook: {err}") from None
        by_kind = " | ".join(f"{a.by_kind[k]:.3f} / {v.by_kind[k]:.3f}" for k in kinds)
        lines.append(
            f"| {b:g} ({a.visual_tokens:.0f} tokens) | {a.accuracy:.3f} | {v.accuracy:.3f} | "
            f"{_signed(diff)} ± {se:.3f} | {by_kind} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- hired bench


def _bench(payload: dict, opts: dict) -> str:
    return bench_report.table(payload["rows"])


def _bench_compact(payload: dict, opts: dict) -> str:
    rows = payload["rows"]
    full = {r["batch"]: r for r in rows if r["kind"] == "full"}
    oracle = {(r["batch"], r["budget"]): r for r in rows if r["kind"] == "oracle"}
    wanted = None
    if "select" in opts:
        wanted = [(int(b), float(x)) for b, x in (item.split(":") for item in opts["select"].split(","))]
    methods = {(r["batch"], r["budget"]): r for r in rows if r["kind"] == "method"}
    keys = wanted if wanted is not None else list(methods)
    lines = [
        "| batch | budget | visual tokens | full | hired | oracle | hired vs oracle |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in keys:
        if key not in methods:
            raise PluginError(f"results hook: no method row at batch {key[0]}, budget {key[1]}")
        m, o = methods[key], oracle[key]
        f = full.get(key[0]) if key[1] == 1.0 else None
        ttft = lambda r: f"{r['summary']['ttft']['median']:.3f} s"  # noqa: E731
        lines.append(
            f"| {key[0]} | {key[1]:g}{'.0' if key[1] == 1.0 else ''} | {m['tokens_per_image'][0]} | "
            f"{ttft(f) if f else ''} | {ttft(m)} | {ttft(o)} | {100 * m['overhead_vs_oracle']:+.1f}% |"
        )
    return "\n".join(lines)


def _bench_methods(payloads: list[dict], opts: dict) -> str:
    batch = int(opts.get("batch", 1))
    lines = [
        "| method | TTFT s | vision ms | selection ms | vs oracle (medians / minima) |",
        "|---|---:|---:|---:|---:|",
    ]
    for payload in payloads:
        rows = [r for r in payload["rows"] if r["kind"] == "method"]
        for row in (r for r in rows if r["batch"] == batch):
            s = row["summary"]
            others = [
                f"batch {r['batch']}: {bench_report.vs_oracle(r)}"
                for r in rows
                if r["batch"] != batch and r["label"] == row["label"] and r["budget"] == row["budget"]
            ]
            vs = bench_report.vs_oracle(row) + (f" ({'; '.join(others)})" if others else "")
            ms = bench_report.milliseconds
            lines.append(
                f"| {row['label']} | {s['ttft']['median']:.3f} | {ms(s['vision'])} | {ms(s['selection'])} | {vs} |"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------- hired bench-vllm


def _vllm(payloads: list[dict], opts: dict) -> str:
    rows, over = [], []
    for i, payload in enumerate(payloads, start=1):
        suffix = f" {opts[f'label{i}']}" if i > 1 and f"label{i}" in opts else ""
        rows += [
            {**row, "config": row["config"] + suffix}
            for row in payload["rows"]
            if i == 1 or row["config"] != "stock vLLM"
        ]
        over += [{**o, "oracle": o["oracle"] + suffix} for o in payload.get("overheads") or []]
    tables = [vllm_bench.table(rows)]
    if over:
        tables.append(vllm_bench.overhead_table(over))
    return "\n\n".join(tables)


# ---------------------------------------------------------------- the hook


def _offline_compare(payload: dict, opts: dict) -> str:
    try:
        return offline.comparison(_results(payload), opts["base"], opts["variant"], offline.task_of(payload))
    except (KeyError, ValueError) as err:
        raise PluginError(f"results hook: offline-compare: {err}") from None


SINGLE = {
    "offline": _offline,
    "offline-variant": _offline_variant,
    "offline-compare": _offline_compare,
    "bench": _bench,
    "bench-compact": _bench_compact,
}
MULTI = {"bench-methods": _bench_methods, "vllm": _vllm}


def render(args: str, root: Path) -> str:
    """The Markdown that replaces one marker's arguments ``VIEW PATH [PATH ...] [KEY=VALUE ...]``."""
    words = shlex.split(args)
    if not words:
        raise PluginError("results hook: a marker names no view")
    view, rest = words[0], words[1:]
    paths = [w for w in rest if "=" not in w]
    opts = dict(w.split("=", 1) for w in rest if "=" in w)
    if not paths:
        raise PluginError(f"results hook: the {view!r} marker names no file")
    payloads = [_load(root, p) for p in paths]
    if view in SINGLE:
        if len(payloads) != 1:
            raise PluginError(f"results hook: the {view!r} view takes one file, got {len(payloads)}")
        table = SINGLE[view](payloads[0], opts)
    elif view in MULTI:
        table = MULTI[view](payloads, opts)
    else:
        raise PluginError(f"results hook: unknown view {view!r} (one of {', '.join([*SINGLE, *MULTI])})")
    source = ", ".join(f"`{p}`" for p in paths)
    return f"{table}\n\n<small>Table generated from {source} when the site is built.</small>\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    root = _root(config)

    def replace(m: re.Match) -> str:
        indent = m.group("indent")  # a marker inside a list item: the table stays in the item
        return "\n".join(indent + line if line else line for line in render(m.group("args"), root).splitlines())

    return MARKER.sub(replace, markdown)


def on_files(files, config):
    """Publish the plots under ``benchmarks/results/`` as ``results/...`` on the site."""
    root = _root(config)
    for png in sorted((root / RESULTS).rglob("*.png")):
        uri = "results/" + png.relative_to(root / RESULTS).as_posix()
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, abs_src_path=str(png)))
    return files
