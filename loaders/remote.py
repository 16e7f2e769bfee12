"""Remote engine loader: a model served by another machine, over HTTP, driven like a local one.

Two server kinds: `openai` (an OpenAI-compatible `/v1/completions`: vLLM, llama.cpp's server, another Corral with
`--api`) and `tgi` (Text Generation Inference's `/generate_stream`). The prompt is sent as text, already rendered
with the chat template, and the reply streams back as text: `RemoteModel` is a `TextStreamingModel` (no token ids,
its tokenizer only a `TokenizerInfo`) and the engine keeps doing stop strings, cancellation and statistics. Closing the
connection is how a cancel reaches the server. A server that fails or goes away mid-reply raises `GenerationError`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loaders.base import GenerationParams, MemoryReport, TextUsage, TokenizerInfo
from loaders.errors import GenerationError, ModelNotFoundError, RemoteEngineError
from loaders.settings import RemoteSettings

LOADER_NAME = "remote"
KINDS = ("openai", "tgi")
CONNECT_SECONDS = 5.0
READ_SECONDS = 300.0  # between two events: a busy cluster may queue us before the first token
OPENAI_FINISH = {"length": "max_tokens", "stop": "eos"}
TGI_FINISH = {"length": "max_tokens", "eos_token": "eos", "stop_sequence": "stop_string"}


@dataclass
class RemoteModel:
    """A model on a remote server, a `TextStreamingModel`. `context_length` is 0: the server enforces its own
    limit."""

    name: str
    path: Path
    settings: RemoteSettings = field(repr=False)
    served_model: str  # the model id the server knows it by
    client: httpx.Client = field(repr=False)
    tokenizer: TokenizerInfo
    load_seconds: float
    context_length: int = 0
    memory: MemoryReport = field(default_factory=lambda: MemoryReport(ram_bytes=0))
    loader: str = LOADER_NAME

    @property
    def device(self) -> str:
        return f"{self.settings.kind} server at {self.settings.url}"

    def stream_text(
        self, prompt: str, params: GenerationParams, cancel: threading.Event, usage: TextUsage
    ) -> Iterator[str]:
        if self.settings.kind == "tgi":
            path, body, parse = "/generate_stream", _tgi_body(prompt, params), _tgi_event
        else:
            path, body, parse = "/v1/completions", _openai_body(self.served_model, prompt, params), _openai_event
        try:
            with self.client.stream("POST", path, json=body) as response:
                _raise_for_status(response, self.settings.url)
                yield from self._events(response, parse, cancel, usage)
        except httpx.HTTPError as error:
            raise GenerationError(
                f"Lost the remote engine at {self.settings.url} mid-reply ({type(error).__name__}: {error}). "
                "Check that the server is running, then try again or load another model."
            ) from error

    def _events(self, response: httpx.Response, parse: Any, cancel: threading.Event, usage: TextUsage
                ) -> Iterator[str]:
        for line in response.iter_lines():
            if cancel.is_set():
                return  # leaving the `with` closes the connection: the server stops generating
            data = line.removeprefix("data:").strip() if line.startswith("data:") else None
            if not data:
                continue
            if data == "[DONE]":
                return
            text, finished = parse(json.loads(data), usage, self.settings.url)
            if text:
                yield text
            if finished and self.settings.kind == "tgi":
                return
        if not cancel.is_set():  # no [DONE] (openai) / no final details (tgi): the server went away
            raise GenerationError(
                f"The remote engine at {self.settings.url} closed the reply before its end. Check that the server "
                "is running, then try again or load another model."
            )

    def unload(self) -> None:
        self.client.close()


# --- request bodies and events ------------------------------------------------------------------------------------


def _openai_body(model: str, prompt: str, params: GenerationParams) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model, "prompt": prompt, "max_tokens": params.max_new_tokens, "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": params.temperature if params.do_sample else 0.0, "top_p": params.top_p,
        "presence_penalty": params.presence_penalty, "frequency_penalty": params.frequency_penalty,
    }
    if params.seed >= 0:
        body["seed"] = params.seed
    if params.stop:
        body["stop"] = list(params.stop)
    if params.ban_eos_token:
        body["ignore_eos"] = True
    extras = {"top_k": (params.top_k, 0), "min_p": (params.min_p, 0.0), "typical_p": (params.typical_p, 1.0),
              "repetition_penalty": (params.repetition_penalty, 1.0)}
    body.update({k: v for k, (v, off) in extras.items() if v != off and params.do_sample})  # off: not sent
    return body


def _openai_event(event: dict[str, Any], usage: TextUsage, url: str) -> tuple[str, bool]:
    if "error" in event:
        raise GenerationError(f"The remote engine at {url} failed mid-reply: {_message(event)}")
    if event.get("usage"):
        usage.prompt_tokens = event["usage"].get("prompt_tokens") or 0
        usage.new_tokens = event["usage"].get("completion_tokens") or 0
    choices = event.get("choices") or []
    if not choices:
        return "", False
    finish = choices[0].get("finish_reason")
    if finish:
        usage.stop_reason = OPENAI_FINISH.get(finish, "eos")
    return choices[0].get("text") or "", bool(finish)


def _tgi_body(prompt: str, params: GenerationParams) -> dict[str, Any]:
    parameters: dict[str, Any] = {"max_new_tokens": params.max_new_tokens, "do_sample": params.do_sample,
                                  "details": True, "stop": list(params.stop)}
    if params.do_sample:  # TGI refuses temperature 0, top_p 1, typical_p 1, top_k 0: leave them out instead
        parameters["temperature"] = max(params.temperature, 1e-3)
        if 0 < params.top_p < 1:
            parameters["top_p"] = params.top_p
        if params.top_k > 0:
            parameters["top_k"] = params.top_k
        if 0 < params.typical_p < 1:
            parameters["typical_p"] = params.typical_p
    if params.repetition_penalty != 1.0:
        parameters["repetition_penalty"] = params.repetition_penalty
    if params.frequency_penalty:
        parameters["frequency_penalty"] = params.frequency_penalty
    if params.seed >= 0:
        parameters["seed"] = params.seed
    return {"inputs": prompt, "parameters": parameters}


def _tgi_event(event: dict[str, Any], usage: TextUsage, url: str) -> tuple[str, bool]:
    if "error" in event:
        raise GenerationError(f"The remote engine at {url} failed mid-reply: {_message(event)}")
    token = event.get("token") or {}
    details = event.get("details")
    if details:
        usage.stop_reason = TGI_FINISH.get(details.get("finish_reason", ""), "eos")
        usage.new_tokens = details.get("generated_tokens") or 0
    return ("" if token.get("special") else token.get("text") or ""), bool(details)


def _message(body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error or body)


def _raise_for_status(response: httpx.Response, url: str) -> None:
    if response.status_code < 400:
        return
    response.read()
    try:
        message = _message(response.json())
    except ValueError:
        message = response.text[:500]
    if response.status_code in (401, 403):
        raise GenerationError(f"The remote engine at {url} refused the API key ({response.status_code}): {message}")
    raise GenerationError(f"The remote engine at {url} refused the request ({response.status_code}): {message}")


# --- loading ------------------------------------------------------------------------------------------------------


def load(path: Path, settings: RemoteSettings, *, name: str) -> RemoteModel:
    """Connect to the server in `settings` and check that it serves the model; nothing is downloaded."""
    if settings.kind not in KINDS:
        raise RemoteEngineError(f"Remote engine kind must be one of {', '.join(KINDS)}, not {settings.kind!r}.")
    if not settings.url.startswith(("http://", "https://")):
        raise RemoteEngineError(f"The remote engine URL must start with http:// or https:// (got {settings.url!r}).")
    started = time.perf_counter()
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    client = httpx.Client(base_url=settings.url.rstrip("/"), headers=headers,
                          timeout=httpx.Timeout(READ_SECONDS, connect=CONNECT_SECONDS))
    try:
        served, tokenizer = _probe_tgi(client) if settings.kind == "tgi" else _probe_openai(client, settings.model)
    except httpx.HTTPError as error:
        client.close()
        raise RemoteEngineError(
            f"Cannot reach the remote engine at {settings.url} ({type(error).__name__}: {error}). "
            "Check the URL and that the server is running."
        ) from error
    except (RemoteEngineError, ModelNotFoundError):
        client.close()
        raise
    return RemoteModel(name=name, path=Path(path), settings=settings, served_model=served, client=client,
                       tokenizer=tokenizer, load_seconds=time.perf_counter() - started)


def _probe_openai(client: httpx.Client, wanted: str) -> tuple[str, TokenizerInfo]:
    models = [m.get("id") for m in _get_json(client, "/v1/models").get("data", [])]
    if wanted and wanted not in models:
        raise ModelNotFoundError(f"The remote engine at {client.base_url} serves {', '.join(models) or 'nothing'}, "
                                 f"not {wanted!r}. Fix 'model' for this endpoint.")
    if not wanted and not models:
        raise RemoteEngineError(f"The remote engine at {client.base_url} lists no models.")
    return wanted or models[0], _corral_tokenizer(client)


def _corral_tokenizer(client: httpx.Client) -> TokenizerInfo:
    """Another Corral tells its model's chat template and special tokens; other servers do not (404)."""
    response = client.get("/v1/internal/model/info")
    if response.status_code != 200:
        return TokenizerInfo()
    info = response.json()
    return TokenizerInfo(bos_token=info.get("bos_token"), eos_token=info.get("eos_token"),
                           chat_template=info.get("chat_template"))


def _probe_tgi(client: httpx.Client) -> tuple[str, TokenizerInfo]:
    info = _get_json(client, "/info")
    return str(info.get("model_id", "")), TokenizerInfo()


def _get_json(client: httpx.Client, path: str) -> dict[str, Any]:
    response = client.get(path)
    if response.status_code in (401, 403):
        raise RemoteEngineError(f"The remote engine at {client.base_url} refused the API key "
                                f"({response.status_code}). Set the right 'api_key' for this endpoint.")
    if response.status_code >= 400:
        raise RemoteEngineError(f"The remote engine at {client.base_url} answered {response.status_code} to "
                                f"{path}: {response.text[:300]}")
    try:
        return response.json()
    except ValueError as error:
        raise RemoteEngineError(f"The remote engine at {client.base_url} did not answer JSON on {path}.") from error
