"""Device clocks: one mark API over CUDA events and ``perf_counter``, and the per-pass stage clock of the
vision step (vision tower, score hooks, selection, projector) that the runtimes switch on for benchmarks."""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch
from torch import nn


class Clock:
    """Marks on one device: CUDA events on a CUDA device, ``perf_counter`` otherwise."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def seconds(self, a, b) -> float:
        """Seconds from mark ``a`` to mark ``b`` (after ``sync`` on CUDA)."""
        if self.cuda:
            return a.elapsed_time(b) / 1000.0
        return b - a


class StageClock(Clock):
    """Per-pass marks of the vision step's stages: ``perf_counter`` on a CPU, CUDA events (no
    synchronisation inside the pass; one when the timings are read) on CUDA."""

    def __init__(self, device: torch.device):
        super().__init__(device)
        self.passes: list[dict] = []
        self.current: dict | None = None

    def watch(self, stages: Mapping[str, nn.Module | None]) -> list:
        """Mark ``<stage>_start`` / ``<stage>_end`` around each module's forward (``None``: not watched);
        returns the hook handles."""
        handles = []
        for stage, module in stages.items():
            if module is None:
                continue
            handles.append(module.register_forward_pre_hook(self._marker(f"{stage}_start")))
            handles.append(module.register_forward_hook(self._marker(f"{stage}_end")))
        return handles

    def _marker(self, name: str):
        return lambda *_args: self.at(name)

    def begin(self) -> None:
        self.current = {"start": self.mark(), "cls": []}

    def at(self, name: str) -> None:
        """Mark ``name`` in the current pass (the last call wins)."""
        if self.current is not None:
            self.current[name] = self.mark()

    def end(self, images: int) -> None:
        if self.current is not None:
            self.current["end"] = self.mark()
            self.current["images"] = images
            self.passes.append(self.current)
        self.current = None

    def take(self) -> list[dict]:
        """Seconds per stage of every pass since the last call: ``encoder`` (the whole pass), ``vision``
        (the tower, hooks included), ``cls_rows`` (time in the score hooks, part of ``vision``),
        ``selection`` (tower end to projector start: scores, budgets, top-k, gather) and ``projector``;
        a stage the pass did not reach is ``None``."""
        if self.passes:
            self.sync()
        out = []
        for p in self.passes:

            def span(a, b, p=p):
                return self.seconds(p[a], p[b]) if a in p and b in p else None

            out.append(
                {
                    "images": p["images"],
                    "encoder": span("start", "end"),
                    "vision": span("vision_start", "vision_end"),
                    "cls_rows": sum(self.seconds(a, b) for a, b in p["cls"]),
                    "selection": span("vision_end", "projector_start"),
                    "projector": span("projector_start", "projector_end"),
                }
            )
        self.passes = []
        return out
