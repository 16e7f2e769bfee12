"""Triton kernels for GPTQ: fused dequantize-and-multiply, one matrix-vector kernel (decode, one row) and one
matrix-matrix kernel (prefill, and decode batches of 2-8 with split-K), for 2, 4 and 8 bits.

Act-order: reordered once at load (`prepare`), not gathered per call. The input rows of `qweight` are permuted into
the order of the sorted `g_idx`, so every group becomes a contiguous run of rows; each call then permutes the
activations once (`x[..., perm]`, a gather over `in` values per row, not over the weight). After that every kernel
sees the plain no-act-order layout, and loads one scale / zero row per K block.
3-bit weights (values straddle words) and checkpoints whose sorted groups are not of equal size stay on the PyTorch
path (`kernels/gptq_torch.py`): `prepare` returns None for them.

The kernels also run under `TRITON_INTERPRET=1` on CPU tensors (set before this module is imported); the tests use
that to compare every kernel with the PyTorch reference without a GPU.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels import gptq_torch

TRITON_BITS = (2, 4, 8)
_GEMV_BLOCK_N = 64
_TARGET_PROGRAMS = 256  # without a GPU to ask (the interpreter); split-K makes up the difference
_PROGRAMS_PER_SM = 8  # decode is bound by memory latency: several programs per SM keep enough loads in flight


@dataclass
class TritonGPTQWeight:
    """A GPTQ Linear laid out for the kernels: rows in sorted-group order, groups of one size."""

    qweight: torch.Tensor  # int32 [in * bits / 32, out], rows permuted by `perm`
    qzeros: torch.Tensor  # int32 [n_groups, out * bits / 32]
    scales: torch.Tensor  # fp16 [n_groups, out]
    perm: torch.Tensor | None  # int64 [in]: x[..., perm] matches the rows; None without act-order
    group_size: int
    bits: int
    zero_offset: int
    in_features: int
    out_features: int


def prepare(t: gptq_torch.GPTQTensors) -> TritonGPTQWeight | None:
    """Lay `t` out for the kernels (once, at load); None when only the PyTorch path can run it."""
    if t.bits not in TRITON_BITS or t.out_features % (32 // t.bits):
        return None
    g_idx = t.g_idx.long()
    group_size = int((g_idx == 0).sum())  # the last group may be shorter (576 rows in groups of 128)
    uniform = torch.arange(t.in_features, device=g_idx.device) // max(group_size, 1)
    perm = None
    qweight = t.qweight
    if not torch.equal(g_idx, uniform):
        perm = torch.argsort(g_idx, stable=True)
        if not torch.equal(g_idx[perm], uniform):
            return None  # groups of unequal size: keep the general path
        qweight = gptq_torch.pack_rows(gptq_torch.unpack_rows(t.qweight, t.bits)[perm], t.bits)
    return TritonGPTQWeight(
        qweight=qweight.contiguous(),
        qzeros=t.qzeros.contiguous(),
        scales=t.scales.contiguous(),
        perm=perm,
        group_size=group_size,
        bits=t.bits,
        zero_offset=t.zero_offset,
        in_features=t.in_features,
        out_features=t.out_features,
    )


@triton.jit
def _dequant_block(qw_ptr, qz_ptr, sc_ptr, k0, g, offs_n, mask_n, stride_qw, stride_qz, stride_sc,
                   BITS: tl.constexpr, ZERO_OFFSET: tl.constexpr, BLOCK_K: tl.constexpr):
    """(q - zero) as fp32 [BLOCK_K, BLOCK_N] for rows k0.. of one group, and that group's scales [BLOCK_N]."""
    VALS: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    offs_p = k0 // VALS + tl.arange(0, BLOCK_K // VALS)  # packed rows
    packed = tl.load(qw_ptr + offs_p[:, None] * stride_qw + offs_n[None, :], mask=mask_n[None, :], other=0)
    shifts = tl.arange(0, VALS) * BITS
    q = (packed[:, None, :] >> shifts[None, :, None]) & MASK  # [P, VALS, BLOCK_N]: row p * VALS + v
    q = tl.reshape(q, (BLOCK_K, q.shape[2]))
    zword = tl.load(qz_ptr + g * stride_qz + offs_n // VALS, mask=mask_n, other=0)
    zero = ((zword >> ((offs_n % VALS) * BITS)) & MASK) + ZERO_OFFSET
    scale = tl.load(sc_ptr + g * stride_sc + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    return (q - zero[None, :]).to(tl.float32), scale


@triton.jit
def _gemv_kernel(x_ptr, qw_ptr, qz_ptr, sc_ptr, out_ptr, N, K_PER_SPLIT,
                 stride_qw, stride_qz, stride_sc, stride_os,
                 GROUP_SIZE: tl.constexpr, BITS: tl.constexpr, ZERO_OFFSET: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[split, n] = sum over this split's K of x[k] * W[k, n]; one input row (decode)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    k_start = pid_k * K_PER_SPLIT
    for k0 in range(k_start, k_start + K_PER_SPLIT, BLOCK_K):
        qz, scale = _dequant_block(qw_ptr, qz_ptr, sc_ptr, k0, k0 // GROUP_SIZE, offs_n, mask_n,
                                   stride_qw, stride_qz, stride_sc, BITS, ZERO_OFFSET, BLOCK_K)
        xk = tl.load(x_ptr + k0 + tl.arange(0, BLOCK_K)).to(tl.float32)
        acc += tl.sum(qz * xk[:, None], axis=0) * scale  # the scale is constant over the block's group
    tl.store(out_ptr + pid_k * stride_os + offs_n, acc, mask=mask_n)


@triton.jit
def _gemm_kernel(x_ptr, qw_ptr, qz_ptr, sc_ptr, out_ptr, M, N, K_PER_SPLIT,
                 stride_xm, stride_qw, stride_qz, stride_sc, stride_os, stride_om,
                 GROUP_SIZE: tl.constexpr, BITS: tl.constexpr, ZERO_OFFSET: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[split, m, n] = x[m, K-split] @ W[K-split, n]; the weight tile is dequantized in registers."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_start = pid_k * K_PER_SPLIT
    for k0 in range(k_start, k_start + K_PER_SPLIT, BLOCK_K):
        qz, scale = _dequant_block(qw_ptr, qz_ptr, sc_ptr, k0, k0 // GROUP_SIZE, offs_n, mask_n,
                                   stride_qw, stride_qz, stride_sc, BITS, ZERO_OFFSET, BLOCK_K)
        offs_k = k0 + tl.arange(0, BLOCK_K)
        xk = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=mask_m[:, None], other=0.0)
        w = (qz * scale[None, :]).to(xk.dtype)
        acc += tl.dot(xk, w)
    out = out_ptr + pid_k * stride_os + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out, acc, mask=mask_m[:, None] & mask_n[None, :])


def _block_k(w: TritonGPTQWeight, largest: int) -> int:
    """Largest power of two <= `largest` dividing both K and the group size: one group per K block."""
    block = largest
    while w.in_features % block or w.group_size % block:
        block //= 2
    return block


@functools.cache
def _target_programs(device: torch.device) -> int:
    """Programs one launch should have to fill `device`: a few per SM on CUDA."""
    if device.type != "cuda":
        return _TARGET_PROGRAMS
    return _PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count


def _split_k(n_kblocks: int, n_programs: int, device: torch.device) -> int:
    """Largest divisor of `n_kblocks` that brings the program count up to about `_target_programs`."""
    want = max(1, _target_programs(device) // max(n_programs, 1))
    return max(d for d in range(1, min(want, n_kblocks) + 1) if n_kblocks % d == 0)


def _reduce(partials: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (partials[0] if partials.shape[0] == 1 else partials.sum(0)).to(dtype)


def gemv(x: torch.Tensor, w: TritonGPTQWeight) -> torch.Tensor:
    """x [in] (already permuted) @ W -> [out], the decode kernel."""
    block_k = _block_k(w, 128)
    n_blocks = triton.cdiv(w.out_features, _GEMV_BLOCK_N)
    split = _split_k(w.in_features // block_k, n_blocks, x.device)
    partials = torch.empty(split, w.out_features, device=x.device, dtype=torch.float32)
    _gemv_kernel[(n_blocks, split)](
        x, w.qweight, w.qzeros, w.scales, partials, w.out_features, w.in_features // split,
        w.qweight.stride(0), w.qzeros.stride(0), w.scales.stride(0), partials.stride(0),
        GROUP_SIZE=w.group_size, BITS=w.bits, ZERO_OFFSET=w.zero_offset, BLOCK_N=_GEMV_BLOCK_N, BLOCK_K=block_k,
    )
    return _reduce(partials, x.dtype)


def gemm(x: torch.Tensor, w: TritonGPTQWeight) -> torch.Tensor:
    """x [M, in] (already permuted, contiguous) @ W -> [M, out]; split-K when M is small (decode batches)."""
    m = x.shape[0]
    block_m = 16 if m <= 16 else 64
    block_n = 64 if m <= 16 else 128
    block_k = _block_k(w, 64)
    grid_mn = triton.cdiv(m, block_m) * triton.cdiv(w.out_features, block_n)
    split = _split_k(w.in_features // block_k, grid_mn, x.device) if m <= 16 else 1
    partials = torch.empty(split, m, w.out_features, device=x.device, dtype=torch.float32)
    grid = (triton.cdiv(m, block_m), triton.cdiv(w.out_features, block_n), split)
    _gemm_kernel[grid](
        x, w.qweight, w.qzeros, w.scales, partials, m, w.out_features, w.in_features // split,
        x.stride(0), w.qweight.stride(0), w.qzeros.stride(0), w.scales.stride(0), partials.stride(0),
        partials.stride(1), GROUP_SIZE=w.group_size, BITS=w.bits, ZERO_OFFSET=w.zero_offset,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=4 if m <= 16 else 8, num_stages=3,  # prefill tiles: 64x128, software-pipelined loads
    )
    return _reduce(partials, x.dtype)


def matmul(x: torch.Tensor, w: TritonGPTQWeight) -> torch.Tensor:
    """x [..., in] @ W -> [..., out]: one activation permutation (act-order), then gemv (1 row) or gemm."""
    rows = x.reshape(-1, w.in_features)
    if w.perm is not None:
        rows = rows.index_select(1, w.perm)
    rows = rows.contiguous()
    out = gemv(rows[0], w)[None] if rows.shape[0] == 1 else gemm(rows, w)
    return out.reshape(*x.shape[:-1], w.out_features)
