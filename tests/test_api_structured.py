"""Structured output, log-probabilities and models on demand (issue 19), driven with the official `openai` client
against one Corral API on 127.0.0.1 that holds SmolLM2 twice: as a GGUF (llama.cpp) and as a Transformers folder
(PyTorch). The server loads models on demand (`--api-load-models`), so each test names the backend it runs on;
tests are grouped by backend to keep the switches few.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import link_tree
from tests.test_api import free_port
from webui.api import ApiServer
from webui.state import AppConfig, AppState

GGUF = "SmolLM2-135M-Instruct-GGUF"  # llama.cpp
HF = "SmolLM2-135M-Instruct"  # transformers
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer"},
        "color": {"enum": ["red", "green", "blue"]},
        "likes_cats": {"type": "boolean"},
    },
    "required": ["name", "age", "color", "likes_cats"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe a person as JSON."}]
SEEDS = range(20)


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path, smollm2_hf: Path) -> Path:
    root = tmp_path_factory.mktemp("structured") / "models"
    link_tree(smollm2_gguf.parent, root / GGUF)
    link_tree(smollm2_hf, root / HF)
    return root


@pytest.fixture(scope="module")
def server(models_root: Path) -> Iterator[ApiServer]:
    state = AppState(config=AppConfig(models_dir=models_root, api_load_models=True))
    state.models.load(GGUF, loader_settings={"n_ctx": 1024}, confirm_memory=True)
    api = ApiServer(state, host="127.0.0.1", port=free_port()).start()
    yield api
    api.stop()
    state.models.unload()


@pytest.fixture(scope="module")
def client(server: ApiServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="-", max_retries=0, timeout=120)


def person(client: openai.OpenAI, model: str, seed: int) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model=model, messages=ASK, seed=seed, temperature=1.0, top_p=1.0, max_tokens=96, extra_body={"top_k": 0},
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}})


def check_logprobs(client: openai.OpenAI, model: str) -> None:
    """top_logprobs 3: three entries per token; at temperature 0 the most likely one is the token generated."""
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Name a fruit."}],
                                           max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    entries = reply.choices[0].logprobs.content
    assert len(entries) == reply.usage.completion_tokens == 8
    for entry in entries:
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token and entry.top_logprobs[0].logprob == entry.logprob
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob >= entry.top_logprobs[2].logprob
        assert sum(2.718281828 ** t.logprob for t in entry.top_logprobs) <= 1.0001
    assert "".join(entry.token for entry in entries) == reply.choices[0].message.content
    streamed = [entry for chunk in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Name a fruit."}], max_tokens=8, temperature=0,
        logprobs=True, top_logprobs=3, stream=True) if chunk.choices and chunk.choices[0].logprobs
        for entry in chunk.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in entries]


# --- llama.cpp --------------------------------------------------------------------------------------------------------


def test_json_schema_validates_on_20_seeds_llamacpp(client: openai.OpenAI) -> None:
    replies = [person(client, GGUF, seed) for seed in SEEDS]
    for reply in replies:
        assert reply.model == GGUF and reply.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(reply.choices[0].message.content), PERSON)
    assert len({r.choices[0].message.content for r in replies}) > 5  # sampled, yet always valid


def test_logprobs_llamacpp(client: openai.OpenAI) -> None:
    check_logprobs(client, GGUF)


def test_completion_logprobs_and_json_object(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=GGUF, prompt="The capital of France is", max_tokens=6, temperature=0,
                                      logprobs=2)
    logprobs = reply.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 6
    assert "".join(logprobs.tokens) == reply.choices[0].text
    assert all(max(top.values()) == lp for top, lp in zip(logprobs.top_logprobs, logprobs.token_logprobs, strict=True))
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(6)]
    question = 'Reply with a JSON object whose key "capital" holds the capital of France.'
    obj = client.chat.completions.create(model=GGUF, messages=[{"role": "user", "content": question}],
                                         max_tokens=120, temperature=0, response_format={"type": "json_object"})
    assert obj.choices[0].finish_reason == "stop" and isinstance(json.loads(obj.choices[0].message.content), dict)


def test_grammar_and_bad_schema(client: openai.OpenAI) -> None:
    yes_no = client.chat.completions.create(model=GGUF, messages=[{"role": "user", "content": "Is water wet?"}],
                                            max_tokens=4, extra_body={"grammar": 'root ::= "yes" | "no"'})
    assert yes_no.choices[0].message.content in ("yes", "no")
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=GGUF, messages=ASK, max_tokens=4, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}})
    assert error.value.code == "invalid_response_format" and "objekt" in error.value.message


def test_per_request_context(server: ApiServer, client: openai.OpenAI) -> None:
    server.state.models.load(GGUF, loader_settings={"n_ctx": 512}, confirm_memory=True)
    long_prompt = "one two three four five six seven eight nine ten " * 30  # ~300 tokens
    with pytest.raises(openai.BadRequestError) as error:  # less than the model has: limits this request
        client.completions.create(model=GGUF, prompt=long_prompt, max_tokens=4, extra_body={"num_ctx": 256})
    assert error.value.code == "context_length_exceeded" and "256 tokens" in error.value.message
    with pytest.raises(openai.BadRequestError) as error:  # beyond what the model was trained for
        client.completions.create(model=GGUF, prompt="Hi", max_tokens=4, extra_body={"num_ctx": 1_000_000})
    assert error.value.code == "context_length_exceeded"
    reply = client.completions.create(model=GGUF, prompt=long_prompt * 2, max_tokens=4,
                                      extra_body={"num_ctx": 1024})  # more: reloaded with that context
    assert reply.usage.prompt_tokens > 512 and server.state.models.current.context_length == 1024


# --- PyTorch (transformers) ------------------------------------------------------------------------------------------


def test_request_naming_another_model_switches_to_it_with_its_saved_settings(
    server: ApiServer, client: openai.OpenAI
) -> None:
    server.state.models.save_settings(HF, "transformers", {"context_length": 1536}, template=None, preset=None)
    reply = client.chat.completions.create(model=HF, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                           temperature=0)
    info = server.state.models.current_info
    assert reply.model == HF and info.view.name == HF and info.model.loader == "transformers"
    assert info.model.context_length == 1536  # the settings saved for it
    direct = client.chat.completions.create(model="", messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                            temperature=0)
    assert direct.model == HF and direct.choices[0].message.content == reply.choices[0].message.content


def test_json_schema_validates_on_20_seeds_transformers(client: openai.OpenAI) -> None:
    replies = [person(client, HF, seed) for seed in SEEDS]
    for reply in replies:
        assert reply.model == HF and reply.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(reply.choices[0].message.content), PERSON)
    assert len({r.choices[0].message.content for r in replies}) > 5


def test_logprobs_transformers(client: openai.OpenAI) -> None:
    check_logprobs(client, HF)


# --- loads ------------------------------------------------------------------------------------------------------------


def test_requests_sent_during_a_load_wait_and_succeed(server: ApiServer, client: openai.OpenAI) -> None:
    state = server.state
    target = GGUF if state.models.current_info.view.name == HF else HF
    results: dict[str, object] = {}

    def ask(key: str, model: str) -> None:
        try:
            results[key] = client.completions.create(model=model, prompt="Hello", max_tokens=2, temperature=0)
        except openai.APIError as error:  # recorded: the assertion below names it
            results[key] = error

    first = threading.Thread(target=ask, args=("switch", target))
    first.start()
    deadline = time.monotonic() + 60
    while state.models.loading is None and "switch" not in results and time.monotonic() < deadline:
        time.sleep(0.002)
    assert state.models.loading == target  # the requests below go out while it loads
    during = [threading.Thread(target=ask, args=(f"during-{i}", target if i else "")) for i in range(3)]
    for thread in during:
        thread.start()
    for thread in [first, *during]:
        thread.join(timeout=120)
    for key, reply in results.items():
        assert isinstance(reply, openai.types.Completion), (key, reply)
        assert reply.model == target and reply.usage.completion_tokens >= 1

    # a load from the load route (as the Model tab's): requests wait for it too, instead of a 503
    other = GGUF if target == HF else HF
    loader = threading.Thread(target=httpx.post, args=(f"http://127.0.0.1:{server.port}/v1/internal/model/load",),
                              kwargs={"json": {"model_name": other}, "timeout": 120})
    loader.start()
    while state.models.loading is None and time.monotonic() < deadline:
        time.sleep(0.002)
    reply = client.completions.create(model="", prompt="Hello", max_tokens=2)
    loader.join(timeout=120)
    assert reply.model == other


def test_idle_unload_then_the_next_request_loads_it_again(models_root: Path) -> None:
    state = AppState(config=AppConfig(models_dir=models_root, idle_unload_minutes=1.5 / 60))  # 1.5 s
    state.models.load(GGUF, loader_settings={"n_ctx": 512}, confirm_memory=True)
    state.model_switch.start()
    api = ApiServer(state, host="127.0.0.1", port=free_port()).start()
    try:
        deadline = time.monotonic() + 30
        while state.models.current is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state.models.current is None
        local = openai.OpenAI(base_url=f"http://127.0.0.1:{api.port}/v1", api_key="-", max_retries=0, timeout=120)
        reply = local.completions.create(model=GGUF, prompt="Hello", max_tokens=2)  # loads are off, yet it is back
        assert reply.model == GGUF and reply.usage.completion_tokens >= 1
        with pytest.raises(openai.BadRequestError) as error:  # but another model is not loaded on demand
            local.completions.create(model=HF, prompt="Hello", max_tokens=2)
        assert error.value.code == "model_not_loaded"
    finally:
        state.model_switch.close()
        api.stop()
        state.models.unload()
