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

import importlib.util
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
    parallel_problem,
)

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
CACHE_RAM_FRACTION = 0.5  # `dequantize_cache: auto` keeps dequantized weights when they take at most this share
NATIVE_GGUF_ARCHITECTURES = ("llama",)  # Mistral-style dense GQA files are written as "llama" by the converter
AUTO_MAX_SLOTS = 4  # `parallel: 0` gives at most this many slots (LM Studio's default); more only when asked
SLOT_KV_SHARE = 0.25  # ... and only as many as keep their KV caches within this share of the memory the weights leave
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
    quantize_at_load: str = ""  # "bitsandbytes 4-bit nf4": the Transformers loader quantizes the Linears as it loads
    slots: int = 1  # sequences decoded at once (continuous batching); each has its own KV cache of `context`
    notes: tuple[str, ...] = ()

    @property
    def kv_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def gpu_device(self) -> str:
        """The accelerator the plan uses, as the estimate keys it: "mps" or "cuda:N"."""
        return "mps" if self.device == "mps" else f"cuda:{self.gpu}"

    @property
    def quant(self) -> str:
        f = self.files
        if f.format == "gguf" and f.gguf is not None:
            return f.gguf.quant or "GGUF"
        if f.quant is not None:
            return f.quant.label
        if self.quantize_at_load:
            return self.quantize_at_load
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
        if self.slots > 1:
            text += f", {self.slots} requests at once (a KV cache each)"
        if self.weight_cache:
            text += f", GPTQ weights: {self.weight_cache}"
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
    quant_notes = _transformers_quant_notes(files, settings)
    device, gpu = _torch_device(settings.device, hw)
    # bf16 on a CPU with native bf16 decodes ~2x faster than fp32 (bench/cpu.py). Its higher RSS high-water on
    # SmolLM2's fp32 file (+0.5 GB at 1024 tokens) is the load, not the prefill: while weights are cast, the file's
    # pages stay mapped (transformers maps every shard until the load ends); the estimate counts them (`loading`).
    gpu_dtype = "float16" if device == "mps" else "bfloat16"  # bf16 on MPS needs a recent macOS; fp16 works on all
    dtype = _dtype(settings.dtype, on_gpu=gpu is not None, cpu_native_bf16=hw.cpu_bf16, gpu_dtype=gpu_dtype)
    if files.quant is not None and files.quant.method == "fp8" and gpu is None and dtype != "float32":
        # Transformers (5.x) dequantizes fp8 Linear weights on the CPU to the requested dtype but leaves the rest
        # float32: a bf16 load fails at the first matmul. fp32 runs.
        if settings.dtype != "auto":
            raise SettingsError(f"An fp8 checkpoint on the CPU loads in float32 only (Transformers leaves part of "
                                f"it in float32); set dtype to auto or float32, not {settings.dtype}.")  # fmt: skip
        dtype = "float32"
    context = settings.context_length or int(files.shape.context_max * settings.compress_pos_emb)
    on_gpu = gpu is not None and not settings.max_memory_gib
    slots = _slots(settings.parallel, files, context, DTYPE_BYTES[dtype], _free(hw, gpu))
    notes = quant_notes
    if files.weights is not None and files.weights.format == "pickle":
        notes += ("Only pickled .bin weights: loading them runs code stored in the file; use safetensors models "
                  "from sources you trust.",)  # fmt: skip
    return LoadPlan(
        "transformers", files, tuple(files.weight_paths), device, dtype, context,
        n_gpu_layers=files.shape.n_layers + 1 if on_gpu else 0, gpu=gpu or 0, weights_dtype=dtype,
        max_memory_gib=settings.max_memory_gib if gpu is not None else None, notes=notes, slots=slots,
        quantize_at_load=bnb_label(settings),
    )  # fmt: skip


BNB_QUANT_TYPES = ("nf4", "fp4")


def bnb_bits(settings: TransformersSettings) -> int:
    """4 or 8 when the settings ask bitsandbytes to quantize at load, else 0."""
    return 4 if settings.load_in_4bit else 8 if settings.load_in_8bit else 0


def bnb_label(settings: TransformersSettings) -> str:
    """"bitsandbytes 4-bit nf4" for a load that quantizes, "" otherwise."""
    bits = bnb_bits(settings)
    if bits == 8:
        return "bitsandbytes 8-bit"
    return f"bitsandbytes 4-bit {settings.quant_type}" if bits else ""


def _transformers_quant_notes(files: ModelFiles, settings: TransformersSettings) -> tuple[str, ...]:
    """Refuse what cannot load (a missing package, contradictory options); the notes the plan shows."""
    bits = bnb_bits(settings)
    if settings.load_in_4bit and settings.load_in_8bit:
        raise SettingsError("Pick one of load_in_4bit and load_in_8bit, not both.")
    if settings.quant_type not in BNB_QUANT_TYPES:
        raise SettingsError(f"quant_type must be nf4 or fp4, not {settings.quant_type!r}.")
    if settings.compute_dtype != "auto" and settings.compute_dtype not in DTYPE_BYTES:
        raise SettingsError(f"compute_dtype must be auto or one of {', '.join(DTYPE_BYTES)}.")
    quant = files.quant
    if quant is not None:
        if bits:
            raise SettingsError(f"This checkpoint is already quantized ({quant.label}): turn load_in_{bits}bit off.")
        if not quant.installed:
            raise UnsupportedModelError(quant.missing_message(), path=files.folder / "config.json")
        return (f"{quant.label} weights loaded by Transformers' own quantizer"
                + (f" ({quant.info.notes})." if quant.info.notes else "."),)  # fmt: skip
    if not bits:
        return ()
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UnsupportedModelError(f"load_in_{bits}bit needs the bitsandbytes package, which is not installed: "
                                    "installer_files/env/bin/python -m pip install bitsandbytes")  # fmt: skip
    kind = f"4-bit {settings.quant_type}" + (", double quant" if settings.use_double_quant else "") if bits == 4 \
        else "8-bit (LLM.int8)"  # fmt: skip
    return (f"The Linear layers are quantized to {kind} by bitsandbytes at load; the estimate counts them unquantized "
            "(an upper bound).",)  # fmt: skip


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
    free = hw.free("mps") if device == "mps" else _free(hw, gpu)
    integer, cache = _quantized_layouts(files, settings.dequantize_cache, dtype, hw, on_gpu=gpu is not None,
                                        gpu_kernels=triton_installed() and device != "mps", free=free)  # fmt: skip
    context = settings.context_length or files.shape.context_max
    n_gpu = files.shape.n_layers + 1 if gpu is not None else 0
    slots = _slots(settings.parallel, files, context, DTYPE_BYTES[dtype], free)
    return LoadPlan("gptq", files, tuple(files.weight_paths), device, dtype, context, n_gpu_layers=n_gpu,
                    gpu=gpu or 0, weights_dtype=dtype, integer_kernels=integer, weight_cache=cache,
                    slots=slots)  # fmt: skip


def _quantized_layouts(files: ModelFiles, setting: str, dtype: str, hw: Hardware, *, on_gpu: bool,
                       gpu_kernels: bool, free: int) -> tuple[bool, WeightCache]:  # fmt: skip
    """(integer kernels on the CPU?, how the other quantized weights run) for `dequantize_cache`:
    auto = integer kernels where they take a weight, the rest dequantized once when that takes at most half of the
    free memory, else per call; on = every weight dequantized once; off = every weight dequantized per call (the
    reference path, least memory). A GPU with its kernels (Triton) runs the stored weights whatever the setting.
    `free`: the free memory where the weights go (RAM, the GPU's, Apple's MPS budget)."""
    if setting not in DEQUANTIZE_CACHE:
        raise SettingsError(f"dequantize_cache must be auto, on or off, not {setting!r}.")
    if on_gpu and gpu_kernels:
        return False, "triton"
    if setting != "auto":
        return False, "dequantized cache" if setting == "on" else "per-call"
    integer = not on_gpu
    needed = sum(n_out * n_in for kind, n_out, n_in in _layer_linears(files)
                 if _layout(files, integer, "", n_out, n_in, kind) == "per-call") * DTYPE_BYTES[dtype]  # fmt: skip
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
    slots = _slots(settings.parallel, files, context, DTYPE_BYTES["float16"],
                      _free(hw, 0 if n_gpu else None))
    return LoadPlan("llama.cpp", files, (files.gguf_path,), _split_label(n_gpu, n_layers), "float16", context,
                    n_gpu_layers=n_gpu, gpu_side="last", batch=settings.n_batch, slots=slots, notes=notes)  # fmt: skip


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
                                        gpu_kernels=True, free=_free(hw, 0 if n_gpu >= n_layers else None))  # fmt: skip
    trained = files.shape.context_max
    context = min(settings.n_ctx, trained) if settings.n_ctx > 0 else trained
    free = _free(hw, 0 if n_gpu else None)
    slots = _slots(settings.parallel, files, context, DTYPE_BYTES[dtype], free)
    return LoadPlan("gguf", files, (files.gguf_path,), _split_label(n_gpu, n_layers, whole_gpu="cuda:0"), dtype,
                    context, n_gpu_layers=n_gpu, integer_kernels=integer, weight_cache=cache, slots=slots)  # fmt: skip


# --- shared rules ------------------------------------------------------------------------------------------------


def _require(files: ModelFiles, kind: str, loader: str) -> None:
    if files.format != kind:
        other = "a .gguf file" if kind == "gguf" else "a Transformers folder (config.json and weights)"
        raise UnsupportedModelError(f"The {loader} loader needs {other}; pick the loader detection suggests.",
                                    path=files.path)  # fmt: skip


def _torch_device(setting: str, hw: Hardware) -> tuple[str, int | None]:
    """"auto" -> cuda:0 when there is a CUDA GPU, else Apple's MPS when there is one, else cpu; "cuda" -> cuda:0;
    (label, GPU index or None)."""
    if setting == "auto":
        setting = "cuda:0" if hw.gpus else "mps" if hw.mps is not None else "cpu"
    if setting == "cuda":
        setting = "cuda:0"
    if setting == "cpu":
        return "cpu", None
    if setting == "mps":
        if hw.mps is None:
            raise SettingsError("Device mps was asked for but this machine has no Apple GPU; choose cpu or auto.")
        return "mps", 0
    index = setting.partition(":")[2]
    if not setting.startswith("cuda:") or not index.isdigit():
        raise SettingsError(f"Unknown device {setting!r}: use auto, cpu, cuda, cuda:N or mps")
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


def _slots(setting: int, files: ModelFiles, context: int, kv_bytes: int, free: int) -> int:
    """How many requests the model decodes at once: the setting when given; 0 = as many as keep their KV caches
    (of `context` tokens each) within `SLOT_KV_SHARE` of the memory the stored weights leave free (one when their
    size is unknown), at most `AUTO_MAX_SLOTS`, at least one."""
    problem = parallel_problem(setting)
    if problem is not None:
        raise SettingsError(f"The setting {problem}.")
    if setting:
        return setting
    weights = _stored_weight_bytes(files)
    if not weights:
        return 1
    per_slot = max(1, files.shape.kv_cache_bytes(context, kv_bytes))
    return max(1, min(AUTO_MAX_SLOTS, int((free - weights) * SLOT_KV_SHARE) // per_slot))


def _stored_weight_bytes(files: ModelFiles) -> int:
    """The weights' bytes as stored (a load that casts them may take more; `SLOT_KV_SHARE` leaves room for it)."""
    if files.gguf is not None:
        return files.gguf.size
    return sum(t.nbytes for t in files.tensors) or files.remote_bytes


def _free(hw: Hardware, gpu: int | None) -> int:
    """Free memory where the KV cache goes: GPU `gpu`, or RAM when None."""
    return hw.free("ram" if gpu is None else f"cuda:{gpu}")


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
