"""The remote loader, driven through a second Corral process (`app.py --api --nowebui`, SmolLM2 on llama.cpp) on
127.0.0.1: listed like a local model, chats through the same chat service as the Chat tab, Stop frees the remote
engine, and killing the server mid-reply gives a clear `GenerationError` while the app goes on working.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from loaders.base import GenerationParams
from loaders.errors import GenerationError, ModelNotFoundError, RemoteEngineError
from tests.conftest import link_tree
from tests.test_api import free_port
from webui import chat_service
from webui.generation import raw_turn
from webui.history import Chat
from webui.state import AppConfig, AppState

REPO = Path(__file__).resolve().parent.parent
LOCAL = "SmolLM2-135M-Instruct-GGUF"
REMOTE = "corral-remote"
KEY = "remote-key"
GREEDY = GenerationParams(do_sample=False, max_new_tokens=20)


def start_corral(models: Path, port: int) -> subprocess.Popen:
    command = [sys.executable, str(REPO / "app.py"), "--api", "--nowebui", "--models-dir", str(models),
               "--model", LOCAL, "--api-port", str(port), "--api-key", KEY, "--data-dir", str(models.parent / "data")]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the remote Corral exited: {process.stderr.read()}")
        try:
            info = httpx.get(f"http://127.0.0.1:{port}/v1/internal/model/info",
                             headers={"Authorization": f"Bearer {KEY}"}, timeout=2).json()
            if info.get("model_name") == LOCAL:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("the remote Corral did not load its model in time")


@pytest.fixture(scope="module")
def remote_models(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Path:
    models = tmp_path_factory.mktemp("server") / "models"
    link_tree(smollm2_gguf.parent, models / LOCAL)
    return models


@pytest.fixture()
def server(remote_models: Path) -> Iterator[tuple[subprocess.Popen, int]]:
    port = free_port()
    process = start_corral(remote_models, port)
    yield process, port
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def client_state(tmp_path: Path, smollm2_gguf: Path, port: int, key: str = KEY) -> AppState:
    models = tmp_path / "models"
    link_tree(smollm2_gguf.parent, models / LOCAL)
    (models / "remote.yaml").write_text(
        f"{REMOTE}:\n  url: http://127.0.0.1:{port}\n  kind: openai\n  api_key_env: CORRAL_TEST_REMOTE_KEY\n")
    os.environ["CORRAL_TEST_REMOTE_KEY"] = key
    return AppState(config=AppConfig(models_dir=models, user_data_dir=tmp_path / "data"))


def chat_reply(state: AppState, text: str, params: GenerationParams = GREEDY) -> str:
    chat = Chat(id=f"c{time.monotonic_ns()}", mode="instruct")
    reply = ""
    for _chat, update in chat_service.send(state, "session-a", chat, text, params):
        reply = update.text
    return reply


def test_listed_and_chatting_like_a_local_model(tmp_path: Path, smollm2_gguf: Path, server) -> None:
    _process, port = server
    state = client_state(tmp_path, smollm2_gguf, port)
    assert state.models.names() == [LOCAL, REMOTE]
    view = state.models.inspect(REMOTE)
    assert view.resolved.loader == "remote" and view.resolved.loader_settings.api_key == ""  # never shown
    info = state.models.load(REMOTE)
    assert info.model.loader == "remote" and info.model.served_model == LOCAL
    assert info.model.tokenizer.chat_template and "<|im_start|>" in info.model.tokenizer.chat_template
    reply = chat_reply(state, "What is the capital of France?")
    # the same as asking the server's own chat endpoint: the prompt was built with the model's template here
    direct = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0).chat.completions.create(
        model=LOCAL, messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=20,
        temperature=0)
    assert reply and reply == direct.choices[0].message.content
    stats = [u.stats for u in state.generation.stream("s", raw_turn("Hello", GREEDY)) if u.stats][0]
    assert stats.prompt_tokens > 0 and 0 < stats.new_tokens <= 20 and stats.stop_reason in ("eos", "max_tokens")
    state.models.unload()


def test_stop_frees_the_remote_engine(tmp_path: Path, smollm2_gguf: Path, server) -> None:
    _process, port = server
    state = client_state(tmp_path, smollm2_gguf, port)
    state.models.load(REMOTE)
    long = dataclasses.replace(GREEDY, max_new_tokens=1500, ban_eos_token=True)
    stream = state.generation.stream("session-a", raw_turn("Tell a long story.", long))
    for count, _update in enumerate(stream):
        if count == 3:
            state.generation.stop("session-a")
    stopped = time.perf_counter()
    assert chat_reply(state, "Hi", dataclasses.replace(GREEDY, max_new_tokens=2))
    assert time.perf_counter() - stopped < 10  # not behind 1500 tokens of the abandoned story
    state.models.unload()


def test_killing_the_server_mid_reply_is_a_clear_error(tmp_path: Path, smollm2_gguf: Path, server) -> None:
    process, port = server
    state = client_state(tmp_path, smollm2_gguf, port)
    state.models.load(REMOTE)
    long = dataclasses.replace(GREEDY, max_new_tokens=1500, ban_eos_token=True)
    chat = Chat(id="killed", mode="instruct")
    received = ""
    with pytest.raises(GenerationError, match="remote engine at http://127.0.0.1") as error:
        for count, (_chat, update) in enumerate(chat_service.send(state, "session-a", chat, "Tell a story.", long)):
            received = update.text
            if count == 3:
                process.kill()
    assert "try again or load another model" in str(error.value)
    assert received  # the reply so far was shown, and is saved with the chat
    assert [m.content for m in state.history.load("killed").messages][-1] == received
    # the app goes on: the line for the model is free and a local model loads and answers
    with pytest.raises(RemoteEngineError, match="Cannot reach"):
        state.models.load(REMOTE)
    state.models.load(LOCAL, loader_settings={"n_ctx": 512}, confirm_memory=True)
    assert chat_reply(state, "Hi", dataclasses.replace(GREEDY, max_new_tokens=3))
    state.models.unload()


def test_wrong_key_and_unknown_model_are_refused_at_load(tmp_path: Path, smollm2_gguf: Path, server) -> None:
    _process, port = server
    state = client_state(tmp_path, smollm2_gguf, port, key="wrong")
    with pytest.raises(RemoteEngineError, match="refused the API key"):
        state.models.load(REMOTE)
    (state.config.models_dir / "remote.yaml").write_text(
        f"{REMOTE}:\n  url: http://127.0.0.1:{port}\n  model: nope\n  api_key: {KEY}\n")
    with pytest.raises(ModelNotFoundError, match="not 'nope'"):
        state.models.load(REMOTE)
    assert state.models.current is None


def _tgi_server(events: list[dict], seen: list[dict]) -> httpx.Client:
    """Text Generation Inference's `/generate_stream` wire format (`data:` events), replayed."""

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/generate_stream"
        seen.append(json.loads(request.content))
        body = "".join(f"data:{json.dumps(event)}\n\n" for event in events)
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    return httpx.Client(transport=httpx.MockTransport(handler), base_url="http://tgi.test")


def _tgi_token(text: str, *, special: bool = False, details: dict | None = None) -> dict:
    return {"token": {"id": 1, "text": text, "logprob": -0.1, "special": special}, "generated_text": None,
            "details": details}


def test_tgi_stream_through_the_engine() -> None:
    from loaders.base import TokenizerInfo
    from loaders.remote import RemoteModel
    from loaders.settings import RemoteSettings
    from webui.engine import generate

    pieces = ["Hel", "lo", " wor", "ld"]
    events = [_tgi_token(p) for p in pieces]
    events.append(_tgi_token("</s>", special=True, details={"finish_reason": "eos_token", "generated_tokens": 5}))
    seen: list[dict] = []
    model = RemoteModel(name="tgi", path=Path("."), settings=RemoteSettings(url="http://tgi.test", kind="tgi"),
                        served_model="m", client=_tgi_server(events, seen), tokenizer=TokenizerInfo(),
                        load_seconds=0.0)
    params = GenerationParams(max_new_tokens=8, temperature=0.5, top_p=1.0, top_k=0, seed=7)
    generation = generate(model, "Say hello", params)
    assert "".join(generation) == "".join(pieces) and generation.text == "Hello world"
    assert generation.stats.stop_reason == "eos" and generation.stats.new_tokens == 5
    sent = seen[0]["parameters"]
    assert seen[0]["inputs"] == "Say hello" and sent["seed"] == 7 and sent["max_new_tokens"] == 8
    assert "top_p" not in sent and "top_k" not in sent  # TGI refuses top_p 1 / top_k 0: left out
    stopped = generate(model, "Say hello", dataclasses.replace(params, stop=("o w",)))
    assert "".join(stopped) == "Hell" and stopped.stats.stop_reason == "stop_string"
    cut_model = dataclasses.replace(model, client=_tgi_server(events[:2], []))  # the server died after 2 tokens
    with pytest.raises(GenerationError, match="closed the reply before its end"):
        list(generate(cut_model, "Say hello", params))
