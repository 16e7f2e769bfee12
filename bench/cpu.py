"""Benchmark: every way Corral runs SmolLM2-135M-Instruct on the CPU, in one interleaved run, against the machine's
memory bandwidth.

    python -m bench.cpu [--tokens 64] [--prompt 512] [--repeats 3] [--threads 2] [--rows KEY,...] [--before]
    python -m bench.cpu --compile [--threads 2]

Rows (`--rows` keys): llama-raw (`llama_cpp.Llama`), llama (Corral's llama.cpp loader through the engine), gguf
(native GGUF Q4_1, the plan's layouts), gptq-main (4-bit g128), gptq-32g (4-bit 32g act-order), gptq-8bit (8-bit,
one group, act-order), hf-fp32 and hf-auto (the Transformers loader in fp32 and in the plan's dtype: bf16 where the
CPU has it). `--before` adds the layouts main shipped before issue 15 (native GGUF per-call fp32, GPTQ dequantized
fp32 cache) so prefill can be compared in the same run. Each repeat runs every row once, in turn, so a change in
the load of a shared machine hits all rows alike; the best run of each row is kept. Each run is a fresh process
(`--one KEY`: load, warm up, one timed run), as the app runs one model at a time: in one process, GNU OpenMP
throttles its spin-waiting as soon as its thread pools (torch's, llama.cpp's decode thread's) hold more threads than
there are CPUs, which halved both torch's and llama.cpp's decode here (`--in-process` keeps the old way: every model
loaded at once). Corral rows run `webui.engine.generate_ids` on the same 512 prompt ids (greedy, EOS banned).

Columns: prefill tok/s (prompt tokens / time to the first new token), decode tok/s (new tokens after the first /
their time), MB read per decode token (the weights a token's forward reads, as held in memory, plus the KV cache
at the decode's mean length), and that traffic at the measured decode speed as a fraction of the copy bandwidth
measured in the same run (bytes read + written per second by a 256 MiB `Tensor.copy_`). For the PyTorch rows the
decode loop's own cost is the decode time per token minus a bare forward's time on the same cache length.

`--compile` instead times `torch.compile` on the CPU: the Transformers model in the plan's dtype with a static KV
cache, one-token forwards eager and compiled (interleaved, medians), the compile's seconds and the tokens after
which it has paid for itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from loaders.base import GenerationParams
from loaders.files import read_model_files
from tests import gptq_fixtures, realmodel

TEXT = (
    "The history of the printing press begins in the middle of the fifteenth century, when Johannes Gutenberg, a "
    "goldsmith from Mainz, combined several existing technologies into a system for producing books quickly. "
    "Before his invention, most books in Europe were copied by hand, and a single Bible could take years to "
    "finish. Within fifty years, printing shops had opened in more than two hundred cities across the continent. "
)
COPY_BYTES = 256 << 20


@dataclass(frozen=True)
class Run:
    prompt_tokens: int
    new_tokens: int
    first_s: float  # call -> first new token
    last_s: float  # call -> last new token

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.first_s

    @property
    def decode_tps(self) -> float:
        return (self.new_tokens - 1) / (self.last_s - self.first_s)


@dataclass
class Row:
    name: str
    once: Callable[[], Run]
    bytes_per_token: float  # weights + KV cache read per decode token
    close: Callable[[], None]
    forward_ms: Callable[[], float] | None = None  # a bare one-token forward (PyTorch rows)
    note: str = ""
    runs: list[Run] = field(default_factory=list)
    forward: float = 0.0


# --- timing -----------------------------------------------------------------------------------------------------


def stamped(prompt_tokens: int, tokens: Iterator[Any]) -> Run:
    began = time.perf_counter()
    stamps = [time.perf_counter() - began for _ in tokens]
    return Run(prompt_tokens, len(stamps), stamps[0], stamps[-1])


def copy_bandwidth() -> float:
    """Bytes read + written per second by a large copy (best of 5)."""
    src = torch.ones(COPY_BYTES, dtype=torch.uint8)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_seconds(lambda: dst.copy_(src)) for _ in range(5))
    return 2 * COPY_BYTES / best


def _seconds(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def greedy(tokens: int, prompt: int) -> GenerationParams:
    return GenerationParams(do_sample=False, max_new_tokens=tokens, ban_eos_token=True,
                            truncation_length=prompt + tokens)  # fmt: skip


# --- llama.cpp rows ---------------------------------------------------------------------------------------------


def gguf_bytes_per_token(path: Path, context: float) -> float:
    """llama.cpp reads every tensor once per token but the embedding (unless it is the head too), and its f16 KV."""
    files = read_model_files(path)
    tensors = files.header.tensors
    tied = not any(t.name == "output.weight" for t in tensors)
    weights = sum(t.nbytes for t in tensors if t.name != "token_embd.weight" or tied)
    return weights + files.shape.kv_cache_bytes(int(context), 2)


def llama_raw(path: Path, ids: list[int], tokens: int, threads: int) -> Row:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)

    def stream() -> Iterator[int]:
        llm.reset()  # no prefix reuse between runs: every run pays its prefill
        for n, token in enumerate(llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0), start=1):
            yield token
            if n == tokens:
                return

    return Row("llama.cpp raw", lambda: stamped(len(ids), stream()),
               gguf_bytes_per_token(path, len(ids) + tokens / 2), llm.close)  # fmt: skip


def llama_corral(path: Path, ids: list[int], tokens: int, threads: int) -> Row:
    from loaders import llamacpp
    from loaders.settings import LlamaCppSettings

    model = llamacpp.load(path, LlamaCppSettings(n_ctx=2048, threads=threads, parallel=1), name=path.stem)

    def once() -> Run:
        model.forget_prompts()  # no prefix reuse between runs: every run pays its prefill
        return engine_run(model, ids, tokens)

    return Row("llama.cpp via Corral", once, gguf_bytes_per_token(path, len(ids) + tokens / 2), model.unload)


def engine_run(model: Any, ids: list[int], tokens: int) -> Run:
    """One generation through the engine, timed where the loader hands each token over."""
    from webui.engine import generate_ids

    stamps: list[float] = []
    inner = model.generate_tokens

    def timed_tokens(*args: Any, **kwargs: Any) -> Iterator[int]:
        for token in inner(*args, **kwargs):
            stamps.append(time.perf_counter())
            yield token

    model.generate_tokens = timed_tokens
    try:
        began = time.perf_counter()
        for _ in generate_ids(model, ids, greedy(tokens, len(ids)), cancel=threading.Event()):
            pass
    finally:
        del model.generate_tokens  # the instance attribute shadowed the method
    return Run(len(ids), len(stamps), stamps[0] - began, stamps[-1] - began)


# --- PyTorch rows -----------------------------------------------------------------------------------------------


def torch_row(name: str, loader: str, path: Path, values: dict[str, Any], ids: list[int], tokens: int) -> Row:
    from loaders.registry import load_model
    from loaders.settings import settings_for

    model = load_model(loader, path, settings_for(loader, values), name=name)
    module = model.module
    kv = model.plan.files.shape.kv_cache_bytes(len(ids) + tokens // 2, torch.empty((), dtype=getattr(
        torch, model.dtype)).element_size())  # fmt: skip
    note = f"{model.dtype}" + (f", {model.weight_cache}" if model.weight_cache else "")
    def once() -> Run:
        model.forget_prompts()  # no prefix reuse between runs: every run pays its prefill
        return engine_run(model, ids, tokens)

    return Row(name, once, weights_read_per_token(module) + kv, model.unload,
               forward_ms=lambda: model.on_compute_thread(forward_ms, module, ids), note=note)  # fmt: skip


def weights_read_per_token(module: torch.nn.Module) -> int:
    """Bytes of every tensor a one-token forward reads: all weights as held (integer layouts, caches, floats) but
    the input embedding's, of which one row is read, unless the output head shares them."""
    from loaders.torch_lm import memory_of

    embedding = module.get_input_embeddings()
    tensors = []
    for sub in module.modules():
        if sub is embedding:
            continue
        tensors += [*sub.parameters(recurse=False), *sub.buffers(recurse=False)]
        tensors += sub.prepared_tensors() if hasattr(sub, "prepared_tensors") else []
    return memory_of(tensors).ram_bytes


@torch.inference_mode()
def forward_ms(module: torch.nn.Module, ids: list[int], steps: int = 16) -> float:
    """Median time of a bare one-token forward on a cache holding the prompt (what the decode loop wraps)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=module.config)
    module(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True, logits_to_keep=1)
    token = torch.tensor([[ids[-1]]])
    times = []
    for _ in range(steps):
        began = time.perf_counter()
        module(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[0, -1].float()
        times.append(time.perf_counter() - began)
    return 1000 * statistics.median(times)


# --- the run ----------------------------------------------------------------------------------------------------


def row_makers(ids: list[int], tokens: int, threads: int, before: bool) -> dict[str, Callable[[], Row]]:
    gguf, hf = realmodel.smollm2_gguf(), realmodel.smollm2_hf()

    def gptq(branch: str) -> Path:
        return gptq_fixtures.smollm2_gptq(branch)

    ctx = {"n_ctx": 2048}
    makers: dict[str, Callable[[], Row]] = {
        "llama-raw": lambda: llama_raw(gguf, ids, tokens, threads),
        "llama": lambda: llama_corral(gguf, ids, tokens, threads),
        "gguf": lambda: torch_row("native GGUF Q4_1", "gguf", gguf, ctx, ids, tokens),
        "gptq-main": lambda: torch_row("GPTQ 4-bit main", "gptq", gptq("main"), {}, ids, tokens),
        "gptq-32g": lambda: torch_row("GPTQ 4-bit 32g act-order", "gptq", gptq("gptq-4bit-32g-actorder_True"), {},
                                      ids, tokens),  # fmt: skip
        "gptq-8bit": lambda: torch_row("GPTQ 8-bit", "gptq", gptq("gptq-8bit--1g-actorder_True"), {}, ids, tokens),
        "hf-fp32": lambda: torch_row("Transformers fp32", "transformers", hf, {"dtype": "float32"}, ids, tokens),
        "hf-auto": lambda: torch_row("Transformers auto", "transformers", hf, {}, ids, tokens),
    }
    if before:
        old = {"dtype": "float32"}
        makers["gguf-before"] = lambda: torch_row("native GGUF before (fp32 per-call)", "gguf", gguf,
                                                  ctx | old | {"dequantize_cache": "off"}, ids, tokens)  # fmt: skip
        makers["gptq-main-before"] = lambda: torch_row("GPTQ 4-bit main before (fp32 cache)", "gptq", gptq("main"),
                                                       old | {"dequantize_cache": "on"}, ids, tokens)  # fmt: skip
    return makers


def prompt_ids(n: int) -> list[int]:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(realmodel.smollm2_hf())(TEXT * (n // 50 + 2))["input_ids"]
    return ids[:n]


def run(rows: list[Row], repeats: int) -> None:
    """Every row once per repeat, in turn; a PyTorch row's bare forward is timed right after its run (the best of
    the repeats, as decode), so the loop's cost compares the two under the same load."""
    for row in rows:
        row.once()  # warm-up
    for _ in range(repeats):
        for row in rows:
            row.runs.append(row.once())
            if row.forward_ms:
                forward = row.forward_ms()
                row.forward = min(row.forward, forward) if row.forward else forward


def run_isolated(keys: list[str], args: argparse.Namespace) -> list[Row]:
    """Every row once per repeat, in turn, each run in a fresh process (`--one`)."""
    rows: dict[str, Row] = {}
    for _ in range(args.repeats):
        for key in keys:
            command = [sys.executable, "-m", "bench.cpu", "--one", key, "--tokens", str(args.tokens), "--prompt",
                       str(args.prompt), "--threads", str(args.threads), *(["--before"] if args.before else [])]
            done = subprocess.run(command, capture_output=True, text=True, check=True,
                                  cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
            data = json.loads(done.stdout.strip().splitlines()[-1])
            row = rows.setdefault(key, Row(data["name"], _ran_elsewhere, data["bytes_per_token"], lambda: None,
                                           note=data["note"]))  # fmt: skip
            row.runs.append(Run(**data["run"]))
            if data["forward"]:
                row.forward = min(row.forward, data["forward"]) if row.forward else data["forward"]
    return list(rows.values())


def _ran_elsewhere() -> Run:
    raise RuntimeError("this row runs in its own process (run_isolated)")


def run_one(key: str, args: argparse.Namespace) -> None:
    """Load one row, warm it up, time one run (and its bare forward); print it as JSON."""
    row = row_makers(prompt_ids(args.prompt), args.tokens, args.threads, args.before)[key]()
    row.once()  # warm-up
    timed = row.once()
    forward = row.forward_ms() if row.forward_ms else 0.0
    row.close()
    print(json.dumps({"name": row.name, "run": dataclasses.asdict(timed), "bytes_per_token": row.bytes_per_token,
                      "note": row.note, "forward": forward}))  # fmt: skip


def report(rows: list[Row], bandwidth: float, args: argparse.Namespace) -> None:
    load = os.getloadavg()
    print(f"\nSmolLM2-135M-Instruct, {args.prompt}-token prompt, {args.tokens} new tokens, greedy, best of "
          f"{args.repeats} | {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average "
          f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} | copy bandwidth {bandwidth / 1e9:.1f} GB/s")  # fmt: skip
    base = next((r for r in rows if r.name == "llama.cpp via Corral"), rows[0])
    print("| row | prefill tok/s | decode tok/s | × llama.cpp via Corral | MB read / token | of copy bandwidth "
          "| forward ms | loop ms / token | held as |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        prefill = max(r.prefill_tps for r in row.runs)
        decode = max(r.decode_tps for r in row.runs)
        base_decode = max(r.decode_tps for r in base.runs)
        loop = f"{1000 / decode - row.forward:.1f}" if row.forward else "—"
        forward = f"{row.forward:.1f}" if row.forward else "—"
        print(f"| {row.name} | {prefill:.0f} | {decode:.1f} | {decode / base_decode:.2f} | "
              f"{row.bytes_per_token / 1e6:.0f} | {row.bytes_per_token * decode / bandwidth:.2f} | {forward} | "
              f"{loop} | {row.note} |")  # fmt: skip


@torch.inference_mode()
def compile_report(prompt: int, steps: int = 48) -> None:
    """Eager vs `torch.compile` one-token forwards with a static cache; compile time and break-even tokens."""
    from transformers import StaticCache

    from loaders.registry import load_model
    from loaders.settings import settings_for

    model = load_model("transformers", realmodel.smollm2_hf(), settings_for("transformers", {}), name="hf-auto")
    module, ids = model.module, torch.tensor([prompt_ids(prompt)])

    def cache() -> StaticCache:
        static = StaticCache(config=module.config, max_cache_len=prompt + 2 * steps + 8)
        module(input_ids=ids, past_key_values=static, cache_position=torch.arange(prompt), logits_to_keep=1)
        return static

    def step(forward: Callable[..., Any], static: StaticCache, position: int) -> float:
        began = time.perf_counter()
        forward(input_ids=ids[:, -1:], past_key_values=static, cache_position=torch.tensor([position]),
                logits_to_keep=1).logits[0, -1].float()  # fmt: skip
        return time.perf_counter() - began

    compiled = torch.compile(module.forward, dynamic=False)
    eager_cache, compiled_cache = cache(), cache()
    began = time.perf_counter()
    step(compiled, compiled_cache, prompt)  # the first call compiles
    compile_s = time.perf_counter() - began
    eager, fast = [], []
    for i in range(1, steps):
        eager.append(step(module.forward, eager_cache, prompt + i))
        fast.append(step(compiled, compiled_cache, prompt + i))
    eager_ms, fast_ms = 1000 * statistics.median(eager[4:]), 1000 * statistics.median(fast[4:])
    saved = eager_ms - fast_ms
    even = f"{compile_s * 1000 / saved:.0f} tokens" if saved > 0 else "never"
    print(f"\ntorch.compile, Transformers {model.dtype} with a static cache, {prompt}-token prompt, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}: compile {compile_s:.1f} s; "
          f"one-token forward eager {eager_ms:.1f} ms, compiled {fast_ms:.1f} ms; pays for itself after {even}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default="", help="comma-separated keys (default: all)")
    parser.add_argument("--before", action="store_true", help="add the pre-issue-15 layouts for comparison")
    parser.add_argument("--compile", action="store_true", help="time torch.compile instead (see above)")
    parser.add_argument("--in-process", action="store_true", help="every model loaded at once in this process")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # one row, one run, as JSON (run_isolated)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.compile:
        compile_report(args.prompt)
        return
    if args.one:
        run_one(args.one, args)
        return
    ids = prompt_ids(args.prompt)
    makers = row_makers(ids, args.tokens, args.threads, args.before)
    keys = [k for k in args.rows.split(",") if k] or list(makers)
    bandwidth = copy_bandwidth()
    if args.in_process:
        rows = [makers[key]() for key in keys]
        run(rows, args.repeats)
    else:
        rows = run_isolated(keys, args)
    bandwidth = max(bandwidth, copy_bandwidth())
    report(rows, bandwidth, args)
    for row in rows:
        row.close()


if __name__ == "__main__":
    main()
