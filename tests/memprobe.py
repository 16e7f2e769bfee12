"""Measure the resident memory a load + one generation costs, in a fresh process (used by tests/test_estimate.py).

    python -m tests.memprobe LOADER PATH --ctx N [--prompt-tokens N] [--new-tokens N] [--parallel N]

By default the prompt fills the context (ctx - new tokens - 8), so the KV cache and the attention buffers reach the
size the estimator plans for: the estimate is the memory of a full context. With `--parallel N` the model is loaded
with N slots and N requests (different prompts) fill all of them at once.

Prints one JSON line: `baseline` (RSS before importing any backend), `at_load` (RSS right after the load, minus the
baseline), `peak` (the process's maximum RSS at the end), `increase` = peak - baseline, `via` (Corral's loader module
or the backend library itself), the tokens generated, and the plan's and the loaded model's dtype / device / file.
The loader comes from `loaders.registry` when its module exists; until then the backend library is driven directly
with the same settings, so the estimate is checked against what the backend really holds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import sys
import threading
from pathlib import Path

import psutil


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _peak() -> int:
    """The process's high-water resident memory since exec.

    Not `getrusage().ru_maxrss`: Linux keeps that across exec, so a probe started from a large pytest process would
    report the parent's size. `VmHWM` belongs to the new address space.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _prompt_ids(n: int, offset: int = 0) -> list[int]:
    # Ordinary token ids (no specials), repeated: the content is irrelevant, only the KV cache length matters.
    return [(1000 + 7 * i + offset) % 40000 + 100 for i in range(n)]


def _via_registry(loader: str, path: Path, ctx: int, prompt: list[int], new_tokens: int, dtype: str,
                  report: dict[str, object], parallel: int = 0, threads: int = 0) -> int:  # fmt: skip
    from loaders.base import GenerationParams
    from loaders.registry import load_model
    from loaders.settings import settings_for

    key = "context_length" if loader in ("transformers", "gptq") else "n_ctx"
    values = {key: ctx, "device": "cpu", "parallel": parallel, "threads": threads} | ({"dtype": dtype} if dtype else {})
    model = load_model(loader, path, settings_for(loader, values), name=path.name)
    report["after_load"] = _rss()
    plan = model.plan
    report["plan"] = {"dtype": plan.dtype, "device": plan.device, "file": plan.opens[0].name, "slots": plan.slots}
    report["model"] = {"dtype": model.dtype, "device": model.device, "file": model.path.name, "slots": model.slots}
    params = GenerationParams(max_new_tokens=new_tokens, do_sample=False, ban_eos_token=True, truncation_length=ctx)
    prompts = [prompt] + [_prompt_ids(len(prompt), offset=slot) for slot in range(1, parallel)]
    counts = [0] * len(prompts)

    def run(slot: int) -> None:  # every slot at once: each holds a full context when they are done
        counts[slot] = sum(1 for _ in model.generate_tokens(prompts[slot], params, threading.Event()))

    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts)


def _via_transformers(path: Path, prompt: list[int], new_tokens: int, dtype: str) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype or "float32"))
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return out.shape[1] - len(prompt)


def _via_llama_cpp(path: Path, ctx: int, prompt: list[int], new_tokens: int) -> int:
    from llama_cpp import Llama

    model = Llama(model_path=str(path), n_ctx=ctx, n_gpu_layers=0, verbose=False)
    model.eval(prompt)
    for _ in range(new_tokens):
        model.eval([model.sample(temp=0.0)])
    return new_tokens


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def measure(
    loader: str, path: Path, ctx: int, prompt_tokens: int, new_tokens: int, dtype: str = "", parallel: int = 0,
    threads: int = 0,
) -> dict[str, object]:
    baseline = _rss()
    prompt = _prompt_ids(prompt_tokens)
    module = {
        "transformers": "loaders.transformers_loader",
        "gptq": "loaders.gptq",
        "llama.cpp": "loaders.llamacpp",
        "gguf": "loaders.gguf_native",
    }[loader]
    report: dict[str, object] = {}
    if _has_module(module):
        via, generated = module, _via_registry(loader, path, ctx, prompt, new_tokens, dtype, report, parallel,
                                               threads)
    elif loader == "transformers":
        via, generated = "transformers", _via_transformers(path, prompt, new_tokens, dtype)
    elif loader == "llama.cpp":
        via, generated = "llama_cpp", _via_llama_cpp(path, ctx, prompt, new_tokens)
    else:
        raise SystemExit(f"no way to run loader {loader!r} here")
    peak = _peak()
    if "after_load" in report:
        report["at_load"] = int(report.pop("after_load")) - baseline  # type: ignore[arg-type]
    return {"baseline": baseline, "peak": peak, "increase": peak - baseline, "via": via, "generated": generated,
            **report}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.memprobe")
    parser.add_argument("loader")
    parser.add_argument("path", type=Path)
    parser.add_argument("--ctx", type=int, required=True)
    parser.add_argument("--prompt-tokens", type=int, default=0, help="0 = fill the context: ctx - new tokens - 8")
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--dtype", default="", help="float32 | bfloat16 | float16 (torch loaders); default theirs")
    parser.add_argument("--parallel", type=int, default=0, help="slots, all filled at once; 0 = the plan's choice")
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads; 0 = its default")
    args = parser.parse_args(argv)
    prompt_tokens = args.prompt_tokens or args.ctx - args.new_tokens - 8
    result = measure(args.loader, args.path, args.ctx, prompt_tokens, args.new_tokens, args.dtype, args.parallel,
                     args.threads)
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
