"""Native GGUF loader: runs a Llama-family GGUF file on Corral's own kernels, weights kept in their block format.

Owns the mapping from a GGUF file to a PyTorch model: metadata -> a transformers `LlamaConfig` (typed `GGUFModelInfo`
at the edge), the model built on the `meta` device, each Linear replaced by a `GGUFLinear` holding a view of the
memory-mapped file's bytes (Q/K rows un-permuted back to the Hugging Face RoPE layout), the embedding by a
`GGUFEmbedding`, norms in float32; the tokenizer from the `tokenizer.ggml.*` metadata. Layers can be split between
CUDA and the CPU (`n_gpu_layers`, first layers on the GPU). Anything else (another architecture, an i-quant...) is
refused with an `UnsupportedModelError` that points at the llama.cpp loader.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFReader, ReaderTensor
from torch import nn

from kernels import gguf_torch
from kernels.gguf_linear import GGUFEmbedding, GGUFLinear
from loaders.base import LoadedModel, MemoryReport
from loaders.errors import ModelFormatError, ModelNotFoundError, UnsupportedModelError
from loaders.gguf_tokenizer import GGUFTokenizer, TokenizerMetadata
from loaders.settings import NativeGGUFSettings

ARCHITECTURES = ("llama",)  # Mistral/Mixtral-style dense GQA files are written as "llama" by the converter
LINEARS = {  # GGUF tensor (after blk.N.) -> attribute path in a transformers LlamaDecoderLayer
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}  # fmt: skip
NORMS = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
USE_LLAMA_CPP = "Load it with the llama.cpp loader instead."


@dataclass(frozen=True)
class GGUFModelInfo:
    """The metadata of a Llama-family GGUF that the model needs, read once."""

    architecture: str
    n_layers: int
    hidden: int
    ffn: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    context_length: int
    rope_theta: float
    rope_linear_factor: float
    rms_eps: float
    vocab_size: int


@dataclass
class GGUFModule:
    """A built native GGUF model before it is wrapped for the engine."""

    module: nn.Module  # transformers LlamaForCausalLM with GGUF modules inside
    info: GGUFModelInfo
    tokenizer: GGUFTokenizer
    device: str  # the weights' tensors keep the file's memory map alive; the reader itself is dropped (its
    # metadata records, 49152 tokens and merges as numpy views, take ~165 MB of Python objects)


# --- metadata --------------------------------------------------------------------------------------------------------


def _field(reader: GGUFReader, key: str, default: object = None) -> object:
    field = reader.get_field(key)
    return default if field is None else field.contents()


def read_info(reader: GGUFReader, path: Path) -> GGUFModelInfo:
    arch = str(_field(reader, "general.architecture", ""))
    if arch not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"The native GGUF loader runs Llama-family models; this file's architecture is {arch or 'unknown'!r}. "
            + USE_LLAMA_CPP, path=path)  # fmt: skip
    try:
        n_heads = int(_field(reader, f"{arch}.attention.head_count"))
        hidden = int(_field(reader, f"{arch}.embedding_length"))
        info = GGUFModelInfo(
            architecture=arch,
            n_layers=int(_field(reader, f"{arch}.block_count")),
            hidden=hidden,
            ffn=int(_field(reader, f"{arch}.feed_forward_length")),
            n_heads=n_heads,
            n_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", n_heads)),
            head_dim=int(_field(reader, f"{arch}.rope.dimension_count", hidden // n_heads)),
            context_length=int(_field(reader, f"{arch}.context_length", 2048)),
            rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
            rope_linear_factor=_rope_linear_factor(reader, arch, path),
            rms_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
            vocab_size=len(reader.get_field("tokenizer.ggml.tokens").data),
        )
    except (TypeError, AttributeError) as error:  # a required key is missing (None)
        raise ModelFormatError(f"GGUF metadata of a {arch} model is incomplete ({error})", path=path) from error
    return info


def _rope_linear_factor(reader: GGUFReader, arch: str, path: Path) -> float:
    kind = _field(reader, f"{arch}.rope.scaling.type", "none")
    if kind in ("none", None):
        return 1.0
    if kind != "linear":
        raise UnsupportedModelError(f"RoPE scaling {kind!r} is not supported by the native GGUF loader. "
                                    + USE_LLAMA_CPP, path=path)  # fmt: skip
    return float(_field(reader, f"{arch}.rope.scaling.factor", 1.0))


def _llama_config(info: GGUFModelInfo, context_length: int, tied: bool):
    from transformers import LlamaConfig

    rope = {"rope_type": "default", "rope_theta": info.rope_theta}
    if info.rope_linear_factor != 1.0:
        rope = {"rope_type": "linear", "rope_theta": info.rope_theta, "factor": info.rope_linear_factor}
    return LlamaConfig(
        vocab_size=info.vocab_size, hidden_size=info.hidden, intermediate_size=info.ffn,
        num_hidden_layers=info.n_layers, num_attention_heads=info.n_heads, num_key_value_heads=info.n_kv_heads,
        head_dim=info.head_dim, max_position_embeddings=context_length, rms_norm_eps=info.rms_eps,
        rope_parameters=rope, tie_word_embeddings=tied,
    )  # fmt: skip


# --- weights ---------------------------------------------------------------------------------------------------------


def _raw_rows(tensor: ReaderTensor) -> torch.Tensor:
    """The tensor's bytes as a (rows, row bytes) uint8 view of the memory map (no copy)."""
    data = np.asarray(tensor.data)
    return torch.from_numpy(data.view(np.uint8).reshape(data.shape[0] if data.ndim > 1 else 1, -1))


def _shape(tensor: ReaderTensor) -> tuple[int, ...]:
    return tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists dims innermost first


def _check_type(tensor: ReaderTensor, path: Path) -> None:
    if tensor.tensor_type not in gguf_torch.FORMATS:
        raise UnsupportedModelError(
            f"Tensor {tensor.name} is stored as {tensor.tensor_type.name}, which the native GGUF loader does not "
            f"support (it reads {', '.join(t.name for t in gguf_torch.FORMATS)}). " + USE_LLAMA_CPP,
            path=path,
        )


def unpermute_rows(rows: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's convert permutation of Q/K rows (RoPE pairs interleaved -> split halves per head).

    The converter did `w.reshape(n_head, 2, head_dim // 2, ...).swapaxes(1, 2)`; rows are whole quant rows, so the
    permutation moves block bytes without touching them.
    """
    n_rows, width = rows.shape
    return rows.reshape(n_heads, n_rows // n_heads // 2, 2, width).transpose(1, 2).reshape(n_rows, width).contiguous()


def _linear(tensor: ReaderTensor, path: Path, *, heads: int = 0) -> GGUFLinear:
    _check_type(tensor, path)
    out_features, in_features = _shape(tensor)
    rows = _raw_rows(tensor)
    if heads:
        rows = unpermute_rows(rows, heads)
    return GGUFLinear(rows, tensor.tensor_type, out_features, in_features)


def _norm_weight(tensor: ReaderTensor, path: Path) -> nn.Parameter:
    _check_type(tensor, path)
    values = gguf_torch.dequantize(_raw_rows(tensor), tensor.tensor_type, _shape(tensor))
    return nn.Parameter(values.to(torch.float32).clone(), requires_grad=False)


def _install_weights(model: nn.Module, tensors: dict[str, ReaderTensor], info: GGUFModelInfo, path: Path,
                     dtype: torch.dtype) -> None:  # fmt: skip
    def take(name: str) -> ReaderTensor:
        try:
            return tensors[name]
        except KeyError:
            raise ModelFormatError(f"GGUF file has no tensor {name}", path=path) from None

    embd = take("token_embd.weight")
    _check_type(embd, path)
    model.model.embed_tokens = GGUFEmbedding(_raw_rows(embd), embd.tensor_type, info.vocab_size, info.hidden, dtype)
    output = tensors.get("output.weight", embd)  # absent = tied to the embedding (shares its bytes)
    model.lm_head = _linear(output, path)
    model.model.norm.weight = _norm_weight(take("output_norm.weight"), path)
    for i, layer in enumerate(model.model.layers):
        heads = {"attn_q": info.n_heads, "attn_k": info.n_kv_heads}
        for gguf_name, attr in LINEARS.items():
            owner, child = attr.split(".")
            setattr(getattr(layer, owner), child, _linear(take(f"blk.{i}.{gguf_name}.weight"), path,
                                                          heads=heads.get(gguf_name, 0)))  # fmt: skip
        for gguf_name, attr in NORMS.items():
            getattr(layer, attr).weight = _norm_weight(take(f"blk.{i}.{gguf_name}.weight"), path)


def _meta_leftovers(model: nn.Module) -> list[str]:
    names = [n for n, p in model.named_parameters() if p.is_meta]
    return names + [n for n, b in model.named_buffers() if b.is_meta]


# --- devices ---------------------------------------------------------------------------------------------------------


def _activation_dtype(setting: str, on_gpu: bool) -> torch.dtype:
    if setting == "auto":
        return torch.float16 if on_gpu else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[setting]


def _place(model: nn.Module, n_layers: int, n_gpu_layers: int) -> str:
    """Put the first `n_gpu_layers` layers (and the embedding) on cuda:0, the rest on the CPU; describe the split."""
    n_gpu = min(max(n_gpu_layers, 0), n_layers) if torch.cuda.is_available() else 0
    if n_gpu == 0:
        return "cpu"
    if n_gpu == n_layers:
        model.to("cuda:0")
        return "cuda:0"
    from accelerate import dispatch_model  # adds hooks that move activations between the two devices

    device_map = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.norm": "cpu", "lm_head": "cpu"}
    device_map |= {f"model.layers.{i}": 0 if i < n_gpu else "cpu" for i in range(n_layers)}
    dispatch_model(model, device_map=device_map)
    return f"cuda:0 + cpu ({n_gpu}/{n_layers} layers on GPU)"


# --- build / load ----------------------------------------------------------------------------------------------------


def gguf_file(path: Path, settings: NativeGGUFSettings) -> Path:
    """The .gguf to load: `path` itself, `settings.file` inside the folder, or the folder's only .gguf."""
    if path.is_file():
        return path
    if settings.file:
        target = path / settings.file
        if not target.is_file():
            raise ModelNotFoundError(f"{settings.file} is not in {path}. Pick one of the folder's .gguf files.")
        return target
    files = sorted(path.glob("*.gguf"))
    if len(files) != 1:
        raise ModelFormatError(f"expected one .gguf file, found {len(files)}; set the 'file' setting", path=path)
    return files[0]


def build_module(path: Path, settings: NativeGGUFSettings) -> GGUFModule:
    """Read the GGUF at `path` (file or folder) and build the model on its devices, weights still in blocks."""
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    file = gguf_file(path, settings)
    reader = GGUFReader(file, "c")  # copy-on-write map: writable views for torch, pages shared with the page cache
    info = read_info(reader, file)
    tensors = {t.name: t for t in reader.tensors}
    context = min(settings.n_ctx, info.context_length) if settings.n_ctx > 0 else info.context_length
    on_gpu = settings.n_gpu_layers > 0 and torch.cuda.is_available()
    dtype = _activation_dtype(settings.dtype, on_gpu)
    config = _llama_config(info, context, tied="output.weight" not in tensors)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    _install_weights(model, tensors, info, file, dtype)
    model.model.rotary_emb = LlamaRotaryEmbedding(config)  # outside the meta block: real inv_freq
    if leftovers := _meta_leftovers(model):
        raise ModelFormatError(f"GGUF file lacks weights for {', '.join(leftovers[:5])}", path=file)
    model.eval()
    _set_activation_dtype(model, dtype)
    device = _place(model, info.n_layers, settings.n_gpu_layers)
    special = TokenizerMetadata.read(reader)
    # Drop the reader's metadata records (~165 MB of Python objects for a 49k vocabulary) before transformers parses
    # the file again for the tokenizer: the weights keep only the memory map alive. Both at once doubled the peak.
    del reader, tensors
    gc.collect()
    return GGUFModule(model, info, GGUFTokenizer.from_gguf(file, special), device)


def _set_activation_dtype(model: nn.Module, dtype: torch.dtype) -> None:
    """Activations (and the embedding's output) in `dtype`; RMSNorm weights stay float32."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    if dtype == torch.float32:
        return
    model.to(dtype=dtype)  # floating tensors only: the uint8 block bytes are untouched
    for module in model.modules():
        if isinstance(module, LlamaRMSNorm):
            module.to(torch.float32)


def model_bytes(module: nn.Module) -> MemoryReport:
    """Bytes of the weights (block bytes + fp32 norms) per device; tied tensors counted once."""
    seen: set[int] = set()
    ram, vram = 0, {}
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.untyped_storage().data_ptr() in seen:
            continue
        seen.add(tensor.untyped_storage().data_ptr())
        if tensor.is_cuda:
            vram[tensor.device.index] = vram.get(tensor.device.index, 0) + tensor.nbytes
        else:
            ram += tensor.nbytes
    return MemoryReport(ram_bytes=ram, vram_bytes=vram)


def load(path: Path, settings: NativeGGUFSettings, *, name: str) -> LoadedModel:
    from loaders.torch_lm import TorchCausalLM

    start = time.perf_counter()
    built = build_module(Path(path), settings)
    return TorchCausalLM(
        name, "gguf", Path(path), built.module, built.tokenizer, built.module.config.max_position_embeddings,
        built.device, time.perf_counter() - start, model_bytes(built.module),
    )  # fmt: skip
