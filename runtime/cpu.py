"""What CPU this is, read once: model name and instruction-set flags (from /proc/cpuinfo on Linux).

Both the int8 precision choice (heron.runtime.sessions) and benchmark reports (heron.runtime.metrics)
depend on the flags: AVX2 / AVX-512 / VNNI decide int8 kernel speed and, without VNNI, exactness."""
from __future__ import annotations

import functools
import platform


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset[str]]:
    """-> (model name, flags). Where /proc/cpuinfo cannot be read: (platform's name, empty set)."""
    cpu, flags = platform.processor() or platform.machine(), frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith(("flags", "Features")):
                    flags = frozenset(line.split(":", 1)[1].split())
                if flags and not cpu.startswith(platform.machine()):
                    break
    except OSError:
        pass
    return cpu, flags
