"""Load plans: what each loader will do with a model's files on this machine, decided before anything is loaded.

A plan is a pure function of (`ModelFiles`, the loader's settings, `Hardware`): the device, the compute dtype (bf16
on a CPU that computes it natively, `Hardware.cpu_bf16`), the layers on the GPU, the context, how quantized weights
are held (integer kernels, a dequantized cache or per-call dequantization: `weight_layouts`, by the rules of
`kernels/cpu_layout.py`), and the exact files that will be opened. Each loader's `load()`
executes its plan, the estimator (`webui/estimate`) prices the same plan, and the Model tab shows `describe()`
before the load, so none of them can assume what another does not do. Planning imports neither torch nor
llama_cpp, so it also serves models on the Hub and machines without a backend installed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kernels.availability import triton_installed
from kernels.cpu_layout import Layout, gguf_integer_layout, gptq_integer_layout
from loaders.errors import SettingsError, UnsupportedModelError
from loaders.files import ModelFiles
from loaders.hardware import Hardware
from loaders.settings import (
    GPTQSettings,
    LlamaCppSettings,
    LoaderSettings,
    NativeGGUFSettings,
    TransformersSettings,
)

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
CACHE_RAM_FRACTION = 0.5  # `dequantize_cache: auto` keeps dequantized weights when they take at most this share
NATIVE_GGUF_ARCHITECTURES = ("llama",)  # Mistral-style dense GQA files are written as "llama" by the converter
WeightCache = Literal["", "dequantized cache", "per-call", "triton"]
DEQUANTIZE_CACHE = ("auto", "on", "off")


@dataclass(frozen=True)
class LoadPlan:
    """What one load will do. `dtype` is the compute and KV-cache dtype; `n_gpu_layers` counts decoder layers on
    GPU `gpu` (n_layers + 1 = the output head too); `gpu_side` says which layers llama.cpp (last) or accelerate
    (first) puts there."""

    loader: str
    files: ModelFiles = field(repr=False)
    opens: tuple[Path, ...]
    device: str  # "cpu", "cuda:0", "cuda:0 + cpu (20/30 layers on GPU)": the loaded model reports the same
    dtype: str
    context: int
    n_gpu_layers: int = 0
    gpu: int = 0
    gpu_side: Literal["first", "last"] = "first"
    weights_dtype: str | None = None  # floating-point weights are cast to this at load; None = kept as stored
    integer_kernels: bool = False  # quantized weights on the CPU go to an int4 / int8 kernel where one takes them
    weight_cache: WeightCache = ""  # how the other quantized weights run (GPTQ, native GGUF)
    max_memory_gib: dict[str, float] | None = None  # accelerate-style budget: the estimator counts the layers
    batch: int = 512
    slots: int = 1  # sequences decoded at once (continuous batching); each has its own KV cache of `context`
    notes: tuple[str, ...] = ()

    @property
    def kv_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def quant(self) -> str:
        f = self.files
        if f.format == "gguf" and f.gguf is not None:
            return f.gguf.quant or "GGUF"
        return f.gptq.label if f.gptq is not None else (self.weights_dtype or "as stored")

    def layout_of(self, n_out: int, n_in: int, qtype: str = "") -> Layout:
        """How a quantized Linear (out x in; `qtype` = its GGUF block type) on the CPU is held and multiplied."""
        return _layout(self.files, self.integer_kernels, self.weight_cache, n_out, n_in, qtype)

    def weight_layouts(self) -> dict[str, tuple[Layout, ...]]:
        """Stored kind ("GPTQ 4-bit", "Q4_1", "Q8_0") -> the layouts its Linear weights take; {} for float models."""
        layouts: dict[str, set[Layout]] = {}
        for kind, n_out, n_in in quantized_linears(self.files):
            layouts.setdefault(kind, set()).add(self.layout_of(n_out, n_in, kind))
        return {kind: tuple(sorted(found)) for kind, found in layouts.items()}

    def weight_summary(self) -> str:
        """"int4" / "dequantized cache, int4": the layouts in use, as the loaded model reports them."""
        return ", ".join(sorted({layout for found in self.weight_layouts().values() for layout in found}))

    def describe(self) -> str:
        """"Will load SmolLM2.Q8_0.gguf (Q8_0) on cpu in float32, context 4096." for the Model tab."""
        names = ", ".join(p.name for p in self.opens[:2]) + (f" and {len(self.opens) - 2} more" if len(self.opens) > 2
                                                              else "")  # fmt: skip
        computes = f"KV cache in {self.dtype}" if self.loader == "llama.cpp" else f"in {self.dtype}"
        text = f"Will load {names} ({self.quant}) with {self.loader} on {self.device}, {computes}, " \
               f"context {self.context} tokens"  # fmt: skip
        if self.loader in ("gptq", "gguf") and (layouts := self.weight_layouts()):
            where = "weights on the CPU" if self.n_gpu_layers and self.loader == "gguf" else "weights"
            text += f"; {where}: " + ", ".join(f"{kind} {' / '.join(LAYOUT_WORDS[x] for x in found)}"
                                               for kind, found in layouts.items())  # fmt: skip
        return text + "." + "".join(f" {note}" for note in self.notes)


LAYOUT_WORDS: dict[str, str] = {"int4": "in the int4 kernel", "int8": "in the int8 kernel",
                                "dequantized cache": "dequantized once", "per-call": "dequantized per call",
                                "triton": "in Triton kernels"}  # fmt: skip


def _layout(files: ModelFiles, integer: bool, fallback: WeightCache, n_out: int, n_in: int, qtype: str) -> Layout:
    if integer:
        gptq = files.gptq
        found = (gptq_integer_layout(gptq.bits, gptq.group_size, n_out, n_in) if gptq is not None
                 else gguf_integer_layout(qtype, n_out, n_in))  # fmt: skip
        if found is not None:
            return found
    return fallback or "per-call"


def quantized_linears(files: ModelFiles) -> list[tuple[str, int, int]]:
    """(stored kind, out, in) of the quantized Linear weights: for GPTQ one decoder layer's (every layer is alike),
    for a GGUF file every 2-D tensor but the embedding (which is also the head when there is no `output.weight`).
    Float GGUF types count too: the native loader holds them the same way."""
    if files.gptq is not None:
        return [(f"GPTQ {files.gptq.bits}-bit", n_out, n_in) for _, n_in, n_out in files.shape.linears()]
    if files.format != "gguf" or files.header is None:
        return []
    tensors = files.header.tensors
    has_output = any(t.name == "output.weight" for t in tensors)
    return [(t.qtype.name, t.dims[1], t.dims[0]) for t in tensors if len(t.dims) == 2
            and (t.name != "token_embd.weight" or not has_output)]  # fmt: skip


def plan_load(loader: str, files: ModelFiles, settings: LoaderSettings, hw: Hardware) -> LoadPlan:
    """The plan of `loader` for `files`; raises `SettingsError` / `UnsupportedModelError` for what cannot work."""
    try:
        planner = PLANNERS[loader]
    except KeyError:
        raise SettingsError(f"The {loader} loader does not load model files: pick one of {', '.join(PLANNERS)}.") \
            from None  # fmt: skip
    return planner(files, settings, hw)


# --- Transformers ------------------------------------------------------------------------------------------------


def _plan_transformers(files: ModelFiles, settings: TransformersSettings, hw: Hardware) -> LoadPlan:
    _require(files, "hf", "transformers")
    if files.gptq is not None:
        raise UnsupportedModelError("This folder holds GPTQ weights: load it with the gptq loader.", path=files.path)
    device, gpu = _torch_device(settings.device, hw)
    # bf16 on a CPU with native bf16 decodes ~2x faster than fp32 (bench/cpu.py). Its higher RSS high-water on
    # SmolLM2's fp32 file (+0.5 GB at 1024 tokens) is the load, not the prefill: while weights are cast, the file's
    # pages stay mapped (transformers maps every shard until the load ends); the estimate counts them (`loading`).
    dtype = _dtype(settings.dtype, on_gpu=gpu is not None, cpu_native_bf16=hw.cpu_bf16, gpu_dtype="bfloat16")
    context = settings.context_length or int(files.shape.context_max * settings.compress_pos_emb)
    on_gpu = gpu is not None and not settings.max_memory_gib
    notes = ()
    if files.weights is not None and files.weights.format == "pickle":
        notes = ("Only pickled .bin weights: loading them runs code stored in the file; use safetensors models "
                 "from sources you trust.",)  # fmt: skip
    return LoadPlan(
        "transformers", files, tuple(files.weight_paths), device, dtype, context,
        n_gpu_layers=files.shape.n_layers + 1 if on_gpu else 0, gpu=gpu or 0, weights_dtype=dtype,
        max_memory_gib=settings.max_memory_gib if gpu is not None else None, notes=notes,
    )  # fmt: skip


# --- GPTQ --------------------------------------------------------------------------------------------------------


def _plan_gptq(files: ModelFiles, settings: GPTQSettings, hw: Hardware) -> LoadPlan:
    _require(files, "hf", "gptq")
    if files.gptq is None:
        raise UnsupportedModelError("This folder has no GPTQ config (quantize_config.json or quantization_config "
                                    "in config.json): load it with the transformers loader.", path=files.path)
    if files.weights is not None and files.weights.format != "safetensors":
        raise UnsupportedModelError("Only .safetensors GPTQ weights are supported; this folder has .bin/.pt files.",
                                    path=files.path)  # fmt: skip
    device, gpu = _torch_device(settings.device, hw)
    dtype = _dtype(settings.dtype, on_gpu=gpu is not None, cpu_native_bf16=hw.cpu_bf16, gpu_dtype="float16")
    integer, cache = _quantized_layouts(files, settings.dequantize_cache, dtype, hw, on_gpu=gpu is not None,
                                        gpu_kernels=triton_installed())  # fmt: skip
    context = settings.context_length or files.shape.context_max
    n_gpu = files.shape.n_layers + 1 if gpu is not None else 0
    return LoadPlan("gptq", files, tuple(files.weight_paths), device, dtype, context, n_gpu_layers=n_gpu,
                    gpu=gpu or 0, weights_dtype=dtype, integer_kernels=integer, weight_cache=cache)  # fmt: skip


def _quantized_layouts(files: ModelFiles, setting: str, dtype: str, hw: Hardware, *, on_gpu: bool,
                       gpu_kernels: bool) -> tuple[bool, WeightCache]:  # fmt: skip
    """(integer kernels on the CPU?, how the other quantized weights run) for `dequantize_cache`:
    auto = integer kernels where they take a weight, the rest dequantized once when that takes at most half of the
    free memory, else per call; on = every weight dequantized once; off = every weight dequantized per call (the
    reference path, least memory). A GPU with its kernels (Triton) runs the stored weights whatever the setting."""
    if setting not in DEQUANTIZE_CACHE:
        raise SettingsError(f"dequantize_cache must be auto, on or off, not {setting!r}.")
    if on_gpu and gpu_kernels:
        return False, "triton"
    if setting != "auto":
        return False, "dequantized cache" if setting == "on" else "per-call"
    integer = not on_gpu
    needed = sum(n_out * n_in for kind, n_out, n_in in _layer_linears(files)
                 if _layout(files, integer, "", n_out, n_in, kind) == "per-call") * DTYPE_BYTES[dtype]  # fmt: skip
    free = hw.gpus[0].free if on_gpu and hw.gpus else hw.ram_available
    return integer, "dequantized cache" if needed <= CACHE_RAM_FRACTION * free else "per-call"


def _layer_linears(files: ModelFiles) -> list[tuple[str, int, int]]:
    """`quantized_linears` counted over the whole model: GPTQ's per-layer list once per layer."""
    linears = quantized_linears(files)
    return linears * files.shape.n_layers if files.gptq is not None else linears


# --- GGUF: llama.cpp and the native loader -----------------------------------------------------------------------


def _plan_llama_cpp(files: ModelFiles, settings: LlamaCppSettings, hw: Hardware) -> LoadPlan:
    _require(files, "gguf", "llama.cpp")
    n_layers = files.shape.n_layers
    wanted = n_layers + 1 if settings.n_gpu_layers < 0 else settings.n_gpu_layers
    n_gpu = min(wanted, n_layers + 1) if hw.gpus else 0
    notes = ("No GPU here: n_gpu_layers is ignored.",) if wanted and not hw.gpus else ()
    context = settings.n_ctx or files.shape.context_max
    return LoadPlan("llama.cpp", files, (files.gguf_path,), _split_label(n_gpu, n_layers), "float16", context,
                    n_gpu_layers=n_gpu, gpu_side="last", batch=settings.n_batch, notes=notes)  # fmt: skip


def _plan_native_gguf(files: ModelFiles, settings: NativeGGUFSettings, hw: Hardware) -> LoadPlan:
    _require(files, "gguf", "gguf")
    arch = files.shape.arch
    if arch not in NATIVE_GGUF_ARCHITECTURES:
        raise UnsupportedModelError(f"The native GGUF loader runs Llama-family models; this file's architecture is "
                                    f"{arch!r}. Load it with the llama.cpp loader instead.", path=files.gguf_path)
    if files.shape.rope_scaling not in ("none", "linear"):
        raise UnsupportedModelError(f"RoPE scaling {files.shape.rope_scaling!r} is not supported by the native GGUF "
                                    "loader. Load it with the llama.cpp loader instead.", path=files.gguf_path)
    n_layers = files.shape.n_layers
    n_gpu = min(max(settings.n_gpu_layers, 0), n_layers) if hw.gpus else 0
    dtype = _dtype(settings.dtype, on_gpu=n_gpu > 0, cpu_native_bf16=hw.cpu_bf16, gpu_dtype="float16")
    # Layers on the GPU keep their blocks (Triton GEMV); the plan's layouts are those of the layers on the CPU.
    integer, cache = _quantized_layouts(files, settings.dequantize_cache, dtype, hw, on_gpu=n_gpu >= n_layers,
                                        gpu_kernels=True)  # fmt: skip
    trained = files.shape.context_max
    context = min(settings.n_ctx, trained) if settings.n_ctx > 0 else trained
    return LoadPlan("gguf", files, (files.gguf_path,), _split_label(n_gpu, n_layers, whole_gpu="cuda:0"), dtype,
                    context, n_gpu_layers=n_gpu, integer_kernels=integer, weight_cache=cache)  # fmt: skip


# --- shared rules ------------------------------------------------------------------------------------------------


def _require(files: ModelFiles, kind: str, loader: str) -> None:
    if files.format != kind:
        other = "a .gguf file" if kind == "gguf" else "a Transformers folder (config.json and weights)"
        raise UnsupportedModelError(f"The {loader} loader needs {other}; pick the loader detection suggests.",
                                    path=files.path)  # fmt: skip


def _torch_device(setting: str, hw: Hardware) -> tuple[str, int | None]:
    """"auto" -> cuda:0 when there is a GPU, else cpu; "cuda" -> cuda:0; (label, GPU index or None)."""
    if setting == "auto":
        setting = "cuda:0" if hw.gpus else "cpu"
    if setting == "cuda":
        setting = "cuda:0"
    if setting == "cpu":
        return "cpu", None
    index = setting.partition(":")[2]
    if not setting.startswith("cuda:") or not index.isdigit():
        raise SettingsError(f"Unknown device {setting!r}: use auto, cpu, cuda or cuda:N")
    if not any(gpu.index == int(index) for gpu in hw.gpus):
        raise SettingsError(f"Device {setting} was asked for but this machine has no such GPU; choose cpu or auto.")
    return setting, int(index)


def _dtype(setting: str, *, on_gpu: bool, cpu_native_bf16: bool, gpu_dtype: str) -> str:
    """"auto": `gpu_dtype` on a GPU; on the CPU bf16 only where the CPU computes it natively, else float32."""
    if setting != "auto":
        if setting not in DTYPE_BYTES:
            raise SettingsError(f"Unknown dtype {setting!r}: use auto, {', '.join(DTYPE_BYTES)}")
        return setting
    if on_gpu:
        return gpu_dtype
    return "bfloat16" if cpu_native_bf16 else "float32"


def _split_label(n_gpu: int, n_layers: int, *, whole_gpu: str | None = None) -> str:
    if n_gpu <= 0:
        return "cpu"
    if n_gpu >= n_layers:
        return whole_gpu or f"cuda:0 (all {n_layers} layers on GPU)"
    return f"cuda:0 + cpu ({n_gpu}/{n_layers} layers on GPU)"


PLANNERS: dict[str, Callable[[ModelFiles, Any, Hardware], LoadPlan]] = {
    "transformers": _plan_transformers,
    "gptq": _plan_gptq,
    "llama.cpp": _plan_llama_cpp,
    "gguf": _plan_native_gguf,
}
