"""The PyTorch decode loop on real SmolLM2: the static slot cache gives Transformers' dynamic-cache tokens for every
PyTorch backend; parallel requests (continuous batching) give each the tokens it gets alone; cancel frees a slot
within a step; the next turn of a chat reuses the cached prefix; the CUDA-graph decode (skipped without CUDA)
gives the eager tokens.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from loaders.base import DecodeInfo, GenerationParams
from loaders.errors import GenerationError
from loaders.registry import load_plan, plan_for_path
from loaders.settings import GPTQSettings, NativeGGUFSettings, TransformersSettings
from loaders.torch_lm import TorchCausalLM
from tests import gptq_fixtures

QUESTIONS = ("What is the capital of France?", "Name three colours.", "Write a haiku about rain.", "What is 2+2?",
             "Tell me a joke.", "Who wrote Hamlet?", "Describe a cat in one sentence.", "Why is the sky blue?")
GREEDY = GenerationParams(do_sample=False, max_new_tokens=12, ban_eos_token=True)


def chat(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def _load(loader: str, path: Path, settings, *, slots: int) -> TorchCausalLM:
    plan = dataclasses.replace(plan_for_path(loader, path, settings), slots=slots)
    return load_plan(plan, settings, name=f"SmolLM2-{loader}")


@pytest.fixture(scope="module")
def model(smollm2_hf: Path, one_thread: None) -> Iterator[TorchCausalLM]:
    # fp32: a row's logits then do not depend on which other rows share its step (bf16 rounds them per batch shape,
    # enough to change a sampled token), so "alone == together" tests the batching, not the rounding.
    loaded = _load("transformers", smollm2_hf, TransformersSettings(context_length=512, dtype="float32"), slots=8)
    yield loaded
    loaded.unload()


def ids(model: TorchCausalLM, question: str) -> list[int]:
    return model.tokenizer.encode(chat(question), add_bos=True)


def run(model: TorchCausalLM, prompt: list[int], params: GenerationParams = GREEDY, info: DecodeInfo | None = None,
        cancel: threading.Event | None = None) -> list[int]:  # fmt: skip
    return list(model.generate_tokens(prompt, params, cancel or threading.Event(), info))


@torch.inference_mode()
def dynamic_greedy(model: TorchCausalLM, prompt: list[int], n: int) -> list[int]:
    """Transformers' own dynamic-cache decode, token by token, EOS banned: the reference."""
    module = model.module
    cache, step, out = DynamicCache(config=module.config), torch.tensor([prompt]), []
    for _ in range(n):
        logits = module(input_ids=step, past_key_values=cache, use_cache=True).logits[0, -1]
        logits[list(model.tokenizer.eos_token_ids)] = float("-inf")
        token = int(logits.argmax())
        out.append(token)
        step = torch.tensor([[token]])
    return out


def test_static_cache_equals_dynamic_cache_transformers(model: TorchCausalLM) -> None:
    assert model.slots == 8 and model.decode_mode.startswith("static KV cache, 8 slots; warm-up ")
    prompt = ids(model, QUESTIONS[0])
    assert run(model, prompt) == dynamic_greedy(model, prompt, GREEDY.max_new_tokens)


@pytest.mark.parametrize("loader", ["gptq", "gguf"])
def test_static_cache_equals_dynamic_cache_quantized(loader: str, smollm2_gguf: Path, one_thread: None) -> None:
    if loader == "gptq":
        loaded = _load("gptq", gptq_fixtures.smollm2_gptq("main"), GPTQSettings(context_length=512), slots=2)
    else:
        loaded = _load("gguf", smollm2_gguf, NativeGGUFSettings(n_ctx=512), slots=2)
    try:
        assert loaded.decode_mode.startswith("static KV cache")
        prompt = loaded.tokenizer.encode(chat(QUESTIONS[3]), add_bos=True)
        params = dataclasses.replace(GREEDY, max_new_tokens=5)  # the native GGUF CPU path is slow (issue 15's)
        assert run(loaded, prompt, params) == dynamic_greedy(loaded, prompt, 5)
    finally:
        loaded.unload()


def test_eight_parallel_greedy_requests_equal_each_alone(model: TorchCausalLM) -> None:
    prompts = [ids(model, q) for q in QUESTIONS]
    alone = [run(model, p) for p in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda p: run(model, p), prompts))
    assert together == alone
    assert len({tuple(t) for t in alone}) == len(prompts)  # eight different replies, not one repeated


def test_parallel_sampled_requests_keep_their_own_seed_and_samplers(model: TorchCausalLM) -> None:
    hot = GenerationParams(max_new_tokens=12, temperature=1.0, top_k=40, seed=11, ban_eos_token=True)
    penalised = GenerationParams(max_new_tokens=12, do_sample=False, repetition_penalty=1.5, ban_eos_token=True)
    jobs = [(ids(model, QUESTIONS[1]), hot), (ids(model, QUESTIONS[2]), penalised), (ids(model, QUESTIONS[3]), GREEDY)]
    alone = [run(model, p, params) for p, params in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda job: run(model, *job), jobs))
    assert together == alone


def test_cancel_frees_the_slot_within_a_step_and_it_is_reused(model: TorchCausalLM) -> None:
    small = TorchCausalLM(model.name, model.loader, model.path, model.module, model.tokenizer, 256, model.device, 0.0,
                          model.memory, plan=dataclasses.replace(model.plan, slots=2))  # the same weights, 2 slots
    long = dataclasses.replace(GREEDY, max_new_tokens=24)
    a_prompt, b_prompt = ids(small, QUESTIONS[4]), ids(small, QUESTIONS[5])
    a_alone, c_alone = run(small, a_prompt, long), run(small, b_prompt)
    a_stream = small.generate_tokens(a_prompt, long, threading.Event())
    first_a = [next(a_stream)]  # A is live, and stays live while C runs
    cancel = threading.Event()
    b_stream = small.generate_tokens(b_prompt, long, cancel)
    b_tokens = [next(b_stream) for _ in range(3)]
    cancel.set()
    assert len(list(b_stream)) <= 1  # at most the token of the step already running
    info = DecodeInfo()
    c_tokens = run(small, b_prompt, GREEDY, info)  # needs B's slot: A holds the other one
    assert c_tokens == c_alone and b_tokens == c_alone[:3]
    assert info.cached_tokens == len(b_prompt) - 1  # B's row, reused: its prompt was already computed
    assert first_a + list(a_stream) == a_alone


def test_next_turn_reuses_the_cached_prefix(model: TorchCausalLM) -> None:
    first = ids(model, QUESTIONS[6])
    reply = run(model, first, dataclasses.replace(GREEDY, ban_eos_token=False))
    turn = first + reply + model.tokenizer.encode("<|im_end|>\n" + chat("And a dog?"), add_bos=False)
    info = DecodeInfo()
    second = run(model, turn, GREEDY, info)
    assert info.cached_tokens >= len(first) + len(reply) - 1
    assert second == dynamic_greedy(model, turn, GREEDY.max_new_tokens)


def test_prompt_longer_than_the_context_is_refused(model: TorchCausalLM) -> None:
    with pytest.raises(GenerationError, match="context of 512"):
        run(model, [1] * 512)
    near_end = [1] * 508 + ids(model, "Hi")[-3:]
    assert len(run(model, near_end, dataclasses.replace(GREEDY, max_new_tokens=50))) == 512 - len(near_end)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_decode_equals_eager(smollm2_hf: Path) -> None:
    loaded = _load("transformers", smollm2_hf, TransformersSettings(context_length=1024, dtype="float32"), slots=4)
    eager = TorchCausalLM(loaded.name, loaded.loader, loaded.path, loaded.module, loaded.tokenizer, 1024,
                          loaded.device, 0.0, loaded.memory, plan=loaded.plan, cuda_graphs=False)  # same weights
    try:
        assert "CUDA graphs" in loaded.decode_mode and "CUDA graphs" not in eager.decode_mode, loaded.decode_mode
        prompts = [ids(loaded, q) for q in QUESTIONS[:4]]
        with ThreadPoolExecutor(4) as pool:
            graphed = list(pool.map(lambda p: run(loaded, p), prompts))
        assert [run(eager, p) for p in prompts] == graphed
    finally:
        loaded.unload()


# --- tiny random models: attention layouts the slot cache serves --------------------------------------------------


def _tiny(config, tokenizer_dir: Path, *, slots: int) -> TorchCausalLM:
    from loaders.base import MemoryReport
    from loaders.hf_tokenizer import HFTokenizer

    torch.manual_seed(0)
    module = AutoModelForCausalLM.from_config(config).eval()
    return TorchCausalLM("tiny", "transformers", tokenizer_dir, module, HFTokenizer.from_folder(tokenizer_dir),
                         config.max_position_embeddings, "cpu", 0.0, MemoryReport(0),
                         plan=SimpleNamespace(slots=slots))  # fmt: skip


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bench.random_models import write_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer(folder, 128)
    return folder


@pytest.mark.parametrize("layout", ["sliding window", "eager attention"])
def test_tiny_models_match_the_dynamic_cache_alone_and_batched(layout: str, tiny_tokenizer: Path) -> None:
    from transformers import LlamaConfig, MistralConfig

    sizes = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 96}  # fmt: skip
    if layout == "sliding window":  # every layer sees only the last 8 positions: the mask must say so
        config = MistralConfig(**sizes, sliding_window=8, attn_implementation="sdpa")
    else:  # eager attention adds a float mask to its scores
        config = LlamaConfig(**sizes, attn_implementation="eager")
    model = _tiny(config, tiny_tokenizer, slots=3)
    assert model.decode_mode.startswith("static KV cache, 3 slots")
    prompts = [[5 + (7 * i + k) % 100 for i in range(n)] for k, n in enumerate((20, 9, 14))]
    params = dataclasses.replace(GREEDY, max_new_tokens=24)
    alone = [run(model, p, params) for p in prompts]
    assert alone == [dynamic_greedy(model, p, 24) for p in prompts]
    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(lambda p: run(model, p, params), prompts)) == alone
    model.unload()


def test_hybrid_attention_keeps_the_dynamic_cache(tiny_tokenizer: Path) -> None:
    from transformers import Gemma2Config

    config = Gemma2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=96,
                          sliding_window=8, attn_implementation="eager")  # fmt: skip
    model = _tiny(config, tiny_tokenizer, slots=4)
    assert model.slots == 1 and model.decode_mode.startswith("dynamic KV cache")
    prompt = [5 + (7 * i) % 100 for i in range(20)]
    assert run(model, prompt) == dynamic_greedy(model, prompt, GREEDY.max_new_tokens)
    model.unload()


def test_every_step_runs_on_the_models_one_compute_thread(model: TorchCausalLM, monkeypatch) -> None:
    # One thread does all of a model's torch work (loaders/compute_thread.py: one OpenMP pool, no throttled spin),
    # whichever request thread asks for the next token.
    stepped_on: set[str] = set()
    step = model._batcher.step

    def recorded() -> None:
        stepped_on.add(threading.current_thread().name)
        step()

    monkeypatch.setattr(model._batcher, "step", recorded)
    prompts = [ids(model, q) for q in QUESTIONS[:3]]
    with ThreadPoolExecutor(3, thread_name_prefix="request") as pool:
        replies = list(pool.map(lambda p: run(model, p), prompts))
    assert all(len(r) == GREEDY.max_new_tokens for r in replies)
    compute = model.on_compute_thread(lambda: threading.current_thread().name)
    assert stepped_on == {compute} and compute.startswith("torch-SmolLM2-transformers")
