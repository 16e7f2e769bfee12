"""`kernels/cpu_attention.py` against PyTorch's SDPA with the key / value heads repeated (what grouped-query
attention means), on random tensors with and without masks, and on a small random Llama switched to it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from kernels import cpu_attention

HEADS, KV_HEADS, DIM = 9, 3, 64  # SmolLM2-135M's heads


class Attention(torch.nn.Module):
    """What the function reads from Transformers' attention modules."""

    num_key_value_groups = HEADS // KV_HEADS


def reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[b, heads, q, d] -> [b, q, heads, d], every KV head repeated for its query heads, in fp32; causal without a
    mask (as Transformers' prefill)."""
    key, value = (t.repeat_interleave(HEADS // KV_HEADS, dim=1).float() for t in (key, value))
    causal = mask is None and query.shape[2] > 1
    mask = mask.float() if mask is not None and mask.is_floating_point() else mask
    return F.scaled_dot_product_attention(query.float(), key, value, attn_mask=mask, is_causal=causal).transpose(1, 2)


def random_inputs(q_len: int, k_len: int, dtype: torch.dtype, batch: int = 2) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(q_len * 1000 + k_len)
    query = torch.randn(batch, HEADS, q_len, DIM, generator=generator).to(dtype)
    key, value = (torch.randn(batch, KV_HEADS, k_len, DIM, generator=generator).to(dtype) for _ in range(2))
    return query, key, value


def masks(batch: int, heads: int, q_len: int, k_len: int, dtype: torch.dtype) -> dict[str, torch.Tensor | None]:
    """No mask, a boolean mask (the first row's positions 1-4 hidden; causal for q_len > 1), the same as an additive
    mask."""
    keep = torch.ones(batch, heads, q_len, k_len, dtype=torch.bool)
    keep[0, ..., 1:5] = False
    keep = keep.tril(k_len - q_len)
    additive = torch.zeros(keep.shape, dtype=dtype).masked_fill(~keep, torch.finfo(dtype).min)
    return {"none": None, "bool": keep, "additive": additive}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
@pytest.mark.parametrize(("q_len", "mask_heads"), [(1, 1), (1, HEADS), (7, 1)],
                         ids=["decode", "per-head-mask", "prefill"])  # fmt: skip
def test_matches_sdpa_with_repeated_heads(dtype: torch.dtype, mask_kind: str, q_len: int, mask_heads: int) -> None:
    k_len = 37 if q_len == 1 else q_len  # a prefill without a cache
    query, key, value = random_inputs(q_len, k_len, dtype)
    mask = masks(2, mask_heads, q_len, k_len, dtype)[mask_kind]
    out, weights = cpu_attention.sdpa_attention(Attention(), query, key, value, mask, scaling=DIM**-0.5)
    expected = reference(query, key, value, mask)
    assert weights is None and out.shape == (2, q_len, HEADS, DIM) and out.dtype == dtype and out.is_contiguous()
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(out.float(), expected, atol=tolerance, rtol=tolerance), (out.float() - expected).abs().max()


def test_the_masked_positions_do_not_count() -> None:
    query, key, value = random_inputs(1, 37, torch.float32)
    mask = masks(2, 1, 1, 37, torch.float32)["bool"]
    out, _ = cpu_attention.sdpa_attention(Attention(), query, key, value, mask)
    key[0, :, 1:5], value[0, :, 1:5] = 100.0, -100.0  # what the mask hides
    again, _ = cpu_attention.sdpa_attention(Attention(), query, key, value, mask)
    assert torch.allclose(out, again, atol=1e-6)


def tiny_llama(attention: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip
    config._attn_implementation = attention
    return LlamaForCausalLM(config).eval()


@torch.inference_mode()
def test_a_llama_switched_to_it_decodes_as_with_sdpa() -> None:
    from transformers import DynamicCache

    model = tiny_llama("sdpa")
    switched = copy.deepcopy(model)
    assert cpu_attention.use_on(switched) and switched.config._attn_implementation == cpu_attention.NAME
    ids = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # the second row left-padded: a mask reaches the one-token steps
    for attention_mask in (None, mask):
        caches = DynamicCache(config=model.config), DynamicCache(config=model.config)
        tokens, keep = ids, attention_mask
        for _ in range(4):  # the prefill, then one-token steps
            a, b = (m(input_ids=tokens, attention_mask=keep, past_key_values=c, use_cache=True).logits[:, -1]
                    for m, c in zip((model, switched), caches, strict=True))  # fmt: skip
            assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
            tokens = a.argmax(-1, keepdim=True)
            keep = None if keep is None else torch.cat([keep, torch.ones_like(tokens)], dim=1)


def test_models_not_on_sdpa_are_left_alone() -> None:
    model = tiny_llama("eager")
    assert not cpu_attention.use_on(model) and model.config._attn_implementation == "eager"
