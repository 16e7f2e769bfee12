"""What every API route shares, below the routes themselves: the error an API request ends with (`ApiError`, in the
OpenAI shape by default), the one mapping of Corral's exceptions onto HTTP statuses, a body that fails validation
as a 400 naming the field, the API key check, and the server-sent event response that cancels its job.

The OpenAI routes (`webui/api.py`) and the Anthropic ones (`webui/api_anthropic.py`) raise the same `ApiError`;
each answers it in its own protocol's shape. The key is accepted as `Authorization: Bearer KEY` (OpenAI clients)
or `x-api-key: KEY` (Anthropic clients), compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from loaders.errors import (
    ConstraintError,
    CorralError,
    GenerationError,
    InsufficientMemoryError,
    ModelNotFoundError,
    ModelNotLoadedError,
    TemplateNotFoundError,
    TemplateRenderError,
)


class ApiError(Exception):
    """An error answered in the OpenAI shape (`response`), or another protocol's (`body` is its fields)."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    @property
    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status)


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
    if isinstance(error, ConstraintError):
        return ApiError(400, str(error), param="response_format", code="invalid_response_format")
    if isinstance(error, GenerationError):
        return ApiError(400, str(error), code="generation_error")
    return ApiError(400, str(error))


def key_checker(api_key: str | None) -> Callable[[Request], None]:
    """A route dependency refusing (401) a request without `api_key`, when there is one."""

    def check(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            given = request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise ApiError(401, "Incorrect API key provided. Send it as 'Authorization: Bearer <key>' (or "
                           "'x-api-key: <key>').", code="invalid_api_key")

    return check


def validation_error(error: RequestValidationError) -> ApiError:
    """A request body that does not fit its model, as the 400 an OpenAI client expects (naming the field)."""
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


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class EventStream(StreamingResponse):
    """Server-sent events that cancel their job however the response ends (done, client gone, server stopping)."""

    def __init__(self, content: AsyncIterator[str], job: Cancellable) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._job.cancel()
