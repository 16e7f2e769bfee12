"""GPTQ benchmark: (a) 4-bit mat-vec bandwidth vs device copy bandwidth, (b) decode tokens/s and (c) 512-token prefill
of a Llama-2-13B-shaped model with random GPTQ weights, each next to PyTorch fp16 of the same shapes in the same run.

    python -m bench.gptq            # on a CUDA GPU: Llama-2-13B shapes, Triton kernels, decode in a CUDA graph
    python -m bench.gptq --tiny     # anywhere: tiny shapes; on CPU the kernels run under TRITON_INTERPRET=1

Decode step: Transformers' LlamaForCausalLM with a StaticCache, one token per step, captured once in a CUDA graph
(the gpt-fast "reduce-overhead" idea, done by hand with torch.cuda.CUDAGraph); if capture fails the run says so and
times the eager step instead. Prints a Markdown block for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before kernels.gptq_triton is imported

from kernels import gptq_torch, gptq_triton  # noqa: E402
from kernels.gptq import GPTQLinear  # noqa: E402


@dataclass(frozen=True)
class Shapes:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    vocab: int
    matvec: tuple[tuple[int, int], ...]  # (in, out)
    prefill: int
    decode_steps: int


LLAMA2_13B = Shapes(5120, 13824, 40, 40, 32000, ((5120, 5120), (5120, 13824), (13824, 5120)), 512, 64)
TINY = Shapes(256, 512, 2, 4, 1024, ((256, 256), (256, 512), (512, 256)), 32, 4)


def timed(fn: Callable[[], object], device: torch.device, repeat: int) -> float:
    """Seconds per call, after one warm-up call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat


def random_gptq(in_f: int, out_f: int, *, group: int, act_order: bool, device: torch.device) -> GPTQLinear:
    """A 4-bit GPTQLinear of random bits (any int32 is a valid packed word), prepared for `device`."""
    n_groups = 1 if group == -1 else -(-in_f // group)
    g_idx = gptq_torch.default_g_idx(in_f, group, device)
    if act_order:
        g_idx = g_idx[torch.randperm(in_f, device=device)]
    tensors = gptq_torch.GPTQTensors(
        qweight=torch.randint(-2**31, 2**31 - 1, (in_f // 8, out_f), dtype=torch.int32, device=device),
        qzeros=torch.randint(-2**31, 2**31 - 1, (n_groups, out_f // 8), dtype=torch.int32, device=device),
        scales=(torch.rand(n_groups, out_f, device=device) * 1e-3).half(),
        g_idx=g_idx, bits=4)
    layer = GPTQLinear(tensors)
    layer.prepare(dtype=torch.float16 if device.type == "cuda" else torch.float32, cache=False)
    return layer


# --- (a) mat-vec bandwidth -------------------------------------------------------------------------------------------


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / timed(lambda: dst.copy_(src), device, 20)


def matvec_rows(shapes: Shapes, device: torch.device) -> list[str]:
    copy_bw = copy_bandwidth(device, 2**30 if device.type == "cuda" else 2**24)
    rows = [f"copy bandwidth: {copy_bw / 1e9:.1f} GB/s", "", "| shape (in x out) | group | act-order | us | GB/s | "
            "fraction of copy |", "|---|---|---|---|---|---|"]
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    for in_f, out_f in shapes.matvec:
        for group, act in ((128, False), (32, True)):
            weight = gptq_triton.prepare(random_gptq(in_f, out_f, group=group, act_order=act, device=device).tensors())
            x = torch.randn(1, in_f, device=device, dtype=dtype)
            seconds = timed(lambda w=weight, x=x: gptq_triton.matmul(x, w), device, 50 if device.type == "cuda" else 2)
            nbytes = sum(t.numel() * t.element_size() for t in (weight.qweight, weight.qzeros, weight.scales))
            bw = nbytes / seconds
            rows.append(f"| {in_f}x{out_f} | {group} | {act} | {seconds * 1e6:.1f} | {bw / 1e9:.1f} | "
                        f"{bw / copy_bw:.2f} |")
    return rows


# --- (b, c) model decode and prefill ---------------------------------------------------------------------------------


def llama(shapes: Shapes, device: torch.device, dtype: torch.dtype):
    """A LlamaForCausalLM of the given shapes with random weights, on `device`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=shapes.hidden, intermediate_size=shapes.intermediate,
                         num_hidden_layers=shapes.layers, num_attention_heads=shapes.heads,
                         num_key_value_heads=shapes.heads, vocab_size=shapes.vocab, max_position_embeddings=4096)
    with torch.device(device):  # built in place in `dtype` (13B fp16: 26 GB), no fp32 copy
        model = LlamaForCausalLM._from_config(config, dtype=dtype).eval()
    return model


def quantize_randomly(model: torch.nn.Module, *, group: int, act_order: bool, device: torch.device) -> None:
    """Swap every Linear inside the decoder layers for a random 4-bit GPTQLinear (lm_head stays fp16)."""
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    for name in names:
        linear = model.get_submodule(name)
        model.set_submodule(name, random_gptq(linear.in_features, linear.out_features, group=group,
                                              act_order=act_order, device=device))
        del linear
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Decoder:
    """One-token decode steps over a StaticCache; replayed from a CUDA graph when it can be captured."""

    def __init__(self, model: torch.nn.Module, max_len: int, device: torch.device) -> None:
        from transformers import StaticCache

        self.model = model
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.ids = torch.zeros(1, 1, dtype=torch.long, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None
        self.mode = "eager"

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        out = self.model(input_ids=ids, past_key_values=self.cache, cache_position=positions, use_cache=True)
        self.position.fill_(ids.shape[1])
        return out.logits[:, -1]

    @torch.no_grad()
    def _step(self) -> torch.Tensor:
        out = self.model(input_ids=self.ids, past_key_values=self.cache, cache_position=self.position,
                         use_cache=True)
        return out.logits[:, -1]

    def capture(self) -> None:
        if self.ids.device.type != "cuda":
            return
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.logits = self._step()
        except RuntimeError as error:  # e.g. a host sync inside the step; eager timing then, said in the output
            print(f"CUDA graph capture failed ({str(error).splitlines()[0]}); timing eager steps")
            return
        self.graph, self.mode = graph, "CUDA graph"

    def step(self, token: torch.Tensor) -> torch.Tensor:
        self.ids.copy_(token.view(1, 1))
        logits = self._step() if self.graph is None else (self.graph.replay(), self.logits)[1]
        self.position.add_(1)
        return logits


def model_rows(shapes: Shapes, device: torch.device) -> list[str]:
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    rows = ["| model | decode tok/s | decode step | prefill ms (" + str(shapes.prefill) + " tok) | vs fp16 decode | "
            "vs fp16 prefill |", "|---|---|---|---|---|---|"]
    baseline: tuple[float, float] | None = None
    for label, quant in (("fp16" if device.type == "cuda" else "float32", None), ("GPTQ 4-bit g128", (128, False)),
                         ("GPTQ 4-bit 32g act-order", (32, True))):
        model = llama(shapes, device, dtype)
        if quant is not None:
            quantize_randomly(model, group=quant[0], act_order=quant[1], device=device)
        tok_s, prefill_s, mode = decode_and_prefill(model, shapes, device)
        baseline = baseline or (tok_s, prefill_s)
        rows.append(f"| {label} | {tok_s:.1f} | {mode} | {prefill_s * 1e3:.1f} | {tok_s / baseline[0]:.2f}x | "
                    f"{prefill_s / baseline[1]:.2f}x |")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def decode_and_prefill(model: torch.nn.Module, shapes: Shapes, device: torch.device) -> tuple[float, float, str]:
    prompt = torch.randint(0, shapes.vocab, (1, shapes.prefill), device=device)
    with torch.no_grad():
        prefill_s = timed(lambda: model(input_ids=prompt, use_cache=False), device, 3)
    decoder = Decoder(model, 16 + shapes.decode_steps + 8, device)
    token = decoder.prefill(prompt[:, :16]).argmax(-1)
    decoder.capture()
    steps = shapes.decode_steps

    def run() -> None:
        nonlocal token
        for _ in range(steps):
            token = decoder.step(token).argmax(-1)

    decoder.position.fill_(16)
    seconds = timed(lambda: (decoder.position.fill_(16), run()), device, 1)
    return steps / seconds, prefill_s, decoder.mode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", "--dry", action="store_true", help="small shapes; runs on CPU")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes = TINY if args.tiny or device.type != "cuda" else LLAMA2_13B
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter for (a))"
    print(f"## GPTQ bench — {name}, torch {torch.__version__}, shapes {'tiny' if shapes is TINY else 'Llama-2-13B'}")
    print("\n### (a) 4-bit mat-vec (decode kernel), batch 1\n")
    print("\n".join(matvec_rows(shapes, device)))
    print("\n### (b) decode and (c) prefill\n")
    print("\n".join(model_rows(shapes, device)))


if __name__ == "__main__":
    main()
