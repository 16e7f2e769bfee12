"""`TorchCausalLM`: the `LoadedModel` of every PyTorch backend (Transformers, GPTQ, native GGUF).

It owns the decode loop: prefill the prompt into a KV cache, then one forward per new token, sampled by
`loaders.sampling`. Any module with the Hugging Face causal-LM forward works
(`module(input_ids=..., past_key_values=cache, use_cache=True).logits`); loaders build the module, this class
only runs it. The cache is made by `_new_cache` and each step runs through `_forward`, the two places a static
cache / `torch.compile` path for CUDA would replace.
"""

from __future__ import annotations

import ctypes
import gc
import inspect
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from loaders.base import DecodeInfo, GenerationParams, MemoryReport, ModelTokenizer
from loaders.constraints import GrammarCompiler, TokenConstraint
from loaders.embedding import Embeddings, embed_causal_lm
from loaders.errors import ModelNotLoadedError
from loaders.plan import LoadPlan
from loaders.sampling import select_next


@dataclass
class _Decoding:
    """One generation's tensors."""

    context: torch.Tensor  # [n_prompt + max_new_tokens] long: the prompt, then the reply as it grows
    length: int  # tokens in `context` so far
    fed: int  # tokens already run through the model (held in `cache`)
    cache: Any
    generator: torch.Generator
    constraint: TokenConstraint | None = None  # the request's grammar (structured output)


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
    ) -> None:
        self.name = name
        self.loader = loader
        self.path = Path(path)
        self.module: torch.nn.Module | None = module
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.device = device
        self.load_seconds = load_seconds
        self.memory = memory
        self.plan = plan  # what the loader was asked to do (the Model tab shows it next to what it did)
        self.weight_cache = ""  # GPTQ: how its quantized layers run ("dequantized cache", "triton"...)
        self.grammar = GrammarCompiler.for_tokenizer(tokenizer)  # structured output; reads the vocabulary on first use
        self._input_device = _input_device(module)
        self.dtype = _activation_dtype(module, self._input_device)
        # Prefill needs the last position's logits only; HF models skip the rest of the LM head when told so.
        self._keep_last = "logits_to_keep" in inspect.signature(module.forward).parameters
        # One token through the model now: memory-mapped weights become resident and the kernels' first-call setup
        # happens during the load, so the memory and the time the load reports are what the first reply will find.
        self.warmup_seconds = self._warm_up(module)
        self.load_seconds += self.warmup_seconds
        _return_freed_heap()

    slots = 1  # one generation at a time

    def generate_tokens(
        self, prompt_ids: list[int], params: GenerationParams, cancel: threading.Event,
        info: DecodeInfo | None = None,
    ) -> Iterator[int]:
        """Yield new token ids; stops at EOS (not yielded; never sampled when banned), max_new_tokens or cancel."""
        module = self._live()
        if not prompt_ids or params.max_new_tokens <= 0:
            return
        eos = tuple(self.tokenizer.eos_token_ids)
        stop_ids = () if params.ban_eos_token else eos
        state = self._start(module, prompt_ids, params)
        info = info if info is not None else DecodeInfo()
        for _ in range(params.max_new_tokens):
            if cancel.is_set():
                return
            token = self._step(module, state, params, eos, info)
            if token in stop_ids:
                return
            yield token
            if state.constraint is not None and state.constraint.finished:
                return  # the grammar is complete: only the end of the reply could follow

    def embed(self, texts: Sequence[str]) -> Embeddings:
        """Sentence embeddings of `texts` (`loaders/embedding.py`: mean-pooled last hidden state, normalised)."""
        return embed_causal_lm(self._live(), self.tokenizer, texts, context=self.context_length,
                               device=self._input_device)

    def unload(self) -> None:
        self.module = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # --- the loop -------------------------------------------------------------------------------------------------
    # Inference mode is entered per step, never across a `yield`: the consumer may resume this generator on another
    # thread (Gradio does), and thread-local grad state must not leak into its code between tokens.

    @torch.inference_mode()
    def _start(self, module: torch.nn.Module, prompt_ids: list[int], params: GenerationParams) -> _Decoding:
        size = len(prompt_ids) + params.max_new_tokens
        context = torch.empty(size, dtype=torch.long, device=self._input_device)
        context[: len(prompt_ids)] = torch.tensor(prompt_ids, dtype=torch.long)
        constraint = self.grammar.start(params.constraint) if params.constraint is not None else None
        return _Decoding(context, len(prompt_ids), 0, self._new_cache(module, size),
                         _generator(params.seed, self._input_device), constraint)

    @torch.inference_mode()
    def _step(
        self, module: torch.nn.Module, state: _Decoding, params: GenerationParams, eos: tuple[int, ...],
        info: DecodeInfo,
    ) -> int:
        """Feed the tokens not yet in the cache (the prompt, then the last token), sample, append the new token
        (and its log-probability to `info` when asked, unless it is EOS: the engine never sees that one)."""
        logits = self._forward(module, state.context[None, state.fed : state.length], state.cache)  # [vocab]
        state.fed = state.length
        token, logprob = select_next(logits, state.context[: state.length], params, state.generator, eos_ids=eos,
                                     constraint=state.constraint)
        if logprob is not None and token not in eos:
            info.logprobs.append(logprob)
        state.context[state.length] = token
        state.length += 1
        return token

    @torch.inference_mode()
    def _warm_up(self, module: torch.nn.Module) -> float:
        started = time.perf_counter()
        token = self.tokenizer.bos_token_id or 0
        self._forward(module, torch.tensor([[token]], device=self._input_device), self._new_cache(module, 1))
        return time.perf_counter() - started

    def _new_cache(self, module: torch.nn.Module, max_length: int) -> Any:
        """A growing transformers DynamicCache (`max_length` is for a future static cache)."""
        from transformers import DynamicCache, PreTrainedConfig

        config = getattr(module, "config", None)  # lets the cache size sliding-window layers
        return DynamicCache(config=config) if isinstance(config, PreTrainedConfig) else DynamicCache()

    def _forward(self, module: torch.nn.Module, input_ids: torch.Tensor, cache: Any) -> torch.Tensor:
        """Run `input_ids` [1, n] through the model, extending `cache`; the last position's logits [vocab]."""
        kwargs: dict[str, Any] = {"input_ids": input_ids, "past_key_values": cache, "use_cache": True}
        if self._keep_last:
            kwargs["logits_to_keep"] = 1
        # Sampling runs where the ids live; with a split device map the LM head may sit elsewhere.
        return module(**kwargs).logits[0, -1].float().to(self._input_device)

    def _live(self) -> torch.nn.Module:
        if self.module is None:
            raise ModelNotLoadedError(f"{self.name} was unloaded. Load it again in the Model tab.")
        return self.module


def _input_device(module: torch.nn.Module) -> torch.device:
    """Where input ids go: the embedding's device (with a split device map, the first part)."""
    embeddings = getattr(module, "get_input_embeddings", None)
    if embeddings is not None and embeddings() is not None:
        return embeddings().weight.device
    return next(module.parameters()).device


def _return_freed_heap() -> None:
    """Give the heap that loading freed (dtype casts, dequantization temporaries) back to the system: glibc keeps
    it otherwise, and the process would hold ~100 MB more than its tensors for a 135M GPTQ model (measured)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl): nothing to trim
            pass


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
