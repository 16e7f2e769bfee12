"""Fill in the middle: a model's own FIM tokens and the infilling prompt built from them, as token ids.

The tokens come from what the model ships, never from its name: a GGUF file's metadata ids
(`tokenizer.ggml.fim_pre_token_id` / `fim_suf_token_id` / `fim_mid_token_id`, or the older `prefix_token_id`...),
which is what llama.cpp's own infill uses; otherwise the tokenizer's vocabulary, looked up for each family's
spelling (`STYLES`). The prompt is prefix-suffix-middle (PSM), as every family was trained:
- StarCoder (and Qwen2.5-Coder, DeepSeek-Coder spellings): `<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>`;
- CodeLlama, as Meta's reference (`infilling_prompt_tokens`) builds it: BOS, `<PRE>`, the prefix encoded as usual
  (SentencePiece puts a space in front), `<SUF>`, the suffix encoded *without* that space, `<MID>`; written out
  that is `<PRE> {prefix} <SUF>{suffix} <MID>`.
The ids are built token by token (special tokens by id, text encoded alone), so no spelling of the text form can
change what the model sees. A model without FIM tokens gets `None` here and a clear message from the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

from loaders.base import ModelTokenizer
from loaders.files.gguf_header import GGUFHeader

FILL_ME = "<FILL_ME>"
# Meta's encode_infilling: encode "☺" + text and drop the two tokens the anchor gives, so the text gets no space.
_NO_SPACE_ANCHOR = "☺"


@dataclass(frozen=True)
class FimStyle:
    """One family's spelling of its FIM tokens (alternatives in order) and how its prompt is written out."""

    name: str
    prefix: tuple[str, ...]
    suffix: tuple[str, ...]
    middle: tuple[str, ...]
    ends: tuple[str, ...]  # tokens that end the middle besides EOS (CodeLlama's <EOT>, StarCoder's <fim_pad>...)
    suffix_without_space: bool = False  # SentencePiece families: the suffix is encoded without the leading space
    text: str = "{pre}{prefix}{suf}{suffix}{mid}"  # the prompt written out, for --show-prompt and logs


STYLES = (
    FimStyle("StarCoder", ("<fim_prefix>",), ("<fim_suffix>",), ("<fim_middle>",),
             ("<fim_pad>", "<|endoftext|>", "<file_sep>")),
    FimStyle("Qwen2.5-Coder", ("<|fim_prefix|>",), ("<|fim_suffix|>",), ("<|fim_middle|>",),
             ("<|fim_pad|>", "<|endoftext|>", "<|file_sep|>", "<|file_separator|>")),
    FimStyle("DeepSeek-Coder", ("<｜fim▁begin｜>",), ("<｜fim▁hole｜>",), ("<｜fim▁end｜>",), ("<|EOT|>",)),
    FimStyle("CodeLlama", ("▁<PRE>", "<PRE>"), ("▁<SUF>", "<SUF>"), ("▁<MID>", "<MID>"), ("▁<EOT>", "<EOT>"),
             suffix_without_space=True, text="<PRE> {prefix} <SUF>{suffix} <MID>"),
)  # fmt: skip
_GGUF_KEYS = (
    ("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.fim_mid_token_id"),
    ("tokenizer.ggml.prefix_token_id", "tokenizer.ggml.suffix_token_id", "tokenizer.ggml.middle_token_id"),
)
_GGUF_END_KEYS = ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.fim_pad_token_id")


@dataclass(frozen=True)
class FimTokens:
    """A model's FIM tokens: ids, their text, and the tokens that end a middle."""

    style: FimStyle
    prefix_id: int
    suffix_id: int
    middle_id: int
    end_ids: tuple[int, ...]
    texts: tuple[str, str, str]  # the three tokens as the vocabulary writes them
    source: str  # "GGUF metadata" | "the tokenizer's vocabulary"

    def prompt_text(self, prefix: str, suffix: str) -> str:
        pre, suf, mid = self.texts
        return self.style.text.format(pre=pre, suf=suf, mid=mid, prefix=prefix, suffix=suffix)


def find_fim(tokenizer: ModelTokenizer, header: GGUFHeader | None = None) -> FimTokens | None:
    """The model's FIM tokens: from GGUF metadata when the model is a GGUF file, else from its vocabulary."""
    if header is not None:
        found = _from_gguf(header)
        if found is not None:
            return found
    for style in STYLES:
        ids = [_single_id(tokenizer, spellings) for spellings in (style.prefix, style.suffix, style.middle)]
        if all(i is not None for i, _ in ids):
            ends = tuple(i for i, _ in (_single_id(tokenizer, (end,)) for end in style.ends) if i is not None)
            texts = tuple(text for _, text in ids)
            return FimTokens(style, ids[0][0], ids[1][0], ids[2][0], ends, texts, "the tokenizer's vocabulary")
    return None


def infill_ids(tokenizer: ModelTokenizer, fim: FimTokens, prefix: str, suffix: str, *, add_bos: bool) -> list[int]:
    """The PSM prompt as ids: [BOS] <prefix-token> prefix <suffix-token> suffix <middle-token>."""
    head = tokenizer.encode("", add_bos=add_bos)
    suffix_ids = _without_space(tokenizer, suffix) if fim.style.suffix_without_space else \
        tokenizer.encode(suffix, add_bos=False)  # fmt: skip
    return [*head, fim.prefix_id, *tokenizer.encode(prefix, add_bos=False), fim.suffix_id, *suffix_ids,
            fim.middle_id]  # fmt: skip


def split_fill_me(text: str) -> tuple[str, str] | None:
    """(prefix, suffix) around the one `<FILL_ME>` in `text`; None when there is none. Two or more raise
    `ValueError` (which hole to fill would be a guess)."""
    count = text.count(FILL_ME)
    if count == 0:
        return None
    if count > 1:
        raise ValueError(f"The text holds {FILL_ME} {count} times; mark one place to fill.")
    prefix, _, suffix = text.partition(FILL_ME)
    return prefix, suffix


def _single_id(tokenizer: ModelTokenizer, spellings: tuple[str, ...]) -> tuple[int | None, str]:
    """The id of the first spelling that the tokenizer encodes as one token which decodes back to it."""
    for text in spellings:
        ids = tokenizer.encode(text, add_bos=False)
        if len(ids) == 1 and tokenizer.decode(ids, skip_special_tokens=False).strip() in (text, text.lstrip("▁")):
            return ids[0], text
    return None, ""


def _without_space(tokenizer: ModelTokenizer, text: str) -> list[int]:
    """`text` encoded without the leading space a SentencePiece tokenizer adds (Meta's `encode_infilling`)."""
    anchor = tokenizer.encode(_NO_SPACE_ANCHOR, add_bos=False)
    ids = tokenizer.encode(_NO_SPACE_ANCHOR + text, add_bos=False)
    if ids[: len(anchor)] != anchor:  # the anchor merged with the text: no clean cut, keep the plain encoding
        return tokenizer.encode(text, add_bos=False)
    return ids[len(anchor) :]


def _from_gguf(header: GGUFHeader) -> FimTokens | None:
    for keys in _GGUF_KEYS:
        ids = [header.get(key) for key in keys]
        if all(isinstance(i, int) and i >= 0 and header.token(i) is not None for i in ids):
            texts = tuple(str(header.token(i)) for i in ids)
            ends = tuple(header.get(k) for k in _GGUF_END_KEYS if isinstance(header.get(k), int))
            return FimTokens(_gguf_style(texts, header), ids[0], ids[1], ids[2], ends, texts, "GGUF metadata")
    return None


def _gguf_style(texts: tuple[str, ...], header: GGUFHeader) -> FimStyle:
    for style in STYLES:
        if texts[0] in style.prefix:
            return style
    spm = header.get("tokenizer.ggml.model") == "llama"  # SentencePiece: the suffix goes without the space
    return FimStyle("GGUF metadata", (texts[0],), (texts[1],), (texts[2],), (), suffix_without_space=spm)
