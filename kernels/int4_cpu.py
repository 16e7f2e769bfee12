"""4-bit weights in torch's CPU int4 kernel: GPTQ (2, 3 and 4 bits, any group size, act-order) and GGUF Q4_0 /
Q4_1 / Q4_K repacked once at load, multiplied as integers at every call.

The kernel (`torch.ops.aten._weight_int4pack_mm_for_cpu`, measured on torch 2.13) computes `x @ W.T` with
`W[n, k] = (q[n, k] - 8) * scale[k // G, n] + zero[k // G, n]`: q in 0..15 packed by
`_convert_weight_to_int4pack_for_cpu` (rows in independent runs of 64), (scale, zero) interleaved in one
`[in / G, out, 2]` tensor of x's dtype, G in 32/64/128/256, out a multiple of 16. Its vectorised paths (AVX2,
AVX-512) exist for bfloat16 only (float32 runs ~100x slower), so activations enter in bf16 and leave in the caller's
dtype; that needs no bf16 instructions, it converts to float32 inside.

Every stored weight `q * scale + offset` maps onto it exactly, with `zero = offset + 8 * scale`; the scales and
zeros are then rounded to bf16 (a relative 2^-9), the only change to the weight. Act-order GPTQ rows are sorted by
group once here, and each call gathers the activations in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from gguf import GGMLQuantizationType

from kernels import gguf_torch, gptq_torch
from kernels.cpu_layout import GGUF_INT4_GROUP, INT4_GROUPS, INT4_OUT_MULTIPLE, int4_bytes

KERNEL_DTYPE = torch.bfloat16
_PACK_ROWS = 64  # the packing lays out runs of 64 output rows independently: pack in slices to bound the int32 copy


@dataclass
class Int4Weight:
    """A Linear in the kernel's layout."""

    packed: torch.Tensor  # uint8 [out, in / 2]
    scales_zeros: torch.Tensor  # bf16 [in / group, out, 2]
    group: int
    perm: torch.Tensor | None  # int64 [in]: the activations' order (act-order), None when natural
    in_features: int
    out_features: int

    def tensors(self) -> list[torch.Tensor]:
        return [self.packed, self.scales_zeros] + ([] if self.perm is None else [self.perm])

    @property
    def nbytes(self) -> int:
        return int4_bytes(self.out_features, self.in_features, self.group, permuted=self.perm is not None)


def pack(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, group: int,
         perm: torch.Tensor | None = None) -> Int4Weight:  # fmt: skip
    """`q` [out, in] integers in 0..15; `scale`, `offset` [out, in / group] float with weight = q * scale + offset."""
    n_out, n_in = q.shape
    packed = torch.cat([
        torch.ops.aten._convert_weight_to_int4pack_for_cpu(q[i : i + _PACK_ROWS].to(torch.int32).contiguous(), 1)
        for i in range(0, n_out, _PACK_ROWS)
    ])  # fmt: skip
    zero = offset.float() + 8 * scale.float()
    scales_zeros = torch.stack([scale.float().t(), zero.t()], dim=-1).to(KERNEL_DTYPE).contiguous()
    return Int4Weight(packed, scales_zeros, group, perm, n_in, n_out)


def matmul(x: torch.Tensor, w: Int4Weight) -> torch.Tensor:
    """x [..., in] @ W.T -> [..., out] in x's dtype."""
    rows = x.reshape(-1, w.in_features)
    if w.perm is not None:
        rows = rows.index_select(1, w.perm)
    out = torch.ops.aten._weight_int4pack_mm_for_cpu(rows.to(KERNEL_DTYPE).contiguous(), w.packed, w.group,
                                                     w.scales_zeros)  # fmt: skip
    return out.to(x.dtype).reshape(*x.shape[:-1], w.out_features)


# --- GGUF ---------------------------------------------------------------------------------------------------------


def from_gguf(raw: torch.Tensor, qtype: GGMLQuantizationType | int, shape: tuple[int, int]) -> Int4Weight:
    """A Q4_0 / Q4_1 / Q4_K weight of `shape` (out, in) from its block bytes (uint8 [out, row bytes])."""
    n_out, n_in = shape
    if n_out % INT4_OUT_MULTIPLE or n_in % GGUF_INT4_GROUP:
        raise ValueError(f"a {n_out}x{n_in} weight does not fit the int4 kernel")
    rows = raw.reshape(n_out, -1)
    parts = [gguf_torch.int4_parts(rows[i : i + _PACK_ROWS], qtype, (min(_PACK_ROWS, n_out - i), n_in))
             for i in range(0, n_out, _PACK_ROWS)]  # fmt: skip
    return pack(*(torch.cat(p) for p in zip(*parts, strict=True)), GGUF_INT4_GROUP)


# --- GPTQ ---------------------------------------------------------------------------------------------------------


def from_gptq(t: gptq_torch.GPTQTensors) -> Int4Weight | None:
    """A GPTQ Linear of 2-4 bits in the kernel's layout; None when it cannot be (out features not a multiple of 16,
    or groups whose boundaries, once sorted, do not fall on multiples of 32 inputs)."""
    if t.bits > 4 or t.out_features % INT4_OUT_MULTIPLE:
        return None
    g_idx = t.g_idx.long()
    perm = torch.argsort(g_idx, stable=True)
    natural = torch.equal(perm, torch.arange(t.in_features, device=perm.device))
    sorted_groups = g_idx[perm]
    group = _kernel_group(sorted_groups)
    if not group:
        return None
    firsts = sorted_groups[::group]  # the stored group of each kernel group
    scale = t.scales.float()[firsts]  # [in / group, out]
    zeros = gptq_torch.zeros_int(t)  # [n_groups, out]
    q = gptq_torch.unpack_rows(t.qweight, t.bits)  # [in, out]
    q = q if natural else q[perm]
    centred = q - zeros[sorted_groups]  # q - zero, row by row (rows in kernel order)
    if int(centred.min()) >= -8 and int(centred.max()) <= 7:
        # Symmetric 4-bit, and any 2 / 3-bit: the zero point folds into the integers (q - zero + 8), so the kernel's
        # zero is exactly 0 and only the scale is rounded; an unfolded zero (scale * (8 - zero), in bf16) would add
        # its own rounding, which for 2-bit weights (|q - zero| <= 3, |8 - zero| up to 8) is ~3x bf16's.
        return pack((centred + 8).t(), scale.t(), -8 * scale.t(), group, None if natural else perm)
    offset = -scale * zeros.float()[firsts]
    return pack(q.t(), scale.t(), offset.t(), group, None if natural else perm)


def _kernel_group(sorted_groups: torch.Tensor) -> int:
    """The largest kernel group size whose runs of inputs each lie in one stored group; 0 when none."""
    n_in = sorted_groups.shape[0]
    for group in INT4_GROUPS:
        if n_in % group == 0 and bool((sorted_groups.view(-1, group) == sorted_groups[::group, None]).all()):
            return group
    return 0
