"""The embeddings routes of the OpenAI-compatible API: `/v1/embeddings` and the dedicated embedding model's
`/v1/internal/embedding-model/{load,unload,info}` (the service is `webui/embeddings.py`).

`input` is a string or a list of strings; token arrays are refused (they would be another tokenizer's ids: OpenAI
clients such as LangChain's send tiktoken ids unless told `check_embedding_ctx_length=False`). `encoding_format`
"base64" gives little-endian float32 bytes, as OpenAI's (the `openai` client asks for it by default).
`dimensions` must be the model's own size: these models are not trained to be cut short.
"""

from __future__ import annotations

import base64
import struct
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from webui.api_common import ApiError
from webui.state import AppState


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)

    def texts(self) -> list[str]:
        if isinstance(self.input, str):
            return [self.input]
        if not self.input:
            raise ApiError(400, "'input' is empty: give a string or a list of strings.", param="input")
        if not all(isinstance(item, str) for item in self.input):
            raise ApiError(400, "'input' holds token ids; this server takes text (a string or a list of strings). "
                           "With LangChain, set check_embedding_ctx_length=False.", param="input")
        return list(self.input)  # type: ignore[arg-type]


class EmbeddingModelRequest(BaseModel):
    model_name: str = Field(min_length=1)


def add_routes(app: FastAPI, state: AppState) -> None:
    # Plain `def` routes: FastAPI runs them on its worker threads, so a long embedding never blocks the event loop.
    @app.post("/v1/embeddings")
    def embeddings(body: EmbeddingRequest) -> dict[str, Any]:
        texts = body.texts()
        chars = sum(len(text) for text in texts)
        if chars > state.config.max_prompt_chars:
            raise ApiError(400, f"The input is {chars} characters long; this server takes at most "
                           f"{state.config.max_prompt_chars}.", param="input", code="prompt_too_long")
        name, result = state.embeddings.embed(body.model, texts)
        size = len(result.vectors[0]) if result.vectors else 0
        if body.dimensions is not None and body.dimensions != size:
            raise ApiError(400, f"{name} gives {size}-dimensional vectors; 'dimensions' can only be {size}.",
                           param="dimensions")
        data = [{"object": "embedding", "index": i, "embedding": _encoded(vector, body.encoding_format)}
                for i, vector in enumerate(result.vectors)]
        return {"object": "list", "data": data, "model": name,
                "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens}}

    @app.post("/v1/internal/embedding-model/load")
    def load(body: EmbeddingModelRequest) -> dict[str, Any]:
        return {"model_name": body.model_name, "dimensions": state.embeddings.load(body.model_name)}

    @app.post("/v1/internal/embedding-model/unload")
    def unload() -> dict[str, Any]:
        state.embeddings.unload()
        return {"model_name": None}

    @app.get("/v1/internal/embedding-model/info")
    def info() -> dict[str, Any]:
        return {"model_name": state.embeddings.dedicated}


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
