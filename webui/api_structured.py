"""Structured output, log-probabilities and the per-request context on the OpenAI-compatible API.

Request fields (mixed into both completion endpoints' request models): `response_format` (`json_object`,
`json_schema`), `grammar` (a GBNF grammar, as llama.cpp's server takes it), and `num_ctx` / `max_context` (the
context this request runs in: more than the loaded model has reloads it, `webui/model_switch.py`; less limits this
request). They become a `ConstraintSpec` and `GenerationParams.logprobs`, which every local backend enforces and
reports while decoding (`loaders/constraints.py`, `DecodeInfo.logprobs`): JSON is never "generated, then validated".

Log-probabilities are those of the logits the sampler drew from after the logits processors (penalties, the EOS
ban, the grammar) and before temperature and the truncation samplers, so at temperature 0 the most likely entry is
the token generated. A token the processors ruled out has probability 0; JSON has no -inf, so it is written
-9999.0, as OpenAI does. `bytes` are the token's exact bytes on llama.cpp and the UTF-8 of its text elsewhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from loaders.base import AnyModel, ConstraintSpec, GenerationParams, ModelTokenizer, TokenLogprob
from loaders.constraints import constraint_spec
from loaders.errors import ConstraintError
from webui.api_common import ApiError
from webui.api_tools import ToolFields, ToolSetup
from webui.engine import is_token_model

IMPOSSIBLE = -9999.0  # OpenAI's logprob for a token with probability 0
MAX_TOP_LOGPROBS = 20


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("'json_schema' is required when the type is 'json_schema'")
        return self


class StructuredFields(BaseModel):
    """The request fields of this module (both endpoints)."""

    response_format: ResponseFormat | None = None
    grammar: str | None = Field(None, min_length=1)
    num_ctx: int | None = Field(None, ge=16)
    max_context: int | None = Field(None, ge=16)

    def constraint(self) -> ConstraintSpec | None:
        """What the reply must match, checked (`ApiError` 400 when the schema or grammar cannot be enforced)."""
        asked = _asked(self.response_format, self.grammar)
        if asked is None:
            return None
        try:
            return constraint_spec(*asked)
        except ConstraintError as error:
            param = "grammar" if self.grammar else "response_format"
            raise ApiError(400, str(error), param=param, code="invalid_response_format") from None

    @property
    def context_size(self) -> int | None:
        return self.num_ctx or self.max_context


def _asked(response_format: ResponseFormat | None, grammar: str | None) -> tuple[str, str | dict[str, Any]] | None:
    """The kind of constraint asked for and its source (`constraint_spec`'s arguments), None for free text."""
    wants_json = response_format is not None and response_format.type != "text"
    if grammar is not None and wants_json:
        raise ApiError(400, "Give either 'grammar' or a JSON 'response_format', not both.", param="grammar")
    if grammar is not None:
        return "grammar", grammar
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return "json_object", ""
    assert response_format.json_schema is not None  # the validator saw to it
    return "json_schema", response_format.json_schema.schema_


# --- log-probabilities, as text ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenText:
    token: str
    bytes: list[int]
    logprob: float


@dataclass(frozen=True)
class LogprobText:
    """One generated token's log-probability and its alternatives, as text (made while the model is loaded)."""

    chosen: TokenText
    top: tuple[TokenText, ...]


class LogprobReader:
    """Turns a reply's `DecodeInfo.logprobs` into text, a few entries at a time as the reply streams."""

    def __init__(self, tokenizer: ModelTokenizer) -> None:
        self._tokenizer = tokenizer
        self._read = 0

    def new(self, entries: Sequence[TokenLogprob]) -> tuple[LogprobText, ...]:
        """The entries of `entries` not read before, as text."""
        count = len(entries)  # the backend only appends: everything below `count` is complete
        fresh = tuple(self._text(entry) for entry in entries[self._read : count])
        self._read = count
        return fresh

    def _text(self, entry: TokenLogprob) -> LogprobText:
        return LogprobText(self._token(entry.token, entry.logprob),
                           tuple(self._token(token, logprob) for token, logprob in entry.top))

    def _token(self, token: int, logprob: float) -> TokenText:
        raw = getattr(self._tokenizer, "detokenize_bytes", None)
        data = raw([token], skip_special_tokens=False) if raw else None
        text = self._tokenizer.decode([token], skip_special_tokens=False)
        value = logprob if logprob > IMPOSSIBLE else IMPOSSIBLE  # -inf (ruled out) has no JSON spelling
        return TokenText(text, list(data if data is not None else text.encode("utf-8")), value)


def chat_logprobs(entries: Sequence[LogprobText]) -> dict[str, Any]:
    """The chat endpoint's `logprobs` object."""
    return {"content": [_chat_entry(entry) for entry in entries], "refusal": None}


def _chat_entry(entry: LogprobText) -> dict[str, Any]:
    def one(item: TokenText) -> dict[str, Any]:
        return {"token": item.token, "logprob": item.logprob, "bytes": item.bytes}

    return one(entry.chosen) | {"top_logprobs": [one(item) for item in entry.top]}


def completion_logprobs(entries: Sequence[LogprobText], offset: int) -> dict[str, Any]:
    """The completions endpoint's `logprobs` object (legacy shape); `offset`: characters of text before these."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.chosen.token)
    return {"tokens": [e.chosen.token for e in entries], "token_logprobs": [e.chosen.logprob for e in entries],
            "top_logprobs": [{item.token: item.logprob for item in e.top} for e in entries], "text_offset": offsets}


def top_count(logprobs: bool | int | None, top_logprobs: int | None) -> int | None:
    """`GenerationParams.logprobs` for a chat request (`logprobs`, `top_logprobs`) or a completion (`logprobs` n)."""
    if isinstance(logprobs, bool) or logprobs is None:
        if top_logprobs is not None and not logprobs:
            raise ApiError(400, "'top_logprobs' needs 'logprobs': true.", param="top_logprobs")
        return (top_logprobs or 0) if logprobs else None
    return logprobs


# --- one request's options ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestOptions:
    """What a request asks beyond the samplers, read and checked once, before it waits in line."""

    constraint: ConstraintSpec | None = None
    logprobs: int | None = None  # `GenerationParams.logprobs`
    tools: ToolSetup = field(default_factory=ToolSetup)
    context: int | None = None  # num_ctx / max_context

    def apply(self, params: GenerationParams, model: AnyModel) -> GenerationParams:
        """`params` with these options, for `model` (refused, 400, where a remote engine cannot honour them)."""
        if not is_token_model(model) and (self.constraint is not None or self.logprobs is not None):
            raise ApiError(400, f"{model.name} runs on a remote engine: structured output, forced tool calls and "
                           "logprobs need a local model.", param="response_format" if self.constraint else "logprobs")
        truncation = params.truncation_length
        if self.context and model.context_length > 0:
            truncation = min(truncation, self.context)
        return dataclasses.replace(params, constraint=self.constraint, logprobs=self.logprobs,
                                   truncation_length=truncation)


def request_options(body: StructuredFields, *, logprobs: bool | int | None, top_logprobs: int | None = None
                    ) -> RequestOptions:  # fmt: skip
    """The options of `body` (`ApiError` 400 for what cannot be enforced)."""
    tools = body.tool_setup() if isinstance(body, ToolFields) else ToolSetup()
    forced, asked = tools.constraint(), body.constraint()
    if forced is not None and asked is not None:
        raise ApiError(400, "A forced tool call (tool_choice) and a response_format / grammar cannot both constrain "
                       "one reply.", param="tool_choice")
    return RequestOptions(forced or asked, top_count(logprobs, top_logprobs), tools, body.context_size)
