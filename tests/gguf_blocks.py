"""Random GGUF tensors in raw block format for kernel tests, and the Triton-vs-PyTorch check run in a subprocess.

`random_rows` fills blocks with random bytes but writes finite fp16 values at each block's scale offsets (random
bytes there would make NaN/inf scales, which compare unequal to themselves). Run as a script
(`TRITON_INTERPRET=1 python -m tests.gguf_blocks`), it prints a JSON map type -> [max abs error, max abs value] of
the Triton GEMV against the PyTorch path; `test_gguf_kernels.py` starts it so the interpreter flag is set before any
kernel is decorated.
"""

from __future__ import annotations

import json

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

Q = GGMLQuantizationType
# byte offsets of the fp16 scales (d, dmin) inside one block; negative = from the block's end
SCALE_OFFSETS: dict[GGMLQuantizationType, tuple[int, ...]] = {
    Q.Q4_0: (0,), Q.Q4_1: (0, 2), Q.Q5_0: (0,), Q.Q5_1: (0, 2), Q.Q8_0: (0,),
    Q.Q2_K: (-4, -2), Q.Q3_K: (-2,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (-2,),
}  # fmt: skip
FLOAT_TYPES = {Q.F32: np.float32, Q.F16: np.float16}
ALL_TYPES = (Q.F32, Q.F16, Q.BF16, *SCALE_OFFSETS)


def random_rows(
    qtype: GGMLQuantizationType, n_rows: int, n_cols: int, rng: np.random.Generator, *, any_bf16: bool = True
) -> np.ndarray:
    """(n_rows, row bytes) uint8 holding a random `qtype` tensor of shape (n_rows, n_cols). BF16 takes every finite
    bit pattern (tiny to 3e38) unless `any_bf16` is False (then normal-distributed values, safe to multiply)."""
    if qtype in FLOAT_TYPES:
        return rng.standard_normal((n_rows, n_cols)).astype(FLOAT_TYPES[qtype]).view(np.uint8)
    if qtype == Q.BF16 and not any_bf16:
        values = rng.standard_normal((n_rows, n_cols)).astype(np.float32)
        return (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    if qtype == Q.BF16:  # every bf16 bit pattern whose exponent is not all ones is finite
        bits = rng.integers(0, 1 << 16, size=(n_rows, n_cols), dtype=np.uint16)
        bits[(bits & 0x7F80) == 0x7F80] &= 0xBFFF
        return bits.view(np.uint8)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    n_blocks = n_rows * n_cols // block_size
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for offset in SCALE_OFFSETS[qtype]:
        start = offset % type_size
        scales = (rng.standard_normal(n_blocks) * 0.05).astype(np.float16)
        blocks[:, start : start + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(n_rows, -1)


def triton_errors(n_rows: int = 24, n_cols: int = 512, rows: tuple[int, ...] = (1, 3)) -> dict[str, list[float]]:
    """Type name -> [max |triton - torch|, max |torch|] of y = x @ W.T on a random W, over `rows` activation rows
    (1: the one-row kernel; more: the batched one)."""
    import torch

    from kernels.gguf_torch import dequantize
    from kernels.gguf_triton import gemv

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    result = {}
    for qtype in ALL_TYPES:
        w = torch.from_numpy(random_rows(qtype, n_rows, n_cols, rng, any_bf16=False))
        error, scale = 0.0, 0.0
        for m in rows:
            x = torch.randn(m, n_cols)
            expected = x @ dequantize(w, qtype, (n_rows, n_cols)).T
            got = gemv(x, w, qtype, (n_rows, n_cols))
            error = max(error, (got - expected).abs().max().item())
            scale = max(scale, expected.abs().max().item())
        result[qtype.name] = [error, scale]
    return result


if __name__ == "__main__":
    print(json.dumps(triton_errors()))
