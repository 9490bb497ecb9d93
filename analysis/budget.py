r"""What a run will cost before it starts: memory and steps, refused when they cannot fit.

Each section's largest arrays are counted from the resolved config (float64, 8 bytes an
entry) with the working copies its solver holds at once; the estimate is an upper bound of
the arrays, not of Python's overhead, and is compared with the memory the machine has
available now (``MemAvailable`` of ``/proc/meminfo``). What exceeds it is refused before any
work with how much is needed and what to lower. Steps are counted the same way: a run
whose step count cannot finish in any reasonable time (more than :data:`MAX_STEPS`) is
refused with the key to change.
"""
from __future__ import annotations

import math
import os

__all__ = ["available_memory", "MAX_STEPS", "Need", "format_bytes"]

#: More steps than this in one section is refused (the paper's runs take 2e6 steps).
MAX_STEPS = 10**9


def available_memory() -> int:
    """Bytes of memory available to a new allocation now (``MemAvailable``), or the
    physical memory when that is not known."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 2**63 - 1


def format_bytes(b: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("kiB", 2**10)):
        if b >= size:
            return f"{b / size:.3g} {unit}"
    return f"{int(b)} B"


class Need:
    """A running tally of what one section needs: ``add(bytes, what, lower)``.

    ``what`` names the array and ``lower`` the config keys that shrink it, so that the
    refusal can say what to change.
    """

    def __init__(self, section: str):
        self.section = section
        self.items: list[tuple[float, str, str]] = []

    def add(self, entries: float, what: str, lower: str, *, bytes_per_entry: int = 8):
        self.items.append((float(entries) * bytes_per_entry, what, lower))
        return self

    @property
    def total(self) -> float:
        return sum(b for b, _, _ in self.items)

    def message(self, available: float) -> str:
        big = max(self.items, key=lambda it: it[0])
        return (f"[{self.section}] needs about {format_bytes(self.total)} of memory, more "
                f"than the {format_bytes(available)} available; the largest part is "
                f"{big[1]} ({format_bytes(big[0])}): lower {big[2]}")

    def check(self, available: float | None = None):
        """``None`` when it fits, else the message (see :meth:`message`)."""
        available = available_memory() if available is None else available
        if not math.isfinite(self.total) or self.total > available:
            return self.message(available)
        return None
