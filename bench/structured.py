"""Benchmark: the per-token cost of structured output (a JSON schema enforced while decoding), in one run.

    python -m bench.structured [--repeats 3] [--tokens 160]

SmolLM2-135M-Instruct, greedy, one prompt, on the backends' own decode loops (`LoadedModel.generate_tokens`):

- llama.cpp (Corral's loader): free text; the same with the JSON schema (llguidance's mask, `loaders/
  constraints.py`); with `top_logprobs` 5 (the step-by-step sampler path);
- llama.cpp's own GBNF grammar sampler on the same schema (llama-cpp-python's JSON-schema converter), in a minimal
  raw loop beside the same raw loop without a grammar: the engine Corral did not pick, measured for the record;
- transformers (PyTorch): free text and with the schema.

Decode tokens/s counts the tokens after the first over the time after the first (prefill excluded). The schema asks
for six records, so a constrained reply is long enough to time; free text runs `--tokens` tokens past EOS. Runs
alternate and the best of `--repeats` is kept, so load from other processes hits every row alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator

import llama_cpp

from loaders.base import DecodeInfo, GenerationParams, LoadedModel
from loaders.constraints import spec_from_schema
from loaders.llamacpp import load as load_llamacpp
from loaders.settings import LlamaCppSettings, TransformersSettings
from loaders.transformers_loader import load as load_transformers
from tests import realmodel

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer"},
                                           "city": {"type": "string", "maxLength": 16}},
          "required": ["name", "age", "city"], "additionalProperties": False}
SCHEMA = {"type": "object", "properties": {"people": {"type": "array", "items": PERSON, "minItems": 6,
                                                      "maxItems": 6}},
          "required": ["people"], "additionalProperties": False}
PROMPT = "<|im_start|>user\nList six people with their name, age and city as JSON.<|im_end|>\n<|im_start|>assistant\n"


def timed(tokens: Iterator[int]) -> tuple[int, float]:
    """(tokens after the first, seconds after the first)."""
    count, first = 0, None
    for _ in tokens:
        count += 1
        if first is None:
            first = time.perf_counter()
    return count - 1, time.perf_counter() - (first or time.perf_counter())


def corral_row(model: LoadedModel, params: GenerationParams) -> Callable[[], tuple[int, float]]:
    ids = model.tokenizer.encode(PROMPT, add_bos=True)
    return lambda: timed(model.generate_tokens(ids, params, threading.Event(), DecodeInfo()))


def raw_llama_row(llm: llama_cpp.Llama, grammar: str | None, tokens: int) -> Callable[[], tuple[int, float]]:
    """A minimal greedy loop on llama-cpp-python, with llama.cpp's grammar sampler when `grammar` is given."""
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    ids = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)

    def run() -> tuple[int, float]:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if grammar is not None:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(),
                                                                                          b"root"))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        llm.reset()
        llm.eval(ids)

        def loop() -> Iterator[int]:
            for _ in range(tokens):
                token = llama_cpp.llama_sampler_sample(chain, llm.ctx, -1)
                if grammar is not None and llama_cpp.llama_vocab_is_eog(vocab, token):
                    return
                yield token
                llm.eval([token])

        try:
            return timed(loop())
        finally:
            llama_cpp.llama_sampler_free(chain)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=160)
    args = parser.parse_args()
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    gguf = realmodel.smollm2_gguf()
    llamacpp = load_llamacpp(gguf.parent, LlamaCppSettings(n_ctx=1024), name="bench")
    torch_model = load_transformers(realmodel.smollm2_hf(), TransformersSettings(), name="bench")
    raw = llama_cpp.Llama(model_path=str(gguf), n_ctx=1024, n_threads=llamacpp.llm.n_threads, verbose=False)
    free = GenerationParams(max_new_tokens=args.tokens, do_sample=False, ban_eos_token=True)
    schema = GenerationParams(max_new_tokens=400, do_sample=False, constraint=spec_from_schema(SCHEMA))
    rows = {
        "llama.cpp, free text": corral_row(llamacpp, free),
        "llama.cpp, JSON schema (llguidance)": corral_row(llamacpp, schema),
        "llama.cpp, top_logprobs 5": corral_row(llamacpp, dataclasses.replace(free, logprobs=5)),
        "raw llama.cpp loop, free text": raw_llama_row(raw, None, args.tokens),
        "raw llama.cpp loop, JSON schema (llama.cpp GBNF)": raw_llama_row(raw, json_schema_to_gbnf(json.dumps(SCHEMA)),
                                                                          400),
        "transformers, free text": corral_row(torch_model, free),
        "transformers, JSON schema (llguidance)": corral_row(torch_model, schema),
    }
    best: dict[str, tuple[int, float]] = {}
    for _ in range(args.repeats):
        for name, run in rows.items():
            count, seconds = run()
            if name not in best or count / seconds > best[name][0] / best[name][1]:
                best[name] = (count, seconds)
    print(f"SmolLM2-135M-Instruct, greedy, best of {args.repeats}; decode tokens/s (prefill excluded)")
    print("| row | tokens | tok/s | × its free-text row | ms/token added |")
    print("|---|---|---|---|---|")
    for name, (count, seconds) in best.items():
        base = next(b for b in best if b.startswith(name.split(",")[0]) and b.endswith("free text"))
        tps, base_tps = count / seconds, best[base][0] / best[base][1]
        added = 1000 / tps - 1000 / base_tps
        print(f"| {name} | {count} | {tps:.1f} | {tps / base_tps:.2f} | {added:+.2f} |")


if __name__ == "__main__":
    main()
