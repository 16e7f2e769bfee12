"""Generation service: runs the engine on the loaded model for one session at a time, with per-session Stop.

The UI (and later the API) call `stream(session, prompt, params)`; requests for the one loaded model queue on the
model lock in arrival order, and `stop(session)` cancels only that session's request, whether it is running or
still waiting. The engine does the token work; this module owns who may use the model and when.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

from loaders.base import GenerationParams, LoadedModel
from webui.engine import Generation, GenerationStats, generate
from webui.errors import ModelNotLoadedError


@dataclass(frozen=True)
class StreamUpdate:
    """The reply so far; `stats` is set on the last update."""

    text: str
    stats: GenerationStats | None = None


class GenerationService:
    def __init__(self, lock: threading.RLock, current_model) -> None:
        """`current_model()` returns the loaded model or None (the model service owns loading)."""
        self._lock = lock
        self._current_model = current_model
        self._cancel: dict[str, threading.Event] = {}
        self._cancel_guard = threading.Lock()

    def stream(self, session: str, prompt: str, params: GenerationParams) -> Iterator[StreamUpdate]:
        """Yield the growing reply. Raises `ModelNotLoadedError` when no model is loaded."""
        cancel = self._new_cancel_event(session)
        with self._lock:
            if cancel.is_set():
                return
            model = self._require_model()
            generation = generate(model, prompt, params, cancel=cancel)
            yield from self._updates(generation)

    def stop(self, session: str) -> None:
        with self._cancel_guard:
            event = self._cancel.get(session)
        if event is not None:
            event.set()

    def count_tokens(self, text: str) -> int:
        from webui.engine import count_tokens

        return count_tokens(self._require_model(), text)

    def _updates(self, generation: Generation) -> Iterator[StreamUpdate]:
        for _delta in generation:
            yield StreamUpdate(generation.text)
        yield StreamUpdate(generation.text, generation.stats)

    def _require_model(self) -> LoadedModel:
        model = self._current_model()
        if model is None:
            raise ModelNotLoadedError("No model is loaded. Pick one in the Model tab and click Load.")
        return model

    def _new_cancel_event(self, session: str) -> threading.Event:
        event = threading.Event()
        with self._cancel_guard:
            self._cancel[session] = event
        return event
