"""Benchmark: GGUF decode and prefill speed of every way Corral can run SmolLM2-135M-Instruct Q4_1 (the Triton GEMV
kernels' bandwidth at Llama-2-13B shapes is section (b) of `bench/gpu_suite.py`).

    .venv/bin/python -m bench.gguf [--tokens 128] [--repeats 3] [--threads N] [--profile]

Rows: (a) raw `llama_cpp.Llama.generate`, (b0) Corral's llama.cpp loader alone (`generate_tokens`), (b) llama.cpp
through Corral's engine (`webui.engine.generate` over `loaders.llamacpp`), (c) the native GGUF loader
(`loaders.gguf_native`, its plan's layouts: int4 kernel, bf16 where the CPU has it), (d) `transformers` loading the
GGUF with `gguf_file=` (dequantized to fp32). `bench/cpu.py` compares every CPU backend in one interleaved run.
Same ChatML prompt, greedy, one warm-up then the best of `--repeats` runs.
Prefill tokens/s = prompt tokens / time to the first new token; decode tokens/s = (new tokens - 1) / time from
the first to the last new token. Token times are taken where each backend hands a token over (for (b): where the
loader yields it to the engine, so the engine's own per-token work falls inside the decode interval).
Goal of issue 5: (b) >= 0.95 x (a) in decode; `--profile` shows where the engine spends its time.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import logging
import os
import pstats
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from loaders.base import GenerationParams
from tests import realmodel

PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant who writes clear, detailed answers.<|im_end|>\n"
    "<|im_start|>user\nExplain how a lighthouse works: the light source, the Fresnel lens that concentrates it, "
    "how the beam is made to rotate, how sailors tell one lighthouse from another by its pattern of flashes, "
    "and why many lighthouses are now automated. Then write a short poem about a lighthouse keeper.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
logger = logging.getLogger("bench.gguf")


@dataclass(frozen=True)
class Run:
    prompt_tokens: int
    new_tokens: int
    first_s: float  # from the call to the first new token
    last_s: float  # from the call to the last new token

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.first_s

    @property
    def decode_tps(self) -> float:
        return (self.new_tokens - 1) / (self.last_s - self.first_s) if self.new_tokens > 1 else 0.0


@dataclass(frozen=True)
class Result:
    name: str
    prefill_tps: float | None
    decode_tps: float | None
    new_tokens: int = 0
    note: str = ""


# --- timing ---------------------------------------------------------------------------------------------------------


def time_tokens(prompt_tokens: int, start: Callable[[], Iterable[Any]]) -> Run:
    """Time one generation: `start()` returns an iterable of new tokens, consumed to the end."""
    began = time.perf_counter()
    stamps = [time.perf_counter() - began for _ in start()]
    return Run(prompt_tokens, len(stamps), stamps[0], stamps[-1])


def best_of(name: str, repeats: int, once: Callable[[], Run]) -> Result:
    once()  # warm-up: page in the weights, fill caches
    runs = [once() for _ in range(repeats)]
    return Result(
        name,
        max(r.prefill_tps for r in runs),
        max(r.decode_tps for r in runs),
        runs[-1].new_tokens,
    )


class StampedModel:
    """Wraps a `LoadedModel`: records when each token leaves `generate_tokens`, to time the engine without relying on
    its stats. Everything else is delegated."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.stamps: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def generate_tokens(
        self, prompt_ids: list[int], params: GenerationParams, cancel: threading.Event, info: object = None
    ) -> Iterator[int]:
        self.prompt_tokens = len(prompt_ids)
        for token in self._model.generate_tokens(prompt_ids, params, cancel, info):
            self.stamps.append(time.perf_counter())
            yield token


# --- the four backends ----------------------------------------------------------------------------------------------


def greedy(tokens: int) -> GenerationParams:
    return GenerationParams(do_sample=False, max_new_tokens=tokens, truncation_length=4096, add_bos_token=True)


@dataclass
class Contender:
    """One llama.cpp row: `once()` times one generation. The llama.cpp rows run interleaved, run by run, so a change
    in the load of a shared machine hits them alike."""

    name: str
    once: Callable[[], Run]
    close: Callable[[], None]
    runs: list[Run] = field(default_factory=list)

    def result(self) -> Result:
        return Result(
            self.name,
            max(r.prefill_tps for r in self.runs),
            max(r.decode_tps for r in self.runs),
            self.runs[-1].new_tokens,
        )


def interleaved(contenders: list[Contender], repeats: int) -> list[Result]:
    for c in contenders:
        c.once()  # warm-up
    for _ in range(repeats):
        for c in contenders:
            c.runs.append(c.once())
    return [c.result() for c in contenders]


def raw_contender(path: Path, tokens: int, threads: int) -> Contender:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    ids = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)

    def stream() -> Iterator[int]:
        llm.reset()  # no prompt-prefix reuse between runs: every run pays its prefill
        for n, token in enumerate(llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0), start=1):
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                return
            yield token
            if n == tokens:
                return

    return Contender("(a) llama.cpp raw", lambda: time_tokens(len(ids), stream), llm.close)


def load_llamacpp(path: Path, threads: int) -> Any:
    from loaders import llamacpp
    from loaders.settings import LlamaCppSettings

    return llamacpp.load(path, LlamaCppSettings(n_ctx=2048, threads=threads, parallel=1), name=path.stem)


def loader_contender(path: Path, tokens: int, threads: int) -> Contender:
    """Corral's llama.cpp loader without the engine: separates the loader's cost from the engine's."""
    model = load_llamacpp(path, threads)
    ids = model.tokenizer.encode(PROMPT, add_bos=True)

    def once() -> Run:
        model.forget_prompts()
        return time_tokens(len(ids), lambda: model.generate_tokens(ids, greedy(tokens), threading.Event()))

    return Contender("(b0) llama.cpp loader, no engine", once, model.unload)


def engine_contender(path: Path, tokens: int, threads: int) -> Contender:
    from webui.engine import generate

    model = load_llamacpp(path, threads)
    stamped = StampedModel(model)

    def once() -> Run:
        model.forget_prompts()  # as for (a): full prefill every run
        stamped.stamps.clear()
        began = time.perf_counter()
        for _ in generate(stamped, PROMPT, greedy(tokens), cancel=threading.Event()):
            pass
        first, last = stamped.stamps[0] - began, stamped.stamps[-1] - began
        return Run(stamped.prompt_tokens, len(stamped.stamps), first, last)

    return Contender("(b) llama.cpp via Corral", once, model.unload)


def print_profile(once: Callable[[], Run]) -> None:
    """cProfile of one engine run, the Python side only (llama.cpp's C time shows under its ctypes calls)."""
    profiler = cProfile.Profile()
    profiler.runcall(once)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
    print("\nProfile of one run through the engine (by own time):\n" + out.getvalue())


def bench_native(path: Path, tokens: int, repeats: int) -> Result:
    try:
        from loaders import gguf_native as native
        from loaders.settings import NativeGGUFSettings
    except ImportError as error:
        return Result("(c) native GGUF loader", None, None, note=f"not available ({error})")
    model = native.load(path, NativeGGUFSettings(n_ctx=2048), name=path.stem)
    ids = model.tokenizer.encode(PROMPT, add_bos=True)

    def once() -> Run:
        return time_tokens(len(ids), lambda: model.generate_tokens(ids, greedy(tokens), threading.Event()))

    result = best_of("(c) native GGUF loader", repeats, once)
    model.unload()
    return result


def bench_transformers(path: Path, tokens: int, repeats: int) -> Result:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    inputs = tokenizer(PROMPT, return_tensors="pt", add_special_tokens=False)
    n_prompt = int(inputs["input_ids"].shape[1])

    def once() -> Run:
        streamer = _Stamps()
        began = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                **inputs, streamer=streamer, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens,
                pad_token_id=tokenizer.eos_token_id,
            )  # fmt: skip
        return Run(n_prompt, len(streamer.stamps), streamer.stamps[0] - began, streamer.stamps[-1] - began)

    return best_of("(d) transformers fp32 (gguf_file=)", repeats, once)


class _Stamps:
    """A `generate` streamer that only records when each new token arrives (its first `put` is the prompt)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if self._prompt_seen:
            self.stamps.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        pass


# --- report ---------------------------------------------------------------------------------------------------------


def run_row(name: str, bench: Callable[[], Result]) -> Result:
    """One backend's row; a backend that fails (one still being written...) is reported, and the others still run."""
    try:
        return bench()
    except Exception as error:  # noqa: BLE001 - logged with its traceback and shown in the table
        logger.exception("%s failed", name)
        return Result(name, None, None, note=f"failed: {type(error).__name__}: {error}")


def print_header(threads: int) -> None:
    print(f"\nSmolLM2-135M-Instruct Q4_1, greedy, best of runs | {threads} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start")  # fmt: skip
    print(f"{'backend':38} {'prefill tok/s':>13} {'x raw':>6} {'decode tok/s':>13} {'x raw':>6} {'new':>4}")


def print_row(r: Result, base: Result) -> None:
    if r.decode_tps is None:
        print(f"{r.name:38} {r.note}", flush=True)
        return
    print(
        f"{r.name:38} {r.prefill_tps:13.1f} {r.prefill_tps / base.prefill_tps:6.2f} "
        f"{r.decode_tps:13.1f} {r.decode_tps / base.decode_tps:6.2f} {r.new_tokens:4d}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=psutil.cpu_count(logical=False) or 1)
    parser.add_argument("--skip", default="", help="rows to skip: native,transformers")
    parser.add_argument("--profile", action="store_true", help="cProfile one run through the engine")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)  # (c) and (d): the same cores as llama.cpp
    path, n, k = realmodel.smollm2_gguf(), args.tokens, args.repeats
    rows: dict[str, tuple[str, Callable[[], Result]]] = {
        "native": ("(c) native GGUF loader", lambda: bench_native(path, n, k)),
        "transformers": ("(d) transformers fp32 (gguf_file=)", lambda: bench_transformers(path, n, k)),
    }
    contenders = [raw_contender(path, n, args.threads), loader_contender(path, n, args.threads)]
    if importlib.util.find_spec("webui.engine") is not None:
        contenders.append(engine_contender(path, n, args.threads))
    print_header(args.threads)
    results = interleaved(contenders, k)
    base = results[0]
    for result in results:
        print_row(result, base)
    if args.profile and len(contenders) == 3:
        print_profile(contenders[2].once)
    for c in contenders:
        c.close()
    for key, (name, bench) in rows.items():
        if key not in args.skip.split(","):
            print_row(run_row(name, bench), base)


if __name__ == "__main__":
    main()
