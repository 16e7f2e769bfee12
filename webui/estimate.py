"""Memory estimation: how many bytes a model takes on each device for given load settings, and whether it fits here.

Owns the model's shape (`ModelShape`, from config.json or GGUF metadata), the bytes of its weights (`WeightsInfo`,
from safetensors headers, GGUF tensor infos, a GPTQ config or bare file sizes), the estimate itself (`estimate`:
per device ``ram`` / ``cuda:N`` and per part weights / kv_cache / buffers / overhead), the verdict against a
`Hardware` (`Estimate.fit`, `check_fits`, `fit_gpu_layers`, `fit_context`), and the entry points the UI and the CLI
call: `estimate_local`, `estimate_gguf_header`, `estimate_remote`, `per_file`.

An estimate is the memory of a *full* context: the KV cache and the attention buffers at `ctx` tokens. It reads
headers only: never the weights. Run ``python -m webui.estimate PATH | REPO[:BRANCH]`` for the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import struct
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType

from loaders.errors import CorralError, InsufficientMemoryError, ModelFormatError, UnsupportedModelError
from loaders.hardware import Hardware, snapshot
from loaders.settings import LoaderSettings, settings_for
from webui.download import RemoteFile, hub_endpoint, list_files, parse_repo

MIB = 1024**2
GIB = 1024**3

# Fixed costs, measured on the SmolLM2 fixtures (tests/test_estimate.py re-measures them): the resident memory of
# the Python process with the backend imported and initialised, before any weights.
RUNTIME_RAM = {"llama.cpp": 40 * MIB, "transformers": 380 * MIB, "gptq": 380 * MIB, "gguf": 380 * MIB}
CUDA_CONTEXT = 500 * MIB  # per GPU used: the CUDA context, cuBLAS workspace, kernels
CUDA_HOST_RAM = 300 * MIB  # host side of the CUDA runtime when any GPU is used
TIGHT_MARGIN = 0.10  # "tight" when less than 10% of the free memory would be left
LAYER_RE = re.compile(r"(?:^|\.)(?:layers|blk|h|block|blocks)\.(\d+)\.")
EMBED_RE = re.compile(r"(?:^|\.)(?:token_embd|embed_tokens|wte|word_embeddings)\.")
OUTPUT_RE = re.compile(r"^(?:output\.weight|lm_head\.)")
SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
SAFETENSORS_INT_ITEMSIZE = {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8}
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


# --- records ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """The dimensions that decide memory. `head_dim` × `n_kv_heads` is one token's K (or V) width per layer."""

    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab: int
    ffn: int
    context_max: int
    tied_embeddings: bool = False
    arch: str = "llama"

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """From a Transformers config.json dict (a multimodal model's `text_config` is used when present)."""
        cfg = {**config, **config.get("text_config", {})}
        hidden = _first(cfg, "hidden_size", "n_embd", "d_model")
        heads = _first(cfg, "num_attention_heads", "n_head", "num_heads")
        kv_heads = cfg.get("num_key_value_heads") or (1 if cfg.get("multi_query") else heads)
        return cls(
            n_layers=_first(cfg, "num_hidden_layers", "n_layer", "num_layers"),
            hidden=hidden,
            n_heads=heads,
            n_kv_heads=kv_heads,
            head_dim=cfg.get("head_dim") or hidden // heads,
            vocab=_first(cfg, "vocab_size"),
            ffn=cfg.get("intermediate_size") or cfg.get("n_inner") or cfg.get("ffn_dim") or 4 * hidden,
            context_max=cfg.get("max_position_embeddings") or cfg.get("n_positions") or cfg.get("seq_length") or 2048,
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            arch=str(cfg.get("model_type", "llama")),
        )

    @classmethod
    def from_gguf(cls, metadata: dict[str, Any], tensor_names: Iterable[str] = ()) -> ModelShape:
        """From GGUF metadata (`{arch}.block_count`, ...); tied when the file has no `output.weight`."""
        arch = str(metadata.get("general.architecture", "llama"))

        def key(name: str, default: Any = None) -> Any:
            value = metadata.get(f"{arch}.{name}", default)
            return max(value) if isinstance(value, list) else value  # per-layer arrays (e.g. OpenELM)

        hidden, heads = key("embedding_length"), key("attention.head_count")
        if hidden is None or heads is None or key("block_count") is None:
            raise ModelFormatError(f"GGUF metadata lacks {arch}.block_count / embedding_length / head_count")
        names = set(tensor_names)
        return cls(
            n_layers=int(key("block_count")),
            hidden=int(hidden),
            n_heads=int(heads),
            n_kv_heads=int(key("attention.head_count_kv", heads)),
            head_dim=int(key("attention.key_length", hidden // heads)),
            vocab=int(key("vocab_size") or len(metadata.get("tokenizer.ggml.tokens", ())) or 32000),
            ffn=int(key("feed_forward_length", 4 * hidden)),
            context_max=int(key("context_length", 2048)),
            tied_embeddings=bool(names) and "output.weight" not in names,
            arch=arch,
        )

    def kv_bytes_per_token(self, kv_bytes: float = 2) -> int:
        """K and V of one token over all layers: layers × kv_heads × head_dim × 2 × bytes."""
        return int(self.n_layers * self.n_kv_heads * self.head_dim * 2 * kv_bytes)

    def kv_cache_bytes(self, ctx: int, kv_bytes: float = 2) -> int:
        return ctx * self.kv_bytes_per_token(kv_bytes)

    def linears(self) -> list[tuple[str, int, int]]:
        """(name, in_features, out_features) of one decoder layer's Linear layers (Llama layout)."""
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        h, f = self.hidden, self.ffn
        return [("q_proj", h, q), ("k_proj", h, kv), ("v_proj", h, kv), ("o_proj", q, h),
                ("gate_proj", h, f), ("up_proj", h, f), ("down_proj", f, h)]  # fmt: skip

    def layer_params(self) -> int:
        return sum(i * o for _, i, o in self.linears()) + 2 * self.hidden

    def other_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2) + self.hidden


def _first(cfg: dict[str, Any], *keys: str) -> int:
    for key in keys:
        if cfg.get(key) is not None:
            return int(cfg[key])
    raise ModelFormatError(f"config.json has none of {', '.join(keys)}")


@dataclass(frozen=True)
class TensorInfo:
    """One stored tensor: its layer (None for embeddings, output, final norm), bytes, and the bytes per element of
    a floating-point tensor (0 for quantized / integer data, which loaders keep as stored)."""

    name: str
    nbytes: int
    layer: int | None = None
    float_itemsize: int = 0

    @classmethod
    def named(cls, name: str, nbytes: int, float_itemsize: int = 0) -> TensorInfo:
        match = LAYER_RE.search(name)
        return cls(name, int(nbytes), int(match.group(1)) if match else None, float_itemsize)


@dataclass(frozen=True)
class WeightsInfo:
    """The bytes of a model's weights, tensor by tensor; `source` says where the numbers came from."""

    tensors: tuple[TensorInfo, ...]
    source: str
    file_bytes: int = 0  # on disk (0 = unknown)

    @property
    def total(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def with_float_itemsize(self, itemsize: int | None) -> WeightsInfo:
        """The weights after a load that casts floating-point tensors to `itemsize` bytes (None: as stored)."""
        if not itemsize:
            return self
        cast = tuple(
            replace(t, nbytes=t.nbytes * itemsize // t.float_itemsize, float_itemsize=itemsize)
            if t.float_itemsize and t.float_itemsize != itemsize
            else t
            for t in self.tensors
        )
        return replace(self, tensors=cast)

    def layer_bytes(self, n_layers: int) -> list[int]:
        sizes = [0] * n_layers
        for t in self.tensors:
            if t.layer is not None and t.layer < n_layers:
                sizes[t.layer] += t.nbytes
        return sizes

    def embed_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors if t.layer is None and EMBED_RE.search(t.name))

    def output_bytes(self) -> int:
        """The output projection plus the final norm (everything outside the layers that is not the embedding)."""
        return sum(t.nbytes for t in self.tensors if t.layer is None and not EMBED_RE.search(t.name))


# --- weights from headers and configs -----------------------------------------------------------------------------


def safetensors_tensors(header: dict[str, Any]) -> list[TensorInfo]:
    """Tensor records from a parsed safetensors JSON header."""
    infos = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        infos.append(TensorInfo.named(name, end - start, SAFETENSORS_ITEMSIZE.get(entry["dtype"], 0)))
    return infos


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a .safetensors file (8-byte little-endian length, then JSON); no tensor data is read."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100 * MIB:
            raise ModelFormatError("safetensors header length is implausible", path=path)
        return json.loads(f.read(length))


def gptq_tensors(shape: ModelShape, quant: dict[str, Any]) -> list[TensorInfo]:
    """The tensors of an AutoGPTQ checkpoint computed from the shape and its quantize config.

    Per Linear (in K, out N, G = groups along K): qweight int32 [K·bits/32, N], qzeros int32 [G, N·bits/32],
    scales fp16 [G, N], g_idx int32 [K]. Embeddings, lm_head and norms stay fp16.
    """
    bits, group = int(quant.get("bits", 4)), int(quant.get("group_size", 128))
    infos: list[TensorInfo] = []
    for layer in range(shape.n_layers):
        for name, k, n in shape.linears():
            groups = 1 if group <= 0 else math.ceil(k / group)
            prefix = f"model.layers.{layer}.{name}."
            infos += [
                TensorInfo(prefix + "qweight", k * n * bits // 8, layer),
                TensorInfo(prefix + "qzeros", groups * n * bits // 8, layer),
                TensorInfo(prefix + "scales", groups * n * 2, layer),
                TensorInfo(prefix + "g_idx", k * 4, layer),
            ]
        infos.append(TensorInfo(f"model.layers.{layer}.norms", 2 * shape.hidden * 2, layer))
    infos.append(TensorInfo("model.embed_tokens.weight", shape.vocab * shape.hidden * 2))
    if not shape.tied_embeddings:
        infos.append(TensorInfo("lm_head.weight", shape.vocab * shape.hidden * 2))
    infos.append(TensorInfo("model.norm.weight", shape.hidden * 2))
    return infos


def gptq_config(config: dict[str, Any], quantize_config: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The GPTQ settings from `quantize_config.json` and/or config.json's `quantization_config`; None if not GPTQ."""
    inner = config.get("quantization_config") or {}
    if inner and inner.get("quant_method", "gptq") != "gptq":
        return None
    merged = {**inner, **(quantize_config or {})}
    return merged if "bits" in merged else None


def size_tensors(shape: ModelShape, total_bytes: int) -> list[TensorInfo]:
    """When only the file sizes are known: split `total_bytes` between layers and the rest by parameter count."""
    per_param = total_bytes / (shape.layer_params() * shape.n_layers + shape.other_params())
    infos = [TensorInfo(f"layers.{i}.", int(shape.layer_params() * per_param), i) for i in range(shape.n_layers)]
    infos.append(TensorInfo("embed_tokens.", int(shape.vocab * shape.hidden * per_param)))
    rest = total_bytes - sum(t.nbytes for t in infos)
    infos.append(TensorInfo("lm_head.", max(rest, 0)))
    return infos


# --- GGUF header (a truncated buffer is enough) ------------------------------------------------------------------


@dataclass(frozen=True)
class GGUFHeader:
    """The metadata and tensor infos of a GGUF file; `size` = bytes of the header (where tensor data starts)."""

    metadata: dict[str, Any]
    tensors: tuple[tuple[str, tuple[int, ...], GGMLQuantizationType], ...]
    size: int

    def tensor_infos(self) -> list[TensorInfo]:
        infos = []
        for name, dims, qtype in self.tensors:
            block, type_size = GGML_QUANT_SIZES[qtype]
            float_size = {GGMLQuantizationType.F32: 4, GGMLQuantizationType.F16: 2, GGMLQuantizationType.BF16: 2}
            infos.append(TensorInfo.named(name, math.prod(dims) // block * type_size, float_size.get(qtype, 0)))
        return infos


class _Truncated(Exception):
    """The buffer ends inside the header: read more bytes."""


_SCALAR = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}  # fmt: skip


class _Cursor:
    """Reads little-endian GGUF values from a bytes buffer that may stop anywhere."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data, self.pos = memoryview(data), 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise _Truncated
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return bytes(self.take(self.scalar("<Q"))).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        vtype = GGUFValueType(vtype)
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            item_type, count = GGUFValueType(self.scalar("<I")), self.scalar("<Q")
            if item_type in _SCALAR:  # numbers: one numpy view, not count unpack calls
                fmt = _SCALAR[item_type]
                return np.frombuffer(self.take(count * struct.calcsize(fmt)), dtype=np.dtype(fmt)).tolist()
            return [self.value(item_type) for _ in range(count)]
        return self.scalar(_SCALAR[vtype])


def parse_gguf_header(data: bytes | memoryview) -> GGUFHeader:
    """Parse a GGUF header from the first bytes of the file. Raises `_Truncated` when `data` is too short."""
    cur = _Cursor(data)
    if cur.scalar("<I") != GGUF_MAGIC:
        raise ModelFormatError("not a GGUF file (bad magic)")
    version = cur.scalar("<I")
    if version < 2:
        raise UnsupportedModelError(f"GGUF version {version} is too old; convert the file again with llama.cpp")
    n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
    metadata = {cur.string(): cur.value(cur.scalar("<I")) for _ in range(n_kv)}
    tensors = []
    for _ in range(n_tensors):
        name = cur.string()
        dims = tuple(cur.scalar("<Q") for _ in range(cur.scalar("<I")))
        qtype = GGMLQuantizationType(cur.scalar("<I"))
        cur.scalar("<Q")  # offset in the data section
        tensors.append((name, dims, qtype))
    alignment = int(metadata.get("general.alignment", 32))
    return GGUFHeader(metadata, tuple(tensors), -(-cur.pos // alignment) * alignment)


def read_gguf_header(path: Path, *, first: int = 8 * MIB) -> GGUFHeader:
    """The header of a local GGUF file, reading more of it only when the header is longer than `first` bytes."""
    size = first
    with open(path, "rb") as f:
        while True:
            f.seek(0)
            data = f.read(size)
            try:
                return parse_gguf_header(data)
            except _Truncated:
                if len(data) < size:
                    raise ModelFormatError("GGUF file ends inside its header", path=path) from None
                size *= 4


# --- the estimate --------------------------------------------------------------------------------------------------


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
    file_bytes: int = 0
    source: str = ""
    notes: tuple[str, ...] = ()

    def device_total(self, device: str) -> int:
        return sum(self.parts.get(device, {}).values())

    @property
    def ram(self) -> int:
        return self.device_total("ram")

    @property
    def vram(self) -> int:
        return sum(self.device_total(d) for d in self.parts if d.startswith("cuda"))

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
    dequant_cache: bool = False,
) -> Estimate:
    """The memory of `loader` holding this model with a full context of `ctx` tokens (default: the model's max).

    `n_gpu_layers`: layers on GPU `gpu` (llama.cpp: the last ones, output too when > n_layers; Transformers,
    GPTQ and the native GGUF loader: the first ones and the embedding, as accelerate fills the GPU first);
    `max_memory` (GiB per device, accelerate-style: {"0": 20, "cpu": 60}) picks that count instead.
    `dtype_bytes`: bytes per float weight after load (None: as stored); `kv_bytes`: per KV element (llama.cpp
    f16 = 2; torch loaders: the compute dtype). `dequant_cache`: the GPTQ loader also keeps each quantized
    Linear's weight dequantized (in × out features × the compute dtype's bytes).
    """
    ctx = ctx or shape.context_max
    loaded = weights.with_float_itemsize(dtype_bytes if loader in ("transformers", "gptq") else None)
    act_bytes = dtype_bytes or (2 if loader != "transformers" or n_gpu_layers else 4)
    kv = kv_bytes or (2 if loader == "llama.cpp" else act_bytes)
    if max_memory is not None:
        n_gpu_layers = _layers_within(shape, loaded, loader, ctx, kv, max_memory.get(str(gpu), 0) * GIB)
    n_gpu_layers = max(0, min(n_gpu_layers, shape.n_layers + 1))
    gpu_dev = f"cuda:{gpu}"
    on_gpu = _gpu_layers(loader, shape.n_layers, n_gpu_layers)
    parts: dict[str, dict[str, int]] = {"ram": {"weights": 0, "kv_cache": 0, "buffers": 0, "overhead": 0}}
    if on_gpu or n_gpu_layers > shape.n_layers:
        parts[gpu_dev] = {"weights": 0, "kv_cache": 0, "buffers": 0, "overhead": CUDA_CONTEXT}
        parts["ram"]["overhead"] += CUDA_HOST_RAM
    layer_sizes, per_layer_kv = loaded.layer_bytes(shape.n_layers), shape.kv_cache_bytes(ctx, kv) // shape.n_layers
    if dequant_cache:
        cache = sum(k * n for _, k, n in shape.linears()) * act_bytes
        layer_sizes = [size + cache for size in layer_sizes]
    for i, size in enumerate(layer_sizes):
        device = gpu_dev if i in on_gpu else "ram"
        parts[device]["weights"] += size
        parts[device]["kv_cache"] += per_layer_kv
    head_dev = gpu_dev if n_gpu_layers > shape.n_layers else "ram"
    embed_dev = gpu_dev if loader != "llama.cpp" and n_gpu_layers else "ram"  # llama.cpp keeps token_embd on CPU
    parts[embed_dev]["weights"] += loaded.embed_bytes()
    parts[head_dev]["weights"] += loaded.output_bytes()
    for device in parts:
        parts[device]["buffers"] = _buffers(shape, loader, ctx, batch, act_bytes, on_cpu=device == "ram")
    parts["ram"]["overhead"] += RUNTIME_RAM.get(loader, RUNTIME_RAM["transformers"])
    return Estimate(loader, ctx, n_gpu_layers, shape.n_layers, parts, weights.file_bytes, weights.source)


def _gpu_layers(loader: str, n_layers: int, n_gpu_layers: int) -> set[int]:
    count = min(n_gpu_layers, n_layers)
    if loader == "llama.cpp":  # llama.cpp offloads the last layers (i >= n_layer - n_gpu_layers)
        return set(range(n_layers - count, n_layers))
    return set(range(count))


def _buffers(shape: ModelShape, loader: str, ctx: int, batch: int, act_bytes: int, *, on_cpu: bool = False) -> int:
    """Compute/activation buffers at a full context.

    llama.cpp evaluates the prompt `batch` tokens at a time: the attention scores of the last batch against the
    whole context (KQ and its softmax, f32) plus the feed-forward activations. Torch loaders run the whole prompt
    at once: hidden states and the MLP of every prompt token, and on the CPU, where SDPA with Transformers' mask
    takes its math path, one layer's ctx × ctx scores of every head (measured: +150 MB for SmolLM2 at 2048).
    On CUDA the fused kernels keep scores per block.
    """
    if loader == "llama.cpp":
        kq = ctx * batch * shape.n_heads * 4
        ffn = batch * (3 * shape.ffn + 4 * shape.hidden) * 4
        return kq + ffn + shape.vocab * 4
    tokens = ctx
    mlp = tokens * (3 * shape.ffn + 6 * shape.hidden) * act_bytes
    scores = shape.n_heads * tokens * tokens * act_bytes if on_cpu else 0
    return mlp + scores + shape.vocab * 4 * 2


def _layers_within(
    shape: ModelShape, weights: WeightsInfo, loader: str, ctx: int, kv: float, budget: float
) -> int:
    """How many layers an accelerate-style GPU budget (bytes) holds, counting weights and their KV cache."""
    used, count = CUDA_CONTEXT + _buffers(shape, loader, ctx, 512, 2), 0
    per_layer_kv = shape.kv_cache_bytes(ctx, kv) // shape.n_layers
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
    advice = [f"a shorter context (the KV cache at {est.ctx} tokens is {_gb(kv)})"]
    if device != "ram":
        advice.append(f"fewer GPU layers (now {est.n_gpu_layers})")
    elif hw.gpus and est.loader in ("llama.cpp", "gguf"):
        advice.append("more GPU layers")
    advice.append("a smaller quantization")
    raise InsufficientMemoryError(
        f"This load needs about {_gb(needed)} of {where} but {_gb(free)} is free "
        f"(weights {_gb(est.parts[device]['weights'])}, KV cache {_gb(est.parts[device]['kv_cache'])}). "
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


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


# --- entry points ------------------------------------------------------------------------------------------------


def estimate_gguf_header(
    source: bytes | memoryview | Path | str, *, ctx: int | None = None, n_gpu_layers: int = 0, file_bytes: int = 0,
    loader: str = "llama.cpp", **options: Any,
) -> Estimate:  # fmt: skip
    """Estimate a GGUF model from its header alone: a path, or the first bytes of the file."""
    header = read_gguf_header(Path(source)) if isinstance(source, (str, Path)) else _parse_or_fail(source)
    shape, weights = gguf_shape_weights(header, file_bytes or _file_size(source))
    return estimate(shape, weights, loader=loader, ctx=ctx, n_gpu_layers=n_gpu_layers, **options)


def gguf_shape_weights(header: GGUFHeader, file_bytes: int = 0) -> tuple[ModelShape, WeightsInfo]:
    infos = header.tensor_infos()
    shape = ModelShape.from_gguf(header.metadata, (name for name, _, _ in header.tensors))
    return shape, WeightsInfo(tuple(infos), "gguf header", file_bytes or header.size + sum(t.nbytes for t in infos))


def _parse_or_fail(data: bytes | memoryview) -> GGUFHeader:
    try:
        return parse_gguf_header(data)
    except _Truncated:
        raise ModelFormatError(f"the first {len(data)} bytes do not hold the whole GGUF header") from None


def _file_size(source: object) -> int:
    return Path(source).stat().st_size if isinstance(source, (str, Path)) else 0


def local_shape_weights(path: Path, *, gguf_file: str = "", prefer_gguf: bool = True) -> tuple[ModelShape, WeightsInfo]:
    """Shape and weights of a local model: a .gguf file, a folder with one, or a Transformers / GPTQ folder."""
    path = Path(path)
    gguf = _pick_gguf(path, gguf_file) if prefer_gguf or not (path / "config.json").is_file() else None
    if gguf is not None:
        return gguf_shape_weights(read_gguf_header(gguf), gguf.stat().st_size)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelFormatError("no config.json and no .gguf file: cannot tell the model's shape", path=path)
    config = json.loads(config_file.read_text())
    shape = ModelShape.from_config(config)
    files = _weight_files(path)
    file_bytes = sum(f.stat().st_size for f in files)
    tensors = [t for f in files if f.suffix == ".safetensors" for t in safetensors_tensors(read_safetensors_header(f))]
    if tensors:
        return shape, WeightsInfo(tuple(tensors), "safetensors headers", file_bytes)
    quant = _local_gptq_config(path, config)
    if quant is not None:
        return shape, WeightsInfo(tuple(gptq_tensors(shape, quant)), "gptq config", file_bytes)
    if not file_bytes:
        raise ModelFormatError("no weight files found", path=path)
    return shape, WeightsInfo(tuple(size_tensors(shape, file_bytes)), "file sizes", file_bytes)


def _local_gptq_config(path: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    quant_file = path / "quantize_config.json"
    return gptq_config(config, json.loads(quant_file.read_text()) if quant_file.is_file() else None)


def _pick_gguf(path: Path, name: str) -> Path | None:
    """The .gguf to estimate: `path` itself, `name` in the folder, else its Q4_K_M or first one."""
    if path.is_file():
        return path if path.suffix == ".gguf" else None
    if name:
        return path / name
    ggufs = sorted(path.glob("*.gguf"))
    return next((g for g in ggufs if "q4_k_m" in g.name.lower()), ggufs[0] if ggufs else None)


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / n for n in names]
    found = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin")) + sorted(path.glob("*.pt"))
    return [f for f in found if "training_args" not in f.name]


def settings_options(loader: str, settings: LoaderSettings, hw: Hardware) -> dict[str, Any]:
    """`estimate` keyword arguments from a loader's settings (dtype "auto" resolved for this machine)."""
    values = asdict(settings)
    ctx = values.get("n_ctx") or values.get("context_length") or None
    options: dict[str, Any] = {"ctx": ctx, "n_gpu_layers": values.get("n_gpu_layers", 0)}
    device = str(values.get("device", "auto"))
    if loader in ("transformers", "gptq"):
        on_gpu = device.startswith("cuda") or (device == "auto" and bool(hw.gpus))
        if values.get("max_memory_gib"):
            options["max_memory"] = values["max_memory_gib"]
        elif on_gpu:
            options["n_gpu_layers"] = 10**6  # everything on the GPU
        options["gpu"] = int(device.partition(":")[2] or 0) if device.startswith("cuda") else 0
        options["dtype_bytes"] = _dtype_bytes(str(values.get("dtype", "auto")), on_gpu, hw, loader)
    elif loader == "gguf":
        on_gpu = bool(values["n_gpu_layers"])
        options["dtype_bytes"] = _dtype_bytes(str(values.get("dtype", "auto")), on_gpu, hw, loader)
    if loader == "llama.cpp":
        options["batch"] = values.get("n_batch", 512)
    return options


def _dtype_bytes(dtype: str, on_gpu: bool, hw: Hardware, loader: str) -> int:
    if dtype != "auto":
        return DTYPE_BYTES.get(dtype, 4)
    if loader in ("gptq", "gguf"):  # loaders/gptq.py and loaders/gguf_native.py: fp16 on CUDA, fp32 on CPU
        return 2 if on_gpu else 4
    return 2 if on_gpu or hw.cpu_bf16 else 4  # bf16 on a GPU or a bf16-capable CPU, else fp32


def _gptq_dequant_cache(shape: ModelShape, setting: str, act_bytes: int, hw: Hardware) -> bool:
    """loaders/gptq.py's rule: `auto` keeps dequantized weights when they take at most half the free memory."""
    if setting in ("on", "off"):
        return setting == "on"
    needed = sum(k * n for _, k, n in shape.linears()) * act_bytes * shape.n_layers
    return needed <= 0.5 * hw.ram_available


def estimate_local(
    path: Path | str, loader: str, settings: LoaderSettings | None = None, *, hw: Hardware | None = None
) -> Estimate:
    """The estimate for loading the local model `path` (a folder or a .gguf file) with `loader` and `settings`."""
    settings = settings or settings_for(loader)
    shape, weights = local_shape_weights(
        Path(path), gguf_file=getattr(settings, "file", ""), prefer_gguf=loader in ("llama.cpp", "gguf")
    )
    hw = hw or snapshot()
    options = settings_options(loader, settings, hw)
    options["n_gpu_layers"] = min(options["n_gpu_layers"], shape.n_layers + 1)
    if loader == "gptq" and not options["n_gpu_layers"]:  # the cache is a CPU-side choice (on CUDA: Triton)
        setting = getattr(settings, "dequantize_cache", "auto")
        options["dequant_cache"] = _gptq_dequant_cache(shape, setting, options["dtype_bytes"], hw)
    return estimate(shape, weights, loader=loader, **options)


def best_gpu_layers(path: Path | str, loader: str, settings: LoaderSettings, hw: Hardware) -> int:
    """The most layers of the local model `path` that fit `hw`'s free GPU memory (and RAM) at the context of
    `settings` (0 when the machine has no GPU or nothing fits)."""
    shape, weights, options = _fit_inputs(path, loader, settings, hw)
    if not hw.gpus:
        return 0
    ctx = options.pop("ctx") or shape.context_max
    return fit_gpu_layers(shape, weights, hw, ctx=ctx, loader=loader, **options)


def best_context(path: Path | str, loader: str, settings: LoaderSettings, hw: Hardware, *, n_gpu_layers: int) -> int:
    """The longest context (a multiple of 256, at most the model's) that fits with `n_gpu_layers` on the GPU."""
    shape, weights, options = _fit_inputs(path, loader, settings, hw)
    options.pop("ctx")
    return fit_context(shape, weights, hw, n_gpu_layers=n_gpu_layers, loader=loader, **options)


def _fit_inputs(
    path: Path | str, loader: str, settings: LoaderSettings, hw: Hardware
) -> tuple[ModelShape, WeightsInfo, dict[str, Any]]:
    """Shape, weights and `estimate` options for a fit: the layer count is the unknown, so it is left out."""
    shape, weights = local_shape_weights(
        Path(path), gguf_file=getattr(settings, "file", ""), prefer_gguf=loader in ("llama.cpp", "gguf")
    )
    options = settings_options(loader, settings, hw)
    for key in ("n_gpu_layers", "max_memory"):
        options.pop(key, None)
    if loader == "gguf" and hw.gpus:  # the native loader computes in fp16 once any layer is on CUDA
        options["dtype_bytes"] = _dtype_bytes(str(getattr(settings, "dtype", "auto")), True, hw, loader)
    return shape, weights, options


# --- the Hub -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEstimate:
    """One row of the Model tab's file list: a .gguf file or a branch, its RAM / VRAM and the fit mark."""

    name: str
    ram: int
    vram: int
    verdict: str
    estimate: Estimate | None = None
    error: str = ""


def estimate_remote(
    repo_ref: str, *, file: str | None = None, ctx: int | None = None, n_gpu_layers: int = 0,
    token: str | bool | None = None, loader: str | None = None, **options: Any,
) -> Estimate:  # fmt: skip
    """Estimate a Hub model before downloading it: `owner/repo[:branch]`, `file` picks a .gguf in it.

    Uses the file list with sizes, config.json / quantize_config.json, safetensors headers, and the first bytes of
    a GGUF file (HTTP Range), never the weights.
    """
    ref = parse_repo(repo_ref)
    files = list_files(ref, token=token).files
    gguf_names = [f.path for f in files if f.path.endswith(".gguf")]
    if file or (gguf_names and not any(f.path == "config.json" for f in files)):
        name = file or next((g for g in gguf_names if "q4_k_m" in g.lower()), gguf_names[0])
        size = next((f.size for f in files if f.path == name), 0)
        header = fetch_gguf_header(ref.repo_id, name, revision=ref.branch, token=token)
        shape, weights = gguf_shape_weights(header, size)
        loader = loader or "llama.cpp"
    else:
        shape, weights, detected = _remote_hf_weights(ref.repo_id, ref.branch, files, token=token)
        loader = loader or detected
    return estimate(shape, weights, loader=loader, ctx=ctx, n_gpu_layers=n_gpu_layers, **options)


def _remote_json(repo: str, name: str, revision: str | None, token: str | bool | None) -> dict[str, Any]:
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(repo, name, revision=revision, token=token, endpoint=hub_endpoint())
    return json.loads(Path(path).read_text())


def _remote_hf_weights(
    repo: str, revision: str | None, files: Sequence[RemoteFile], *, token: str | bool | None
) -> tuple[ModelShape, WeightsInfo, str]:
    names = {f.path for f in files}
    if "config.json" not in names:
        raise ModelFormatError(f"{repo} has neither a .gguf file nor a config.json: cannot estimate it")
    config = _remote_json(repo, "config.json", revision, token)
    shape = ModelShape.from_config(config)
    quant_cfg = _remote_json(repo, "quantize_config.json", revision, token) if "quantize_config.json" in names else None
    quant = gptq_config(config, quant_cfg)
    weight_files = [f for f in files if f.path.endswith((".safetensors", ".bin", ".pt")) and "/" not in f.path]
    file_bytes = sum(f.size for f in weight_files)
    if quant is not None:
        return shape, WeightsInfo(tuple(gptq_tensors(shape, quant)), "gptq config", file_bytes), "gptq"
    if any(f.path.endswith(".safetensors") for f in weight_files):
        from huggingface_hub import HfApi

        meta = HfApi(endpoint=hub_endpoint()).get_safetensors_metadata(repo, revision=revision, token=token)
        tensors = [
            TensorInfo.named(name, _st_nbytes(info), SAFETENSORS_ITEMSIZE.get(info.dtype, 0))
            for file_meta in meta.files_metadata.values()
            for name, info in file_meta.tensors.items()
        ]
        return shape, WeightsInfo(tuple(tensors), "safetensors headers", file_bytes), "transformers"
    return shape, WeightsInfo(tuple(size_tensors(shape, file_bytes)), "file sizes", file_bytes), "transformers"


def _st_nbytes(info: Any) -> int:
    start, end = info.data_offsets
    return end - start


def fetch_gguf_header(
    repo: str, name: str, *, revision: str | None = None, token: str | bool | None = None, first: int = 8 * MIB
) -> GGUFHeader:
    """The header of a GGUF file on the Hub from its first bytes (HTTP Range), growing the range as needed."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    url = hf_hub_url(repo, name, revision=revision, endpoint=hub_endpoint())
    size = first
    while True:
        headers = {**build_hf_headers(token=token), "range": f"bytes=0-{size - 1}"}
        response = get_session().get(url, headers=headers, follow_redirects=True)
        hf_raise_for_status(response)
        data = response.content
        try:
            return parse_gguf_header(data)
        except _Truncated:
            if len(data) < size:  # the server sent the whole file and the header is still incomplete
                raise ModelFormatError(f"{repo}/{name}: the file ends inside its GGUF header") from None
            size *= 4


def per_file(
    repo_ref: str, *, ctx: int, n_gpu_layers: int = 0, hw: Hardware | None = None, token: str | bool | None = None,
    branches: Sequence[str] = (),
) -> list[FileEstimate]:  # fmt: skip
    """One row per .gguf file of the repo (or per branch in `branches` for a GPTQ/Transformers repo)."""
    hw = hw or snapshot()
    ref = parse_repo(repo_ref)
    if branches:
        rows = [(f"{ref.repo_id}:{b}", None, b) for b in branches]
    else:
        ggufs = [f.path for f in list_files(ref, token=token).files if f.path.endswith(".gguf")]
        rows = [(repo_ref, g, g) for g in ggufs] or [(repo_ref, None, ref.branch)]
    return [_row(target, file, label, ctx, n_gpu_layers, hw, token) for target, file, label in rows]


def _row(
    ref: str, file: str | None, label: str, ctx: int, n_gpu_layers: int, hw: Hardware, token: str | bool | None
) -> FileEstimate:
    from huggingface_hub.errors import HfHubHTTPError

    try:
        est = estimate_remote(ref, file=file, ctx=ctx, n_gpu_layers=n_gpu_layers, token=token)
    except (HfHubHTTPError, CorralError, OSError) as error:
        return FileEstimate(label, 0, 0, "unknown", None, str(error))
    return FileEstimate(label, est.ram, est.vram, est.fit(hw).verdict, est)


# --- command line ----------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webui.estimate", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a local folder or .gguf file, or owner/repo[:branch] on the Hub")
    parser.add_argument("--file", default="", help="which .gguf file")
    parser.add_argument("--ctx", type=int, default=0, help="context length (default: the loader's / model's)")
    parser.add_argument("--gpu-layers", type=int, default=0, help="layers on the GPU (default 0)")
    parser.add_argument("--loader", default="", help="transformers | gptq | llama.cpp | gguf (default: by format)")
    args = parser.parse_args(argv)
    hw = snapshot()
    est = _cli_estimate(args, hw)
    print(json.dumps(est.to_dict(hw) | {"hardware": hw.to_dict()}, indent=2))
    return 0 if est.fit(hw).verdict != "won't fit" else 1


def _cli_estimate(args: argparse.Namespace, hw: Hardware) -> Estimate:
    path = Path(args.model)
    if path.exists():
        loader = args.loader or _local_loader(path, args.file)
        values = {"file": args.file, "n_gpu_layers": args.gpu_layers}
        values |= {"n_ctx": args.ctx, "context_length": args.ctx} if args.ctx else {}
        return estimate_local(path, loader, settings_for(loader, values), hw=hw)
    return estimate_remote(args.model, file=args.file or None, ctx=args.ctx or None, n_gpu_layers=args.gpu_layers,
                           loader=args.loader or None)  # fmt: skip


def _local_loader(path: Path, file: str) -> str:
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
        return "gptq" if _local_gptq_config(path, config) is not None else "transformers"
    return "llama.cpp"


if __name__ == "__main__":
    sys.exit(main())
