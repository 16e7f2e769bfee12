"""The GPU suite (issue 17): one prepared command for the first GPU session, figures for bench/RESULTS.md.

    python -m bench.gpu_suite --out DIR [--budget 450]     # one NVIDIA GPU, no network, < 8 minutes
    python -m bench.gpu_suite --out DIR --tiny             # the same steps on the CPU, tiny shapes (CI dry run)

(a) every Triton kernel against the PyTorch path; (b) matrix-vector bandwidth of the GPTQ 4-bit (and 8-bit) and GGUF
Q4_K / Q4_1 / Q8_0 kernels at Llama-2-13B shapes, ÷ the measured copy bandwidth; (c) decode tokens/s of a
Llama-2-13B-shaped model with random weights: fp16 eager, fp16 with CUDA graphs, GPTQ 4-bit g128, GPTQ 4-bit 32g
act-order, native GGUF Q4_K, each ÷ its bandwidth limit; (d) 512-token prefill of the same rows; (e) estimated vs
measured VRAM of the GPTQ and GGUF models, at load and after a full-context generation.

The quantized models are written as real files (bench/random_models.py) and loaded by Corral's loaders, so (c)-(e)
run the code a user runs: plan, loader, `TorchCausalLM` (static cache, CUDA graphs, batching), estimate. Writes
DIR/gpu_suite.md (a section for RESULTS.md) and DIR/gpu_suite.json (raw figures). Sections that would overrun
`--budget` seconds are skipped and say so. Needs torch, triton, transformers, safetensors, gguf, accelerate, psutil.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GIB = 1024**3
GPTQ_CASES = ((4, 128, False), (4, 128, True), (4, 32, True), (8, 128, False), (8, -1, False), (2, 64, True))
TINY_GPTQ_CASES = ((4, 128, False), (4, 32, True))
GGUF_BANDWIDTH_TYPES = ("Q4_K", "Q4_1", "Q8_0")
DECODE_TOKENS, TINY_DECODE_TOKENS = 128, 6
PREFILL_TOKENS, TINY_PREFILL_TOKENS = 512, 64


@dataclass
class Suite:
    """What every section needs: the device, the shape, the clock, and the results so far."""

    device: Any  # torch.device
    shape: Any  # random_models.Shape
    tiny: bool
    deadline: float
    work: Path
    results: dict[str, Any] = field(default_factory=dict)
    copy_bandwidth: float = 0.0  # bytes/s, read + write
    context_bytes: int = 0  # device memory in use before any model: the CUDA context

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def skip(self, key: str, seconds: float) -> bool:
        """True (and noted) when fewer than `seconds` remain."""
        if self.left() >= seconds:
            return False
        self.results.setdefault("skipped", []).append(f"{key}: {self.left():.0f} s left, needs ~{seconds:.0f} s")
        return True


# --- timing -----------------------------------------------------------------------------------------------------------


def best_time(fn: Callable[[], object], suite: Suite, reps: int = 5) -> float:
    """Best wall time of `fn` in seconds (CUDA events on a GPU)."""
    import torch

    best = float("inf")
    for _ in range(reps):
        if suite.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1000)
        else:
            started = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - started)
    return best


def as_graph(fn: Callable[[], object], suite: Suite) -> Callable[[], object]:
    """On CUDA: `fn` captured once (after a warm-up) and replayed, so launches do not blur kernel times."""
    import torch

    if not suite.cuda:
        return fn
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def measure_copy_bandwidth(suite: Suite) -> float:
    import torch

    size = (64 << 20) if suite.tiny else (2 * GIB)
    src = torch.empty(size, dtype=torch.uint8, device=suite.device)
    dst = torch.empty_like(src)
    seconds = best_time(lambda: dst.copy_(src), suite, reps=3 if suite.tiny else 10)
    return 2 * size / seconds  # bytes read + written


# --- (a) kernels against the PyTorch path -----------------------------------------------------------------------------


def kernel_checks(suite: Suite) -> list[dict[str, Any]]:
    return _gptq_checks(suite) + _gguf_checks(suite)


def _gptq_checks(suite: Suite) -> list[dict[str, Any]]:
    import torch

    from kernels import gptq_torch, gptq_triton
    from tests.gptq_blocks import random_layer

    in_f, out_f = (256, 64) if suite.tiny else (4096, 1024)
    dtype = torch.float16 if suite.cuda else torch.float32
    rows = []
    for bits, group, act in TINY_GPTQ_CASES if suite.tiny else GPTQ_CASES:
        layer = random_layer(in_f, out_f, bits, group, act, zero_offset=0 if bits == 2 else 1, device=suite.device)
        weight = gptq_triton.prepare(layer)
        for m in (1, 3, 20) if suite.tiny else (1, 8, 100):
            x = torch.randn(m, in_f, device=suite.device, dtype=dtype)
            expected = gptq_torch.matmul(x.float(), layer)
            got = gptq_triton.matmul(x, weight).float()
            rows.append(_check(f"GPTQ {bits}-bit g{group}{' act-order' if act else ''}", m, got, expected,
                               tolerance=2e-2 if suite.cuda else 1e-4))  # fmt: skip
    return rows


def _gguf_checks(suite: Suite) -> list[dict[str, Any]]:
    import numpy as np
    import torch

    from kernels.gguf_torch import dequantize
    from kernels.gguf_triton import gemv
    from tests.gguf_blocks import ALL_TYPES, random_rows

    n_out, n_in = (24, 512) if suite.tiny else (1024, 4096)
    dtype = torch.float16 if suite.cuda else torch.float32
    rng = np.random.default_rng(0)
    rows = []
    for qtype in ALL_TYPES if not suite.tiny else [t for t in ALL_TYPES if t.name in GGUF_BANDWIDTH_TYPES]:
        w = torch.from_numpy(random_rows(qtype, n_out, n_in, rng, any_bf16=False)).to(suite.device)
        reference = dequantize(w, qtype, (n_out, n_in))
        for m in (1, 3) if suite.tiny else (1, 8):
            x = torch.randn(m, n_in, device=suite.device).to(dtype)
            rows.append(_check(f"GGUF {qtype.name}", m, gemv(x, w, qtype, (n_out, n_in)).float(),
                               x.float() @ reference.T, tolerance=1e-2 if suite.cuda else 1e-4))  # fmt: skip
    return rows


def _check(kernel: str, m: int, got: Any, expected: Any, *, tolerance: float) -> dict[str, Any]:
    scale = float(expected.abs().max())
    error = float((got - expected).abs().max()) / max(scale, 1e-12)
    return {"kernel": kernel, "rows": m, "relative_error": error, "ok": error <= tolerance}


# --- (b) matrix-vector bandwidth --------------------------------------------------------------------------------------


def kernel_bandwidth(suite: Suite) -> list[dict[str, Any]]:
    """Each kernel at each 13B shape and 1 / 8 rows, over enough weight copies to miss the L2 cache."""
    shape = suite.shape
    matrices = [(shape.hidden, shape.hidden), (shape.ffn, shape.hidden), (shape.hidden, shape.ffn)]  # (out, in)
    if suite.tiny:
        matrices = matrices[:1]  # the interpreter runs every program in Python: one shape shows the path works
    rows = []
    for kernel in ("fp16", "GPTQ 4-bit g128", "GPTQ 4-bit 32g act-order", "GPTQ 8-bit g128",
                   *(f"GGUF {name}" for name in GGUF_BANDWIDTH_TYPES)):  # fmt: skip
        for n_out, n_in in matrices:
            if suite.skip(f"(b) {kernel} {n_out}x{n_in}", 3):
                continue
            rows += _bandwidth_rows(suite, kernel, n_out, n_in)
            _free(suite)  # the copies (and their graphs) are gone: give the memory back before the next kernel
    return rows


def _bandwidth_rows(suite: Suite, kernel: str, n_out: int, n_in: int) -> list[dict[str, Any]]:
    """One kernel at one shape, 1 and 8 activation rows, each call on the next of enough weight copies that they
    cannot stay in the L2 cache (as a decode step walks through the layers)."""
    import torch

    multiply, nbytes = _weight_kernel(suite, kernel, n_out, n_in)
    copies = 2 if suite.tiny else max(2, -(-(512 << 20) // nbytes))  # >= 512 MB: far past any L2
    weights = [multiply] + [_weight_kernel(suite, kernel, n_out, n_in)[0] for _ in range(copies - 1)]
    rows = []
    for m in (1,) if suite.tiny else (1, 8):
        x = torch.randn(m, n_in, device=suite.device, dtype=torch.float16 if suite.cuda else torch.float32)

        def chain(x: Any = x) -> None:
            for fn in weights:
                fn(x)

        seconds = best_time(as_graph(chain, suite), suite, reps=1 if suite.tiny else 10)
        bandwidth = copies * nbytes / seconds
        rows.append({"kernel": kernel, "out": n_out, "in": n_in, "rows": m, "weight_bytes": nbytes,
                     "us_per_call": seconds / copies * 1e6, "bytes_per_s": bandwidth,
                     "of_copy_bandwidth": bandwidth / suite.copy_bandwidth})  # fmt: skip
    return rows


def _weight_kernel(suite: Suite, kernel: str, n_out: int, n_in: int) -> tuple[Callable[[Any], Any], int]:
    """(x -> x @ W.T with a fresh random W, bytes of W the kernel reads)."""
    import torch
    from gguf import GGMLQuantizationType

    from bench.random_models import random_block_tensor, random_gptq
    from kernels import gguf_triton, gptq_triton

    generator = torch.Generator(device=suite.device).manual_seed(n_out * 7 + n_in)
    if kernel == "fp16":
        dtype = torch.float16 if suite.cuda else torch.float32
        w = torch.randn(n_out, n_in, device=suite.device, generator=generator).to(dtype)
        return (lambda x: torch.nn.functional.linear(x, w)), w.nbytes
    if kernel.startswith("GPTQ"):
        bits, group = (8, 128) if "8-bit" in kernel else (4, 32 if "32g" in kernel else 128)
        prepared = gptq_triton.prepare(random_gptq(n_in, n_out, bits, group, "act-order" in kernel, generator,
                                                   suite.device))  # fmt: skip
        nbytes = prepared.qweight.nbytes + prepared.qzeros.nbytes + prepared.scales.nbytes
        return (lambda x: gptq_triton.matmul(x, prepared)), nbytes
    qtype = GGMLQuantizationType[kernel.removeprefix("GGUF ")]
    blocks = random_block_tensor(qtype, n_out, n_in, generator, suite.device)
    return (lambda x: gguf_triton.gemv(x, blocks, qtype, (n_out, n_in))), blocks.nbytes


# --- (c), (d), (e): a 13B-shaped model through Corral's loaders -------------------------------------------------------


def model_rows(suite: Suite) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Decode / prefill rows, and VRAM rows; each model is built, measured and freed in turn."""
    from bench import random_models

    tokenizer_dir = suite.work / "tokenizer"
    random_models.write_tokenizer(tokenizer_dir, suite.shape.vocab)
    rows, memory = [], []
    fp16 = _fp16_rows(suite, tokenizer_dir)
    rows += fp16
    baseline = next((r for r in fp16 if "prefill_s" in r), None)
    for label, write, load in _quantized_models(suite):
        if suite.skip(f"(c) {label}", 8 if suite.tiny else 60):
            continue
        started = time.perf_counter()
        path = write()
        written = time.perf_counter() - started
        _free(suite)  # the baseline of (e): what the device holds before this model
        started = time.perf_counter()
        model = load(path)
        row = {"row": label, "write_s": written, "load_s": time.perf_counter() - started,
               "decode_mode": model.decode_mode} | measure_model(suite, model)  # fmt: skip
        if label in ("GPTQ 4-bit g128", "GGUF Q4_K") and not suite.skip(f"(e) {label}", 30 if not suite.tiny else 4):
            memory.append(vram_row(suite, label, model))
        rows.append(row)
        model.unload()
        del model
        _free(suite)
    for row in rows:
        if baseline is not None and "prefill_s" in row:
            row["prefill_vs_fp16"] = row["prefill_s"] / baseline["prefill_s"]
    return rows, memory


def _fp16_rows(suite: Suite, tokenizer_dir: Path) -> list[dict[str, Any]]:
    """fp16 eager and fp16 with CUDA graphs: one random model, two `TorchCausalLM`s over the same weights."""
    import torch

    from bench.random_models import random_llama
    from loaders.base import MemoryReport
    from loaders.hf_tokenizer import HFTokenizer
    from loaders.torch_lm import TorchCausalLM

    if suite.skip("(c) fp16", 10 if suite.tiny else 60):
        return []
    dtype = torch.float16 if suite.cuda else torch.float32
    module = random_llama(suite.shape, dtype, str(suite.device))
    tokenizer = HFTokenizer.from_folder(tokenizer_dir)
    rows = []
    for label, graphs in (("fp16 eager", False), ("fp16 + CUDA graphs", True)):
        if graphs and not suite.cuda:
            rows.append({"row": label, "note": "CUDA only"})
            continue
        model = TorchCausalLM(label, "transformers", tokenizer_dir, module, tokenizer, suite.shape.context,
                              str(suite.device), 0.0, MemoryReport(0), cuda_graphs=graphs)  # fmt: skip
        rows.append({"row": label, "decode_mode": model.decode_mode} | measure_model(suite, model))
        model.unload()
    del module
    _free(suite)
    return rows


def _quantized_models(suite: Suite) -> list[tuple[str, Callable[[], Path], Callable[[Path], Any]]]:
    """(label, write its files, load them with Corral's loader) for each quantized row."""
    from gguf import GGMLQuantizationType

    from bench import random_models
    from loaders.registry import load_plan, plan_for_path
    from loaders.settings import GPTQSettings, NativeGGUFSettings

    shape, device, work = suite.shape, str(suite.device), suite.work

    def gptq_files(group: int, act: bool) -> Callable[[], Path]:
        return lambda: random_models.write_gptq(work / f"gptq-{group}-{act}", shape, bits=4, group=group,
                                                act_order=act, device=device)  # fmt: skip

    def gptq(folder: Path) -> Any:
        settings = GPTQSettings(context_length=shape.context)
        return load_plan(plan_for_path("gptq", folder, settings), settings, name=folder.name)

    def gguf_file() -> Path:
        return random_models.write_gguf(work / "gguf" / "model.Q4_K.gguf", shape, GGMLQuantizationType.Q4_K,
                                        device=device)  # fmt: skip

    def gguf(path: Path) -> Any:
        settings = NativeGGUFSettings(n_ctx=shape.context, n_gpu_layers=shape.layers if suite.cuda else 0)
        return load_plan(plan_for_path("gguf", path, settings), settings, name=path.name)

    return [("GPTQ 4-bit g128", gptq_files(128, False), gptq), ("GGUF Q4_K", gguf_file, gguf),
            ("GPTQ 4-bit 32g act-order", gptq_files(32, True), gptq)]  # fmt: skip


def measure_model(suite: Suite, model: Any) -> dict[str, Any]:
    """Decode tokens/s (after the first token) and the time to the first token of a long prompt, each after a
    warm-up of the same shapes; the bandwidth limit of this model's decode."""
    from loaders.base import GenerationParams

    shape = suite.shape
    new = TINY_DECODE_TOKENS if suite.tiny else DECODE_TOKENS
    long = TINY_PREFILL_TOKENS if suite.tiny else PREFILL_TOKENS
    greedy = GenerationParams(do_sample=False, max_new_tokens=new, ban_eos_token=True, truncation_length=shape.context)
    _stamps(model, _prompt(shape, 16, salt=0), greedy)  # warm-up: kernels compiled, graphs captured
    stamps = _stamps(model, _prompt(shape, 16, salt=1), greedy)
    decode_s = stamps[-1] - stamps[0]
    one = GenerationParams(do_sample=False, max_new_tokens=1, ban_eos_token=True, truncation_length=shape.context)
    _stamps(model, _prompt(shape, long, salt=2), one)
    started = time.perf_counter()
    _stamps(model, _prompt(shape, long, salt=3), one)
    prefill_s = time.perf_counter() - started
    limit = bandwidth_limit(suite, model, 16 + new // 2)
    tps = (len(stamps) - 1) / decode_s if decode_s > 0 else 0.0
    return {"decode_tokens": len(stamps), "decode_tps": tps, "limit_tps": limit, "of_limit": tps / limit,
            "prefill_tokens": long, "prefill_s": prefill_s}  # fmt: skip


def _stamps(model: Any, prompt: list[int], params: Any) -> list[float]:
    return [time.perf_counter() for _ in model.generate_tokens(prompt, params, threading.Event())]


def _prompt(shape: Any, n: int, *, salt: int) -> list[int]:
    """`n` ordinary token ids; a different first token per salt, so no prompt reuses another's cache."""
    span = shape.vocab - 10
    return [10 + (salt * 7919 + i * 31) % span for i in range(n)]


def bandwidth_limit(suite: Suite, model: Any, context: int) -> float:
    """Tokens/s if every byte one decode step must read (the weights it multiplies, one embedding row, the KV cache
    of `context` tokens) moved at the measured copy bandwidth."""
    kv = suite.shape.kv_bytes_per_token(2 if suite.cuda else 4) * context
    return suite.copy_bandwidth / (weight_bytes_read(model.module) + kv)


def weight_bytes_read(module: Any) -> int:
    """Bytes of weights one decode step reads: every Linear's as its kernel reads them, one row of the embedding."""
    import torch

    from kernels.gguf_linear import GGUFEmbedding, GGUFLinear
    from kernels.gptq import GPTQLinear

    total = 0
    for sub in module.modules():
        if isinstance(sub, GPTQLinear):  # Triton reads its reordered qweight with the stored zeros and scales;
            if sub.mode == "triton":  # other modes read the prepared tensors or, per call, the stored ones
                read = sub.prepared_tensors()[:1] + [sub.qzeros, sub.scales]
            else:
                read = sub.prepared_tensors() or [sub.qweight, sub.qzeros, sub.scales]
            total += sum(t.nbytes for t in read)
        elif isinstance(sub, (GGUFEmbedding, torch.nn.Embedding)):
            weight = sub.qweight if isinstance(sub, GGUFEmbedding) else sub.weight
            total += weight.nbytes // weight.shape[0]
        elif isinstance(sub, GGUFLinear):
            total += sum(t.nbytes for t in sub.prepared_tensors() or [sub.qweight])
        else:
            total += sum(p.nbytes for p in sub.parameters(recurse=False))
    return total


def vram_row(suite: Suite, label: str, model: Any) -> dict[str, Any]:
    """The estimate of the model's plan beside what the device holds after the load and after a full-context reply
    (CUDA: device memory in use, the CUDA context included; CPU dry run: the process's resident memory)."""
    from loaders.base import GenerationParams
    from webui.estimate.local import estimate_plan

    est = estimate_plan(model.plan)
    at_load = _device_in_use(suite) - suite.results["memory_before_model"] + suite.context_bytes
    tail = 32 if not suite.tiny else 4
    params = GenerationParams(do_sample=False, max_new_tokens=tail, ban_eos_token=True,
                              truncation_length=suite.shape.context)  # fmt: skip
    _stamps(model, _prompt(suite.shape, suite.shape.context - tail, salt=4), params)
    full = _device_in_use(suite) - suite.results["memory_before_model"] + suite.context_bytes
    expected_load, expected_full = (est.vram_at_load, est.vram) if suite.cuda else (est.ram_at_load, est.ram)
    return {"model": label, "plan": model.plan.describe(), "estimated_at_load": expected_load,
            "measured_at_load": at_load, "estimated_full": expected_full, "measured_full": full,
            "full_ratio": full / max(expected_full, 1)}  # fmt: skip


def _device_in_use(suite: Suite) -> int:
    import psutil
    import torch

    if suite.cuda:
        free, total = torch.cuda.mem_get_info(suite.device)
        return total - free
    return psutil.Process().memory_info().rss


def _free(suite: Suite) -> None:
    import torch

    gc.collect()
    if suite.cuda:
        torch.cuda.empty_cache()
    suite.results["memory_before_model"] = _device_in_use(suite)


# --- report -----------------------------------------------------------------------------------------------------------


def markdown(suite: Suite) -> str:
    r = suite.results
    env = r["environment"]
    lines = [f"## GPU suite (issue 17): {env['device_name']}", "",
             f"`python -m bench.gpu_suite{' --tiny' if suite.tiny else ''}`, {env['date']}, torch {env['torch']}, "
             f"triton {env['triton']}, transformers {env['transformers']}; shape {suite.shape.name}; "
             f"{r['seconds']:.0f} s. Copy bandwidth (read + write): **{r['copy_bandwidth'] / 1e9:.0f} GB/s**.", ""]
    if suite.tiny:
        lines += ["*Dry run on the CPU (kernels in Triton's interpreter): the figures only show the suite runs.*", ""]
    lines += _table("(a) Triton kernels vs the PyTorch path", ["kernel", "rows", "max error / max value", "ok"],
                    [[c["kernel"], c["rows"], f"{c['relative_error']:.1e}", "yes" if c["ok"] else "**NO**"]
                     for c in r.get("kernel_checks", [])])  # fmt: skip
    lines += _table("(b) Matrix-vector bandwidth", ["kernel", "out x in", "rows", "µs", "GB/s", "÷ copy"],
                    [[b["kernel"], f"{b['out']}x{b['in']}", b["rows"], f"{b['us_per_call']:.1f}",
                      f"{b['bytes_per_s'] / 1e9:.0f}", f"{b['of_copy_bandwidth']:.2f}"]
                     for b in r.get("kernel_bandwidth", [])])  # fmt: skip
    lines += _table("(c, d) Decode and prefill", ["row", "decode tok/s", "÷ limit", f"prefill {r.get('prefill', '')} "
                    "tokens (s)", "÷ fp16", "decode mode"],
                    [[m["row"], _num(m.get("decode_tps")), _num(m.get("of_limit"), 2), _num(m.get("prefill_s"), 3),
                      _num(m.get("prefill_vs_fp16"), 2), m.get("decode_mode", m.get("note", ""))]
                     for m in r.get("models", [])])  # fmt: skip
    unit = "VRAM" if suite.cuda else "RAM (dry run)"
    lines += _table(f"(e) Estimated vs measured {unit}", ["model", "est. at load", "measured at load",
                    "est. full context", "measured full context", "measured ÷ est."],
                    [[v["model"], _gb(v["estimated_at_load"]), _gb(v["measured_at_load"]), _gb(v["estimated_full"]),
                      _gb(v["measured_full"]), f"{v['full_ratio']:.2f}"] for v in r.get("memory", [])])  # fmt: skip
    lines += [f"Skipped: {'; '.join(r['skipped'])}.", ""] if r.get("skipped") else []
    return "\n".join(lines)


def _table(title: str, header: list[str], rows: list[list[Any]]) -> list[str]:
    out = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return [*out, ""]


def _num(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _gb(value: int) -> str:
    return f"{value / 1e9:.2f} GB"


# --- main -------------------------------------------------------------------------------------------------------------


def run(work: Path, *, tiny: bool, budget: float) -> Suite:
    import torch  # after TRITON_INTERPRET is settled (main)
    import transformers
    import triton

    from bench import random_models

    started = time.monotonic()
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if not tiny and device.type != "cuda":
        raise SystemExit("The GPU suite needs a CUDA GPU; --tiny runs its dry run on the CPU.")
    suite = Suite(device, random_models.TINY if tiny else random_models.LLAMA2_13B, tiny, started + budget, work)
    r = suite.results
    r["environment"] = {"device_name": torch.cuda.get_device_name(device) if suite.cuda else platform.processor() or
                        "CPU", "torch": torch.__version__, "triton": triton.__version__,
                        "transformers": transformers.__version__, "date": time.strftime("%Y-%m-%d"),
                        "tiny": tiny}  # fmt: skip
    if suite.cuda:
        torch.cuda.init()
        suite.context_bytes = _device_in_use(suite)  # nothing allocated yet: the context (and the driver's share)
    r["memory_before_model"] = _device_in_use(suite)
    r["copy_bandwidth"] = suite.copy_bandwidth = measure_copy_bandwidth(suite)
    r["kernel_checks"] = _section(suite, "a", kernel_checks)
    r["kernel_bandwidth"] = _section(suite, "b", kernel_bandwidth)
    _free(suite)
    r["prefill"] = TINY_PREFILL_TOKENS if tiny else PREFILL_TOKENS
    r["models"], r["memory"] = _section(suite, "c-e", model_rows)
    r["seconds"] = time.monotonic() - started
    return suite


def _section(suite: Suite, name: str, fn: Callable[[Suite], Any]) -> Any:
    started = time.monotonic()
    result = fn(suite)
    suite.results.setdefault("section_seconds", {})[name] = time.monotonic() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_suite.md and gpu_suite.json")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (kernels interpreted)")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds; later sections are skipped past it")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is made here: nothing may wait on a network
    if args.tiny:
        import torch

        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are decorated, i.e. at their import
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as work:  # model files: never under --out (it is copied)
        suite = run(Path(work), tiny=args.tiny, budget=args.budget)
    (args.out / "gpu_suite.json").write_text(json.dumps(suite.results, indent=1, default=str))
    (args.out / "gpu_suite.md").write_text(markdown(suite))
    print(markdown(suite))


if __name__ == "__main__":
    main()
