"""Generation service: runs the engine on the loaded model for one request at a time, with per-session Stop.

The UI, the API and the CLI call `stream(session, build)`. Requests for the one loaded model are served first come,
first served (`FairGate`: a plain lock lets any waiter win, so a busy API could starve a UI user), then take the
model lock, which load/unload also hold. Only then is the request's `Turn` (prompt and parameters) built, by
`build(info)` from the `LoadedInfo` of the model that will run it: a load that finished while the request waited
gives the new model its own template, BOS and stops, never the old model's. `stop(session)` cancels only that
session's request, whether it is running or still waiting in line. The engine does the token work; this module owns
who may use the model and when. Each update costs O(1): it carries the engine's text and the new delta, no copies.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loaders.base import DecodeInfo, GenerationParams
from loaders.errors import ModelNotLoadedError
from webui.engine import Generation, GenerationStats, count_tokens, generate

if TYPE_CHECKING:
    from webui.model_service import LoadedInfo

WAIT_POLL_SECONDS = 0.05  # how often a waiter re-checks its cancel event (Stop while queued)


@dataclass(frozen=True)
class StreamUpdate:
    """The reply so far and what this update added; `stats` is set on the last update."""

    text: str
    stats: GenerationStats | None = None
    delta: str = ""
    decode: DecodeInfo | None = None  # what the backend reports as it goes (log-probabilities: `DecodeInfo.logprobs`)


@dataclass(frozen=True)
class Turn:
    """What one request runs: the exact prompt and its parameters (stop strings included)."""

    prompt: str
    params: GenerationParams


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


class FairGate:
    """One holder at a time, waiters admitted in arrival order; a waiter whose cancel event is set leaves the line."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._line: deque[object] = deque()
        self._held = False

    def enter(self, cancel: threading.Event) -> bool:
        """Wait for our turn; False (and out of the line) if `cancel` is set first."""
        ticket = object()
        with self._cond:
            self._line.append(ticket)
            try:
                while self._held or self._line[0] is not ticket:
                    if cancel.is_set():
                        return False
                    self._cond.wait(WAIT_POLL_SECONDS)
                self._held = True
                return True
            finally:
                self._line.remove(ticket)
                self._cond.notify_all()

    def leave(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._line)


class GenerationService:
    def __init__(self, lock: threading.RLock, current: Callable[[], LoadedInfo | None]) -> None:
        """`current()` returns the loaded model's `LoadedInfo` or None (the model service owns loading)."""
        self._lock = lock
        self._current = current
        self._gate = FairGate()
        self._cancel: dict[str, threading.Event] = {}
        self._cancel_guard = threading.Lock()

    def stream(
        self, session: str, build: TurnBuilder, *, cancel: threading.Event | None = None
    ) -> Iterator[StreamUpdate]:
        """Yield the growing reply. Raises `ModelNotLoadedError` when no model is loaded. `build(info)` makes the
        prompt and parameters once the request's turn has come, under the model lock, from the model that will run
        them; whatever it raises ends the request (the API refuses prompts longer than the context there).
        `cancel`: the caller's own event (set it, or call `stop(session)`, to end the request)."""
        cancel = self._register(session, cancel or threading.Event())
        try:
            if not self._gate.enter(cancel):
                return
            try:
                with self._lock:
                    if cancel.is_set():
                        return
                    info = self._require_info()
                    turn = build(info)
                    generation = generate(info.model, turn.prompt, turn.params, cancel=cancel)
                    yield from self._updates(generation)
            finally:
                self._gate.leave()
        finally:
            self._forget(session, cancel)

    def stop(self, session: str) -> None:
        with self._cancel_guard:
            event = self._cancel.get(session)
        if event is not None:
            event.set()

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` on the loaded model; `GenerationError` for a model without token ids."""
        return count_tokens(self._require_info().model, text)

    @property
    def waiting(self) -> int:
        """Requests in line for the model (not counting the one running)."""
        return self._gate.waiting

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
            self._cancel[session] = event
        return event

    def _forget(self, session: str, event: threading.Event) -> None:
        """Drop the session's event once its request is over (API sessions are one per request)."""
        with self._cancel_guard:
            if self._cancel.get(session) is event:
                del self._cancel[session]
