"""What ``benchmarks/gpu/run.py`` writes after the benchmarks: combined tables and plots, the issue's goals
checked against the measured rows, TTFT speed-ups next to the FLOP bound, and the summary.

Everything here reads the ``hired bench`` JSON files; nothing is measured.
"""

from __future__ import annotations

import json
from pathlib import Path

GOALS = {
    "ttft_vs_oracle": 0.03,  # HiRED's TTFT within 3% of the oracle's
    "selection_vs_vision": 0.01,  # selection under 1% of the vision tower's time
    "memory_vs_oracle": 0.01,  # peak memory at most 1% above the oracle's
}


# ------------------------------------------------------------------------------------------- FLOP bound


def prefill_flops(arch, partitions: int, visual_tokens: int, projected: int, text_tokens: int = 0) -> dict:
    """Rough multiply-add count (x2 = FLOPs) of one image's TTFT on ``arch`` (a ``hired.bench.archs.Arch``).

    * vision tower: every partition is a sequence of T + 1 tokens ([CLS]) through *all* encoder layers
      (transformers runs them all even though the features come from layer -2): per layer and token
      ``4 d^2`` (q, k, v, o) + ``2 d d_ff`` (MLP) weights, plus ``2 n d`` for the attention scores and values;
    * projector: ``projected`` features through the 2-layer MLP (``d_v d + d d``);
    * language model: ``visual_tokens + text_tokens`` tokens, per layer and token ``4 D^2`` + ``3 D D_ff``
      (SwiGLU) weights plus causal attention (``n D`` on average for QK and AV together); the LM head for
      the last token only.

    Dropping changes the projector and the language model, never the vision tower. Norms, rotary,
    softmax and the selection itself are left out (well under 1%).
    """
    d, dff, lv = arch.vision_hidden, arch.vision_intermediate, arch.vision_layers
    n_v = (arch.crop_size // arch.patch_size) ** 2 + 1
    vision = 2 * partitions * lv * (n_v * (4 * d * d + 2 * d * dff) + 2 * n_v * n_v * d)
    big_d, big_dff, lt = arch.text_hidden, arch.text_intermediate, arch.text_layers
    projector = 2 * projected * (d * big_d + big_d * big_d)
    n = visual_tokens + text_tokens
    llm = 2 * lt * (n * (4 * big_d * big_d + 3 * big_d * big_dff) + n * n * big_d) + 2 * big_d * arch.vocab_size
    return {"vision": vision, "projector": projector, "llm": llm, "total": vision + projector + llm}


def _partitions(arch, image_size) -> int:
    from hired.core.grid import Geometry, layout_for

    geometry = Geometry(arch.crop_size, arch.patch_size, arch.grid_pinpoints)
    return layout_for(tuple(image_size), geometry).num_partitions


def speedup_bound(arch, image_size, kept: int, stock: int, stock_features: int) -> float:
    """Largest TTFT speed-up of keeping ``kept`` of ``stock`` visual tokens if TTFT were proportional to
    FLOPs (a compute-bound stack): full FLOPs / reduced FLOPs, text tokens left out (they only lower it)."""
    parts = _partitions(arch, image_size)
    full = prefill_flops(arch, parts, stock, stock_features)["total"]
    return full / prefill_flops(arch, parts, kept, kept)["total"]


# --------------------------------------------------------------------------------------------- combine


def load(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def combine(results: list[dict]) -> dict:
    """One result from several ``hired bench`` results (one per batch size): the first one's ``meta``, the
    batch sizes and dates of all of them, every row."""
    meta = dict(results[0]["meta"])
    meta["combined_from"] = [
        {
            "command": r["meta"].get("command"),
            "date": r["meta"].get("date"),
            "batch_sizes": sorted({row["batch"] for row in r["rows"]}),
        }
        for r in results
    ]
    rows = [row for r in results for row in r["rows"]]
    return {"meta": meta, "rows": rows}


def write_tables(result: dict, stem: Path, plot: bool) -> list[Path]:
    """``stem.json``, ``stem.md`` and (if ``plot``) ``stem.png`` of one result, with hired bench's own
    table and plot."""
    from hired.bench.report import markdown
    from hired.bench.report import plot as draw

    written = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    written[0].write_text(json.dumps(result, indent=1) + "\n")
    written[1].write_text(markdown(result))
    if plot:
        written.append(draw(result, stem.with_suffix(".png")))
    return written


# ------------------------------------------------------------------------------------------------ goals


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def _mark(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "**no**")


def goal_rows(name: str, result: dict) -> list[dict]:
    """Per method row: overhead vs the oracle, selection / vision, peak memory vs the oracle."""
    out = []
    rows = result["rows"]
    for row in rows:
        if row["kind"] != "method":
            continue
        oracle = next(
            (
                r
                for r in rows
                if r["kind"] == "oracle"
                and r["batch"] == row["batch"]
                and r["budget"] == row["budget"]
                and r["method"] == row["method"]
            ),
            None,
        )
        s = row["summary"]
        vision = s["vision"]["median"]
        selection = s["selection"]["median"] / vision if vision > 0 else None
        memory = None
        if oracle is not None:
            memory = s["peak_memory"]["median"] / oracle["summary"]["peak_memory"]["median"] - 1.0
        ttft = row.get("overhead_vs_oracle")
        out.append(
            {
                "bench": name,
                "batch": row["batch"],
                "label": row["label"],
                "budget": row["budget"],
                "ttft_vs_oracle": ttft,
                "ttft_vs_oracle_min": row.get("overhead_vs_oracle_min"),
                "selection_ms": 1000 * s["selection"]["median"],
                "vision_ms": 1000 * vision,
                "selection_vs_vision": selection,
                "memory_vs_oracle": memory,
                "ok": {
                    key: None if value is None else value <= GOALS[key]
                    for key, value in (
                        ("ttft_vs_oracle", ttft),
                        ("selection_vs_vision", selection),
                        ("memory_vs_oracle", memory),
                    )
                },
            }
        )
    return out


def speedup_rows(name: str, result: dict, arch) -> list[dict]:
    """TTFT of the full model over the method's and the oracle's, next to the FLOP bound (if ``arch``)."""
    out = []
    rows = result["rows"]
    for row in rows:
        if row["kind"] != "method":
            continue
        full = next((r for r in rows if r["kind"] == "full" and r["batch"] == row["batch"]), None)
        oracle = next(
            (
                r
                for r in rows
                if r["kind"] == "oracle"
                and r["batch"] == row["batch"]
                and r["budget"] == row["budget"]
                and r["method"] == row["method"]
            ),
            None,
        )
        if full is None:
            continue
        t_full = full["summary"]["ttft"]["median"]
        kept = row["tokens_per_image"][0]
        stock = row["stock_tokens_per_image"]
        bound = None
        if arch is not None:
            stock_features = _partitions(arch, result["meta"]["image_size"]) * (arch.crop_size // arch.patch_size) ** 2
            bound = speedup_bound(arch, result["meta"]["image_size"], kept, stock, stock_features)
        out.append(
            {
                "bench": name,
                "batch": row["batch"],
                "label": row["label"],
                "budget": row["budget"],
                "tokens": f"{kept} of {stock}",
                "speedup": t_full / row["summary"]["ttft"]["median"],
                "oracle_speedup": None if oracle is None else t_full / oracle["summary"]["ttft"]["median"],
                "flop_bound": bound,
            }
        )
    return out


def sync_lines(sync: dict | None) -> list[str]:
    if sync is None:
        return ["No sync check result."]
    if not sync.get("counted"):
        return [f"Sync check ran on {sync.get('device')}: {sync.get('note')}."]
    lines = [
        f"Synchronising CUDA calls in one prefill forward on `{sync['arch']}` ({sync['dtype']}, "
        f"{sync['device_name']}), by batch size:",
        "",
        "| model | " + " | ".join(f"batch {b}" for b in sync["batch_sizes"]) + " | extra per added image |",
        "|---|" + "---:|" * (len(sync["batch_sizes"]) + 1),
    ]
    for label, counts in sync["sync_counts"].items():
        extra = sync["extra_syncs_per_added_image"].get(label)
        lines.append(
            f"| {label} | "
            + " | ".join(str(counts[str(b)]) for b in sync["batch_sizes"])
            + f" | {'-' if extra is None else f'{extra:g}'} |"
        )
    lines += ["", f"Goal *no host-device sync per image*: {_mark(sync.get('no_sync_per_image'))}."]
    return lines


def findings(benches: list[tuple[str, dict, object]], sync: dict | None, small: bool) -> str:
    """Markdown: the goals table, the speed-up table and the sync check."""
    lines = []
    if small:
        lines += [
            "*Small models, one short run each (a dry run): these figures test the script; they say "
            "nothing about the 7B models on a GPU.*",
            "",
        ]
    goals = [g for name, result, _ in benches for g in goal_rows(name, result)]
    lines += [
        "### Goals (method rows against their oracle)",
        "",
        "Goals: TTFT within 3% of the oracle (ratio of medians; of minima in brackets), selection under 1% "
        "of the vision tower, peak memory at most 1% above the oracle.",
        "",
        "| bench | batch | method | budget | TTFT vs oracle | ok | selection ms / vision ms | ok "
        "| peak memory vs oracle | ok |",
        "|---|---:|---|---:|---:|---|---:|---|---:|---|",
    ]
    for g in goals:
        sel = (
            "-"
            if g["selection_vs_vision"] is None
            else f"{g['selection_ms']:.2f} / {g['vision_ms']:.1f} ({100 * g['selection_vs_vision']:.2f}%)"
        )
        lines.append(
            f"| {g['bench']} | {g['batch']} | {g['label']} | {g['budget']} | {_pct(g['ttft_vs_oracle'])} "
            f"({_pct(g['ttft_vs_oracle_min'])}) | {_mark(g['ok']['ttft_vs_oracle'])} | {sel} "
            f"| {_mark(g['ok']['selection_vs_vision'])} | {_pct(g['memory_vs_oracle'])} "
            f"| {_mark(g['ok']['memory_vs_oracle'])} |"
        )
    speed = [s for name, result, arch in benches for s in speedup_rows(name, result, arch)]
    lines += [
        "",
        "### TTFT speed-up over the full model",
        "",
        "Full model's median TTFT / the row's; *FLOP bound*: the same ratio of prefill FLOPs (vision "
        "tower, projector, language model; text tokens left out), the most a compute-bound stack can gain.",
        "",
        "| bench | batch | method | budget | visual tokens | speed-up | oracle speed-up | FLOP bound |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for s in speed:
        oracle = "-" if s["oracle_speedup"] is None else f"{s['oracle_speedup']:.2f}x"
        bound = "-" if s["flop_bound"] is None else f"{s['flop_bound']:.2f}x"
        lines.append(
            f"| {s['bench']} | {s['batch']} | {s['label']} | {s['budget']} | {s['tokens']} "
            f"| {s['speedup']:.2f}x | {oracle} | {bound} |"
        )
    lines += ["", "### Host-device synchronisation", ""] + sync_lines(sync)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # the bound of the README: llava-next-7b, 600x600, 20% of 2880 patches
    from hired.bench.archs import ARCHS

    a = ARCHS["llava-next-7b"]
    for text in (0, 20):
        parts = _partitions(a, (600, 600))
        full = prefill_flops(a, parts, 2928, 2880, text)
        kept = prefill_flops(a, parts, 576, 576, text)
        print(
            f"text tokens {text}: full {full['total'] / 1e12:.2f} TFLOP (vision {full['vision'] / 1e12:.2f}), "
            f"20% {kept['total'] / 1e12:.2f} TFLOP: bound {full['total'] / kept['total']:.2f}x"
        )
