"""Load test of the OpenAI-compatible API on 127.0.0.1: N concurrent streaming chat clients, a fixed number of
requests in all, short replies, SmolLM2 (llama.cpp GGUF) in a separate `app.py --api --nowebui` process.

Every reply is checked for form (a role chunk first, content, one finish_reason, `[DONE]` last, usage that adds up);
a request that fails, is malformed or is missing at the end fails the run (exit 1). Prints p50/p95 latency (request
sent -> `[DONE]`), p50/p95 time to first token, and total completion tokens per second of wall time.

    .venv/bin/python bench/api_load.py                       # 32 clients, 200 requests, 16 tokens each
    .venv/bin/python bench/api_load.py --clients 8 --requests 40 --max-tokens 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import realmodel  # noqa: E402

MODEL = "SmolLM2-135M-Instruct-GGUF"
KEY = "bench-key"
QUESTIONS = ("Name a colour.", "Say hello.", "What is 2 + 2?", "Name a fruit.", "Give me a word that rhymes with cat.")


@dataclass
class Result:
    index: int
    sent: float = 0.0  # perf_counter when the request went out
    latency: float = 0.0
    first_token: float = 0.0
    completion_tokens: int = 0
    problems: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, threads: int) -> subprocess.Popen:
    models = Path(tempfile.mkdtemp(prefix="corral-bench-")) / "models"
    (models / MODEL).mkdir(parents=True)
    for item in realmodel.smollm2_gguf().parent.iterdir():
        os.link(item, models / MODEL / item.name)
    (models / "config-user.yaml").write_text(
        f"{MODEL}:\n  loader: llama.cpp\n  loader_settings: {{threads: {threads}}}\n  context_length: 2048\n")
    command = [sys.executable, str(REPO / "app.py"), "--api", "--nowebui", "--models-dir", str(models), "--model",
               MODEL, "--api-port", str(port), "--api-key", KEY, "--data-dir", str(models.parent / "data")]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(process: subprocess.Popen, base: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {process.stderr.read()}")
        try:
            info = httpx.get(f"{base}/internal/model/info", headers={"Authorization": f"Bearer {KEY}"}, timeout=2)
            if info.json().get("model_name") == MODEL:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not load the model in time")


async def one_request(client: httpx.AsyncClient, base: str, index: int, max_tokens: int) -> Result:
    result = Result(index)
    body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}],
            "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}, "seed": index}
    started = result.sent = time.perf_counter()
    events: list[dict | str] = []
    async with client.stream("POST", f"{base}/chat/completions", json=body) as response:
        if response.status_code != 200:
            result.problems.append(f"status {response.status_code}: {(await response.aread())[:200]!r}")
            return result
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
            if not result.first_token and isinstance(events[-1], dict) and _content(events[-1]):
                result.first_token = time.perf_counter() - started
    result.latency = time.perf_counter() - started
    result.problems += check_events(events, max_tokens)
    usage = next((e["usage"] for e in events if isinstance(e, dict) and e.get("usage")), None)
    result.completion_tokens = usage["completion_tokens"] if usage else 0
    return result


def _content(event: dict) -> str:
    choices = event.get("choices") or []
    return (choices[0].get("delta") or {}).get("content") or "" if choices else ""


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
    if not with_choices or with_choices[0]["choices"][0]["delta"].get("role") != "assistant":
        problems.append("first chunk has no assistant role")
    finishes = [e["choices"][0]["finish_reason"] for e in with_choices if e["choices"][0]["finish_reason"]]
    if len(finishes) != 1 or finishes[0] not in ("stop", "length"):
        problems.append(f"finish reasons {finishes}")
    text = "".join(_content(e) for e in with_choices)
    if not text.strip():
        problems.append("empty reply")
    usage = [e["usage"] for e in chunks if e.get("usage")]
    if len(usage) != 1 or not 0 < usage[0]["completion_tokens"] <= max_tokens:
        problems.append(f"usage {usage}")
    elif usage[0]["total_tokens"] != usage[0]["prompt_tokens"] + usage[0]["completion_tokens"]:
        problems.append("usage does not add up")
    if len({e["id"] for e in chunks}) != 1:
        problems.append("chunk ids differ")
    return problems


async def run(base: str, clients: int, requests: int, max_tokens: int, timeout: float) -> tuple[list[Result], float]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(requests):
        queue.put_nowait(index)
    results: list[Result] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            index = queue.get_nowait()
            try:
                results.append(await one_request(client, base, index, max_tokens))
            except httpx.HTTPError as error:
                results.append(Result(index, problems=[f"{type(error).__name__}: {error}"]))

    started = time.perf_counter()
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, limits=limits,
                                 timeout=httpx.Timeout(timeout)) as client:
        await asyncio.wait_for(asyncio.gather(*(worker(client) for _ in range(clients))), timeout)
    return results, time.perf_counter() - started


def order_inversions(results: list[Result], gap: float = 0.05) -> int:
    """Pairs served out of arrival order (sent `gap` s apart or more): 0 when the queue is first come, first served."""
    by_sent = sorted(results, key=lambda r: r.sent)
    done = [r.sent + r.latency for r in by_sent]
    return sum(1 for i, a in enumerate(by_sent) for j in range(i + 1, len(by_sent))
               if by_sent[j].sent - a.sent >= gap and done[j] < done[i])


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads in the server")
    parser.add_argument("--timeout", type=float, default=900, help="bound on the whole run, seconds")
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    server = start_server(port, args.threads)
    try:
        wait_ready(server, base, 300)
        results, wall = asyncio.run(run(base, args.clients, args.requests, args.max_tokens, args.timeout))
    finally:
        server.terminate()
        server.wait(timeout=20)
    bad = [r for r in results if r.problems]
    missing = set(range(args.requests)) - {r.index for r in results}
    good = [r for r in results if not r.problems]
    tokens = sum(r.completion_tokens for r in good)
    print(f"{args.requests} requests, {args.clients} concurrent streaming clients, max_tokens {args.max_tokens}, "
          f"SmolLM2-135M Q4_1 on llama.cpp ({args.threads} threads)")
    print(f"completed well-formed: {len(good)}; malformed or failed: {len(bad)}; lost: {len(missing)}")
    if good:
        latencies, firsts = [r.latency for r in good], [r.first_token for r in good]
        print(f"latency p50 {percentile(latencies, 50):.2f} s, p95 {percentile(latencies, 95):.2f} s; "
              f"time to first token p50 {percentile(firsts, 50):.2f} s, p95 {percentile(firsts, 95):.2f} s")
        print(f"total {tokens} completion tokens in {wall:.1f} s: {tokens / wall:.1f} tokens/s; "
              f"{wall / len(good):.2f} s per request; served out of arrival order: {order_inversions(good)} pairs")
    for result in bad[:5]:
        print(f"request {result.index}: {'; '.join(result.problems)}")
    return 0 if not bad and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
