"""GPTQ in plain PyTorch: the packed layout (pack / unpack), dequantization and the reference matmul.

This module owns the meaning of a GPTQ tensor set, as AutoGPTQ writes it (`QuantLinear.pack`):
- `qweight` int32 [in * bits / 32, out]: the integers of each output column, packed along the input dimension as one
  little-endian bit stream per 32 input rows (value i of a run of 32 sits at bit `bits * i`; 3-bit values 10 and 21
  straddle two words).
- `qzeros` int32 [n_groups, out * bits / 32]: zero points packed the same way along the output dimension; the "v1"
  format (`checkpoint_format: gptq`) stores zero - 1, `gptq_v2` stores the zero itself.
- `scales` fp16 [n_groups, out]; `g_idx` int32 [in]: the group of each input row (non-trivial with act-order).
Dequantized weight, as [in, out]: `W[k, n] = scales[g_idx[k], n] * (q[k, n] - zero[g_idx[k], n])`.

Everything here runs on any device; it is the CPU path and the reference every Triton kernel is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SUPPORTED_BITS = (2, 3, 4, 8)
_MASK32 = 0xFFFFFFFF


def _bit_positions(bits: int) -> list[tuple[int, int]]:
    """(word, shift) of each of the 32 values in a run of `bits` words."""
    return [divmod(bits * i, 32) for i in range(32)]


def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integers [rows, cols] (rows % 32 == 0, 0 <= v < 2**bits) along dim 0 -> int32 [rows * bits / 32, cols]."""
    rows, cols = values.shape
    runs = values.to(torch.int64).reshape(rows // 32, 32, cols)  # [runs, 32, cols]
    words = torch.zeros(rows // 32, bits, cols, dtype=torch.int64, device=values.device)
    for i, (word, shift) in enumerate(_bit_positions(bits)):
        words[:, word] |= (runs[:, i] << shift) & _MASK32
        if shift + bits > 32:  # 3-bit values 10 and 21 continue in the next word
            words[:, word + 1] |= runs[:, i] >> (32 - shift)
    return _as_int32(words.reshape(rows // 32 * bits, cols))


def pack_cols(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integers [rows, cols] (cols % 32 == 0) along dim 1 -> int32 [rows, cols * bits / 32] (the qzeros layout)."""
    return pack_rows(values.t(), bits).t().contiguous()


def unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of `pack_rows`: int32 [rows * bits / 32, cols] -> int32 [rows, cols] in [0, 2**bits)."""
    if 32 % bits == 0:  # no value straddles two words: one broadcast shift
        shifts = torch.arange(0, 32, bits, device=packed.device, dtype=torch.int32)
        values = (packed.unsqueeze(1) >> shifts.view(1, -1, 1)) & ((1 << bits) - 1)  # [words, 32 / bits, cols]
        return values.reshape(-1, packed.shape[1])
    words = packed.to(torch.int64) & _MASK32
    n_words, cols = words.shape
    words = words.reshape(n_words // bits, bits, cols)  # [runs, bits, cols]
    out = torch.empty(n_words // bits, 32, cols, dtype=torch.int64, device=packed.device)
    mask = (1 << bits) - 1
    for i, (word, shift) in enumerate(_bit_positions(bits)):
        value = words[:, word] >> shift
        if shift + bits > 32:
            value = value | (words[:, word + 1] << (32 - shift))
        out[:, i] = value & mask
    return out.reshape(n_words // bits * 32, cols).to(torch.int32)


def unpack_cols(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of `pack_cols`."""
    return unpack_rows(packed.t().contiguous(), bits).t().contiguous()


def _as_int32(words: torch.Tensor) -> torch.Tensor:
    """uint32 bit patterns held in int64 -> the same bits as int32 (what the checkpoint stores)."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


@dataclass
class GPTQTensors:
    """One quantized Linear as stored: the four tensors plus what the config says about them."""

    qweight: torch.Tensor  # int32 [in * bits / 32, out]
    qzeros: torch.Tensor  # int32 [n_groups, out * bits / 32]
    scales: torch.Tensor  # fp16 [n_groups, out]
    g_idx: torch.Tensor  # int32 [in]
    bits: int
    zero_offset: int = 1  # 1 for v1 ("gptq": stored zero - 1), 0 for gptq_v2

    @property
    def in_features(self) -> int:
        return self.g_idx.shape[0]

    @property
    def out_features(self) -> int:
        return self.scales.shape[1]


def default_g_idx(in_features: int, group_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """g_idx without act-order: row k is in group k // group_size (group_size -1 = one group)."""
    size = in_features if group_size == -1 else group_size
    return torch.arange(in_features, device=device, dtype=torch.int32) // size


def zeros_int(t: GPTQTensors) -> torch.Tensor:
    """The zero points as integers [n_groups, out] (v1's minus-one undone)."""
    return unpack_cols(t.qzeros, t.bits) + t.zero_offset


def dequantize(t: GPTQTensors, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float weight as [in, out] (transpose for nn.Linear's [out, in])."""
    q = unpack_rows(t.qweight, t.bits).to(dtype)  # [in, out]
    g = t.g_idx.long()
    zeros = zeros_int(t).to(dtype)[g]  # [in, out]; small integers, exact in any float dtype
    return (q - zeros) * t.scales.to(dtype)[g]


def matmul(x: torch.Tensor, t: GPTQTensors) -> torch.Tensor:
    """x [..., in] @ W [in, out] with W dequantized on the fly, in x's dtype."""
    return x @ dequantize(t, x.dtype)
