"""How this process hands freed memory back to the system (glibc's malloc; elsewhere nothing is changed):
`return_freed_memory` before a load, `trim_heap` after it.

glibc raises its mmap threshold each time a large block is freed, up to 32 MiB, so that a model load's
many megabyte-sized copies (read, unpacked, repacked, dropped) end up on the heap, where the freed ones stay
in the process: the same GPTQ load then kept 640 or 720 MB after it and peaked anywhere from 760 MB to 1.27 GB,
run to run (SmolLM2 8-bit, measured by tests/memprobe.py). Pinning the threshold at glibc's own default
(128 KiB) makes every large block its own mapping, returned when freed: the memory the estimate predicts, every
time. Decode speed did not change measurably (its per-step buffers are small).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's default, kept fixed (setting it turns the dynamic adjustment off)


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def trim_heap() -> None:
    """Give the heap a load freed back to the system (glibc keeps its top otherwise: ~100 MB more than the tensors
    of a 135M GPTQ model, measured before the threshold was pinned)."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)  # not in musl
    if trim is not None:
        trim(0)


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold (idempotent); False where the C library is not glibc."""
    mallopt = getattr(_libc(), "mallopt", None)  # musl and others: none
    if mallopt is None:
        return False
    if not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
        log.debug("mallopt(M_MMAP_THRESHOLD) refused")
        return False
    return True
