"""Generation service: runs the engine on the loaded model for up to `model.slots` requests at once, with
per-session Stop.

The UI, the API and the CLI call `stream(session, build)`. Requests line up at the `ModelGate` (first come, first
served: a plain lock lets any waiter win, so a busy API could starve a UI user) and are admitted while fewer than
the model's `slots` run and no load or unload is under way; each reports its place in line while it waits. Only
once admitted is the request's `Turn` (prompt and parameters) built, by `build(info)` from the `LoadedInfo` of the
model that will run it: a load that finished while the request waited gives the new model its own template, BOS
and stops, never the old model's. Each admitted request runs the engine in its caller's thread; the backend decodes
the running ones together (continuous batching) and frees a request's slot within one step of its Stop, its
cancel, or its caller closing the stream. `stop(session)` ends that session's requests, running or in line. Each
update costs O(1): it carries the engine's text and the new delta, no copies.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loaders.base import DecodeInfo, GenerationParams
from loaders.errors import ModelNotLoadedError
from webui.engine import (
    Generation,
    GenerationStats,
    count_tokens,
    describe_stats,
    generate,
    generate_ids,
    is_token_model,
)
from webui.model_gate import ModelGate

if TYPE_CHECKING:
    from webui.model_service import LoadedInfo

WAIT_POLL_SECONDS = 0.05  # how often a request in line re-checks its cancel event (Stop while queued)


@dataclass(frozen=True)
class StreamUpdate:
    """The reply so far and what this update added; `stats` is set on the last update. While the request waits in
    line, `queued` is its place (1 = next) and the text is empty."""

    text: str
    stats: GenerationStats | None = None
    delta: str = ""
    queued: int = 0
    decode: DecodeInfo | None = None  # what the backend reports as it goes (log-probabilities: `DecodeInfo.logprobs`)


@dataclass(frozen=True)
class Turn:
    """What one request runs: the exact prompt and its parameters (stop strings included). `prompt_ids`, when set,
    are the prompt's tokens as built (infilling puts special tokens by id): they are run as they are, and `prompt`
    is only the prompt written out."""

    prompt: str
    params: GenerationParams
    prompt_ids: tuple[int, ...] | None = None


TurnBuilder = Callable[["LoadedInfo"], Turn]  # called once the request's turn has come, with the model that runs it


def raw_turn(prompt: str, params: GenerationParams) -> TurnBuilder:
    """A prompt sent as written, whatever the model (Notebook, raw completions, the CLI without --chat)."""
    return lambda _info: Turn(prompt, params)


class Pacer:
    """At most one "yes" per `seconds` while a reply streams (saving the chat, refreshing a browser)."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._last = time.monotonic()  # the caller has just done the thing (saved, shown) when it starts

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._last < self._seconds:
            return False
        self._last = now
        return True


def _start(info: LoadedInfo, turn: Turn, cancel: threading.Event) -> Generation:
    if turn.prompt_ids is not None:
        return generate_ids(info.model, turn.prompt_ids, turn.params, cancel=cancel)
    return generate(info.model, turn.prompt, turn.params, cancel=cancel)


class GenerationService:
    def __init__(self, gate: ModelGate, current: Callable[[], LoadedInfo | None]) -> None:
        """`current()` returns the loaded model's `LoadedInfo` or None (the model service owns loading and holds
        `gate` exclusive while it does)."""
        self._gate = gate
        self._current = current
        self._cancel: dict[str, set[threading.Event]] = {}
        self._cancel_guard = threading.Lock()

    def stream(
        self, session: str, build: TurnBuilder, *, cancel: threading.Event | None = None
    ) -> Iterator[StreamUpdate]:
        """Yield the growing reply; while the request waits in line, updates with `queued` (its place, 1 = next)
        each time that changes. Raises `ModelNotLoadedError` when no model is loaded. `build(info)` makes the prompt
        and parameters once the request's turn has come, from the model that will run them; whatever it raises
        ends the request (the API refuses prompts longer than the context there). `cancel`: the caller's own event
        (set it, or call `stop(session)`, to end the request)."""
        cancel = self._register(session, cancel or threading.Event())
        try:
            if not (yield from self._wait_turn(cancel)):
                return
            try:
                if cancel.is_set():  # stopped just as its turn came
                    return
                info = self._require_info()
                turn = build(info)
                generation = _start(info, turn, cancel)
                yield from self._updates(generation)
            finally:
                self._gate.leave()
        finally:
            self._forget(session, cancel)

    def stop(self, session: str) -> None:
        """End every request of `session`, running or waiting in line."""
        with self._cancel_guard:
            events = list(self._cancel.get(session, ()))
        for event in events:
            event.set()

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` on the loaded model; `GenerationError` for a model without token ids."""
        return count_tokens(self._require_info().model, text)

    @property
    def waiting(self) -> int:
        """Requests in line for the model (not counting those running)."""
        return self._gate.waiting

    @property
    def running(self) -> int:
        """Requests being decoded now (at most the model's `slots`)."""
        return self._gate.running

    def slots(self) -> int:
        """How many requests the loaded model decodes at once (1 without a model, and for a remote engine, which
        keeps its own line)."""
        info = self._current()
        return info.model.slots if info is not None and is_token_model(info.model) else 1

    def _wait_turn(self, cancel: threading.Event) -> Generator[StreamUpdate, None, bool]:
        """Wait in line, yielding the place each time it changes; True once the request runs (the caller must
        `leave`), False if it was cancelled first. Leaving the line also happens when the caller stops iterating."""
        ticket = self._gate.line_up()
        admitted = False
        try:
            place = 0
            while not cancel.is_set():
                now = self._gate.wait(ticket, self.slots, WAIT_POLL_SECONDS)
                if now == 0:
                    admitted = True
                    return True
                if now != place:
                    place = now
                    yield StreamUpdate("", queued=place)
            return False
        finally:
            if not admitted:
                self._gate.leave_line(ticket)

    def _updates(self, generation: Generation) -> Iterator[StreamUpdate]:
        for delta in generation:
            yield StreamUpdate(generation.text, delta=delta, decode=generation.decode_info)
        yield StreamUpdate(generation.text, generation.stats, decode=generation.decode_info)

    def _require_info(self) -> LoadedInfo:
        info = self._current()
        if info is None:
            raise ModelNotLoadedError("No model is loaded. Pick one in the Model tab and click Load.")
        return info

    def _register(self, session: str, event: threading.Event) -> threading.Event:
        with self._cancel_guard:
            self._cancel.setdefault(session, set()).add(event)
        return event

    def _forget(self, session: str, event: threading.Event) -> None:
        """Drop the request's event once it is over (API sessions are one per request)."""
        with self._cancel_guard:
            events = self._cancel.get(session)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._cancel[session]


def status_text(update: StreamUpdate) -> str:
    """The status line of a streaming reply, for every front end: the place in line while it waits, the
    statistics at the end (prompt tokens reused from the cache included), "Generating…" in between."""
    if update.stats is not None:
        return describe_stats(update.stats)
    if update.queued:
        return f"Waiting for the model: {_ordinal(update.queued)} in line."
    return "Generating…"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
