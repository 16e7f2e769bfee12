"""The OpenAI-compatible HTTP API (`--api`): routes, request validation, the OpenAI error shape, and serving.

Owns `/v1/models`, `/v1/completions` (with OpenAI's `suffix`: fill in the middle), `/v1/chat/completions`
(server-sent events or one JSON reply), `/v1/internal/model/{load,unload,info}` (info lists the active LoRA
adapters), `/v1/internal/lora/{list,load}` and `/v1/internal/token-count`. Generation goes through the same
`GenerationService` as the UI, so API and UI requests share the model's parallel slots and one
first-come-first-served line beyond them; a request's prompt, parameters and context check are built once its turn
has come, from the model that runs it (a chat through the same prompt builder as the Chat tab,
`webui/chat_turn.py`). A streaming request that has to wait in line gets its headers at once and an SSE comment
(`: waiting in line, place N`) each time its place changes; an error found when its turn comes then arrives as an
error event, as any error after the headers does. Usage reports the prompt tokens reused from the cache
(`prompt_tokens_details.cached_tokens`). Errors that are not Corral's are logged with their traceback and answered
500 ("Internal error; see the server log").
Each request runs in its own worker thread and is cancelled the moment its client goes away, which frees its slot
within one decode step. Every failure is an `{"error": {"message", "type", "param", "code"}}` body with the
status an OpenAI client expects. Flags are parsed in `app.py`; this module gets plain values.

What a request must be before any route runs (`webui/listen.HostGuard`, then `RequestGuard`): for one of our
host names (no DNS rebinding) from no web page but ours (no cross-site request), and, for a POST (every route that
changes state or generates), an `application/json` body (HTML forms and "simple" cross-site requests cannot send
one) of at most `AppConfig.max_body_bytes`, nested at most `MAX_JSON_DEPTH` deep, with no lone UTF-16 surrogate.
A prompt longer than `AppConfig.max_prompt_chars` is refused before it is queued.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from loaders.base import AnyModel, GenerationParams
from loaders.errors import (
    CorralError,
    GenerationError,
    InsufficientMemoryError,
    ModelNotFoundError,
    ModelNotLoadedError,
    TemplateNotFoundError,
    TemplateRenderError,
)
from loaders.lora import AdapterChoice
from webui import chat_turn, infill
from webui.engine import GenerationStats, is_token_model
from webui.generation import StreamUpdate, Turn, TurnBuilder
from webui.listen import AllowedHosts, HostGuard, allowed_hosts, bind_address, hosts_of_args
from webui.state import AppState
from webui.templates import Message

if TYPE_CHECKING:
    from webui.model_service import LoadedInfo

log = logging.getLogger(__name__)

DISCONNECT_POLL_SECONDS = 0.1  # while a request waits in line, how often we look for its client having gone
FINISH_REASONS = {"eos": "stop", "stop_string": "stop", "max_tokens": "length", "cancelled": "stop"}
ROLE_ALIASES = {"developer": "system"}
MAX_JSON_DEPTH = 64  # far beyond any OpenAI request; bounds the work of parsing and validating one


# --- errors -------------------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered in the OpenAI shape."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


def api_error(error: CorralError) -> ApiError:
    """Our exceptions -> HTTP: the one place where the mapping lives."""
    if isinstance(error, ModelNotLoadedError):
        return ApiError(503, str(error), type="server_error", code="model_not_loaded")
    if isinstance(error, ModelNotFoundError):
        return ApiError(404, str(error), param="model", code="model_not_found")
    if isinstance(error, InsufficientMemoryError):
        return ApiError(400, str(error), code="insufficient_memory")
    if isinstance(error, (TemplateNotFoundError, TemplateRenderError)):
        return ApiError(400, str(error), param="messages", code="template_error")
    if isinstance(error, GenerationError):
        return ApiError(400, str(error), code="generation_error")
    return ApiError(400, str(error))


def _refusal(status: int, message: str, code: str) -> Response:
    return ApiError(status, message, code=code).response()


def _http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
    """Starlette's own 404 / 405, in the OpenAI shape too."""
    return ApiError(error.status_code, str(error.detail), code="not_found" if error.status_code == 404 else None
                    ).response()


def _validation_error(error: RequestValidationError) -> ApiError:
    first = error.errors()[0] if error.errors() else {"msg": "invalid request", "loc": ()}
    if first.get("type") == "json_invalid":
        return ApiError(400, f"The request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}.")
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    message = first["msg"].removeprefix("Value error, ")
    if param is None:
        return ApiError(400, f"The request body must be a JSON object ({message}).")
    if first.get("type") == "missing":
        return ApiError(400, f"'{param}' is a required property.", param=param)
    return ApiError(400, f"Invalid value for '{param}': {message}.", param=param)


# --- requests -----------------------------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """Fields shared by both completion endpoints; our extra samplers are extra body fields."""

    model_config = ConfigDict(extra="ignore")

    model: str = ""
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    typical_p: float | None = Field(None, gt=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    ignore_eos: bool | None = None  # as vLLM spells it: keep going past the end-of-sequence token

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 16:
            raise ValueError("at most 16 stop strings")
        return stop

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(SamplingRequest):
    prompt: str | list[str]
    suffix: str | None = None  # OpenAI's field: the text after the gap; the prompt is the text before it (infilling)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError("give one prompt (a string); batches are not supported")
        return prompt

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def to_message(self) -> Message:
        content = self.content or ""
        text = content if isinstance(content, str) else "".join(part.text for part in content)
        return Message(ROLE_ALIASES.get(self.role, self.role), text)


class ChatRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class LoraSpec(BaseModel):
    name: str = Field(min_length=1, max_length=255)
    scale: float = 1.0

    def choice(self) -> AdapterChoice:
        return AdapterChoice(self.name, self.scale)


class LoadRequest(BaseModel):
    model_name: str = Field(min_length=1)
    loader: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    confirm_memory: bool = False
    loras: list[LoraSpec] | None = Field(None, max_length=32)  # None: the adapters saved for the model


class LorasRequest(BaseModel):
    loras: list[LoraSpec] = Field(max_length=32)  # [] removes every adapter


class TokenCountRequest(BaseModel):
    text: str


# --- from a request to a prompt and parameters ----------------------------------------------------------------------


def _check_model(state: AppState, requested: str, info: LoadedInfo | None) -> LoadedInfo:
    """`info`, refusing a request that names a different model (or when none is loaded)."""
    if requested and (info is None or requested != info.view.name):
        if requested not in state.models.names():
            raise ApiError(404, f"The model '{requested}' does not exist. GET /v1/models lists the models.",
                           param="model", code="model_not_found")
        if info is not None:
            raise ApiError(400, f"The model '{requested}' is not loaded ('{info.view.name}' is). Load it with "
                           "POST /v1/internal/model/load, or ask for the loaded model.", param="model",
                           code="model_not_loaded")
    if info is None:
        raise ApiError(503, "No model is loaded. Load one with POST /v1/internal/model/load or in the web UI.",
                       type="server_error", code="model_not_loaded")
    return info


def _params(state: AppState, info: LoadedInfo, body: SamplingRequest) -> GenerationParams:
    """The model's preset, overridden by the request; temperature 0 means greedy."""
    base = state.presets.load(info.view.resolved.preset or state.config.default_preset)
    sampler_fields = set(GenerationParams.field_names()) - {"stop"}
    asked = {k: v for k, v in body.model_dump(include=sampler_fields).items() if v is not None}
    max_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens
    if max_tokens is not None:
        asked["max_new_tokens"] = max_tokens
    if body.ignore_eos is not None:
        asked["ban_eos_token"] = body.ignore_eos
    if body.temperature == 0:
        asked["do_sample"] = False
    elif body.temperature is not None:
        asked["do_sample"] = True
    stops = tuple(dict.fromkeys((*base.stop, *body.stop_strings())))
    context = info.model.context_length or base.truncation_length
    return dataclasses.replace(base, **asked, stop=stops, truncation_length=context)


def _check_context(model: AnyModel, turn: Turn, param: str) -> None:
    """Refuse (rather than silently cut) a prompt that does not fit the context with max_tokens."""
    if not is_token_model(model) or model.context_length <= 0:
        return  # a remote engine: it answers for its own context
    params = turn.params
    prompt_tokens = len(turn.prompt_ids) if turn.prompt_ids is not None else \
        len(model.tokenizer.encode(turn.prompt, add_bos=params.add_bos_token))  # fmt: skip
    if prompt_tokens + params.max_new_tokens > model.context_length:
        raise ApiError(
            400, f"This model's maximum context length is {model.context_length} tokens. However, you "
            f"requested {prompt_tokens + params.max_new_tokens} tokens ({prompt_tokens} in the prompt, "
            f"{params.max_new_tokens} for the completion). Shorten the prompt or lower max_tokens.",
            param=param, code="context_length_exceeded",
        )


def _request_turn(state: AppState, body: CompletionRequest | ChatRequest) -> TurnBuilder:
    """The turn for `body`, built (by `GenerationService.stream`) from the model that will run it: a chat in that
    model's template through the shared chat prompt builder, or the completion prompt as given."""
    if isinstance(body, ChatRequest):
        messages = [message.to_message() for message in body.messages]
        return chat_turn.chat_turn(
            state.templates, lambda info: chat_turn.model_chat(info, messages), lambda info: _params(state, info, body)
        )
    if body.suffix is not None:  # fill in the middle: the reply is the middle alone
        return infill.infill_turn(body.text, body.suffix, lambda info: _params(state, info, body))
    return lambda info: Turn(body.text, _params(state, info, body))


# --- running one request ------------------------------------------------------------------------------------------

_DONE = object()


class Job:
    """One generation on a worker thread, its updates handed to the event loop through a queue."""

    def __init__(
        self, state: AppState, body: CompletionRequest | ChatRequest, model: str, *, prompt_param: str
    ) -> None:
        """`model`: the name replies carry, until the turn is built on the model that runs it."""
        self.id = uuid.uuid4().hex
        self.created = int(time.time())
        self.model = model
        self._state = state
        self._cancel = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._requested, self._prompt_param = body.model, prompt_param
        self._build = _request_turn(state, body)
        threading.Thread(target=self._run, name=f"api-{self.id[:8]}", daemon=True).start()

    def cancel(self) -> None:
        self._cancel.set()

    async def next(self) -> StreamUpdate | None:
        """The next update (None at the end); raises the request's `ApiError`."""
        return _unwrap(await self._queue.get())

    async def next_watching(self, request: Request) -> StreamUpdate | None:
        """`next`, cancelling the job if the client goes away while we wait (in line, or for a slow token). An
        update already there is taken at once, without a task and a timer (the usual case while a reply streams)."""
        if not self._queue.empty():
            return _unwrap(self._queue.get_nowait())
        pending = asyncio.ensure_future(self.next())
        try:
            while True:
                done, _ = await asyncio.wait({pending}, timeout=DISCONNECT_POLL_SECONDS)
                if done:
                    return pending.result()
                if await request.is_disconnected():
                    self.cancel()
        finally:
            pending.cancel()

    def _turn(self, info: LoadedInfo) -> Turn:
        """Built once the request's turn has come: checks against the model that will really run it."""
        if self._requested and self._requested != info.view.name:
            raise ApiError(400, f"The model '{self._requested}' was replaced by '{info.view.name}' while this request "
                           "waited in line. Ask again for the loaded model, or load the one you want with POST "
                           "/v1/internal/model/load.", param="model", code="model_not_loaded")
        turn = self._build(info)
        _check_context(info.model, turn, self._prompt_param)
        self.model = info.view.name  # read by the event loop only after the first update crossed the queue
        return turn

    def _run(self) -> None:
        try:
            stream = self._state.generation.stream(f"api-{self.id}", self._turn, cancel=self._cancel)
            for update in stream:
                self._put(update)
        except ApiError as error:
            self._put(error)
        except CorralError as error:
            self._put(api_error(error))
        except Exception:  # a bug: keep the traceback in the log, give the client a 500 in the OpenAI shape
            log.exception("API generation failed")
            self._put(ApiError(500, "Internal error while generating; see the server log.", type="server_error"))
        finally:
            self._put(_DONE)

    def _put(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            self._cancel.set()


def _unwrap(item: Any) -> StreamUpdate | None:
    if item is _DONE:
        return None
    if isinstance(item, ApiError):
        raise item
    return item


@dataclass(frozen=True)
class Shape:
    """How one endpoint spells its replies (the model's name is the job's: the model that ran it)."""

    chat: bool

    def chunk(self, job: Job, text: str, finish: str | None, *, first: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {"content": text}
            choice = {"index": 0, "delta": delta if finish is None or text else {}, "finish_reason": finish,
                      "logprobs": None}
            return self._envelope(job, "chat.completion.chunk", choice)
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        return self._envelope(job, "text_completion", choice)

    def whole(self, job: Job, text: str, stats: GenerationStats) -> dict[str, Any]:
        finish = FINISH_REASONS[stats.stop_reason]
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                      "logprobs": None}
            body = self._envelope(job, "chat.completion", choice)
        else:
            body = self._envelope(job, "text_completion", {"index": 0, "text": text, "finish_reason": finish,
                                                            "logprobs": None})
        return body | {"usage": usage(stats)}

    def usage_chunk(self, job: Job, stats: GenerationStats) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {"id": self._id(job), "object": kind, "created": job.created, "model": job.model, "choices": [],
                "usage": usage(stats)}

    def _envelope(self, job: Job, kind: str, choice: dict[str, Any]) -> dict[str, Any]:
        return {"id": self._id(job), "object": kind, "created": job.created, "model": job.model,
                "choices": [choice]}

    def _id(self, job: Job) -> str:
        return ("chatcmpl-" if self.chat else "cmpl-") + job.id


def usage(stats: GenerationStats) -> dict[str, Any]:
    """OpenAI's usage object; `prompt_tokens_details.cached_tokens`: prompt tokens reused from the cache."""
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.new_tokens,
            "total_tokens": stats.prompt_tokens + stats.new_tokens,
            "prompt_tokens_details": {"cached_tokens": stats.cached_tokens}}


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


class EventStream(StreamingResponse):
    """Server-sent events that cancel their job however the response ends (done, client gone, server stopping)."""

    def __init__(self, content: AsyncIterator[str], job: Job) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._job.cancel()


async def _respond(job: Job, request: Request, shape: Shape, *, stream: bool, include_usage: bool) -> Any:
    try:
        first = await job.next_watching(request)  # waits in line; an error here is still an HTTP status
    except BaseException:
        job.cancel()
        raise
    if not stream:
        return await _whole(job, request, shape, first)
    return EventStream(_events(job, request, shape, first, include_usage), job)


async def _whole(job: Job, request: Request, shape: Shape, update: StreamUpdate | None) -> dict[str, Any]:
    try:
        while update is not None and update.stats is None:
            update = await job.next_watching(request)
    finally:
        job.cancel()
    if update is None or update.stats is None:
        raise ApiError(500, "The generation ended without a result; see the server log.", type="server_error")
    return shape.whole(job, update.text, update.stats)


async def _events(
    job: Job, request: Request, shape: Shape, update: StreamUpdate | None, include_usage: bool
) -> AsyncIterator[str]:
    sent, first = 0, True
    try:
        while update is not None:
            if update.queued:  # an SSE comment: clients skip it, a person watching the stream sees the place
                yield f": waiting in line, place {update.queued}\n\n"
            elif update.stats is not None:
                finish = FINISH_REASONS[update.stats.stop_reason]
                if len(update.text) > sent or first:
                    yield _sse(shape.chunk(job, update.text[sent:], None, first=first))
                yield _sse(shape.chunk(job, "", finish))
                if include_usage:
                    yield _sse(shape.usage_chunk(job, update.stats))
                break
            if len(update.text) > sent:
                yield _sse(shape.chunk(job, update.text[sent:], None, first=first))
                sent, first = len(update.text), False
            update = await job.next_watching(request)
        yield _sse("[DONE]")
    except ApiError as error:  # after the headers went out: the error travels as an event
        body = {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}
        yield _sse(body)
    finally:
        job.cancel()


# --- what a request must be ---------------------------------------------------------------------------------------


class RequestGuard:
    """ASGI middleware: a POST must be `application/json`, at most `max_bytes`, and JSON that
    parses within `MAX_JSON_DEPTH` levels with no lone surrogate; otherwise it is refused in the OpenAI shape
    before any route runs. The body read here is handed on unchanged."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":  # every route that acts is a POST; others 405
            await self.app(scope, receive, send)
            return
        try:
            body = await self._body(scope, receive)
            if body is None:  # the client left while sending it
                return
            _check_json(body)
        except ApiError as error:
            await error.response()(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _body(self, scope: Scope, receive: Receive) -> bytes | None:
        headers = Headers(scope=scope)
        media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "application/json":
            raise ApiError(415, "POST requests take a JSON body: send 'Content-Type: application/json' "
                           f"(got {media_type or 'none'!r}).", code="unsupported_media_type")
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise self._too_large()
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self) -> ApiError:
        return ApiError(413, f"The request body is larger than {self.max_bytes / 1_000_000:g} MB (start Corral with "
                        "--max-body-mb to change the limit).", code="request_too_large")


def _check_json(body: bytes) -> None:
    """Refuse a body that is not JSON, nests deeper than `MAX_JSON_DEPTH` or holds a lone surrogate (it would
    fail much later, when the text is encoded for the model)."""
    if not body:
        return  # a POST with no body (unload): the route says whether it needs one
    try:
        value = json.loads(body)
    except RecursionError:
        raise _too_deep() from None
    except ValueError as error:  # also UnicodeDecodeError: bytes that are no Unicode encoding
        raise ApiError(400, f"The request body is not valid JSON: {error}.") from None
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:  # iterative: a deep (but parseable) body must not exhaust the Python stack here
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise _too_deep()
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_text(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def _check_text(text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "The request holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape); "
                       "send valid Unicode text.", code="invalid_unicode") from None


def _too_deep() -> ApiError:
    return ApiError(400, f"The request body nests deeper than {MAX_JSON_DEPTH} levels.", code="json_too_deep")


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the body already read, then the client's own messages (its disconnect)."""
    sent = False

    async def replay() -> AsgiMessage:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _check_prompt_size(state: AppState, text: str, param: str) -> None:
    """Refuse a prompt over `max_prompt_chars` before it is queued or tokenized."""
    limit = state.config.max_prompt_chars
    if len(text) > limit:
        raise ApiError(400, f"The prompt is {len(text)} characters long; this server takes at most {limit} (start "
                       "Corral with --max-prompt-chars to change the limit).", param=param, code="prompt_too_long")


def _request_text(body: CompletionRequest | ChatRequest) -> str:
    if isinstance(body, CompletionRequest):
        return body.text
    return "".join(message.to_message().content for message in body.messages)


# --- the app ------------------------------------------------------------------------------------------------------


def create_app(state: AppState, *, api_key: str | None = None, hosts: AllowedHosts | None = None) -> FastAPI:
    """The API for `state`; with `api_key`, every request needs `Authorization: Bearer <api_key>`. `hosts`: the
    names it answers for (default: loopback only)."""
    app = FastAPI(title="Corral API", dependencies=[Depends(_key_checker(api_key))], docs_url=None, redoc_url=None)
    # add_middleware wraps: the last added runs first, so the Host / Origin check comes before the body is read
    app.add_middleware(RequestGuard, max_bytes=state.config.max_body_bytes)
    app.add_middleware(HostGuard, hosts=hosts or allowed_hosts("127.0.0.1"), refuse=_refusal)
    app.add_exception_handler(ApiError, lambda _request, error: error.response())
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, lambda _r, error: _validation_error(error).response())
    app.add_exception_handler(CorralError, lambda _request, error: api_error(error).response())
    app.add_exception_handler(Exception, _internal_error)
    _add_model_routes(app, state)
    _add_generation_routes(app, state)
    return app


def _internal_error(_request: Request, error: Exception) -> JSONResponse:
    """A bug: the traceback goes to the log, the client gets a 500 in the OpenAI shape."""
    log.error("API request failed", exc_info=error)
    return ApiError(500, "Internal error; see the server log.", type="server_error").response()


def _key_checker(api_key: str | None) -> Callable[[Request], None]:
    def check(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise ApiError(401, "Incorrect API key provided. Send it as 'Authorization: Bearer <key>'.",
                           code="invalid_api_key")

    return check


def _add_model_routes(app: FastAPI, state: AppState) -> None:
    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(name) for name in state.models.names()]}

    @app.get("/v1/models/{name:path}")
    def get_model(name: str) -> dict[str, Any]:
        if name not in state.models.names():
            raise ApiError(404, f"The model '{name}' does not exist.", param="model", code="model_not_found")
        return _model_card(name)

    @app.get("/v1/internal/model/info")
    def model_info() -> dict[str, Any]:
        info = state.models.current_info
        if info is None:
            return {"model_name": None, "loader": None}
        tokenizer = info.model.tokenizer
        template = chat_turn.resolve(state.templates, info, chat_turn.model_template_name(info))
        # `chat_template` is the Jinja the chat endpoint renders with, so a remote Corral builds the same prompts
        return {"model_name": info.view.name, "loader": info.model.loader, "context_length": info.model.context_length,
                "template": template.name, "chat_template": template.source, "stop": list(template.stop),
                "bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token,
                "slots": state.generation.slots(), "running": state.generation.running,
                "waiting": state.generation.waiting, "loras": _active_loras(info)}

    @app.post("/v1/internal/model/load")
    def load(body: LoadRequest) -> dict[str, Any]:
        # An unknown loader or a bad setting is a CorralError (SettingsError): the app's handler answers 400.
        loras = None if body.loras is None else [spec.choice() for spec in body.loras]
        info = state.models.load(body.model_name, loader=body.loader, loader_settings=body.settings,
                                 confirm_memory=body.confirm_memory, loras=loras)
        return {"model_name": info.view.name, "loader": info.model.loader, "load_seconds": info.model.load_seconds,
                "loras": _active_loras(info), "warnings": list(info.warnings)}

    @app.get("/v1/internal/lora/list")
    def lora_list() -> dict[str, Any]:
        fits = state.models.adapter_fits()
        return {"loras": [{"name": f.name, "fits": f.fits, "problem": f.problem or None} for f in fits]}

    @app.post("/v1/internal/lora/load")
    def lora_load(body: LorasRequest) -> dict[str, Any]:
        active = state.models.set_adapters([spec.choice() for spec in body.loras])
        return {"loras": [{"name": c.name, "scale": c.scale} for c in active]}

    @app.post("/v1/internal/model/unload")
    def unload() -> dict[str, Any]:
        state.models.unload()
        return {"model_name": None}

    @app.post("/v1/internal/token-count")
    def token_count(body: TokenCountRequest) -> dict[str, int]:
        _check_prompt_size(state, body.text, "text")
        return {"length": state.generation.count_tokens(body.text)}


def _active_loras(info: LoadedInfo) -> list[dict[str, Any]]:
    """The LoRA adapters applied to the loaded model, in order: [{"name", "scale"}]."""
    active = info.adapters.active if info.adapters is not None else ()
    return [{"name": choice.name, "scale": choice.scale} for choice in active]


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "corral"}


def _add_generation_routes(app: FastAPI, state: AppState) -> None:
    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        _check_prompt_size(state, body.text + (body.suffix or ""), "prompt")
        info = _check_model(state, body.model, state.models.current_info)  # fail fast, before waiting in line
        job = Job(state, body, info.view.name, prompt_param="prompt")
        return await _respond(job, request, Shape(chat=False), stream=body.stream, include_usage=body.include_usage)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        _check_prompt_size(state, _request_text(body), "messages")
        info = _check_model(state, body.model, state.models.current_info)  # fail fast, before waiting in line
        job = Job(state, body, info.view.name, prompt_param="messages")
        return await _respond(job, request, Shape(chat=True), stream=body.stream, include_usage=body.include_usage)


# --- serving ------------------------------------------------------------------------------------------------------


def api_address(args: argparse.Namespace) -> str:
    """127.0.0.1 unless `--listen`; beyond loopback the API needs `--api-key` (no exception: a key is cheap)."""
    return bind_address(args, protected=bool(args.api_key), needs="--api-key KEY (clients send it as a Bearer token)")


class ApiServer:
    """uvicorn serving `create_app(state)`, in the foreground (`run`) or on a daemon thread (`start`)."""

    def __init__(
        self, state: AppState, *, host: str, port: int, api_key: str | None = None, hosts: AllowedHosts | None = None
    ) -> None:
        app = create_app(state, api_key=api_key, hosts=hosts or allowed_hosts(host))
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.state, self.host, self.port = state, host, port
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        self._announce()
        self.server.run()

    def start(self, *, timeout: float = 10.0) -> ApiServer:
        self._thread = threading.Thread(target=self.server.run, name="corral-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise SystemExit(f"The API could not start on {self.host}:{self.port} (is the port in use?).")
            time.sleep(0.05)
        self._announce()
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _announce(self) -> None:
        print(f"Corral API at http://{self.host}:{self.port}/v1", flush=True)


def api_server(state: AppState, args: argparse.Namespace) -> ApiServer:
    """The server `--api` asks for (raises `SystemExit` for an unsafe `--listen`)."""
    host = api_address(args)
    return ApiServer(state, host=host, port=args.api_port, api_key=args.api_key, hosts=hosts_of_args(args, host))


def launch_api(state: AppState, args: argparse.Namespace, *, foreground: bool) -> int:
    """`--api`: beside the web UI (a daemon thread), or alone (`--nowebui`: load `--model`, then serve until
    interrupted)."""
    server = api_server(state, args)
    if not foreground:
        server.start()
        return 0
    if args.model:
        try:
            state.models.load(args.model, loader=args.loader, confirm_memory=args.yes, loras=args.loras)
        except CorralError as error:
            log.error("Could not load %s: %s", args.model, error)
    server.run()
    return 0
