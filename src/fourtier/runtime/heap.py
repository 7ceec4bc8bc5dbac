"""The C heap of a long stage: glibc's mmap threshold fixed on import, and free pages given back between batches.

Both keep a stage's peak memory that of one batch, not one that grows with the number of batches. Imported by
fourtier.runtime.hardware (so by every module that runs a network) and by the caption runner; it needs no torch.
"""
from __future__ import annotations

import ctypes
import os
import sys

# glibc raises its mmap threshold each time a block above it is freed (up to 32 MiB), after which the per-batch
# tensors of changing sizes (embed's padded answers, features' decoded clips) come from the heap, which
# fragments and never shrinks: a stage's peak then grows with the number of batches, not their size (embed
# 1,000 -> 16,000 clips: 858 -> 1,227 MB). A fixed threshold keeps blocks above it in their own mappings, given
# back when freed: embed then peaks at 690 and 730 MB (benchmarks/results/scale.jsonl). 4 MiB, not 1: features
# lost 9% of its speed at 4 MiB and 16% at 1 MiB (benchmarks/results/malloc_threshold.jsonl, one run each). A
# MALLOC_MMAP_THRESHOLD_ in the environment wins; other C libraries than glibc are left alone.
MMAP_THRESHOLD = 4 << 20
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def _glibc():
    """glibc, or None (another system, or musl and others, which have no mallopt / malloc_trim)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Set glibc's mmap threshold to `threshold` bytes for this process (and the workers it forks). Returns
    whether it was set."""
    if _LIBC is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    return bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, threshold))


fix_mmap_threshold()


def release_free_heap() -> None:
    """Give the heap's free pages back to the system (glibc's malloc_trim), between batches of a long stage.
    With DataLoader workers the features stage's peak still grew with the number of batches at the fixed
    threshold (625 MB at 8,000 clips against 439 MB at 1,000): free memory that malloc kept. Trimming after every
    batch holds it at 433 MB at both (benchmarks/results/features_heap.jsonl, `python benchmarks/features_heap.py`).
    Other C libraries: nothing."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
