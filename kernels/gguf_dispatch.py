"""Picks the kernel for a GGUF quantized matmul: Triton's fused dequantize-GEMV on CUDA for decode-sized inputs,
the PyTorch path (`kernels.gguf_torch.gguf_matmul`) everywhere else (CPU, prefill on GPU, types without a kernel).
"""

from __future__ import annotations

import torch
from gguf import GGMLQuantizationType

from kernels import gguf_torch
from kernels.availability import triton_installed

# Up to this many activation rows (decode, one per live sequence) the Triton kernel reads the blocks once for all rows
# (`gguf_triton.MAX_ROWS`); above it (prefill) a dequantized weight + cuBLAS matmul wins.
GEMV_MAX_ROWS = 16


def quantized_matmul(
    x: torch.Tensor, qweight: torch.Tensor, qtype: GGMLQuantizationType | int, shape: tuple[int, int]
) -> torch.Tensor:
    """`x @ W.T` for `W` of `shape` (out, in) kept as raw GGUF bytes `qweight` on x's device."""
    rows = x.numel() // shape[1]
    if x.is_cuda and rows <= GEMV_MAX_ROWS and triton_installed():
        from kernels import gguf_triton  # imported here: triton is optional and only useful with CUDA

        if GGMLQuantizationType(qtype) in gguf_triton.SUPPORTED:
            return gguf_triton.gemv(x, qweight, qtype, shape)
    return gguf_torch.gguf_matmul(x, qweight, qtype, shape)
