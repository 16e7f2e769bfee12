"""Parallel decoding on llama.cpp with SmolLM2-135M-Instruct Q4_1: 8 requests decoded together give what each gives
alone, a request cancelled mid-stream frees its slot for the next in line, the next turn of a chat reuses the
cached prompt, and the estimate with N slots matches the memory measured once all N hold a full context.

One model per module (8 slots of 256 tokens), requests through the real `GenerationService` (scheduler, engine,
batch decoder), short replies: the CI machine has two shared cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from loaders import llamacpp  # noqa: E402
from loaders.base import GenerationParams  # noqa: E402
from loaders.settings import LlamaCppSettings, settings_for  # noqa: E402
from webui import estimate as E  # noqa: E402
from webui.engine import GenerationStats  # noqa: E402
from webui.generation import GenerationService, raw_turn  # noqa: E402
from webui.model_gate import ModelGate  # noqa: E402
from webui.model_service import LoadedInfo  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SLOTS = 8
TOPICS = ("the sea", "mountains", "bread", "the moon", "cats", "rivers", "music", "winter")
GREEDY = GenerationParams(do_sample=False, max_new_tokens=16)


def chat(text: str) -> str:
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def model(smollm2_gguf: Path) -> Iterator[llamacpp.LlamaCppModel]:
    loaded = llamacpp.load(smollm2_gguf, LlamaCppSettings(n_ctx=256, threads=1, parallel=SLOTS), name="smollm2")
    yield loaded
    loaded.unload()


@pytest.fixture()
def service(model: llamacpp.LlamaCppModel) -> GenerationService:
    model.forget_prompts()
    view = SimpleNamespace(name=model.name, resolved=SimpleNamespace(template=None, preset=None))
    info = LoadedInfo(model=model, view=view, loader_settings=None, estimate=None)  # type: ignore[arg-type]
    return GenerationService(ModelGate(), lambda: info)


def reply(service: GenerationService, session: str, prompt: str, params: GenerationParams = GREEDY
          ) -> tuple[str, GenerationStats]:  # fmt: skip
    last = list(service.stream(session, raw_turn(prompt, params)))[-1]
    return last.text, last.stats


def test_eight_concurrent_greedy_requests_match_each_alone(model, service: GenerationService) -> None:
    prompts = [chat(f"Tell me one fact about {topic}.") for topic in TOPICS]
    alone = []
    for prompt in prompts:
        model.forget_prompts()  # each from an empty cache, as in the batch
        alone.append(reply(service, "alone", prompt)[0])
    model.forget_prompts()
    together: dict[int, str] = {}
    most = 0
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, reply(service, f"s{i}", prompts[i])[0]))
               for i in range(SLOTS)]  # fmt: skip
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        most = max(most, service.running)
        time.sleep(0.001)
    assert most == SLOTS  # all eight decoded at once
    same = sum(together[i] == alone[i] for i in range(SLOTS))
    print(f"{same} of {SLOTS} batched replies equal their solo runs")
    # llama.cpp's batched kernels round differently from its single-sequence ones: issue 16 asks for 6 of 8.
    assert same >= 6, [(a, b) for a, b in zip(alone, [together[i] for i in range(SLOTS)], strict=True)]


def test_a_cancelled_request_stops_within_a_step_and_its_slot_goes_to_the_next(service: GenerationService) -> None:
    long = GenerationParams(do_sample=False, max_new_tokens=200, ban_eos_token=True)
    counts = [0] * (SLOTS + 1)
    first_token = [0.0] * (SLOTS + 1)

    def run(i: int) -> None:
        for update in service.stream(f"s{i}", raw_turn(chat(f"Write a story about {TOPICS[i % 8]}."), long)):
            if update.text and not counts[i]:
                first_token[i] = time.perf_counter()
            counts[i] += bool(update.delta)
            if i == 0 and counts[0] == 3:
                cancelled_at[0] = service.running
                service.stop("s0")  # Stop pressed mid-stream

    cancelled_at = [0]
    threads = [threading.Thread(target=run, args=(i,)) for i in range(SLOTS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while service.running < SLOTS and time.monotonic() < deadline:
        time.sleep(0.001)
    ninth = threading.Thread(target=run, args=(SLOTS,))  # waits in line for a free slot
    ninth.start()
    threads[0].join(60)
    ended = time.perf_counter()
    ninth_started = _wait_until(lambda: counts[SLOTS] > 0)
    running_after = service.running
    for i in range(1, SLOTS + 1):
        service.stop(f"s{i}")
    for thread in [*threads, ninth]:
        thread.join(60)
    assert counts[0] <= 4  # at most the token already decoded when Stop was pressed
    assert cancelled_at[0] == SLOTS and ninth_started
    assert running_after == SLOTS  # the freed slot went to the ninth request, the other seven kept going
    assert first_token[SLOTS] >= ended - 0.01
    assert all(counts[i] < 200 for i in range(1, SLOTS + 1))  # Stop ended the others too


def _wait_until(condition, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def test_the_next_turn_and_a_regenerate_reuse_the_cached_prompt(model, service: GenerationService) -> None:
    first = chat("Name a colour.")
    text, stats = reply(service, "chat", first)
    first_tokens = len(model.tokenizer.encode(first, add_bos=True))
    assert stats.cached_tokens == 0 and stats.prompt_tokens == first_tokens
    second = first + text + "<|im_end|>\n" + chat("And another one?")
    _, stats = reply(service, "chat", second)
    # The first prompt and the reply (but its last token, never fed) were cached; a few tokens where the reply's
    # text meets the next message may tokenize differently.
    assert stats.cached_tokens >= first_tokens
    assert stats.prompt_tokens - stats.cached_tokens < stats.prompt_tokens // 2
    _, again = reply(service, "chat", second)  # a regenerate: all but the last prompt token
    assert again.cached_tokens == again.prompt_tokens - 1
    _, other = reply(service, "other", chat("Something else entirely."))  # an unrelated chat takes another slot
    _, stats = reply(service, "chat", second)
    assert stats.cached_tokens == stats.prompt_tokens - 1 and other.cached_tokens < 10


def test_estimate_with_slots_matches_memory_once_every_slot_is_full(smollm2_gguf: Path) -> None:
    slots, ctx = 4, 512
    command = [sys.executable, "-m", "tests.memprobe", "llama.cpp", str(smollm2_gguf), "--ctx", str(ctx),
               "--parallel", str(slots), "--new-tokens", "16", "--threads", "1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True, timeout=600)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["model"]["slots"] == measured["plan"]["slots"] == slots
    est = E.estimate_local(smollm2_gguf, "llama.cpp", settings_for("llama.cpp", {"n_ctx": ctx, "parallel": slots}))
    one = E.estimate_local(smollm2_gguf, "llama.cpp", settings_for("llama.cpp", {"n_ctx": ctx, "parallel": 1}))
    kv = est.parts["ram"]["kv_cache"]
    assert kv == slots * one.parts["ram"]["kv_cache"]  # a KV cache per slot
    print(f"{slots} slots of {ctx}: measured {measured['increase'] / 1e6:.0f} MB, estimated {est.ram / 1e6:.0f} MB")
    assert abs(est.ram - measured["increase"]) <= 0.15 * measured["increase"], (measured, est.parts)
