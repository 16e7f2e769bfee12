"""The native GGUF loader's tokenizer: a `ModelTokenizer` built from a GGUF's `tokenizer.ggml.*` metadata."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gguf import GGUFReader


def _field(reader: GGUFReader, key: str, default: object = None) -> object:
    field = reader.get_field(key)
    return default if field is None else field.contents()


@dataclass(frozen=True)
class TokenizerMetadata:
    """The special tokens and chat template of a GGUF, read before its reader is dropped."""

    bos_id: int | None
    eos_ids: tuple[int, ...]
    chat_template: str | None

    @classmethod
    def read(cls, reader: GGUFReader) -> TokenizerMetadata:
        eos_ids = [_field(reader, f"tokenizer.ggml.{key}_token_id") for key in ("eos", "eot", "eom")]
        bos = _field(reader, "tokenizer.ggml.bos_token_id")
        template = _field(reader, "tokenizer.chat_template")
        return cls(bos_id=None if bos is None else int(bos),
                   eos_ids=tuple(dict.fromkeys(int(i) for i in eos_ids if i is not None)),
                   chat_template=str(template) if template is not None else None)  # fmt: skip


class GGUFTokenizer:
    """`ModelTokenizer` from a GGUF's `tokenizer.ggml.*` metadata (GPT-2 BPE or SentencePiece-style llama vocab).

    The vocabulary is turned into a `tokenizers` object by transformers' GGUF converter (the code transformers uses
    for `from_pretrained(..., gguf_file=)`); BOS/EOS ids and the chat template come straight from the metadata.
    """

    def __init__(self, backend, *, bos_id: int | None, eos_ids: tuple[int, ...], chat_template: str | None) -> None:
        self._backend = backend
        self.bos_token_id = bos_id
        self.bos_token = backend.convert_ids_to_tokens(bos_id) if bos_id is not None else None
        self.eos_token_ids = eos_ids
        self.eos_token = backend.convert_ids_to_tokens(eos_ids[0]) if eos_ids else None
        self.chat_template = chat_template

    @classmethod
    def from_gguf(cls, file: Path, special: TokenizerMetadata) -> GGUFTokenizer:
        from transformers import AutoTokenizer

        backend = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
        return cls(backend, bos_id=special.bos_id, eos_ids=special.eos_ids, chat_template=special.chat_template)

    def encode(self, text: str, *, add_bos: bool) -> list[int]:
        ids = self._backend.encode(text, add_special_tokens=False)
        if add_bos and self.bos_token_id is not None and ids[:1] != [self.bos_token_id]:
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

