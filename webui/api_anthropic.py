"""Anthropic's Messages API (`POST /v1/messages`, streamed or not) on the same engine, queue and key as the OpenAI
routes, for Claude-style clients and tools.

A Messages request is translated into a chat request of the OpenAI route (`webui/api.py` runs it: the same
prompt builder, model switching, samplers, structured tool calls), and its reply back into Anthropic's shape:

- `system` (text or text blocks) becomes the system message; `user` / `assistant` messages keep their text
  blocks; `tool_use` blocks become the assistant's `tool_calls`, `tool_result` blocks `tool` messages;
- `tools` (`name`, `description`, `input_schema`) and `tool_choice` (`auto`, `any` = required, `tool` = that
  one, `none`) map onto the OpenAI ones, `output_config.format` (a JSON schema: structured output) onto
  `response_format`; `stop_sequences`, `temperature`, `top_p`, `top_k` (which older clients send), `max_tokens`
  too; images and documents are refused (400): the local models here read text;
- the reply is a `message` with `text` and `tool_use` content blocks and `stop_reason` `end_turn`, `max_tokens`,
  `stop_sequence` or `tool_use`; a stream sends Anthropic's events (`message_start`, `content_block_start` /
  `_delta` / `_stop`, `message_delta` with the usage, `message_stop`), an error after the headers as an `error`
  event. Errors are `{"type": "error", "error": {"type", "message"}}` with Anthropic's error types.

The key is `x-api-key` (or a Bearer token), as the OpenAI routes accept it (`webui/api_common.key_checker`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loaders.errors import CorralError
from webui.api_common import ApiError, EventStream, api_error, validation_error
from webui.api_replies import ReplyUpdate
from webui.api_tools import ToolCall, ToolCallStream, ToolSetup, parse_tool_calls

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error"}
STOP_REASONS = {"eos": "end_turn", "max_tokens": "max_tokens", "cancelled": "end_turn"}


# --- the request -------------------------------------------------------------------------------------------------


class Block(BaseModel):
    """A content block: text, tool_use, tool_result (anything else is refused)."""

    model_config = ConfigDict(extra="ignore")

    type: str
    text: str = ""
    id: str = ""
    name: str = ""
    input: dict[str, Any] | None = None
    tool_use_id: str = ""
    content: str | list[Block] | None = None
    is_error: bool = False


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["user", "assistant"]
    content: str | list[Block]


class AnthropicTool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})


class AnthropicToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None


class OutputFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format: OutputFormat | None = None


class MessagesRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    max_tokens: int = Field(ge=1)
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[Block] | None = None
    stop_sequences: list[str] | None = Field(None, max_length=16)
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    stream: bool = False
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None
    output_config: OutputConfig | None = None

    def chat_fields(self) -> dict[str, Any]:
        """The same request as the OpenAI chat endpoint's body."""
        fields: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens, "messages": self._messages()}
        for name in ("temperature", "top_p", "top_k"):
            if getattr(self, name) is not None:
                fields[name] = getattr(self, name)
        if self.stop_sequences:
            fields["stop"] = self.stop_sequences
        if self.tools:
            fields["tools"] = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                                 "parameters": t.input_schema}} for t in self.tools]
        if self.tool_choice is not None:
            fields["tool_choice"] = _tool_choice(self.tool_choice)
        if self.output_config is not None and self.output_config.format is not None:
            fields["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "output", "schema": self.output_config.format.schema_}}
        return fields

    def _messages(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.system:
            out.append({"role": "system", "content": _text(self.system)})
        for message in self.messages:
            out += _user(message.content) if message.role == "user" else [_assistant(message.content)]
        return out


def _tool_choice(choice: AnthropicToolChoice) -> Any:
    if choice.type == "tool":
        if not choice.name:
            raise ApiError(400, "tool_choice of type 'tool' needs a 'name'.", param="tool_choice")
        return {"type": "function", "function": {"name": choice.name}}
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type]


def _text(content: str | list[Block] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    for block in content:
        if block.type != "text":
            raise ApiError(400, f"Content blocks of type '{block.type}' are not supported here; send text.",
                           param="messages")
    return "".join(block.text for block in content)


def _user(content: str | list[Block]) -> list[dict[str, Any]]:
    """A user turn: its tool results first (they answer the previous turn's calls), then its text."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    results = [{"role": "tool", "tool_call_id": b.tool_use_id, "content": _result_text(b)}
               for b in content if b.type == "tool_result"]
    text = _text([b for b in content if b.type != "tool_result"])
    return results + ([{"role": "user", "content": text}] if text or not results else [])


def _result_text(block: Block) -> str:
    text = _text(block.content)
    return f"Error: {text}" if block.is_error else text


def _assistant(content: str | list[Block]) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    calls = [{"id": b.id, "type": "function", "function": {"name": b.name, "arguments": json.dumps(b.input or {})}}
             for b in content if b.type == "tool_use"]
    message: dict[str, Any] = {"role": "assistant", "content": _text([b for b in content if b.type != "tool_use"])}
    return message | ({"tool_calls": calls} if calls else {})


# --- running it --------------------------------------------------------------------------------------------------


class JobLike(Protocol):
    id: str
    model: str

    def cancel(self) -> None: ...

    async def next_watching(self, request: Request) -> ReplyUpdate | None: ...


@dataclass
class ChatRun:
    """A chat request started by the OpenAI side, with its first update (it has waited in line)."""

    job: JobLike
    first: ReplyUpdate | None
    tools: ToolSetup


ChatStarter = Callable[[dict[str, Any], Request], Awaitable[ChatRun]]


class AnthropicRoute(APIRoute):
    """Answers every failure of its routes (the key check and body validation included) in Anthropic's shape."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Any]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Any:
            try:
                return await handler(request)
            except ApiError as error:
                return error_response(error)
            except RequestValidationError as error:
                return error_response(validation_error(error))
            except CorralError as error:
                return error_response(api_error(error))

        return handle


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(_error_body(error), status_code=error.status)


def _error_body(error: ApiError) -> dict[str, Any]:
    kind = ERROR_TYPES.get(error.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def add_routes(app: FastAPI, start: ChatStarter) -> None:
    """`POST /v1/messages` on `app` (which brings the key check), running chats through `start`."""
    router = APIRouter(route_class=AnthropicRoute)

    @router.post("/v1/messages")
    async def messages(request: Request) -> Any:
        try:
            body = MessagesRequest.model_validate(await request.json())
        except ValidationError as error:
            raise RequestValidationError(error.errors()) from None
        run = await start(body.chat_fields(), request)
        reply = _Reply(run, stop_sequences=bool(body.stop_sequences))
        if body.stream:
            return EventStream(reply.events(request), run.job)
        return await reply.whole(request)

    app.include_router(router)


class _Reply:
    def __init__(self, run: ChatRun, *, stop_sequences: bool) -> None:
        self._run, self._job, self._stops = run, run.job, stop_sequences

    async def whole(self, request: Request) -> dict[str, Any]:
        update = self._run.first
        try:
            while update is not None and update.stats is None:
                update = await self._job.next_watching(request)
        finally:
            self._job.cancel()
        if update is None or update.stats is None:
            raise ApiError(500, "The generation ended without a result; see the server log.", type="server_error")
        text, calls = parse_tool_calls(update.text, self._run.tools.names)
        blocks = ([{"type": "text", "text": text}] if text else []) + [_tool_use(call) for call in calls]
        return self._message(blocks, self._stop_reason(update, calls),
                             {"input_tokens": update.stats.prompt_tokens, "output_tokens": update.stats.new_tokens})

    async def events(self, request: Request) -> AsyncIterator[str]:
        update, calls_stream, index, text_open = self._run.first, ToolCallStream(self._run.tools.names), 0, False
        seen = 0
        try:
            yield _event("message_start", {"type": "message_start", "message": self._message(
                [], None, {"input_tokens": 0, "output_tokens": 0})})
            while update is not None:
                text = calls_stream.push(update.text[seen:])
                seen = len(update.text)
                if update.stats is not None:
                    rest, calls = calls_stream.finish()
                    text += rest
                if text:
                    if not text_open:
                        yield _event("content_block_start", {"type": "content_block_start", "index": index,
                                                             "content_block": {"type": "text", "text": ""}})
                        text_open = True
                    yield _event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                         "delta": {"type": "text_delta", "text": text}})
                if update.stats is not None:
                    if text_open:
                        yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
                        index += 1
                    for call in calls:
                        for event in _tool_use_events(call, index):
                            yield event
                        index += 1
                    stats = update.stats
                    yield _event("message_delta", {"type": "message_delta", "delta": {
                        "stop_reason": self._stop_reason(update, calls), "stop_sequence": None},
                        "usage": {"input_tokens": stats.prompt_tokens, "output_tokens": stats.new_tokens}})
                    yield _event("message_stop", {"type": "message_stop"})
                    break
                update = await self._job.next_watching(request)
        except ApiError as error:  # after the headers went out: the error travels as an event
            yield _event("error", _error_body(error))
        finally:
            self._job.cancel()

    def _message(self, content: list[dict[str, Any]], stop_reason: str | None, usage: dict[str, int]
                 ) -> dict[str, Any]:  # fmt: skip
        return {"id": f"msg_{self._job.id}", "type": "message", "role": "assistant", "model": self._job.model,
                "content": content, "stop_reason": stop_reason, "stop_sequence": None, "usage": usage}

    def _stop_reason(self, update: ReplyUpdate, calls: list[ToolCall]) -> str:
        assert update.stats is not None
        if calls:
            return "tool_use"
        if update.stats.stop_reason == "stop_string":
            return "stop_sequence" if self._stops else "end_turn"  # else the template's own end-of-turn text
        return STOP_REASONS[update.stats.stop_reason]


def _tool_use(call: ToolCall) -> dict[str, Any]:
    return {"type": "tool_use", "id": "toolu_" + call.id.removeprefix("call_"), "name": call.name,
            "input": json.loads(call.arguments)}


def _tool_use_events(call: ToolCall, index: int) -> list[str]:
    block = _tool_use(call) | {"input": {}}
    return [_event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block}),
            _event("content_block_delta", {"type": "content_block_delta", "index": index,
                                           "delta": {"type": "input_json_delta", "partial_json": call.arguments}}),
            _event("content_block_stop", {"type": "content_block_stop", "index": index})]


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
