"""How a quantized weight is held and multiplied on the CPU: which integer kernel can take it, and the bytes each
layout takes. The one set of rules the load plans (`loaders/plan.py`), the estimator (`webui/estimate`) and the
kernels (`kernels/int4_cpu.py`, `kernels/int8_cpu.py`) share; no torch import, so plans are made without it.

Layouts, fastest first on a CPU:
- "int4": torch's CPU int4 kernel (`_weight_int4pack_mm_for_cpu`): 4-bit integers packed two per byte, a bf16
  (scale, zero) pair per group of 32-256 inputs and output. GPTQ at 2, 3 or 4 bits and GGUF Q4_0 / Q4_1 / Q4_K
  map onto it exactly (up to the rounding of their scales to bf16).
- "int8": torch's int8 kernel (`_weight_int8pack_mm`): int8 values, one scale per output. GPTQ 8-bit with one
  group per column (`group_size` -1) maps onto it exactly, its zero points folded into a per-output offset.
- "dequantized cache": the weight dequantized once, kept in the compute dtype (dense matmul; 2-4 bytes/weight).
- "per-call": the stored bytes only, dequantized at every call (least memory, slowest).
- "triton": CUDA kernels on the stored bytes.
"""

from __future__ import annotations

from typing import Literal

Layout = Literal["int4", "int8", "dequantized cache", "per-call", "triton"]
INTEGER_LAYOUTS: tuple[Layout, ...] = ("int4", "int8")

INT4_GROUPS = (256, 128, 64, 32)  # the group sizes torch's CPU int4 kernel accepts, largest first
INT4_OUT_MULTIPLE = 16  # its packing takes out_features in multiples of 16
INT4_GGUF_TYPES = ("Q4_0", "Q4_1", "Q4_K")  # their 32-weight (sub-)blocks carry one scale and one offset each
GGUF_INT4_GROUP = 32
SCALE_ZERO_BYTES = 4  # one bf16 scale and one bf16 zero per (group, output)
INT8_EXTRA_BYTES = 2 + 4  # per output: a bf16 scale and an fp32 offset (the zero point times the scale)
PERM_BYTES = 8  # per input, int64: the act-order permutation applied to the activations


def int4_group(n_in: int, group_size: int) -> int:
    """The kernel group for a weight whose scales change every `group_size` inputs (-1: never): the largest
    accepted size dividing both, so every kernel group lies inside one stored group; 0 when none does."""
    return next((g for g in INT4_GROUPS if n_in % g == 0 and (group_size == -1 or group_size % g == 0)), 0)


def gptq_integer_layout(bits: int, group_size: int, n_out: int, n_in: int) -> Layout | None:
    """The integer kernel a GPTQ Linear of this shape runs on, or None (it then takes the plan's fallback)."""
    if bits <= 4 and n_out % INT4_OUT_MULTIPLE == 0 and int4_group(n_in, group_size):
        return "int4"
    if bits == 8 and (group_size == -1 or group_size >= n_in):
        return "int8"
    return None


def gguf_integer_layout(qtype: str, n_out: int, n_in: int) -> Layout | None:
    """The integer kernel a GGUF tensor of block type `qtype` (name, e.g. "Q4_1") and this shape runs on, or None."""
    if qtype in INT4_GGUF_TYPES and n_out % INT4_OUT_MULTIPLE == 0 and n_in % GGUF_INT4_GROUP == 0:
        return "int4"
    return None


def int4_bytes(n_out: int, n_in: int, group: int, *, permuted: bool = False) -> int:
    """Bytes of an "int4" weight: the packed integers, the (scale, zero) pairs, the act-order permutation."""
    return n_out * n_in // 2 + n_in // group * n_out * SCALE_ZERO_BYTES + (n_in * PERM_BYTES if permuted else 0)


def layout_bytes(layout: Layout, n_out: int, n_in: int, *, stored: int, act_bytes: int, group: int = GGUF_INT4_GROUP,
                 permuted: bool = False) -> int:  # fmt: skip
    """Bytes one Linear holds in `layout`; `stored` = its bytes as stored (what per-call and Triton keep)."""
    if layout == "int4":
        return int4_bytes(n_out, n_in, group, permuted=permuted)
    if layout == "int8":
        return n_out * n_in + n_out * INT8_EXTRA_BYTES
    if layout == "dequantized cache":
        return n_out * n_in * act_bytes
    return stored
