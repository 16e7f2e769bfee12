"""Tools, embeddings and Anthropic's Messages API (issue 19), driven by clients nobody here wrote — the official
`openai` and `anthropic` clients and LangChain's `ChatOpenAI` — against one Corral API on 127.0.0.1 serving SmolLM2
(GGUF, llama.cpp). A 135M model following a tool's schema is the grammar's doing, not the model's intelligence:
the tests force calls (`tool_choice`) and check the arguments against the schema.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.conftest import link_tree
from tests.test_api import free_port
from webui.api import ApiServer
from webui.state import AppConfig, AppState

MODEL = "SmolLM2-135M-Instruct-GGUF"
EMBEDDER = "SmolLM2-135M-Instruct"  # a Transformers folder, loaded as the dedicated embedding model
KEY = "clients-key"
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                            "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "Current time in a time zone.",
                                           "parameters": {"type": "object", "properties": {"zone": {"type": "string",
                                                          "maxLength": 20}}, "required": ["zone"]}}}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
SENTENCES = ["The cat sat on the mat.", "A cat was sitting on the rug.", "Quarterly revenue grew by four percent."]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path, smollm2_hf: Path) -> Iterator[ApiServer]:
    root = tmp_path_factory.mktemp("clients") / "models"
    link_tree(smollm2_gguf.parent, root / MODEL)
    link_tree(smollm2_hf, root / EMBEDDER)
    state = AppState(config=AppConfig(models_dir=root))
    state.models.load(MODEL, loader_settings={"n_ctx": 2048}, confirm_memory=True)
    api = ApiServer(state, host="127.0.0.1", port=free_port(), api_key=KEY).start()
    yield api
    api.stop()
    state.embeddings.unload()
    state.models.unload()


@pytest.fixture(scope="module")
def base_url(server: ApiServer) -> str:
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0, timeout=120)


# --- tools with the openai client -------------------------------------------------------------------------------------


def test_tool_choice_required_returns_a_call_whose_arguments_validate(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                           max_tokens=60, temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in ("get_weather", "get_time")
    schema = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == call.function.name)
    jsonschema.validate(json.loads(call.function.arguments), schema)


def test_named_tool_choice_streamed(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=60, temperature=0, stream=True))
    calls = [c for chunk in chunks if chunk.choices for c in chunk.choices[0].delta.tool_calls or []]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].function.name == "get_weather"
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def test_a_conversation_with_tool_results_is_answered(client: openai.OpenAI) -> None:
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice="none",
                                           max_tokens=16, temperature=0)
    assert reply.choices[0].message.content and not reply.choices[0].message.tool_calls


# --- LangChain --------------------------------------------------------------------------------------------------------


class Weather(BaseModel):
    """Current weather in a city."""

    city: str = Field(max_length=20, description="the city")
    unit: str = Field(pattern="^(celsius|fahrenheit)$", description="celsius or fahrenheit")


def test_langchain_bind_tools_and_structured_output(base_url: str) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{base_url}/v1", api_key=KEY, model=MODEL, temperature=0, max_tokens=60,
                     max_retries=0)
    message = llm.bind_tools([Weather], tool_choice="any").invoke("What is the weather in Paris?")
    (call,) = message.tool_calls
    assert call["name"] == "Weather"
    Weather.model_validate(call["args"])
    for method in ("json_schema", "function_calling"):
        result = llm.with_structured_output(Weather, method=method).invoke("What is the weather in Paris?")
        assert isinstance(result, Weather), method


# --- Anthropic's Messages API -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def claude(base_url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base_url, api_key=KEY, max_retries=0, timeout=120)


def test_anthropic_messages_create_and_stream(claude: anthropic.Anthropic, client: openai.OpenAI) -> None:
    kwargs = {"model": MODEL, "max_tokens": 12, "system": "You are terse.", "extra_body": {"temperature": 0},
              "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    message = claude.messages.create(**kwargs)
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    assert message.stop_reason in ("end_turn", "max_tokens") and message.content[0].type == "text"
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 12
    same = client.chat.completions.create(model=MODEL, max_tokens=12, temperature=0, messages=[
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is the capital of France?"}])
    assert message.content[0].text == same.choices[0].message.content  # one engine, one prompt builder
    with claude.messages.stream(**kwargs) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == message.content[0].text == final.content[0].text
    assert final.stop_reason == message.stop_reason and final.usage.output_tokens == message.usage.output_tokens
    events = [event.type for event in claude.messages.create(**kwargs, stream=True)]
    assert events[0] == "message_start" and events[-1] == "message_stop" and "content_block_delta" in events


def test_anthropic_tool_use(claude: anthropic.Anthropic) -> None:
    tools = [{"name": t["function"]["name"], "description": t["function"]["description"],
              "input_schema": t["function"]["parameters"]} for t in TOOLS]
    message = claude.messages.create(model=MODEL, max_tokens=60, tools=tools, messages=ASK,
                                     tool_choice={"type": "tool", "name": "get_weather"})
    assert message.stop_reason == "tool_use"
    (use,) = [block for block in message.content if block.type == "tool_use"]
    assert use.name == "get_weather" and use.id.startswith("toolu_")
    jsonschema.validate(use.input, WEATHER)
    answer = claude.messages.create(model=MODEL, max_tokens=12, tools=tools, messages=[
        *ASK, {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name,
                                                 "input": use.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 degrees"}]}],
        tool_choice={"type": "none"})
    assert answer.content[0].type == "text" and answer.content[0].text
    shaped = claude.messages.create(model=MODEL, max_tokens=60, messages=ASK,
                                    output_config={"format": {"type": "json_schema", "schema": WEATHER}})
    jsonschema.validate(json.loads(shaped.content[0].text), WEATHER)  # structured output, Anthropic's way


def test_anthropic_errors_have_anthropic_shape(base_url: str, claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as error:
        claude.messages.create(model="no-such-model", max_tokens=4, messages=ASK)
    assert error.value.body["type"] == "error" and error.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as error:
        claude.messages.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "http://127.0.0.1/cat.png"}}]}])
    assert error.value.body["error"]["type"] == "invalid_request_error" and "image" in str(error.value.body)
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=base_url, api_key="wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=4, messages=ASK)


# --- embeddings -------------------------------------------------------------------------------------------------------


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def check_ranking(vectors: list[list[float]]) -> None:
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.05  # the paraphrase ranks higher
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-4 for v in vectors)  # normalised


def test_embeddings_of_the_loaded_model(client: openai.OpenAI, server: ApiServer) -> None:
    result = client.embeddings.create(model=MODEL, input=SENTENCES)  # the client asks for base64 and decodes it
    vectors = [item.embedding for item in result.data]
    assert [len(v) for v in vectors] == [576] * 3 and result.model == MODEL  # SmolLM2's hidden size
    check_ranking(vectors)
    assert result.usage.prompt_tokens == sum(len(server.state.models.current.tokenizer.encode(s, add_bos=True))
                                             for s in SENTENCES)


def test_dedicated_embedding_model_and_the_float_format(base_url: str, client: openai.OpenAI) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    loaded = httpx.post(f"{base_url}/v1/internal/embedding-model/load", json={"model_name": EMBEDDER},
                        headers=headers, timeout=120)
    assert loaded.status_code == 200 and loaded.json() == {"model_name": EMBEDDER, "dimensions": 576}
    raw = httpx.post(f"{base_url}/v1/embeddings", json={"input": SENTENCES}, headers=headers, timeout=120).json()
    assert raw["model"] == EMBEDDER  # no model named: the embedding model answers
    floats = [item["embedding"] for item in raw["data"]]
    check_ranking(floats)
    encoded = httpx.post(f"{base_url}/v1/embeddings", json={"input": SENTENCES[0], "encoding_format": "base64"},
                         headers=headers, timeout=120).json()["data"][0]["embedding"]
    assert list(struct.unpack("<576f", base64.b64decode(encoded))) == pytest.approx(floats[0], abs=1e-6)
    # the same rule on two runtimes: the dedicated model (PyTorch, fp32) and the chat model (llama.cpp, Q4_1)
    quantized = client.embeddings.create(model=MODEL, input=SENTENCES).data
    assert all(cosine(a, b.embedding) > 0.98 for a, b in zip(floats, quantized, strict=True))
    with pytest.raises(openai.BadRequestError) as error:
        client.embeddings.create(model=MODEL, input=[[1, 2, 3]])
    assert "token ids" in error.value.message
