"""The bytes of a model's weights, tensor by tensor and layer by layer, from the model-files records.

`WeightsInfo` comes from safetensors headers, a GGUF header, a GPTQ config (the tensors an AutoGPTQ checkpoint of
that shape holds) or, when nothing else is known, the file sizes split by parameter count. `held_on_cpu` gives the
same weights as a load plan holds them on the CPU (int4 / int8 kernels, dequantized caches: the byte counts of
`kernels/cpu_layout.py`), and `loading_bytes` what the load holds only while converting them. The estimator places
these bytes on devices; this module only counts them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from kernels.cpu_layout import int4_group, layout_bytes
from loaders.files import ModelFiles, ModelShape
from loaders.files.gguf_header import GGUFHeader
from loaders.files.quant_config import GPTQConfig
from loaders.files.safetensors_header import SafetensorsTensor
from loaders.plan import DTYPE_BYTES, LoadPlan

GPTQ_PARTS = ("qweight", "qzeros", "scales", "g_idx")
SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
LAYER_RE = re.compile(r"(?:^|\.)(?:layers|blk|h|block|blocks)\.(\d+)\.")
EMBED_RE = re.compile(r"(?:^|\.)(?:token_embd|embed_tokens|wte|word_embeddings)\.")


@dataclass(frozen=True)
class WeightTensor:
    """One stored tensor: its layer (None for embeddings, output, final norm), bytes, and the bytes per element of
    a floating-point tensor (0 for quantized / integer data, which loaders keep as stored)."""

    name: str
    nbytes: int
    layer: int | None = None
    float_itemsize: int = 0

    @classmethod
    def named(cls, name: str, nbytes: int, float_itemsize: int = 0) -> WeightTensor:
        match = LAYER_RE.search(name)
        return cls(name, int(nbytes), int(match.group(1)) if match else None, float_itemsize)


@dataclass(frozen=True)
class WeightsInfo:
    """The bytes of a model's weights; `source` says where the numbers came from."""

    tensors: tuple[WeightTensor, ...]
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


def weights_of(files: ModelFiles) -> WeightsInfo:
    """The weights of a local model, from the records its files were read into."""
    if files.format == "gguf" and files.header is not None:
        return gguf_weights(files.header, files.file_bytes)
    return hf_weights(files.shape, files.tensors, files.gptq, files.file_bytes)


def gguf_weights(header: GGUFHeader, file_bytes: int = 0) -> WeightsInfo:
    tensors = tuple(WeightTensor.named(t.name, t.nbytes, t.float_itemsize) for t in header.tensors)
    total = sum(t.nbytes for t in tensors)
    return WeightsInfo(tensors, "gguf header", file_bytes or header.size + total)


def hf_weights(shape: ModelShape, tensors: Sequence[SafetensorsTensor], gptq: GPTQConfig | None,
               file_bytes: int) -> WeightsInfo:  # fmt: skip
    """From safetensors headers when there are any, else from the GPTQ config, else from the file sizes."""
    if tensors:
        # GPTQ scales stay fp16 whatever the compute dtype (loaders/gptq.py): never cast.
        records = tuple(WeightTensor.named(t.name, t.nbytes, 0 if gptq and t.name.endswith(".scales")
                                           else t.float_itemsize) for t in tensors)  # fmt: skip
        return WeightsInfo(records, "safetensors headers", file_bytes)
    if gptq is not None:
        return WeightsInfo(tuple(gptq_tensors(shape, gptq)), "gptq config", file_bytes)
    return WeightsInfo(tuple(size_tensors(shape, file_bytes)), "file sizes", file_bytes)


def gptq_tensors(shape: ModelShape, gptq: GPTQConfig) -> list[WeightTensor]:
    """The tensors of an AutoGPTQ checkpoint computed from the shape and its quantize config.

    Per Linear (in K, out N, G = groups along K): qweight int32 [K·bits/32, N], qzeros int32 [G, N·bits/32],
    scales fp16 [G, N], g_idx int32 [K]. Embeddings, lm_head and norms stay fp16.
    """
    bits = gptq.bits
    infos: list[WeightTensor] = []
    for layer in range(shape.n_layers):
        for name, k, n in shape.linears():
            groups = gptq.groups(k)
            prefix = f"model.layers.{layer}.{name}."
            infos += [
                WeightTensor(prefix + "qweight", k * n * bits // 8, layer),
                WeightTensor(prefix + "qzeros", groups * n * bits // 8, layer),
                WeightTensor(prefix + "scales", groups * n * 2, layer),
                WeightTensor(prefix + "g_idx", k * 4, layer),
            ]
        infos.append(WeightTensor(f"model.layers.{layer}.norms", 2 * shape.hidden * 2, layer, 2))
    infos.append(WeightTensor("model.embed_tokens.weight", shape.vocab * shape.hidden * 2, None, 2))
    if not shape.tied_embeddings:
        infos.append(WeightTensor("lm_head.weight", shape.vocab * shape.hidden * 2, None, 2))
    infos.append(WeightTensor("model.norm.weight", shape.hidden * 2, None, 2))
    return infos


def size_tensors(shape: ModelShape, total_bytes: int) -> list[WeightTensor]:
    """When only the file sizes are known: split `total_bytes` between layers and the rest by parameter count."""
    per_param = total_bytes / (shape.layer_params() * shape.n_layers + shape.other_params())
    infos = [WeightTensor(f"layers.{i}.", int(shape.layer_params() * per_param), i) for i in range(shape.n_layers)]
    infos.append(WeightTensor("embed_tokens.", int(shape.vocab * shape.hidden * per_param)))
    rest = total_bytes - sum(t.nbytes for t in infos)
    infos.append(WeightTensor("lm_head.", max(rest, 0)))
    return infos


# --- as a plan holds them -------------------------------------------------------------------------------------------


def held_on_cpu(plan: LoadPlan) -> WeightsInfo:
    """The weights as `plan` holds them on the CPU: each quantized Linear in its layout (`LoadPlan.layout_of`)."""
    weights = weights_of(plan.files)
    if plan.loader == "gptq" and plan.files.gptq is not None:
        return _gptq_held(plan, weights)
    if plan.loader == "gguf" and plan.files.header is not None:
        return _gguf_held(plan, weights)
    return weights


def _gptq_held(plan: LoadPlan, weights: WeightsInfo) -> WeightsInfo:
    """Each Linear's four GPTQ tensors become one tensor of its layout's bytes."""
    gptq, dims = plan.files.gptq, {name: (n_in, n_out) for name, n_in, n_out in plan.files.shape.linears()}
    layers: dict[str, list[WeightTensor]] = {}
    rest: list[WeightTensor] = []
    for t in weights.tensors:
        prefix, _, part = t.name.rpartition(".")
        if part in GPTQ_PARTS and prefix.rpartition(".")[2] in dims:
            layers.setdefault(prefix, []).append(t)
        else:
            rest.append(t)
    held = []
    for prefix, parts in layers.items():
        n_in, n_out = dims[prefix.rpartition(".")[2]]
        nbytes = layout_bytes(plan.layout_of(n_out, n_in), n_out, n_in, stored=sum(p.nbytes for p in parts),
                              act_bytes=DTYPE_BYTES[plan.dtype], group=int4_group(n_in, gptq.group_size) or 32,
                              permuted=gptq.desc_act and gptq.group_size != -1)  # fmt: skip
        held.append(WeightTensor(f"{prefix}.held", nbytes, parts[0].layer))
    return replace(weights, tensors=tuple(rest + held))


def _gguf_held(plan: LoadPlan, weights: WeightsInfo) -> WeightsInfo:
    """Each Linear's blocks become its layout's bytes; a tied embedding keeps its blocks and the head gets its own."""
    tensors = plan.files.header.tensors
    has_output = any(t.name == "output.weight" for t in tensors)
    held: list[WeightTensor] = []
    for info, stored in zip(tensors, weights.tensors, strict=True):
        if len(info.dims) != 2 or (info.name == "token_embd.weight" and has_output):
            held.append(stored)
            continue
        n_in, n_out = info.dims
        layout = plan.layout_of(n_out, n_in, info.qtype.name)
        nbytes = layout_bytes(layout, n_out, n_in, stored=stored.nbytes, act_bytes=DTYPE_BYTES[plan.dtype])
        if info.name != "token_embd.weight":
            held.append(replace(stored, nbytes=nbytes, float_itemsize=0))
            continue
        held.append(stored)
        if layout != "per-call":
            held.append(WeightTensor("output.held", nbytes))
    return replace(weights, tensors=tuple(held))


def loading_bytes(plan: LoadPlan) -> int:
    """RAM the load holds on top of the loaded model until it ends, from each loader's way of reading.

    Transformers maps every weight file until the load ends: the pages of tensors cast to another dtype stay
    resident next to their casts. The GPTQ loader reads each layer's tensors out of a memory map as it converts
    that layer: the mapped pages stay resident until the load ends. The native GGUF loader maps each tensor on its
    own and drops the map once it is converted: the largest converted tensor at a time."""
    files = plan.files
    if plan.loader == "transformers":
        return sum(t.nbytes for t in files.tensors
                   if SAFETENSORS_DTYPES.get(t.dtype, plan.weights_dtype) != plan.weights_dtype)  # fmt: skip
    if plan.loader == "gptq":
        return weights_of(files).total
    if plan.loader == "gguf" and files.header is not None:
        converted = [t.nbytes for t in files.header.tensors if len(t.dims) == 2
                     and plan.layout_of(t.dims[1], t.dims[0], t.qtype.name) != "per-call"]  # fmt: skip
        return max(converted, default=0)
    return 0
