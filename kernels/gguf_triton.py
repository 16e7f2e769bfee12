"""Triton kernels for GGUF weights: fused dequantize + matrix-vector products (decode), for every block type.

Owns `gemv(x, qweight, qtype, shape)`: y = x @ W.T for up to `MAX_ROWS` activation rows (decode, one row per live
sequence), with W held in its GGUF block format. One program computes `BLOCK_N` output features, walking the input
dimension one quant block at a time and dequantizing in registers; `_dequant_block` picks the layout at compile time
from the `QTYPE` constexpr (values of `GGMLQuantizationType`), so each type compiles to its own specialised kernel.
One row: a multiply-and-reduce. Two to sixteen rows (a decode batch): each dequantized block is used by every row
through one `tl.dot`, so the weights are read once per step, not once per sequence. The float types (F32, F16,
BF16) use a plain typed-load kernel, one row at a time.

The layouts are those of `kernels/gguf_torch.py` (and gguf-py's `quants.py`); the tests run these kernels under
`TRITON_INTERPRET=1` on CPU tensors against that PyTorch path, so CI checks them without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

Q = GGMLQuantizationType
QUANT_TYPES = (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K)
FLOAT_TYPES = {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}
FLOAT_CHUNK = 64  # input columns per loop step of the float kernel
SUPPORTED = frozenset(QUANT_TYPES) | frozenset(FLOAT_TYPES)
MAX_ROWS = 16  # activation rows one call takes (tl.dot's smallest tile)

# tl.constexpr copies of the type ids, usable inside @triton.jit code
_Q4_0: tl.constexpr = tl.constexpr(int(Q.Q4_0))
_Q4_1: tl.constexpr = tl.constexpr(int(Q.Q4_1))
_Q5_0: tl.constexpr = tl.constexpr(int(Q.Q5_0))
_Q5_1: tl.constexpr = tl.constexpr(int(Q.Q5_1))
_Q8_0: tl.constexpr = tl.constexpr(int(Q.Q8_0))
_Q2_K: tl.constexpr = tl.constexpr(int(Q.Q2_K))
_Q3_K: tl.constexpr = tl.constexpr(int(Q.Q3_K))
_Q4_K: tl.constexpr = tl.constexpr(int(Q.Q4_K))
_Q5_K: tl.constexpr = tl.constexpr(int(Q.Q5_K))
_Q6_K: tl.constexpr = tl.constexpr(int(Q.Q6_K))


@triton.jit
def _u8(base, offset, mask):
    """Byte(s) at `base + offset` as int32."""
    return tl.load(base + offset, mask=mask, other=0).to(tl.int32)


@triton.jit
def _f16(base, offset, mask):
    """Little-endian fp16 at `base + offset` as float32."""
    bits = _u8(base, offset, mask) | (_u8(base, offset + 1, mask) << 8)
    return bits.to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _legacy(base, j, mask, QTYPE: tl.constexpr):
    """32-weight blocks. base: [BLOCK_N, 1] pointers to the block; j: [1, 32] weight index -> [BLOCK_N, 32] fp32."""
    if QTYPE == _Q8_0:
        q = _u8(base, 2 + j, mask).to(tl.int8).to(tl.float32)
        return q * _f16(base, 0, mask)
    else:
        # Q4_0 / Q4_1 / Q5_0 / Q5_1: a 4-bit low part, low nibbles are weights 0-15, high nibbles 16-31
        HAS_MIN: tl.constexpr = QTYPE == _Q4_1 or QTYPE == _Q5_1
        FIVE_BIT: tl.constexpr = QTYPE == _Q5_0 or QTYPE == _Q5_1
        QS: tl.constexpr = 2 + 2 * HAS_MIN + 4 * FIVE_BIT
        q = (_u8(base, QS + (j % 16), mask) >> ((j // 16) * 4)) & 0x0F
        if FIVE_BIT:
            q = q | (((_u8(base, QS - 4 + j // 8, mask) >> (j % 8)) & 1) << 4)
        d = _f16(base, 0, mask)
        if HAS_MIN:
            return d * q.to(tl.float32) + _f16(base, 2, mask)
        else:
            return d * (q - 8 - 8 * FIVE_BIT).to(tl.float32)


@triton.jit
def _k_scale_min(base, s, mask):
    """Q4_K/Q5_K 6-bit scale and min of sub-block s (0-7) from the 12 bytes at base + 4."""
    a = _u8(base, 4 + s, mask)
    b = _u8(base, 8 + s, mask)
    c = _u8(base, 4 + (s & 3), mask)
    low = s < 4
    sc = tl.where(low, a & 63, (b & 15) | ((c >> 2) & 0x30))
    mn = tl.where(low, b & 63, (b >> 4) | ((a >> 2) & 0x30))
    return sc.to(tl.float32), mn.to(tl.float32)


@triton.jit
def _kquant(base, j, mask, QTYPE: tl.constexpr):
    """256-weight super-blocks. base: [BLOCK_N, 1]; j: [1, 256] -> [BLOCK_N, 256] fp32."""
    if QTYPE == _Q2_K:
        q = (_u8(base, 16 + (j // 128) * 32 + (j % 32), mask) >> (((j // 32) % 4) * 2)) & 3
        sc = _u8(base, j // 16, mask)
        dl = _f16(base, 80, mask) * (sc & 15).to(tl.float32)
        ml = _f16(base, 82, mask) * (sc >> 4).to(tl.float32)
        return dl * q.to(tl.float32) - ml
    elif QTYPE == _Q3_K:
        low = (_u8(base, 32 + (j // 128) * 32 + (j % 32), mask) >> (((j // 32) % 4) * 2)) & 3
        high = (_u8(base, j % 32, mask) >> (j // 32)) & 1
        i = j // 16
        sl = (_u8(base, 96 + (i % 8), mask) >> ((i // 8) * 4)) & 15
        sh = (_u8(base, 104 + (i % 4), mask) >> ((i // 4) * 2)) & 3
        dl = _f16(base, 108, mask) * ((sl | (sh << 4)) - 32).to(tl.float32)
        return dl * (low - 4 * (1 - high)).to(tl.float32)
    elif QTYPE == _Q6_K:
        low = (_u8(base, (j // 128) * 64 + (j % 64), mask) >> (((j // 64) % 2) * 4)) & 15
        high = (_u8(base, 128 + (j // 128) * 32 + (j % 32), mask) >> (((j // 32) % 4) * 2)) & 3
        sc = _u8(base, 192 + j // 16, mask).to(tl.int8).to(tl.float32)
        return _f16(base, 208, mask) * sc * (((low | (high << 4)) - 32).to(tl.float32))
    else:
        # Q4_K / Q5_K: 8 sub-blocks of 32 with a 6-bit scale and min each
        QS: tl.constexpr = 16 + 32 * (QTYPE == _Q5_K)
        q = (_u8(base, QS + (j // 64) * 32 + (j % 32), mask) >> (((j // 32) % 2) * 4)) & 15
        if QTYPE == _Q5_K:
            q = q | (((_u8(base, 16 + (j % 32), mask) >> (j // 32)) & 1) << 4)
        sc, mn = _k_scale_min(base, j // 32, mask)
        return (_f16(base, 0, mask) * sc) * q.to(tl.float32) - _f16(base, 2, mask) * mn


@triton.jit
def _block(base, j, mask, QTYPE: tl.constexpr, BLOCK: tl.constexpr):
    """One quant block of each of BLOCK_N rows, dequantized: [BLOCK_N, BLOCK] fp32."""
    if BLOCK == 32:
        return _legacy(base, j, mask, QTYPE)
    else:
        return _kquant(base, j, mask, QTYPE)


@triton.jit
def _gemv_quant_kernel(
    x_ptr, w_ptr, y_ptr, N, K, row_bytes, stride_xm, stride_ym,
    QTYPE: tl.constexpr, BLOCK: tl.constexpr, TYPE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    m = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < N)[:, None]
    j = tl.arange(0, BLOCK)[None, :]
    row_base = w_ptr + rows.to(tl.int64)[:, None] * row_bytes  # [BLOCK_N, 1]
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for b in range(0, K // BLOCK):
        w = _block(row_base + b * TYPE_SIZE, j, mask, QTYPE, BLOCK)
        xv = tl.load(x_ptr + m * stride_xm + b * BLOCK + j).to(tl.float32)  # [1, BLOCK]
        acc += tl.sum(w * xv, axis=1)
    tl.store(y_ptr + m * stride_ym + rows, acc, mask=rows < N)


@triton.jit
def _gemv_rows_kernel(
    x_ptr, w_ptr, y_ptr, M, N, K, row_bytes, stride_xm, stride_ym,
    QTYPE: tl.constexpr, BLOCK: tl.constexpr, TYPE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """y[:M, rows] for M <= BLOCK_M activation rows: each block is dequantized once and multiplied by every row."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < N)[:, None]
    j = tl.arange(0, BLOCK)[None, :]
    ms = tl.arange(0, BLOCK_M)[:, None]
    row_base = w_ptr + rows.to(tl.int64)[:, None] * row_bytes  # [BLOCK_N, 1]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for b in range(0, K // BLOCK):
        w = _block(row_base + b * TYPE_SIZE, j, mask, QTYPE, BLOCK)
        xv = tl.load(x_ptr + ms * stride_xm + b * BLOCK + j, mask=ms < M, other=0.0)  # [BLOCK_M, BLOCK]
        if IEEE:  # float32 activations: full-precision products (the default would round to tf32)
            acc += tl.dot(xv, tl.trans(w), input_precision="ieee")
        else:
            acc += tl.dot(xv, tl.trans(w).to(xv.dtype))
    tl.store(y_ptr + ms * stride_ym + rows[None, :], acc, mask=(ms < M) & (rows < N)[None, :])


@triton.jit
def _gemv_float_kernel(x_ptr, w_ptr, y_ptr, N, K, stride_xm, stride_ym, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr):
    m = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, CHUNK)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k in range(0, K, CHUNK):
        col_mask = (k + cols) < K
        mask = (rows < N)[:, None] & col_mask[None, :]
        w = tl.load(w_ptr + rows.to(tl.int64)[:, None] * K + k + cols[None, :], mask=mask, other=0.0)
        xv = tl.load(x_ptr + m * stride_xm + k + cols, mask=col_mask, other=0.0)
        acc += tl.sum(w.to(tl.float32) * xv.to(tl.float32)[None, :], axis=1)
    tl.store(y_ptr + m * stride_ym + rows, acc, mask=rows < N)


def gemv(
    x: torch.Tensor, qweight: torch.Tensor, qtype: GGMLQuantizationType | int, shape: tuple[int, int],
    *, block_n: int = 16,
) -> torch.Tensor:  # fmt: skip
    """x: (..., K) with at most `MAX_ROWS` rows; qweight: raw uint8 bytes of W (N, K) -> (..., N) in x's dtype (fp32
    accumulate)."""
    qtype = GGMLQuantizationType(qtype)
    n_out, n_in = shape
    x2 = x.reshape(-1, n_in).contiguous()
    m = x2.shape[0]
    if m > MAX_ROWS:
        raise ValueError(f"gemv takes at most {MAX_ROWS} rows, not {m}")
    y = torch.empty(m, n_out, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(n_out, block_n), m)
    if qtype in QUANT_TYPES and m > 1:
        block, type_size = GGML_QUANT_SIZES[qtype]
        w = qweight.reshape(n_out, -1)
        _gemv_rows_kernel[(triton.cdiv(n_out, block_n),)](
            x2, w, y, m, n_out, n_in, w.stride(0), x2.stride(0), y.stride(0),
            QTYPE=int(qtype), BLOCK=block, TYPE_SIZE=type_size, BLOCK_N=block_n, BLOCK_M=MAX_ROWS,
            IEEE=x2.dtype == torch.float32,
        )  # fmt: skip
    elif qtype in FLOAT_TYPES:
        w = qweight.reshape(-1).view(FLOAT_TYPES[qtype])
        _gemv_float_kernel[grid](x2, w, y, n_out, n_in, x2.stride(0), y.stride(0), BLOCK_N=block_n, CHUNK=FLOAT_CHUNK)
    elif qtype in QUANT_TYPES:
        block, type_size = GGML_QUANT_SIZES[qtype]
        w = qweight.reshape(n_out, -1)
        _gemv_quant_kernel[grid](
            x2, w, y, n_out, n_in, w.stride(0), x2.stride(0), y.stride(0),
            QTYPE=int(qtype), BLOCK=block, TYPE_SIZE=type_size, BLOCK_N=block_n,
        )  # fmt: skip
    else:
        raise KeyError(f"GGUF tensor type {qtype.name} has no Triton kernel")
    return y.to(x.dtype).reshape(*x.shape[:-1], n_out)
