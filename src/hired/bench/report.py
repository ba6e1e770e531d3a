"""The benchmark's Markdown table and plot (matplotlib, from the ``viz`` extra)."""

from __future__ import annotations

from pathlib import Path

_GIB = 1024**3
_MIB = 1024**2


def _s(stat: dict, digits: int = 3, scale: float = 1.0) -> str:
    """``median (min-max)``."""
    med, low, high = (scale * stat[k] for k in ("median", "min", "max"))
    return f"{med:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def milliseconds(stat: dict) -> str:
    """The median of a statistic in seconds (``{"median": ...}``) in milliseconds, one decimal."""
    return f"{1000 * stat['median']:.1f}"


def _budget(row: dict) -> str:
    if row["kind"] == "full":
        return "1.0 (all)"
    if row["budget"] is None:
        return "adaptive" if row.get("adaptive") else "-"
    return str(float(row["budget"]))


def vs_oracle(row: dict) -> str:
    """A row's TTFT over its oracle's, of the medians and of the minima (``-`` for a row without an oracle)."""
    overhead = row.get("overhead_vs_oracle")
    if overhead is None:
        return "-"
    return f"{100 * overhead:+.1f}% / {100 * row['overhead_vs_oracle_min']:+.1f}%"


def table(rows: list[dict]) -> str:
    """The Markdown table of a result's ``rows`` (the ``rows`` of ``hired bench --json``), one line per row:
    times in seconds, the parts of the TTFT in milliseconds (the table of :func:`markdown`)."""
    lines = [
        "| batch | method | budget | visual tokens / image | TTFT s | preprocess ms | vision ms | selection ms "
        "| LLM prefill ms | decode tok/s | e2e tok/s | peak memory GiB | run memory MiB "
        "| vs oracle (medians / minima) |",
        "|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        s = row["summary"]
        tokens = row["tokens_per_image"][0] if row["tokens_per_image"] else 0
        cells = [
            str(row["batch"]),
            row["label"],
            _budget(row),
            f"{tokens} of {row['stock_tokens_per_image']}",
            _s(s["ttft"]),
            milliseconds(s["preprocess"]),
            milliseconds(s["vision"]),
            milliseconds(s["selection"]),
            milliseconds({"median": s["projector"]["median"] + s["prefill"]["median"]}),
            _s(s["decode_tok_s"], 1),
            _s(s["e2e_tok_s"], 2),
            _s(s["peak_memory"], 3, 1 / _GIB),
            f"{s['run_memory']['median'] / _MIB:.0f}",
            vs_oracle(row),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def header(result: dict) -> str:
    """One paragraph naming the model, device, versions and protocol."""
    m = result["meta"]
    threads = f", {m['torch_threads']} torch threads" if m.get("torch_threads") else ""
    load = ""
    if m.get("load_average_start") is not None:
        load = f" Load average (1/5/15 min) at start {m['load_average_start']}, at end {m['load_average_end']}."
    kinds = sorted({r["score_kind"] for r in result.get("rows", []) if r.get("score_kind")})
    scores = ""
    if kinds:
        names = {"cls": "the [CLS] row", "received": "the attention each patch receives (the tower has no [CLS])"}
        scores = f" Attention scores the methods read: {', '.join(names.get(k, k) for k in kinds)}."
    return (
        f"Model `{m['model']}` ({m['model_class']}), {m['dtype']} on {m['device']}: {m['device_name']}{threads}. "
        f"torch {m['torch']}, transformers {m['transformers']}, hired {m['hired']}, Python {m['python']}. "
        f"Image {m['image']}, {m['image_size'][1]}x{m['image_size'][0]} px, {m['new_tokens']} new tokens, greedy. "
        f"{m['warmup']} warm-up + {m['runs']} runs per row: median (min-max). Memory: {m['memory']}. "
        f"{m['date']}.{load}{scores}"
    )


def markdown(result: dict) -> str:
    """The results as a Markdown table (times in seconds, parts of the TTFT in milliseconds)."""
    lines = [
        header(result),
        "",
        table(result["rows"]),
        "",
        "TTFT, throughputs and peak memory: median (min-max) over the runs; the TTFT's parts and the run "
        "memory: medians (the JSON output has every run). "
        "TTFT runs from the raw image and prompt to the first generated token. Its parts: preprocess (processor), "
        "vision (vision tower), selection (scores, budgets, top-k and gather between tower and projector), "
        "LLM prefill (projector, merge, language model, first token); the rest of the TTFT is generate's setup. "
        "Decode tok/s: batch x (new tokens - 1) / time after the first token; e2e tok/s: batch x new tokens / "
        "total time (the HiRED paper's throughput). Run memory: peak minus memory at the run's start. "
        "vs oracle: TTFT / the oracle's TTFT - 1, of the medians and of the minima (the minima are the least "
        "disturbed by other load); the oracle feeds the same number of visual tokens with no selection work.",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str | Path) -> Path:
    """TTFT and peak memory against the budget, one line per method and batch size, the oracle dashed and
    the full model dotted. Needs matplotlib (``pip install "hired-vlm[viz]"``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError('--plot needs matplotlib: pip install "hired-vlm[viz]"') from None

    rows = result["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    batches = sorted({r["batch"] for r in rows})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"method": "-", "oracle": "--", "reference": ":"}
    markers = {"method": "o", "oracle": "s", "reference": "^"}
    for bi, batch in enumerate(batches):
        for metric, scale, ax in (("ttft", 1.0, axes[0]), ("peak_memory", 1 / _GIB, axes[1])):
            series: dict[str, list] = {}
            for r in rows:
                if r["batch"] != batch or r["budget"] is None or r["kind"] == "full":
                    continue
                point = (r["budget"], r["summary"][metric]["median"] * scale)
                series.setdefault((r["label"], r["kind"]), []).append(point)
            for mi, ((label, kind), points) in enumerate(sorted(series.items())):
                points.sort()
                ax.plot(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    styles.get(kind, "-"),
                    marker=markers.get(kind, "o"),
                    color=colours[(bi * 3 + mi) % len(colours)] if len(batches) == 1 else colours[bi % len(colours)],
                    label=f"{label}, batch {batch}",
                )
            full = [r for r in rows if r["batch"] == batch and r["kind"] == "full"]
            if full:
                ax.axhline(
                    full[0]["summary"][metric]["median"] * scale,
                    color=colours[bi % len(colours)],
                    linestyle="-.",
                    linewidth=0.8,
                    label=f"full, batch {batch}",
                )
    m = result["meta"]
    axes[0].set_ylabel("TTFT, s (median)")
    axes[1].set_ylabel("peak memory, GiB (median)")
    for ax in axes:
        ax.set_xlabel("budget (share of visual tokens kept)")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(f"hired bench: {m['model']}, {m['dtype']} on {m['device_name']}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
