"""The native GGUF loader's tokenizer: a `ModelTokenizer` built from a GGUF's `tokenizer.ggml.*` metadata.

BOS follows `loaders.bos`: prepended only when the file asks for it (`tokenizer.ggml.add_bos_token`, else
llama.cpp's default for the vocabulary), as llama.cpp does with the same file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gguf import GGUFReader, Keys

from loaders.bos import gguf_adds_bos, prepend_bos


def _field(reader: GGUFReader, key: str, default: object = None) -> object:
    field = reader.get_field(key)
    return default if field is None else field.contents()


@dataclass(frozen=True)
class TokenizerMetadata:
    """The special tokens, the BOS rule and the chat template of a GGUF, read before its reader is dropped."""

    bos_id: int | None
    eos_ids: tuple[int, ...]
    chat_template: str | None
    adds_bos: bool  # `loaders.bos.gguf_adds_bos` of the file

    @classmethod
    def read(cls, reader: GGUFReader) -> TokenizerMetadata:
        eos_ids = [_field(reader, f"tokenizer.ggml.{key}_token_id") for key in ("eos", "eot", "eom")]
        bos = _field(reader, "tokenizer.ggml.bos_token_id")
        template = _field(reader, "tokenizer.chat_template")
        adds_bos = gguf_adds_bos(_field(reader, Keys.Tokenizer.ADD_BOS), _text(reader, Keys.Tokenizer.MODEL),
                                 _text(reader, Keys.Tokenizer.PRE))  # fmt: skip
        return cls(bos_id=None if bos is None else int(bos),
                   eos_ids=tuple(dict.fromkeys(int(i) for i in eos_ids if i is not None)),
                   chat_template=str(template) if template is not None else None, adds_bos=adds_bos)  # fmt: skip


def _text(reader: GGUFReader, key: str) -> str | None:
    value = _field(reader, key)
    return None if value is None else str(value)


class GGUFTokenizer:
    """`ModelTokenizer` from a GGUF's `tokenizer.ggml.*` metadata (GPT-2 BPE or SentencePiece-style llama vocab).

    The vocabulary is turned into a `tokenizers` object by transformers' GGUF converter (the code transformers uses
    for `from_pretrained(..., gguf_file=)`); BOS/EOS ids and the chat template come straight from the metadata.
    """

    def __init__(
        self, backend, *, bos_id: int | None, eos_ids: tuple[int, ...], chat_template: str | None, adds_bos: bool
    ) -> None:
        self._backend = backend
        self.hf = backend  # the transformers tokenizer, as `HFTokenizer.hf` (the grammar engine reads its vocabulary)
        self.adds_bos = adds_bos
        self.bos_token_id = bos_id
        self.bos_token = backend.convert_ids_to_tokens(bos_id) if bos_id is not None else None
        self.eos_token_ids = eos_ids
        self.eos_token = backend.convert_ids_to_tokens(eos_ids[0]) if eos_ids else None
        self.chat_template = chat_template

    @classmethod
    def from_gguf(cls, file: Path, special: TokenizerMetadata) -> GGUFTokenizer:
        from transformers import AutoTokenizer

        backend = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
        return cls(backend, bos_id=special.bos_id, eos_ids=special.eos_ids, chat_template=special.chat_template,
                   adds_bos=special.adds_bos)  # fmt: skip

    def encode(self, text: str, *, add_bos: bool) -> list[int]:
        ids = self._backend.encode(text, add_special_tokens=False)
        return prepend_bos(ids, self.bos_token_id, add=add_bos and self.adds_bos)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

