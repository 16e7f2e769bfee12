"""Whether the optional Triton kernels can run: the one check the kernels and the load plans share."""

from __future__ import annotations

import functools
import importlib.util


@functools.cache  # asked on every quantized matmul: find_spec walks sys.path
def triton_installed() -> bool:
    """An importable `triton` (found without importing it: the import itself takes seconds)."""
    return importlib.util.find_spec("triton") is not None
