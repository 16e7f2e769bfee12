"""The GPTQ loader: a GPTQ folder (AutoGPTQ / GPTQ-for-LLaMa "v1" or `gptq_v2`) -> a `LoadedModel`.

This module owns reading the folder: the quantize config (`quantize_config.json`, else `quantization_config` in
config.json, else the settings detection filled in), the weights (`model.safetensors`, sharded safetensors with an
index, or `<model_file_base_name>.safetensors` of older repos), checking every quantized layer's tensors against the
config, and assembling the model: the Transformers architecture is built with empty weights (no
trust_remote_code, no Transformers GPTQ integration), each quantized Linear is replaced by `kernels.gptq.GPTQLinear`,
the rest (embeddings, norms, lm_head) is loaded as usual. On CPU, the choice between a dequantized-weight cache and
dequantizing per call follows the memory estimate (`GPTQSettings.dequantize_cache`) and shows in `device`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from safetensors import safe_open
from torch import nn

from kernels import gptq_torch
from kernels.gptq import GPTQLinear
from loaders.base import LoadedModel, MemoryReport
from loaders.errors import ModelFormatError, UnsupportedModelError
from loaders.settings import GPTQSettings

log = logging.getLogger(__name__)

QUANT_SUFFIXES = ("qweight", "qzeros", "scales", "g_idx", "bias")
CACHE_RAM_FRACTION = 0.5  # auto: cache dequantized weights when they take at most this share of available RAM


@dataclass(frozen=True)
class GPTQConfig:
    """What the folder says about its quantization."""

    bits: int
    group_size: int  # -1 = one group per column
    desc_act: bool
    sym: bool
    checkpoint_format: str  # gptq | gptq_v2
    model_file_base_name: str | None

    @property
    def zero_offset(self) -> int:
        return 1 if self.checkpoint_format == "gptq" else 0


@dataclass
class GPTQModule:
    """A built GPTQ model before it is wrapped for the engine."""

    module: nn.Module
    config: GPTQConfig
    device: str  # human-readable, with the GPTQ backend
    modes: dict[str, int]  # GPTQLinear backend -> number of layers


# --- config ----------------------------------------------------------------------------------------------------------


def read_gptq_config(path: Path, settings: GPTQSettings) -> GPTQConfig:
    """The quantize config from the folder; the settings only fill what the files leave out."""
    raw = _read_json(path / "quantize_config.json") if (path / "quantize_config.json").exists() else None
    if raw is None:
        raw = _read_json(path / "config.json").get("quantization_config")
    raw = dict(raw or {})
    method = raw.get("quant_method", "gptq")
    if method != "gptq":
        raise UnsupportedModelError(f"This folder is quantized with {method!r}, not GPTQ; pick another loader.",
                                    path=path)
    if raw.get("is_marlin_format"):
        raise UnsupportedModelError("Marlin-format GPTQ checkpoints are not supported; download a plain GPTQ "
                                    "branch.", path=path)
    config = GPTQConfig(
        bits=int(raw.get("bits", settings.bits)),
        group_size=int(raw.get("group_size", settings.group_size)),
        desc_act=bool(raw.get("desc_act", settings.desc_act)),
        sym=bool(raw.get("sym", settings.sym)),
        checkpoint_format=str(raw.get("checkpoint_format", settings.checkpoint_format)),
        model_file_base_name=raw.get("model_file_base_name"),
    )
    _validate_config(config, path)
    return config


def _validate_config(config: GPTQConfig, path: Path) -> None:
    if config.bits not in gptq_torch.SUPPORTED_BITS:
        raise UnsupportedModelError(f"GPTQ with {config.bits} bits is not supported (2, 3, 4, 8 are).", path=path)
    if config.group_size != -1 and config.group_size <= 0:
        raise ModelFormatError(f"quantize config has group_size {config.group_size}; expected -1 or > 0.", path=path)
    if config.checkpoint_format not in ("gptq", "gptq_v2"):
        raise UnsupportedModelError(f"GPTQ checkpoint_format {config.checkpoint_format!r} is not supported "
                                    "(gptq and gptq_v2 are).", path=path)


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFormatError("The folder has no config.json; download the model again.", path=file) from None
    except json.JSONDecodeError as error:
        raise ModelFormatError(f"{file.name} is not valid JSON ({error}).", path=file) from None


# --- weights ---------------------------------------------------------------------------------------------------------


def weight_files(path: Path, config: GPTQConfig, settings: GPTQSettings) -> list[Path]:
    """The safetensors files holding the model, in the order they are named."""
    candidates = [settings.weights_file] if settings.weights_file else []
    if config.model_file_base_name:
        candidates.append(f"{config.model_file_base_name}.safetensors")
    candidates.append("model.safetensors")
    for name in candidates:
        if (path / name).is_file():
            return [path / name]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return [path / f for f in dict.fromkeys(_read_json(index)["weight_map"].values())]
    found = sorted(path.glob("*.safetensors"))
    if len(found) == 1:
        return found
    if not found and (any(path.glob("*.bin")) or any(path.glob("*.pt"))):
        raise UnsupportedModelError("Only .safetensors GPTQ weights are supported; this folder has .bin/.pt files.",
                                    path=path)
    raise ModelFormatError(f"Cannot tell which weights file to load (found {len(found)} .safetensors files); "
                           "set weights_file in the model's settings.", path=path)


def read_tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        if not file.is_file():
            raise ModelFormatError("A weights file named by the index is missing; download again.", path=file)
        with safe_open(file, framework="pt") as reader:
            tensors.update({name: reader.get_tensor(name) for name in reader.keys()})  # noqa: SIM118
    return tensors


def split_quantized(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """(layer prefix -> its GPTQ tensors, everything else)."""
    prefixes = {name.removesuffix(".qweight") for name in tensors if name.endswith(".qweight")}
    layers: dict[str, dict[str, torch.Tensor]] = {p: {} for p in prefixes}
    rest = {}
    for name, value in tensors.items():
        prefix, _, suffix = name.rpartition(".")
        if prefix in layers and suffix in QUANT_SUFFIXES:
            layers[prefix][suffix] = value
        else:
            rest[name] = value
    return layers, rest


def check_layer(prefix: str, parts: dict[str, torch.Tensor], linear: nn.Linear, config: GPTQConfig,
                path: Path) -> gptq_torch.GPTQTensors:
    """The layer's tensors as `GPTQTensors`, or `ModelFormatError` naming the layer and what contradicts what."""
    in_f, out_f, bits = linear.in_features, linear.out_features, config.bits

    def fail(message: str) -> ModelFormatError:
        return ModelFormatError(f"GPTQ layer {prefix}: {message}", path=path)

    for part in ("qweight", "qzeros", "scales"):
        if part not in parts:
            raise fail(f"{part} is missing.")
    qweight, qzeros, scales = parts["qweight"], parts["qzeros"], parts["scales"]
    if in_f % 32 or out_f % 32 and bits == 3:
        raise fail(f"{in_f}x{out_f} cannot be packed at {bits} bits.")
    if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32:
        raise fail(f"qweight/qzeros are {qweight.dtype}/{qzeros.dtype}, expected int32.")
    if tuple(qweight.shape) != (in_f * bits // 32, out_f):
        stored = f"{32 * qweight.shape[0] / in_f:g}-bit" if qweight.shape[1] == out_f else "a different layer's"
        raise fail(f"qweight has shape {tuple(qweight.shape)}, which holds {stored} weights; the config says "
                   f"bits={bits} for a {in_f}->{out_f} Linear, expected {(in_f * bits // 32, out_f)}.")
    n_groups = 1 if config.group_size == -1 else math.ceil(in_f / config.group_size)
    if tuple(scales.shape) != (n_groups, out_f):
        raise fail(f"scales has shape {tuple(scales.shape)}, expected {(n_groups, out_f)} "
                   f"(group_size={config.group_size}).")
    if tuple(qzeros.shape) != (n_groups, out_f * bits // 32):
        raise fail(f"qzeros has shape {tuple(qzeros.shape)}, expected {(n_groups, out_f * bits // 32)} "
                   f"(bits={bits}, group_size={config.group_size}).")
    g_idx = parts.get("g_idx")
    if g_idx is None:
        g_idx = gptq_torch.default_g_idx(in_f, config.group_size)
    elif tuple(g_idx.shape) != (in_f,) or int(g_idx.min()) < 0 or int(g_idx.max()) >= n_groups:
        raise fail(f"g_idx (shape {tuple(g_idx.shape)}) does not map {in_f} rows to {n_groups} groups.")
    return gptq_torch.GPTQTensors(qweight, qzeros, scales.to(torch.float16), g_idx.to(torch.int32), bits,
                                  config.zero_offset)


# --- assembly --------------------------------------------------------------------------------------------------------


def build_module(path: Path, settings: GPTQSettings) -> GPTQModule:
    """Read the folder and assemble the model on its device, every GPTQLinear prepared."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    config = read_gptq_config(path, settings)
    device, dtype = _device_dtype(settings)
    hf_config = AutoConfig.from_pretrained(path)
    if hasattr(hf_config, "quantization_config"):
        del hf_config.quantization_config  # we assemble the quantized layers ourselves
    layers, rest = split_quantized(read_tensors(weight_files(path, config, settings)))
    with init_empty_weights(include_buffers=False):  # parameters on meta, buffers (rotary inv_freq) real
        module = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    for prefix, parts in sorted(layers.items()):
        _replace_linear(module, prefix, parts, config, path)
    _load_rest(module, rest, dtype, path)
    module.to(device).eval()
    modes = _prepare_layers(module, dtype, settings.dequantize_cache)
    return GPTQModule(module=module, config=config, device=_describe(device, modes, module, dtype), modes=modes)


def _replace_linear(module: nn.Module, prefix: str, parts: dict[str, torch.Tensor], config: GPTQConfig,
                    path: Path) -> None:
    try:
        linear = module.get_submodule(prefix)
    except AttributeError:
        raise ModelFormatError(f"GPTQ layer {prefix} does not exist in this architecture.", path=path) from None
    if not isinstance(linear, nn.Linear):
        raise ModelFormatError(f"GPTQ layer {prefix} is a {type(linear).__name__}, not a Linear.", path=path)
    tensors = check_layer(prefix, parts, linear, config, path)
    bias = parts.get("bias")
    if linear.bias is not None and bias is None:
        raise ModelFormatError(f"GPTQ layer {prefix}: the architecture has a bias, the checkpoint none.", path=path)
    module.set_submodule(prefix, GPTQLinear(tensors, bias))


def _load_rest(module: nn.Module, rest: dict[str, torch.Tensor], dtype: torch.dtype, path: Path) -> None:
    """Embeddings, norms, lm_head...: assigned as they are, in the compute dtype; tied weights re-tied."""
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in rest.items()}
    result = module.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys:
        raise ModelFormatError(f"Tensors not in this architecture: {', '.join(result.unexpected_keys[:5])}.",
                               path=path)
    module.tie_weights()
    missing = [name for name, p in module.named_parameters() if p.device.type == "meta"]
    if missing:
        raise ModelFormatError(f"The weights lack {', '.join(missing[:5])}; download the model again.", path=path)


def _prepare_layers(module: nn.Module, dtype: torch.dtype, dequantize_cache: str) -> dict[str, int]:
    layers = [m for m in module.modules() if isinstance(m, GPTQLinear)]
    cache = _use_cache(layers, dtype, dequantize_cache)
    modes: dict[str, int] = {}
    for layer in layers:
        mode = layer.prepare(dtype=dtype, cache=cache)
        modes[mode] = modes.get(mode, 0) + 1
    return modes


def _use_cache(layers: list[GPTQLinear], dtype: torch.dtype, setting: str) -> bool:
    """Keep dequantized weights? `on`/`off` as told; `auto` when they fit in a share of the available memory."""
    if setting in ("on", "off"):
        return setting == "on"
    if setting != "auto":
        raise ModelFormatError(f"dequantize_cache must be auto, on or off, not {setting!r}.")
    if not layers:
        return False
    needed = sum(layer.dequantized_bytes(dtype) for layer in layers)
    device = layers[0].qweight.device
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = psutil.virtual_memory().available
    return needed <= CACHE_RAM_FRACTION * free


def _device_dtype(settings: GPTQSettings) -> tuple[torch.device, torch.dtype]:
    name = settings.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if settings.dtype == "auto":
        return device, torch.float16 if device.type == "cuda" else torch.float32
    return device, getattr(torch, settings.dtype)


def _describe(device: torch.device, modes: dict[str, int], module: nn.Module, dtype: torch.dtype) -> str:
    labels = {"triton": "Triton kernels", "cache": "dequantized-weight cache", "per-call": "dequantize per call"}
    gib = sum(m.dequantized_bytes(dtype) for m in module.modules() if isinstance(m, GPTQLinear)) / 2**30
    parts = [f"{count} layers {labels[mode]}" + (f" ({gib:.2f} GiB)" if mode == "cache" else "")
             for mode, count in sorted(modes.items())]
    text = f"{device} (GPTQ: {', '.join(parts)})"
    log.info("GPTQ model on %s", text)
    return text


def memory_report(module: nn.Module) -> MemoryReport:
    """Bytes held by the module's tensors and the GPTQ layers' prepared copies, per device."""
    tensors = list(module.parameters()) + list(module.buffers())
    for layer in module.modules():
        if isinstance(layer, GPTQLinear):
            tensors += layer.prepared_tensors()
    ram, vram = 0, {}
    seen: set[int] = set()
    for tensor in tensors:
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        size = tensor.numel() * tensor.element_size()
        if tensor.device.type == "cuda":
            vram[tensor.device.index] = vram.get(tensor.device.index, 0) + size
        else:
            ram += size
    return MemoryReport(ram_bytes=ram, vram_bytes=vram)


def load(path: Path, settings: GPTQSettings, *, name: str) -> LoadedModel:
    """Load a GPTQ folder for generation."""
    from loaders.hf_tokenizer import HFTokenizer
    from loaders.torch_lm import TorchCausalLM

    start = time.perf_counter()
    built = build_module(Path(path), settings)
    context = settings.context_length or int(getattr(built.module.config, "max_position_embeddings", 2048))
    tokenizer = HFTokenizer.from_folder(Path(path))
    return TorchCausalLM(name, "gptq", Path(path), built.module, tokenizer, context, built.device,
                         time.perf_counter() - start, memory_report(built.module))
