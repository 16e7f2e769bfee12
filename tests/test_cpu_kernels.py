"""The CPU integer kernels (`kernels/int4_cpu.py`, `kernels/int8_cpu.py`) against the PyTorch reference paths
(`gptq_torch.matmul`, `gguf_torch.gguf_matmul`) on random shapes and on SmolLM2's real tensors, the layout rules
the plans use (`kernels/cpu_layout.py`), and the modules' `prepare` choosing them.

The kernels compute in bf16 (their vectorised paths take bf16 only), so they are held to bf16's tolerance: the
largest error at most 1% of the largest output and the overall (Frobenius) error at most 0.5%, where bf16 rounding
of the activations and scales gives ~0.2-0.4% and a wrong layout ~100%.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader

from kernels import cpu_layout, gguf_torch, gptq_torch, int4_cpu, int8_cpu
from kernels.gguf_linear import GGUFLinear
from kernels.gptq import GPTQLinear
from tests import gptq_fixtures
from tests.gguf_blocks import random_rows
from tests.test_gptq_kernels import random_layer

Q = GGMLQuantizationType
INT4_GGUF = (Q.Q4_0, Q.Q4_1, Q.Q4_K)


def assert_bf16_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max()
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert (got - expected).abs().max() <= 0.01 * scale, float((got - expected).abs().max() / scale)
    assert torch.linalg.norm(got - expected) <= 0.005 * torch.linalg.norm(expected)


# --- random shapes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("bits", "group", "act_order"), [
    (2, 64, True), (3, 128, False), (3, -1, True), (4, 32, True), (4, 128, False), (4, 128, True), (4, -1, False),
])  # fmt: skip
def test_int4_gptq_matches_the_reference(bits: int, group: int, act_order: bool) -> None:
    layer = random_layer(576, 224, bits, group, act_order, zero_offset=1 if bits == 4 else 0, seed=bits)
    weight = int4_cpu.from_gptq(layer)
    assert weight is not None and weight.group == cpu_layout.int4_group(576, group)
    assert (weight.perm is not None) == (act_order and group != -1)  # one group: any order is the natural one
    for rows in (1, 7):  # decode, a short prefill
        x = torch.randn(rows, 576, generator=torch.Generator().manual_seed(rows))
        assert_bf16_close(int4_cpu.matmul(x, weight), gptq_torch.matmul(x, layer))


@pytest.mark.parametrize("zero_offset", [0, 1])
def test_int8_gptq_one_group_matches_the_reference(zero_offset: int) -> None:
    layer = random_layer(576, 96, 8, -1, True, zero_offset=zero_offset)
    weight = int8_cpu.from_gptq(layer)
    assert weight is not None and weight.offset is not None  # random zeros: not symmetric
    x = torch.randn(5, 576)
    assert_bf16_close(int8_cpu.matmul(x, weight), gptq_torch.matmul(x, layer))
    assert int8_cpu.from_gptq(random_layer(576, 96, 8, 128, False)) is None  # several groups: no per-output scale


@pytest.mark.parametrize("qtype", INT4_GGUF, ids=lambda t: t.name)
def test_int4_gguf_matches_the_reference(qtype: GGMLQuantizationType) -> None:
    n_out, n_in = 208, 512
    raw = torch.from_numpy(random_rows(qtype, n_out, n_in, np.random.default_rng(int(qtype))))
    weight = int4_cpu.from_gguf(raw, qtype, (n_out, n_in))
    for rows in (1, 6):
        x = torch.randn(rows, n_in)
        assert_bf16_close(int4_cpu.matmul(x, weight), gguf_torch.gguf_matmul(x, raw, qtype, (n_out, n_in)))


@pytest.mark.parametrize("qtype", INT4_GGUF, ids=lambda t: t.name)
def test_int4_parts_are_the_dequantizers_numbers(qtype: GGMLQuantizationType) -> None:
    raw = torch.from_numpy(random_rows(qtype, 32, 512, np.random.default_rng(7)))
    q, scale, offset = gguf_torch.int4_parts(raw, qtype, (32, 512))
    assert q.dtype == torch.uint8 and int(q.max()) <= 15 and scale.shape == offset.shape == (32, 16)
    rebuilt = q.float().view(32, 16, 32) * scale[..., None] + offset[..., None]
    expected = gguf_torch.dequantize(raw, qtype, (32, 512)).view(32, 16, 32)
    if qtype == Q.Q4_0:  # the reference computes (q - 8) * d; q * d - 8 * d rounds differently in the last bit
        assert torch.allclose(rebuilt, expected, rtol=1e-6, atol=1e-6)
    else:  # the same float32 operations as the dequantizer
        assert torch.equal(rebuilt, expected)


def test_layout_rules() -> None:
    assert cpu_layout.int4_group(576, 128) == 64 and cpu_layout.int4_group(576, -1) == 64
    assert cpu_layout.int4_group(4096, 128) == 128 and cpu_layout.int4_group(4096, -1) == 256
    assert cpu_layout.int4_group(48, 16) == 0
    assert cpu_layout.gptq_integer_layout(3, 128, 576, 576) == "int4"
    assert cpu_layout.gptq_integer_layout(4, 128, 100, 576) is None  # out features not a multiple of 16
    assert cpu_layout.gptq_integer_layout(8, -1, 100, 576) == "int8"
    assert cpu_layout.gptq_integer_layout(8, 128, 576, 576) is None
    assert cpu_layout.gguf_integer_layout("Q4_K", 1536, 576) == "int4"
    assert cpu_layout.gguf_integer_layout("Q8_0", 1536, 576) is None
    weight = int4_cpu.from_gguf(torch.zeros(64, 4 * 18, dtype=torch.uint8), Q.Q4_0, (64, 128))
    assert sum(t.nbytes for t in weight.tensors()) == weight.nbytes == cpu_layout.int4_bytes(64, 128, 32)


def test_uneven_sorted_groups_fall_back() -> None:
    layer = random_layer(128, 64, 4, 32, False)
    layer.g_idx = torch.tensor([0] * 40 + [1] * 24 + [2] * 32 + [3] * 32, dtype=torch.int32)
    assert int4_cpu.from_gptq(layer) is None
    module = GPTQLinear(layer)
    assert module.prepare(dtype=torch.float32, cache=False, integer=True) == "per-call"


# --- the modules --------------------------------------------------------------------------------------------------


def test_gptq_linear_prepares_the_integer_kernels_and_drops_the_stored_tensors() -> None:
    x = torch.randn(3, 576)
    for bits, group, mode in ((4, 128, "int4"), (8, -1, "int8"), (8, 128, "cache")):
        layer = random_layer(576, 96, bits, group, True)
        expected = gptq_torch.matmul(x, layer)
        module = GPTQLinear(layer)
        assert module.prepare(dtype=torch.float32, cache=True, integer=True) == mode
        assert module.qweight.numel() == 0 and module.scales is None and module.prepared_tensors()
        assert (module.in_features, module.out_features) == (576, 96)
        assert_bf16_close(module(x), expected)
        with pytest.raises(RuntimeError, match="once"):
            module.prepare(dtype=torch.float32, cache=True)


def test_gguf_linear_modes() -> None:
    raw = torch.from_numpy(random_rows(Q.Q8_0, 64, 256, np.random.default_rng(1)))
    x = torch.randn(2, 256)
    expected = gguf_torch.gguf_matmul(x, raw, Q.Q8_0, (64, 256))
    cached = GGUFLinear(raw, Q.Q8_0, 64, 256)
    assert cached.prepare(dtype=torch.float32, cache=True, integer=True) == "cache"  # Q8_0 has no int4 form
    assert cached.qweight.numel() == 0 and torch.allclose(cached(x), expected, atol=1e-4, rtol=1e-4)
    per_call = GGUFLinear(raw, Q.Q8_0, 64, 256)
    assert per_call.prepare(dtype=torch.float32, cache=False) == "per-call" and per_call.qweight is not None
    q4 = torch.from_numpy(random_rows(Q.Q4_K, 64, 256, np.random.default_rng(2)))
    module = GGUFLinear(q4, Q.Q4_K, 64, 256)
    assert module.prepare(dtype=torch.bfloat16, cache=True, integer=True) == "int4"
    assert_bf16_close(module(x), gguf_torch.gguf_matmul(x, q4, Q.Q4_K, (64, 256)))


# --- SmolLM2's real tensors ----------------------------------------------------------------------------------------


def test_smollm2_q4_1_tensors(smollm2_gguf: Path) -> None:
    reader = GGUFReader(smollm2_gguf)
    wanted = {"blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.13.ffn_down.weight", "blk.29.ffn_gate.weight"}
    x = torch.randn(4, 1536, generator=torch.Generator().manual_seed(0))
    for tensor in (t for t in reader.tensors if t.name in wanted):
        assert tensor.tensor_type == Q.Q4_1
        n_out, n_in = (int(d) for d in reversed(tensor.shape))
        raw = torch.from_numpy(np.array(tensor.data).view(np.uint8).reshape(n_out, -1))
        weight = int4_cpu.from_gguf(raw, Q.Q4_1, (n_out, n_in))
        rows = x[:, :n_in]
        assert_bf16_close(int4_cpu.matmul(rows, weight), gguf_torch.gguf_matmul(rows, raw, Q.Q4_1, (n_out, n_in)))


@pytest.mark.parametrize("branch", ["main", "gptq-4bit-32g-actorder_True", "gptq-8bit--1g-actorder_True",
                                    "gptq-2bit-64g-actorder_True"])
def test_smollm2_gptq_layers(branch: str) -> None:
    from loaders import gptq

    bits = gptq_fixtures.BRANCHES[branch].bits
    folder = gptq_fixtures.smollm2_gptq(branch)
    layers, _ = gptq.split_quantized(gptq.read_tensors(sorted(folder.glob("*.safetensors"))))
    x = torch.randn(3, 1536, generator=torch.Generator().manual_seed(1))
    for prefix in ("model.layers.0.self_attn.q_proj", "model.layers.17.mlp.down_proj", "model.layers.29.mlp.up_proj"):
        parts = layers[prefix]
        g_idx = parts.get("g_idx")
        offset = gptq_fixtures.BRANCHES[branch].checkpoint_format == "gptq"
        t = gptq_torch.GPTQTensors(parts["qweight"], parts["qzeros"], parts["scales"], g_idx, bits, int(offset))
        weight = int4_cpu.from_gptq(t) if bits <= 4 else int8_cpu.from_gptq(t)
        assert weight is not None, prefix
        rows = x[:, : t.in_features]
        got = int4_cpu.matmul(rows, weight) if bits <= 4 else int8_cpu.matmul(rows, weight)
        assert_bf16_close(got, gptq_torch.matmul(rows, t))
