"""The engine both runtimes share, framework-free (torch only; no transformers, no vLLM).

- :mod:`~hired.engine.plan`: a method checked against a model's family once (:func:`make_plan`), and
  the count of placeholders each image gets;
- :mod:`~hired.engine.tokens`: select, pack and project the kept tokens (partitions with newlines, or one
  grid of merged tokens per image), and the oracle's "first N tokens" for benchmarks;
- :mod:`~hired.engine.report`: the one :class:`~hired.selection.ImageSelection` builder;
- :mod:`~hired.engine.clock`: device clocks and the per-pass stage clock.

A runtime (the transformers adapter, the vLLM plugin) runs the tower with the score hooks, then asks the
engine what to keep and how to report it.
"""

from __future__ import annotations

from hired.engine.clock import Clock, StageClock
from hired.engine.plan import Plan, make_plan
from hired.engine.report import image_selections
from hired.engine.tokens import oracle_keep, pack_and_project, select_merged, select_partitions

__all__ = [
    "Clock",
    "Plan",
    "StageClock",
    "image_selections",
    "make_plan",
    "oracle_keep",
    "pack_and_project",
    "select_merged",
    "select_partitions",
]
