"""The Transformers loader: a Hugging Face model folder -> `TorchCausalLM`.

Carries out the plan `loaders.plan` made (device, dtype, the weight files, context): RoPE overrides written into the
config, the module loaded by `AutoModelForCausalLM`, the tokenizer, and the memory the load took.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import psutil
import torch

from kernels import cpu_attention
from loaders.base import MemoryReport
from loaders.errors import ModelFormatError, UnsupportedModelError
from loaders.hf_tokenizer import HFTokenizer
from loaders.plan import LoadPlan
from loaders.registry import loader_for_paths
from loaders.settings import TransformersSettings
from loaders.torch_lm import TorchCausalLM

log = logging.getLogger(__name__)

LOADER_NAME = "transformers"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


load = loader_for_paths(LOADER_NAME)


def load_plan(plan: LoadPlan, settings: TransformersSettings, *, name: str) -> TorchCausalLM:
    """Carry out `plan` (`loaders.plan`): its device, dtype, weight files and context."""
    files = plan.files
    if files.weights is not None and files.weights.format == "pickle":
        log.warning("%s has only pickled weights (%s). Loading them runs code stored in the file: use safetensors "
                    "models from sources you trust.", files.folder, ", ".join(files.weights.names))  # fmt: skip
    config = load_config(files.folder, settings)
    device = "cuda:0" if plan.device.startswith("cuda") and plan.max_memory_gib else plan.device
    dtype = DTYPES[plan.dtype]
    if device.startswith("cuda") and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        dtype = torch.float16  # same bytes: the plan's arithmetic holds
    ram_before, start = _rss(), time.perf_counter()
    module = _load_module(files.folder, config, settings, device=device, dtype=dtype,
                          use_safetensors=files.weights is not None and files.weights.format == "safetensors")
    tokenizer = HFTokenizer.from_folder(files.folder, trust_remote_code=settings.trust_remote_code)
    seconds = time.perf_counter() - start
    memory = MemoryReport(ram_bytes=max(_rss() - ram_before, _cpu_tensor_bytes(module)), vram_bytes=_cuda_allocated())
    return TorchCausalLM(
        name, LOADER_NAME, files.path, module, tokenizer, plan.context, _device_label(module, device), seconds, memory,
        plan=plan,
    )  # fmt: skip


# --- decisions before loading -----------------------------------------------------------------------------------


def load_config(path: Path, settings: TransformersSettings) -> Any:
    """config.json with the RoPE overrides applied; a malformed file names itself."""
    from transformers import AutoConfig

    config_file = path / "config.json"
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=settings.trust_remote_code)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as error:
        raise _config_error(error, config_file, settings) from error
    apply_rope_settings(config, settings)
    return config


def apply_rope_settings(config: Any, settings: TransformersSettings) -> None:
    """Write `rope_freq_base` (0 = keep) and linear `compress_pos_emb` (1 = none) into `config.rope_parameters`
    (transformers 5; models with one RoPE per layer type get the change in each)."""
    if not settings.rope_freq_base and settings.compress_pos_emb == 1.0:
        return
    rope = getattr(config, "rope_parameters", None)
    if rope is None:
        raise UnsupportedModelError(f"This model ({config.model_type}) has no RoPE settings to change; set "
                                    "rope_freq_base to 0 and compress_pos_emb to 1.")
    per_type = all(isinstance(value, dict) for value in rope.values())
    for params in rope.values() if per_type else [rope]:
        if settings.rope_freq_base:
            params["rope_theta"] = float(settings.rope_freq_base)
        if settings.compress_pos_emb != 1.0:
            params["rope_type"] = "linear"
            params["factor"] = float(settings.compress_pos_emb)


# --- loading --------------------------------------------------------------------------------------------------------


def _load_module(
    path: Path, config: Any, settings: TransformersSettings, *, device: str, dtype: torch.dtype,
    use_safetensors: bool,
) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {
        "config": config, "dtype": dtype, "use_safetensors": use_safetensors,
        "trust_remote_code": settings.trust_remote_code, "device_map": {"": device},
    }
    if settings.max_memory_gib and device != "cpu":
        kwargs["device_map"] = "auto"
        kwargs["max_memory"] = _max_memory(settings.max_memory_gib)
    quantization = bnb_config(settings, dtype)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    try:
        module = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as error:  # missing / truncated weight files
        raise ModelFormatError(f"The weights could not be read: {error}", path=path) from error
    except ValueError as error:  # unknown architecture, remote code refused
        raise _config_error(error, path / "config.json", settings) from error
    if device == "cpu":
        cpu_attention.use_on(module)  # one-token decode steps without SDPA's slow GQA path on the CPU
    return module.eval()


def bnb_config(settings: TransformersSettings, dtype: torch.dtype) -> Any:
    """Transformers' `BitsAndBytesConfig` for `load_in_4bit` / `load_in_8bit` (the plan checked the options and that
    bitsandbytes is installed); None when neither is set."""
    if not (settings.load_in_4bit or settings.load_in_8bit):
        return None
    from transformers import BitsAndBytesConfig

    if settings.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = dtype if settings.compute_dtype == "auto" else DTYPES[settings.compute_dtype]
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=settings.quant_type,
                              bnb_4bit_use_double_quant=settings.use_double_quant, bnb_4bit_compute_dtype=compute)


def _max_memory(gib: dict[str, float]) -> dict[int | str, str]:
    """{"0": 20, "cpu": 60} -> accelerate's {0: "20GiB", "cpu": "60GiB"}."""
    return {int(key) if str(key).isdigit() else key: f"{value}GiB" for key, value in gib.items()}


def _config_error(error: Exception, config_file: Path, settings: TransformersSettings) -> ModelFormatError:
    text = str(error)
    if "trust_remote_code" in text and not settings.trust_remote_code:
        return UnsupportedModelError(
            "This model needs its own Python code (trust_remote_code). Restart Corral with --trust-remote-code "
            "to allow it, only if you trust the model's authors.", path=config_file,
        )
    return ModelFormatError(f"The model configuration could not be used: {text}", path=config_file)


def _device_label(module: torch.nn.Module, device: str) -> str:
    placement = getattr(module, "hf_device_map", None) or {}
    devices = sorted({str(d) for d in placement.values()})
    if len(devices) <= 1:
        return device
    return " + ".join(f"cuda:{d}" if d.isdigit() else d for d in devices)


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _cpu_tensor_bytes(module: torch.nn.Module) -> int:
    """Weights on the CPU: safetensors are memory-mapped, so RSS grows only as pages are first touched."""
    tensors = {t.data_ptr(): t for t in [*module.parameters(), *module.buffers()] if t.device.type == "cpu"}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _cuda_allocated() -> dict[int, int]:
    if not torch.cuda.is_available():
        return {}
    return {i: torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count())}
