"""The GPTQ loader: carries out a GPTQ plan (AutoGPTQ / GPTQ-for-LLaMa "v1" or `gptq_v2`) -> a `LoadedModel`.

The quantize config, the weight files and the choice of kernels come from the model-files records and the plan
(`loaders.files`, `loaders.plan`); this module reads the tensors, checks every quantized layer's tensors against the
config, and assembles the model: the Transformers architecture is built with empty weights (no trust_remote_code,
no Transformers GPTQ integration), each quantized Linear is replaced by `kernels.gptq.GPTQLinear` prepared as the
plan says (Triton on CUDA; on the CPU the int4 / int8 kernels where a layer maps onto one, else a dequantized-weight
cache or dequantization per call), the rest (embeddings, norms, lm_head) is loaded in the compute dtype.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import safe_open
from torch import nn

from kernels import cpu_attention, gptq_torch
from kernels.gptq import GPTQLinear
from loaders.base import LoadedModel, MemoryReport
from loaders.errors import ModelFormatError
from loaders.files.quant_config import GPTQConfig
from loaders.plan import LoadPlan
from loaders.registry import loader_for_paths, plan_for_path
from loaders.settings import GPTQSettings
from loaders.units import format_bytes

log = logging.getLogger(__name__)

LOADER_NAME = "gptq"
QUANT_SUFFIXES = ("qweight", "qzeros", "scales", "g_idx", "bias")
T = TypeVar("T")


@dataclass
class GPTQModule:
    """A built GPTQ model before it is wrapped for the engine."""

    module: nn.Module
    config: GPTQConfig
    device: str  # human-readable, with the GPTQ backend
    modes: dict[str, int]  # GPTQLinear backend -> number of layers


# --- weights ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorRef:
    """One tensor of an open safetensors file, read (copied out of the map) only when `read` is called."""

    reader: Any
    name: str

    def read(self) -> torch.Tensor:
        return self.reader.get_tensor(self.name)


def open_tensors(files: Sequence[Path], stack: ExitStack) -> dict[str, TensorRef]:
    """Every tensor of `files`, by name, not yet read; the files stay open (mapped) until `stack` closes."""
    refs: dict[str, TensorRef] = {}
    for file in files:
        if not file.is_file():
            raise ModelFormatError("A weights file named by the index is missing; download again.", path=file)
        reader = stack.enter_context(safe_open(file, framework="pt"))
        refs.update({name: TensorRef(reader, name) for name in reader.keys()})  # noqa: SIM118
    return refs


def read_tensors(files: Sequence[Path]) -> dict[str, torch.Tensor]:
    """Every tensor of `files`, read."""
    with ExitStack() as stack:
        return {name: ref.read() for name, ref in open_tensors(files, stack).items()}


def split_quantized(tensors: Mapping[str, T]) -> tuple[dict[str, dict[str, T]], dict[str, T]]:
    """(layer prefix -> its GPTQ tensors, everything else), of tensors or of `TensorRef`s."""
    prefixes = {name.removesuffix(".qweight") for name in tensors if name.endswith(".qweight")}
    layers: dict[str, dict[str, T]] = {p: {} for p in prefixes}
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
    """Read the folder and assemble the model as planned for this machine (files read and planned first)."""
    return build_planned(plan_for_path(LOADER_NAME, Path(path), settings))


def build_planned(plan: LoadPlan) -> GPTQModule:
    """Assemble the model of `plan` on its device, every GPTQLinear prepared as the plan says."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    files, config = plan.files, plan.files.gptq
    assert config is not None  # the plan refuses a folder without a GPTQ config
    device, dtype = _torch_device(plan.device), getattr(torch, plan.dtype)
    hf_config = AutoConfig.from_pretrained(files.folder)
    if hasattr(hf_config, "quantization_config"):
        del hf_config.quantization_config  # we assemble the quantized layers ourselves
    with init_empty_weights(include_buffers=False):  # parameters on meta, buffers (rotary inv_freq) real
        module = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    prepare = {"dtype": dtype, "cache": plan.weight_cache == "dequantized cache", "integer": plan.integer_kernels}
    with ExitStack() as stack:  # each tensor is read when its layer is built: one layer's copies at a time
        layers, rest = split_quantized(open_tensors(plan.opens, stack))
        for prefix in sorted(layers):
            parts = {suffix: ref.read() for suffix, ref in layers.pop(prefix).items()}
            linear = _replace_linear(module, prefix, parts, config, files.folder)
            if device.type == "cpu":  # prepared at once: the stored tensors go before the next layer is read
                linear.prepare(**prepare)
        _load_rest(module, rest, dtype, files.folder)
    module.to(device).eval()
    if device.type == "cpu":
        cpu_attention.use_on(module)
    modes = _prepare_layers(module, **prepare)
    log.info("GPTQ model on %s: %s", device, _describe(modes, module))
    return GPTQModule(module=module, config=config, device=plan.device, modes=modes)


def _replace_linear(module: nn.Module, prefix: str, parts: dict[str, torch.Tensor], config: GPTQConfig,
                    path: Path) -> GPTQLinear:
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
    replacement = GPTQLinear(tensors, bias)
    module.set_submodule(prefix, replacement)
    return replacement


def _load_rest(module: nn.Module, rest: dict[str, TensorRef], dtype: torch.dtype, path: Path) -> None:
    """Embeddings, norms, lm_head...: assigned as they are, in the compute dtype; tied weights re-tied. Each tensor
    is read and cast on its own, so the load never holds both copies of all."""
    state = {}
    for name, ref in rest.items():
        value = ref.read()
        state[name] = value.to(dtype) if value.is_floating_point() else value
    result = module.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys:
        raise ModelFormatError(f"Tensors not in this architecture: {', '.join(result.unexpected_keys[:5])}.",
                               path=path)
    module.tie_weights()
    missing = [name for name, p in module.named_parameters() if p.device.type == "meta"]
    if missing:
        raise ModelFormatError(f"The weights lack {', '.join(missing[:5])}; download the model again.", path=path)


def _prepare_layers(module: nn.Module, *, dtype: torch.dtype, cache: bool, integer: bool) -> dict[str, int]:
    """Prepare the layers not prepared yet (on a GPU, once there); count every layer's mode."""
    modes: dict[str, int] = {}
    for layer in (m for m in module.modules() if isinstance(m, GPTQLinear)):
        mode = layer.mode if layer.mode != "unprepared" else layer.prepare(dtype=dtype, cache=cache, integer=integer)
        modes[mode] = modes.get(mode, 0) + 1
    return modes


def _torch_device(label: str) -> torch.device:
    device = torch.device(label.split()[0])
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


MODE_LABELS = {"triton": "triton", "int4": "int4", "int8": "int8", "cache": "dequantized cache",
               "per-call": "per-call"}  # fmt: skip


def weight_summary(modes: dict[str, int]) -> str:
    """What the quantized layers run on, as `LoadPlan.weight_summary` says it ("int4", "dequantized cache, int8")."""
    return ", ".join(sorted({MODE_LABELS[mode] for mode in modes}))


def _describe(modes: dict[str, int], module: nn.Module) -> str:
    held = format_bytes(sum(t.nbytes for m in module.modules() if isinstance(m, GPTQLinear)
                            for t in m.prepared_tensors()))  # fmt: skip
    return ", ".join(f"{count} layers {MODE_LABELS[mode]}" for mode, count in sorted(modes.items())) + \
        f" ({held} prepared)"  # fmt: skip


def memory_report(module: nn.Module) -> MemoryReport:
    """Bytes held by the module's tensors and the GPTQ layers' prepared copies, per device."""
    from loaders.torch_lm import memory_of

    prepared = [t for m in module.modules() if isinstance(m, GPTQLinear) for t in m.prepared_tensors()]
    return memory_of([*module.parameters(), *module.buffers(), *prepared])


load = loader_for_paths(LOADER_NAME)


def load_plan(plan: LoadPlan, settings: GPTQSettings, *, name: str) -> LoadedModel:
    """Carry out a GPTQ plan."""
    from loaders.hf_tokenizer import HFTokenizer
    from loaders.torch_lm import TorchCausalLM

    start = time.perf_counter()
    built = build_planned(plan)
    tokenizer = HFTokenizer.from_folder(plan.files.folder)
    model = TorchCausalLM(name, LOADER_NAME, plan.files.path, built.module, tokenizer, plan.context, built.device,
                          time.perf_counter() - start, memory_report(built.module), plan=plan)  # fmt: skip
    model.weight_cache = weight_summary(built.modes)
    return model
