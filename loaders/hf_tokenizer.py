"""`ModelTokenizer` over a Hugging Face tokenizer, for every loader that reads a Transformers-style folder
(Transformers, GPTQ): special-token parsing, the BOS rule, every end-of-reply id, and the chat template.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loaders.bos import hf_adds_bos, prepend_bos
from loaders.errors import ModelFormatError

log = logging.getLogger(__name__)


class HFTokenizer:
    """Wraps a transformers tokenizer.

    BOS follows the tokenizer (`loaders.bos`, the rule of every loader): `encode(add_bos=True)` prepends BOS only
    for tokenizers that add one themselves (Llama, Mistral), never for those that do not (SmolLM2, Qwen), whose
    `bos_token` may be a chat marker such as `<|im_start|>`.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        extra_eos_ids: Sequence[int] = (),
        chat_template: str | None = None,
        adds_bos: bool | None = None,
    ) -> None:
        self.hf = tokenizer
        self.bos_token = tokenizer.bos_token
        self.eos_token = tokenizer.eos_token
        self.bos_token_id = tokenizer.bos_token_id
        self.eos_token_ids = _unique_ids([tokenizer.eos_token_id, *extra_eos_ids])
        self.chat_template = chat_template or _template_text(tokenizer.chat_template)
        self.adds_bos = hf_adds_bos(tokenizer) if adds_bos is None else adds_bos
        # The Rust tokenizer decodes ~6x faster than the Python wrapper; the engine decodes every token.
        self._fast_decode = getattr(tokenizer, "backend_tokenizer", None)

    @classmethod
    def from_folder(cls, folder: Path, *, trust_remote_code: bool = False) -> HFTokenizer:
        """Load the tokenizer of a model folder; generation_config.json adds its EOS ids."""
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, json.JSONDecodeError) as error:
            raise ModelFormatError(
                f"The tokenizer could not be read: {error}. The folder needs tokenizer.json or tokenizer.model "
                "with tokenizer_config.json; download the model again.",
                path=folder,
            ) from error
        template = None
        if not tokenizer.chat_template and (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        return cls(tokenizer, extra_eos_ids=generation_eos_ids(folder), chat_template=template)

    def encode(self, text: str, *, add_bos: bool) -> list[int]:
        ids = self.hf(text, add_special_tokens=False)["input_ids"]
        return prepend_bos(ids, self.bos_token_id, add=add_bos and self.adds_bos)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        if self._fast_decode is not None:
            return self._fast_decode.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)


def generation_eos_ids(folder: Path) -> tuple[int, ...]:
    """`eos_token_id` (int or list) of generation_config.json; () when the file is absent."""
    path = folder / "generation_config.json"
    if not path.is_file():
        return ()
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise ModelFormatError(f"generation_config.json is not valid JSON: {error}", path=path) from error
    return _unique_ids(value if isinstance(value, list) else [value])


def _unique_ids(values: Sequence[Any]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(int(v) for v in values if v is not None))


def _template_text(template: str | dict[str, str] | None) -> str | None:
    """Tokenizers may ship several named templates; the engine uses the default one."""
    if isinstance(template, dict):
        return template.get("default") or next(iter(template.values()), None)
    return template or None
