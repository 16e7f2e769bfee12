"""How this process hands freed memory back to the system (glibc's malloc; elsewhere nothing is changed).

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


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold (idempotent); False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    if not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
        log.debug("mallopt(M_MMAP_THRESHOLD) refused")
        return False
    return True
