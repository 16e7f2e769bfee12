"""Native GGUF loader: runs a Llama-family GGUF file on Corral's own kernels, weights kept in their block format.

Carries out a plan (`loaders.plan`: the file, dtype, GPU layers, context, weight layouts): the model shape read by
the model-files layer -> a transformers `LlamaConfig`, the model built on the `meta` device, each Linear replaced by
a `GGUFLinear` holding its bytes (a memory map of its own; Q/K rows un-permuted back to the Hugging Face RoPE
layout), the embedding by a `GGUFEmbedding`, norms in the compute dtype; the tokenizer from the `tokenizer.ggml.*`
metadata. Layers can be split between CUDA and the CPU (`n_gpu_layers`, first layers on the GPU, which keep their
blocks for the Triton kernels). On the CPU each Linear is then prepared as the plan says: Q4_0/Q4_1/Q4_K repacked
for the int4 kernel, other types dequantized once or per call. A repacked tensor's map is closed, so the file's
pages leave the process once the load is done. Anything else (another architecture, an i-quant...) is refused with
an `UnsupportedModelError` that points at the llama.cpp loader.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFReader, ReaderTensor
from torch import nn

from kernels import cpu_attention, gguf_torch
from kernels.gguf_linear import GGUFEmbedding, GGUFLinear
from loaders.base import LoadedModel, MemoryReport
from loaders.errors import ModelFormatError, UnsupportedModelError
from loaders.files import ModelShape
from loaders.gguf_tokenizer import GGUFTokenizer, TokenizerMetadata
from loaders.plan import LoadPlan
from loaders.registry import loader_for_paths, plan_for_path
from loaders.settings import NativeGGUFSettings

LOADER_NAME = "gguf"
LINEARS = {  # GGUF tensor (after blk.N.) -> attribute path in a transformers LlamaDecoderLayer
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}  # fmt: skip
NORMS = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
USE_LLAMA_CPP = "Load it with the llama.cpp loader instead."


@dataclass
class GGUFModule:
    """A built native GGUF model before it is wrapped for the engine."""

    module: nn.Module  # transformers LlamaForCausalLM with GGUF modules inside
    shape: ModelShape
    tokenizer: GGUFTokenizer
    device: str  # the weights' tensors keep their memory maps alive; the reader itself is dropped (its
    # metadata records, 49152 tokens and merges as numpy views, take ~165 MB of Python objects)
    modes: dict[str, int] = field(default_factory=dict)  # GGUFLinear mode -> number of Linear layers


# --- metadata --------------------------------------------------------------------------------------------------------


def _llama_config(info: ModelShape, context_length: int, tied: bool):
    from transformers import LlamaConfig

    rope = {"rope_type": "default", "rope_theta": info.rope_theta}
    if info.rope_scaling == "linear" and info.rope_factor != 1.0:
        rope = {"rope_type": "linear", "rope_theta": info.rope_theta, "factor": info.rope_factor}
    return LlamaConfig(
        vocab_size=info.vocab, hidden_size=info.hidden, intermediate_size=info.ffn,
        num_hidden_layers=info.n_layers, num_attention_heads=info.n_heads, num_key_value_heads=info.n_kv_heads,
        head_dim=info.head_dim, max_position_embeddings=context_length, rms_norm_eps=info.rms_eps,
        rope_parameters=rope, tie_word_embeddings=tied,
    )  # fmt: skip


# --- weights ---------------------------------------------------------------------------------------------------------


def _raw_rows(tensor: ReaderTensor) -> torch.Tensor:
    """The tensor's bytes as a (rows, row bytes) uint8 view of the reader's memory map (no copy)."""
    data = np.asarray(tensor.data)
    return torch.from_numpy(data.view(np.uint8).reshape(data.shape[0] if data.ndim > 1 else 1, -1))


def _mapped_rows(path: Path, tensor: ReaderTensor) -> torch.Tensor:
    """The tensor's bytes as (rows, row bytes) uint8 in a copy-on-write memory map of their own (no copy): it is
    unmapped when the last tensor using it goes, so a weight repacked at load leaves no file pages behind."""
    rows = _raw_rows(tensor)
    mapped = np.memmap(path, dtype=np.uint8, mode="c", offset=tensor.data_offset, shape=(tensor.n_bytes,))
    return torch.from_numpy(mapped).view(rows.shape)


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
    rows = _mapped_rows(path, tensor)
    if heads:
        rows = unpermute_rows(rows, heads)
    return GGUFLinear(rows, tensor.tensor_type, out_features, in_features)


def _norm_weight(tensor: ReaderTensor, path: Path, dtype: torch.dtype) -> nn.Parameter:
    _check_type(tensor, path)
    values = gguf_torch.dequantize(_raw_rows(tensor), tensor.tensor_type, _shape(tensor))
    return nn.Parameter(values.to(dtype).clone(), requires_grad=False)  # as HF holds norms: in the compute dtype


def _install_weights(model: nn.Module, tensors: dict[str, ReaderTensor], info: ModelShape, path: Path,
                     dtype: torch.dtype) -> None:  # fmt: skip
    def take(name: str) -> ReaderTensor:
        try:
            return tensors[name]
        except KeyError:
            raise ModelFormatError(f"GGUF file has no tensor {name}", path=path) from None

    embd = take("token_embd.weight")
    _check_type(embd, path)
    model.model.embed_tokens = GGUFEmbedding(_mapped_rows(path, embd), embd.tensor_type, info.vocab, info.hidden,
                                             dtype)  # fmt: skip
    if "output.weight" in tensors:
        model.lm_head = _linear(tensors["output.weight"], path)
    else:  # tied to the embedding: the same bytes (and memory map) until the head is prepared
        model.lm_head = GGUFLinear(model.model.embed_tokens.qweight, embd.tensor_type, info.vocab, info.hidden)
    model.model.norm.weight = _norm_weight(take("output_norm.weight"), path, dtype)
    for i, layer in enumerate(model.model.layers):
        heads = {"attn_q": info.n_heads, "attn_k": info.n_kv_heads}
        for gguf_name, attr in LINEARS.items():
            owner, child = attr.split(".")
            setattr(getattr(layer, owner), child, _linear(take(f"blk.{i}.{gguf_name}.weight"), path,
                                                          heads=heads.get(gguf_name, 0)))  # fmt: skip
        for gguf_name, attr in NORMS.items():
            getattr(layer, attr).weight = _norm_weight(take(f"blk.{i}.{gguf_name}.weight"), path, dtype)


def _meta_leftovers(model: nn.Module) -> list[str]:
    names = [n for n, p in model.named_parameters() if p.is_meta]
    return names + [n for n, b in model.named_buffers() if b.is_meta]


# --- devices ---------------------------------------------------------------------------------------------------------


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


def build_module(path: Path, settings: NativeGGUFSettings) -> GGUFModule:
    """Read the GGUF at `path` (file or folder) and build it as planned for this machine."""
    return build_planned(plan_for_path(LOADER_NAME, Path(path), settings))


def build_planned(plan: LoadPlan) -> GGUFModule:
    """Build the model of `plan` on its devices, weights still in blocks."""
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    file, shape = plan.opens[0], plan.files.shape
    reader = GGUFReader(file, "c")  # copy-on-write map: writable views for torch, pages shared with the page cache
    tensors = {t.name: t for t in reader.tensors}
    dtype = getattr(torch, plan.dtype)
    config = _llama_config(shape, plan.context, tied="output.weight" not in tensors)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    _install_weights(model, tensors, shape, file, dtype)
    # Outside the meta block: real inv_freq, kept in float32 (RoPE angles at long positions need its precision).
    model.model.rotary_emb = LlamaRotaryEmbedding(config)
    if leftovers := _meta_leftovers(model):
        raise ModelFormatError(f"GGUF file lacks weights for {', '.join(leftovers[:5])}", path=file)
    model.eval()
    device = _place(model, shape.n_layers, plan.n_gpu_layers)
    if device == "cpu":
        cpu_attention.use_on(model)
    modes = _prepare_layers(model, plan, dtype)
    special = TokenizerMetadata.read(reader)
    # Drop the reader's metadata records (~165 MB of Python objects for a 49k vocabulary) before transformers parses
    # the file again for the tokenizer: the weights keep only their own maps alive. Both at once doubled the peak.
    del reader, tensors
    gc.collect()
    return GGUFModule(model, shape, GGUFTokenizer.from_gguf(file, special), device, modes)


def _prepare_layers(model: nn.Module, plan: LoadPlan, dtype: torch.dtype) -> dict[str, int]:
    """Each Linear on the CPU as the plan says (`GGUFLinear.prepare`); those on a GPU keep their blocks."""
    modes: dict[str, int] = {}
    for layer in (m for m in model.modules() if isinstance(m, GGUFLinear)):
        mode = layer.mode
        if layer.qweight.device.type == "cpu":
            mode = layer.prepare(dtype=dtype, cache=plan.weight_cache == "dequantized cache",
                                 integer=plan.integer_kernels)  # fmt: skip
        modes[mode] = modes.get(mode, 0) + 1
    return modes


def model_bytes(module: nn.Module) -> MemoryReport:
    """Bytes of the weights (block bytes, repacked or dequantized copies, norms) per device; tied tensors once."""
    from loaders.torch_lm import memory_of

    prepared = [t for m in module.modules() if isinstance(m, GGUFLinear) for t in m.prepared_tensors()]
    return memory_of([*module.parameters(), *module.buffers(), *prepared])


MODE_LABELS = {"int4": "int4", "cache": "dequantized cache", "per-call": "per-call", "unprepared": "blocks on the GPU"}


def weight_summary(modes: dict[str, int]) -> str:
    """What the Linear layers run on, as `LoadPlan.weight_summary` says it ("dequantized cache, int4")."""
    return ", ".join(sorted({MODE_LABELS[mode] for mode in modes}))


load = loader_for_paths(LOADER_NAME)


def load_plan(plan: LoadPlan, settings: NativeGGUFSettings, *, name: str) -> LoadedModel:
    from loaders.torch_lm import TorchCausalLM

    start = time.perf_counter()
    built = build_planned(plan)
    model = TorchCausalLM(name, LOADER_NAME, plan.files.path, built.module, built.tokenizer, plan.context,
                          built.device, time.perf_counter() - start, model_bytes(built.module), plan=plan)  # fmt: skip
    model.weight_cache = weight_summary(built.modes)
    return model
