"""The memory arithmetic: bytes per device ("ram", "cuda:N") and per part (weights, KV cache, buffers, overhead)
for a model's shape and weights under a loader's placement, the verdict against a `Hardware`, and fitting (the most
GPU layers, the longest context that fit).

An estimate is the memory of a *full* context: the KV cache and the attention buffers at `ctx` tokens. `at_load`
is what is taken as soon as the model is loaded (weights, fixed buffers, and for llama.cpp its preallocated KV cache
and compute buffers); the rest grows with use, up to the full context. `loading` is what the load itself holds on
top of `at_load` until it ends (the stored weights' file pages while they are converted): part of the process's
resident high-water (`peak`), not of what must fit, since the kernel can drop clean file pages under pressure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from loaders.errors import InsufficientMemoryError
from loaders.files import ModelShape
from loaders.hardware import Hardware
from loaders.units import format_bytes
from webui.estimate.weights import WeightsInfo

MIB = 1024**2
GIB = 1024**3

# Fixed costs, measured on the SmolLM2 fixtures (tests/test_estimate.py re-measures them): the resident memory of
# the Python process with the backend imported and initialised, before any weights. The Transformers-model loaders
# (transformers, gptq) import Transformers' model and generation stack (with torch._dynamo and sympy): ~485 MB
# after a load on torch 2.9 / transformers 5 beside the weights; the native GGUF loader imports less of it.
RUNTIME_RAM = {"llama.cpp": 40 * MIB, "transformers": 460 * MIB, "gptq": 460 * MIB, "gguf": 400 * MIB}
# The native GGUF loader builds its tokenizer through transformers' GGUF converter, which keeps ~1.7 KB of Python
# objects per vocabulary entry (measured: +84 MB for SmolLM2's 49152 tokens).
TOKENIZER_BYTES_PER_TOKEN = {"gguf": 1700}
CUDA_CONTEXT = 500 * MIB  # per GPU used: the CUDA context, cuBLAS workspace, kernels
CUDA_HOST_RAM = 300 * MIB  # host side of the CUDA runtime when any GPU is used
TIGHT_MARGIN = 0.10  # "tight" when less than 10% of the free memory would be left


@dataclass(frozen=True)
class Fit:
    """The verdict for one estimate on one machine: per device, bytes needed and free."""

    verdict: str  # "fits" | "tight" | "won't fit"
    devices: dict[str, tuple[int, int]]  # device -> (needed, free)

    def __str__(self) -> str:
        return self.verdict


@dataclass(frozen=True)
class Estimate:
    """Bytes per device ("ram", "cuda:N") and per part ("weights", "kv_cache", "buffers", "overhead")."""

    loader: str
    ctx: int
    n_gpu_layers: int
    n_layers: int
    parts: dict[str, dict[str, int]]
    grows: dict[str, int] = field(default_factory=dict)  # per device: bytes among `parts` that only the context fills
    file_bytes: int = 0
    source: str = ""
    notes: tuple[str, ...] = ()
    slots: int = 1  # requests decoded at once: `parts` holds a KV cache of `ctx` tokens for each
    loading: dict[str, int] = field(default_factory=dict)  # per device: held only while loading, above at_load

    def device_total(self, device: str) -> int:
        return sum(self.parts.get(device, {}).values())

    def device_peak(self, device: str) -> int:
        """The resident high-water on `device`: the full context, or the load's transient if that is higher."""
        return max(self.device_total(device), self.device_at_load(device) + self.loading.get(device, 0))

    def device_at_load(self, device: str) -> int:
        """What `device` holds right after the load, before any context is used."""
        return self.device_total(device) - self.grows.get(device, 0)

    @property
    def ram_at_load(self) -> int:
        return self.device_at_load("ram")

    @property
    def vram_at_load(self) -> int:
        return sum(self.device_at_load(d) for d in self.parts if d != "ram")

    @property
    def ram(self) -> int:
        return self.device_total("ram")

    @property
    def peak_ram(self) -> int:
        return self.device_peak("ram")

    @property
    def vram(self) -> int:
        return sum(self.device_total(d) for d in self.parts if d != "ram")

    @property
    def total(self) -> int:
        return sum(self.device_total(d) for d in self.parts)

    def fit(self, hw: Hardware) -> Fit:
        devices = {d: (self.device_total(d), hw.free(d)) for d in self.parts}
        if any(need > free for need, free in devices.values()):
            verdict = "won't fit"
        elif any(need > free * (1 - TIGHT_MARGIN) for need, free in devices.values()):
            verdict = "tight"
        else:
            verdict = "fits"
        return Fit(verdict, devices)

    def to_dict(self, hw: Hardware | None = None) -> dict[str, Any]:
        out = asdict(self)
        out["totals"] = {d: self.device_total(d) for d in self.parts} | {"all": self.total}
        out["at_load"] = {d: self.device_at_load(d) for d in self.parts}
        out["peak"] = {d: self.device_peak(d) for d in self.parts}
        if hw is not None:
            fit = self.fit(hw)
            out["fit"] = {"verdict": fit.verdict, "devices": {d: {"needed": n, "free": f} for d, (n, f) in
                                                                fit.devices.items()}}  # fmt: skip
        return out


def estimate(
    shape: ModelShape,
    weights: WeightsInfo,
    *,
    loader: str = "llama.cpp",
    ctx: int | None = None,
    n_gpu_layers: int = 0,
    max_memory: dict[str, float] | None = None,
    dtype_bytes: int | None = None,
    kv_bytes: float | None = None,
    batch: int = 512,
    gpu: int = 0,
    act_bytes: int | None = None,
    slots: int = 1,
    cpu_weights: WeightsInfo | None = None,
    loading: int = 0,
    notes: tuple[str, ...] = (),
    gpu_device: str | None = None,
) -> Estimate:
    """The memory of `loader` holding this model with a full context of `ctx` tokens (default: the model's max).

    `n_gpu_layers`: layers on GPU `gpu` (llama.cpp: the last ones, output too when > n_layers; Transformers,
    GPTQ and the native GGUF loader: the first ones and the embedding, as accelerate fills the GPU first);
    `max_memory` (GiB per device, accelerate-style: {"0": 20, "cpu": 60}) picks that count instead.
    `dtype_bytes`: bytes per float weight after load (None: as stored); `kv_bytes`: per KV element (llama.cpp
    f16 = 2; torch loaders: the compute dtype). `cpu_weights`: the weights as held on the CPU when the loader
    changes their layout there (integer kernels, dequantized caches: `local.held_on_cpu`); default `weights`.
    `loading`: RAM held only while loading (`Estimate.loading`). `slots`: requests decoded at once, each with a KV
    cache of `ctx` tokens.
    """
    ctx = ctx or shape.context_max
    cast = dtype_bytes if loader in ("transformers", "gptq") else None
    loaded = weights.with_float_itemsize(cast)
    held = cpu_weights.with_float_itemsize(cast) if cpu_weights is not None else loaded
    act_bytes = act_bytes or dtype_bytes or (2 if loader != "transformers" or n_gpu_layers else 4)
    kv = kv_bytes or (2 if loader == "llama.cpp" else act_bytes)
    if max_memory is not None:
        n_gpu_layers = _layers_within(shape, loaded, loader, ctx, kv, max_memory.get(str(gpu), 0) * GIB, slots)
    n_gpu_layers = max(0, min(n_gpu_layers, shape.n_layers + 1))
    gpu_dev = gpu_device or f"cuda:{gpu}"  # "mps" for Apple's GPU
    on_gpu = _gpu_layers(loader, shape.n_layers, n_gpu_layers)
    parts: dict[str, dict[str, int]] = {"ram": {"weights": 0, "kv_cache": 0, "buffers": 0, "overhead": 0}}
    if on_gpu or n_gpu_layers > shape.n_layers:
        parts[gpu_dev] = {"weights": 0, "kv_cache": 0, "buffers": 0, "overhead": CUDA_CONTEXT}
        parts["ram"]["overhead"] += CUDA_HOST_RAM
    per_layer_kv = shape.kv_cache_bytes(ctx * slots, kv) // shape.n_layers  # every slot's cache
    on_cpu, on_device = held.layer_bytes(shape.n_layers), loaded.layer_bytes(shape.n_layers)
    for i in range(shape.n_layers):
        device = gpu_dev if i in on_gpu else "ram"
        parts[device]["weights"] += on_device[i] if i in on_gpu else on_cpu[i]
        parts[device]["kv_cache"] += per_layer_kv
    head_dev = gpu_dev if n_gpu_layers > shape.n_layers else "ram"
    embed_dev = gpu_dev if loader != "llama.cpp" and n_gpu_layers else "ram"  # llama.cpp keeps token_embd on CPU
    parts[embed_dev]["weights"] += (loaded if embed_dev != "ram" else held).embed_bytes()
    parts[head_dev]["weights"] += (loaded if head_dev != "ram" else held).output_bytes()
    grows: dict[str, int] = {}
    for device in parts:
        fixed, growing = _buffers(shape, loader, ctx, batch, act_bytes, on_cpu=device == "ram")
        parts[device]["buffers"] = fixed + growing
        # llama.cpp allocates its KV cache when the context is created (and clears it: resident at once), and so do
        # the torch loaders on a GPU (their slot cache is zeroed at load); on the CPU theirs is touched as it fills.
        kv_grows = loader != "llama.cpp" and device == "ram"
        grows[device] = growing + (parts[device]["kv_cache"] if kv_grows else 0)
    parts["ram"]["overhead"] += RUNTIME_RAM.get(loader, RUNTIME_RAM["transformers"])
    parts["ram"]["overhead"] += TOKENIZER_BYTES_PER_TOKEN.get(loader, 0) * shape.vocab
    return Estimate(loader, ctx, n_gpu_layers, shape.n_layers, parts, grows, weights.file_bytes, weights.source, notes,
                    slots, {"ram": loading} if loading else {})  # fmt: skip


def _gpu_layers(loader: str, n_layers: int, n_gpu_layers: int) -> set[int]:
    count = min(n_gpu_layers, n_layers)
    if loader == "llama.cpp":  # llama.cpp offloads the last layers (i >= n_layer - n_gpu_layers)
        return set(range(n_layers - count, n_layers))
    return set(range(count))


def _buffers(shape: ModelShape, loader: str, ctx: int, batch: int, act_bytes: int, *,
             on_cpu: bool = False) -> tuple[int, int]:  # fmt: skip
    """Compute/activation buffers at a full context: (touched at load, touched only as the context fills).

    llama.cpp evaluates the prompt `batch` tokens at a time: the attention scores of the last batch against the
    whole context (KQ and its softmax, f32; its allocator reserves them at load, the pages are touched as the
    context fills) plus the feed-forward activations. Torch loaders run the whole prompt at once: hidden states and
    the MLP of every prompt token, and on the CPU, where SDPA with Transformers' mask takes its math path, one
    layer's ctx × ctx scores (half the heads at once, as measured on SmolLM2). On CUDA the fused kernels keep
    scores per block. Measured on SmolLM2 (tests/test_estimate.py).
    """
    if loader == "llama.cpp":
        kq = 2 * ctx * batch * shape.n_heads * 4
        ffn = batch * (3 * shape.ffn + 4 * shape.hidden) * 4
        return ffn + shape.vocab * 4, kq
    tokens = ctx
    mlp = tokens * (3 * shape.ffn + 6 * shape.hidden) * act_bytes
    # Half of one layer's heads' scores at a time fits the measured peaks (SmolLM2, 1024 and 2048 tokens, every
    # torch loader); the full ctx x ctx x heads overestimated by ~100 MB at 2048.
    scores = shape.n_heads * tokens * tokens * act_bytes // 2 if on_cpu else 0
    return shape.vocab * 4 * 2, mlp + scores


def _layers_within(
    shape: ModelShape, weights: WeightsInfo, loader: str, ctx: int, kv: float, budget: float, slots: int = 1
) -> int:
    """How many layers an accelerate-style GPU budget (bytes) holds, counting weights and their KV caches."""
    used, count = CUDA_CONTEXT + sum(_buffers(shape, loader, ctx, 512, 2)), 0
    per_layer_kv = shape.kv_cache_bytes(ctx * slots, kv) // shape.n_layers
    for size in weights.layer_bytes(shape.n_layers):
        used += size + per_layer_kv
        if used > budget:
            break
        count += 1
    return count


# --- fitting -----------------------------------------------------------------------------------------------------


def check_fits(est: Estimate, hw: Hardware) -> None:
    """Raise `InsufficientMemoryError` (with the numbers and what to change) when `est` does not fit `hw`."""
    fit = est.fit(hw)
    if fit.verdict != "won't fit":
        return
    device, (needed, free) = max(fit.devices.items(), key=lambda item: item[1][0] - item[1][1])
    where = "RAM" if device == "ram" else f"GPU {device} memory"
    kv = sum(p.get("kv_cache", 0) for p in est.parts.values())
    advice = [f"a shorter context (the KV cache at {est.ctx} tokens is {format_bytes(kv)})"]
    if est.slots > 1:
        advice.append(f"fewer requests at once (parallel, now {est.slots}: one KV cache each)")
    if device != "ram":
        advice.append(f"fewer GPU layers (now {est.n_gpu_layers})")
    elif hw.gpus and est.loader in ("llama.cpp", "gguf"):
        advice.append("more GPU layers")
    advice.append("a smaller quantization")
    raise InsufficientMemoryError(
        f"This load needs about {format_bytes(needed)} of {where} but {format_bytes(free)} is free "
        f"(weights {format_bytes(est.parts[device]['weights'])}, "
        f"KV cache {format_bytes(est.parts[device]['kv_cache'])}). "
        f"Try {', '.join(advice)}; or load anyway if you know better.",
        needed=needed,
        available=free,
    )


def fit_gpu_layers(
    shape: ModelShape, weights: WeightsInfo, hw: Hardware, *, ctx: int, loader: str = "llama.cpp", gpu: int = 0,
    **options: Any,
) -> int:  # fmt: skip
    """The largest `n_gpu_layers` (0 ... n_layers + 1) whose estimate fits GPU `gpu`'s free memory (and RAM)."""
    def fits(n: int) -> bool:
        est = estimate(shape, weights, loader=loader, ctx=ctx, n_gpu_layers=n, gpu=gpu, **options)
        return est.fit(hw).verdict != "won't fit"

    lo, hi = 0, shape.n_layers + 1  # bytes grow with n on the GPU: binary search for the last n that fits
    if not fits(lo):
        return 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def fit_context(
    shape: ModelShape, weights: WeightsInfo, hw: Hardware, *, n_gpu_layers: int, loader: str = "llama.cpp",
    step: int = 256, **options: Any,
) -> int:  # fmt: skip
    """The largest context (a multiple of `step`, at most the model's max) that fits; 0 when even `step` does not."""
    def fits(ctx: int) -> bool:
        est = estimate(shape, weights, loader=loader, ctx=ctx, n_gpu_layers=n_gpu_layers, **options)
        return est.fit(hw).verdict != "won't fit"

    lo, hi = 0, shape.context_max // step
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid * step) else (lo, mid - 1)
    return lo * step
