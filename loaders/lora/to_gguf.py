"""A PEFT LoRA adapter written as a GGUF LoRA for a GGUF base model, so llama.cpp can apply it (gguf-py's writer).

llama.cpp reads LoRA adapters as GGUF only (`general.type` adapter, `adapter.type` lora, `adapter.lora.alpha`, and
`<tensor>.weight.lora_a` [rank, in] / `.lora_b` [out, rank] next to the base's tensor names), as its own
`convert_lora_to_gguf.py` writes them. This module does the same for the architectures whose tensors it knows how
the converter lays out: tensor names from gguf-py's `TensorNameMap`; for `llama`, the rows of Q and K are permuted
as `convert_hf_to_gguf.py` permutes the base's (only B, the output side, carries rows). The file is written once
per (adapter, base architecture and heads) next to the adapter, to a temporary name and renamed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from loaders.errors import UnsupportedModelError
from loaders.files.adapter import PEFT_PREFIX, AdapterFiles
from loaders.files.gguf_header import GGUFHeader

# GGUF architectures whose Linear weights the converter stores as the Transformers checkpoint has them, except for
# the listed row permutation of Q / K (convert_hf_to_gguf.py: LlamaModel.permute).
CONVERTIBLE = {"llama": True, "qwen2": False, "qwen3": False}


def converted_path(adapter: AdapterFiles, header: GGUFHeader) -> Path:
    """Where the GGUF copy of `adapter` for a base like `header` lives (a hidden file in the adapter's folder)."""
    arch = header.architecture
    heads, kv_heads = _heads(header)
    return adapter.path / f".corral-lora-{arch}-h{heads}-kv{kv_heads}.gguf"


def to_gguf(adapter: AdapterFiles, header: GGUFHeader, model: str) -> Path:
    """The GGUF LoRA of a PEFT `adapter` for the GGUF base `header` (converted now unless already up to date)."""
    arch = header.architecture
    if arch not in CONVERTIBLE:
        raise UnsupportedModelError(
            f"{adapter.name} is a PEFT adapter and {model} a GGUF model of architecture {arch}, which Corral cannot "
            "convert adapters for; convert it with llama.cpp's convert_lora_to_gguf.py, or load the model with the "
            "transformers loader"
        )
    if (adapter.config or {}).get("use_dora"):
        raise UnsupportedModelError(f"{adapter.name} is a DoRA adapter, which llama.cpp does not apply; load "
                                    f"{model} with the transformers loader to use it")  # fmt: skip
    target = converted_path(adapter, header)
    if target.is_file() and target.stat().st_mtime >= adapter.weights.stat().st_mtime:
        return target
    tensors = _gguf_tensors(adapter, header, permute=CONVERTIBLE[arch])
    _write(target, arch, adapter, tensors)
    return target


def gguf_names(adapter: AdapterFiles, header: GGUFHeader) -> dict[str, str | None]:
    """PEFT target module -> the base GGUF tensor it adapts (without `.weight`; None: the GGUF has none)."""
    import gguf

    arch = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}.get(header.architecture)
    if arch is None:
        return dict.fromkeys(adapter.targets)
    names = gguf.get_tensor_name_map(arch, int(header.arch_key(gguf.Keys.LLM.BLOCK_COUNT, 0)))
    base = {t.name for t in header.tensors}
    mapped = {target: names.get_name(target, try_suffixes=(".weight",)) for target in adapter.targets}
    return {target: name if name and f"{name}.weight" in base else None for target, name in mapped.items()}


def _gguf_tensors(adapter: AdapterFiles, header: GGUFHeader, *, permute: bool) -> dict[str, np.ndarray]:
    heads, kv_heads = _heads(header)
    state = {k.removeprefix(PEFT_PREFIX): v.float() for k, v in load_file(adapter.weights).items()}
    names = gguf_names(adapter, header)
    out: dict[str, np.ndarray] = {}
    for pair in adapter.pairs:
        name = names[pair.target]
        if name is None:
            raise UnsupportedModelError(f"The adapter {adapter.name} adapts {pair.target}, which the GGUF model has "
                                        "no tensor for; it was made for another architecture")  # fmt: skip
        a, b = state[f"{pair.target}.lora_A.weight"], state[f"{pair.target}.lora_B.weight"]
        if permute and name.endswith(("attn_q", "attn_k")):
            b = _permute_rows(b, heads if name.endswith("attn_q") else kv_heads)
        out[f"{name}.weight.lora_a"], out[f"{name}.weight.lora_b"] = a.numpy(), b.contiguous().numpy()
    return out


def _permute_rows(rows: torch.Tensor, n_heads: int) -> torch.Tensor:
    """convert_hf_to_gguf's Q/K permutation (RoPE halves -> interleaved pairs), on the output rows."""
    return rows.reshape(n_heads, 2, rows.shape[0] // n_heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _heads(header: GGUFHeader) -> tuple[int, int]:
    import gguf

    heads = int(header.arch_key(gguf.Keys.Attention.HEAD_COUNT, 0) or 0)
    return heads, int(header.arch_key(gguf.Keys.Attention.HEAD_COUNT_KV, heads) or heads)


def _alpha(adapter: AdapterFiles) -> float:
    """llama.cpp scales by alpha / rank; rsLoRA's alpha / sqrt(rank) is the same with alpha times sqrt(rank)."""
    if (adapter.config or {}).get("use_rslora"):
        return adapter.alpha * adapter.rank**0.5
    return adapter.alpha


def _write(target: Path, arch: str, adapter: AdapterFiles, tensors: dict[str, np.ndarray]) -> None:
    import gguf

    partial = target.with_name(target.name + ".partial")
    writer = gguf.GGUFWriter(partial, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, _alpha(adapter))
    writer.add_name(adapter.name)
    for name, data in tensors.items():
        writer.add_tensor(name, data.astype(np.float32))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(partial, target)
