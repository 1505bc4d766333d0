"""Facts about this machine that are not its NUMA topology (that is `topology`): memory
available, the CPU caches, /proc fields. One home for each, so no two modules read them
differently."""

from __future__ import annotations

import os
from pathlib import Path


def proc_bytes(path: str, key: str) -> int | None:
    """A 'Key:   N kB' field of a /proc file (meminfo, self/status) in bytes; None if absent."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def mem_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes; None if unknown."""
    return proc_bytes("/proc/meminfo", "MemAvailable")


def system_memory() -> tuple[int, int]:
    """(total, free) bytes of physical memory (sysconf); (0, 0) when unknown."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0, 0


def largest_cache(root: str = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """Bytes of CPU 0's largest cache (sysfs), 0 when unknown."""
    best = 0
    for d in Path(root).glob("index*"):
        try:
            text = (d / "size").read_text().strip()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            best = max(best, int(digits) * mult)
    return best


def rss_bytes() -> int:
    """Resident memory of this process now (file-backed pages included)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    import platform

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            return next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model
            )
    except OSError:
        return model
