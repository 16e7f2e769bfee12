"""The scheduler on fake zero-cost models (no real model: these run in seconds): up to `slots` requests at once,
first come first served beyond that with the place in line reported, Stop for requests in line and running, a load
that waits for the running requests and keeps new ones out, the API under 32 clients x 200 requests, and an API
client that disconnects freeing its slot at once. Real decoding in parallel is tests/test_parallel_llamacpp.py."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from loaders.base import DecodeInfo, GenerationParams, MemoryReport
from tests.test_chat_turn import wait_for
from webui import chat_service
from webui.api import ApiServer
from webui.engine import GenerationStats
from webui.generation import GenerationService, StreamUpdate, raw_turn, status_text
from webui.history import Chat
from webui.model_gate import ModelGate
from webui.model_service import LoadedInfo
from webui.state import AppConfig, AppState
from webui.templates import Message

OFFSET = 10  # token id = ord(character) + OFFSET


class CharTokenizer:
    bos_token, eos_token, chat_template = None, "</s>", None
    bos_token_id, eos_token_ids = None, (2,)

    def encode(self, text: str, *, add_bos: bool) -> list[int]:
        return [ord(c) + OFFSET for c in text]

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return "".join(chr(i - OFFSET) for i in ids if i >= OFFSET)


class EchoModel:
    """A `LoadedModel` that replies with its prompt reversed, one character per token, at no cost. `pace`, when
    given, is waited on before each token (the test decides how fast it decodes). Counts the calls running at once."""

    loader, path, context_length, device, load_seconds = "fake", Path("."), 100_000, "cpu", 0.0
    memory = MemoryReport(ram_bytes=0)

    def __init__(self, slots: int, *, pace: threading.Semaphore | None = None, tokens_per_second: float = 0) -> None:
        self.name, self.tokenizer, self.slots, self.pace = "echo", CharTokenizer(), slots, pace
        self.delay = 1 / tokens_per_second if tokens_per_second else 0.0
        self.running = self.most = self.calls = 0
        self.order: list[str] = []  # prompts in the order their generation started
        self._guard = threading.Lock()

    def generate_tokens(self, prompt_ids: list[int], params: GenerationParams, cancel: threading.Event,
                        info: DecodeInfo | None = None) -> Iterator[int]:
        with self._guard:
            self.running += 1
            self.calls += 1
            self.most = max(self.most, self.running)
            self.order.append(self.tokenizer.decode(prompt_ids))
        try:
            for token in list(reversed(prompt_ids))[: params.max_new_tokens]:
                if self.pace is not None:
                    while not self.pace.acquire(timeout=0.01):
                        if cancel.is_set():
                            return
                if cancel.is_set():
                    return
                if self.delay:
                    time.sleep(self.delay)
                yield token
        finally:
            with self._guard:
                self.running -= 1

    def unload(self) -> None:
        pass


def loaded(model: EchoModel) -> LoadedInfo:
    view = SimpleNamespace(name=model.name, resolved=SimpleNamespace(template=None, preset=None))
    return LoadedInfo(model=model, view=view, loader_settings=None, estimate=None)  # type: ignore[arg-type]


PARAMS = GenerationParams(do_sample=False, max_new_tokens=64)


class Client(threading.Thread):
    """One caller of `GenerationService.stream`, keeping every update."""

    def __init__(self, service: GenerationService, session: str, prompt: str) -> None:
        super().__init__(daemon=True)
        self.service, self.session, self.prompt = service, session, prompt
        self.updates: list[StreamUpdate] = []

    def run(self) -> None:
        self.updates.extend(self.service.stream(self.session, raw_turn(self.prompt, PARAMS)))

    @property
    def places(self) -> list[int]:
        return [u.queued for u in self.updates if u.queued]

    @property
    def text(self) -> str:
        return self.updates[-1].text if self.updates else ""


def test_slots_run_at_once_the_rest_wait_in_order_and_stop_works_in_line_and_running() -> None:
    pace = threading.Semaphore(0)
    model = EchoModel(2, pace=pace)
    service = GenerationService(ModelGate(), lambda: loaded(model))
    clients = []
    for i in range(5):
        clients.append(Client(service, f"s{i}", f"prompt {i}"))
        clients[-1].start()
        wait_for(lambda i=i: service.running + service.waiting == i + 1)  # arrivals in a known order
    wait_for(lambda: model.running == 2)
    assert (service.running, service.waiting) == (2, 3)
    wait_for(lambda: [c.places[-1:] for c in clients[2:]] == [[1], [2], [3]])
    service.stop("s2")  # Stop for the first in line: it leaves, the others move up
    clients[2].join(5)
    assert not clients[2].is_alive() and clients[2].text == ""
    wait_for(lambda: clients[3].places[-1] == 1 and clients[4].places[-1] == 2)
    service.stop("s0")  # Stop for a running one: its slot goes to the next in line
    clients[0].join(5)
    wait_for(lambda: model.order[-1] == "prompt 3")
    assert (service.running, service.waiting) == (2, 1)
    pace.release(1000)
    for client in clients:
        client.join(10)
    assert model.order == ["prompt 0", "prompt 1", "prompt 3", "prompt 4"]  # first come, first served
    assert model.most == 2  # never more than the slots
    assert [c.text for c in clients] == ["", "1 tpmorp", "", "3 tpmorp", "4 tpmorp"]
    assert clients[0].updates[-1].stats.stop_reason == "cancelled"
    assert status_text(clients[4].updates[0]) == "Waiting for the model: 3rd in line."


def test_a_load_waits_for_running_requests_and_keeps_new_ones_out() -> None:
    pace = threading.Semaphore(0)
    model = EchoModel(2, pace=pace)
    gate = ModelGate()
    service = GenerationService(gate, lambda: loaded(model))
    first = Client(service, "first", "abc")
    first.start()
    wait_for(lambda: model.running == 1)
    inside = threading.Event()
    release = threading.Event()

    def load() -> None:
        with gate.exclusive(), gate.exclusive():  # re-entrant: a load unloads the previous model
            inside.set()
            release.wait(10)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    time.sleep(0.05)
    assert not inside.is_set()  # a generation is running
    second = Client(service, "second", "xyz")
    second.start()
    wait_for(lambda: service.waiting == 1)
    time.sleep(0.05)
    assert model.running == 1  # a slot is free, but the waiting load goes first
    pace.release(1000)
    first.join(10)
    assert inside.wait(5) and service.running == 0 and service.waiting == 1
    release.set()
    loader.join(5)
    second.join(10)
    assert second.text == "zyx"


def test_a_chat_turn_stopped_in_line_leaves_no_empty_reply(tmp_path: Path) -> None:
    pace = threading.Semaphore(0)
    model = EchoModel(1, pace=pace)
    (tmp_path / "models").mkdir()
    state = AppState(config=AppConfig(models_dir=tmp_path / "models", user_data_dir=tmp_path / "data"))
    state.models._loaded = loaded(model)
    busy = Client(state.generation, "busy", "abc")
    busy.start()
    wait_for(lambda: model.running == 1)
    shown: list[list[Message]] = []
    chat = Chat(id="queued", mode="instruct", template="chatml")
    turn = threading.Thread(target=lambda: shown.extend(
        list(c.messages) for c, _u in chat_service.send(state, "chat-user", chat, "hello", PARAMS)))
    turn.start()
    wait_for(lambda: len(shown) == 1)  # its place in line
    state.generation.stop("chat-user")
    turn.join(5)
    pace.release(1000)
    busy.join(10)
    assert shown == [[Message("user", "hello")]]
    assert state.history.load("queued").messages == [Message("user", "hello")]


def test_the_chat_tab_shows_the_reply_that_starts_after_waiting_in_line() -> None:
    from webui.chat_prompt import StreamedReply
    from webui.ui.chat_handlers import ShownReply

    chat = Chat(id="c", messages=[Message("user", "hello")])
    reply, shown = StreamedReply(chat, continue_last=False), ShownReply()
    assert shown.update(reply.chat) == [{"role": "user", "content": "hello"}]  # in line: no reply yet
    shown.update(reply.update("Hi"))
    assert shown.update(reply.update("Hi there")) == [{"role": "user", "content": "hello"},
                                                      {"role": "assistant", "content": "Hi there"}]


def test_status_text_shows_the_cached_prompt_tokens() -> None:
    stats = GenerationStats(prompt_tokens=120, new_tokens=10, seconds=2.0, stop_reason="eos", cached_tokens=100)
    assert status_text(StreamUpdate("hi", stats)) == (
        "10 tokens in 2.0 s (5.0 tokens/s), prompt 120 tokens (100 cached, 20 new), stopped by eos.")
    assert "cached" not in status_text(StreamUpdate("hi", GenerationStats(7, 1, 1.0, "max_tokens")))
    assert status_text(StreamUpdate("h")) == "Generating…"


# --- the API ------------------------------------------------------------------------------------------------------


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[tuple[ApiServer, AppState]]:
    from tests.test_api import free_port

    (tmp_path / "models").mkdir()
    state = AppState(config=AppConfig(models_dir=tmp_path / "models", user_data_dir=tmp_path / "data"))
    server = ApiServer(state, host="127.0.0.1", port=free_port()).start()
    yield server, state
    server.stop()


async def _stream(client: httpx.AsyncClient, url: str, prompt: str) -> tuple[str, list[str]]:
    body = {"prompt": prompt, "max_tokens": 64, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    text, events = "", []
    async with client.stream("POST", url, json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
    for event in events[:-1]:
        choices = json.loads(event)["choices"]
        text += choices[0]["text"] if choices else ""
    return text, events


def test_32_clients_200_requests_nothing_lost_or_duplicated(api: tuple[ApiServer, AppState]) -> None:
    server, state = api
    model = EchoModel(8)
    state.models._loaded = loaded(model)
    url = f"http://127.0.0.1:{server.port}/v1/completions"
    prompts = [f"request {i:03d}" for i in range(200)]
    replies: dict[str, list[str]] = {}

    async def run() -> None:
        line = asyncio.Queue()
        for prompt in prompts:
            line.put_nowait(prompt)
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:

            async def worker() -> None:
                while not line.empty():
                    prompt = line.get_nowait()
                    text, events = await _stream(client, url, prompt)
                    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
                    usage = json.loads(events[-2])["usage"]
                    assert usage["completion_tokens"] == len(prompt) and usage["prompt_tokens"] == len(prompt)
                    replies.setdefault(prompt, []).append(text)

            await asyncio.gather(*(worker() for _ in range(32)))

    asyncio.run(run())
    assert sorted(replies) == prompts  # none lost
    assert all(texts == [prompt[::-1]] for prompt, texts in replies.items())  # each once, with its own reply
    assert model.calls == 200 and model.most <= 8
    assert state.generation.running == 0 and state.generation.waiting == 0


def test_a_disconnecting_client_frees_its_slot_at_once_and_the_line_is_reported(
    api: tuple[ApiServer, AppState],
) -> None:
    server, state = api
    model = EchoModel(1, tokens_per_second=20)  # the 60 tokens of the first reply would take 3 s
    state.models._loaded = loaded(model)
    url = f"http://127.0.0.1:{server.port}/v1/completions"
    body = {"prompt": "x" * 60, "max_tokens": 60, "stream": True}
    with httpx.Client(timeout=30) as first, httpx.Client(timeout=30) as second:
        with first.stream("POST", url, json=body) as running:
            chunks = running.iter_lines()
            assert next(line for line in chunks if line.startswith("data: "))
            with second.stream("POST", url, json=body) as waiting:  # headers at once, then its place in line
                lines = waiting.iter_lines()
                assert waiting.status_code == 200 and next(lines) == ": waiting in line, place 1"
                left = time.perf_counter()
                running.close()  # the first client goes away mid-reply
                assert next(line for line in lines if line.startswith("data: "))  # the second one now runs
                took = time.perf_counter() - left
    assert took < 1.0, took  # the poll for a disconnect (0.1 s) and a token or two, not the 60 tokens left
    wait_for(lambda: state.generation.running == 0 and model.running == 0)
    info = httpx.get(f"http://127.0.0.1:{server.port}/v1/internal/model/info").json()
    assert (info["slots"], info["running"], info["waiting"]) == (1, 0, 0)
