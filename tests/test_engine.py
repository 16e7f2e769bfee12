"""The engine on the real SmolLM2 model: greedy equals transformers.generate, streaming, stop strings, cancel, seed,
BOS handling and truncation."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import pytest
import torch

from loaders.base import GenerationParams
from loaders.hf_tokenizer import HFTokenizer
from loaders.settings import TransformersSettings
from loaders.torch_lm import TorchCausalLM
from loaders.transformers_loader import load
from webui.engine import Detokenizer, encode_prompt, generate

PROMPT = "<|im_start|>user\nWhat is the capital of France? Tell me about it.<|im_end|>\n<|im_start|>assistant\n"
GREEDY = GenerationParams(do_sample=False, max_new_tokens=24)


@pytest.fixture(scope="module")
def model(smollm2_hf: Path) -> TorchCausalLM:
    loaded = load(smollm2_hf, TransformersSettings(), name="SmolLM2-135M-Instruct")
    yield loaded
    loaded.unload()


@pytest.fixture(scope="module")
def greedy_reply(model: TorchCausalLM) -> list[int]:
    generation = generate(model, PROMPT, GREEDY)
    list(generation)
    return generation.token_ids


def test_greedy_equals_transformers_generate(model: TorchCausalLM, greedy_reply: list[int]) -> None:
    prompt_ids = encode_prompt(model, PROMPT, GREEDY)
    eos = list(model.tokenizer.eos_token_ids)
    reference = model.module.generate(
        torch.tensor([prompt_ids]), max_new_tokens=GREEDY.max_new_tokens, do_sample=False,
        eos_token_id=eos, pad_token_id=eos[0],
    )[0, len(prompt_ids):].tolist()
    if reference[-1] in eos:
        reference = reference[:-1]
    assert len(greedy_reply) >= 10
    assert greedy_reply == reference


def test_stream_equals_text_equals_decoded_ids(model: TorchCausalLM) -> None:
    generation = generate(model, PROMPT, GenerationParams(max_new_tokens=24, seed=3, temperature=1.0))
    deltas = list(generation)
    assert len(deltas) > 5
    assert "".join(deltas) == generation.text == model.tokenizer.decode(generation.token_ids)
    stats = generation.stats
    assert stats.prompt_tokens == len(encode_prompt(model, PROMPT, GREEDY))
    assert stats.new_tokens == len(generation.token_ids)
    assert stats.stop_reason in ("eos", "max_tokens") and stats.tokens_per_second > 0


def test_detokenizer_multibyte_and_spaces(model: TorchCausalLM) -> None:
    text = "Ünïcødé, 日本語 and 🙂 emoji: café  au lait"
    ids = model.tokenizer.encode(text, add_bos=False)
    detokenizer = Detokenizer(model.tokenizer, skip_special_tokens=True)
    deltas = [detokenizer.push(token) for token in ids] + [detokenizer.flush()]
    assert "".join(deltas) == text
    assert not any("\ufffd" in delta for delta in deltas)
    assert "" in deltas  # some character spans several tokens and was held back


def _token_boundaries(model: TorchCausalLM, ids: list[int]) -> list[int]:
    """Character offset in the decoded reply at which each token's text ends."""
    return [len(model.tokenizer.decode(ids[: i + 1])) for i in range(len(ids))]


def test_stop_string_spanning_two_tokens_is_never_shown(model: TorchCausalLM, greedy_reply: list[int]) -> None:
    full = model.tokenizer.decode(greedy_reply)
    ends = _token_boundaries(model, greedy_reply)
    # A stop string made of the last 2 characters of one token and the first 2 of the next, around mid-reply.
    index = next(i for i in range(len(ends) // 2, len(ends) - 1)
                 if ends[i] - ends[i - 1] >= 2 and ends[i + 1] - ends[i] >= 2 and full[ends[i] - 2:ends[i] + 2].strip())
    stop = full[ends[index] - 2 : ends[index] + 2]
    first = full.find(stop)
    generation = generate(model, PROMPT, GenerationParams(do_sample=False, max_new_tokens=24, stop=("zzqx", stop)))
    deltas = list(generation)
    assert stop not in generation.text and "".join(deltas) == generation.text
    assert generation.text == full[:first]
    assert generation.stats.stop_reason == "stop_string"
    completes_at = next(i for i, end in enumerate(ends) if end >= first + len(stop))
    assert len(generation.token_ids) == completes_at + 1  # stopped on the token that completed the stop string


def test_cancel_stops_within_one_token(model: TorchCausalLM) -> None:
    cancel = threading.Event()
    generation = generate(model, PROMPT, GenerationParams(do_sample=False, max_new_tokens=40, ban_eos_token=True),
                          cancel=cancel)
    for _delta in generation:
        if len(generation.token_ids) >= 4:
            cancel.set()
            at_cancel = len(generation.token_ids)
    assert generation.stats.stop_reason == "cancelled"
    assert at_cancel <= len(generation.token_ids) <= at_cancel + 1


def test_model_checks_cancel_before_each_token(model: TorchCausalLM) -> None:
    cancel = threading.Event()
    ids = encode_prompt(model, PROMPT, GREEDY)
    produced = []
    for token in model.generate_tokens(ids, GenerationParams(do_sample=False, max_new_tokens=40), cancel):
        produced.append(token)
        assert not torch.is_inference_mode_enabled()  # no grad state leaks to the consumer between tokens
        if len(produced) == 3:
            cancel.set()
    assert len(produced) == 3


def test_seed_makes_sampling_repeatable(model: TorchCausalLM) -> None:
    def sampled(seed: int) -> str:
        params = GenerationParams(max_new_tokens=16, seed=seed, temperature=1.0, top_k=0, top_p=1.0,
                                  ban_eos_token=True)
        return "".join(generate(model, PROMPT, params))

    first = sampled(1234)
    assert first == sampled(1234)
    assert first != sampled(99)


def test_max_new_tokens_and_ban_eos(model: TorchCausalLM) -> None:
    generation = generate(model, PROMPT, GenerationParams(do_sample=False, max_new_tokens=6, ban_eos_token=True))
    list(generation)
    assert len(generation.token_ids) == 6 and generation.stats.stop_reason == "max_tokens"


def test_bos_not_doubled(model: TorchCausalLM) -> None:
    # SmolLM2's tokenizer adds no BOS of its own (its bos_token is <|im_start|>): encode follows it.
    assert encode_prompt(model, "Hello", GenerationParams())[0] != model.tokenizer.bos_token_id
    # A tokenizer that adds BOS (as Llama's does): once, and never on top of a BOS written by the template.
    llama_like = copy.copy(model)
    llama_like.tokenizer = HFTokenizer(model.tokenizer.hf, adds_bos=True)
    bos = llama_like.tokenizer.bos_token_id
    hello = model.tokenizer.encode("Hello", add_bos=False)
    assert encode_prompt(llama_like, "Hello", GenerationParams()) == [bos, *hello]
    assert encode_prompt(llama_like, "Hello", GenerationParams(add_bos_token=False))[0] != bos
    templated = encode_prompt(llama_like, PROMPT, GenerationParams())
    assert templated[0] == bos and templated[1] != bos
    assert templated == model.tokenizer.encode(PROMPT, add_bos=False)


def test_truncation_keeps_the_end_and_bos(model: TorchCausalLM) -> None:
    llama_like = copy.copy(model)
    llama_like.tokenizer = HFTokenizer(model.tokenizer.hf, adds_bos=True)
    params = GenerationParams(truncation_length=30, max_new_tokens=20)
    full = encode_prompt(llama_like, PROMPT, GenerationParams())
    cut = encode_prompt(llama_like, PROMPT, params)
    assert len(full) > 10 and len(cut) == 10
    assert cut[0] == full[0] == llama_like.tokenizer.bos_token_id and cut[1:] == full[-9:]
