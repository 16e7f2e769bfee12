"""The one BOS rule of every loader: BOS is prepended only when the model's tokenizer asks for it, and never twice.

This is llama.cpp's rule, and text-generation-webui's. What "asks for it" means depends on the format:
- a GGUF file: its `tokenizer.ggml.add_bos_token`; when the key is absent, llama.cpp's default for the vocabulary
  (`gguf_adds_bos`);
- a Hugging Face tokenizer: whatever it does itself with `add_special_tokens=True` (`hf_adds_bos`).
The tokenizers encode without special tokens and then call `prepend_bos`, so the same step runs everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# llama.cpp's `llama_vocab::impl::load` (src/llama-vocab.cpp): the vocabularies that add BOS when the GGUF does not
# say. SentencePiece (`llama`) and WordPiece (`bert`) do; T5 (`t5`), RWKV and GPT-2-style BPE (`gpt2`) do not...
_VOCABS_WITH_BOS = frozenset({"llama", "bert"})
# ...except the BPE pre-tokenizers llama.cpp marks as BOS-adding (Llama 3, Falcon 3, Mistral's Tekken, Chameleon).
_BPE_PRE_WITH_BOS = frozenset({"llama3", "llama-v3", "llama-bpe", "falcon3", "tekken", "chameleon"})


def gguf_adds_bos(metadata_value: object, vocab_model: str | None, pre: str | None = None) -> bool:
    """Whether a GGUF's tokenizer adds BOS: `tokenizer.ggml.add_bos_token` when present (`metadata_value`, None when
    absent), else llama.cpp's default for `tokenizer.ggml.model` (`vocab_model`) and `tokenizer.ggml.pre` (`pre`)."""
    if metadata_value is not None:
        return bool(metadata_value)
    if vocab_model == "gpt2":
        return pre in _BPE_PRE_WITH_BOS
    return vocab_model in _VOCABS_WITH_BOS


def hf_adds_bos(tokenizer: Any) -> bool:
    """Whether a transformers tokenizer puts BOS first when it adds its special tokens (Llama's does, SmolLM2's and
    Qwen's do not): asked by encoding one character, as that covers every tokenizer class and post-processor."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def prepend_bos(ids: Sequence[int], bos_id: int | None, *, add: bool) -> list[int]:
    """`ids` with BOS in front when `add` (the caller asked and the tokenizer adds BOS), unless it is already there
    (a prompt whose text starts with the BOS token's string)."""
    ids = list(ids)
    if add and bos_id is not None and ids[:1] != [bos_id]:
        return [bos_id, *ids]
    return ids
