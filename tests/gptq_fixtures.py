"""GPTQ checkpoints of SmolLM2-135M-Instruct, one per TheBloke-style branch, built once and cached.

The quantizer is round-to-nearest per group with GPTQ's min/max ranges (asymmetric, or symmetric with zero
(maxq + 1) / 2) and a small clipping search (GPTQ's `mse` grid); with act-order the input columns are visited in
decreasing weight-column norm and groups are formed in that order, which gives a real, scattered `g_idx`.
Packing is AutoGPTQ's layout (`kernels.gptq_torch.pack_rows` / `pack_cols`, tested bit for bit against it).

Each branch folder looks like a TheBloke branch (config.json, quantize_config.json or `quantization_config`, the
weights under the names older repos used, the tokenizer); next to it, `<branch>.ints.safetensors` keeps the
quantizer's own integers, zero points, scales and g_idx for the tests. Cache: `tests/realmodel.cache_root()`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from kernels import gptq_torch
from tests import realmodel

BUILD_VERSION = 1  # bump when the quantizer or the layout changes: the cache folder name carries it
LINEAR_NAMES = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


@dataclass(frozen=True)
class Branch:
    name: str
    bits: int
    group_size: int
    desc_act: bool
    sym: bool = True
    checkpoint_format: str = "gptq"  # gptq (v1) | gptq_v2
    layout: str = "quantize_config"  # quantize_config | quantization_config | base_name | sharded


BRANCHES: dict[str, Branch] = {
    b.name: b
    for b in (
        Branch("main", 4, 128, False, layout="quantization_config"),
        Branch("gptq-4bit-32g-actorder_True", 4, 32, True),
        Branch("gptq-8bit--1g-actorder_True", 8, -1, True, layout="sharded"),
        Branch("gptq-3bit-128g-actorder_False", 3, 128, False, sym=False, layout="base_name"),
        Branch("gptq-2bit-64g-actorder_True", 2, 64, True, sym=False),
        Branch("gptq_v2-4bit-64g-actorder_True", 4, 64, True, sym=False, checkpoint_format="gptq_v2"),
    )
}


@dataclass
class Quantized:
    """The quantizer's output for one Linear, in original column order."""

    q: torch.Tensor  # int32 [in, out]
    zeros: torch.Tensor  # int32 [n_groups, out], the real zero points
    scales: torch.Tensor  # fp16 [n_groups, out]
    g_idx: torch.Tensor  # int32 [in]


def quantize(weight: torch.Tensor, branch: Branch) -> Quantized:
    """Quantize a Linear weight [out, in] per group (in act-order when `branch.desc_act`)."""
    out_f, in_f = weight.shape
    size = in_f if branch.group_size == -1 else branch.group_size
    order = torch.argsort(weight.pow(2).sum(0), descending=True, stable=True) if branch.desc_act else None
    w = weight if order is None else weight[:, order]
    n_groups = -(-in_f // size)
    # zero columns pad the last group (576 = 4.5 x 128): ranges include 0 anyway, and 0 quantizes exactly
    padded = torch.nn.functional.pad(w, (0, n_groups * size - in_f))
    groups = padded.t().reshape(n_groups, size, out_f)  # [G, size, out] in visiting order
    scales, zeros = _ranges(groups, branch)
    maxq = 2**branch.bits - 1
    q = torch.clamp(torch.round(groups / scales.float()[:, None]) + zeros[:, None], 0, maxq)
    q = q.reshape(n_groups * size, out_f)[:in_f].to(torch.int32)
    g_idx = torch.arange(in_f, dtype=torch.int32) // size
    if order is not None:  # back to the original column order; g_idx says where each column's group is
        inverse = torch.argsort(order)
        q, g_idx = q[inverse], g_idx[inverse]
    return Quantized(q=q, zeros=zeros.to(torch.int32), scales=scales, g_idx=g_idx)


def _ranges(groups: torch.Tensor, branch: Branch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (group, column) fp16 scale and integer zero, the clipping factor chosen by squared error."""
    maxq = 2**branch.bits - 1
    best_err = torch.full(groups.shape[::2], float("inf"))
    best_scale = torch.zeros_like(best_err, dtype=torch.float16)
    best_zero = torch.zeros_like(best_err)
    for shrink in (1.0, 0.95, 0.9, 0.85, 0.8, 0.75):
        lo = torch.clamp(groups.min(1).values * shrink, max=0.0)
        hi = torch.clamp(groups.max(1).values * shrink, min=0.0)
        if branch.sym:
            hi = torch.maximum(-lo, hi)
            lo = -hi
        hi = torch.where((lo == 0) & (hi == 0), torch.ones_like(hi), hi)
        scale = ((hi - lo) / maxq).half()
        zero = torch.full_like(hi, (maxq + 1) // 2) if branch.sym else torch.round(-lo / scale.float())
        if branch.checkpoint_format == "gptq":  # v1 stores zero - 1: a zero of 0 cannot be written
            zero = torch.clamp(zero, min=1)
        q = torch.clamp(torch.round(groups / scale.float()[:, None]) + zero[:, None], 0, maxq)
        err = ((q - zero[:, None]) * scale.float()[:, None] - groups).pow(2).sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        best_zero = torch.where(better, zero, best_zero)
    return best_scale, best_zero


def pack(quantized: Quantized, branch: Branch) -> dict[str, torch.Tensor]:
    """The checkpoint tensors of one layer, as AutoGPTQ writes them."""
    offset = 1 if branch.checkpoint_format == "gptq" else 0
    return {
        "qweight": gptq_torch.pack_rows(quantized.q, branch.bits),
        "qzeros": gptq_torch.pack_cols(quantized.zeros - offset, branch.bits),
        "scales": quantized.scales,
        "g_idx": quantized.g_idx,
    }


def quantize_config(branch: Branch) -> dict:
    config = {
        "bits": branch.bits,
        "group_size": branch.group_size,
        "damp_percent": 0.1,
        "desc_act": branch.desc_act,
        "static_groups": False,
        "sym": branch.sym,
        "true_sequential": True,
        "model_name_or_path": None,
        "model_file_base_name": "model",
        "quant_method": "gptq",
    }
    if branch.layout == "base_name":
        config["model_file_base_name"] = f"gptq_model-{branch.bits}bit-{branch.group_size}g"
    if branch.checkpoint_format != "gptq":
        config["checkpoint_format"] = branch.checkpoint_format
    return config


def _build(tmp: Path, branch: Branch, source: Path, ints_path: Path) -> None:
    state = load_file(source / "model.safetensors")
    config = json.loads((source / "config.json").read_text())
    tensors: dict[str, torch.Tensor] = {}
    ints: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        prefix = name.removesuffix(".weight")
        if name.endswith(".weight") and prefix.endswith(LINEAR_NAMES):
            quantized = quantize(value, branch)
            tensors.update({f"{prefix}.{k}": v for k, v in pack(quantized, branch).items()})
            ints.update(
                {f"{prefix}.{k}": getattr(quantized, k).contiguous() for k in ("q", "zeros", "scales", "g_idx")}
            )
        else:
            tensors[name] = value.half()
    _write_weights(tmp, tensors, branch)
    qconfig = quantize_config(branch)
    config["dtype"] = "float16"
    if branch.layout == "quantization_config":
        config["quantization_config"] = qconfig
    else:
        (tmp / "quantize_config.json").write_text(json.dumps(qconfig, indent=2))
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    for file in TOKENIZER_FILES:
        if (source / file).exists():
            shutil.copy2(source / file, tmp / file)
    save_file(ints, ints_path)


def _write_weights(folder: Path, tensors: dict[str, torch.Tensor], branch: Branch) -> None:
    meta = {"format": "pt"}
    if branch.layout == "base_name":
        save_file(tensors, folder / f"{quantize_config(branch)['model_file_base_name']}.safetensors", metadata=meta)
    elif branch.layout == "sharded":
        names = sorted(tensors)
        halves = [names[: len(names) // 2], names[len(names) // 2 :]]
        weight_map = {}
        for i, part in enumerate(halves, start=1):
            file = f"model-{i:05d}-of-00002.safetensors"
            save_file({n: tensors[n] for n in part}, folder / file, metadata=meta)
            weight_map.update(dict.fromkeys(part, file))
        index = {"metadata": {}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    else:
        save_file(tensors, folder / "model.safetensors", metadata=meta)


def branch_root() -> Path:
    return realmodel.cache_root(f"SmolLM2-135M-Instruct-GPTQ-b{BUILD_VERSION}")


def smollm2_gptq(branch_name: str) -> Path:
    """The folder of one branch (built on first use, ~10 s)."""
    branch = BRANCHES[branch_name]
    source = realmodel.smollm2_hf()
    ints_path = branch_root() / f"{branch_name}.ints.safetensors"
    target = branch_root() / branch_name
    if target.exists() and not ints_path.exists():
        shutil.rmtree(target)  # half-finished earlier build
    return realmodel._build_once(target, lambda tmp: _build(tmp, branch, source, ints_path))


def quantizer_ints(branch_name: str) -> dict[str, Quantized]:
    """The quantizer's integers of a branch, by layer prefix (`model.layers.0.mlp.down_proj`)."""
    smollm2_gptq(branch_name)
    flat = load_file(branch_root() / f"{branch_name}.ints.safetensors")
    prefixes = {name.rsplit(".", 1)[0] for name in flat}
    return {p: Quantized(*(flat[f"{p}.{k}"] for k in ("q", "zeros", "scales", "g_idx"))) for p in sorted(prefixes)}


if __name__ == "__main__":  # warm the cache: python -m tests.gptq_fixtures
    for name in BRANCHES:
        print(smollm2_gptq(name))
