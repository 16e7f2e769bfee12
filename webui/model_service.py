"""Model service: which models are on disk, what they are, and loading / unloading / reloading the one model.

`inspect(name)` gives everything the Model tab shows before a load: the files read once, detection, resolved
settings with where each value came from, the loader's plan and its memory estimate. `load(...)` resolves settings
the same way for the UI, the API and the CLI, plans, checks the plan's estimate against free memory (refusing with
numbers unless confirmed), validates everything before unloading the previous model, then carries the plan out and
applies the model's LoRA adapters (`loaders.lora.AdapterStack`; `set_adapters` changes them between generations).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from loaders.base import LoadedModel
from loaders.detect import Detection, detect_files
from loaders.errors import CorralError, ModelNotLoadedError, SettingsError
from loaders.files import list_models, model_path, read_model_files
from loaders.files.adapter import adapter_path, list_adapters
from loaders.hardware import snapshot
from loaders.lora import AdapterChoice, AdapterFit, AdapterStack
from loaders.plan import LoadPlan, plan_load
from loaders.registry import load_model, load_plan
from loaders.settings import LoaderSettings, settings_for
from webui.config import AppConfig
from webui.engine import is_token_model
from webui.estimate import Estimate, check_fits, estimate_plan
from webui.model_gate import ModelGate
from webui.remote_models import RemoteCatalog, RemoteEndpoint
from webui.settings import ResolvedSettings, SettingsStore, Source

log = logging.getLogger(__name__)

PARALLEL_FLAG = Source("override", "set at start: --parallel")

REMOTE_CODE_REFUSED = ("Running a model's own Python code (trust_remote_code) can only be allowed when Corral "
                       "starts: restart it with --trust-remote-code, and only for models whose authors you trust.")


@dataclass(frozen=True)
class ModelView:
    """What the Model tab shows for a selected model: what it is, the settings, and what a load would do."""

    name: str
    detection: Detection
    resolved: ResolvedSettings
    warnings: tuple[str, ...] = ()
    plan: LoadPlan | None = None  # None for a remote engine, or when the settings cannot be planned
    estimate: Estimate | None = None
    plan_error: str = ""


@dataclass(frozen=True)
class LoadedInfo:
    model: LoadedModel
    view: ModelView
    loader_settings: LoaderSettings
    estimate: Estimate | None  # the estimate of the plan that was carried out
    adapters: AdapterStack | None = None  # LoRA adapters on this model (None: a remote engine takes none)
    warnings: tuple[str, ...] = ()  # what the load could not do (a saved adapter that no longer fits)

    @property
    def plan(self) -> LoadPlan | None:
        return self.view.plan


class ModelService:
    def __init__(self, config: AppConfig, settings: SettingsStore, gate: ModelGate) -> None:
        """`gate`: held exclusive while a model is swapped, so no generation runs on it meanwhile."""
        self._config, self._settings, self._gate = config, settings, gate
        self._loaded: LoadedInfo | None = None
        self._loads: list[str] = []  # the models loads are under way for (requests for them wait)
        self._load_done = threading.Condition()
        self.remote = RemoteCatalog(config.models_dir)  # named remote engines (models/remote.yaml)

    # --- what is on disk ----------------------------------------------------------------------------------------

    @property
    def models_dir(self) -> Path:
        return self._config.models_dir

    def names(self) -> list[str]:
        """Local models, then the remote engines of models/remote.yaml (a local model wins a shared name)."""
        local = list_models(self.models_dir)
        return local + [name for name in self.remote.names() if name not in local]

    def path_of(self, name: str) -> Path:
        """The model called `name`: checked as a name (one component, links allowed), never resolved."""
        return model_path(self.models_dir, name)

    def empty_message(self) -> str | None:
        """What to tell the user when there is no model to pick (None when there is one)."""
        if self.names():
            return None
        return f"No models in {self.models_dir}: download one below (**Download a model**), or copy one there."

    def inspect(self, name: str, *, loader: str | None = None,
                loader_settings: dict[str, Any] | None = None) -> ModelView:  # fmt: skip
        """Read, detect, resolve and plan `name`; `loader` / `loader_settings` override the resolved ones."""
        endpoint = self._remote_endpoint(name)
        if endpoint is not None:
            return ModelView(name=endpoint.name, detection=self.remote.detection(endpoint),
                             resolved=self.remote.resolved(endpoint))  # fmt: skip
        if loader == "remote":
            raise CorralError("The remote loader is for the engines listed in models/remote.yaml; pick one of those.")
        files = read_model_files(self.path_of(name))
        detection = detect_files(files)
        resolved = self._with_flags(self._settings.resolve(name, detection, loader=loader))
        view = ModelView(name=name, detection=detection, resolved=resolved, warnings=tuple(resolved.warnings))
        return self._planned(view, self._settings_of(resolved, loader_settings))

    def _settings_of(self, resolved: ResolvedSettings, overrides: dict[str, Any] | None) -> LoaderSettings:
        """The loader settings of a load: resolved < overrides, then what only flags decide (--cpu,
        --trust-remote-code). Asking for remote code without the flag is refused, never quietly dropped."""
        _check_types(resolved.loader_settings, overrides or {})
        values = asdict(resolved.loader_settings) | (overrides or {})
        if self._config.force_cpu:
            values.update({"device": "cpu", "n_gpu_layers": 0})
        if resolved.loader == "transformers":
            if (overrides or {}).get("trust_remote_code") and not self._config.trust_remote_code:
                raise SettingsError(REMOTE_CODE_REFUSED)
            values["trust_remote_code"] = self._config.trust_remote_code  # config.yaml / saved values cannot
        return settings_for(resolved.loader, values)

    def _with_flags(self, resolved: ResolvedSettings) -> ResolvedSettings:
        """`resolved` showing what the flags decide (the Model tab shows the flag's value, and sends it back):
        --trust-remote-code, and --parallel over the saved value."""
        current, sources = resolved.loader_settings, resolved.sources
        if hasattr(current, "trust_remote_code") and current.trust_remote_code != self._config.trust_remote_code:
            current = replace(current, trust_remote_code=self._config.trust_remote_code)
        if hasattr(current, "parallel") and self._config.parallel is not None:
            current = replace(current, parallel=self._config.parallel)
            sources = sources | {"parallel": PARALLEL_FLAG}
        if current is resolved.loader_settings:
            return resolved
        return replace(resolved, loader_settings=current, sources=sources)

    def _planned(self, view: ModelView, settings: LoaderSettings) -> ModelView:
        """`view` with the plan of `settings` and its estimate (a plan that cannot be made says why)."""
        files = view.detection.files
        assert files is not None
        try:
            files = files.with_gguf(getattr(settings, "file", "")) if files.format == "gguf" else files
            plan = plan_load(view.resolved.loader, files, settings, snapshot())
        except CorralError as error:
            return replace(view, plan_error=str(error))
        return replace(view, plan=plan, estimate=estimate_plan(plan))

    def save_settings(
        self, name: str, loader: str, loader_settings: dict[str, Any], *, template: str | None, preset: str | None,
        loras: Sequence[AdapterChoice] | None = None,
    ) -> list[str]:
        """"Save settings for this model": the loader, its settings (the context field becomes the model-level
        `context_length`), template, preset and LoRA adapters (`loras`; None = the ones applied now when this
        model is loaded, else those saved before). Returns warnings (a broken settings file moved aside)."""
        from webui.settings import CONTEXT_FIELDS, ModelSettings
        from webui.templates import AUTO_TEMPLATE

        if self._remote_endpoint(name) is not None:
            raise CorralError(f"{name} is a remote engine: its settings live in models/remote.yaml; edit them there.")
        self.path_of(name)  # a model that is gone gets "not found", not a saved entry
        values = dict(loader_settings)
        context = values.pop(CONTEXT_FIELDS.get(loader, ""), None) or None
        template = None if template in (None, "", AUTO_TEMPLATE) else template
        saved = ModelSettings(loader, values, template, preset or None, context, self._loras_to_save(name, loras))
        return self._settings.save(name, saved)

    def _loras_to_save(self, name: str, loras: Sequence[AdapterChoice] | None) -> tuple[AdapterChoice, ...]:
        if loras is not None:
            return tuple(loras)
        info = self._loaded
        if info is not None and info.view.name == name and info.adapters is not None:
            return info.adapters.active
        before = self._settings.saved(name)
        return before.loras if before is not None else ()

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
        loras: Sequence[AdapterChoice] | None = None,
    ) -> LoadedInfo:
        """Load `name` with resolved settings, `loader` / `loader_settings` overriding them (UI controls, --loader).
        Everything is checked (name, settings, plan, memory) before the model already loaded is unloaded. Then the
        LoRA adapters are applied: `loras` (--lora, the API), else those saved for the model (one that no longer
        fits becomes a warning of the load; one given in `loras` that does not fit is an error)."""
        view = self.inspect(name, loader=loader or self._config.default_loader, loader_settings=loader_settings)
        endpoint = self._remote_endpoint(name)
        if endpoint is not None:  # no memory here to check; the key comes from the file, not the UI
            settings = self.remote.settings(endpoint, loader_settings)
            return self._swap(view, settings, lambda: load_model("remote", view.detection.path, settings, name=name))
        if view.plan is None:
            raise CorralError(f"Cannot load {name} with {view.resolved.loader}: {view.plan_error}")
        settings = self._settings_of(view.resolved, loader_settings)
        if view.estimate is not None and not confirm_memory:
            check_fits(view.estimate, snapshot())
        plan = view.plan
        if loras:
            for choice in loras:  # a typo in a name is refused before the model already loaded goes away
                adapter_path(self._config.loras_dir, choice.name)
        return self._swap(view, settings, lambda: load_plan(plan, settings, name=name), loras=loras)

    @property
    def loading(self) -> str | None:
        """The name of the model being loaded now (from the moment its load waits for the model), else None."""
        with self._load_done:
            return self._loads[-1] if self._loads else None

    def wait_for_load(self, timeout: float) -> bool:
        """Wait until no load is under way; False if one still is after `timeout` seconds."""
        with self._load_done:
            return self._load_done.wait_for(lambda: not self._loads, timeout)

    def _swap(self, view: ModelView, settings: LoaderSettings, load: Any, *,
              loras: Sequence[AdapterChoice] | None = None) -> LoadedInfo:  # fmt: skip
        with self._load_done:
            self._loads.append(view.name)
        try:
            with self._gate.exclusive():  # waits for the running generations; those in line wait for the new model
                self.unload()
                started = time.monotonic()
                model = load()
                log.info("Loaded %s with %s in %.1f s", view.name, view.resolved.loader, time.monotonic() - started)
                self._loaded = LoadedInfo(model=model, view=view, loader_settings=settings, estimate=view.estimate)
                if is_token_model(model):
                    self._loaded = self._with_adapters(self._loaded, loras)
                return self._loaded
        finally:
            with self._load_done:
                self._loads.remove(view.name)
                self._load_done.notify_all()

    def _with_adapters(self, info: LoadedInfo, loras: Sequence[AdapterChoice] | None) -> LoadedInfo:
        """`info` with its adapter stack, the given (or saved) adapters applied."""
        stack = AdapterStack(info.model, self._config.loras_dir)
        info = replace(info, adapters=stack)
        wanted = tuple(loras) if loras is not None else info.view.resolved.loras
        if not wanted:
            return info
        try:
            stack.apply(wanted)
        except CorralError as error:
            if loras is not None:
                raise
            log.warning("Saved adapters of %s not applied: %s", info.view.name, error)
            return replace(info, warnings=(f"The adapters saved for this model were not applied: {error}",))
        log.info("Applied adapters %s", ", ".join(f"{c.name} x{c.scale:g}" for c in wanted))
        return info

    def set_adapters(self, choices: Sequence[AdapterChoice]) -> tuple[AdapterChoice, ...]:
        """Apply exactly `choices` to the loaded model (an empty list removes them all), between generations."""
        with self._gate.exclusive():
            info = self._loaded
            if info is None:
                raise ModelNotLoadedError("No model is loaded: load one, then apply adapters to it.")
            if info.adapters is None:
                raise CorralError(f"{info.view.name} runs on a remote engine, which takes no adapters from here.")
            info.adapters.apply(choices)
            return info.adapters.active

    def adapter_fits(self) -> list[AdapterFit]:
        """The adapters of the loras folder and whether each fits the loaded model (all, unchecked, if none is)."""
        info = self._loaded
        if info is None or info.adapters is None:
            return [AdapterFit(name, "no model is loaded") for name in list_adapters(self._config.loras_dir)]
        return info.adapters.fits()  # reads the model's layer names and shapes only: no need to stop generations

    def reload(self, *, loader: str | None = None, loader_settings: dict[str, Any] | None = None) -> LoadedInfo:
        if self._loaded is None:
            raise CorralError("No model is loaded: pick one and click Load.")
        stack = self._loaded.adapters  # the adapters applied now come back with the reloaded model
        return self.load(self._loaded.view.name, loader=loader, loader_settings=loader_settings, confirm_memory=True,
                         loras=stack.active if stack is not None else None)

    def unload(self) -> None:
        with self._gate.exclusive():
            if self._loaded is not None:
                if self._loaded.adapters is not None:
                    self._loaded.adapters.close()  # before the model: llama.cpp frees adapters with it
                self._loaded.model.unload()
                self._loaded = None

    def _remote_endpoint(self, name: str) -> RemoteEndpoint | None:
        if name in list_models(self.models_dir):
            return None
        return self.remote.get(name)


def _check_types(current: LoaderSettings, overrides: dict[str, Any]) -> None:
    """Refuse an override of the wrong type (from the API's JSON) as a message, before it reaches a planner."""
    for f in fields(current):
        if f.name not in overrides:
            continue
        value, expected = overrides[f.name], _expected_types(getattr(current, f.name))
        if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
            raise SettingsError(f"The setting {f.name} must be {_TYPE_NAMES[expected]}, not {value!r}.")


def _expected_types(default: Any) -> tuple[type, ...]:
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, float):
        return (int, float)
    if default is None or isinstance(default, dict):
        return (dict, type(None))
    return (type(default),)


_TYPE_NAMES = {(bool,): "true or false", (int, float): "a number", (int,): "a whole number", (str,): "text",
               (dict, type(None)): "an object (or null)"}
