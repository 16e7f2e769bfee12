"""`GPTQLinear`: the nn.Module that replaces a quantized Linear, and the one dispatch between GPTQ backends.

`prepare()` is called once the module sits on its final device and decides how `forward` multiplies:
- "triton": CUDA, bits 2/4/8 with equal-size groups -> `kernels.gptq_triton` (act-order reordered there, once);
- "cache": a dequantized weight kept in the compute dtype (CPU when memory allows; fast, more RAM);
- "per-call": dequantize from the packed tensors at every call (`kernels.gptq_torch`; least memory).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from kernels import gptq_torch
from kernels.availability import triton_installed

Mode = Literal["unprepared", "triton", "cache", "per-call"]


def triton_runs_on(device: torch.device) -> bool:
    """Triton kernels run here: a CUDA device and an importable triton."""
    return device.type == "cuda" and triton_installed()


class GPTQLinear(nn.Module):
    """y = x @ W^T + b with W stored as GPTQ tensors (see `kernels.gptq_torch` for the layout)."""

    def __init__(self, tensors: gptq_torch.GPTQTensors, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.in_features = tensors.in_features
        self.out_features = tensors.out_features
        self.bits = tensors.bits
        self.zero_offset = tensors.zero_offset
        self.register_buffer("qweight", tensors.qweight)
        self.register_buffer("qzeros", tensors.qzeros)
        self.register_buffer("scales", tensors.scales)
        self.register_buffer("g_idx", tensors.g_idx)
        self.register_buffer("bias", bias)
        self.mode: Mode = "unprepared"
        self._triton = None  # kernels.gptq_triton.TritonGPTQWeight in "triton" mode
        self._weight: torch.Tensor | None = None  # [out, in] in "cache" mode

    def tensors(self) -> gptq_torch.GPTQTensors:
        return gptq_torch.GPTQTensors(self.qweight, self.qzeros, self.scales, self.g_idx, self.bits, self.zero_offset)

    def dequantized_bytes(self, dtype: torch.dtype) -> int:
        return self.in_features * self.out_features * torch.empty((), dtype=dtype).element_size()

    def prepare(self, *, dtype: torch.dtype, cache: bool) -> Mode:
        """Choose the backend for the current device (Triton on CUDA when it can, else `cache` or per-call)."""
        self._triton, self._weight = None, None
        if triton_runs_on(self.qweight.device):
            from kernels import gptq_triton

            self._triton = gptq_triton.prepare(self.tensors())
        if self._triton is not None:
            self.mode = "triton"
        elif cache:
            self._weight = gptq_torch.dequantize(self.tensors(), dtype).t().contiguous()
            self.mode = "cache"
        else:
            self.mode = "per-call"
        return self.mode

    def prepared_tensors(self) -> list[torch.Tensor]:
        """Tensors `prepare` made besides the buffers (for memory reports)."""
        if self._weight is not None:
            return [self._weight]
        if self._triton is not None:
            return [self._triton.qweight] if self._triton.perm is None else [self._triton.qweight, self._triton.perm]
        return []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "triton":
            from kernels import gptq_triton

            out = gptq_triton.matmul(x, self._triton)
        elif self.mode == "cache":
            out = F.linear(x, self._weight)
        else:
            out = gptq_torch.matmul(x, self.tensors())
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bits={self.bits}, mode={self.mode}"
