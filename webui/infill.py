"""Code infilling ("fill in the middle"): one turn builder for the Notebook's fill mode, the API's `suffix` and
`app.py --infill`.

The turn is built on the model that will run it (`loaders.fim` finds its FIM tokens: GGUF metadata, else its
vocabulary) as token ids, so the special tokens go in by id. A model without FIM tokens gets a `GenerationError`
that says so. The middle never repeats the suffix: generation stops at the model's end tokens and at the suffix's
first line, and a prompt that cannot fit the context with `max_new_tokens` is refused rather than cut (cutting
would drop the FIM structure).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from loaders.base import GenerationParams
from loaders.errors import GenerationError
from loaders.fim import FILL_ME, FimTokens, find_fim, infill_ids, split_fill_me
from webui.generation import Turn, TurnBuilder

if TYPE_CHECKING:
    from webui.model_service import LoadedInfo

MIN_SUFFIX_STOP = 3  # a shorter first line ("}", ")") would also end legitimate code inside the middle


def fill_parts(text: str) -> tuple[str, str]:
    """(prefix, suffix) around the `<FILL_ME>` of `text`, or `GenerationError` saying how to mark the hole."""
    try:
        parts = split_fill_me(text)
    except ValueError as error:
        raise GenerationError(str(error)) from None
    if parts is None:
        raise GenerationError(f"Write {FILL_ME} where the code is missing: the text before it is the prefix, the "
                              "text after it the suffix.")  # fmt: skip
    return parts


def model_fim(info: LoadedInfo) -> FimTokens:
    """The loaded model's FIM tokens, or a `GenerationError` naming the model."""
    model = info.model
    if not hasattr(model.tokenizer, "encode"):
        raise GenerationError(f"{info.view.name} runs on a remote engine, whose tokens Corral cannot see; infilling "
                              "needs a local model.")  # fmt: skip
    files = info.view.detection.files
    fim = find_fim(model.tokenizer, files.header if files is not None and files.format == "gguf" else None)
    if fim is None:
        raise GenerationError(
            f"{info.view.name} has no fill-in-the-middle tokens (StarCoder's <fim_prefix>, CodeLlama's <PRE>...), "
            "so it cannot fill a gap: load a code model trained for infilling (CodeLlama, StarCoder, DeepSeek-Coder, "
            "Qwen2.5-Coder), or use the Notebook's normal mode to continue the text."
        )
    return fim


def infill_turn(prefix: str, suffix: str, params: Callable[[LoadedInfo], GenerationParams]) -> TurnBuilder:
    """The turn that fills the gap between `prefix` and `suffix` on the model that runs it."""

    def build(info: LoadedInfo) -> Turn:
        fim = model_fim(info)
        base = params(info)
        ids = infill_ids(info.model.tokenizer, fim, prefix, suffix, add_bos=base.add_bos_token)
        _check_fits(info, len(ids), base.max_new_tokens)
        return Turn(fim.prompt_text(prefix, suffix), _infill_params(base, fim, suffix), tuple(ids))

    return build


def _infill_params(params: GenerationParams, fim: FimTokens, suffix: str) -> GenerationParams:
    """Stops at the end tokens (shown as text, so special tokens are not skipped) and at the suffix's first line."""
    tokenizer_texts = [*fim.texts]
    stops = [*params.stop, *tokenizer_texts, *_end_texts(fim)]
    first_line = next((line.strip() for line in suffix.splitlines() if line.strip()), "")
    if len(first_line) >= MIN_SUFFIX_STOP:
        stops.append(first_line)
    return dataclasses.replace(params, stop=tuple(dict.fromkeys(stops)), skip_special_tokens=False)


def _end_texts(fim: FimTokens) -> list[str]:
    return [t.lstrip("▁") for t in fim.style.ends] + list(fim.style.ends)


def _check_fits(info: LoadedInfo, prompt_tokens: int, max_new_tokens: int) -> None:
    context = info.model.context_length
    if context and prompt_tokens + max_new_tokens > context:
        raise GenerationError(
            f"The prefix and suffix take {prompt_tokens} tokens; with {max_new_tokens} new tokens that is more than "
            f"the context of {context}. Shorten the code around {FILL_ME} or lower max new tokens."
        )
