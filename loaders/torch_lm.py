"""`TorchCausalLM`: the `LoadedModel` of every PyTorch backend (Transformers, GPTQ, native GGUF).

Any module with the Hugging Face causal-LM forward works; loaders build the module, this class runs it. It holds
`slots` sequences at once (`LoadPlan.slots`) in a preallocated KV cache (`loaders.kv_cache.SlotCache`); concurrent
`generate_tokens` calls are batched by `loaders.batching` (continuous batching, prefix reuse), each forward is run by
`loaders.decode_step`, and on CUDA the decode step is a captured graph (`loaders.cuda_graphs`). Models whose
attention a slot cache cannot hold keep Transformers' dynamic cache, one sequence at a time. `decode_mode` says
which, for the load message.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import torch

from loaders.base import DecodeInfo, GenerationParams, MemoryReport, ModelTokenizer
from loaders.batching import Batcher, Request, reply_budget
from loaders.compute_thread import ComputeThread
from loaders.constraints import GrammarCompiler
from loaders.cuda_graphs import attach as capture_decode_graphs
from loaders.decode_step import DynamicRunner, Runner, SlotRunner
from loaders.embedding import Embeddings, embed_causal_lm
from loaders.errors import ModelNotLoadedError
from loaders.host_memory import trim_heap
from loaders.kv_cache import attention_layout
from loaders.plan import LoadPlan

log = logging.getLogger(__name__)
T = TypeVar("T")


class TorchCausalLM:
    """A loaded PyTorch causal LM. One object per load; `unload()` releases the module."""

    def __init__(
        self,
        name: str,
        loader: str,
        path: Path,
        module: torch.nn.Module,
        tokenizer: ModelTokenizer,
        context_length: int,
        device: str,
        load_seconds: float,
        memory: MemoryReport,
        *,
        plan: LoadPlan | None = None,
        cuda_graphs: bool = True,
    ) -> None:
        self.name = name
        self.loader = loader
        self.path = Path(path)
        self.module: torch.nn.Module | None = module
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.device = device
        self.load_seconds = load_seconds
        self.plan = plan  # what the loader was asked to do (the Model tab shows it next to what it did)
        self.weight_cache = ""  # GPTQ: how its quantized layers run ("dequantized cache", "triton"...)
        self.grammar = GrammarCompiler.for_tokenizer(tokenizer)  # structured output; reads the vocabulary on first use
        self._input_device = _input_device(module)
        self.dtype = _activation_dtype(module, self._input_device)
        runner = self._new_runner(module, plan.slots if plan is not None else 1)
        self.slots = runner.rows
        # One token through the model now: memory-mapped weights become resident, the cache is allocated (all of it on
        # a GPU) and kernels do their first-call setup (CUDA: the first graph is captured), so the memory and time the
        # load reports are what the first reply will find.
        before = _cuda_allocated()
        self.warmup_seconds = self._warm_up(runner, cuda_graphs=cuda_graphs)
        self.memory = _plus(memory, {d: n - before.get(d, 0) for d, n in _cuda_allocated().items()})
        self.load_seconds += self.warmup_seconds
        self.decode_mode = _describe(runner, self.slots, self.warmup_seconds)
        self._batcher = Batcher(runner, device=self._input_device, eos_ids=tuple(tokenizer.eos_token_ids))
        trim_heap()

    def use_compute_thread(self, compute: ComputeThread) -> None:
        """Run every batch step, embedding and adapter change on `compute` (the thread that loaded the model)."""
        self._batcher.compute = compute

    def on_compute_thread(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` on the model's compute thread (here, for a model built without one)."""
        compute = self._batcher.compute
        return compute.run(fn, *args) if compute is not None else fn(*args)

    def generate_tokens(
        self, prompt_ids: list[int], params: GenerationParams, cancel: threading.Event,
        info: DecodeInfo | None = None,
    ) -> Iterator[int]:
        """Yield new token ids; stops at EOS (not yielded; never sampled when banned), max_new_tokens, the end of the
        context, or cancel. Up to `slots` calls run at once, each from its own thread."""
        self._live()
        if not prompt_ids or params.max_new_tokens <= 0:
            return iter(())
        budget = reply_budget(len(prompt_ids), params.max_new_tokens, self.context_length)
        context = torch.empty(len(prompt_ids) + budget, dtype=torch.long, device=self._input_device)
        context[: len(prompt_ids)] = torch.tensor(prompt_ids, dtype=torch.long)
        eos = tuple(self.tokenizer.eos_token_ids)
        request = Request(
            list(prompt_ids), params, cancel, info or DecodeInfo(), budget,
            frozenset(() if params.ban_eos_token else eos), context, _generator(params.seed, self._input_device),
            self.grammar.start(params.constraint) if params.constraint is not None else None,
        )  # fmt: skip
        return self._batcher.stream(request)

    def weights_changed(self) -> None:
        """The layers changed (LoRA adapters applied or removed, with no request running): the rows' cached prompts
        are dropped, and CUDA graphs, which replay the kernels of the layers as captured, are captured again."""
        self._live()
        self._batcher.forget()
        runner = self._batcher.runner
        if isinstance(runner, SlotRunner) and runner.graphs is not None:
            runner.graphs = self.on_compute_thread(capture_decode_graphs, runner)

    def forget_prompts(self) -> None:
        """Drop every cached prompt prefix, so the next request reads its whole prompt (benchmarks, tests)."""
        self._batcher.forget()

    def embed(self, texts: Sequence[str]) -> Embeddings:
        """Sentence embeddings of `texts` (`loaders/embedding.py`: mean-pooled last hidden state, normalised)."""
        return self.on_compute_thread(lambda: embed_causal_lm(self._live(), self.tokenizer, texts,
                                                              context=self.context_length, device=self._input_device))

    def unload(self) -> None:
        self._batcher.close(f"{self.name} was unloaded. Load it again in the Model tab.")
        self.module = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self._batcher.compute is not None:
            self._batcher.compute.close()

    # --- set-up -------------------------------------------------------------------------------------------------------

    def _new_runner(self, module: torch.nn.Module, slots: int) -> Runner:
        """A slot cache of `slots` rows when the model's attention fits one, else Transformers' dynamic cache."""
        fits, sliding = attention_layout(getattr(module, "config", None), self.context_length)
        if not fits:
            if slots > 1:
                log.info("%s: this model's attention layers need Transformers' dynamic cache; one request at a time.",
                         self.name)  # fmt: skip
            return DynamicRunner(module, device=self._input_device)
        return SlotRunner(module, rows=max(1, slots), context=self.context_length, device=self._input_device,
                          dtype=getattr(torch, self.dtype), sliding=sliding)  # fmt: skip

    @torch.inference_mode()
    def _warm_up(self, runner: Runner, *, cuda_graphs: bool) -> float:
        started = time.perf_counter()
        runner.prefill(0, [self.tokenizer.bos_token_id or 0], 0)
        if isinstance(runner, SlotRunner) and cuda_graphs:
            runner.graphs = capture_decode_graphs(runner)
        if self._input_device.type == "cuda":
            torch.cuda.synchronize(self._input_device)
        return time.perf_counter() - started

    def _live(self) -> torch.nn.Module:
        if self.module is None:
            raise ModelNotLoadedError(f"{self.name} was unloaded. Load it again in the Model tab.")
        return self.module


def _describe(runner: Runner, slots: int, warmup_seconds: float) -> str:
    """How decoding runs, for the load message: "static KV cache, 4 slots, CUDA graphs (captured in 1.2 s);
    warm-up 2.0 s"."""
    warmup = f"; warm-up {warmup_seconds:.1f} s"
    if not isinstance(runner, SlotRunner):
        return "dynamic KV cache (this model's attention layers), 1 slot" + warmup
    text = f"static KV cache, {slots} slot{'s' if slots != 1 else ''}"
    graphs = runner.graphs
    if graphs is not None and graphs.failure:
        return f"{text}, eager decode (CUDA graph capture failed: {graphs.failure}){warmup}"
    if graphs is not None:
        return f"{text}, CUDA graphs (captured in {graphs.capture_seconds:.1f} s){warmup}"
    return text + warmup


def _cuda_allocated() -> dict[int, int]:
    if not torch.cuda.is_available():
        return {}
    return {i: torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count())}


def _plus(memory: MemoryReport, vram: dict[int, int]) -> MemoryReport:
    """`memory` with `vram` (bytes the warm-up allocated per CUDA device: cache, graph pool, workspaces) added."""
    total = dict(memory.vram_bytes)
    for index, extra in vram.items():
        if extra > 0:
            total[index] = total.get(index, 0) + extra
    return MemoryReport(ram_bytes=memory.ram_bytes, vram_bytes=total)


def _input_device(module: torch.nn.Module) -> torch.device:
    """Where input ids go: the embedding's device (with a split device map, the first part)."""
    embeddings = getattr(module, "get_input_embeddings", None)
    if embeddings is not None and embeddings() is not None:
        return embeddings().weight.device
    return next(module.parameters()).device


def memory_of(tensors: Iterable[torch.Tensor]) -> MemoryReport:
    """Bytes of `tensors` per device, each storage counted once (tied weights, views of one memory map)."""
    seen: set[int] = set()
    ram, vram = 0, {}
    for tensor in tensors:
        key = tensor.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        if tensor.is_cuda:
            vram[tensor.device.index] = vram.get(tensor.device.index, 0) + tensor.nbytes
        else:
            ram += tensor.nbytes
    return MemoryReport(ram_bytes=ram, vram_bytes=vram)


@torch.inference_mode()
def _activation_dtype(module: torch.nn.Module, device: torch.device) -> str:
    """The dtype activations (and so the KV cache) take: what the embedding really returns, e.g. "bfloat16"."""
    embeddings = module.get_input_embeddings() if hasattr(module, "get_input_embeddings") else None
    if embeddings is None:
        return str(next(p.dtype for p in module.parameters() if p.is_floating_point())).removeprefix("torch.")
    return str(embeddings(torch.zeros(1, 1, dtype=torch.long, device=device)).dtype).removeprefix("torch.")


def _generator(seed: int, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed >= 0:
        generator.manual_seed(seed)
    else:
        generator.seed()
    return generator
