"""Peak memory of one run: the accelerator allocator's peak, or the largest resident set sampled on the host."""

from __future__ import annotations

import os
import resource

import torch


def current_rss_mb() -> float:
    """Resident memory of this process now (Linux /proc; the lifetime peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakMemory:
    """GPU allocator peak, or the largest RSS sampled at each step and evaluation.

    Sampling (rather than the process's lifetime maximum) keeps runs apart when a study runs many in one process.
    """

    def __init__(self) -> None:
        self.peak = 0.0
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def sample(self) -> float:
        now = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else current_rss_mb()
        self.peak = max(self.peak, now)
        return self.peak
