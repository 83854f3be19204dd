"""Process-level settings for running spiking models on a CPU.

`keep_freed_memory` asks glibc's allocator to keep the memory a training step (or a forward pass) frees for the
next one. A spiking model allocates and frees the same large activation buffers every step (T time steps of
every activation); by default glibc serves each block over its mmap threshold with fresh pages from the kernel,
which are page-faulted and zeroed on first touch and handed back when freed (docs/benchmarks.md has the page
faults and step times it saves).

The setting is process-wide, so the library never applies it on import: the `spiking-lm` commands that run
models (`train`, `distill`, `quickstart`, `glue`, `eval`, `perplexity`, `energy`) and the benchmark scripts call
it; Python users may call it themselves. ``SPIKING_LM_KEEP_FREED_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_applied: dict = {}


def keep_freed_memory(mmap_threshold_mb: int = 1024, trim_threshold_mb: int = 2047, top_pad_mb: int = 64) -> bool:
    """Keep freed memory in the process for reuse (glibc only); returns whether the setting is in force.

    Args:
        mmap_threshold_mb: blocks up to this size come from the heap instead of fresh mmap'd pages.
        trim_threshold_mb: free memory at the top of the heap is returned to the system only beyond this.
        top_pad_mb: extra memory obtained with each heap extension, so growth needs fewer system calls.

    The cost is memory the process holds on to after a peak (up to ``trim_threshold_mb`` free at the top of the
    heap), as a GPU caching allocator does. A no-op returning `False` where the C library is not glibc or
    ``SPIKING_LM_KEEP_FREED_MEMORY=0``.
    """
    for value in (mmap_threshold_mb, trim_threshold_mb, top_pad_mb):
        if not 0 <= value < 2048:
            raise ValueError(f"keep_freed_memory sizes are in MiB and must lie in [0, 2048), got {value}")
    if os.environ.get("SPIKING_LM_KEEP_FREED_MEMORY", "1") == "0":
        return False
    settings = (
        (_M_MMAP_THRESHOLD, mmap_threshold_mb),
        (_M_TRIM_THRESHOLD, trim_threshold_mb),
        (_M_TOP_PAD, top_pad_mb),
    )
    if _applied.get("settings") == settings:
        return True
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    if not all(mallopt(option, megabytes << 20) == 1 for option, megabytes in settings):
        return False
    _applied["settings"] = settings
    return True


def _glibc_mallopt():
    """glibc's ``mallopt``, or `None` on another C library (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt
