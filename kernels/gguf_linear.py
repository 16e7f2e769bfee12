"""PyTorch modules that hold GGUF weights: a Linear and an Embedding.

The raw bytes live in a non-persistent `qweight` buffer (uint8, one row per output feature / token), usually a view
of the memory-mapped file, so `.to(device)` moves them and nothing is dequantized until a forward needs it.
`GGUFLinear.prepare()`, once the module sits on its final device, may replace them (as the load plan says) by
torch's CPU int4 layout ("int4": Q4_0, Q4_1, Q4_K) or by the weight dequantized once ("cache"); otherwise every call
dequantizes ("per-call", Triton on CUDA: `kernels.gguf_dispatch`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType
from torch import nn

from kernels import gguf_torch, int4_cpu
from kernels.cpu_layout import gguf_integer_layout
from kernels.gguf_dispatch import quantized_matmul

Mode = Literal["unprepared", "int4", "cache", "per-call"]


class GGUFLinear(nn.Module):
    """y = x @ W.T with W (out_features, in_features) kept as GGUF blocks; no bias (Llama has none)."""

    def __init__(self, qweight: torch.Tensor, qtype: GGMLQuantizationType, out_features: int, in_features: int) -> None:
        super().__init__()
        if qweight.shape != (out_features, gguf_torch.row_bytes(qtype, in_features)):
            raise ValueError(f"{qtype.name} bytes of shape {tuple(qweight.shape)} do not hold a "
                             f"{out_features}x{in_features} weight")  # fmt: skip
        self.register_buffer("qweight", qweight, persistent=False)
        self.qtype = GGMLQuantizationType(qtype)
        self.out_features = out_features
        self.in_features = in_features
        self.mode: Mode = "unprepared"  # behaves as "per-call"
        self._int4: int4_cpu.Int4Weight | None = None
        self._weight: torch.Tensor | None = None  # [out, in] in the compute dtype ("cache")

    def prepare(self, *, dtype: torch.dtype, cache: bool, integer: bool = False) -> Mode:
        """On the CPU the int4 kernel when `integer` and the type maps onto it; else the weight dequantized to `dtype`
        when `cache`; else per call. Once; the block bytes are dropped when replaced."""
        if self.mode != "unprepared":
            raise RuntimeError("GGUFLinear.prepare runs once: the block bytes may be gone")
        shape = (self.out_features, self.in_features)
        on_cpu = self.qweight.device.type == "cpu"
        if integer and on_cpu and gguf_integer_layout(self.qtype.name, *shape) == "int4":
            self._int4, self.mode = int4_cpu.from_gguf(self.qweight, self.qtype, shape), "int4"
        elif cache:
            self._weight, self.mode = dequantize_tiled(self.qweight, self.qtype, shape, dtype), "cache"
        else:
            self.mode = "per-call"
        if self.mode != "per-call":  # an empty stand-in: the layer still says where it lives (peft's LoRA reads it)
            self.qweight = torch.empty(0, dtype=torch.uint8, device=self.qweight.device)
        return self.mode

    def prepared_tensors(self) -> list[torch.Tensor]:
        """Tensors `prepare` made in place of the block bytes (for memory reports)."""
        if self._int4 is not None:
            return self._int4.tensors()
        return [] if self._weight is None else [self._weight]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if self.mode == "int4":
            return int4_cpu.matmul(x, self._int4)
        if self.mode == "cache":
            return F.linear(x.to(self._weight.dtype), self._weight).to(x.dtype)  # casts the activations, never W
        return quantized_matmul(x, self.qweight, self.qtype, (self.out_features, self.in_features))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, qtype={self.qtype.name}, "
                f"mode={self.mode}")  # fmt: skip


def dequantize_tiled(raw: torch.Tensor, qtype: GGMLQuantizationType, shape: tuple[int, int],
                     dtype: torch.dtype) -> torch.Tensor:  # fmt: skip
    """The weight in `dtype`, dequantized a tile of rows at a time: no float32 copy of a large matrix at once."""
    n_out, n_in = shape
    rows, step = raw.reshape(n_out, -1), gguf_torch.tile_rows(n_in)
    out = torch.empty(shape, dtype=dtype, device=raw.device)
    for start in range(0, n_out, step):
        stop = min(start + step, n_out)
        out[start:stop] = gguf_torch.dequantize(rows[start:stop], qtype, (stop - start, n_in))
    return out


class GGUFEmbedding(nn.Module):
    """Token embedding kept as GGUF blocks: only the looked-up rows are dequantized."""

    def __init__(self, qweight: torch.Tensor, qtype: GGMLQuantizationType, num_embeddings: int, dim: int,
                 dtype: torch.dtype) -> None:  # fmt: skip
        super().__init__()
        self.register_buffer("qweight", qweight, persistent=False)
        self.qtype = GGMLQuantizationType(qtype)
        self.num_embeddings = num_embeddings
        self.embedding_dim = dim
        self.dtype = dtype

    @property
    def weight(self) -> torch.Tensor:
        """The raw block bytes (uint8), for callers that only ask the input embedding for its device or dtype
        (`TorchCausalLM`, accelerate). Not a float matrix: dequantize with `kernels.gguf_torch` to read values."""
        return self.qweight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (...,) -> (..., dim)
        rows = self.qweight[ids.reshape(-1).to(self.qweight.device)]
        values = gguf_torch.dequantize(rows, self.qtype, (rows.shape[0], self.embedding_dim))
        return values.to(self.dtype).reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, qtype={self.qtype.name}"
