"""The Transformers loader: a Hugging Face model folder -> `TorchCausalLM`.

Owns the choices made before the weights are read: which weight files (safetensors only, unless there are none),
dtype and device, RoPE overrides written into the config, and the memory the load took.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import psutil
import torch

from loaders.base import MemoryReport
from loaders.errors import ModelFormatError, SettingsError, UnsupportedModelError
from loaders.hf_tokenizer import HFTokenizer
from loaders.settings import TransformersSettings
from loaders.torch_lm import TorchCausalLM

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load(path: Path, settings: TransformersSettings, *, name: str) -> TorchCausalLM:
    """Load the folder `path` for generation."""
    path = Path(path)
    use_safetensors = weights_format(path) == "safetensors"
    config = load_config(path, settings)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    ram_before, start = _rss(), time.perf_counter()
    module = _load_module(path, config, settings, device=device, dtype=dtype, use_safetensors=use_safetensors)
    tokenizer = HFTokenizer.from_folder(path, trust_remote_code=settings.trust_remote_code)
    seconds = time.perf_counter() - start
    memory = MemoryReport(ram_bytes=max(_rss() - ram_before, _cpu_tensor_bytes(module)), vram_bytes=_cuda_allocated())
    return TorchCausalLM(
        name, "transformers", path, module, tokenizer, context_length(config, settings),
        _device_label(module, device), seconds, memory,
    )


# --- decisions before loading -----------------------------------------------------------------------------------


def weights_format(path: Path) -> str:
    """"safetensors", or "pickle" (with a warning) when the folder has only .bin / .pt weights."""
    if not path.is_dir():
        raise ModelFormatError("The model folder does not exist.", path=path)
    if any(path.glob("*.safetensors")):
        return "safetensors"
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not pickles:
        raise ModelFormatError(
            "No weights in the model folder: expected model.safetensors (or model-0000x-of-0000y.safetensors "
            "shards). Download the model again, or pick the folder that holds the weights.",
            path=path,
        )
    log.warning(
        "%s has only pickled weights (%s). Loading them runs code stored in the file: use safetensors "
        "models from sources you trust.", path, ", ".join(pickles),
    )
    return "pickle"


def load_config(path: Path, settings: TransformersSettings) -> Any:
    """config.json with the RoPE overrides applied; a missing or malformed file names itself."""
    from transformers import AutoConfig

    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelFormatError("config.json is missing from the model folder; download the model again.",
                               path=config_file)
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


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when CUDA is available, else "cpu"; "cuda" -> "cuda:0"."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = "cuda:0"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SettingsError(f"Device {device} was asked for but CUDA is not available; choose cpu or auto.")
    if device != "cpu" and not device.startswith("cuda:"):
        raise SettingsError(f"Unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """"auto" = float32 on CPU, bfloat16 on CUDA (float16 where the GPU lacks bf16)."""
    if dtype != "auto":
        try:
            return DTYPES[dtype]
        except KeyError:
            raise SettingsError(f"Unknown dtype {dtype!r}: use auto, {', '.join(DTYPES)}") from None
    if device == "cpu":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def context_length(config: Any, settings: TransformersSettings) -> int:
    """The settings' value, else max_position_embeddings (stretched by linear RoPE scaling)."""
    if settings.context_length:
        return settings.context_length
    trained = int(getattr(config, "max_position_embeddings", 0) or 2048)
    return int(trained * settings.compress_pos_emb)


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
    try:
        module = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as error:  # missing / truncated weight files
        raise ModelFormatError(f"The weights could not be read: {error}", path=path) from error
    except ValueError as error:  # unknown architecture, remote code refused
        raise _config_error(error, path / "config.json", settings) from error
    return module.eval()


def _max_memory(gib: dict[str, float]) -> dict[int | str, str]:
    """{"0": 20, "cpu": 60} -> accelerate's {0: "20GiB", "cpu": "60GiB"}."""
    return {int(key) if str(key).isdigit() else key: f"{value}GiB" for key, value in gib.items()}


def _config_error(error: Exception, config_file: Path, settings: TransformersSettings) -> ModelFormatError:
    text = str(error)
    if "trust_remote_code" in text and not settings.trust_remote_code:
        return UnsupportedModelError(
            "This model needs its own Python code (trust_remote_code). Enable it in the loader settings only if "
            "you trust the model's authors.", path=config_file,
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
