"""Generation service: runs the engine on the loaded model for one request at a time, with per-session Stop.

The UI and the API call `stream(session, prompt, params)`. Requests for the one loaded model are served first come,
first served (`FairGate`: a plain lock lets any waiter win, so a busy API could starve a UI user), then take the
model lock, which load/unload also hold. `stop(session)` cancels only that session's request, whether it is running
or still waiting in line. The engine does the token work; this module owns who may use the model and when.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from loaders.base import GenerationParams, LoadedModel
from loaders.errors import ModelNotLoadedError
from webui.engine import Generation, GenerationStats, generate

WAIT_POLL_SECONDS = 0.05  # how often a waiter re-checks its cancel event (Stop while queued)


@dataclass(frozen=True)
class StreamUpdate:
    """The reply so far; `stats` is set on the last update."""

    text: str
    stats: GenerationStats | None = None


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
    def __init__(self, lock: threading.RLock, current_model: Callable[[], LoadedModel | None]) -> None:
        """`current_model()` returns the loaded model or None (the model service owns loading)."""
        self._lock = lock
        self._current_model = current_model
        self._gate = FairGate()
        self._cancel: dict[str, threading.Event] = {}
        self._cancel_guard = threading.Lock()

    def stream(
        self,
        session: str,
        prompt: str,
        params: GenerationParams,
        *,
        check: Callable[[LoadedModel], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[StreamUpdate]:
        """Yield the growing reply. Raises `ModelNotLoadedError` when no model is loaded. `check(model)` runs once
        the request's turn has come, before generating (the API refuses prompts longer than the context there).
        `cancel`: the caller's own event (set it, or call `stop(session)`, to end the request)."""
        cancel = self._register(session, cancel or threading.Event())
        try:
            if not self._gate.enter(cancel):
                return
            try:
                with self._lock:
                    if cancel.is_set():
                        return
                    model = self._require_model()
                    if check is not None:
                        check(model)
                    generation = generate(model, prompt, params, cancel=cancel)
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
        from webui.engine import count_tokens

        return count_tokens(self._require_model(), text)

    @property
    def waiting(self) -> int:
        """Requests in line for the model (not counting the one running)."""
        return self._gate.waiting

    def _updates(self, generation: Generation) -> Iterator[StreamUpdate]:
        for _delta in generation:
            yield StreamUpdate(generation.text)
        yield StreamUpdate(generation.text, generation.stats)

    def _require_model(self) -> LoadedModel:
        model = self._current_model()
        if model is None:
            raise ModelNotLoadedError("No model is loaded. Pick one in the Model tab and click Load.")
        return model

    def _register(self, session: str, event: threading.Event) -> threading.Event:
        with self._cancel_guard:
            self._cancel[session] = event
        return event

    def _forget(self, session: str, event: threading.Event) -> None:
        """Drop the session's event once its request is over (API sessions are one per request)."""
        with self._cancel_guard:
            if self._cancel.get(session) is event:
                del self._cancel[session]
