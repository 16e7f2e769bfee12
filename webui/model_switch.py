"""Models on demand for the API: which model a request runs on, loading it when allowed, and the idle unload.

A request names a model (`model`: a folder under models/ or a remote engine of models/remote.yaml; empty = the
loaded one) and may ask for a context size (`num_ctx` / `max_context`). `ModelSwitcher.check` refuses at once what
can never run (an unknown name; another model when loads are not allowed); `stream` then runs the request:

- While a load is under way (from the UI, the load route or another request), it waits for it, up to
  `AppConfig.load_wait_seconds`, instead of failing.
- If the model is not the loaded one, it loads it through `ModelService.load` (the settings saved for it, and only
  when the memory estimate fits), when `allow_loads` is on (`--api-load-models`, or the Model tab's switch) — or
  when it is the model the idle unload took away, which comes back on the next request for it. A request that asks
  for more context than the loaded model has reloads it with that context (the same settings otherwise), within the
  model's trained context; less context only limits that request.
- Loads are one at a time: the request that loaded a model keeps the switch until its turn is built on that model,
  so two requests for two models take turns instead of unloading each other's before either runs. Requests queued
  behind it that want another model find out when their turn comes (`ModelChanged`) and switch in their turn.

`--idle-unload MINUTES` unloads the model once nothing has used it for that long (no API request in flight or in
line, the model lock free: a UI reply counts as use).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from webui.api_common import ApiError
from webui.engine import is_token_model
from webui.generation import StreamUpdate, Turn, TurnBuilder
from webui.model_gate import ModelGate
from webui.settings import CONTEXT_FIELDS

if TYPE_CHECKING:
    from webui.generation import GenerationService
    from webui.model_service import LoadedInfo, ModelService

log = logging.getLogger(__name__)

MAX_SWITCHES = 4  # a request whose model is switched away this often before its turn gives up (503)
IDLE_POLL_SECONDS = 5.0
WAIT_POLL_SECONDS = 0.25  # how often a waiting request looks at its cancel event


class ModelChanged(Exception):
    """The turn came on another model than the request's (a switch happened while it waited): switch again."""


@dataclass(frozen=True)
class ModelRequest:
    """Which model a request wants: `name` ("" = the loaded one) and, optionally, its context size."""

    name: str = ""
    context: int | None = None


@dataclass(frozen=True)
class _Load:
    name: str
    loader: str | None = None
    settings: dict | None = None


class ModelSwitcher:
    def __init__(
        self, models: ModelService, generation: GenerationService, gate: ModelGate, *, allow_loads: bool,
        idle_unload_seconds: float, load_wait_seconds: float,
    ) -> None:
        self._allow_loads = allow_loads  # --api-load-models, then the Model tab's switch (`allow_loads`)
        self._models, self._generation, self._gate = models, generation, gate
        self._idle_seconds, self._wait_seconds = idle_unload_seconds, load_wait_seconds
        self._switch = threading.Lock()  # one load at a time, held until the loading request's turn is built
        self._guard = threading.Lock()
        self._active = 0  # API requests in flight
        self._last_used = time.monotonic()
        self._idle_unloaded: str | None = None  # what the idle unload took away (the next request brings it back)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def allow_loads(self) -> bool:
        """Whether a request may load another model than the loaded one (or reload it with a larger context)."""
        with self._guard:
            return self._allow_loads

    @allow_loads.setter
    def allow_loads(self, allowed: bool) -> None:
        """Turned on or off while the server runs (the Model tab's switch): the next check of any request, queued
        ones included, reads the new value."""
        with self._guard:
            changed, self._allow_loads = self._allow_loads != allowed, bool(allowed)
        if changed:
            log.info("API requests %s load other models", "may" if allowed else "may no longer")

    # --- before a request is queued --------------------------------------------------------------------------------

    def check(self, request: ModelRequest) -> str:
        """Refuse now what can never run; the model name the replies will carry. Never blocks."""
        name = request.name
        info, loading = self._models.current_info, self._models.loading
        loaded = info.view.name if info else None
        if name and name not in (loaded, loading) and name not in self._models.names():
            raise ApiError(404, f"The model '{name}' does not exist. GET /v1/models lists the models.",
                           param="model", code="model_not_found")
        current = loading or loaded
        if not name:
            if current or self._idle_unloaded:
                return current or self._idle_unloaded or ""
            raise _no_model()
        if name in (loading, loaded) or self._may_load(name):
            return name
        if current is None:
            raise _no_model()
        raise ApiError(400, f"The model '{name}' is not loaded ('{current}' is). Load it with POST "
                       "/v1/internal/model/load, ask for the loaded model, or start Corral with --api-load-models "
                       "to load models on demand.", param="model", code="model_not_loaded")

    # --- running a request -----------------------------------------------------------------------------------------

    def stream(
        self, request: ModelRequest, session: str, build: TurnBuilder, *, cancel: threading.Event
    ) -> Iterator[StreamUpdate]:
        """`GenerationService.stream` on the model `request` wants, loading or waiting for it first."""
        self._begin()
        try:
            for _ in range(MAX_SWITCHES):
                holding = self._ensure(request, cancel)
                try:
                    updates = self._generation.stream(session, self._checked(request, build), cancel=cancel)
                    first = next(updates, None)
                except ModelChanged:
                    continue
                finally:
                    if holding:
                        self._switch.release()
                if first is not None:
                    yield first
                    yield from updates
                return
            raise ApiError(503, "The model was switched away from this request's model every time its turn came; "
                           "try again.", type="server_error", code="model_busy")
        finally:
            self._end()

    def _checked(self, request: ModelRequest, build: TurnBuilder) -> TurnBuilder:
        def turn(info: LoadedInfo) -> Turn:
            if request.name and request.name != info.view.name:
                if self._may_load(request.name):
                    raise ModelChanged
                raise ApiError(400, f"The model '{request.name}' was replaced by '{info.view.name}' while this "
                               "request waited in line. Ask again for the loaded model, or load the one you want "
                               "with POST /v1/internal/model/load.", param="model", code="model_not_loaded")
            return build(info)

        return turn

    def _ensure(self, request: ModelRequest, cancel: threading.Event) -> bool:
        """Wait for a load under way, then load what `request` needs. True when this request loaded a model and
        holds the switch (the caller releases it once the turn is built)."""
        deadline = time.monotonic() + self._wait_seconds
        while not cancel.is_set():
            if self._models.loading is not None:
                if not self._models.wait_for_load(WAIT_POLL_SECONDS) and time.monotonic() > deadline:
                    raise _still_loading(self._models.loading, self._wait_seconds)
                continue
            if self._target(request, self._models.current_info) is None:
                return False
            if not self._switch.acquire(timeout=WAIT_POLL_SECONDS):
                if time.monotonic() > deadline:
                    raise _still_loading(request.name, self._wait_seconds)
                continue
            try:
                load = self._target(request, self._models.current_info)  # again: another request may have loaded
                if load is not None:
                    self._load(load)
            except BaseException:
                self._switch.release()
                raise
            return True
        return False

    def _target(self, request: ModelRequest, info: LoadedInfo | None) -> _Load | None:
        """What must be loaded for `request` (None: the loaded model serves it); refuses what may not be."""
        name = request.name or (info.view.name if info else self._idle_unloaded)
        if not name:
            raise _no_model()
        if info is not None and info.view.name == name:
            return self._context_reload(request, info)
        if not self._may_load(name):
            raise ApiError(400, f"The model '{name}' is not loaded. Start Corral with --api-load-models (or turn "
                           "on loads from the API in the Model tab) to load models on demand.", param="model",
                           code="model_not_loaded")
        return _Load(name)

    def _context_reload(self, request: ModelRequest, info: LoadedInfo) -> _Load | None:
        """A reload of the loaded model with the larger context `request` asks for (None: it has enough)."""
        model = info.model
        if not request.context or not is_token_model(model) or request.context <= model.context_length:
            return None
        files = info.view.detection.files
        maximum = files.shape.context_max if files is not None else model.context_length
        if request.context > maximum:
            raise ApiError(400, f"This model allows a context of at most {maximum} tokens; the request asks for "
                           f"{request.context}.", param="num_ctx", code="context_length_exceeded")
        if not self._may_load(info.view.name):
            raise ApiError(400, f"The model is loaded with a context of {model.context_length} tokens; a larger one "
                           "needs a reload, which this server does only with --api-load-models (or the Model tab's "
                           "switch).", param="num_ctx", code="context_length_exceeded")
        settings = dataclasses.asdict(info.loader_settings) | {CONTEXT_FIELDS[model.loader]: request.context}
        return _Load(info.view.name, model.loader, settings)

    def _load(self, load: _Load) -> None:
        log.info("Loading %s for an API request", load.name)
        self._models.load(load.name, loader=load.loader, loader_settings=load.settings)
        self._idle_unloaded = None

    def _may_load(self, name: str) -> bool:
        return self.allow_loads or name == self._idle_unloaded

    # --- the idle unload -------------------------------------------------------------------------------------------

    def start(self) -> ModelSwitcher:
        """Start watching for idleness (with `--idle-unload`); idempotent."""
        if self._idle_seconds > 0 and self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="idle-unload", daemon=True)
            self._watcher.start()
        return self

    def close(self) -> None:
        self._stop.set()

    def _begin(self) -> None:
        with self._guard:
            self._active += 1
            self._last_used = time.monotonic()

    def _end(self) -> None:
        with self._guard:
            self._active -= 1
            self._last_used = time.monotonic()

    def _watch(self) -> None:
        poll = min(IDLE_POLL_SECONDS, self._idle_seconds / 4)
        while not self._stop.wait(poll):
            if self._busy():
                with self._guard:
                    self._last_used = time.monotonic()
            elif time.monotonic() - self._last_used >= self._idle_seconds:
                self._unload_idle()

    def _busy(self) -> bool:
        if self._active or self._generation.waiting or self._models.loading:
            return True
        return not self._gate.idle  # a reply (UI or API) runs or waits, or a load holds the model

    def _unload_idle(self) -> None:
        if not self._switch.acquire(blocking=False):
            return
        try:
            with self._gate.exclusive_if_idle() as alone:
                info = self._models.current_info
                if not alone or info is None or self._active:
                    return
                self._models.unload()
                self._idle_unloaded = info.view.name
                log.info("Unloaded %s after %.0f s unused (--idle-unload)", info.view.name, self._idle_seconds)
        finally:
            self._switch.release()


def _no_model() -> ApiError:
    return ApiError(503, "No model is loaded. Load one with POST /v1/internal/model/load or in the web UI, or name "
                    "one in 'model' (with --api-load-models).", type="server_error", code="model_not_loaded")


def _still_loading(name: str | None, seconds: float) -> ApiError:
    return ApiError(503, f"The model '{name}' is still loading after {seconds:g} s; try again later (start Corral "
                    "with --load-wait to wait longer).", type="server_error", code="model_loading")
