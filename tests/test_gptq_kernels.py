"""Triton GPTQ kernels against the PyTorch reference, for every (bits, group size, act-order, zeros format).

Without CUDA the kernels run under TRITON_INTERPRET=1 on CPU tensors (small shapes); with CUDA the `gpu` tests run
the compiled kernels in fp16 on larger shapes.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

from kernels import gptq_torch
from kernels.gptq import GPTQLinear
from tests.gptq_blocks import random_layer

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are decorated, i.e. at import
    if "kernels.gptq_triton" in sys.modules:
        importlib.reload(sys.modules["kernels.gptq_triton"])
gptq_triton = importlib.import_module("kernels.gptq_triton")

CASES = [(bits, group, act) for bits in (2, 4, 8) for group in (32, 64, 128, -1) for act in (False, True)]


@pytest.mark.parametrize(("bits", "group", "act_order"), CASES)
def test_interpreted_kernels_match_torch(bits: int, group: int, act_order: bool) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the compiled kernels are tested instead")
    layer = random_layer(320, 96, bits, group, act_order, zero_offset=1 if bits != 2 else 0)
    weight = gptq_triton.prepare(layer)
    assert weight is not None and (weight.perm is not None) == (act_order and group != -1)
    for rows in (1, 3, 20):  # gemv, split-K gemm (decode batch), gemm (prefill)
        x = torch.randn(rows, 320)
        expected = gptq_torch.matmul(x, layer)
        assert torch.allclose(gptq_triton.matmul(x, weight), expected, atol=1e-4, rtol=1e-4), rows


def test_three_bit_and_uneven_groups_stay_on_the_torch_path() -> None:
    assert gptq_triton.prepare(random_layer(128, 64, 3, 32, False)) is None
    layer = random_layer(128, 64, 4, 32, False)
    layer.g_idx = torch.tensor([0] * 40 + [1] * 24 + [2] * 32 + [3] * 32, dtype=torch.int32)
    assert gptq_triton.prepare(layer) is None


def test_partial_last_group_uses_smaller_k_blocks() -> None:
    layer = random_layer(576, 64, 4, 128, True)  # 576 = 4.5 groups of 128, as in SmolLM2
    x = torch.randn(2, 576)
    assert torch.allclose(gptq_triton.matmul(x, gptq_triton.prepare(layer)), gptq_torch.matmul(x, layer),
                          atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("bits", "group", "act_order"), CASES)
def test_cuda_kernels_match_torch_in_fp16(bits: int, group: int, act_order: bool) -> None:
    layer = random_layer(4096, 1024, bits, group, act_order, device="cuda")
    module = GPTQLinear(layer)
    assert module.prepare(dtype=torch.float16, cache=False) == "triton"
    for rows in (1, 4, 8, 100):
        x = torch.randn(rows, 4096, device="cuda", dtype=torch.float16)
        expected = gptq_torch.matmul(x.float(), layer)
        got = module(x).float()
        assert torch.allclose(got, expected, atol=2e-2 * expected.abs().max().item(), rtol=1e-2), rows
