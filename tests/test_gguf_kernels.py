"""GGUF kernels: PyTorch dequantization equals gguf-py's `quants.dequantize` bit for bit (random blocks of every type,
real SmolLM2 and Gemma 3 tensors); the Triton GEMV kernels (run by the interpreter on CPU) match the PyTorch path;
the tiled CPU matmul equals a plain matmul of the dequantized weight.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize as reference_dequantize

from kernels import gguf_torch
from tests.gemma_fixture import gemma_q4_k_m  # noqa: F401  (fixture)
from tests.gguf_blocks import ALL_TYPES, random_rows

ROOT = Path(__file__).resolve().parents[1]


def _assert_bitwise(raw: np.ndarray, qtype: GGMLQuantizationType, shape: tuple[int, ...]) -> None:
    expected = reference_dequantize(raw, qtype).reshape(shape)
    got = gguf_torch.dequantize(torch.from_numpy(np.array(raw)), qtype, shape).numpy()
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.array_equal(got.view(np.uint32), expected.astype(np.float32).view(np.uint32)), qtype.name


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_random_blocks_match_gguf_bit_for_bit(qtype: GGMLQuantizationType) -> None:
    rng = np.random.default_rng(int(qtype))
    raw = random_rows(qtype, 8, 1024, rng)
    _assert_bitwise(raw, qtype, (8, 1024))


def test_registry_covers_every_issue_type_with_gguf_sizes() -> None:
    from gguf import GGML_QUANT_SIZES

    assert set(gguf_torch.FORMATS) == set(ALL_TYPES)
    for qtype, fmt in gguf_torch.FORMATS.items():
        assert (fmt.block_size, fmt.type_size) == GGML_QUANT_SIZES[qtype]


def test_unsupported_type_is_named() -> None:
    with pytest.raises(KeyError, match="IQ2_XXS"):
        gguf_torch.block_format(GGMLQuantizationType.IQ2_XXS)


def _real_tensors(path: Path, wanted: set[str], names: tuple[str, ...] | None = None):
    reader = GGUFReader(path)
    for tensor in reader.tensors:
        if tensor.tensor_type.name in wanted and (names is None or tensor.name.startswith(names)):
            yield tensor


def test_smollm2_q4_1_and_q8_0_tensors(smollm2_gguf: Path) -> None:
    seen = set()
    for tensor in _real_tensors(smollm2_gguf, {"Q4_1", "Q8_0"}, ("token_embd", "blk.0.", "blk.29.")):
        shape = tuple(int(d) for d in reversed(tensor.shape))
        _assert_bitwise(np.asarray(tensor.data), tensor.tensor_type, shape)
        seen.add(tensor.tensor_type.name)
    assert seen == {"Q4_1", "Q8_0"}


def test_gemma3_k_quant_tensors(gemma_q4_k_m: Path) -> None:  # noqa: F811  (the imported fixture)
    seen = set()
    # the first layers hold every type of the file but the 262144-row Q8_0 embedding (slow in the numpy reference;
    # Q8_0 is covered by SmolLM2)
    for tensor in _real_tensors(gemma_q4_k_m, {"Q4_K", "Q5_K", "Q6_K", "Q5_0", "Q8_0"}, ("blk.0.",)):
        shape = tuple(int(d) for d in reversed(tensor.shape))
        _assert_bitwise(np.asarray(tensor.data), tensor.tensor_type, shape)
        seen.add(tensor.tensor_type.name)
    assert {"Q4_K", "Q6_K"} <= seen


@pytest.mark.parametrize("qtype", [GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q6_K], ids=lambda t: t.name)
def test_tiled_matmul_equals_dense(qtype: GGMLQuantizationType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gguf_torch, "MATMUL_TILE_BYTES", 4 * 1024 * 7)  # 7 rows per tile: several, one partial
    raw = torch.from_numpy(random_rows(qtype, 40, 1024, np.random.default_rng(1)))
    x = torch.randn(3, 5, 1024)
    dense = x @ gguf_torch.dequantize(raw, qtype, (40, 1024)).T
    tiled = gguf_torch.gguf_matmul(x, raw, qtype, (40, 1024))
    assert tiled.shape == dense.shape
    assert (tiled - dense).abs().max() <= 1e-5 * dense.abs().max()  # only the summation order may differ


def test_triton_gemv_matches_torch_under_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "tests.gguf_blocks"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(errors) == {t.name for t in ALL_TYPES}
    for name, (error, scale) in errors.items():
        assert scale > 0 and error <= 1e-5 * scale + 1e-5, f"{name}: max error {error} at magnitude {scale}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("qtype", [t for t in ALL_TYPES if t.name not in ("F32", "BF16")], ids=lambda t: t.name)
def test_cuda_gemv_matches_torch_in_fp16(qtype: GGMLQuantizationType) -> None:
    from kernels.gguf_dispatch import quantized_matmul

    raw = torch.from_numpy(random_rows(qtype, 1024, 4096, np.random.default_rng(3), any_bf16=False)).cuda()
    weight = gguf_torch.dequantize(raw, qtype, (1024, 4096))
    for rows in (1, 8, 16, 40):  # one-row kernel, batched kernel (one tl.dot for all rows), torch path (prefill)
        x = torch.randn(rows, 4096, device="cuda", dtype=torch.float16)
        expected = x.float() @ weight.T
        got = quantized_matmul(x, raw, qtype, (1024, 4096)).float()
        assert (got - expected).abs().max() <= 1e-2 * expected.abs().max(), (qtype.name, rows)
