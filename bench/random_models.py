"""Llama-shaped models with random weights for the GPU suite, built offline: in memory (fp16) or written as real model
files (a GPTQ folder, a GGUF file, each with a small BPE tokenizer) so Corral's own loaders, plans and estimates run
on them exactly as on a downloaded model.

Weights are random but scaled like trained ones (|w| around 0.01), so activations stay finite through 40 layers.
Speed does not depend on the values; greedy decoding bans EOS so every row generates its full length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTION = LINEARS[:4]
GGUF_LINEARS = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
                "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}  # fmt: skip
BOS, EOS = 3, 4  # "<t0>", "<t1>" in `vocabulary`
# fp16 scale values per block type that keep |w| near 0.01 with random quants (offsets as in tests/gguf_blocks.py)
GGUF_SCALES = {Q.Q4_K: ((0, 6.5e-5), (2, 6.5e-5)), Q.Q4_1: ((0, 1e-3), (2, -7.5e-3)), Q.Q8_0: ((0, 1e-4),),
               Q.Q4_0: ((0, 1e-3),), Q.Q6_K: ((-2, 5e-4),)}  # fmt: skip


@dataclass(frozen=True)
class Shape:
    """A Llama architecture's sizes."""

    name: str
    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    context: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def linear(self, name: str) -> tuple[int, int]:
        """(in, out) features of a decoder layer's Linear."""
        kv = self.kv_heads * self.head_dim
        return {"q_proj": (self.hidden, self.hidden), "k_proj": (self.hidden, kv), "v_proj": (self.hidden, kv),
                "o_proj": (self.hidden, self.hidden), "gate_proj": (self.hidden, self.ffn),
                "up_proj": (self.hidden, self.ffn), "down_proj": (self.ffn, self.hidden)}[name]  # fmt: skip

    def config(self):
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.ffn, num_hidden_layers=self.layers,
            num_attention_heads=self.heads, num_key_value_heads=self.kv_heads, max_position_embeddings=self.context,
            bos_token_id=BOS, eos_token_id=EOS, tie_word_embeddings=False, dtype="float16",
        )  # fmt: skip

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


LLAMA2_13B = Shape("Llama-2-13B", 5120, 13824, 40, 40, 40, 32000, 4096)
TINY = Shape("tiny", 256, 512, 2, 4, 4, 512, 256)


# --- tokenizer --------------------------------------------------------------------------------------------------------


def vocabulary(size: int) -> list[str]:
    """"a", "b", "ab" and filler tokens: the smallest BPE both `tokenizers` and Transformers' GGUF reader accept."""
    return ["a", "b", "ab", *(f"<t{i}>" for i in range(size - 3))]


def write_tokenizer(folder: Path, vocab: int) -> None:
    """tokenizer.json + tokenizer_config.json of a BPE over `vocabulary(vocab)` (BOS <t0>, EOS <t1>)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokens = {token: i for i, token in enumerate(vocabulary(vocab))}
    backend = Tokenizer(models.BPE(tokens, merges=[("a", "b")]))
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<t0>", eos_token="<t1>")
    fast.save_pretrained(folder)


# --- fp16 in memory --------------------------------------------------------------------------------------------------


@torch.no_grad()
def random_llama(shape: Shape, dtype: torch.dtype, device: str) -> torch.nn.Module:
    """A Transformers LlamaForCausalLM with random weights, built straight on `device`."""
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = shape.config()
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(dtype)  # cast while on meta: fp32 first would double the peak
    model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        else:
            param.normal_(0.0, 0.02, generator=generator)
    model.model.rotary_emb = LlamaRotaryEmbedding(config).to(device)  # its buffer was left uninitialised
    return model.eval()


# --- GPTQ folder -----------------------------------------------------------------------------------------------------


def write_gptq(folder: Path, shape: Shape, *, bits: int, group: int, act_order: bool, device: str) -> Path:
    """A GPTQ checkpoint as AutoGPTQ writes it (v1 zeros), random ints and small scales, plus config and tokenizer."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(device=device).manual_seed(1)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(shape.layers):
        for name in LINEARS:
            owner = "self_attn" if name in ATTENTION else "mlp"
            prefix = f"model.layers.{layer}.{owner}.{name}"
            tensors |= _gptq_linear(prefix, *shape.linear(name), bits, group, act_order, generator, device)
    tensors |= _float_tensors(shape, generator, device)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    shape.config().to_json_file(folder / "config.json")
    quant = {"bits": bits, "group_size": group, "desc_act": act_order, "sym": True, "checkpoint_format": "gptq"}
    (folder / "quantize_config.json").write_text(json.dumps(quant))
    write_tokenizer(folder, shape.vocab)
    return folder


def _gptq_linear(prefix: str, n_in: int, n_out: int, bits: int, group: int, act_order: bool,
                 generator: torch.Generator, device: str) -> dict[str, torch.Tensor]:  # fmt: skip
    t = random_gptq(n_in, n_out, bits, group, act_order, generator, device)
    parts = {"qweight": t.qweight, "qzeros": t.qzeros, "scales": t.scales, "g_idx": t.g_idx}
    return {f"{prefix}.{key}": value.cpu() for key, value in parts.items()}


def random_gptq(n_in: int, n_out: int, bits: int, group: int, act_order: bool, generator: torch.Generator,
                device: str | torch.device):  # fmt: skip
    """A GPTQ Linear's tensors (`kernels.gptq_torch.GPTQTensors`, v1 zeros) made on `device`: every packed word
    random (any bit pattern is a valid set of integers), scales around 1e-3."""
    from kernels.gptq_torch import GPTQTensors

    def words(*size: int) -> torch.Tensor:
        return torch.randint(-(2**31), 2**31 - 1, size, generator=generator, dtype=torch.int32, device=device)

    groups = 1 if group == -1 else n_in // group
    g_idx = torch.arange(n_in, device=device, dtype=torch.int32) // (n_in if group == -1 else group)
    if act_order:
        g_idx = g_idx[torch.randperm(n_in, generator=generator, device=device)]
    scales = (torch.rand(groups, n_out, generator=generator, device=device) * 1e-3 + 5e-4).half()
    return GPTQTensors(words(n_in * bits // 32, n_out), words(groups, n_out * bits // 32), scales, g_idx, bits, 1)


def _float_tensors(shape: Shape, generator: torch.Generator, device: str) -> dict[str, torch.Tensor]:
    def normal(*size: int) -> torch.Tensor:
        return (torch.randn(size, generator=generator, device=device) * 0.02).half().cpu()

    tensors = {"model.embed_tokens.weight": normal(shape.vocab, shape.hidden),
               "lm_head.weight": normal(shape.vocab, shape.hidden),
               "model.norm.weight": torch.ones(shape.hidden, dtype=torch.float16)}  # fmt: skip
    for layer in range(shape.layers):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"model.layers.{layer}.{norm}.weight"] = torch.ones(shape.hidden, dtype=torch.float16)
    return tensors


# --- GGUF file -------------------------------------------------------------------------------------------------------


def write_gguf(path: Path, shape: Shape, qtype: GGMLQuantizationType, *, device: str) -> Path:
    """A Llama GGUF with every matrix (embedding and output too) in `qtype`, norms in F32, a GPT-2 style vocabulary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(path, "llama")
    writer.add_block_count(shape.layers)
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.hidden)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocabulary(shape.vocab))
    writer.add_token_types([1] * shape.vocab)
    writer.add_token_merges(["a b"])
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    generator = torch.Generator(device=device).manual_seed(2)
    ones = np.ones(shape.hidden, dtype=np.float32)
    writer.add_tensor("token_embd.weight", random_blocks(qtype, shape.vocab, shape.hidden, generator, device),
                      raw_dtype=qtype)  # fmt: skip
    for layer in range(shape.layers):
        for name, gguf_name in GGUF_LINEARS.items():
            n_in, n_out = shape.linear(name)
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", random_blocks(qtype, n_out, n_in, generator, device),
                              raw_dtype=qtype)  # fmt: skip
        writer.add_tensor(f"blk.{layer}.attn_norm.weight", ones)
        writer.add_tensor(f"blk.{layer}.ffn_norm.weight", ones)
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", random_blocks(qtype, shape.vocab, shape.hidden, generator, device),
                      raw_dtype=qtype)  # fmt: skip
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def random_blocks(qtype: GGMLQuantizationType, rows: int, cols: int, generator: torch.Generator,
                  device: str) -> np.ndarray:  # fmt: skip
    """(rows, row bytes) uint8 in host memory, for the GGUF writer."""
    return random_block_tensor(qtype, rows, cols, generator, device).cpu().numpy()


def random_block_tensor(qtype: GGMLQuantizationType, rows: int, cols: int, generator: torch.Generator,
                        device: str | torch.device) -> torch.Tensor:  # fmt: skip
    """(rows, row bytes) uint8 on `device`: random quants, fp16 scales set so the weights stay small."""
    block, type_size = GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block
    blocks = torch.randint(0, 256, (n_blocks, type_size), generator=generator, dtype=torch.uint8, device=device)
    for offset, value in GGUF_SCALES[qtype]:
        start = offset % type_size
        scale = torch.full((n_blocks,), value, dtype=torch.float16, device=device)
        blocks[:, start : start + 2] = scale.view(torch.uint8).reshape(n_blocks, 2)
    return blocks.reshape(rows, -1)
