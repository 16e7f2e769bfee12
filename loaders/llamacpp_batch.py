"""Continuous batching on one llama.cpp context: several requests decoded together, each in its own sequence (its
own KV cache of `n_ctx_seq` tokens), and the prompt prefix each sequence already holds reused.

`BatchDecoder` owns the context's sequences and one decode thread. A request (`generate`, iterated in its caller's
thread) waits for a free sequence; then each step of the thread puts the next token of every request that is
replying and a chunk of the prompts still being read into one `llama_batch` (continuous batching, as llama.cpp's own
server does), runs `llama_decode` once, and samples each replying request's next token with that request's own
sampler chain (its samplers, seed and penalties). Requests join and leave between steps. A request whose `cancel`
is set, or whose generator is closed, leaves at the next step; closing the generator returns only once it has left,
so its sequence and its sampler are free the moment the caller is done.

Prefix reuse: each sequence remembers the tokens its KV cache holds. A request takes the free sequence sharing the
longest prefix with its prompt when that prefix is at least as long as what it would drop (the next turn of a chat,
a regenerate, a continue); otherwise the least recently used one, so an unrelated request does not evict a chat's
history. It keeps the shared prefix and reads only the rest, and at least its last token, whose logits start the
reply. llama.cpp decides whether a cache can be cut (`llama_memory_seq_rm`): a recurrent model's cannot, and a
sliding-window cache that no longer holds the window before the cut is read again from the start.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import llama_cpp

from loaders.base import DecodeInfo
from loaders.errors import GenerationError, ModelNotLoadedError

logger = logging.getLogger(__name__)

_END = object()  # a request's last item: the reply is over


class Sampler(Protocol):
    def sample(self, ctx: llama_cpp.llama_context_p, index: int) -> int:
        """The next token from the logits of batch entry `index` (and remember it, for the penalties)."""
        ...

    @property
    def finished(self) -> bool:
        """True once nothing but the end of the reply may follow (a structured-output grammar is complete)."""
        ...


@dataclass(eq=False)
class _Sequence:
    """One KV cache stream of the context (one slot): the tokens it holds, in order."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    last_used: int = 0  # 0 = never: an empty sequence is the least recently used
    busy: bool = False


@dataclass(eq=False)
class _Request:
    prompt: list[int]
    sampler: Sampler
    budget: int  # tokens to produce at most
    stop_ids: frozenset[int]
    cancel: threading.Event
    info: DecodeInfo
    out: queue.SimpleQueue[object] = field(default_factory=queue.SimpleQueue)  # tokens, then _END or an error
    left: threading.Event = field(default_factory=threading.Event)  # set once the decoder has let go of it
    abandoned: bool = False  # the caller closed its generator
    seq: _Sequence | None = None
    read: int = 0  # prompt tokens in the sequence's cache
    produced: int = 0
    pending: int | None = None  # the last token produced, fed to the model by the next step

    @property
    def leaving(self) -> bool:
        return self.abandoned or self.cancel.is_set()


class BatchDecoder:
    """The sequences of one llama.cpp context and the thread that decodes them together. `close()` before the
    context is freed."""

    def __init__(self, ctx: llama_cpp.llama_context_p, *, n_seq: int, n_batch: int, n_swa: int = 0) -> None:
        self._ctx = ctx
        self._memory = llama_cpp.llama_get_memory(ctx)
        self.n_ctx_seq = int(llama_cpp.llama_n_ctx_seq(ctx))
        self._n_batch = n_batch
        self._n_swa = n_swa  # a sliding-window model keeps only the last n_swa positions of each sequence
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._sequences = [_Sequence(i) for i in range(n_seq)]
        self._waiting: deque[_Request] = deque()
        self._active: list[_Request] = []
        self._cond = threading.Condition()
        self._closed = False
        self._failure: Exception | None = None  # why the decode thread stopped, when it was not `close()`
        self._clock = itertools.count(1)
        self._thread = threading.Thread(target=self._run, name="llama.cpp-batch", daemon=True)
        self._thread.start()

    # --- the callers' side ---------------------------------------------------------------------------------------

    def generate(
        self, prompt: Sequence[int], sampler: Sampler, *, budget: int, stop_ids: frozenset[int],
        cancel: threading.Event, info: DecodeInfo,
    ) -> Iterator[int]:
        """The reply's tokens as the decode thread produces them; a stop id ends it (not yielded)."""
        request = _Request(list(prompt), sampler, budget, stop_ids, cancel, info)
        with self._cond:
            if self._failure is not None:
                raise self._failure
            if self._closed:
                raise ModelNotLoadedError("The model was unloaded; load it again to generate.")
            self._waiting.append(request)
            self._cond.notify_all()
        try:
            while (item := request.out.get()) is not _END and not cancel.is_set():  # none once cancelled
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            with self._cond:
                request.abandoned = True
                self._cond.notify_all()
            while not request.left.wait(1.0) and self._thread.is_alive():
                pass  # within one step: then nothing touches its sampler or its sequence

    def forget(self) -> None:
        """Drop every cached prefix (benchmarks and tests that want a cold start). Only while nothing runs."""
        with self._cond:
            if self._active or self._waiting:
                raise GenerationError("The cached prompts cannot be dropped while requests are running.")
            llama_cpp.llama_memory_clear(self._memory, True)
            for sequence in self._sequences:
                sequence.tokens.clear()

    def close(self) -> None:
        """Stop the thread; requests still running end with `ModelNotLoadedError`."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        llama_cpp.llama_batch_free(self._batch)

    # --- the decode thread ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._closed and not (self._active or self._waiting):
                        self._cond.wait()
                    if self._closed:
                        return
                    self._drop_leaving()
                    self._seat_waiting()
                    running = list(self._active)
                if running:
                    self._step(running)
        except Exception as error:  # a bug: every request hears of it rather than waiting forever
            logger.exception("The llama.cpp decode thread failed")
            self._failure = GenerationError(f"llama.cpp failed while decoding ({error}); load the model again.")
            self._end_all(self._failure)
        finally:
            self._end_all(ModelNotLoadedError("The model was unloaded while it generated; load it again."))

    def _drop_leaving(self) -> None:
        for request in [r for r in self._waiting if r.leaving]:
            self._waiting.remove(request)
            self._finish(request)
        for request in [r for r in self._active if r.leaving]:
            self._finish(request)

    def _seat_waiting(self) -> None:
        """Give waiting requests free sequences, first come first served, keeping what each can reuse."""
        while self._waiting:
            free = [s for s in self._sequences if not s.busy]
            if not free:
                return
            request = self._waiting.popleft()
            sequence, keep = self._choose(free, request.prompt)
            keep = self._cut(sequence, keep)
            sequence.busy = True
            request.seq, request.read = sequence, keep
            request.info.cached_tokens = keep
            self._active.append(request)

    def _choose(self, free: list[_Sequence], prompt: list[int]) -> tuple[_Sequence, int]:
        """The sequence for `prompt` and how many of its tokens to keep (see the module's docstring)."""
        shared = {id(s): min(_common_prefix(s.tokens, prompt), len(prompt) - 1) for s in free}
        best = max(free, key=lambda s: (shared[id(s)], s.last_used))
        if shared[id(best)] > 0 and shared[id(best)] >= len(best.tokens) - shared[id(best)]:
            return best, shared[id(best)]
        oldest = min(free, key=lambda s: s.last_used)
        return oldest, shared[id(oldest)]

    def _cut(self, sequence: _Sequence, keep: int) -> int:
        """Drop the sequence's cache after `keep` tokens; the tokens really kept (0 when it cannot be cut)."""
        if keep and self._n_swa:
            oldest = llama_cpp.llama_memory_seq_pos_min(self._memory, sequence.seq_id)
            if oldest > max(0, keep - self._n_swa):  # the window before `keep` is gone: read it all again
                keep = 0
        if keep < len(sequence.tokens) and not llama_cpp.llama_memory_seq_rm(self._memory, sequence.seq_id, keep, -1):
            keep = 0
        if keep == 0:
            llama_cpp.llama_memory_seq_rm(self._memory, sequence.seq_id, -1, -1)  # a whole sequence always goes
        del sequence.tokens[keep:]
        return keep

    def _step(self, running: list[_Request]) -> None:
        """One `llama_decode`: the next token of every replying request, then prompt chunks while there is room."""
        fed: list[tuple[_Request, list[int]]] = []  # (request, tokens put in the batch)
        outputs: list[tuple[_Request, int]] = []  # requests to sample, and their logits' index in the batch
        n = 0
        for request in running:
            if request.pending is not None:
                outputs.append((request, n))
                n = self._put(n, [request.pending], request, logits_last=True)
                fed.append((request, [request.pending]))
        for request in running:
            room = self._n_batch - n
            if request.pending is not None or request.read >= len(request.prompt) or room <= 0:
                continue
            chunk = request.prompt[request.read : request.read + room]
            done = request.read + len(chunk) == len(request.prompt)
            if done:
                outputs.append((request, n + len(chunk) - 1))
            n = self._put(n, chunk, request, logits_last=done)
            fed.append((request, chunk))
        self._batch.n_tokens = n
        status = llama_cpp.llama_decode(self._ctx, self._batch)
        if status != 0:
            self._fail([r for r, _ in fed], status)
            return
        for request, tokens in fed:
            request.seq.tokens.extend(tokens)
            if request.pending is None:
                request.read += len(tokens)
            request.pending = None
        for request, index in outputs:
            self._deliver(request, request.sampler.sample(self._ctx, index))

    def _put(self, n: int, tokens: list[int], request: _Request, *, logits_last: bool) -> int:
        """Write `tokens` of `request` into the batch from entry `n`; the next free entry."""
        batch, seq_id, pos = self._batch, request.seq.seq_id, len(request.seq.tokens)
        for i, token in enumerate(tokens):
            batch.token[n + i] = token
            batch.pos[n + i] = pos + i
            batch.n_seq_id[n + i] = 1
            batch.seq_id[n + i][0] = seq_id
            batch.logits[n + i] = False
        if logits_last:
            batch.logits[n + len(tokens) - 1] = True
        return n + len(tokens)

    def _deliver(self, request: _Request, token: int) -> None:
        if token in request.stop_ids:
            self._finish(request)
            return
        request.out.put(token)
        request.produced += 1
        if request.produced >= request.budget or request.sampler.finished:
            self._finish(request)  # the last token is never fed: nothing will read its logits
        else:
            request.pending = token

    def _fail(self, requests: list[_Request], status: int) -> None:
        """`llama_decode` refused the batch: those requests end with an error and their caches are dropped."""
        logger.error("llama_decode returned %d for a batch of %d requests", status, len(requests))
        error = GenerationError(f"llama.cpp could not decode (status {status}): the reply was cut short.")
        for request in requests:
            llama_cpp.llama_memory_seq_rm(self._memory, request.seq.seq_id, -1, -1)
            request.seq.tokens.clear()
            request.out.put(error)
            self._finish(request)

    def _finish(self, request: _Request) -> None:
        with self._cond:
            if request in self._active:
                self._active.remove(request)
            if request.seq is not None:
                request.seq.busy = False
                request.seq.last_used = next(self._clock)
        request.out.put(_END)
        request.left.set()

    def _end_all(self, error: Exception) -> None:
        with self._cond:
            self._closed = True
            ending = [*self._waiting, *self._active]
            self._waiting.clear()
        for request in ending:
            if not request.left.is_set():
                request.out.put(error)
                self._finish(request)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # the usual case (the next turn of a chat): one comparison in C
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]: bisect with slice comparisons
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if a[lo:mid] == b[lo:mid] else (lo, mid)
    return lo

