"""Attention for the PyTorch backends on the CPU: Transformers' own SDPA path, except for one-token decode steps of
grouped-query attention.

For a single query token Transformers calls `scaled_dot_product_attention(..., enable_gqa=True)` when there is no
mask (its rule for CUDA, applied everywhere). On the CPU that path is ~8x slower in bf16 than packing each KV head's
query heads into the query length (measured, torch 2.13, SmolLM2's 9 heads on 3 KV heads: 425 us vs 53 us per
layer at 512 cached tokens, 1.76 ms vs 0.21 ms at 2048), which was most of a bf16 decode step. This module packs
them for every one-token step on the CPU, masks shared by the heads included, and leaves everything else (prefill,
other devices, position biases, soft-capping) to `transformers.integrations.sdpa_attention`.

`use_on(model)` switches a loaded Transformers model that runs on "sdpa" to it (`register()` adds it to
Transformers' attention and mask registries under `NAME`, masks made as for "sdpa"); models on another
implementation are left alone.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

NAME = "corral_cpu_sdpa"


def sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                   **kwargs: Any) -> tuple[torch.Tensor, None]:  # fmt: skip
    """query [b, heads, q, d], key / value [b, kv_heads, k, d] -> ([b, q, heads, d], None), as Transformers'."""
    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, q_len, dim = query.shape
    shared_mask = attention_mask is None or attention_mask.shape[1] == 1
    plain = kwargs.get("position_bias") is None and kwargs.get("softcap") is None and kwargs.get("cache") is None
    if query.device.type != "cpu" or q_len != 1 or groups == 1 or not shared_mask or not plain:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)  # fmt: skip
    packed = query.reshape(batch, heads // groups, groups, dim)  # head h = kv * groups + j, as repeat_kv orders them
    out = F.scaled_dot_product_attention(packed, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def register() -> str:
    """Make `NAME` an attention implementation Transformers knows (idempotent); returns it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, sdpa_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def use_on(module: torch.nn.Module) -> bool:
    """Switch a loaded Transformers model whose attention is "sdpa" to `NAME`; False when it was left as it is."""
    config = getattr(module, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not hasattr(module, "set_attn_implementation"):
        return False
    module.set_attn_implementation(register())
    return config._attn_implementation == NAME
