"""Process settings that make a batch stage cheaper to run; each is best effort and says why.

A stage frees and reallocates the same large buffers every batch, and numpy brings a BLAS
thread pool that the stages never use: with the C library's and OpenBLAS's defaults both cost
CPU that the pipeline's other stages could have had.
"""

from __future__ import annotations

import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_MAX = 32 << 20  # glibc's upper bound for M_MMAP_THRESHOLD on 64-bit
TRIM = 256 << 20


def one_blas_thread() -> None:
    """Ask numpy's OpenBLAS for no worker threads. Call it before numpy is first imported.

    Its worker thread spins (yielding) for a while after numpy's import even when nothing calls
    BLAS: up to ~40 ms of CPU per process on a two-core machine, less when the other core is
    busy, for nothing (the stages make no large matrix products). A value the user set is kept.
    """
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def keep_freed_memory() -> None:
    """Serve buffers up to 32 MiB from the heap and keep up to 256 MiB of freed heap.

    With glibc's defaults each batch's arrays and read buffers are fresh mmaps, or trimmed heap
    faulted in again: ~50 page faults per thousand records. This cuts them by 40-50% and the
    stage's system time by a third. Freed memory is kept for reuse, not added to: enrich's
    peak RSS is unchanged, screen's grows by about 30 MB. Nothing happens where the C library
    has no mallopt (macOS, musl).
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_MAX)
    mallopt(M_TRIM_THRESHOLD, TRIM)
