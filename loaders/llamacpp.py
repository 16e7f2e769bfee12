"""The llama.cpp loader: a GGUF file run by `llama-cpp-python`, behind the `LoadedModel` interface.

This module owns the mapping from Corral's settings and `GenerationParams` onto llama.cpp: the weights, offload and
one context holding a sequence per slot (`plan.slots`, each with `plan.context` tokens) at load; one llama.cpp
sampler chain per generation (penalties, temperature, top-k/p, min-p, typical, EOS ban, seed); the tokenizer
adapter and the memory report. The decoding itself, several requests at once with the prompt prefix each sequence
holds reused, is `loaders/llamacpp_batch.py`. Detokenization, stop strings and accounting stay in the engine, as
for every backend. It uses llama.cpp's C API through llama-cpp-python's bindings, not its `Llama` class, whose
context holds one sequence.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np
import psutil

from loaders.base import DecodeInfo, GenerationParams, MemoryReport, TokenLogprob
from loaders.constraints import GrammarCompiler, TokenConstraint
from loaders.embedding import EMBEDDING_CONTEXT, Embeddings, LlamaCppEmbedder
from loaders.errors import GenerationError, ModelFormatError, ModelNotLoadedError
from loaders.llamacpp_batch import BatchDecoder
from loaders.plan import LoadPlan
from loaders.registry import loader_for_paths
from loaders.settings import LlamaCppSettings

logger = logging.getLogger(__name__)

LOADER_NAME = "llama.cpp"
# enum ggml_log_level (include/ggml.h): 1 debug, 2 info, 3 warn, 4 error, 5 continuation. llama.cpp's info lines
# (~80 per load) are logged at DEBUG so that an INFO app log stays readable.
_LOG_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}


# --- logging: llama.cpp's own log lines go to our logger, never to stdout -------------------------------------------


@llama_cpp.llama_log_callback
def _log_to_python(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    # Level 5 continues the previous line (progress dots): logged at DEBUG, like anything unknown.
    message = text.decode("utf-8", errors="replace").rstrip("\n")
    if message:
        logger.log(_LOG_LEVELS.get(level, logging.DEBUG), "%s", message)


class _ErrorLines(logging.Handler):
    """Collects llama.cpp's error lines during a load, to explain a failure in the user's message."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


# --- tokenizer ------------------------------------------------------------------------------------------------------


@dataclass
class LlamaCppTokenizer:
    """`ModelTokenizer` over llama.cpp's vocabulary; special-token strings in text are parsed as tokens.

    BOS follows `loaders.bos`, the rule of every loader: `adds_bos` is llama.cpp's own answer for the file
    (`llama_vocab_get_add_bos`: `tokenizer.ggml.add_bos_token`, else the vocabulary's default, which is what
    `bos.gguf_adds_bos` writes out), and `encode` applies the shared prepend step.
    """

    owner: object = field(repr=False)  # what owns the vocabulary (the loaded weights, or a `llama_cpp.Llama`)
    vocab: llama_cpp.llama_vocab_p = field(repr=False)
    bos_token: str | None
    eos_token: str | None
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    chat_template: str | None
    adds_bos: bool

    @classmethod
    def from_model(cls, model: llama_cpp.llama_model_p, *, owner: object) -> LlamaCppTokenizer:
        vocab = llama_cpp.llama_model_get_vocab(model)
        bos, eos = llama_cpp.llama_vocab_bos(vocab), llama_cpp.llama_vocab_eos(vocab)
        # Every end-of-generation token (EOS, EOT, <|im_end|>...), as llama.cpp itself decides.
        eog = [i for i in range(llama_cpp.llama_vocab_n_tokens(vocab)) if llama_cpp.llama_vocab_is_eog(vocab, i)]
        eos_ids = ([eos] if eos in eog else []) + [i for i in eog if i != eos]
        return cls(
            owner=owner,
            vocab=vocab,
            bos_token=_token_text(vocab, bos),
            eos_token=_token_text(vocab, eos),
            bos_token_id=bos if bos >= 0 else None,
            eos_token_ids=tuple(eos_ids),
            chat_template=_metadata(model, "tokenizer.chat_template") or None,
            adds_bos=bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        )

    @classmethod
    def from_llama(cls, llm: llama_cpp.Llama) -> LlamaCppTokenizer:
        """The tokenizer of a `llama_cpp.Llama` (one opened with `vocab_only=True` reads no weights)."""
        return cls.from_model(llm.model, owner=llm)

    def encode(self, text: str, *, add_bos: bool) -> list[int]:
        from loaders.bos import prepend_bos  # local import: only the tokenizer needs it

        # Without llama.cpp's own special tokens (add_special=False) and then the shared step: the same BOS as with
        # add_bos=True, but never doubled and no EOS appended, as the other loaders' tokenizers do.
        data = text.encode("utf-8")
        size = len(data) + 8  # a token covers at least one byte
        for _ in range(2):
            tokens = (llama_cpp.llama_token * size)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), tokens, size, False, True)
            if n >= 0:
                return prepend_bos(tokens[:n], self.bos_token_id, add=add_bos and self.adds_bos)
            size = -n  # too small: llama.cpp says how much it needs
        raise GenerationError("llama.cpp could not tokenize the prompt.")

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.detokenize_bytes(ids, skip_special_tokens=skip_special_tokens).decode("utf-8", errors="replace")

    def detokenize_bytes(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> bytes:
        # llama_detokenize in one call: Llama.detokenize truncates pieces longer than 32 bytes.
        tokens = (llama_cpp.llama_token * len(ids))(*ids)
        size = max(64, 8 * len(ids))
        for _ in range(2):
            buffer = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_detokenize(self.vocab, tokens, len(ids), buffer, size, False, not skip_special_tokens)
            if n >= 0:
                return buffer.raw[:n]
            size = -n  # too small: llama.cpp says how much it needs
        raise GenerationError("llama.cpp could not detokenize the reply.")


def _token_text(vocab: llama_cpp.llama_vocab_p, token: int) -> str | None:
    if token < 0:
        return None
    return llama_cpp.llama_vocab_get_text(vocab, token).decode("utf-8", errors="replace")


def _metadata(model: llama_cpp.llama_model_p, key: str) -> str | None:
    """A GGUF metadata value as text (None when the file has no such key). Not `llama_model_chat_template`: for
    some files without a template it answers a built-in template's name, which is no Jinja."""
    size = 4096
    for _ in range(2):
        buffer = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_model_meta_val_str(model, key.encode(), buffer, size)
        if n < 0:
            return None
        if n < size:
            return buffer.value.decode("utf-8", errors="replace")
        size = n + 1
    return None


# --- sampling -------------------------------------------------------------------------------------------------------


class _SamplerChain:
    """One llama.cpp sampler chain for one generation, freed on exit. Order follows Transformers' logits processors
    (EOS ban, penalties, then a request's grammar mask, then temperature, top-k, top-p, min-p, typical), so both
    backends sample from the same distribution. Two sub-chains, `pre` (ban, penalties) and `pick` (the rest): a
    plain step is one `llama_sampler_sample`; with a grammar or log-probabilities, `sample` runs them one by one,
    masking and reading the logits in between."""

    def __init__(
        self, params: GenerationParams, *, n_vocab: int, n_ctx: int, banned: Sequence[int],
        constraint: TokenConstraint | None = None, info: DecodeInfo | None = None,
        stop_ids: frozenset[int] = frozenset(),
    ) -> None:  # fmt: skip
        self.constraint, self.top, self.stop_ids = constraint, params.logprobs, stop_ids
        self.info = info if info is not None else DecodeInfo()
        self.chain = _new_chain()
        self.pre, self.pick = _new_chain(), _new_chain()
        for part in (self.pre, self.pick):
            llama_cpp.llama_sampler_chain_add(self.chain, part)  # the chain owns its parts
        self.n_vocab = n_vocab
        if banned:
            biases = (llama_cpp.llama_logit_bias * len(banned))(*[(t, float("-inf")) for t in banned])
            self._add(self.pre, llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(banned), biases))
        if _has_penalties(params):
            last_n = params.repetition_penalty_range or n_ctx  # 0 = the whole context
            self._add(self.pre, llama_cpp.llama_sampler_init_penalties(
                n_vocab, last_n, params.repetition_penalty, params.frequency_penalty, params.presence_penalty))
        if not params.do_sample or params.temperature <= 0:
            self._add(self.pick, llama_cpp.llama_sampler_init_greedy())
            return
        self._add(self.pick, llama_cpp.llama_sampler_init_temp(params.temperature))
        if params.top_k > 0:
            self._add(self.pick, llama_cpp.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            self._add(self.pick, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            self._add(self.pick, llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
        if params.typical_p < 1.0:
            self._add(self.pick, llama_cpp.llama_sampler_init_typical(params.typical_p, 1))
        seed = params.seed if params.seed >= 0 else llama_cpp.LLAMA_DEFAULT_SEED  # default = random
        self._add(self.pick, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def _add(self, chain: llama_cpp.llama_sampler_p, sampler: llama_cpp.llama_sampler_p) -> None:
        llama_cpp.llama_sampler_chain_add(chain, sampler)  # the chain owns it from here

    def accept_history(self, ids: Sequence[int]) -> None:
        """Feed the prompt to the penalty sampler: Transformers counts prompt tokens as seen, and so do we."""
        for token in ids:
            llama_cpp.llama_sampler_accept(self.pre, token)

    def sample(self, ctx: llama_cpp.llama_context_p, index: int) -> int:
        """The next token from the logits of batch entry `index` (accepted by the chain for the penalties, and by
        the request's grammar); with log-probabilities asked for, the pick's and the `top` most likely, from the
        logits after `pre` and the grammar mask (before `pick`), go to `info` unless the pick ends the reply."""
        if self.constraint is None and self.top is None:
            return llama_cpp.llama_sampler_sample(self.chain, ctx, index)  # also accepts the token
        data = np.empty(self.n_vocab, dtype=_TOKEN_DATA)
        data["id"] = np.arange(self.n_vocab, dtype=np.int32)
        data["logit"] = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index), shape=(self.n_vocab,))
        data["p"] = 0.0
        if self.constraint is not None:
            data["logit"][~self.constraint.allowed(self.n_vocab)] = -np.inf
        array = llama_cpp.llama_token_data_array(
            data=data.ctypes.data_as(llama_cpp.llama_token_data_p), size=self.n_vocab, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(self.pre, ctypes.byref(array))
        log_probs = None
        if self.top is not None:  # the samplers may re-point `data`: read through the array
            seen = _candidates(array)
            log_probs = np.full(self.n_vocab, -np.inf, dtype=np.float32)
            log_probs[seen["id"]] = _log_softmax(seen["logit"])
        llama_cpp.llama_sampler_apply(self.pick, ctypes.byref(array))
        token = int(_candidates(array)["id"][array.selected])
        llama_cpp.llama_sampler_accept(self.chain, token)
        if self.constraint is not None:
            self.constraint.advance(token)
        if log_probs is not None and token not in self.stop_ids:
            self.info.logprobs.append(_logprob(log_probs, token, self.top or 0))
        return token

    @property
    def finished(self) -> bool:
        """The request's grammar is complete: only the end of the reply could follow."""
        return self.constraint is not None and self.constraint.finished

    def __enter__(self) -> _SamplerChain:
        return self

    def __exit__(self, *exc: object) -> None:
        llama_cpp.llama_sampler_free(self.chain)


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])  # struct llama_token_data


def _new_chain() -> llama_cpp.llama_sampler_p:
    return llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())


def _candidates(array: llama_cpp.llama_token_data_array) -> np.ndarray:
    """The array's current candidates as a numpy view of (id, logit, p) records."""
    buffer = (ctypes.c_char * (array.size * _TOKEN_DATA.itemsize)).from_address(ctypes.addressof(array.data.contents))
    return np.frombuffer(buffer, dtype=_TOKEN_DATA)


def _logprob(log_probs: np.ndarray, token: int, top: int) -> TokenLogprob:
    best = np.argsort(-log_probs)[:top] if top > 0 else np.empty(0, dtype=np.int64)
    return TokenLogprob(token, float(log_probs[token]), tuple((int(i), float(log_probs[i])) for i in best))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    top = logits.max()
    return logits - (top + np.log(np.exp(logits - top).sum()))


def _has_penalties(params: GenerationParams) -> bool:
    return params.repetition_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0


# --- the loaded model -----------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Engine:
    """What llama.cpp holds for one load: the weights, one context with a sequence per slot, and its decoder."""

    model: llama_cpp.llama_model_p
    ctx: llama_cpp.llama_context_p
    decoder: BatchDecoder

    def close(self) -> None:
        self.decoder.close()  # first: its thread uses the context
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)


@dataclass
class LlamaCppModel:
    """A GGUF loaded in llama.cpp: `slots` requests decoded at once (`loaders/llamacpp_batch.py`), each with a
    context of `context_length` tokens."""

    name: str
    path: Path
    engine: _Engine | None = field(repr=False)
    tokenizer: LlamaCppTokenizer = field(repr=False)
    context_length: int  # per request (per slot)
    device: str
    load_seconds: float
    memory: MemoryReport
    slots: int = 1
    dtype: str = "float16"  # the KV cache's element type
    plan: LoadPlan | None = field(default=None, repr=False)
    weight_cache: str = ""
    loader: str = LOADER_NAME
    _embedder: LlamaCppEmbedder | None = field(default=None, repr=False)  # opened by the first `embed`
    _grammars: GrammarCompiler | None = field(default=None, repr=False)  # structured output, made on first use

    def generate_tokens(
        self, prompt_ids: list[int], params: GenerationParams, cancel: threading.Event,
        info: DecodeInfo | None = None,
    ) -> Iterator[int]:
        engine = self._live()
        n_ctx = self.context_length
        if not prompt_ids:
            raise GenerationError("The prompt is empty: there is nothing to continue.")
        if len(prompt_ids) >= n_ctx:
            raise GenerationError(
                f"The prompt is {len(prompt_ids)} tokens but the model was loaded with a context of {n_ctx}. "
                "Shorten the prompt, lower 'truncation_length', or reload with a larger n_ctx."
            )
        budget = min(params.max_new_tokens, n_ctx - len(prompt_ids))
        return self._stream(engine, prompt_ids, params, cancel, budget, info or DecodeInfo())

    def _stream(
        self, engine: _Engine, prompt_ids: list[int], params: GenerationParams, cancel: threading.Event, budget: int,
        info: DecodeInfo,
    ) -> Iterator[int]:
        banned = self.tokenizer.eos_token_ids if params.ban_eos_token else ()  # never sampled: their logits are -inf
        n_vocab = llama_cpp.llama_vocab_n_tokens(self.tokenizer.vocab)
        stop_ids = frozenset(self.tokenizer.eos_token_ids)
        constraint = self._grammar(engine).start(params.constraint) if params.constraint is not None else None
        with _SamplerChain(params, n_vocab=n_vocab, n_ctx=self.context_length, banned=banned, constraint=constraint,
                           info=info, stop_ids=stop_ids) as sampler:  # fmt: skip
            if _has_penalties(params):
                window = params.repetition_penalty_range
                sampler.accept_history(prompt_ids[-window:] if window else prompt_ids)
            yield from engine.decoder.generate(
                prompt_ids, sampler, budget=budget, stop_ids=stop_ids, cancel=cancel,
                info=info,
            )  # returns only once the decoder has let go of the sampler

    def forget_prompts(self) -> None:
        """Drop every cached prompt prefix, so the next request reads its whole prompt (adapters changed,
        benchmarks, tests)."""
        self._live().decoder.forget()

    def _grammar(self, engine: _Engine) -> GrammarCompiler:
        if self._grammars is None:
            vocab = llama_cpp.llama_model_get_vocab(engine.model)
            self._grammars = GrammarCompiler.for_llama_vocab(vocab, self.tokenizer.eos_token_ids)
        return self._grammars

    def embed(self, texts: Sequence[str]) -> Embeddings:
        """Sentence embeddings of `texts` from a second llama.cpp context on the same file, in embedding mode
        (`loaders/embedding.py`), opened on first use and closed with the model."""
        self._live()
        if self._embedder is None:
            self._embedder = LlamaCppEmbedder(self.name, self.path, n_gpu_layers=self.plan.n_gpu_layers if self.plan
                                              else 0, context_length=min(self.context_length, EMBEDDING_CONTEXT))
        return self._embedder.embed(texts)

    def unload(self) -> None:
        if self._embedder is not None:
            self._embedder.unload()
            self._embedder = None
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def _live(self) -> _Engine:
        if self.engine is None:
            raise ModelNotLoadedError(f"{self.name} was unloaded; load it again to generate.")
        return self.engine


# --- loading --------------------------------------------------------------------------------------------------------


load = loader_for_paths(LOADER_NAME)


def load_plan(plan: LoadPlan, settings: LlamaCppSettings, *, name: str) -> LlamaCppModel:
    """Carry out `plan`: its file, context per slot, slots, GPU layers and batch, with the threads and mmap options
    of `settings`."""
    gguf_path = plan.opens[0]
    threads = settings.threads or psutil.cpu_count(logical=False) or psutil.cpu_count() or 1
    offload = plan.n_gpu_layers != 0
    rss_before, vram_before = _rss(), (_vram_used() if offload else {})
    started = time.perf_counter()
    engine, params = _open(gguf_path, plan, settings, threads)
    load_seconds = time.perf_counter() - started
    memory = MemoryReport(
        ram_bytes=max(0, _rss() - rss_before),
        vram_bytes={i: max(0, used - vram_before.get(i, 0)) for i, used in (_vram_used() if offload else {}).items()},
    )
    logger.info("llama.cpp loaded %s in %.1fs (%d threads, %d slots of %d tokens)", gguf_path.name, load_seconds,
                threads, plan.slots, engine.decoder.n_ctx_seq)  # fmt: skip
    return LlamaCppModel(
        name=name,
        path=gguf_path,
        engine=engine,
        tokenizer=LlamaCppTokenizer.from_model(engine.model, owner=engine),
        context_length=engine.decoder.n_ctx_seq,
        device=_device(engine.model, plan.n_gpu_layers),
        load_seconds=load_seconds,
        memory=memory,
        slots=plan.slots,
        dtype=_kv_dtype(params),
        plan=plan,
    )


def _open(
    gguf_path: Path, plan: LoadPlan, settings: LlamaCppSettings, threads: int
) -> tuple[_Engine, llama_cpp.llama_context_params]:
    """The weights and a context of `plan.slots` sequences of `plan.context` tokens each; a file llama.cpp cannot
    read is a `ModelFormatError` naming it, a context it cannot make one saying why."""
    llama_cpp.llama_log_set(_log_to_python, ctypes.c_void_p(0))  # process-wide; idempotent
    llama_cpp.llama_backend_init()  # idempotent
    errors = _ErrorLines()
    logger.addHandler(errors)
    try:
        model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), _model_params(plan, settings))
        if not model:
            raise ModelFormatError(f"llama.cpp could not load this GGUF file: {_detail(errors)}", path=gguf_path)
        params = _context_params(plan, settings, threads)
        ctx = llama_cpp.llama_init_from_model(model, params)
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise ModelFormatError(f"llama.cpp could not make a context of {plan.slots} × {plan.context} tokens for "
                                   f"this model: {_detail(errors)}", path=gguf_path)  # fmt: skip
    finally:
        logger.removeHandler(errors)
    n_swa = llama_cpp.llama_model_n_swa(model)
    decoder = BatchDecoder(ctx, n_seq=plan.slots, n_batch=params.n_batch, n_swa=n_swa)
    return _Engine(model, ctx, decoder), params


def _model_params(plan: LoadPlan, settings: LlamaCppSettings) -> llama_cpp.llama_model_params:
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = plan.n_gpu_layers
    params.use_mmap = settings.use_mmap
    params.use_mlock = settings.use_mlock
    return params


def _context_params(plan: LoadPlan, settings: LlamaCppSettings, threads: int) -> llama_cpp.llama_context_params:
    params = llama_cpp.llama_context_default_params()
    # One KV stream per slot (kv_unified off): each sequence attends over its own `plan.context` cells only, which
    # is faster than one shared buffer when the sequences share no long prefix (llama.cpp PR 14363).
    params.n_ctx = plan.context * plan.slots
    params.n_seq_max = plan.slots
    params.kv_unified = False
    params.n_batch = max(plan.batch, plan.slots)  # one step holds a token of every slot
    params.n_ubatch = params.n_batch
    params.n_threads = params.n_threads_batch = threads
    params.rope_freq_base = settings.rope_freq_base
    params.rope_freq_scale = settings.rope_freq_scale
    # Off, as llama-cpp-python's `Llama` has it: the estimate prices the attention scores (KQ) this path keeps.
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    params.no_perf = True
    return params


def _detail(errors: _ErrorLines) -> str:
    return "; ".join(errors.lines[-3:]) or "see the log"


def _kv_dtype(params: llama_cpp.llama_context_params) -> str:
    """The KV cache's element type as llama.cpp was told it (f16 unless set otherwise), as a torch-style name."""
    names = {0: "float32", 1: "float16", 30: "bfloat16"}  # enum ggml_type
    return names.get(int(params.type_k), f"ggml type {params.type_k}")


def _device(model: llama_cpp.llama_model_p, n_gpu_layers: int) -> str:
    n_layers = llama_cpp.llama_model_n_layer(model)
    if n_gpu_layers == 0 or not llama_cpp.llama_supports_gpu_offload():
        if n_gpu_layers:
            logger.warning("n_gpu_layers=%d ignored: this llama-cpp-python build has no GPU support", n_gpu_layers)
        return "cpu"
    on_gpu = n_layers if n_gpu_layers < 0 else min(n_gpu_layers, n_layers)
    if on_gpu >= n_layers:
        return f"cuda:0 (all {n_layers} layers on GPU)"
    return f"cuda:0 + cpu ({on_gpu}/{n_layers} layers on GPU)"


def _rss() -> int:
    # With mmap, file pages count once touched: llama.cpp touches them while loading on CPU, so this is honest
    # right after load, and shared with the page cache (another process mapping the same file pays nothing more).
    return psutil.Process().memory_info().rss


def _vram_used() -> dict[int, int]:
    """Bytes used on each NVIDIA GPU, device-wide (llama.cpp allocates outside torch); {} without NVML."""
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return {}
    try:
        count = pynvml.nvmlDeviceGetCount()
        return {i: int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).used) for i in range(count)}
    finally:
        pynvml.nvmlShutdown()
