"""The Transformers loader on the real SmolLM2 folder: load, dtype, device, RoPE overrides, weights choice, errors."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from kernels import cpu_attention
from loaders.base import GenerationParams, LoadedModel
from loaders.errors import ModelFormatError, SettingsError, UnsupportedModelError
from loaders.files import read_model_files
from loaders.hardware import fake, snapshot
from loaders.plan import plan_load
from loaders.settings import TransformersSettings
from loaders.transformers_loader import load, load_config
from tests.conftest import link_tree

FEW = GenerationParams(do_sample=False, max_new_tokens=4, ban_eos_token=True)


def _few_tokens(model: LoadedModel) -> list[int]:
    ids = model.tokenizer.encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", add_bos=True)
    return list(model.generate_tokens(ids, FEW, threading.Event()))


def _folder_without(src: Path, dst: Path, *names: str) -> Path:
    link_tree(src, dst)
    for name in names:
        (dst / name).unlink()
    return dst


def test_load_real_folder(smollm2_hf: Path) -> None:
    model = load(smollm2_hf, TransformersSettings(), name="SmolLM2")
    try:
        assert isinstance(model, LoadedModel)
        assert (model.name, model.loader, model.device) == ("SmolLM2", "transformers", "cpu")
        assert model.context_length == 8192
        # auto on the CPU: the plan's choice (bf16 where the CPU computes it natively), and the model reports what it
        # really computes in
        expected = "bfloat16" if snapshot().cpu_bf16 else "float32"
        assert model.plan.dtype == model.dtype == expected
        assert next(model.module.parameters()).dtype == getattr(torch, expected)
        assert model.module.config._attn_implementation == cpu_attention.NAME  # one-token GQA steps packed
        weight_bytes = sum(p.numel() * p.element_size() for p in model.module.parameters())
        assert model.memory.ram_bytes >= weight_bytes and model.memory.vram_bytes == {}
        assert model.load_seconds > 0
        assert model.tokenizer.eos_token_ids[0] == 2 and model.tokenizer.chat_template.startswith("{% for message")
        assert len(_few_tokens(model)) == 4
    finally:
        model.unload()
    assert model.module is None


def test_bfloat16_load_generates(smollm2_hf: Path) -> None:
    model = load(smollm2_hf, TransformersSettings(dtype="bfloat16", device="cpu"), name="SmolLM2")
    try:
        assert next(model.module.parameters()).dtype == torch.bfloat16
        assert len(_few_tokens(model)) == 4
    finally:
        model.unload()


def test_dtype_and_device_choices(smollm2_hf: Path) -> None:
    files = read_model_files(smollm2_hf)

    def plan(hw, **values):
        return plan_load("transformers", files, TransformersSettings(**values), hw)

    plain_cpu, bf16_cpu = fake(ram_gib=8), replace(fake(ram_gib=8), cpu_features=frozenset({"avx512_bf16"}))
    assert (plan(plain_cpu).device, plan(plain_cpu).dtype) == ("cpu", "float32")
    assert plan(bf16_cpu).dtype == "bfloat16"  # native bf16: half the bytes per token, no emulation
    assert plan(plain_cpu, dtype="float16").dtype == "float16"
    gpu = fake(ram_gib=8, gpu_gib=(24,))
    assert (plan(gpu).device, plan(gpu).dtype, plan(gpu).n_gpu_layers) == ("cuda:0", "bfloat16", 31)
    assert plan(gpu, device="cpu").device == "cpu"
    with pytest.raises(SettingsError, match="dtype"):
        plan(plain_cpu, dtype="int3")
    with pytest.raises(SettingsError, match="device"):
        plan(plain_cpu, device="tpu")
    with pytest.raises(SettingsError, match="no such GPU"):
        plan(plain_cpu, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_load(smollm2_hf: Path) -> None:
    model = load(smollm2_hf, TransformersSettings(device="cuda"), name="SmolLM2")
    try:
        assert model.device == "cuda:0" and model.memory.vram_bytes[0] > 0
        assert next(model.module.parameters()).dtype in (torch.bfloat16, torch.float16)
        assert len(_few_tokens(model)) == 4
    finally:
        model.unload()


def test_rope_settings_reach_the_model(smollm2_hf: Path) -> None:
    settings = TransformersSettings(rope_freq_base=1e6, compress_pos_emb=2.0)
    model = load(smollm2_hf, settings, name="SmolLM2")
    try:
        rope = model.module.config.rope_parameters
        assert rope["rope_theta"] == 1e6 and rope["rope_type"] == "linear" and rope["factor"] == 2.0
        assert model.context_length == 2 * 8192
        head_dim = model.module.config.head_dim
        expected = 1.0 / (1e6 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)) / 2.0
        assert torch.allclose(model.module.model.rotary_emb.inv_freq, expected)
    finally:
        model.unload()


def test_own_rope_kept_by_default(smollm2_hf: Path) -> None:
    config = load_config(smollm2_hf, TransformersSettings())
    assert config.rope_parameters == {"rope_theta": 100000.0, "rope_type": "default"}
    assert load_config(smollm2_hf, TransformersSettings(context_length=1024)).max_position_embeddings == 8192


def test_folder_without_weights(smollm2_hf: Path, tmp_path: Path) -> None:
    folder = _folder_without(smollm2_hf, tmp_path / "m", "model.safetensors")
    with pytest.raises(ModelFormatError, match="The weights are missing") as caught:
        load(folder, TransformersSettings(), name="m")
    assert caught.value.path == folder


def test_bad_or_missing_config(smollm2_hf: Path, tmp_path: Path) -> None:
    folder = _folder_without(smollm2_hf, tmp_path / "m", "config.json")
    with pytest.raises(ModelFormatError, match="config.json is missing"):
        load(folder, TransformersSettings(), name="m")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelFormatError) as caught:
        load(folder, TransformersSettings(), name="m")
    assert caught.value.path == folder / "config.json"


def test_remote_code_refused_unless_asked(smollm2_hf: Path, tmp_path: Path) -> None:
    folder = _folder_without(smollm2_hf, tmp_path / "m", "config.json")
    config = json.loads((smollm2_hf / "config.json").read_text())
    config.update(model_type="corral_custom", auto_map={"AutoConfig": "configuration_custom.CustomConfig"})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="trust_remote_code"):
        load(folder, TransformersSettings(), name="m")


def test_safetensors_preferred_and_bin_never_read(smollm2_hf: Path, tmp_path: Path) -> None:
    folder = link_tree(smollm2_hf, tmp_path / "m")
    (folder / "pytorch_model.bin").write_bytes(b"not a pickle: unpickling this would fail")
    model = load(folder, TransformersSettings(), name="m")
    try:
        assert len(_few_tokens(model)) == 4
    finally:
        model.unload()


def test_pickle_only_folder_warns(smollm2_hf: Path, tmp_path: Path) -> None:
    folder = _folder_without(smollm2_hf, tmp_path / "m", "model.safetensors")
    (folder / "pytorch_model.bin").write_bytes(b"x")
    files = read_model_files(folder)
    assert files.weights.format == "pickle" and files.weights.names == ("pytorch_model.bin",)
    planned = plan_load("transformers", files, TransformersSettings(), fake(ram_gib=8))
    assert "pytorch_model.bin" in str(planned.opens) and "trust" in planned.notes[0]
    (folder / "model.safetensors").write_bytes(b"")  # a safetensors file wins, whatever else is there
    with pytest.raises(ModelFormatError, match="model.safetensors"):
        read_model_files(folder)  # ... and an empty one is refused as truncated, never skipped for the pickle
