"""GGUF block formats in PyTorch: dequantization of raw block bytes on any device, and a quantized matmul.

Owns the format registry `FORMATS`: one `BlockFormat` per GGML type (block size, bytes per block, a function
`(n_blocks, type_size) uint8 -> (n_blocks, block_size) float32`). Adding a format means adding one decorated
function. The layouts follow gguf-py's `gguf/quants.py` (the reference the tests compare against bit for bit), so
every dequantizer performs the same float32 operations in the same order.

`gguf_matmul` multiplies activations by a weight kept in block format: on CPU it dequantizes a tile of rows at a time
(`MATMUL_TILE_BYTES` of float32 per tile), so the full float weight of a big matrix (the 49152-row vocabulary
projection) never exists at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from gguf import GGML_QUANT_SIZES, QK_K, GGMLQuantizationType

Dequantizer = Callable[[torch.Tensor], torch.Tensor]

# Rows of a weight are dequantized in tiles of about this many float32 bytes on CPU. Measured on SmolLM2 decode
# (1 thread): the 49152x576 Q8_0 head takes ~67 ms in 1 MiB tiles, ~75 ms in 4 MiB, ~190 ms in 16 MiB and ~540 ms
# dequantized whole; the 576..1536-wide layer weights (<= 3.5 MB of fp32) are as fast whole as tiled.
MATMUL_TILE_BYTES = 1 << 20


@dataclass(frozen=True)
class BlockFormat:
    """One GGML tensor type: `block_size` weights are stored in `type_size` bytes."""

    qtype: GGMLQuantizationType
    block_size: int
    type_size: int
    dequantize_blocks: Dequantizer


FORMATS: dict[GGMLQuantizationType, BlockFormat] = {}


def _register(qtype: GGMLQuantizationType) -> Callable[[Dequantizer], Dequantizer]:
    def add(fn: Dequantizer) -> Dequantizer:
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        FORMATS[qtype] = BlockFormat(qtype, block_size, type_size, fn)
        return fn

    return add


# --- byte helpers ---------------------------------------------------------------------------------------------------


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """(n, 2) little-endian fp16 bytes -> (n, 1) float32."""
    return raw.contiguous().view(torch.float16).to(torch.float32)


# Shifts by Python scalars, stacked: torch's CPU kernels for broadcast uint8 shifts are several times slower.


def _fields(packed: torch.Tensor, groups: int, width: int, shifts: range, mask: int) -> torch.Tensor:
    """(n, groups*width) bytes -> (n, groups, len(shifts), width): field `(byte >> shift) & mask` per shift."""
    grouped = packed.reshape(packed.shape[0], groups, width)
    return torch.stack([(grouped >> shift) & mask for shift in shifts], dim=2)


def _nibbles(qs: torch.Tensor, groups: int, width: int) -> torch.Tensor:
    """(n, groups*width) bytes -> (n, groups, 2, width): low nibbles then high nibbles of each group."""
    return _fields(qs, groups, width, range(0, 8, 4), 0x0F)


def _bits(qh: torch.Tensor, groups: int, width: int) -> torch.Tensor:
    """(n, groups*width) bytes -> (n, groups, 8, width): bit i of every byte of a group in row i."""
    return _fields(qh, groups, width, range(8), 1)


def _crumbs(qs: torch.Tensor, groups: int, width: int) -> torch.Tensor:
    """(n, groups*width) bytes -> (n, groups, 4, width): the four 2-bit fields of every byte."""
    return _fields(qs, groups, width, range(0, 8, 2), 3)


def _bits32(qh: torch.Tensor) -> torch.Tensor:
    """(n, 4) bytes of a little-endian uint32 -> (n, 32) of its bits, bit 0 first."""
    return _bits(qh, 1, 4).permute(0, 1, 3, 2).reshape(qh.shape[0], 32)


# --- float types (block size 1) --------------------------------------------------------------------------------------


@_register(GGMLQuantizationType.F32)
def _dequantize_f32(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.float32)


@_register(GGMLQuantizationType.F16)
def _dequantize_f16(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.float16).to(torch.float32)


@_register(GGMLQuantizationType.BF16)
def _dequantize_bf16(blocks: torch.Tensor) -> torch.Tensor:
    # bit shift rather than .to(float32) so NaN payloads come through exactly as in the reference
    return (blocks.contiguous().view(torch.int16).to(torch.int32) << 16).view(torch.float32)


# --- legacy 32-weight blocks -----------------------------------------------------------------------------------------


@_register(GGMLQuantizationType.Q4_0)
def _dequantize_q4_0(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d = _f16(blocks[:, :2])
    q = _nibbles(blocks[:, 2:], 1, 16).reshape(n, 32).to(torch.int8) - 8
    return q.to(torch.float32) * d


@_register(GGMLQuantizationType.Q4_1)
def _dequantize_q4_1(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d, m = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
    q = _nibbles(blocks[:, 4:], 1, 16).reshape(n, 32).to(torch.float32)
    return q * d + m


def _q5_values(qh: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """5-bit values 0..31 of a 32-weight block: low nibbles from `qs`, fifth bit from the uint32 `qh`."""
    low = _nibbles(qs, 1, 16).reshape(qs.shape[0], 32)
    return low | (_bits32(qh) << 4)


@_register(GGMLQuantizationType.Q5_0)
def _dequantize_q5_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks[:, :2])
    q = _q5_values(blocks[:, 2:6], blocks[:, 6:]).to(torch.int8) - 16
    return q.to(torch.float32) * d


@_register(GGMLQuantizationType.Q5_1)
def _dequantize_q5_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
    q = _q5_values(blocks[:, 4:8], blocks[:, 8:]).to(torch.float32)
    return q * d + m


@_register(GGMLQuantizationType.Q8_0)
def _dequantize_q8_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks[:, :2])
    return blocks[:, 2:].contiguous().view(torch.int8).to(torch.float32) * d


# --- K-quants: 256-weight super-blocks -------------------------------------------------------------------------------


@_register(GGMLQuantizationType.Q2_K)
def _dequantize_q2_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    scales, qs = blocks[:, : QK_K // 16], blocks[:, QK_K // 16 : QK_K // 16 + QK_K // 4]
    d, dmin = _f16(blocks[:, -4:-2]), _f16(blocks[:, -2:])
    dl = (d * (scales & 0x0F).to(torch.float32)).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).to(torch.float32)).reshape(n, 16, 1)
    q = _crumbs(qs, 2, 32).reshape(n, 16, 16).to(torch.float32)
    return (q * dl - ml).reshape(n, QK_K)


def _q3_k_scales(scales: torch.Tensor) -> torch.Tensor:
    """12 bytes -> 16 signed 6-bit scales (low nibbles in bytes 0-7, high crumbs in bytes 8-11)."""
    n = scales.shape[0]
    low = _nibbles(scales[:, :8], 1, 8).reshape(n, 16)
    high = _crumbs(scales[:, 8:], 1, 4).reshape(n, 16)
    return ((low | (high << 4)).to(torch.int8) - 32).to(torch.float32)


@_register(GGMLQuantizationType.Q3_K)
def _dequantize_q3_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    hmask, qs = blocks[:, : QK_K // 8], blocks[:, QK_K // 8 : QK_K // 8 + QK_K // 4]
    scales, d = blocks[:, -14:-2], _f16(blocks[:, -2:])
    dl = (d * _q3_k_scales(scales)).reshape(n, 16, 1)
    low = _crumbs(qs, 2, 32).reshape(n, 16, 16).to(torch.int8)
    high = (_bits(hmask, 1, 32).reshape(n, 16, 16) ^ 1).to(torch.int8)  # a set bit means "no -4 offset"
    return ((low - (high << 2)).to(torch.float32) * dl).reshape(n, QK_K)


def _k_scale_min(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """12 bytes of Q4_K/Q5_K -> 8 six-bit scales and 8 six-bit mins, as float32 (n, 8)."""
    d, m, md = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc.to(torch.float32), mn.to(torch.float32)


def _k_scaled(blocks: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Apply the d/dmin and 6-bit scale/min header of a Q4_K/Q5_K block to its (n, 8, 32) values."""
    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
    sc, mn = _k_scale_min(blocks[:, 4:16])
    return (q.to(torch.float32) * (d * sc).reshape(n, 8, 1) - (dmin * mn).reshape(n, 8, 1)).reshape(n, QK_K)


@_register(GGMLQuantizationType.Q4_K)
def _dequantize_q4_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    return _k_scaled(blocks, _nibbles(blocks[:, 16:], 4, 32).reshape(n, 8, 32))


@_register(GGMLQuantizationType.Q5_K)
def _dequantize_q5_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    qh, qs = blocks[:, 16 : 16 + QK_K // 8], blocks[:, 16 + QK_K // 8 :]
    low = _nibbles(qs, 4, 32).reshape(n, 8, 32)
    high = _bits(qh, 1, 32).reshape(n, 8, 32)
    return _k_scaled(blocks, low | (high << 4))


@_register(GGMLQuantizationType.Q6_K)
def _dequantize_q6_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    ql, qh = blocks[:, : QK_K // 2], blocks[:, QK_K // 2 : QK_K // 2 + QK_K // 4]
    scales, d = blocks[:, -18:-2], _f16(blocks[:, -2:])
    dl = (d * scales.contiguous().view(torch.int8).to(torch.float32)).reshape(n, 16, 1)
    low = _nibbles(ql, 2, 64).reshape(n, 8, 32)
    high = _crumbs(qh, 2, 32).reshape(n, 8, 32)
    q = ((low | (high << 4)).to(torch.int8) - 32).reshape(n, 16, 16).to(torch.float32)
    return (q * dl).reshape(n, QK_K)


# --- 4-bit types as integers ----------------------------------------------------------------------------------------
# Q4_0, Q4_1 and Q4_K hold 4-bit integers with one scale and one offset per 32 weights (a block, or a Q4_K sub-block):
# weight = q * scale + offset. The integer kernels (`kernels/int4_cpu.py`) take them in that form.

Int4Parts = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # q (n, bs) uint8 0..15, scale and offset (n, bs / 32)


def _int4_q4_0(blocks: torch.Tensor) -> Int4Parts:
    d = _f16(blocks[:, :2])
    return _nibbles(blocks[:, 2:], 1, 16).reshape(blocks.shape[0], 32), d, -8 * d


def _int4_q4_1(blocks: torch.Tensor) -> Int4Parts:
    return _nibbles(blocks[:, 4:], 1, 16).reshape(blocks.shape[0], 32), _f16(blocks[:, :2]), _f16(blocks[:, 2:4])


def _int4_q4_k(blocks: torch.Tensor) -> Int4Parts:
    sc, mn = _k_scale_min(blocks[:, 4:16])
    q = _nibbles(blocks[:, 16:], 4, 32).reshape(blocks.shape[0], QK_K)  # sub-block j = 32 weights, as dequantized
    return q, _f16(blocks[:, :2]) * sc, -(_f16(blocks[:, 2:4]) * mn)


INT4_PARTS: dict[GGMLQuantizationType, Callable[[torch.Tensor], Int4Parts]] = {
    GGMLQuantizationType.Q4_0: _int4_q4_0, GGMLQuantizationType.Q4_1: _int4_q4_1,
    GGMLQuantizationType.Q4_K: _int4_q4_k,
}  # fmt: skip


def int4_parts(raw: torch.Tensor, qtype: GGMLQuantizationType | int, shape: tuple[int, int]) -> Int4Parts:
    """A Q4_0 / Q4_1 / Q4_K weight of `shape` (out, in) as integers: q (out, in) uint8 in 0..15, scale and offset
    (out, in / 32) float32 with weight = q * scale + offset, the same float32 values `dequantize` combines."""
    qtype = GGMLQuantizationType(qtype)
    n_out, n_in = shape
    q, scale, offset = INT4_PARTS[qtype](raw.reshape(-1, block_format(qtype).type_size))
    return q.reshape(n_out, n_in), scale.reshape(n_out, n_in // 32), offset.reshape(n_out, n_in // 32)


# --- public API -------------------------------------------------------------------------------------------------------


def block_format(qtype: GGMLQuantizationType | int) -> BlockFormat:
    """The registered format of `qtype`; `KeyError` naming the type when it has no dequantizer."""
    qtype = GGMLQuantizationType(qtype)
    try:
        return FORMATS[qtype]
    except KeyError:
        raise KeyError(f"GGUF tensor type {qtype.name} is not supported by the native kernels") from None


def row_bytes(qtype: GGMLQuantizationType | int, n_columns: int) -> int:
    """Bytes of one row of `n_columns` weights in `qtype`."""
    fmt = block_format(qtype)
    if n_columns % fmt.block_size:
        raise ValueError(f"{n_columns} columns is not a multiple of the {fmt.qtype.name} block size {fmt.block_size}")
    return n_columns // fmt.block_size * fmt.type_size


def dequantize(raw: torch.Tensor, qtype: GGMLQuantizationType | int, shape: tuple[int, ...]) -> torch.Tensor:
    """Float32 tensor of `shape` from its raw GGUF bytes (`uint8`, any shape holding the right byte count)."""
    fmt = block_format(qtype)
    blocks = raw.reshape(-1, fmt.type_size)
    return fmt.dequantize_blocks(blocks).reshape(shape)


def gguf_matmul(
    x: torch.Tensor, qweight: torch.Tensor, qtype: GGMLQuantizationType | int, shape: tuple[int, int]
) -> torch.Tensor:
    """`x @ W.T` for `W` of `shape` (out_features, in_features) held as raw bytes `qweight` (uint8, one row per
    output feature). x: (..., in_features) -> (..., out_features), in x's dtype.

    On CPU the weight is dequantized `tile_rows(...)` rows at a time into x's dtype; elsewhere in one piece
    (a GPU has the memory bandwidth and the Triton kernels in `gguf_triton` handle decode).
    """
    n_out, n_in = shape
    rows = qweight.reshape(n_out, -1)
    if x.device.type != "cpu":
        return x @ dequantize(rows, qtype, shape).to(x.dtype).T
    step = tile_rows(n_in)
    out = torch.empty(*x.shape[:-1], n_out, dtype=x.dtype, device=x.device)
    for start in range(0, n_out, step):
        stop = min(start + step, n_out)
        tile = dequantize(rows[start:stop], qtype, (stop - start, n_in)).to(x.dtype)
        out[..., start:stop] = x @ tile.T
    return out


def tile_rows(n_in: int) -> int:
    """Rows per dequantized tile on CPU for a weight with `n_in` columns (at least 1)."""
    return max(1, MATMUL_TILE_BYTES // (4 * n_in))
