"""Quantizations that Transformers' own quantizers load: pre-quantized checkpoints (AWQ, fp8, bitsandbytes, HQQ,
compressed-tensors) detected with their loader path and loaded when their package is installed, refused naming the
package otherwise; bitsandbytes 4-bit / 8-bit at load as Transformers-loader options (on the CPU where the installed
bitsandbytes supports it, on CUDA in the GPU suite). GPTQ stays on Corral's own loader."""

from __future__ import annotations

import importlib.util
import json
import math
import threading
from pathlib import Path

import pytest
import torch

from loaders.base import GenerationParams
from loaders.detect import detect
from loaders.errors import SettingsError, UnsupportedModelError
from loaders.files import read_model_files
from loaders.hardware import fake
from loaders.plan import plan_load
from loaders.settings import TransformersSettings
from tests import gptq_fixtures, realmodel
from tests.conftest import link_tree
from webui.config import AppConfig
from webui.engine import generate
from webui.state import AppState

PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
FEW = GenerationParams(do_sample=False, max_new_tokens=6)
FP8_BLOCK = 64  # SmolLM2's widths (576, 1536, 192) are whole multiples of 64, as Transformers' fp8 blocks must be


def with_quant_config(tmp_path: Path, smollm2_hf: Path, quant: dict) -> Path:
    folder = link_tree(smollm2_hf, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps({**config, "quantization_config": quant}))
    return folder


def smollm2_fp8() -> Path:
    """SmolLM2 with its Linear weights in float8_e4m3 and per-block scales (Transformers' fine-grained fp8 layout)."""
    source = realmodel.smollm2_hf()

    def build(tmp: Path) -> None:
        from safetensors.torch import load_file, save_file

        state = {}
        for name, value in load_file(source / "model.safetensors").items():
            if not name.endswith("_proj.weight"):
                state[name] = value
                continue
            rows, cols = value.shape
            blocks = value.reshape(rows // FP8_BLOCK, FP8_BLOCK, cols // FP8_BLOCK, FP8_BLOCK)
            scale = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12) / torch.finfo(torch.float8_e4m3fn).max
            quantized = (blocks / scale[:, None, :, None]).reshape(rows, cols).to(torch.float8_e4m3fn)
            state[name], state[name.removesuffix("weight") + "weight_scale_inv"] = quantized.contiguous(), scale
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        for item in source.iterdir():
            if item.name not in ("model.safetensors", "config.json"):
                (tmp / item.name).hardlink_to(item)
        config = json.loads((source / "config.json").read_text())
        config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic",
                                         "weight_block_size": [FP8_BLOCK, FP8_BLOCK]}  # fmt: skip
        (tmp / "config.json").write_text(json.dumps(config, indent=2))

    return realmodel._build_once(realmodel.cache_root() / "SmolLM2-135M-Instruct-FP8-b1", build)


# --- detection and refusal ----------------------------------------------------------------------------------------


def test_awq_checkpoint_is_detected_and_refused_naming_gptqmodel(tmp_path: Path, smollm2_hf: Path) -> None:
    folder = with_quant_config(tmp_path, smollm2_hf, {"quant_method": "awq", "bits": 4, "group_size": 128,
                                                      "version": "gemm", "zero_point": True})  # fmt: skip
    detection = detect(folder)
    assert (detection.loader, detection.quant) == ("transformers", "AWQ 4-bit")
    reason = detection.reasons[1]
    assert "quant_method awq (4-bit, group size 128, gemm)" in reason and "Transformers' AWQ quantizer" in reason
    if importlib.util.find_spec("gptqmodel") is not None:
        pytest.skip("gptqmodel is installed here: nothing to refuse")
    assert "not installed: pip install gptqmodel" in reason
    with pytest.raises(UnsupportedModelError, match=r"quantized with AWQ .* the gptqmodel package, which is not "
                                                    r"installed.*pip install gptqmodel"):  # fmt: skip
        plan_load("transformers", read_model_files(folder), TransformersSettings(), fake())


@pytest.mark.parametrize(("quant", "label", "package"), [
    ({"quant_method": "compressed-tensors", "format": "pack-quantized"}, "compressed-tensors", "compressed-tensors"),
    ({"quant_method": "hqq", "nbits": 4}, "HQQ 4-bit", "hqq"),
])  # fmt: skip
def test_other_transformers_methods_name_their_package(tmp_path: Path, smollm2_hf: Path, quant: dict, label: str,
                                                       package: str) -> None:  # fmt: skip
    detection = detect(with_quant_config(tmp_path, smollm2_hf, quant))
    assert (detection.loader, detection.quant) == ("transformers", label)
    assert f"needs the {package} package" in detection.reasons[1]


def test_gptq_stays_on_corrals_loader() -> None:
    detection = detect(gptq_fixtures.smollm2_gptq("main"))  # quantization_config with quant_method gptq
    assert detection.loader == "gptq" and detection.files.quant is None


def test_bnb_options_are_checked_in_the_plan(smollm2_hf: Path) -> None:
    files = read_model_files(smollm2_hf)
    with pytest.raises(SettingsError, match="not both"):
        plan_load("transformers", files, TransformersSettings(load_in_4bit=True, load_in_8bit=True), fake())
    with pytest.raises(SettingsError, match="nf4 or fp4"):
        plan_load("transformers", files, TransformersSettings(load_in_4bit=True, quant_type="int4"), fake())
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(UnsupportedModelError, match="pip install bitsandbytes"):
            plan_load("transformers", files, TransformersSettings(load_in_4bit=True), fake())
        return
    plan = plan_load("transformers", files, TransformersSettings(load_in_4bit=True, use_double_quant=True), fake())
    assert plan.quant == "bitsandbytes 4-bit nf4" and "4-bit nf4, double quant" in plan.describe()


# --- loads --------------------------------------------------------------------------------------------------------


def test_fp8_checkpoint_loads_through_transformers(tmp_path: Path) -> None:
    models = tmp_path / "models"
    link_tree(smollm2_fp8(), models / "SmolLM2-FP8")
    app = AppState(config=AppConfig(models_dir=models, loras_dir=tmp_path / "loras", user_data_dir=tmp_path / "d"))
    view = app.models.inspect("SmolLM2-FP8")
    assert view.detection.quant == "FP8 8-bit" and "quant_method fp8 (8-bit, blocks 64x64)" in view.detection.reasons[1]
    assert view.plan is not None and view.plan.quant == "FP8 8-bit"
    if not torch.cuda.is_available():  # Transformers leaves the non-Linear weights float32: bf16 would fail to run
        assert view.plan.dtype == "float32"
        refused = app.models.inspect("SmolLM2-FP8", loader_settings={"dtype": "bfloat16"})
        assert refused.plan is None and "float32 only" in refused.plan_error
    info = app.models.load("SmolLM2-FP8")
    try:
        linear = info.model.module.model.layers[0].self_attn.q_proj
        if not torch.cuda.is_available():  # Transformers dequantizes fp8 without a GPU of compute capability 8.9+
            assert linear.weight.dtype == torch.float32
        reply = "".join(generate(info.model, PROMPT, FEW, cancel=threading.Event()))
        assert "Paris" in reply
    finally:
        app.models.unload()


def _bnb_cpu_problem() -> str | None:
    """Why a bitsandbytes load cannot run on this CPU (None: it can)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed"
    try:
        import bitsandbytes.functional as bnb_functional

        weight = torch.randn(64, 64)
        packed, state = bnb_functional.quantize_4bit(weight, quant_type="nf4")
        back = bnb_functional.dequantize_4bit(packed, state)
    except (RuntimeError, NotImplementedError, AttributeError, ImportError) as error:
        return f"the installed bitsandbytes cannot quantize on this CPU ({error})"
    return None if math.isfinite(float((back - weight).abs().max())) else "bitsandbytes gave NaN on this CPU"


def test_bnb_4bit_load_on_cpu(smollm2_hf: Path) -> None:
    problem = _bnb_cpu_problem()
    if problem:
        pytest.skip(f"{problem}; the GPU suite covers bitsandbytes on CUDA")
    from loaders.transformers_loader import load

    model = load(smollm2_hf, TransformersSettings(device="cpu", load_in_4bit=True), name="SmolLM2-nf4")
    try:
        linear = model.module.model.layers[0].mlp.down_proj
        assert type(linear).__name__ == "Linear4bit" and model.plan.quant == "bitsandbytes 4-bit nf4"
        reply = "".join(generate(model, PROMPT, FEW, cancel=threading.Event()))
        assert "Paris" in reply
    finally:
        model.unload()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only: the GPU suite runs it")
@pytest.mark.parametrize("bits", [4, 8])
def test_bnb_load_on_cuda(smollm2_hf: Path, bits: int) -> None:
    from loaders.transformers_loader import load

    settings = TransformersSettings(device="cuda", load_in_4bit=bits == 4, load_in_8bit=bits == 8)
    model = load(smollm2_hf, settings, name=f"SmolLM2-bnb{bits}")
    try:
        assert "Paris" in "".join(generate(model, PROMPT, FEW, cancel=threading.Event()))
    finally:
        model.unload()
