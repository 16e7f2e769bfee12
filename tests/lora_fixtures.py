"""LoRA adapters for the tests, made with `peft` itself and cached (`tests/realmodel.cache_root()`).

- `smollm2_adapter(name)`: PEFT adapters of SmolLM2-135M-Instruct with non-zero random weights (peft's
  `init_lora_weights=False`), small enough to keep the model coherent and large enough to change its greedy reply;
- `gpt2_adapter()`: an adapter of a tiny GPT-2 (another architecture, other module names);
- `small_llama_adapter()`: an adapter of a tiny Llama (the same module names as SmolLM2, other shapes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tests import realmodel

BUILD_VERSION = 3


@dataclass(frozen=True)
class AdapterSpec:
    rank: int
    alpha: int
    targets: tuple[str, ...]
    seed: int
    std: float  # the A and B weights are scaled to this standard deviation


SPECS = {
    "attn": AdapterSpec(8, 16, ("q_proj", "k_proj", "v_proj", "o_proj"), 1, 0.07),
    "mlp": AdapterSpec(4, 4, ("gate_proj", "up_proj", "down_proj"), 2, 0.12),
}


def _root() -> Path:
    return realmodel.cache_root(f"lora-adapters-b{BUILD_VERSION}")


def smollm2_adapter(name: str) -> Path:
    """A PEFT adapter folder for SmolLM2 (`attn` or `mlp`), built on first use (~3 s)."""
    spec = SPECS[name]

    def build(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(realmodel.smollm2_hf(), dtype=torch.float32)
        _save_adapter(base, spec, tmp, "HuggingFaceTB/SmolLM2-135M-Instruct")

    return realmodel._build_once(_root() / f"smollm2-{name}", build)


def gpt2_adapter() -> Path:
    def build(tmp: Path) -> None:
        from transformers import GPT2Config, GPT2LMHeadModel

        base = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=64))
        _save_adapter(base, AdapterSpec(4, 8, ("c_attn",), 3, 0.05), tmp, "openai-community/gpt2")

    return realmodel._build_once(_root() / "tiny-gpt2", build)


def small_llama_adapter() -> Path:
    def build(tmp: Path) -> None:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=128)  # fmt: skip
        _save_adapter(LlamaForCausalLM(config), AdapterSpec(4, 8, ("q_proj", "v_proj"), 4, 0.05), tmp,
                      "meta-llama/Llama-2-7b-hf")  # fmt: skip

    return realmodel._build_once(_root() / "tiny-llama", build)


def _save_adapter(base: torch.nn.Module, spec: AdapterSpec, folder: Path, base_name: str) -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(spec.seed)
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, target_modules=list(spec.targets),
                        init_lora_weights=False, lora_dropout=0.0)  # fmt: skip
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * spec.std)
    model.peft_config["default"].base_model_name_or_path = base_name
    model.save_pretrained(folder)
