"""How the OpenAI-compatible endpoints spell a reply: one JSON body, or the chunks of a stream.

A reply arrives as `ReplyUpdate`s (the text so far, the log-probabilities of the tokens new since the previous
update, and the statistics on the last one). `ReplyShape.whole` writes a complete reply; `ReplyShape.writer` gives
the `ReplyWriter` that turns each update of a stream into its chunks. Tool calls (`webui/api_tools.py`) are read
from the reply when the request's tools are active: a whole reply carries them in `message.tool_calls`, a stream
holds back the text that may be a call and sends the calls in one chunk at the end (`finish_reason: "tool_calls"`).
Log-probabilities (`webui/api_structured.py`) go with the chunk that carries their text, or the next one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from webui.api_structured import LogprobText, chat_logprobs, completion_logprobs
from webui.api_tools import ToolCallStream, ToolSetup, parse_tool_calls
from webui.engine import GenerationStats

FINISH_REASONS = {"eos": "stop", "stop_string": "stop", "max_tokens": "length", "cancelled": "stop"}


class JobLike(Protocol):
    id: str
    created: int
    model: str  # the model that runs it (known once its turn is built)


@dataclass(frozen=True)
class ReplyUpdate:
    text: str
    stats: GenerationStats | None = None
    logprobs: tuple[LogprobText, ...] = ()  # the tokens new since the previous update
    queued: int = 0  # waiting in line: its place (1 = next), no text yet


@dataclass(frozen=True)
class ReplyShape:
    """One endpoint's spelling: chat or text completion, with the request's tools and whether it asked logprobs."""

    chat: bool
    tools: ToolSetup = field(default_factory=ToolSetup)
    logprobs: bool = False

    def whole(self, job: JobLike, text: str, stats: GenerationStats, logprobs: Sequence[LogprobText]) -> dict[str, Any]:
        finish = FINISH_REASONS[stats.stop_reason]
        if not self.chat:
            choice = {"index": 0, "text": text, "finish_reason": finish,
                      "logprobs": completion_logprobs(logprobs, 0) if self.logprobs else None}
            return self._envelope(job, "text_completion", choice) | {"usage": usage(stats)}
        content, calls = parse_tool_calls(text, self.tools.names)
        message: dict[str, Any] = {"role": "assistant", "content": content or (None if calls else "")}
        if calls:
            message["tool_calls"] = [call.openai() for call in calls]
            finish = "tool_calls"
        choice = {"index": 0, "message": message, "finish_reason": finish,
                  "logprobs": chat_logprobs(logprobs) if self.logprobs else None}
        return self._envelope(job, "chat.completion", choice) | {"usage": usage(stats)}

    def writer(self, job: JobLike) -> ReplyWriter:
        return ReplyWriter(self, job)

    def usage_chunk(self, job: JobLike, stats: GenerationStats) -> dict[str, Any]:
        return {"id": self.reply_id(job), "object": self._chunk_kind, "created": job.created, "model": job.model,
                "choices": [], "usage": usage(stats)}

    def chunk(self, job: JobLike, choice: dict[str, Any]) -> dict[str, Any]:
        return self._envelope(job, self._chunk_kind, choice)

    @property
    def _chunk_kind(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"

    def _envelope(self, job: JobLike, kind: str, choice: dict[str, Any]) -> dict[str, Any]:
        return {"id": self.reply_id(job), "object": kind, "created": job.created, "model": job.model,
                "choices": [choice]}

    def reply_id(self, job: JobLike) -> str:
        return ("chatcmpl-" if self.chat else "cmpl-") + job.id


class ReplyWriter:
    """One streamed reply: `push` each update, get the chunks to send for it."""

    def __init__(self, shape: ReplyShape, job: JobLike) -> None:
        self._shape, self._job = shape, job
        self._calls = ToolCallStream(shape.tools.names if shape.chat else ())
        self._seen = 0  # characters of the reply's text read from updates
        self._shown = 0  # characters sent (completions: the text offset of the next logprobs)
        self._first = True
        self._pending: list[LogprobText] = []

    def push(self, update: ReplyUpdate) -> list[dict[str, Any]]:
        self._pending.extend(update.logprobs)
        text = self._calls.push(update.text[self._seen :])
        self._seen = len(update.text)
        chunks = [self._text_chunk(text)] if text or (self._first and update.stats is None) else []
        if update.stats is not None:
            chunks += self._end(update.stats)
        return chunks

    def _end(self, stats: GenerationStats) -> list[dict[str, Any]]:
        rest, calls = self._calls.finish()
        chunks = [self._text_chunk(rest)] if rest or self._first or self._pending else []
        finish = FINISH_REASONS[stats.stop_reason]
        if calls:
            delta = {"tool_calls": [call.openai(index) for index, call in enumerate(calls)]}
            chunks.append(self._shape.chunk(self._job, {"index": 0, "delta": delta, "finish_reason": None,
                                                        "logprobs": None}))
            finish = "tool_calls"
        body = {"index": 0, "delta": {}, "finish_reason": finish, "logprobs": None}
        if not self._shape.chat:
            body = {"index": 0, "text": "", "finish_reason": finish, "logprobs": None}
        return [*chunks, self._shape.chunk(self._job, body)]

    def _text_chunk(self, text: str) -> dict[str, Any]:
        logprobs, self._pending = self._pending, []
        if not self._shape.chat:
            choice = {"index": 0, "text": text, "finish_reason": None,
                      "logprobs": completion_logprobs(logprobs, self._shown) if self._shape.logprobs else None}
        else:
            delta = {"role": "assistant", "content": text} if self._first else {"content": text}
            choice = {"index": 0, "delta": delta, "finish_reason": None,
                      "logprobs": chat_logprobs(logprobs) if self._shape.logprobs else None}
        self._first = False
        self._shown += len(text)
        return self._shape.chunk(self._job, choice)


def usage(stats: GenerationStats) -> dict[str, Any]:
    """OpenAI's usage object; `prompt_tokens_details.cached_tokens`: prompt tokens reused from the cache."""
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.new_tokens,
            "total_tokens": stats.prompt_tokens + stats.new_tokens,
            "prompt_tokens_details": {"cached_tokens": stats.cached_tokens}}
