"""Continuous batching and prefix reuse for the PyTorch backends: many `generate_tokens` calls share one model.

Every call becomes a `Request` with its own samplers, seed, budget and output queue. Requests join the batch
between decode steps (their prompt is prefilled into a free cache row, their first token sampled) and leave it the
step after they end (EOS, budget, cancel, or the consumer closing its generator), so a cancelled request frees its
row within one step. One decode step feeds every live row its last token at once.

There is no background thread: whichever consumer needs a token and finds nobody stepping runs the next step for
everyone (admit, decode, retire) and the others wait on a condition. Nothing outlives the consumers, and a
suspended consumer only stops collecting its own tokens.

Rows. Live requests sit in rows 0..n-1 (attention reads a view of those rows, never a gathered copy); rows n.. are
free but keep the last sequence they held. A new request takes the free row whose sequence shares the longest
prefix with its prompt (the least recently used one on ties) and, if another row shares a longer prefix (a live
request with the same system prompt), first copies that prefix over; only the rest of the prompt is computed
(`DecodeInfo.cached_tokens`). Rows are swapped to keep the live ones in front: a swap copies two sequences once per
request, while reading rows in place saves a copy of every live row's keys at every step.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from loaders.base import DecodeInfo, GenerationParams, TokenLogprob
from loaders.compute_thread import ComputeThread
from loaders.constraints import TokenConstraint
from loaders.decode_step import Runner
from loaders.errors import GenerationError, ModelNotLoadedError
from loaders.sampling import next_tokens, select_next

_END = object()  # put in a request's queue after its last token


@dataclass(eq=False)
class Request:
    """One `generate_tokens` call in flight. The consumer reads `out`; the stepping thread does the rest."""

    prompt: list[int]
    params: GenerationParams
    cancel: threading.Event
    info: DecodeInfo
    budget: int  # tokens it may still yield (max_new_tokens, capped by the context)
    stop_ids: frozenset[int]
    context: torch.Tensor  # [prompt + budget] long on the model's device: what the penalties look at
    generator: torch.Generator
    constraint: TokenConstraint | None = None  # the request's grammar (structured output), advanced on each token
    sequence: list[int] = field(default_factory=list)  # prompt + sampled tokens (not EOS)
    fed: int = 0  # tokens of `sequence` whose keys/values sit in the row
    produced: int = 0
    done: bool = False
    closed: bool = False  # the consumer stopped reading
    out: deque = field(default_factory=deque)

    @property
    def stopped(self) -> bool:
        return self.done or self.closed or self.cancel.is_set()


@dataclass
class _Row:
    tokens: list[int] = field(default_factory=list)  # the sequence whose keys/values the row holds (free rows)
    used: int = 0  # when it last served a request (least recently used goes first)


class Batcher:
    """The requests of one model and the rows of its cache."""

    def __init__(self, runner: Runner, *, device: torch.device, eos_ids: tuple[int, ...]) -> None:
        self.runner: Runner | None = runner
        self.device = device
        self.eos_ids = eos_ids
        self.rows = [_Row() for _ in range(runner.rows)]
        self.live: list[Request] = []  # live[i] sits in row i
        self.pending: deque[Request] = deque()
        self._cond = threading.Condition()
        self._stepping = False
        self._tick = 0
        self.compute: ComputeThread | None = None  # where steps run (`loaders.compute_thread`); else the caller
        self.closed_reason = ""  # set when the model is unloaded

    # --- consumers ---------------------------------------------------------------------------------------------------

    def stream(self, request: Request) -> Iterator[int]:
        """The request's tokens, stepping the batch whenever nobody else does."""
        with self._cond:
            if self.closed_reason:
                raise ModelNotLoadedError(self.closed_reason)
            self.pending.append(request)
        try:
            while True:
                item = self._next_item(request)
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            request.closed = True

    def _next_item(self, request: Request) -> object:
        while True:
            with self._cond:
                if request.out:
                    return request.out.popleft()
                if self._stepping:
                    self._cond.wait()
                    continue
                self._stepping = True
            try:
                if self.compute is not None:
                    self.compute.run(self.step)
                else:
                    self.step()
            finally:
                with self._cond:
                    self._stepping = False
                    self._cond.notify_all()

    def close(self, reason: str) -> None:
        """No more requests; those in flight end with `ModelNotLoadedError(reason)` at their next token. Waits for
        a step in progress, then lets go of the runner (and so of the model and its cache)."""
        with self._cond:
            self.closed_reason = reason
            while self._stepping:
                self._cond.wait()
            for request in [*self.live, *self.pending]:
                request.out.append(ModelNotLoadedError(reason))
                request.done = True
            self.live.clear()
            self.pending.clear()
            self.runner = None
            self._cond.notify_all()

    def forget(self) -> None:
        """Drop what every row holds (the model's layers changed); only between requests."""
        with self._cond:
            if self.live or self.pending or self._stepping:
                raise GenerationError("The cached prompts cannot be dropped while requests are running.")
            self.rows = [_Row() for _ in self.rows]

    # --- one step for everyone ----------------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> None:
        """Retire what ended, admit what waits (prefill + first token), then one decode step for the live rows."""
        if self.device.type == "cuda":  # any consumer thread may step: kernels go to the model's GPU, not the thread's
            with torch.cuda.device(self.device):
                self._step()
        else:
            self._step()

    def _step(self) -> None:
        self._retire()
        for request in self._admissible():
            self._admit(request)
        self._retire()
        if self.live:
            self._decode()
        self._retire()

    def _admissible(self) -> list[Request]:
        with self._cond:
            taken = []
            while self.pending and len(self.live) + len(taken) < len(self.rows):
                request = self.pending.popleft()
                if request.stopped:
                    request.out.append(_END)
                else:
                    taken.append(request)
            return taken

    def _admit(self, request: Request) -> None:
        row = len(self.live)
        try:
            reuse = self._place(request.prompt, row)
            logits = self.runner.prefill(row, request.prompt[reuse:], reuse)
        except Exception as error:  # noqa: BLE001 -- handed to this request's consumer, who raises it
            self.rows[row].tokens = []  # what the row holds is unknown now
            request.out.append(error)
            request.done = True
            return
        request.info.cached_tokens = reuse
        request.sequence = list(request.prompt)
        request.fed = len(request.prompt)
        self.live.append(request)
        self._deliver([request], logits[None])

    def _decode(self) -> None:
        live = self.live
        try:
            logits = self.runner.decode([r.sequence[r.fed] for r in live], [r.fed for r in live])
        except Exception as error:  # noqa: BLE001 -- every live request fails with it; the model stays usable
            for index, request in enumerate(live):
                request.out.append(error)
                request.done = True
                self.rows[index].tokens = []
            self._wake()
            return
        for request in live:
            request.fed += 1
        self._deliver(live, logits)

    def _deliver(self, requests: list[Request], logits: torch.Tensor) -> None:
        """Sample one token per request (one host sync for the plain ones; a request with a grammar or asking for
        log-probabilities goes through `select_next`), hand it over, end those that are done."""
        chosen: list[int] = [0] * len(requests)
        logprobs: list[TokenLogprob | None] = [None] * len(requests)
        plain = [i for i, r in enumerate(requests) if r.constraint is None and r.params.logprobs is None]
        if plain:
            contexts = [requests[i].context[: len(requests[i].sequence)] for i in plain]
            picked = next_tokens(logits[plain] if len(plain) < len(requests) else logits, contexts,
                                 [requests[i].params for i in plain], [requests[i].generator for i in plain],
                                 eos_ids=self.eos_ids).tolist()  # fmt: skip
            for i, token in zip(plain, picked, strict=True):
                chosen[i] = token
        for i in (i for i in range(len(requests)) if i not in plain):
            r = requests[i]
            chosen[i], logprobs[i] = select_next(logits[i], r.context[: len(r.sequence)], r.params, r.generator,
                                                 eos_ids=self.eos_ids, constraint=r.constraint)  # fmt: skip
        for request, token, logprob in zip(requests, chosen, logprobs, strict=True):
            if token in request.stop_ids:
                request.done = True
                request.out.append(_END)
                continue
            if logprob is not None:
                request.info.logprobs.append(logprob)  # before the token: the engine reads it as the token arrives
            request.context[len(request.sequence)] = token
            request.sequence.append(token)
            request.produced += 1
            request.out.append(token)
            finished = request.constraint is not None and request.constraint.finished  # only the end could follow
            if request.produced >= request.budget or finished:  # the last token is never fed: nothing reads its logits
                request.done = True
                request.out.append(_END)
        self._wake()

    def _retire(self) -> None:
        """Drop ended requests from the live rows; the last live row moves into the hole."""
        index = 0
        while index < len(self.live):
            request = self.live[index]
            if not request.stopped:
                index += 1
                continue
            if not request.done:  # cancelled or closed: end its stream
                request.done = True
                request.out.append(_END)
            self._tick += 1
            self.rows[index] = _Row(request.sequence[: request.fed], self._tick)
            last = len(self.live) - 1
            self._swap(index, last)
            self.live[index] = self.live[last]
            self.live.pop()
        self._wake()

    # --- rows ---------------------------------------------------------------------------------------------------------

    def _place(self, prompt: list[int], row: int) -> int:
        """Put into `row` the free row sharing the longest prefix with `prompt` (copying a longer one from any row);
        the number of prompt tokens whose keys/values are then in place (at least one token is left to run)."""
        if not self.runner.reuses:
            return 0
        shared = [_common_prefix(self._held(i), prompt) for i in range(len(self.rows))]
        target = max(range(row, len(self.rows)), key=lambda i: (shared[i], -self.rows[i].used))
        source = max(range(len(self.rows)), key=lambda i: shared[i])
        keep = shared[target]
        if shared[source] > keep:
            self.runner.move(source, target, shared[source])
            keep = shared[source]
            self.rows[target] = _Row(prompt[:keep], self.rows[target].used)
        self._swap(target, row)
        self.rows[row].tokens = prompt  # positions past the reused prefix are written by the prefill
        return min(keep, len(prompt) - 1)

    def _held(self, index: int) -> list[int]:
        if index < len(self.live):
            request = self.live[index]
            return request.sequence[: request.fed]
        return self.rows[index].tokens

    def _swap(self, a: int, b: int) -> None:
        if a == b:
            return
        self.runner.swap(a, b, len(self._held(a)), len(self._held(b)))
        self.rows[a], self.rows[b] = self.rows[b], self.rows[a]

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def reply_budget(prompt_len: int, max_new_tokens: int, context: int) -> int:
    """Tokens a reply may have: `max_new_tokens`, capped by what the context leaves; `GenerationError` when the
    prompt leaves no room."""
    if prompt_len >= context:
        raise GenerationError(
            f"The prompt is {prompt_len} tokens but the model was loaded with a context of {context}. Shorten the "
            "prompt, lower 'truncation_length', or reload with a larger context."
        )
    return min(max_new_tokens, context - prompt_len)
