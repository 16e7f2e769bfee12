"""`GPTQLinear`: the nn.Module that replaces a quantized Linear, and the one dispatch between GPTQ backends.

`prepare()` is called once the module sits on its final device and decides how `forward` multiplies:
- "triton": CUDA, bits 2/4/8 with equal-size groups -> `kernels.gptq_triton` (act-order reordered there, once);
- "int4": CPU, 2-4 bits -> torch's int4 kernel (`kernels.int4_cpu`, act-order sorted once);
- "int8": CPU, 8 bits in one group per column -> torch's int8 kernel (`kernels.int8_cpu`);
- "cache": a dequantized weight kept in the compute dtype (fast, more RAM);
- "per-call": dequantize from the packed tensors at every call (`kernels.gptq_torch`; the reference, least memory).
The integer kernels and the cache replace the stored tensors (they are dropped); which layouts a load may use is
the load plan's decision (`kernels/cpu_layout.py` holds the rules it applies).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from kernels import gptq_torch, int4_cpu, int8_cpu
from kernels.availability import triton_installed

Mode = Literal["unprepared", "triton", "int4", "int8", "cache", "per-call"]
STORED = ("qweight", "qzeros", "scales", "g_idx")


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
        self._integer: int4_cpu.Int4Weight | int8_cpu.Int8Weight | None = None  # "int4" / "int8" modes

    def tensors(self) -> gptq_torch.GPTQTensors:
        return gptq_torch.GPTQTensors(self.qweight, self.qzeros, self.scales, self.g_idx, self.bits, self.zero_offset)

    def prepare(self, *, dtype: torch.dtype, cache: bool, integer: bool = False) -> Mode:
        """Choose the backend for the current device: Triton on CUDA when it can; on the CPU an integer kernel when
        `integer` and the layer fits one; else the dequantized `cache` or per-call dequantization. Once."""
        if self.mode != "unprepared":
            raise RuntimeError("GPTQLinear.prepare runs once: the stored tensors may be gone")
        if triton_runs_on(self.qweight.device):
            from kernels import gptq_triton

            self._triton = gptq_triton.prepare(self.tensors())
        if self._triton is not None:
            self.mode = "triton"
        elif integer and self.qweight.device.type == "cpu" and (found := self._integer_weight()) is not None:
            self._integer, self.mode = found, "int4" if isinstance(found, int4_cpu.Int4Weight) else "int8"
        elif cache:
            self._weight = gptq_torch.dequantize(self.tensors(), dtype).t().contiguous()
            self.mode = "cache"
        else:
            self.mode = "per-call"
        if self.mode in ("int4", "int8", "cache"):
            device = self.qweight.device
            for name in STORED:  # the prepared weight replaces them
                setattr(self, name, None)
            self.qweight = torch.empty(0, dtype=torch.int32, device=device)  # a stand-in: where the layer lives
        return self.mode

    def _integer_weight(self) -> int4_cpu.Int4Weight | int8_cpu.Int8Weight | None:
        tensors = self.tensors()
        return int4_cpu.from_gptq(tensors) if self.bits <= 4 else int8_cpu.from_gptq(tensors)

    def prepared_tensors(self) -> list[torch.Tensor]:
        """Tensors `prepare` made besides the buffers (for memory reports)."""
        if self._weight is not None:
            return [self._weight]
        if self._integer is not None:
            return self._integer.tensors()
        if self._triton is not None:
            return [self._triton.qweight] if self._triton.perm is None else [self._triton.qweight, self._triton.perm]
        return []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "triton":
            from kernels import gptq_triton

            out = gptq_triton.matmul(x, self._triton)
        elif self.mode == "int4":
            out = int4_cpu.matmul(x, self._integer)
        elif self.mode == "int8":
            out = int8_cpu.matmul(x, self._integer)
        elif self.mode == "cache":
            out = F.linear(x, self._weight)
        else:
            out = gptq_torch.matmul(x, self.tensors())
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bits={self.bits}, mode={self.mode}"
