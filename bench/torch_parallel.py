"""Benchmark (issue 16, the PyTorch half): parallel decoding and prefix reuse in `TorchCausalLM`, on SmolLM2-135M
(the Transformers loader), in one run.

    python -m bench.torch_parallel [--streams 8] [--tokens 32] [--threads N]

1. Aggregate decode tokens/s of `--streams` concurrent greedy requests (different prompts, one model with that many
   slots) against one request alone on the same model object: the continuous-batching speed-up.
2. Time to the first token of the 10th turn of a chat, with the previous turn's cache reused and without it (a fresh
   wrapper over the same weights, whose cache holds nothing): the prefix-reuse speed-up.
Prints a JSON line and a Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from loaders.base import DecodeInfo, GenerationParams
from loaders.registry import load_plan, plan_for_path
from loaders.settings import TransformersSettings
from loaders.torch_lm import TorchCausalLM
from tests import realmodel

QUESTIONS = ("Tell me about Paris.", "Name some colours.", "Write a poem about rain.", "Explain gravity.",
             "Tell me a story.", "Who was Shakespeare?", "Describe a cat.", "Why is the sky blue?",
             "What is a prime number?", "How do plants grow?", "What is music?", "Describe the sea.",
             "What is a computer?", "Tell me about the moon.", "What is bread?", "Explain rainbows.")  # fmt: skip


def chat(turns: list[tuple[str, str]], question: str) -> str:
    text = "".join(f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n" for q, a in turns)
    return text + f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def stamps(model: TorchCausalLM, prompt: list[int], params: GenerationParams, info: DecodeInfo | None = None):
    started = time.perf_counter()
    return started, [time.perf_counter() for _ in model.generate_tokens(prompt, params, threading.Event(), info)]


def parallel(model: TorchCausalLM, streams: int, tokens: int) -> dict[str, float]:
    params = GenerationParams(do_sample=False, max_new_tokens=tokens, ban_eos_token=True)
    prompts = [model.tokenizer.encode(chat([], q), add_bos=True) for q in QUESTIONS[:streams]]
    stamps(model, prompts[0], params)  # warm-up
    _, alone = stamps(model, prompts[1], params)
    single = (len(alone) - 1) / (alone[-1] - alone[0])
    started = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        runs = list(pool.map(lambda p: stamps(model, p, params)[1], prompts))
    wall = time.perf_counter() - started
    first, last = max(r[0] for r in runs), max(r[-1] for r in runs)  # all streams decoding together
    together = sum(sum(1 for t in r if first <= t <= last) for r in runs) / (last - first)
    return {"single_tps": single, "parallel_decode_tps": together, "parallel_total_tps": streams * tokens / wall,
            "speedup": together / single}  # fmt: skip


def tenth_turn(model: TorchCausalLM, tokens: int) -> dict[str, float]:
    params = GenerationParams(do_sample=False, max_new_tokens=tokens)
    turns: list[tuple[str, str]] = []
    for question in QUESTIONS[:9]:
        ids = model.tokenizer.encode(chat(turns, question), add_bos=True)
        reply = list(model.generate_tokens(ids, params, threading.Event()))
        turns.append((question, model.tokenizer.decode(reply)))
    prompt = model.tokenizer.encode(chat(turns, QUESTIONS[9]), add_bos=True)
    one = dataclasses.replace(params, max_new_tokens=1)
    fresh = TorchCausalLM(model.name, model.loader, model.path, model.module, model.tokenizer, model.context_length,
                          model.device, 0.0, model.memory, plan=model.plan)  # same weights, an empty cache
    started, cold = stamps(fresh, prompt, one)
    without = cold[0] - started
    info = DecodeInfo()
    started, warm = stamps(model, prompt, one, info)
    return {"prompt_tokens": len(prompt), "cached_tokens": info.cached_tokens, "ttft_without_s": without,
            "ttft_with_s": warm[0] - started, "ratio": (warm[0] - started) / without}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = TransformersSettings(context_length=2048)
    plan = dataclasses.replace(plan_for_path("transformers", realmodel.smollm2_hf(), settings), slots=args.streams)
    model = load_plan(plan, settings, name="SmolLM2-135M-Instruct")
    result = {"machine": f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}", "threads": torch.get_num_threads(),
              "streams": args.streams, "tokens": args.tokens, "decode_mode": model.decode_mode}  # fmt: skip
    result |= parallel(model, args.streams, args.tokens)
    result |= {f"turn10_{k}": v for k, v in tenth_turn(model, args.tokens).items()}
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result))
    print(f"| SmolLM2 fp32, {args.streams} slots | {result['single_tps']:.1f} | {result['parallel_decode_tps']:.1f} "
          f"| {result['speedup']:.2f}x | {result['turn10_ttft_without_s'] * 1000:.0f} ms | "
          f"{result['turn10_ttft_with_s'] * 1000:.0f} ms ({result['turn10_cached_tokens']}/"
          f"{result['turn10_prompt_tokens']} cached) | {result['turn10_ratio']:.2f} |")
    model.unload()


if __name__ == "__main__":
    main()
