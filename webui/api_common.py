"""What every API route shares, below the routes themselves: the error an API request ends with (`ApiError`, in the
OpenAI shape by default), the one mapping of Corral's exceptions onto HTTP statuses, and the API key check.

The OpenAI routes (`webui/api.py`) and the Anthropic ones (`webui/api_anthropic.py`) raise the same `ApiError`;
each answers it in its own protocol's shape. The key is accepted as `Authorization: Bearer KEY` (OpenAI clients)
or `x-api-key: KEY` (Anthropic clients), compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

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
