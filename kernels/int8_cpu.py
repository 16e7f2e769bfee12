"""8-bit GPTQ weights in torch's CPU int8 kernel (`torch.ops.aten._weight_int8pack_mm`), converted once at load.

The kernel computes `x @ (q * scale[:, None]).T` for int8 `q` [out, in] and one scale per output; its vectorised
path takes bfloat16 activations (float32 is ~50x slower, measured on torch 2.13), so activations enter in bf16 and
leave in the caller's dtype. A GPTQ 8-bit Linear with one group per column (`group_size` -1: with act-order the
order of the inputs then does not matter) is `W = s * (q - z)` with q in 0..255: stored as `q - 128` in int8, and
`s * (128 - z) * sum(x)` added per output (zero when the quantization is symmetric, z = 128). The bf16 scales are
the only rounding of the weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels import gptq_torch
from kernels.cpu_layout import INT8_EXTRA_BYTES

KERNEL_DTYPE = torch.bfloat16


@dataclass
class Int8Weight:
    q: torch.Tensor  # int8 [out, in]
    scales: torch.Tensor  # bf16 [out]
    offset: torch.Tensor | None  # float32 [out]: added times the sum of each activation row; None when all zero

    @property
    def in_features(self) -> int:
        return self.q.shape[1]

    @property
    def out_features(self) -> int:
        return self.q.shape[0]

    def tensors(self) -> list[torch.Tensor]:
        return [self.q, self.scales] + ([] if self.offset is None else [self.offset])

    @property
    def nbytes(self) -> int:
        return self.q.numel() + self.out_features * INT8_EXTRA_BYTES


def from_gptq(t: gptq_torch.GPTQTensors) -> Int8Weight | None:
    """An 8-bit GPTQ Linear with a single group in the kernel's layout; None for other bits or several groups."""
    if t.bits != 8 or t.scales.shape[0] != 1:
        return None
    q = (gptq_torch.unpack_rows(t.qweight, 8) - 128).to(torch.int8).t().contiguous()  # [out, in]
    scale = t.scales[0].float()
    shift = 128 - gptq_torch.zeros_int(t)[0]
    offset = None if bool((shift == 0).all()) else scale * shift.float()
    return Int8Weight(q, scale.to(KERNEL_DTYPE), offset)


def matmul(x: torch.Tensor, w: Int8Weight) -> torch.Tensor:
    """x [..., in] @ W.T -> [..., out] in x's dtype."""
    rows = x.reshape(-1, w.in_features).to(KERNEL_DTYPE).contiguous()
    out = torch.ops.aten._weight_int8pack_mm(rows, w.q, w.scales)
    if w.offset is not None:
        out = out.float() + rows.float().sum(-1, keepdim=True) * w.offset
    return out.to(x.dtype).reshape(*x.shape[:-1], w.out_features)
