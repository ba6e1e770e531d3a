"""Clocks, stage probes and memory meters for one timed ``generate`` call.

A run is one ``generate`` call of ``new_tokens`` greedy tokens, from the raw image and prompt. Marks:

    t0 ─ processor ─ t1 ─ setup ─ vision start ─ vision tower ─ vision end ─ selection ─ projector start
       ─ projector ─ projector end ─ LLM prefill (merge, language model, head, first argmax) ─ first token
       ─ decode ─ end

so ``ttft = preprocess + setup + vision + selection + projector + prefill`` exactly. With two-pass
inputs (``hired.prepare_inputs``, needed by adaptive methods) the images are encoded while the inputs are
built: preprocess is then that step less the encoding, setup is 0 and prefill is all of ``generate`` up to
the first token. ``selection`` is
everything between the vision tower and the projector's last call before the language model: the
method's scoring (including projecting every patch, for methods that compare projected features),
budget and top-k, and the gather of the kept features (for the stock model only the choice of the
feature layer). Marks come from
forward hooks on ``vision_tower``, ``multi_modal_projector`` and ``language_model`` (first call of the
run; the modules :meth:`hired.families.Family.stages` names) and from a streamer that sees the first
generated token. Qwen2.5-VL's tower ends in its own merger: there the projector takes no time of its own
and ``selection`` runs from the tower's end to the language model's start (the method's selection, the
placement of the kept features and the M-RoPE ids; for the stock model the placement and the ids).

On CUDA every mark is a CUDA event recorded on the current stream (no extra synchronisation inside the
run; one ``synchronize`` at its end), on CPU it is ``time.perf_counter()``.
"""

from __future__ import annotations

import ctypes
import gc
import re
import resource
import sys
from pathlib import Path

import torch
from torch import nn

from hired.engine.clock import Clock

MARKS = (
    "start",
    "inputs",
    "vision_start",
    "vision_end",
    "projector_start",
    "projector_end",
    "llm_start",
    "llm_end",
    "first_token",
    "end",
)

_LAST_CALL = ("projector_start", "projector_end")
PARTS = ("preprocess", "setup", "vision", "selection", "projector", "prefill")
"""TTFT parts, in order; they add up to the TTFT."""

_PART_BOUNDS = {
    "preprocess": ("start", "inputs"),
    "setup": ("inputs", "vision_start"),
    "vision": ("vision_start", "vision_end"),
    "selection": ("vision_end", "projector_start"),
    "projector": ("projector_start", "projector_end"),
    "prefill": ("projector_end", "first_token"),
}


class _FirstToken:
    """A ``generate`` streamer that marks the first generated token (the first ``put`` is the prompt)."""

    def __init__(self, probes: Probes):
        self.probes = probes
        self.calls = 0

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2:
            self.probes.set("first_token")

    def end(self) -> None:
        pass


class Probes:
    """Forward hooks that mark the stages of one run (the modules its family names: tower, projector, language model)."""

    def __init__(self, model: nn.Module, clock: Clock):
        from hired.families import family_of

        try:
            inner, family = family_of(model)
        except TypeError as err:
            raise TypeError(f"hired bench times the models hired supports: {err}") from None
        vision, projector, language = family.stages(inner)
        self.clock = clock
        self.marks: dict[str, object] = {}
        self._handles = []
        self.self_projecting = projector is None
        # a tower that projects itself (Qwen2.5-VL's merger): the projector marks fall where the language
        # model starts, so "selection" is everything between the tower and the language model
        stages = [(vision, "vision_start", "vision_end"), (language, "llm_start", "llm_end")]
        if projector is not None:
            stages.insert(1, (projector, "projector_start", "projector_end"))
        else:
            self._handles.append(language.register_forward_pre_hook(self._setter("projector_start")))
            self._handles.append(language.register_forward_pre_hook(self._setter("projector_end")))
        for module, start, end in stages:
            self._handles.append(module.register_forward_pre_hook(self._setter(start)))
            self._handles.append(module.register_forward_hook(self._setter(end)))
        self.streamer = _FirstToken(self)

    def _setter(self, name: str):
        def hook(*_args):
            self.set(name)

        return hook

    def set(self, name: str) -> None:
        """Record mark ``name`` unless this run already has it (later decode steps do not count). The
        projector's marks are those of its last call before the language model starts: a method that
        scores projected features projects every patch first, and that projection is selection work."""
        if name not in self.marks or (name in _LAST_CALL and "llm_start" not in self.marks):
            self.marks[name] = self.clock.mark()

    def reset(self) -> None:
        self.marks = {}
        self.streamer = _FirstToken(self)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def seconds(self) -> dict[str, float]:
        """Seconds of every TTFT part plus ``ttft``, ``llm``, ``decode`` and ``total`` (call after ``sync``)."""
        missing = [m for m in MARKS if m not in self.marks]
        if missing:
            raise RuntimeError(f"the run did not pass through {', '.join(missing)}; is the image reaching the model?")
        s = self.clock.seconds
        m = self.marks
        out = {part: s(m[a], m[b]) for part, (a, b) in _PART_BOUNDS.items()}
        if s(m["inputs"], m["vision_start"]) < 0:
            # two-pass inputs (hired.prepare_inputs): the images were encoded while the inputs were built;
            # preprocess is the rest of that step, prefill all of generate up to the first token
            encode = s(m["vision_start"], m["vision_end" if self.self_projecting else "projector_end"])
            out["preprocess"] = s(m["start"], m["inputs"]) - encode
            out["setup"] = 0.0
            out["prefill"] = s(m["inputs"], m["first_token"])
        out["ttft"] = s(m["start"], m["first_token"])
        out["llm"] = s(m["llm_start"], m["llm_end"])
        out["decode"] = s(m["first_token"], m["end"])
        out["total"] = s(m["start"], m["end"])
        return out


# ------------------------------------------------------------------------------------------------ memory


def _status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def _trim_heap() -> None:
    """Return freed heap pages to the OS (glibc), so the RSS at a run's start is live memory only."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux ``/proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


class CpuMemory:
    """Peak resident set size of this process during one run.

    Before the run the garbage collector runs, glibc's free heap is returned to the OS and the kernel's
    high-water mark (VmHWM) is reset to the current RSS; after the run VmHWM is the peak RSS *during
    the run* (weights included), exact and not sampled. Where the mark cannot be reset (non-Linux) the
    figure is the process-wide peak since start (``resettable`` is False): a high-water mark that
    earlier, larger runs may hold up.
    """

    kind_resettable = "peak RSS of the process during the run (Linux VmHWM reset before each run), weights included"
    kind_lifetime = "peak RSS of the process since it started (ru_maxrss; could not be reset), weights included"

    def __init__(self):
        self.resettable = _reset_peak_rss()
        self.kind = self.kind_resettable if self.resettable else self.kind_lifetime
        self._base = 0

    def start(self) -> None:
        _trim_heap()
        if self.resettable:
            _reset_peak_rss()
            self._base = (_status_kib("VmRSS") or 0) * 1024
        else:
            self._base = _lifetime_peak()

    def stop(self) -> tuple[int, int]:
        """``(peak bytes, bytes at the run's start)``."""
        if self.resettable:
            return (_status_kib("VmHWM") or 0) * 1024, self._base
        return _lifetime_peak(), self._base


def _lifetime_peak() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


class CudaMemory:
    """``torch.cuda.max_memory_allocated`` during one run (peak statistics reset before it), weights included."""

    kind = "torch.cuda.max_memory_allocated during the run (reset before each run), weights included"

    def __init__(self, device: torch.device):
        self.device = device
        self._base = 0

    def start(self) -> None:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        self._base = torch.cuda.memory_allocated(self.device)

    def stop(self) -> tuple[int, int]:
        return torch.cuda.max_memory_allocated(self.device), self._base


def memory_meter(device: torch.device):
    """The meter for ``device``: ``CudaMemory`` on CUDA, ``CpuMemory`` otherwise."""
    return CudaMemory(device) if device.type == "cuda" else CpuMemory()
