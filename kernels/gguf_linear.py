"""PyTorch modules that hold GGUF weights in their block format: a Linear and an Embedding.

The raw bytes live in a non-persistent `qweight` buffer (uint8, one row per output feature / token), usually a view
of the memory-mapped file, so `.to(device)` moves them and nothing is dequantized until a forward needs it.
"""

from __future__ import annotations

import torch
from gguf import GGMLQuantizationType
from torch import nn

from kernels import gguf_torch
from kernels.gguf_dispatch import quantized_matmul


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        return quantized_matmul(x, self.qweight, self.qtype, (self.out_features, self.in_features))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, qtype={self.qtype.name}"


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
