"""Efficiency benchmark: TTFT (split into preprocessing, vision tower, selection, LLM prefill), decode and
end-to-end throughput and peak memory of a method against the full model and the oracle.

    from hired.bench import build_arch, run_benchmark, Settings, markdown
    model, processor = build_arch("small")                      # random weights, no download
    result = run_benchmark(model, processor, image, Settings(batch_sizes=(1,)))
    print(markdown(result))

``hired bench --arch small --random-weights`` (:mod:`hired.cli.bench`) does the same from the command line.
:mod:`hired.bench.tower` times the vision step alone at a checkpoint's real shapes (``build_tower``, whose
language model holds no memory; ``hired bench --arch llava-onevision-7b --random-weights --tower-only``).
"""

from hired.bench.archs import ARCHS, Arch, build_arch, list_archs
from hired.bench.oracle import oracle, reference_attention
from hired.bench.report import markdown, plot
from hired.bench.runner import MethodSpec, Settings, run_benchmark, run_once
from hired.bench.tower import build_tower, tower_benchmark, tower_markdown

__all__ = [
    "ARCHS",
    "Arch",
    "MethodSpec",
    "Settings",
    "build_arch",
    "build_tower",
    "list_archs",
    "markdown",
    "oracle",
    "plot",
    "reference_attention",
    "run_benchmark",
    "run_once",
    "tower_benchmark",
    "tower_markdown",
]
