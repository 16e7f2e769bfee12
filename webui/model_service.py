"""Model service: which models are on disk, what they are, and loading / unloading / reloading the one model.

`inspect(name)` gives everything the Model tab shows before a load (detection, resolved settings with where each
value came from, the memory estimate); `load(...)` resolves settings the same way for the UI and the CLI, checks the
estimate against free memory (refusing with numbers unless confirmed), unloads the previous model and loads.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loaders.base import LoadedModel
from loaders.detect import Detection, detect, list_models
from loaders.errors import CorralError, ModelNotFoundError
from loaders.registry import load_model
from loaders.settings import LoaderSettings, settings_for
from webui.remote_models import RemoteCatalog, RemoteEndpoint

if TYPE_CHECKING:
    from webui.settings import ResolvedSettings
    from webui.state import AppState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelView:
    """What the Model tab shows for a selected model."""

    name: str
    detection: Detection
    resolved: ResolvedSettings
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadedInfo:
    model: LoadedModel
    view: ModelView
    loader_settings: LoaderSettings
    estimate: Any | None  # webui.estimate.Estimate when one could be made


class ModelService:
    def __init__(self, state: AppState) -> None:
        self._state = state
        self._loaded: LoadedInfo | None = None
        self.remote = RemoteCatalog(state.config.models_dir)  # named remote engines (models/remote.yaml)

    # --- what is on disk ----------------------------------------------------------------------------------------

    @property
    def models_dir(self) -> Path:
        return self._state.config.models_dir

    def names(self) -> list[str]:
        """Local models, then the remote engines of models/remote.yaml (a local model wins a shared name)."""
        local = list_models(self.models_dir) if self.models_dir.is_dir() else []
        return local + [name for name in self.remote.names() if name not in local]

    def path_of(self, name: str) -> Path:
        path = (self.models_dir / name).resolve()
        if self.models_dir.resolve() not in path.parents or not path.exists():
            known = ", ".join(self.names()) or "none: download one in the Model tab"
            raise ModelNotFoundError(f"No model named {name!r} in {self.models_dir}. Models found: {known}.")
        return path

    def empty_message(self) -> str | None:
        """What to tell the user when there is no model to pick (None when there is one)."""
        if self.names():
            return None
        return f"No models in {self.models_dir}: download one below (**Download a model**), or copy one there."

    def inspect(self, name: str, *, loader: str | None = None) -> ModelView:
        endpoint = self._remote_endpoint(name)
        if endpoint is not None:
            return self.remote.view(endpoint)
        if loader == "remote":
            raise CorralError("The remote loader is for the engines listed in models/remote.yaml; pick one of those.")
        detection = detect(self.path_of(name))
        resolved = self._state.settings.resolve(name, detection, loader=loader)
        return ModelView(name=name, detection=detection, resolved=resolved, warnings=tuple(resolved.warnings))

    def save_settings(
        self, name: str, loader: str, loader_settings: dict[str, Any], *, template: str | None, preset: str | None
    ) -> list[str]:
        """"Save settings for this model": the loader, its settings (the context field becomes the model-level
        `context_length`), template and preset. Returns warnings (a broken settings file moved aside)."""
        from webui.settings import CONTEXT_FIELDS, ModelSettings
        from webui.templates import AUTO_TEMPLATE

        if self._remote_endpoint(name) is not None:
            raise CorralError(f"{name} is a remote engine: its settings live in models/remote.yaml; edit them there.")
        self.path_of(name)  # a model that is gone gets "not found", not a saved entry
        values = dict(loader_settings)
        context = values.pop(CONTEXT_FIELDS.get(loader, ""), None) or None
        template = None if template in (None, "", AUTO_TEMPLATE) else template
        saved = ModelSettings(loader, values, template, preset or None, context)
        return self._state.settings.save(name, saved)

    # --- the loaded model ---------------------------------------------------------------------------------------

    @property
    def current(self) -> LoadedModel | None:
        return self._loaded.model if self._loaded else None

    @property
    def current_info(self) -> LoadedInfo | None:
        return self._loaded

    def load(
        self,
        name: str,
        *,
        loader: str | None = None,
        loader_settings: dict[str, Any] | None = None,
        confirm_memory: bool = False,
    ) -> LoadedInfo:
        """Load `name` with resolved settings, `loader` / `loader_settings` overriding them (UI controls, --loader)."""
        view = self.inspect(name, loader=loader or self._state.config.default_loader)
        chosen_loader = view.resolved.loader
        values = asdict(view.resolved.loader_settings) | (loader_settings or {})
        if self._state.config.force_cpu:
            values.update({"device": "cpu", "n_gpu_layers": 0})
        settings = settings_for(chosen_loader, values)
        endpoint = self._remote_endpoint(name)
        if endpoint is not None:  # no memory here to check; the key comes from the file, not the UI
            settings, estimate = self.remote.settings(endpoint, loader_settings), None
        else:
            estimate = self._check_memory(view, chosen_loader, settings, confirm_memory)
        with self._state.model_lock:
            self.unload()
            started = time.monotonic()
            model = load_model(chosen_loader, view.detection.path, settings, name=name)
            log.info("Loaded %s with %s in %.1f s", name, chosen_loader, time.monotonic() - started)
            self._loaded = LoadedInfo(model=model, view=view, loader_settings=settings, estimate=estimate)
        return self._loaded

    def reload(self, *, loader: str | None = None, loader_settings: dict[str, Any] | None = None) -> LoadedInfo:
        if self._loaded is None:
            raise CorralError("No model is loaded: pick one and click Load.")
        return self.load(self._loaded.view.name, loader=loader, loader_settings=loader_settings, confirm_memory=True)

    def unload(self) -> None:
        with self._state.model_lock:
            if self._loaded is not None:
                self._loaded.model.unload()
                self._loaded = None

    def _remote_endpoint(self, name: str) -> RemoteEndpoint | None:
        if self.models_dir.is_dir() and name in list_models(self.models_dir):
            return None
        return self.remote.get(name)

    def _check_memory(self, view: ModelView, loader: str, settings: LoaderSettings, confirmed: bool) -> Any | None:
        """Estimate before loading; raise `InsufficientMemoryError` (with numbers) unless the user confirmed."""
        from loaders import hardware
        from webui import estimate

        try:
            result = estimate.estimate_local(view.detection.path, loader, settings)
        except CorralError as error:  # an estimate is advice: a model we cannot estimate may still load
            log.warning("No memory estimate for %s: %s", view.name, error)
            return None
        if not confirmed:
            estimate.check_fits(result, hardware.snapshot())
        return result
