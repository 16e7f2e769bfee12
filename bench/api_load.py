"""Load test of the OpenAI-compatible API on 127.0.0.1 with SmolLM2-135M-Instruct: parallel decoding and prefix reuse.

Each server is a separate `app.py --api --nowebui --parallel P` process. For every loader (llama.cpp on the Q4_1
GGUF, Transformers on the derived folder) and every `--parallel` value, the script runs, in one go:

1. a sweep of 1, 2, 4, 8, 16 concurrent streaming chat clients (`--rounds` requests each, `--max-tokens` tokens,
   EOS ignored so every reply has the same length): aggregate completion tokens/s over the wall time, p50/p95 time
   to first token and total latency, errors;
2. (llama.cpp) the yardstick: the same 8 prompts decoded together by the API and by raw llama.cpp (one context of
   8 sequences, one `llama_decode` per step: what llama.cpp's own batched example does), the API's aggregate rate
   as a fraction of raw's, and 8 streams against 1 stream through the API;
3. the 10th turn of a chat: time to first token when the server still holds the 9 earlier turns (prefix reuse)
   and for the same messages behind a different system prompt (nothing reusable); usage's `cached_tokens` says
   what was reused.

Every reply is checked for form (a role chunk first, content, one finish reason, `[DONE]` last, usage that adds
up); a malformed or failed request is counted as an error and fails the run (exit 1).

    python bench/api_load.py                                     # everything, both loaders, --parallel 1 and 8
    python bench/api_load.py --loaders llama.cpp --threads 1     # llama.cpp only, one compute thread
    python bench/api_load.py --volume --clients 32 --requests 200  # nothing lost or duplicated under load
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
if Path(sys.path[0]).resolve() == REPO / "bench":
    sys.path[0] = str(REPO)  # run as a script: bench/gguf.py must not shadow the gguf package
else:
    sys.path.insert(0, str(REPO))

from tests import realmodel  # noqa: E402

MODELS = {"llama.cpp": "SmolLM2-135M-Instruct-GGUF", "transformers": "SmolLM2-135M-Instruct"}
KEY = "bench-key"
CONTEXT = 1024  # per slot
TOPICS = ("the sea", "mountains", "bread", "the moon", "cats", "rivers", "music", "winter", "glass", "bees",
          "trains", "salt", "clocks", "forests", "paper", "storms")  # fmt: skip
QUESTIONS = ("Name a colour.", "Say hello.", "What is 2 + 2?", "Name a fruit.", "Give me a word that rhymes with cat.")


# --- one streamed request -----------------------------------------------------------------------------------------


@dataclass
class Result:
    index: int
    sent: float = 0.0  # perf_counter when the request went out
    latency: float = 0.0
    first_token: float = 0.0
    completion_tokens: int = 0
    cached_tokens: int = 0
    problems: list[str] = field(default_factory=list)


async def one_request(client: httpx.AsyncClient, url: str, body: dict[str, Any], index: int) -> Result:
    result = Result(index)
    body = body | {"stream": True, "stream_options": {"include_usage": True}}
    started = result.sent = time.perf_counter()
    events: list[dict | str] = []
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            result.problems.append(f"status {response.status_code}: {(await response.aread())[:200]!r}")
            return result
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue  # blank lines, and ": waiting in line" comments
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
            if not result.first_token and isinstance(events[-1], dict) and _content(events[-1]):
                result.first_token = time.perf_counter() - started
    result.latency = time.perf_counter() - started
    result.problems += check_events(events, body["max_tokens"])
    usage = next((e["usage"] for e in events if isinstance(e, dict) and e.get("usage")), None)
    if usage:
        result.completion_tokens = usage["completion_tokens"]
        result.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return result


def _content(event: dict) -> str:
    choices = event.get("choices") or []
    if not choices:
        return ""
    return choices[0].get("text") or (choices[0].get("delta") or {}).get("content") or ""


def check_events(events: list[dict | str], max_tokens: int) -> list[str]:
    """What is wrong with one streamed reply (empty when it is well-formed)."""
    problems = []
    if not events or events[-1] != "[DONE]" or events.count("[DONE]") != 1:
        problems.append("no single [DONE] at the end")
    chunks = [e for e in events if isinstance(e, dict)]
    if any("error" in e for e in chunks):
        problems.append(f"error event: {[e for e in chunks if 'error' in e][0]}")
        return problems
    with_choices = [e for e in chunks if e.get("choices")]
    chat = bool(with_choices) and "delta" in with_choices[0]["choices"][0]
    if chat and with_choices[0]["choices"][0]["delta"].get("role") != "assistant":
        problems.append("first chunk has no assistant role")
    finishes = [e["choices"][0]["finish_reason"] for e in with_choices if e["choices"][0]["finish_reason"]]
    if len(finishes) != 1 or finishes[0] not in ("stop", "length"):
        problems.append(f"finish reasons {finishes}")
    if not "".join(_content(e) for e in with_choices).strip():
        problems.append("empty reply")
    usage = [e["usage"] for e in chunks if e.get("usage")]
    if len(usage) != 1 or not 0 < usage[0]["completion_tokens"] <= max_tokens:
        problems.append(f"usage {usage}")
    elif usage[0]["total_tokens"] != usage[0]["prompt_tokens"] + usage[0]["completion_tokens"]:
        problems.append("usage does not add up")
    if len({e["id"] for e in chunks}) != 1:
        problems.append("chunk ids differ")
    return problems


async def run_clients(base: str, clients: int, bodies: list[tuple[str, dict[str, Any]]], timeout: float
                      ) -> tuple[list[Result], float]:  # fmt: skip
    """`bodies` ((path, body) per request) sent by `clients` concurrent clients, each taking the next in order."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(bodies)):
        queue.put_nowait(index)
    results: list[Result] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            index = queue.get_nowait()
            path, body = bodies[index]
            try:
                results.append(await one_request(client, f"{base}{path}", body, index))
            except httpx.HTTPError as error:
                results.append(Result(index, problems=[f"{type(error).__name__}: {error}"]))

    started = time.perf_counter()
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, limits=limits,
                                 timeout=httpx.Timeout(timeout)) as client:
        await asyncio.wait_for(asyncio.gather(*(worker(client) for _ in range(clients))), timeout)
    return results, time.perf_counter() - started


# --- the server ---------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def models_folder(threads: int) -> Path:
    """A models folder with SmolLM2 in both formats (hard links), settings saved as a user would."""
    models = Path(tempfile.mkdtemp(prefix="corral-bench-")) / "models"
    sources = {MODELS["llama.cpp"]: realmodel.smollm2_gguf().parent, MODELS["transformers"]: realmodel.smollm2_hf()}
    for name, source in sources.items():
        (models / name).mkdir(parents=True)
        for item in source.iterdir():
            os.link(item, models / name / item.name)
    (models / "config-user.yaml").write_text(
        f"{MODELS['llama.cpp']}:\n  loader: llama.cpp\n  loader_settings: {{threads: {threads}}}\n"
        f"  context_length: {CONTEXT}\n"
        f"{MODELS['transformers']}:\n  loader: transformers\n  context_length: {CONTEXT}\n")
    return models


@contextmanager
def server(models: Path, model: str, parallel: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """(base URL, /internal/model/info) of an API server with `model` loaded for `parallel` slots; the info also
    holds the server's process id (`pid`), to read its CPU time."""
    port = free_port()
    command = [sys.executable, str(REPO / "app.py"), "--api", "--nowebui", "--models-dir", str(models), "--model",
               model, "--parallel", str(parallel), "--api-port", str(port), "--api-key", KEY, "--data-dir",
               str(models.parent / "data")]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        yield base, wait_ready(process, base, model, 600) | {"pid": process.pid}
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_ready(process: subprocess.Popen, base: str, model: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {process.stderr.read()}")
        try:
            info = httpx.get(f"{base}/internal/model/info", headers={"Authorization": f"Bearer {KEY}"}, timeout=2)
            if info.json().get("model_name") == model:
                return info.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not load the model in time")


# --- what is measured ---------------------------------------------------------------------------------------------


def chat_body(model: str, index: int, max_tokens: int) -> tuple[str, dict[str, Any]]:
    question = f"Tell me about {TOPICS[index % len(TOPICS)]}. {QUESTIONS[index % len(QUESTIONS)]}"
    return "/chat/completions", {"model": model, "messages": [{"role": "user", "content": question}],
                                 "max_tokens": max_tokens, "ignore_eos": True, "seed": index}


def chatml(text: str) -> str:
    """SmolLM2's own chat format, written out: the API and raw llama.cpp get the same tokens."""
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def yardstick_prompts(n: int) -> list[str]:
    return [chatml(f"Write a long story about {TOPICS[i % len(TOPICS)]}.") for i in range(n)]


def summary(results: list[Result], wall: float) -> dict[str, Any]:
    good = [r for r in results if not r.problems]
    firsts, latencies = [r.first_token for r in good], [r.latency for r in good]
    tokens = sum(r.completion_tokens for r in good)
    return {"requests": len(results), "errors": len(results) - len(good), "tokens": tokens, "wall": wall,
            "tok_s": tokens / wall if wall else 0.0, "ttft_p50": percentile(firsts, 50),
            "ttft_p95": percentile(firsts, 95), "lat_p50": percentile(latencies, 50),
            "lat_p95": percentile(latencies, 95), "problems": [p for r in results for p in r.problems][:3]}


def percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def sweep(base: str, model: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for clients in args.clients:
        bodies = [chat_body(model, i, args.max_tokens) for i in range(clients * args.rounds)]
        results, wall = asyncio.run(run_clients(base, clients, bodies, args.timeout))
        rows.append({"clients": clients} | summary(results, wall))
        print(_row(rows[-1]), flush=True)
    return rows


def api_streams(base: str, pid: int, n: int, tokens: int, timeout: float) -> dict[str, Any]:
    """`n` raw-prompt completions at once (the yardstick's prompts), each `tokens` long; with the server's CPU
    seconds per generated token (all its threads), which a machine shared with other work does not change."""
    bodies = [("/completions", {"prompt": p, "max_tokens": tokens, "ignore_eos": True, "temperature": 0})
              for p in yardstick_prompts(n)]  # fmt: skip
    before = _cpu(psutil.Process(pid))
    results, wall = asyncio.run(run_clients(base, n, bodies, timeout))
    row = summary(results, wall)
    return row | {"cpu_ms": 1000 * (_cpu(psutil.Process(pid)) - before) / max(1, row["tokens"])}


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def tenth_turn(base: str, model: str, turns: int, timeout: float) -> dict[str, Any]:
    """Chat `turns - 1` turns, then time the first token of the last one: as the next turn of the conversation
    the server has cached, and behind another system prompt (the same length, nothing to reuse)."""
    messages: list[dict[str, str]] = [{"role": "system", "content": "You are a helpful assistant (A)."}]
    for turn in range(turns - 1):
        messages.append({"role": "user", "content": f"Tell me one thing about {TOPICS[turn % len(TOPICS)]}."})
        reply = httpx.post(f"{base}/chat/completions", json={"model": model, "messages": messages, "max_tokens": 40,
                           "temperature": 0}, headers={"Authorization": f"Bearer {KEY}"}, timeout=timeout)
        reply.raise_for_status()
        messages.append(reply.json()["choices"][0]["message"])
    messages.append({"role": "user", "content": "Now sum it all up in one sentence."})
    other = [{"role": "system", "content": "You are a helpful assistant (B)."}, *messages[1:]]
    out = {}
    for label, conversation in (("reuse", messages), ("no_reuse", other)):
        body = {"model": model, "messages": conversation, "max_tokens": 2, "temperature": 0}
        results, _ = asyncio.run(run_clients(base, 1, [("/chat/completions", body)], timeout))
        result = results[0]
        out[label] = {"ttft": result.first_token, "cached": result.cached_tokens, "problems": result.problems}
    return out


def raw_llamacpp(prompts: list[str], tokens: int, threads: int) -> dict[str, float]:
    """Raw llama.cpp, no Corral: one context of len(prompts) sequences (as the loader makes it), every prompt read
    in one batch, then one `llama_decode` per step carrying every sequence's token, greedy samplers. Tokens/s over
    the whole run (comparable with the API's aggregate) and over the decode steps alone."""
    import ctypes

    import llama_cpp

    llama_cpp.llama_backend_init()
    quiet = llama_cpp.llama_log_callback(lambda level, text, data: None)
    llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))
    model = llama_cpp.llama_model_load_from_file(str(realmodel.smollm2_gguf()).encode(),
                                                 llama_cpp.llama_model_default_params())
    vocab = llama_cpp.llama_model_get_vocab(model)
    n = len(prompts)
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_seq_max, params.kv_unified = CONTEXT * n, n, False
    params.n_batch = params.n_ubatch = 512
    params.n_threads = params.n_threads_batch = threads
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as the loader
    ctx = llama_cpp.llama_init_from_model(model, params)
    batch = llama_cpp.llama_batch_init(512, 0, 1)
    samplers = [llama_cpp.llama_sampler_init_greedy() for _ in prompts]
    try:
        ids = [_tokenize(vocab, p) for p in prompts]
        started, cpu = time.perf_counter(), time.process_time()
        last = _fill(batch, [(t, j, s, j == len(p) - 1) for s, p in enumerate(ids) for j, t in enumerate(p)])
        llama_cpp.llama_decode(ctx, batch)
        decoding = time.perf_counter()
        positions = [len(p) for p in ids]
        for _ in range(tokens - 1):
            entries = []
            for s in range(n):
                token = llama_cpp.llama_sampler_sample(samplers[s], ctx, last[s])
                entries.append((token, positions[s], s, True))
                positions[s] += 1
            last = _fill(batch, entries)
            llama_cpp.llama_decode(ctx, batch)
        for s in range(n):
            llama_cpp.llama_sampler_sample(samplers[s], ctx, last[s])  # the last token of each reply
        ended, cpu = time.perf_counter(), time.process_time() - cpu
    finally:
        for sampler in samplers:
            llama_cpp.llama_sampler_free(sampler)
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    return {"tok_s": n * tokens / (ended - started), "decode_tok_s": n * (tokens - 1) / (ended - decoding),
            "cpu_ms": 1000 * cpu / (n * tokens)}


def loader_streams(prompts: list[str], tokens: int, threads: int) -> dict[str, float]:
    """Corral's llama.cpp loader without the engine or the API: one thread per prompt calling `generate_tokens`, all
    decoded together by its batch decoder. Tells the decoder's cost apart from the engine's and the API's."""
    import threading

    from loaders import llamacpp
    from loaders.base import GenerationParams
    from loaders.settings import LlamaCppSettings

    model = llamacpp.load(realmodel.smollm2_gguf(), LlamaCppSettings(n_ctx=CONTEXT, threads=threads,
                                                                     parallel=len(prompts)), name="bench")
    params = GenerationParams(do_sample=False, max_new_tokens=tokens, ban_eos_token=True)
    ids = [model.tokenizer.encode(p, add_bos=True) for p in prompts]
    counts = [0] * len(prompts)

    def run(i: int) -> None:
        counts[i] = sum(1 for _ in model.generate_tokens(ids[i], params, threading.Event()))

    threads_ = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    started, cpu = time.perf_counter(), time.process_time()
    for thread in threads_:
        thread.start()
    for thread in threads_:
        thread.join()
    ended, cpu = time.perf_counter(), time.process_time() - cpu
    model.unload()
    return {"tok_s": sum(counts) / (ended - started), "cpu_ms": 1000 * cpu / sum(counts)}


def _tokenize(vocab: Any, text: str) -> list[int]:
    import llama_cpp

    data = text.encode()
    out = (llama_cpp.llama_token * (len(data) + 8))()
    count = llama_cpp.llama_tokenize(vocab, data, len(data), out, len(data) + 8, False, True)
    return list(out[:count])


def _fill(batch: Any, entries: list[tuple[int, int, int, bool]]) -> dict[int, int]:
    """Write (token, position, sequence, wants logits) entries; {sequence: index of its logits}."""
    batch.n_tokens = len(entries)
    last = {}
    for i, (token, pos, seq, logits) in enumerate(entries):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
        batch.seq_id[i][0] = seq
        if logits:
            last[seq] = i
    return last


# --- reporting ----------------------------------------------------------------------------------------------------


def _row(row: dict[str, Any]) -> str:
    return (f"| {row['clients']} | {row['tok_s']:.1f} | {row['ttft_p50']:.2f} / {row['ttft_p95']:.2f} | "
            f"{row['lat_p50']:.2f} / {row['lat_p95']:.2f} | {row['errors']} |"
            + (f" {row['problems'][0]}" if row["problems"] else ""))


TABLE_HEAD = ("| clients | completion tok/s | TTFT p50 / p95 s | latency p50 / p95 s | errors |\n"
              "|---|---|---|---|---|")


def run_loader(loader: str, models: Path, args: argparse.Namespace) -> dict[str, Any]:
    model = MODELS[loader]
    report: dict[str, Any] = {}
    for parallel in args.parallel:
        with server(models, model, parallel) as (base, info):
            print(f"\n### {loader}, --parallel {parallel} (the model reports {info['slots']} slots), "
                  f"{args.max_tokens} tokens per reply, {args.rounds} requests per client\n\n{TABLE_HEAD}", flush=True)
            entry: dict[str, Any] = {"slots": info["slots"], "sweep": sweep(base, model, args)}
            if loader == "llama.cpp":
                entry["one_stream"] = api_streams(base, info["pid"], 1, args.yardstick_tokens, args.timeout)
                entry["eight_streams"] = api_streams(base, info["pid"], 8, args.yardstick_tokens, args.timeout)
            entry["tenth_turn"] = tenth_turn(base, model, args.turns, args.timeout)
            turn = entry["tenth_turn"]
            print(f"\n10th turn, time to first token: {turn['reuse']['ttft']:.3f} s with {turn['reuse']['cached']} "
                  f"prompt tokens reused, {turn['no_reuse']['ttft']:.3f} s with {turn['no_reuse']['cached']} reused "
                  f"(ratio {turn['reuse']['ttft'] / turn['no_reuse']['ttft']:.2f}; target ≤ 0.3)", flush=True)
            report[parallel] = entry
    return report


def yardstick(report: dict[str, Any], args: argparse.Namespace) -> None:
    raw8 = raw_llamacpp(yardstick_prompts(8), args.yardstick_tokens, args.threads)
    raw1 = raw_llamacpp(yardstick_prompts(1), args.yardstick_tokens, args.threads)
    alone8 = loader_streams(yardstick_prompts(8), args.yardstick_tokens, args.threads)
    top = max(args.parallel)
    api8, api1 = report[top]["eight_streams"], report[top]["one_stream"]
    print(f"\n### llama.cpp yardstick: 8 prompts × {args.yardstick_tokens} tokens, {args.threads} threads\n\n"
          "| run | tok/s (whole run) | decode-only tok/s | CPU ms per token |\n|---|---|---|---|\n"
          f"| raw llama.cpp, 8 sequences in one batch | {raw8['tok_s']:.1f} | {raw8['decode_tok_s']:.1f} | "
          f"{raw8['cpu_ms']:.2f} |\n"
          f"| raw llama.cpp, 1 sequence | {raw1['tok_s']:.1f} | {raw1['decode_tok_s']:.1f} | {raw1['cpu_ms']:.2f} |\n"
          f"| Corral's llama.cpp loader alone, 8 threads | {alone8['tok_s']:.1f} | — | {alone8['cpu_ms']:.2f} |\n"
          f"| API, 8 streams, --parallel {top} (server process) | {api8['tok_s']:.1f} | — | {api8['cpu_ms']:.2f} |\n"
          f"| API, 1 stream, --parallel {top} (server process) | {api1['tok_s']:.1f} | — | {api1['cpu_ms']:.2f} |\n\n"
          f"8 API streams / raw 8-sequence batch: {api8['tok_s'] / raw8['tok_s']:.2f} (target ≥ 0.85); "
          f"8 API streams / 1 API stream: {api8['tok_s'] / api1['tok_s']:.2f} (target ≥ 1.4); CPU per token, API "
          f"server / raw: {api8['cpu_ms'] / raw8['cpu_ms']:.2f} (8 streams), {api1['cpu_ms'] / raw1['cpu_ms']:.2f} (1)",
          flush=True)
    report["raw"] = {"eight": raw8, "one": raw1, "loader_eight": alone8}


def errors_in(report: dict[str, Any]) -> int:
    count = 0
    for loader in report.values():
        for entry in (v for k, v in loader.items() if k != "raw"):
            count += sum(row["errors"] for row in entry["sweep"])
            count += sum(entry[k]["errors"] for k in ("one_stream", "eight_streams") if k in entry)
            count += sum(bool(t["problems"]) for t in entry["tenth_turn"].values())
    return count


# --- the volume check (nothing lost or duplicated) ----------------------------------------------------------------


def volume(models: Path, args: argparse.Namespace) -> int:
    model = MODELS["llama.cpp"]
    with server(models, model, max(args.parallel)) as (base, info):
        bodies = [chat_body(model, i, args.max_tokens) for i in range(args.requests)]
        results, wall = asyncio.run(run_clients(base, args.volume_clients, bodies, args.timeout))
    row = summary(results, wall)
    missing = set(range(args.requests)) - {r.index for r in results}
    duplicated = len(results) - len({r.index for r in results})
    print(f"{args.requests} requests, {args.volume_clients} clients, {info['slots']} slots: errors {row['errors']}, "
          f"lost {len(missing)}, duplicated {duplicated}; {row['tok_s']:.1f} tok/s, latency p50 {row['lat_p50']:.2f} "
          f"s, p95 {row['lat_p95']:.2f} s")
    return 0 if not row["errors"] and not missing and not duplicated else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loaders", default="llama.cpp,transformers")
    parser.add_argument("--parallel", default="1,8", help="--parallel values to serve with")
    parser.add_argument("--clients", default="1,2,4,8,16", help="concurrent clients of the sweep")
    parser.add_argument("--rounds", type=int, default=2, help="requests per client in the sweep")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--yardstick-tokens", type=int, default=128)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads, in the servers and raw")
    parser.add_argument("--timeout", type=float, default=1800, help="bound on each run of clients, seconds")
    parser.add_argument("--volume", action="store_true", help="only: --requests through --volume-clients clients")
    parser.add_argument("--volume-clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = parser.parse_args()
    args.parallel = [int(p) for p in args.parallel.split(",")]
    args.clients = [int(c) for c in args.clients.split(",")]
    models = models_folder(args.threads)
    load = os.getloadavg()
    print(f"SmolLM2-135M-Instruct, context {CONTEXT} per slot; load average at start {load[0]:.2f}", flush=True)
    try:
        if args.volume:
            return volume(models, args)
        report = {loader: run_loader(loader, models, args) for loader in args.loaders.split(",")}
        if "llama.cpp" in report:
            yardstick(report["llama.cpp"], args)
    finally:
        shutil.rmtree(models.parent, ignore_errors=True)  # hard links and the servers' data
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0 if not errors_in(report) else 1


if __name__ == "__main__":
    sys.exit(main())
