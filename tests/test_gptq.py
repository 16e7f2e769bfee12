"""GPTQ loader on real SmolLM2 checkpoints (tests/gptq_fixtures.py): packing, loading, logits, act-order, errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from kernels import cpu_attention, gptq_torch
from kernels.gptq import GPTQLinear
from loaders import gptq
from loaders.errors import ModelFormatError
from loaders.files import read_model_files
from loaders.settings import GPTQSettings
from tests import gptq_fixtures
from tests.conftest import link_tree

TEXT = (
    "The history of the printing press begins in the middle of the fifteenth century, when Johannes Gutenberg, a "
    "goldsmith from Mainz, combined several existing technologies into a system for producing books quickly. "
    "Before his invention, most books in Europe were copied by hand, usually by monks working in monasteries, and "
    "a single Bible could take years to finish. Gutenberg used movable metal type, an oil-based ink, and a press "
    "adapted from the screw presses that farmers used to make wine and olive oil. The result was a machine that "
    "could print hundreds of pages a day. Within fifty years, printing shops had opened in more than two hundred "
    "cities across the continent, and millions of books were in circulation. The spread of printed material "
    "changed the way people learned, argued and worshipped. Scientists could share their findings with colleagues "
    "in distant countries, merchants could publish prices, and ordinary people began to read pamphlets about "
    "politics and religion. Historians often describe the printing press as one of the most important inventions "
    "of the second millennium, because it made knowledge cheaper, more accurate and far easier to preserve. "
    "Today, when we read a newspaper on a phone, we are still living with the consequences of that workshop. "
    "The same story repeats with every new medium: radio, television and the internet each promised to spread "
    "knowledge further, and each brought its own arguments about truth, trust and who should decide what is printed."
)


def _build(branch: str, **settings) -> gptq.GPTQModule:
    return gptq.build_module(gptq_fixtures.smollm2_gptq(branch), GPTQSettings(**settings))


@pytest.fixture(scope="module")
def text_ids(smollm2_hf: Path) -> torch.Tensor:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(smollm2_hf)(TEXT)["input_ids"][:256]
    assert len(ids) == 256
    return torch.tensor([ids])


@pytest.fixture(scope="module")
def float_model(smollm2_hf: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32).eval()


def _logits(module: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(input_ids=ids).logits[0].float()


def _model_from_ints(smollm2_hf: Path, branch: str):
    """The float model whose Linear weights are the quantizer's integers dequantized directly (no packing)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32).eval()
    for param in model.parameters():  # the checkpoint stores embeddings and norms in fp16
        param.data = param.data.half().float()
    for prefix, qz in gptq_fixtures.quantizer_ints(branch).items():
        g = qz.g_idx.long()
        weight = (qz.q - qz.zeros[g]).float() * qz.scales.float()[g]  # [in, out], original column order
        model.get_submodule(prefix).weight.data = weight.t().contiguous()
    return model


# --- packing -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_is_one_little_endian_bit_stream_per_32_rows(bits: int) -> None:
    values = torch.tensor([(7 * i + 3) % 2**bits for i in range(64)], dtype=torch.int32)[:, None]
    packed = gptq_torch.pack_rows(values, bits)
    for run in range(2):
        stream = sum(int(v) << (bits * i) for i, v in enumerate(values[32 * run: 32 * run + 32, 0]))
        expected = [(stream >> (32 * w)) & 0xFFFFFFFF for w in range(bits)]
        assert [int(x) & 0xFFFFFFFF for x in packed[bits * run: bits * run + bits, 0]] == expected
    assert torch.equal(gptq_torch.unpack_rows(packed, bits), values)


@pytest.mark.parametrize("branch", list(gptq_fixtures.BRANCHES))
def test_unpacked_integers_equal_the_quantizers(branch: str) -> None:
    spec = gptq_fixtures.BRANCHES[branch]
    folder = gptq_fixtures.smollm2_gptq(branch)
    files = read_model_files(folder)
    config = files.gptq
    assert (config.bits, config.group_size, config.desc_act, config.sym) == (
        spec.bits, spec.group_size, spec.desc_act, spec.sym)
    layers, _ = gptq.split_quantized(gptq.read_tensors(files.weight_paths))
    ints = gptq_fixtures.quantizer_ints(branch)
    assert set(layers) == set(ints) and len(ints) == 210
    scattered = 0
    for prefix, qz in ints.items():
        parts = layers[prefix]
        t = gptq_torch.GPTQTensors(parts["qweight"], parts["qzeros"], parts["scales"], parts["g_idx"], spec.bits,
                                   config.zero_offset)
        assert torch.equal(gptq_torch.unpack_rows(t.qweight, spec.bits), qz.q), prefix
        assert torch.equal(gptq_torch.zeros_int(t), qz.zeros), prefix
        assert torch.equal(t.scales, qz.scales) and torch.equal(t.g_idx, qz.g_idx), prefix
        scattered += not torch.equal(t.g_idx, gptq_torch.default_g_idx(t.in_features, spec.group_size))
    assert (scattered > 0) == (spec.desc_act and spec.group_size != -1)


# --- models ------------------------------------------------------------------------------------------------------


def _agreement(reference: torch.Tensor, quantized: torch.Tensor) -> float:
    return (reference.argmax(-1) == quantized.argmax(-1)).float().mean().item()


def test_8bit_logits_stay_close_to_the_float_model(float_model, smollm2_hf: Path, text_ids: torch.Tensor) -> None:
    from transformers import AutoModelForCausalLM

    branch = "gptq-8bit--1g-actorder_True"
    reference = _logits(float_model, text_ids)
    # The int8 kernel with float32 activations (it computes in bf16 inside): the weights' and the kernel's error.
    built = _build(branch, dtype="float32")
    assert built.modes == {"int8": 210}
    quantized = _logits(built.module, text_ids)
    agreement = _agreement(reference, quantized)
    print(f"\n8-bit (int8 kernel, fp32 activations) vs the fp32 float model: top-1 agreement {agreement:.4f}, "
          f"max |diff| {(reference - quantized).abs().max():.4f}")
    assert agreement >= 0.98
    # The plan's default here (bf16 activations on a CPU with native bf16) against the float model in that dtype:
    # bf16 itself moves near-ties (the float model in bf16 agrees ~96% with itself in fp32 on this text).
    default = _build(branch)
    dtype = default.module.dtype
    same_dtype = AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=dtype).eval()
    agreement = _agreement(_logits(same_dtype, text_ids), _logits(default.module, text_ids))
    print(f"8-bit with the default plan ({dtype}) vs the float model in {dtype}: top-1 agreement {agreement:.4f}; "
          f"float model {dtype} vs fp32: {_agreement(reference, _logits(same_dtype, text_ids)):.4f}")
    assert agreement >= 0.95


@pytest.mark.parametrize("branch", ["main", "gptq-4bit-32g-actorder_True"])
def test_4bit_branches_answer_a_chat_question(branch: str, smollm2_hf: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf)
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        out = _build(branch).module.generate(ids, max_new_tokens=12, do_sample=False)
    reply = tokenizer.decode(out[0, ids.shape[1]:])
    assert "Paris" in reply, reply


def test_act_order_checkpoint_equals_the_same_integers_stored_plainly(smollm2_hf: Path,
                                                                        text_ids: torch.Tensor) -> None:
    branch = "gptq-4bit-32g-actorder_True"
    ids = text_ids[:, :64]
    plain = _logits(_model_from_ints(smollm2_hf, branch), ids)
    for cache in ("on", "off"):  # the reference paths, in float32: equal up to summation order
        built = _build(branch, dequantize_cache=cache, dtype="float32")
        assert torch.allclose(_logits(built.module, ids), plain, atol=2e-3, rtol=0), cache
    # The int4 kernel (act-order sorted once at load), bf16 inside: close, and the same greedy choices
    built = _build(branch, dtype="float32")
    assert built.modes == {"int4": 210}
    fast = _logits(built.module, ids)
    assert _agreement(plain, fast) >= 0.95 and (fast - plain).abs().max() < 0.05 * plain.abs().max()


def test_act_order_layer_equals_its_rows_stored_in_group_order() -> None:
    ints = gptq_fixtures.quantizer_ints("gptq-4bit-32g-actorder_True")
    qz = ints["model.layers.5.mlp.down_proj"]
    perm = torch.argsort(qz.g_idx.long(), stable=True)
    act = gptq_torch.GPTQTensors(gptq_torch.pack_rows(qz.q, 4), gptq_torch.pack_cols(qz.zeros - 1, 4), qz.scales,
                                 qz.g_idx, 4)
    plain = gptq_torch.GPTQTensors(gptq_torch.pack_rows(qz.q[perm], 4), act.qzeros, qz.scales,
                                   gptq_torch.default_g_idx(len(perm), 32), 4)
    assert torch.equal(qz.g_idx[perm], plain.g_idx)
    x = torch.randn(3, len(perm), generator=torch.Generator().manual_seed(0))
    for cache in (True, False):
        a, b = GPTQLinear(act), GPTQLinear(plain)
        a.prepare(dtype=torch.float32, cache=cache)
        b.prepare(dtype=torch.float32, cache=cache)
        # The same products summed in another order: equal up to fp32 rounding of a 1536-term sum (|y| ~ 20).
        assert torch.allclose(a(x), b(x[:, perm]), atol=1e-4, rtol=1e-5)


def test_gptq_v2_zeros_are_read_without_the_minus_one(smollm2_hf: Path, text_ids: torch.Tensor) -> None:
    branch = "gptq_v2-4bit-64g-actorder_True"
    built = _build(branch)
    assert built.config.checkpoint_format == "gptq_v2" and built.config.zero_offset == 0
    layers, _ = gptq.split_quantized(gptq.read_tensors([gptq_fixtures.smollm2_gptq(branch) / "model.safetensors"]))
    for prefix, qz in gptq_fixtures.quantizer_ints(branch).items():  # stored as is, no minus one
        assert torch.equal(gptq_torch.unpack_cols(layers[prefix]["qzeros"], 4), qz.zeros), prefix
    ids = text_ids[:, :64]
    reference = _build(branch, dtype="float32", dequantize_cache="on")
    assert torch.allclose(_logits(reference.module, ids), _logits(_model_from_ints(smollm2_hf, branch), ids),
                          atol=2e-3)  # fmt: skip
    assert built.modes == {"int4": 210}  # asymmetric v2 zeros through the int4 kernel: the same greedy choices
    assert _agreement(_logits(reference.module, ids), _logits(built.module, ids)) >= 0.95


def test_three_and_two_bit_branches_load_and_track_the_integers(smollm2_hf: Path, text_ids: torch.Tensor) -> None:
    ids = text_ids[:, :32]
    # 2 and 3 bits run in the int4 kernel (bf16 inside; tests/test_cpu_kernels.py checks their real layers against
    # the reference). A 2-bit 135M model is so unstable that bf16 alone moves its choices: its reference path in
    # bf16 (dequantized cache) agrees on 59% of these positions with the same path in fp32, the int4 kernel on 69%.
    for branch, least in (("gptq-3bit-128g-actorder_False", 0.9), ("gptq-2bit-64g-actorder_True", 0.6)):
        built = _build(branch, dtype="float32")
        assert built.modes == {"int4": 210}, branch
        plain, fast = _logits(_model_from_ints(smollm2_hf, branch), ids), _logits(built.module, ids)
        assert _agreement(plain, fast) >= least, branch


def test_cpu_chooses_and_reports_the_dequantize_mode(text_ids: torch.Tensor) -> None:
    cached = _build("main", dequantize_cache="on", dtype="float32")
    per_call = _build("main", dequantize_cache="off", dtype="float32")
    assert cached.modes == {"cache": 210} and cached.device == "cpu"
    assert per_call.modes == {"per-call": 210} and per_call.device == "cpu"
    assert _build("main").modes == {"int4": 210}  # auto: the int4 kernel takes every 4-bit layer
    ids = text_ids[:, :16]
    assert torch.allclose(_logits(cached.module, ids), _logits(per_call.module, ids), atol=1e-3)


# --- errors ------------------------------------------------------------------------------------------------------


def _tampered(tmp_path: Path, change) -> Path:
    folder = link_tree(gptq_fixtures.smollm2_gptq("main"), tmp_path / "model")
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()  # a hard link: never write through it
    change(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_tensor_with_other_bits_is_an_error_naming_the_layer(tmp_path: Path) -> None:
    layer = "model.layers.3.mlp.down_proj"

    def eight_bit(tensors: dict) -> None:  # the same layer, packed at 8 bits
        q = torch.randint(0, 256, (1536, 576), dtype=torch.int32)
        tensors[f"{layer}.qweight"] = gptq_torch.pack_rows(q, 8)

    with pytest.raises(ModelFormatError, match=rf"{layer}: qweight .* 8-bit .* bits=4"):
        gptq.build_module(_tampered(tmp_path, eight_bit), GPTQSettings())


def test_scales_of_another_group_size_are_an_error_naming_the_layer(tmp_path: Path) -> None:
    layer = "model.layers.7.self_attn.k_proj"

    def regroup(tensors: dict) -> None:
        tensors[f"{layer}.scales"] = torch.ones(18, 192, dtype=torch.float16)

    with pytest.raises(ModelFormatError, match=rf"{layer}: scales .*group_size=128"):
        gptq.build_module(_tampered(tmp_path, regroup), GPTQSettings())


def test_quantize_config_json_wins_over_settings(tmp_path: Path) -> None:
    folder = link_tree(gptq_fixtures.smollm2_gptq("gptq-4bit-32g-actorder_True"), tmp_path / "m")
    built = gptq.build_module(folder, GPTQSettings(bits=8, group_size=128))  # detection's fields: the files win
    assert (built.config.bits, built.config.group_size, built.config.desc_act) == (4, 32, True)
    (folder / "quantize_config.json").unlink()
    (folder / "quantize_config.json").write_text(json.dumps({"bits": 5, "group_size": 32}))
    with pytest.raises(ModelFormatError, match="bits: 5"):
        read_model_files(folder)


@pytest.mark.skipif(importlib.util.find_spec("loaders.torch_lm") is None, reason="loaders/torch_lm.py not landed")
def test_load_returns_a_loaded_model() -> None:
    import threading

    from loaders.base import GenerationParams, LoadedModel

    model = gptq.load(gptq_fixtures.smollm2_gptq("main"), GPTQSettings(), name="smol-gptq")
    assert isinstance(model, LoadedModel) and model.loader == "gptq" and model.device == model.plan.device == "cpu"
    assert model.weight_cache == model.plan.weight_summary() == "int4"
    assert model.plan.dtype == model.dtype and model.module.config._attn_implementation == cpu_attention.NAME
    shape = model.plan.files.shape
    assert model.memory.ram_bytes < (shape.linear_params() + shape.vocab * shape.hidden) * 2  # < the bf16 model
    ids = model.tokenizer.encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                                 "<|im_start|>assistant\n", add_bos=False)
    params = GenerationParams(max_new_tokens=10, do_sample=False)
    reply = model.tokenizer.decode(list(model.generate_tokens(ids, params, threading.Event())))
    assert "Paris" in reply
    model.unload()
