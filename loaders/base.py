"""The contract between the engine and every backend: generation parameters, tokenizer and loaded-model interfaces.

A loader turns a model on disk into one of two kinds of model. A `LoadedModel` gives token ids: the engine
(`webui/engine.py`) encodes the prompt with `model.tokenizer`, pulls ids from `model.generate_tokens`, and does
detokenization, stop strings, cancellation and accounting itself, once, for every backend. A `TextStreamingModel`
(a remote engine) streams text and has no token ids at all: its `tokenizer` is only a `TokenizerInfo` (the special
token strings and chat template a prompt needs); the engine sends it the prompt as text. `AnyModel` is either.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

ConstraintKind = Literal["json_object", "json_schema", "grammar"]


@dataclass(frozen=True)
class ConstraintSpec:
    """What a reply must match (structured output), as a frozen, hashable description; each backend builds its
    live matcher from it (`loaders/constraints.py`). `text`: for "json_schema" the schema as JSON text, for
    "grammar" a grammar in llama.cpp's GBNF syntax, unused for "json_object" (any JSON object)."""

    kind: ConstraintKind
    text: str = ""


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability and the `n` most likely alternatives at its step (token, logprob),
    most likely first: log-softmax of the logits the sampler drew from after the logits processors (penalties,
    EOS ban, the grammar mask), before temperature and the truncation samplers (top-k/p, min-p, typical)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


PER_REQUEST = {"per_request": True}  # field metadata: set by one request (the API), never by presets or settings


@dataclass
class GenerationParams:
    """Samplers and limits for one generation. Field names are the keys of presets and per-model settings, except
    the per-request fields at the end (`field_names` leaves them out)."""

    max_new_tokens: int = 512
    do_sample: bool = True  # False = greedy (argmax), all samplers below ignored except the penalties
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 20  # 0 = off
    typical_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off; divides positive logits of seen tokens, multiplies negative ones
    repetition_penalty_range: int = 1024  # how many trailing tokens count as "seen"; 0 = the whole context
    presence_penalty: float = 0.0  # subtracted once from the logit of every seen token
    frequency_penalty: float = 0.0  # subtracted per occurrence
    seed: int = -1  # -1 = random
    ban_eos_token: bool = False
    add_bos_token: bool = True
    skip_special_tokens: bool = True
    truncation_length: int = 2048  # prompt is cut from the left to truncation_length - max_new_tokens
    stop: tuple[str, ...] = ()  # custom stop strings, never shown in the output
    # Per request: the backend reports `logprobs` (None = off; n = the chosen token's and the n most likely) in
    # `DecodeInfo.logprobs`, and masks every token that `constraint` forbids (its end also ends the reply, and
    # the EOS ban yields to it).
    logprobs: int | None = field(default=None, metadata=PER_REQUEST)
    constraint: ConstraintSpec | None = field(default=None, metadata=PER_REQUEST)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The preset / settings keys (the per-request fields are not among them)."""
        return tuple(f.name for f in fields(cls) if not f.metadata.get("per_request"))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GenerationParams:
        """Build from a preset / settings mapping; unknown keys raise `KeyError` naming them."""
        unknown = set(values) - set(cls.field_names())
        if unknown:
            raise KeyError(f"unknown generation parameter(s): {', '.join(sorted(unknown))}")
        kwargs = dict(values)
        if "stop" in kwargs:
            kwargs["stop"] = tuple(kwargs["stop"] or ())
        return cls(**kwargs)


@runtime_checkable
class ModelTokenizer(Protocol):
    """What the engine and the templates need from a tokenizer, whatever the backend."""

    bos_token: str | None
    eos_token: str | None
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]  # every id that ends a reply (e.g. </s> and <|im_end|>)
    chat_template: str | None  # the model's own Jinja template, if it ships one

    def encode(self, text: str, *, add_bos: bool) -> list[int]:
        """Token ids of `text`; special-token strings inside `text` (e.g. `<|im_start|>`) are parsed as tokens."""
        ...

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        ...


@dataclass(frozen=True)
class MemoryReport:
    """Memory a loaded model holds, in bytes, as measured after load."""

    ram_bytes: int
    vram_bytes: dict[int, int] = field(default_factory=dict)  # CUDA device index -> bytes

    @property
    def total_vram(self) -> int:
        return sum(self.vram_bytes.values())


@dataclass
class DecodeInfo:
    """What a backend tells the engine about one `generate_tokens` call, filled in as it goes."""

    cached_tokens: int = 0  # prompt tokens whose KV was reused from an earlier request (prefix reuse)
    # With `params.logprobs` set: one entry per yielded token, appended by the backend before it yields the token.
    logprobs: list[TokenLogprob] = field(default_factory=list)


@runtime_checkable
class LoadedModel(Protocol):
    """A model ready to generate. One object per load; `unload()` frees everything it holds.

    `slots` is how many `generate_tokens` calls may run at once, each from its own thread (continuous batching
    inside the backend); 1 = one at a time. A call's generator yields that request's tokens only; closing it or
    setting `cancel` frees its slot within one decode step."""

    name: str  # folder name under models/
    loader: str  # registry name: transformers, gptq, gguf, llama.cpp
    path: Path
    tokenizer: ModelTokenizer
    context_length: int  # the context the model was loaded for (n_ctx / max_position_embeddings)
    device: str  # human-readable: "cpu", "cuda:0", "cuda:0 + cpu (20/30 layers on GPU)"
    load_seconds: float
    memory: MemoryReport
    slots: int

    def generate_tokens(
        self, prompt_ids: list[int], params: GenerationParams, cancel: threading.Event,
        info: DecodeInfo | None = None,
    ) -> Iterator[int]:
        """Yield new token ids one at a time, stopping at EOS (unless banned), at `params.max_new_tokens`,
        or as soon as `cancel` is set. EOS itself is not yielded. `info`, when given, is filled in by the
        backend (prompt tokens reused from its cache)."""
        ...

    def unload(self) -> None:
        ...


@dataclass
class TextUsage:
    """What a text-streaming model reports about one reply (filled in as the server tells; 0 / "" = not told)."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    stop_reason: str = ""  # eos | max_tokens | stop_string, as the engine's stats name them
    chunks: int = 0  # text chunks received (counted by the engine)


@dataclass(frozen=True)
class TokenizerInfo:
    """What a prompt needs from a tokenizer, for a model whose token ids stay out of reach (a remote engine)."""

    bos_token: str | None = None
    eos_token: str | None = None
    chat_template: str | None = None


@runtime_checkable
class TextStreamingModel(Protocol):
    """A model that streams text, not token ids (a remote engine): no encode, no decode, no token counts.
    `context_length` is 0 when the server enforces its own limit."""

    name: str
    loader: str
    path: Path
    tokenizer: TokenizerInfo
    context_length: int
    device: str
    load_seconds: float
    memory: MemoryReport

    def stream_text(
        self, prompt: str, params: GenerationParams, cancel: threading.Event, usage: TextUsage
    ) -> Iterator[str]:
        """Yield text deltas (about one token each) until the reply ends or `cancel` is set; fill `usage`.
        Raises `GenerationError` (with what to do) when the engine fails or goes away mid-reply."""
        ...

    def unload(self) -> None:
        ...


AnyModel = LoadedModel | TextStreamingModel  # what a loader returns and the engine runs
