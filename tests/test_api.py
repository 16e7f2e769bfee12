"""The OpenAI-compatible API, driven with the official `openai` client against SmolLM2 (llama.cpp GGUF) served on
127.0.0.1: chat and completions (streamed and not), stop strings, seeds, the error shapes and statuses, fair
queuing, and a killed client freeing the engine.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import link_tree
from webui.api import ApiServer
from webui.state import AppConfig, AppState

MODEL = "SmolLM2-135M-Instruct-GGUF"
KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path, smollm2_hf: Path) -> Path:
    root = tmp_path_factory.mktemp("api") / "models"
    link_tree(smollm2_gguf.parent, root / MODEL)
    link_tree(smollm2_hf, root / "SmolLM2-135M-Instruct")
    return root


@pytest.fixture(scope="module")
def server(models_root: Path) -> Iterator[ApiServer]:
    state = AppState(config=AppConfig(models_dir=models_root))
    state.models.load(MODEL, loader_settings={"n_ctx": 2048, "parallel": 1}, confirm_memory=True)  # one at a time
    api = ApiServer(state, host="127.0.0.1", port=free_port(), api_key=KEY).start()
    yield api
    api.stop()
    state.models.unload()


@pytest.fixture(scope="module")
def client(server: ApiServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=KEY, max_retries=0, timeout=120)


def still_serving(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=2, temperature=0)
    assert reply.choices[0].text and reply.usage.completion_tokens >= 1


# --- replies ----------------------------------------------------------------------------------------------------------


def test_models_lists_the_folder(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert ids == sorted([MODEL, "SmolLM2-135M-Instruct"], key=str.lower)


def test_chat_non_streaming_uses_the_chat_template(client: openai.OpenAI, smollm2_hf: Path) -> None:
    from transformers import AutoTokenizer

    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.model == MODEL and choice.message.role == "assistant"
    assert choice.message.content and "<|im_" not in choice.message.content
    # the same reply as a completion of the prompt transformers renders from the model's own template
    reference = AutoTokenizer.from_pretrained(smollm2_hf).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)
    raw = client.completions.create(model=MODEL, prompt=reference, max_tokens=24, temperature=0)
    assert choice.message.content == raw.choices[0].text
    assert reply.usage.prompt_tokens == raw.usage.prompt_tokens
    assert choice.finish_reason == raw.choices[0].finish_reason


def test_chat_streaming_equals_non_streaming(client: openai.OpenAI) -> None:
    request = {"model": MODEL, "messages": [{"role": "user", "content": "Name three colours."}],
               "max_tokens": 20, "temperature": 0}
    whole = client.chat.completions.create(**request).choices[0].message.content
    chunks = list(client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    assert len([d for d in deltas if d.content]) > 3  # streamed piece by piece, not in one lump
    assert "".join(d.content or "" for d in deltas) == whole
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and set(finishes[:-1]) == {None}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= len([d for d in deltas if d.content])


def test_completion_streaming_and_not(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0)
    assert whole.object == "text_completion" and whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 12
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stream=True))
    assert streamed == whole.choices[0].text and streamed.startswith(" 5")


def test_stop_cuts_the_reply_before_the_stop_string(client: openai.OpenAI) -> None:
    free = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0)
    text = free.choices[0].text
    stop = text.split(",")[2].strip()  # the third number the model writes
    cut = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0, stop=stop, stream=True))
    assert streamed == cut.choices[0].text


def test_the_next_turn_reports_the_prompt_tokens_it_reused(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Name a fruit."}]
    first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "And a vegetable?"}]
    second = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens <= cached < second.usage.prompt_tokens  # the first turn was not read again


def test_seed_repeats_a_sampled_reply(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        return client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=24, temperature=1.0,
                                         top_p=1.0, seed=seed, extra_body={"top_k": 0}).choices[0].text

    first = sample(1234)
    assert sample(1234) == first
    assert len({first, sample(1), sample(2)}) > 1  # the seed is what made them equal


def test_extra_samplers_are_accepted_and_checked(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, extra_body={
        "top_k": 5, "min_p": 0.05, "typical_p": 0.9, "repetition_penalty": 1.2, "presence_penalty": 0.5})
    assert reply.usage.completion_tokens >= 1
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, extra_body={"min_p": 3})
    assert error.value.body["param"] == "min_p"


# --- errors -----------------------------------------------------------------------------------------------------------


def test_bad_json_is_400(server: ApiServer, client: openai.OpenAI) -> None:
    response = httpx.post(f"http://127.0.0.1:{server.port}/v1/chat/completions", content=b'{"model": "x", ',
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert "not valid JSON" in error["message"] and error["type"] == "invalid_request_error"
    still_serving(client)


def test_missing_field_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=MODEL, messages=[])
    assert error.value.status_code == 400 and error.value.body["param"] == "messages"
    still_serving(client)


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert error.value.status_code == 404
    assert error.value.code == "model_not_found" and "no-such-model" in error.value.message
    still_serving(client)


def test_model_on_disk_but_not_loaded_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model="SmolLM2-135M-Instruct", prompt="hi", max_tokens=2)
    assert error.value.code == "model_not_loaded" and "/v1/internal/model/load" in error.value.message
    still_serving(client)


def test_negative_max_tokens_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=-1)
    assert error.value.body["param"] == "max_tokens" and "greater than or equal to 1" in error.value.message
    still_serving(client)


def test_n_above_one_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=2, n=2)
    assert error.value.body["param"] == "n"


def test_one_megabyte_prompt_is_refused_not_truncated(client: openai.OpenAI) -> None:
    prompt = "lorem ipsum " * (1_000_000 // 12)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as error:
            client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, stream=stream)
        assert error.value.code == "context_length_exceeded" and "2048" in error.value.message
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=8)
    assert error.value.body["param"] == "messages"
    still_serving(client)


@pytest.mark.parametrize("key", ["wrong-key", ""])
def test_wrong_or_missing_key_is_401(server: ApiServer, client: openai.OpenAI, key: str) -> None:
    other = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=key or "-", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as error:
        other.models.list()
    assert error.value.status_code == 401 and error.value.code == "invalid_api_key"
    if not key:
        response = httpx.get(f"http://127.0.0.1:{server.port}/v1/models")
        assert response.status_code == 401
    still_serving(client)


def test_token_count(server: ApiServer) -> None:
    response = httpx.post(f"http://127.0.0.1:{server.port}/v1/internal/token-count", json={"text": "Hello world"},
                          headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
    assert response.json()["length"] == len(server.state.models.current.tokenizer.encode("Hello world",
                                                                                          add_bos=False))


def test_no_model_loaded_is_503_then_load_and_unload(models_root: Path) -> None:
    state = AppState(config=AppConfig(models_dir=models_root))
    api = ApiServer(state, host="127.0.0.1", port=free_port()).start()
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{api.port}/v1", api_key="-", max_retries=0)
        with pytest.raises(openai.InternalServerError) as error:
            client.completions.create(model="", prompt="hi", max_tokens=2)
        assert error.value.status_code == 503 and error.value.code == "model_not_loaded"
        base = f"http://127.0.0.1:{api.port}/v1/internal/model"
        missing = httpx.post(f"{base}/load", json={"model_name": "nope"}, timeout=60)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
        bad_loader = httpx.post(f"{base}/load", json={"model_name": MODEL, "loader": "nope"}, timeout=60)
        assert bad_loader.status_code == 400 and "Unknown loader 'nope'" in bad_loader.json()["error"]["message"]
        loaded = httpx.post(f"{base}/load", json={"model_name": MODEL, "settings": {"n_ctx": 512}}, timeout=120)
        assert loaded.status_code == 200 and loaded.json()["loader"] == "llama.cpp"
        assert state.models.current.context_length == 512
        assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=2).usage.completion_tokens >= 1
        assert httpx.post(f"{base}/unload", json={}).status_code == 200 and state.models.current is None
        with pytest.raises(openai.InternalServerError):
            client.completions.create(model="", prompt="hi", max_tokens=2)
    finally:
        api.stop()
        state.models.unload()


# --- concurrency ------------------------------------------------------------------------------------------------------


def _first_token_time(client: openai.OpenAI, prompt: str, max_tokens: int, out: dict[str, float]) -> None:
    stream = client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, stream=True,
                                       extra_body={"ignore_eos": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            out.setdefault(prompt, time.perf_counter())
    out[prompt + ":end"] = time.perf_counter()


def test_requests_are_served_in_arrival_order(server: ApiServer, client: openai.OpenAI) -> None:
    times: dict[str, float] = {}
    prompts = [f"Request {i}:" for i in range(5)]
    threads = []
    for i, prompt in enumerate(prompts):
        thread = threading.Thread(target=_first_token_time, args=(client, prompt, 40 if i == 0 else 6, times))
        thread.start()
        threads.append(thread)
        deadline = time.monotonic() + 30
        while (prompts[0] not in times or server.state.generation.waiting < i) and time.monotonic() < deadline:
            time.sleep(0.005)  # the next request arrives once the first is running and this one is in line
    for thread in threads:
        thread.join(timeout=120)
    firsts = [times[p] for p in prompts]
    assert firsts == sorted(firsts)
    for earlier, later in zip(prompts, prompts[1:], strict=False):
        assert times[later] >= times[earlier + ":end"]  # one at a time


KILLED_CLIENT = """
import sys, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0)
for chunk in client.completions.create(model=sys.argv[3], prompt="Tell a long story.", max_tokens=1500,
                                       stream=True, extra_body={"ignore_eos": True}):
    print("chunk", flush=True)
"""


def test_killed_client_frees_the_engine_within_a_token(server: ApiServer, client: openai.OpenAI) -> None:
    # a token's time on this machine, measured now
    started = time.perf_counter()
    timed = client.completions.create(model=MODEL, prompt="Tell a long story.", max_tokens=30,
                                      extra_body={"ignore_eos": True})
    per_token = (time.perf_counter() - started) / timed.usage.completion_tokens
    child = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, f"http://127.0.0.1:{server.port}/v1", KEY, MODEL],
                             stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(5):
            assert child.stdout.readline().startswith("chunk")  # it is streaming
    finally:
        child.kill()
        child.wait()
    killed = time.perf_counter()
    times: dict[str, float] = {}
    _first_token_time(client, "Hello", 1, times)
    waited = times["Hello"] - killed
    # the killed reply had ~1500 tokens to go; the new one starts after at most the token in flight,
    # its own prompt and first token (with slack for a shared machine)
    assert waited < 10 * per_token + 1.0, (waited, per_token)
    assert server.state.generation.waiting == 0


def test_ui_and_api_share_the_line_and_stop_is_per_session(server: ApiServer, client: openai.OpenAI) -> None:
    from loaders.base import GenerationParams
    from webui.generation import raw_turn

    times: dict[str, float] = {}
    api = threading.Thread(target=_first_token_time, args=(client, "API request:", 60, times))
    api.start()
    generation = server.state.generation
    deadline = time.monotonic() + 30
    while "API request:" not in times and time.monotonic() < deadline:
        time.sleep(0.01)
    ui_updates: list[str] = []

    def ui_user() -> None:
        turn = raw_turn("Hello", GenerationParams(max_new_tokens=5))
        ui_updates.extend(u.text for u in generation.stream("ui-user", turn) if not u.queued)

    ui = threading.Thread(target=ui_user)
    ui.start()
    while generation.waiting < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert generation.waiting == 1  # the UI user waits behind the API request
    generation.stop("ui-user")  # Stop in the UI: only that user's request goes
    ui.join(timeout=5)
    assert not ui.is_alive() and ui_updates == []
    api.join(timeout=120)
    assert "API request::end" in times and times["API request::end"] > times["API request:"]


def test_listen_needs_an_api_key() -> None:
    import argparse

    from webui.api import api_address as bind_address

    def args(**kw: object) -> argparse.Namespace:
        return argparse.Namespace(**({"listen": False, "listen_host": None, "api_key": None} | kw))

    assert bind_address(args()) == "127.0.0.1"
    with pytest.raises(SystemExit, match="--api-key"):
        bind_address(args(listen=True))
    assert bind_address(args(listen=True, api_key="k")) == "0.0.0.0"
    assert bind_address(args(listen=True, api_key="k", listen_host="10.0.0.2")) == "10.0.0.2"


def test_ui_binds_like_the_api() -> None:
    import argparse

    from webui.server import ui_address

    def args(**kw: object) -> argparse.Namespace:
        return argparse.Namespace(**({"listen": False, "listen_host": None, "gradio_auth": None,
                                      "insecure_listen": False} | kw))  # fmt: skip

    assert ui_address(args()) == "127.0.0.1"
    with pytest.raises(SystemExit, match="--gradio-auth"):
        ui_address(args(listen=True))
    assert ui_address(args(listen=True, gradio_auth="u:p")) == "0.0.0.0"
    assert ui_address(args(listen=True, insecure_listen=True, listen_host="10.0.0.2")) == "10.0.0.2"
