"""The generation engine: the one entry point from a prompt to streamed text, for every loader.

The loader yields token ids (`LoadedModel.generate_tokens`); this module does everything else once for all
backends: prompt encoding (BOS rule, left truncation), incremental detokenization, stop strings, cancellation and
the statistics shown after each reply. It imports neither gradio nor torch. The two kinds of model are told apart
explicitly: a `TextStreamingModel` (a remote engine) gets the prompt as text and has no token steps (counting tokens
on it is a `GenerationError` saying so); stop strings, cancellation and statistics stay shared.

Detokenization decodes a sliding window of a few tokens, as text-generation-inference does (`prefix`/`read`
offsets), so each token costs two tiny decodes whatever the reply's length; a window ending in U+FFFD (an
incomplete UTF-8 character) is held back until the character completes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from loaders.base import (
    AnyModel,
    DecodeInfo,
    GenerationParams,
    LoadedModel,
    ModelTokenizer,
    TextStreamingModel,
    TextUsage,
)
from loaders.errors import GenerationError

REPLACEMENT_CHAR = "\ufffd"


@dataclass
class GenerationStats:
    prompt_tokens: int
    new_tokens: int
    seconds: float  # from the first request for a token (prefill included) to the end
    stop_reason: str  # "eos" | "stop_string" | "max_tokens" | "cancelled"
    cached_tokens: int = 0  # prompt tokens the backend reused from its cache instead of computing them

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def describe_stats(stats: GenerationStats) -> str:
    """The line every front end shows after a reply: speed, the prompt (how much of it came from the cache) and
    why it stopped."""
    prompt = f"prompt {stats.prompt_tokens} tokens"
    if stats.cached_tokens:
        prompt += f" ({stats.cached_tokens} cached, {stats.prompt_tokens - stats.cached_tokens} new)"
    return (
        f"{stats.new_tokens} tokens in {stats.seconds:.1f} s ({stats.tokens_per_second:.1f} tokens/s), "
        f"{prompt}, stopped by {stats.stop_reason.replace('_', ' ')}."
    )


def generate(
    model: AnyModel, prompt: str, params: GenerationParams, *, cancel: threading.Event | None = None
) -> Generation:
    """Start a generation: iterate the result for text deltas. Raises `GenerationError` for an unusable prompt."""
    if not is_token_model(model):
        if not prompt:
            raise GenerationError("The prompt is empty: write something for the model to continue.")
        if params.constraint is not None:  # a remote engine gets text only: the grammar could not be enforced
            raise GenerationError(
                f"{model.name} runs on a remote engine: a JSON schema or grammar (the Parameters tab's reply format) "
                "needs a local model. Set the reply format to None."
            )
        return Generation(model, [], params, cancel or threading.Event(), prompt_text=prompt)
    return generate_ids(model, encode_prompt(model, prompt, params), params, cancel=cancel)


def is_token_model(model: AnyModel) -> bool:
    """True for a model that gives token ids; False for a `TextStreamingModel` (text in, text out)."""
    return not isinstance(model, TextStreamingModel)


def generate_ids(
    model: LoadedModel, prompt_ids: Sequence[int], params: GenerationParams, *,
    cancel: threading.Event | None = None,
) -> Generation:
    """As `generate`, from token ids already encoded (and truncated) by the caller."""
    if not prompt_ids:
        raise GenerationError("The prompt is empty: write something for the model to continue.")
    return Generation(model, list(prompt_ids), params, cancel or threading.Event())


def count_tokens(model: AnyModel, text: str) -> int:
    """Tokens `text` takes on its own (no BOS). A text-streaming model has no token ids to count."""
    if not is_token_model(model):
        raise GenerationError(
            f"{model.name} runs on a remote engine that streams text and does not share its token ids, so its "
            "tokens cannot be counted here. Load a local model to count tokens."
        )
    return len(model.tokenizer.encode(text, add_bos=False))


def encode_prompt(model: LoadedModel, prompt: str, params: GenerationParams) -> list[int]:
    """Token ids of `prompt`, cut from the left to fit truncation_length - max_new_tokens (BOS kept).

    A prompt that already starts with the BOS string (a template writing `<s>`) gets no second BOS."""
    tokenizer = model.tokenizer
    add_bos = params.add_bos_token and not (tokenizer.bos_token and prompt.startswith(tokenizer.bos_token))
    ids = tokenizer.encode(prompt, add_bos=add_bos)
    return _truncate(ids, _prompt_budget(model, params), tokenizer.bos_token_id)


def _prompt_budget(model: LoadedModel, params: GenerationParams) -> int:
    window = params.truncation_length
    if model.context_length > 0:
        window = min(window, model.context_length)
    budget = window - params.max_new_tokens
    if budget <= 0:
        raise GenerationError(
            f"Max new tokens ({params.max_new_tokens}) leaves no room for the prompt in a context of {window} "
            "tokens: lower max new tokens or raise the truncation length."
        )
    return budget


def _truncate(ids: list[int], budget: int, bos_id: int | None) -> list[int]:
    if len(ids) <= budget:
        return ids
    if bos_id is not None and ids[0] == bos_id and budget > 1:
        return [bos_id, *ids[len(ids) - budget + 1 :]]
    return ids[len(ids) - budget :]


class Generation:
    """One reply in progress. Iterate it for text deltas; `.text` is everything emitted so far, `.token_ids` the
    reply's tokens, `.stats` is set once the iteration is over. Cancel with the event given to `generate`."""

    def __init__(
        self, model: AnyModel, prompt_ids: list[int], params: GenerationParams, cancel: threading.Event, *,
        prompt_text: str | None = None,
    ) -> None:
        self.model = model
        self.prompt_ids = prompt_ids
        self.prompt_text = prompt_text  # set for a text-streaming model: the prompt is sent as text
        self.usage = TextUsage()  # what a text-streaming model reports
        self.decode_info = DecodeInfo()  # what a token model reports (prompt tokens reused)
        self.params = params
        self.cancel = cancel
        self.text = ""
        self.token_ids: list[int] = []
        self.stats: GenerationStats | None = None
        self._reason = "cancelled"  # also right when the caller abandons the iteration
        self._stream = self._run()

    def __iter__(self) -> Iterator[str]:
        return self._stream

    def _run(self) -> Iterator[str]:
        start = time.perf_counter()
        stops = StopStrings(self.params.stop)
        if self.prompt_text is None:
            detokenizer = Detokenizer(self.model.tokenizer, skip_special_tokens=self.params.skip_special_tokens)
            tokens = self.model.generate_tokens(self.prompt_ids, self.params, self.cancel, self.decode_info)
            pieces = self._deltas(tokens, detokenizer, stops)
        else:
            tokens = self.model.stream_text(self.prompt_text, self.params, self.cancel, self.usage)
            pieces = self._text_deltas(tokens, stops)
        try:
            for delta, stopped in pieces:
                if delta:
                    self.text += delta
                    yield delta
                if stopped:
                    break
        finally:
            close = getattr(tokens, "close", None)
            if close is not None:
                close()  # ends the model's loop (and frees its cache) when we stop early
            self.stats = GenerationStats(
                len(self.prompt_ids) or self.usage.prompt_tokens, len(self.token_ids) or self.usage.new_tokens,
                time.perf_counter() - start, self._reason, self.decode_info.cached_tokens,
            )

    def _deltas(
        self, tokens: Iterator[int], detokenizer: Detokenizer, stops: StopStrings
    ) -> Iterator[tuple[str, bool]]:
        """(text, stopped) per token, then the held-back tail unless a stop string ended the reply."""
        while not self.cancel.is_set():
            token = next(tokens, None)
            if token is None:
                self._reason = self._end_reason()
                break
            self.token_ids.append(token)
            text, stopped = stops.push(detokenizer.push(token))
            if stopped:
                self._reason = "stop_string"
                yield text, True
                return
            yield text, False
        text, stopped = stops.push(detokenizer.flush())
        if stopped:
            self._reason = "stop_string"
            yield text, True
            return
        yield text + stops.flush(), False

    def _text_deltas(self, chunks: Iterator[str], stops: StopStrings) -> Iterator[tuple[str, bool]]:
        """As `_deltas`, for text streamed by the model (one chunk per server event, about one token each)."""
        while not self.cancel.is_set():
            chunk = next(chunks, None)
            if chunk is None:
                self._reason = "cancelled" if self.cancel.is_set() else self.usage.stop_reason or "eos"
                break
            self.usage.chunks += 1
            text, stopped = stops.push(chunk)
            if stopped:
                self._reason = "stop_string"
                yield text, True
                return
            yield text, False
        self.usage.new_tokens = self.usage.new_tokens or self.usage.chunks
        yield stops.flush(), False

    def _end_reason(self) -> str:
        if self.cancel.is_set():
            return "cancelled"
        return "max_tokens" if len(self.token_ids) >= self.params.max_new_tokens else "eos"


class Detokenizer:
    """Token ids in, text deltas out: decodes only the window `ids[prefix:]` and subtracts `ids[prefix:read]`."""

    def __init__(self, tokenizer: ModelTokenizer, *, skip_special_tokens: bool) -> None:
        self._decode = tokenizer.decode
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0  # start of the window: the tokens already shown that give the next one its context
        self._read = 0  # end of the tokens already shown

    def push(self, token: int) -> str:
        self._ids.append(token)
        prefix_text = self._decode(self._ids[self._prefix : self._read], skip_special_tokens=self._skip)
        text = self._decode(self._ids[self._prefix :], skip_special_tokens=self._skip)
        if len(text) <= len(prefix_text) or text.endswith(REPLACEMENT_CHAR):
            return ""  # nothing new yet (special token skipped, or an incomplete character)
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(prefix_text) :]

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        if self._read == len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix : self._read], skip_special_tokens=self._skip)
        text = self._decode(self._ids[self._prefix :], skip_special_tokens=self._skip)
        self._prefix = self._read = len(self._ids)
        return text[len(prefix_text) :]


class StopStrings:
    """Holds back any tail that could begin a stop string and cuts the text at the first complete one.

    The text already released never ends with the start of a stop string, so a match always lies within the
    held tail plus the new delta: each step searches only that short string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._held = ""

    def push(self, delta: str) -> tuple[str, bool]:
        """(text safe to show, whether a stop string was reached)."""
        if not self._stops:
            return delta, False
        text = self._held + delta
        cut = min((i for i in (text.find(stop) for stop in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            return text[:cut], True
        keep = self._partial_length(text)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    def _partial_length(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of a stop string."""
        for length in range(min(len(text), max(len(s) for s in self._stops) - 1), 0, -1):
            tail = text[len(text) - length :]
            if any(stop.startswith(tail) for stop in self._stops):
                return length
        return 0
