"""The OpenAI-compatible HTTP API (`--api`): routes, request validation, the OpenAI error shape, and serving.

Owns `/v1/models`, `/v1/completions` (with OpenAI's `suffix`: fill in the middle), `/v1/chat/completions`
(server-sent events or one JSON reply), `/v1/internal/model/{load,unload,info}` (info lists the active LoRA
adapters and the parallel slots), `/v1/internal/lora/{list,load}` and `/v1/internal/token-count`, and mounts the
routes of its sibling modules: `/v1/embeddings` (`api_embeddings.py`) and Anthropic's `/v1/messages`
(`api_anthropic.py`, run as a chat request here). What a request asks beyond the samplers is read once, before it
waits in line: structured output, logprobs and context (`api_structured.py`), tools (`api_tools.py`), the model
(`model_switch.py`: loaded on demand, or waited for while it loads); replies are spelled by `api_replies.py`.
Generation goes through the same `GenerationService` as the UI, so API and UI requests share the model's parallel
slots and one first-come-first-served line beyond them; a request's prompt, parameters and context check are built
once its turn has come, from the model that runs it (a chat through the same prompt builder as the Chat tab,
`webui/chat_turn.py`). A streaming request that has to wait in line gets an SSE comment (`: waiting in line,
place N`) each time its place changes. Usage reports the prompt tokens reused from the cache
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
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from loaders.base import AnyModel, GenerationParams
from loaders.errors import CorralError
from loaders.lora import AdapterChoice
from webui import api_anthropic, api_embeddings, chat_turn, infill
from webui.api_common import ApiError, EventStream, api_error, key_checker, validation_error
from webui.api_replies import ReplyShape, ReplyUpdate
from webui.api_structured import LogprobReader, RequestOptions, StructuredFields, request_options
from webui.api_tools import ToolCallIn, ToolFields, chat_turn_builder
from webui.engine import is_token_model
from webui.generation import StreamUpdate, Turn, TurnBuilder
from webui.listen import AllowedHosts, HostGuard, allowed_hosts, bind_address, hosts_of_args
from webui.model_switch import ModelRequest
from webui.state import AppState
from webui.templates import Message

if TYPE_CHECKING:
    from webui.model_service import LoadedInfo

log = logging.getLogger(__name__)

DISCONNECT_POLL_SECONDS = 0.1  # while a request waits in line, how often we look for its client having gone
ROLE_ALIASES = {"developer": "system"}
MAX_JSON_DEPTH = 64  # far beyond any OpenAI request; bounds the work of parsing and validating one


# --- errors -------------------------------------------------------------------------------------------------------


def _refusal(status: int, message: str, code: str) -> Response:
    return ApiError(status, message, code=code).response()


def _http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
    """Starlette's own 404 / 405, in the OpenAI shape too."""
    return ApiError(error.status_code, str(error.detail), code="not_found" if error.status_code == 404 else None
                    ).response()


# --- requests -----------------------------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(StructuredFields):
    """Fields shared by both completion endpoints; our extra samplers are extra body fields. Structured output and
    the per-request context: `webui/api_structured.py`."""

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
    logprobs: int | None = Field(None, ge=0, le=20)
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

    def options(self) -> RequestOptions:
        return request_options(self, logprobs=self.logprobs)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCallIn] | None = None  # tools: `webui/api_tools.py`
    tool_call_id: str | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        content = self.content or ""
        return content if isinstance(content, str) else "".join(part.text for part in content)

    def to_message(self) -> Message:
        """As a plain chat message (any role but "tool": `webui/api_tools.py` writes those)."""
        return Message(ROLE_ALIASES.get(self.role, self.role), self.text)


class ChatRequest(SamplingRequest, ToolFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)

    def options(self) -> RequestOptions:
        return request_options(self, logprobs=self.logprobs, top_logprobs=self.top_logprobs)


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


def _params(state: AppState, info: LoadedInfo, body: SamplingRequest, options: RequestOptions) -> GenerationParams:
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
    return options.apply(dataclasses.replace(base, **asked, stop=stops, truncation_length=context), info.model)


def _check_context(model: AnyModel, turn: Turn, param: str) -> None:
    """Refuse (rather than silently cut) a prompt that does not fit the context with max_tokens."""
    if not is_token_model(model) or model.context_length <= 0:
        return  # a remote engine: it answers for its own context
    params = turn.params
    prompt_tokens = len(turn.prompt_ids) if turn.prompt_ids is not None else \
        len(model.tokenizer.encode(turn.prompt, add_bos=params.add_bos_token))  # fmt: skip
    context = min(model.context_length, params.truncation_length)  # a request may ask less (num_ctx)
    if prompt_tokens + params.max_new_tokens > context:
        raise ApiError(
            400, f"This model's maximum context length is {context} tokens. However, you "
            f"requested {prompt_tokens + params.max_new_tokens} tokens ({prompt_tokens} in the prompt, "
            f"{params.max_new_tokens} for the completion). Shorten the prompt or lower max_tokens.",
            param=param, code="context_length_exceeded",
        )


def _request_turn(state: AppState, body: CompletionRequest | ChatRequest, options: RequestOptions) -> TurnBuilder:
    """The turn for `body`, built (by `GenerationService.stream`) from the model that will run it: a chat in that
    model's template (with its tools: `webui/api_tools.py`) through the shared chat prompt builder, or the
    completion prompt as given."""
    if isinstance(body, ChatRequest):
        return chat_turn_builder(state.templates, body.messages, options.tools,
                                 lambda info: _params(state, info, body, options))
    if body.suffix is not None:  # fill in the middle: the reply is the middle alone
        return infill.infill_turn(body.text, body.suffix, lambda info: _params(state, info, body, options))
    return lambda info: Turn(body.text, _params(state, info, body, options))


# --- running one request ------------------------------------------------------------------------------------------

_DONE = object()


class Job:
    """One generation on a worker thread, its updates handed to the event loop through a queue."""

    def __init__(
        self, state: AppState, body: CompletionRequest | ChatRequest, model: str, *, prompt_param: str,
        options: RequestOptions,
    ) -> None:
        """`model`: the name replies carry, until the turn is built on the model that runs it."""
        self.id = uuid.uuid4().hex
        self.created = int(time.time())
        self.model = model
        self._state = state
        self._cancel = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._requested = ModelRequest(body.model, options.context)
        self._prompt_param = prompt_param
        self._build = _request_turn(state, body, options)
        self.options = options
        self._logprobs: LogprobReader | None = None  # set with the model that runs the turn, if asked for
        threading.Thread(target=self._run, name=f"api-{self.id[:8]}", daemon=True).start()

    def cancel(self) -> None:
        self._cancel.set()

    async def next(self) -> ReplyUpdate | None:
        """The next update (None at the end); raises the request's `ApiError`."""
        return _unwrap(await self._queue.get())

    async def next_watching(self, request: Request) -> ReplyUpdate | None:
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
        """Built once the request's turn has come (on the model it asked for: `ModelSwitcher.stream` sees to it):
        checks against the model that will really run it."""
        turn = self._build(info)
        _check_context(info.model, turn, self._prompt_param)
        self.model = info.view.name  # read by the event loop only after the first update crossed the queue
        if self.options.logprobs is not None:
            self._logprobs = LogprobReader(info.model.tokenizer)
        return turn

    def _reply(self, update: StreamUpdate) -> ReplyUpdate:
        """The update with its new log-probabilities as text, made here: the model is loaded while it streams."""
        entries = update.decode.logprobs if update.decode is not None else []
        logprobs = self._logprobs.new(entries) if self._logprobs is not None else ()
        return ReplyUpdate(update.text, update.stats, logprobs, update.queued)

    def _run(self) -> None:
        try:
            stream = self._state.model_switch.stream(self._requested, f"api-{self.id}", self._turn,
                                                     cancel=self._cancel)
            for update in stream:
                self._put(self._reply(update))
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


def _unwrap(item: Any) -> ReplyUpdate | None:
    if item is _DONE:
        return None
    if isinstance(item, ApiError):
        raise item
    return item


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


async def _first(job: Job, request: Request) -> ReplyUpdate | None:
    try:
        return await job.next_watching(request)  # waits in line; an error here is still an HTTP status
    except BaseException:
        job.cancel()
        raise


async def _respond(job: Job, request: Request, shape: ReplyShape, *, stream: bool, include_usage: bool) -> Any:
    first = await _first(job, request)
    if not stream:
        return await _whole(job, request, shape, first)
    return EventStream(_events(job, request, shape, first, include_usage), job)


async def _whole(job: Job, request: Request, shape: ReplyShape, update: ReplyUpdate | None) -> dict[str, Any]:
    logprobs = []
    try:
        while update is not None:
            logprobs.extend(update.logprobs)
            if update.stats is not None:
                break
            update = await job.next_watching(request)
    finally:
        job.cancel()
    if update is None or update.stats is None:
        raise ApiError(500, "The generation ended without a result; see the server log.", type="server_error")
    return shape.whole(job, update.text, update.stats, logprobs)


async def _events(
    job: Job, request: Request, shape: ReplyShape, update: ReplyUpdate | None, include_usage: bool
) -> AsyncIterator[str]:
    writer = shape.writer(job)
    try:
        while update is not None:
            if update.queued:  # an SSE comment: clients skip it, a person watching the stream sees the place
                yield f": waiting in line, place {update.queued}\n\n"
                update = await job.next_watching(request)
                continue
            for chunk in writer.push(update):
                yield _sse(chunk)
            if update.stats is not None:
                if include_usage:
                    yield _sse(shape.usage_chunk(job, update.stats))
                break
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
    return "".join(message.text for message in body.messages)


# --- the app ------------------------------------------------------------------------------------------------------


def create_app(state: AppState, *, api_key: str | None = None, hosts: AllowedHosts | None = None) -> FastAPI:
    """The API for `state`; with `api_key`, every request needs `Authorization: Bearer <api_key>`. `hosts`: the
    names it answers for (default: loopback only)."""
    app = FastAPI(title="Corral API", dependencies=[Depends(key_checker(api_key))], docs_url=None, redoc_url=None)
    # add_middleware wraps: the last added runs first, so the Host / Origin check comes before the body is read
    app.add_middleware(RequestGuard, max_bytes=state.config.max_body_bytes)
    app.add_middleware(HostGuard, hosts=hosts or allowed_hosts("127.0.0.1"), refuse=_refusal)
    app.add_exception_handler(ApiError, lambda _request, error: error.response())
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, lambda _r, error: validation_error(error).response())
    app.add_exception_handler(CorralError, lambda _request, error: api_error(error).response())
    app.add_exception_handler(Exception, _internal_error)
    _add_model_routes(app, state)
    _add_generation_routes(app, state)
    api_embeddings.add_routes(app, state)
    api_anthropic.add_routes(app, _chat_starter(state))
    return app


def _internal_error(_request: Request, error: Exception) -> JSONResponse:
    """A bug: the traceback goes to the log, the client gets a 500 in the OpenAI shape."""
    log.error("API request failed", exc_info=error)
    return ApiError(500, "Internal error; see the server log.", type="server_error").response()


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
        job = _start(state, body, "prompt")  # fails fast, before waiting in line
        shape = ReplyShape(chat=False, logprobs=job.options.logprobs is not None)
        return await _respond(job, request, shape, stream=body.stream, include_usage=body.include_usage)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        job = _start(state, body, "messages")
        shape = ReplyShape(chat=True, tools=job.options.tools, logprobs=job.options.logprobs is not None)
        return await _respond(job, request, shape, stream=body.stream, include_usage=body.include_usage)


def _start(state: AppState, body: CompletionRequest | ChatRequest, prompt_param: str) -> Job:
    """The job of a request, once everything that can be checked before it waits in line is (its model, options)."""
    if isinstance(body, ChatRequest):
        _check_prompt_size(state, _request_text(body), prompt_param)
    options = body.options()
    model = state.model_switch.check(ModelRequest(body.model, options.context))
    return Job(state, body, model, prompt_param=prompt_param, options=options)


def _chat_starter(state: AppState) -> api_anthropic.ChatStarter:
    """How the Anthropic routes run a chat: as a chat request of this API (`webui/api_anthropic.py`)."""

    async def start(fields: dict[str, Any], request: Request) -> api_anthropic.ChatRun:
        try:
            body = ChatRequest.model_validate(fields)
        except ValidationError as error:
            raise validation_error(RequestValidationError(error.errors())) from None
        job = _start(state, body, "messages")
        first = await _first(job, request)
        return api_anthropic.ChatRun(job, first, job.options.tools)

    return start


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
