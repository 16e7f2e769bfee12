"""Benchmark: decode speed of Corral's PyTorch loop (through the engine) against `transformers.generate`, on
SmolLM2-135M-Instruct (the Transformers folder from tests/realmodel.py), in one run.

    .venv/bin/python -m bench.decode [--tokens 128] [--repeats 3] [--threads N]

Both run greedy on the same prompt and model object (in the plan's dtype: bf16 where the CPU computes it natively).
Decode tokens/s counts the tokens after the first one over the time after the first one (prefill excluded); runs
alternate (ours, generate, ours...) after one warm-up each, and the best of `--repeats` is kept, so load from other
processes hits both sides alike.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers.generation.streamers import BaseStreamer

from loaders.base import GenerationParams
from loaders.settings import TransformersSettings
from loaders.torch_lm import TorchCausalLM
from loaders.transformers_loader import load
from tests import realmodel
from webui.engine import encode_prompt, generate

PROMPT = (
    "<|im_start|>user\nWrite a long, detailed story about a dragon who learns to bake bread in a small "
    "mountain village.<|im_end|>\n<|im_start|>assistant\n"
)


@dataclass
class Run:
    tokens: int
    first_token_s: float  # prefill + first token
    decode_s: float  # after the first token
    decode_cpu_s: float  # CPU time of this process over the same span (steadier on a shared machine)

    @property
    def decode_tps(self) -> float:
        return (self.tokens - 1) / self.decode_s if self.decode_s > 0 else 0.0

    @property
    def cpu_ms_per_token(self) -> float:
        return 1000 * self.decode_cpu_s / (self.tokens - 1)


class _Clock(BaseStreamer):
    """Timestamps each `put` of new tokens (the first `put` is the prompt)."""

    def __init__(self) -> None:
        self.times: list[tuple[float, float]] = []
        self.puts = 0

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts > 1:
            self.times.append(_now())

    def end(self) -> None:
        pass


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _run(tokens: int, start: tuple[float, float], first: tuple[float, float], end: tuple[float, float]) -> Run:
    return Run(tokens, first[0] - start[0], end[0] - first[0], end[1] - first[1])


def run_engine(model: TorchCausalLM, params: GenerationParams) -> Run:
    start = _now()
    first = None
    generation = generate(model, PROMPT, params, cancel=threading.Event())
    for _delta in generation:
        if first is None:
            first = _now()
    return _run(len(generation.token_ids), start, first, _now())


def run_hf(model: TorchCausalLM, params: GenerationParams) -> Run:
    prompt_ids = torch.tensor([encode_prompt(model, PROMPT, params)])
    eos = list(model.tokenizer.eos_token_ids)
    clock = _Clock()
    start = _now()
    out = model.module.generate(prompt_ids, max_new_tokens=params.max_new_tokens, do_sample=False,
                                eos_token_id=eos, pad_token_id=eos[0], streamer=clock)
    tokens = out.shape[1] - prompt_ids.shape[1]
    return _run(tokens, start, clock.times[0], clock.times[-1])


def best(runs: list[Run]) -> Run:
    return max(runs, key=lambda run: run.decode_tps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load(realmodel.smollm2_hf(), TransformersSettings(), name="SmolLM2-135M-Instruct")
    params = GenerationParams(do_sample=False, max_new_tokens=args.tokens)
    sides: dict[str, Callable[[TorchCausalLM, GenerationParams], Run]] = {
        "corral engine": run_engine, "transformers.generate": run_hf,
    }
    for side in sides.values():
        side(model, params)  # warm-up
    runs: dict[str, list[Run]] = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, side in sides.items():
            runs[name].append(side(model, params))
    print(f"SmolLM2-135M-Instruct {model.dtype}, {model.device}, torch threads {torch.get_num_threads()}, greedy, "
          f"{args.tokens} new tokens max, best of {args.repeats}")
    for name, side_runs in runs.items():
        run = best(side_runs)
        cpu = min(r.cpu_ms_per_token for r in side_runs)
        print(f"  {name:22s} {run.decode_tps:7.2f} decode tok/s, {cpu:6.1f} CPU ms/token  ({run.tokens} tokens, "
              f"first token {run.first_token_s * 1000:.0f} ms; all runs tok/s: "
              f"{', '.join(f'{r.decode_tps:.2f}' for r in side_runs)})")
    ours, theirs = runs["corral engine"], runs["transformers.generate"]
    print(f"  ratio engine / generate: {best(ours).decode_tps / best(theirs).decode_tps:.3f} (decode tok/s), "
          f"{min(r.cpu_ms_per_token for r in theirs) / min(r.cpu_ms_per_token for r in ours):.3f} "
          "(CPU time per token, generate / engine)")


if __name__ == "__main__":
    main()
