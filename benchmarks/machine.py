"""What the benchmarks say about the machine they ran on, so figures from different runs can be compared."""

from __future__ import annotations

import contextlib
import platform


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"
