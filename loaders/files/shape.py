"""A model's shape: the dimensions that decide its memory and how to build it, from config.json or GGUF metadata.

`ModelShape.from_config` reads a Transformers config (a multimodal model's `text_config` when present);
`ModelShape.from_gguf` reads GGUF metadata through the `gguf` package's own key names (`Keys.LLM.BLOCK_COUNT`...),
with llama.cpp's defaults: head size = `attention.key_length`, else width / heads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gguf import Keys

from loaders.errors import ModelFormatError

DEFAULT_ROPE_THETA = 10000.0


@dataclass(frozen=True)
class ModelShape:
    """`head_dim` × `n_kv_heads` is one token's K (or V) width per layer."""

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
    rope_theta: float = DEFAULT_ROPE_THETA
    rope_scaling: str = "none"  # none | linear | yarn...
    rope_factor: float = 1.0
    rms_eps: float = 1e-5

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        text = config.get("text_config")
        cfg = {**config, **text} if isinstance(text, dict) else dict(config)
        hidden = _first(cfg, "hidden_size", "n_embd", "d_model")
        heads = _first(cfg, "num_attention_heads", "n_head", "num_heads")
        kv_heads = _int(cfg.get("num_key_value_heads")) or (1 if cfg.get("multi_query") else heads)
        return cls(
            n_layers=_first(cfg, "num_hidden_layers", "n_layer", "num_layers"),
            hidden=hidden,
            n_heads=heads,
            n_kv_heads=kv_heads,
            head_dim=_int(cfg.get("head_dim")) or hidden // heads,
            vocab=_first(cfg, "vocab_size"),
            ffn=_first(cfg, "intermediate_size", "n_inner", "ffn_dim", default=4 * hidden),
            context_max=_first(cfg, "max_position_embeddings", "n_positions", "seq_length", default=2048),
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            arch=str(cfg.get("model_type", "llama")),
            rope_theta=rope_theta(cfg) or DEFAULT_ROPE_THETA,
            rms_eps=float(cfg.get("rms_norm_eps") or 1e-5),
        )  # fmt: skip

    @classmethod
    def from_gguf(cls, metadata: dict[str, Any], tensor_names: Iterable[str] = ()) -> ModelShape:
        """From GGUF metadata; tied when the file has no `output.weight`."""
        arch = str(metadata.get(Keys.General.ARCHITECTURE, "llama"))

        def key(template: str, default: Any = None) -> Any:
            value = metadata.get(template.format(arch=arch), default)
            return max(value) if isinstance(value, list) and value else value  # per-layer arrays (e.g. OpenELM)

        hidden, heads = key(Keys.LLM.EMBEDDING_LENGTH), key(Keys.Attention.HEAD_COUNT)
        layers = key(Keys.LLM.BLOCK_COUNT)
        if not all(_int(v) for v in (hidden, heads, layers)):
            raise ModelFormatError(f"GGUF metadata lacks {arch}.block_count / embedding_length / attention.head_count")
        names = set(tensor_names)
        tokens = metadata.get(Keys.Tokenizer.LIST) or ()
        return cls(
            n_layers=int(layers),
            hidden=int(hidden),
            n_heads=int(heads),
            n_kv_heads=int(key(Keys.Attention.HEAD_COUNT_KV, heads)),
            head_dim=int(key(Keys.Attention.KEY_LENGTH) or int(hidden) // int(heads)),
            vocab=int(key(Keys.LLM.VOCAB_SIZE) or len(tokens) or 32000),
            ffn=int(key(Keys.LLM.FEED_FORWARD_LENGTH) or 4 * int(hidden)),
            context_max=int(key(Keys.LLM.CONTEXT_LENGTH) or 2048),
            tied_embeddings=bool(names) and "output.weight" not in names,
            arch=arch,
            rope_theta=float(key(Keys.Rope.FREQ_BASE) or DEFAULT_ROPE_THETA),
            rope_scaling=str(key(Keys.Rope.SCALING_TYPE) or "none"),
            rope_factor=float(key(Keys.Rope.SCALING_FACTOR) or 1.0),
            rms_eps=float(key(Keys.Attention.LAYERNORM_RMS_EPS) or 1e-5),
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

    def linear_params(self) -> int:
        """Weights of every decoder layer's Linear layers together."""
        return sum(i * o for _, i, o in self.linears()) * self.n_layers

    def layer_params(self) -> int:
        return sum(i * o for _, i, o in self.linears()) + 2 * self.hidden

    def other_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2) + self.hidden


def rope_theta(config: dict[str, Any]) -> float | None:
    """`rope_theta` (Transformers 4) or `rope_parameters.rope_theta` (Transformers 5, possibly per layer type)."""
    if isinstance(config.get("rope_theta"), int | float):
        return float(config["rope_theta"])
    params = config.get("rope_parameters")
    if not isinstance(params, dict):
        return None
    if isinstance(params.get("rope_theta"), int | float):
        return float(params["rope_theta"])
    nested = params.get("full_attention") or next((v for v in params.values() if isinstance(v, dict)), None)
    if isinstance(nested, dict) and isinstance(nested.get("rope_theta"), int | float):
        return float(nested["rope_theta"])
    return None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _first(cfg: dict[str, Any], *keys: str, default: int = 0) -> int:
    for key in keys:
        if _int(cfg.get(key)):
            return int(cfg[key])
    if default:
        return default
    raise ModelFormatError(f"config.json has none of {', '.join(keys)}")
