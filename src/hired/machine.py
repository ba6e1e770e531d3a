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
