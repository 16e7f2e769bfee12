"""Benchmark: the per-token cost of three grammar engines as a logits mask, on SmolLM2's 49152-token vocabulary.

    python -m bench.grammar_engines [--repeats 5]

Candidates for the PyTorch backends' structured output (issue 19): `llguidance`, `xgrammar`, `outlines-core`. Each
gets the SmolLM2 tokenizer once (setup), compiles the same JSON schema (compile), then walks the tokens of one valid
reply: per token it fills the allowed-token bitmask, applies it to a [vocab] float32 logits vector (llguidance and
outlines-core through numpy's bit unpacking, as Corral does; xgrammar through its own kernel) and advances on the
token. Reported: setup and compile seconds, and microseconds per token (median and 95th percentile over all
tokens of the best of `--repeats` walks). Runs alternate engines, so load from other processes hits each alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from tests import realmodel

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "email": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                    "required": ["city", "zip"]},
    },
    "required": ["name", "age", "email", "tags", "address"],
}
REPLY = {"name": "Ada Lovelace", "age": 36, "email": "ada@example.org", "tags": ["math", "poetry", "engines"],
         "address": {"city": "London", "zip": "W1"}}


@dataclass
class Walker:
    """One engine prepared for the vocabulary: `start()` a fresh matcher, then `step(logits, token)`."""

    name: str
    setup_s: float
    compile_s: float
    start: Callable[[], object]
    step: Callable[[object, torch.Tensor, int], None]


def _unpack(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """int32 bitmask [ceil(vocab/32)] -> bool [vocab] (True = allowed), as `loaders/constraints.py` does it."""
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), bitorder="little").view(np.bool_)
    return torch.from_numpy(bits[:vocab])


def llguidance_walker(hf_tokenizer, vocab: int) -> Walker:
    import llguidance
    import llguidance.hf
    import llguidance.torch

    started = time.perf_counter()
    tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab)
    setup = time.perf_counter() - started
    started = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(SCHEMA))
    llguidance.LLMatcher(tokenizer, grammar)
    compile_s = time.perf_counter() - started
    bitmask = llguidance.torch.allocate_token_bitmask(1, vocab)

    def step(matcher, logits: torch.Tensor, token: int) -> None:
        llguidance.torch.fill_next_token_bitmask(matcher, bitmask)
        logits.masked_fill_(~_unpack(bitmask[0], vocab), float("-inf"))
        assert matcher.consume_token(token), matcher.get_error()

    return Walker("llguidance", setup, compile_s, lambda: llguidance.LLMatcher(tokenizer, grammar), step)


def xgrammar_walker(hf_tokenizer, vocab: int) -> Walker:
    import xgrammar

    started = time.perf_counter()
    info = xgrammar.TokenizerInfo.from_huggingface(hf_tokenizer, vocab_size=vocab)
    compiler = xgrammar.GrammarCompiler(info, max_threads=1)
    setup = time.perf_counter() - started
    started = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=True)
    compile_s = time.perf_counter() - started
    bitmask = xgrammar.allocate_token_bitmask(1, vocab)

    def step(matcher, logits: torch.Tensor, token: int) -> None:
        matcher.fill_next_token_bitmask(bitmask)
        xgrammar.apply_token_bitmask_inplace(logits[None], bitmask)
        assert matcher.accept_token(token)

    return Walker("xgrammar", setup, compile_s, lambda: xgrammar.GrammarMatcher(compiled), step)


def outlines_walker(hf_tokenizer, vocab: int) -> Walker:
    import outlines_core
    from outlines_core.json_schema import build_regex_from_schema

    started = time.perf_counter()
    decoder = {v: k for k, v in _byte_decoder().items()}
    tokens: dict[bytes, list[int]] = {}
    eos = hf_tokenizer.eos_token_id
    for text, token_id in hf_tokenizer.get_vocab().items():
        if token_id == eos:
            continue
        raw = bytes(decoder[ch] for ch in text) if all(ch in decoder for ch in text) else text.encode()
        tokens.setdefault(raw, []).append(token_id)
    vocabulary = outlines_core.Vocabulary(eos, tokens)
    setup = time.perf_counter() - started
    started = time.perf_counter()
    index = outlines_core.Index(build_regex_from_schema(json.dumps(SCHEMA)), vocabulary)
    compile_s = time.perf_counter() - started
    bitmask = torch.full((1, (vocab + 31) // 32), -1, dtype=torch.int32)

    def step(guide, logits: torch.Tensor, token: int) -> None:
        guide.write_mask_into(bitmask.data_ptr(), bitmask.numel(), bitmask.element_size())
        logits.masked_fill_(~_unpack(bitmask[0], vocab), float("-inf"))
        guide.advance(token)

    return Walker("outlines-core", setup, compile_s, lambda: outlines_core.Guide(index), step)


def _byte_decoder() -> dict[int, str]:
    """GPT-2's bytes -> printable characters map (byte-level BPE token spelling)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return bytes_to_unicode()


def walk(walker: Walker, tokens: list[int], vocab: int) -> list[float]:
    matcher = walker.start()
    logits = torch.randn(vocab)
    times = []
    for token in tokens:
        started = time.perf_counter()
        walker.step(matcher, logits, token)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoTokenizer

    hf_tokenizer = AutoTokenizer.from_pretrained(realmodel.smollm2_hf())
    vocab = len(hf_tokenizer)
    tokens = hf_tokenizer.encode(json.dumps(REPLY), add_special_tokens=False)
    walkers = [make(hf_tokenizer, vocab) for make in (llguidance_walker, xgrammar_walker, outlines_walker)]
    best: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for walker in walkers:
            times = walk(walker, tokens, vocab)
            if walker.name not in best or sum(times) < sum(best[walker.name]):
                best[walker.name] = times
    print(f"vocabulary {vocab}, reply {len(tokens)} tokens, best of {args.repeats} walks, 1 torch thread")
    print("| engine | setup s | compile s | µs/token median | µs/token p95 |")
    print("|---|---|---|---|---|")
    for walker in walkers:
        times = sorted(best[walker.name])
        p95 = times[int(0.95 * (len(times) - 1))]
        print(f"| {walker.name} | {walker.setup_s:.2f} | {walker.compile_s:.3f} | "
              f"{1e6 * statistics.median(times):.0f} | {1e6 * p95:.0f} |")


if __name__ == "__main__":
    main()
