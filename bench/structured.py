"""Benchmark: the per-token cost of structured output (a JSON schema enforced while decoding), in one run.

    python -m bench.structured [--repeats 3] [--tokens 160]

SmolLM2-135M-Instruct, greedy, one prompt, on the backends' own decode loops (`LoadedModel.generate_tokens`):

- llama.cpp (Corral's loader): free text; the same with the JSON schema (llguidance's mask, `loaders/
  constraints.py`); with `top_logprobs` 5 (the step-by-step sampler path);
- llama.cpp's own GBNF grammar sampler on the same schema (llama-cpp-python's JSON-schema converter), in a minimal
  raw loop beside the same raw loop without a grammar: the engine Corral did not pick, measured for the record;
- transformers (PyTorch): free text and with the schema.

Decode tokens/s counts the tokens after the first over the time after the first (prefill excluded). Beside it,
"sampling CPU ms/token" is the CPU time of the sampling step alone (the sampler chain, the grammar's mask and its
advance; `time.thread_time`, so other processes' load barely moves it): the grammar's own cost per token, which on a
shared machine is steadier than the difference of two tok/s figures. The schema asks for six records, so a
constrained reply is long enough to time; free text runs `--tokens` tokens past EOS. Runs alternate and the best of
`--repeats` is kept, so load from other processes hits every row alike.
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


class SampleClock:
    """CPU time spent in the sampling step (wrapped functions), and how many steps."""

    def __init__(self) -> None:
        self.seconds, self.steps = 0.0, 0

    def wrap(self, function: Callable) -> Callable:
        def timed_step(*args: object, **kwargs: object) -> object:
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.thread_time() - started
                self.steps += 1

        return timed_step


CLOCK = SampleClock()


@dataclasses.dataclass
class Run:
    tokens: int  # after the first
    seconds: float  # after the first
    sample_ms: float  # CPU ms per sampling step

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds


def timed(tokens: Iterator[int]) -> Run:
    count, first = 0, None
    CLOCK.seconds, CLOCK.steps = 0.0, 0
    for _ in tokens:
        count += 1
        if first is None:
            first = time.perf_counter()
    seconds = time.perf_counter() - (first or time.perf_counter())
    return Run(count - 1, seconds, 1000 * CLOCK.seconds / max(CLOCK.steps, 1))


def corral_row(model: LoadedModel, params: GenerationParams) -> Callable[[], Run]:
    ids = model.tokenizer.encode(PROMPT, add_bos=True)
    return lambda: timed(model.generate_tokens(ids, params, threading.Event(), DecodeInfo()))


def raw_llama_row(llm: llama_cpp.Llama, grammar: str | None, tokens: int) -> Callable[[], Run]:
    """A minimal greedy loop on llama-cpp-python, with llama.cpp's grammar sampler when `grammar` is given."""
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    ids = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)

    sample = CLOCK.wrap(llama_cpp.llama_sampler_sample)

    def run() -> Run:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if grammar is not None:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(),
                                                                                          b"root"))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        llm.reset()
        llm.eval(ids)

        def loop() -> Iterator[int]:
            for _ in range(tokens):
                token = sample(chain, llm.ctx, -1)
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
    import psutil
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    from loaders import batching
    from loaders import llamacpp as llamacpp_module

    llamacpp_module._SamplerChain.sample = CLOCK.wrap(llamacpp_module._SamplerChain.sample)  # time the step only
    batching.select_next = CLOCK.wrap(batching.select_next)  # PyTorch rows with a grammar (or logprobs)
    batching.next_tokens = CLOCK.wrap(batching.next_tokens)  # ... and the plain ones
    gguf = realmodel.smollm2_gguf()
    llamacpp = load_llamacpp(gguf.parent, LlamaCppSettings(n_ctx=1024), name="bench")
    torch_model = load_transformers(realmodel.smollm2_hf(), TransformersSettings(), name="bench")
    threads = psutil.cpu_count(logical=False) or 1  # as Corral's loader picks them
    raw = llama_cpp.Llama(model_path=str(gguf), n_ctx=1024, n_threads=threads, verbose=False)
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
    best: dict[str, Run] = {}
    sampling: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, run in rows.items():
            result = run()
            if name not in best or result.tps > best[name].tps:
                best[name] = result
            sampling[name] = min(sampling.get(name, float("inf")), result.sample_ms)
    print(f"SmolLM2-135M-Instruct, greedy, best of {args.repeats}; decode tokens/s (prefill excluded)")
    print("| row | tokens | tok/s | × its free-text row | sampling CPU ms/token | grammar CPU ms/token |")
    print("|---|---|---|---|---|---|")
    for name, result in best.items():
        base = next(b for b in best if b.startswith(name.split(",")[0]) and b.endswith("free text"))
        print(f"| {name} | {result.tokens} | {result.tps:.1f} | {result.tps / best[base].tps:.2f} | "
              f"{sampling[name]:.2f} | {sampling[name] - sampling[base]:+.2f} |")


if __name__ == "__main__":
    main()
