"""Loader registry: loader name -> the module that loads it. Modules are imported only when used, so a missing
optional backend (llama-cpp-python) or a heavy one (torch) costs nothing until chosen.

Every loader module exposes `load_plan(plan: LoadPlan, settings, *, name: str) -> LoadedModel` (it carries out a
plan made by `loaders.plan.plan_load`) and the convenience `load(path, settings, *, name)`, which reads the files
and plans first (`plan_for_path`). The remote loader has no files, hence no plan: it takes `load(path, settings)`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from loaders.base import LoadedModel
from loaders.compute_thread import ComputeThread
from loaders.errors import LoaderUnavailableError, SettingsError
from loaders.files import read_model_files
from loaders.hardware import snapshot
from loaders.host_memory import return_freed_memory
from loaders.plan import LoadPlan, plan_load
from loaders.settings import LoaderSettings

TORCH_LOADERS = ("transformers", "gptq", "gguf")  # their models are `TorchCausalLM`s, run on a `ComputeThread`
LOADER_MODULES: dict[str, str] = {
    "transformers": "loaders.transformers_loader",
    "gptq": "loaders.gptq",
    "llama.cpp": "loaders.llamacpp",
    "gguf": "loaders.gguf_native",
    "remote": "loaders.remote",
}


def loader_names() -> list[str]:
    return list(LOADER_MODULES)


def loader_module(name: str) -> ModuleType:
    try:
        module_name = LOADER_MODULES[name]
    except KeyError:
        raise SettingsError(f"Unknown loader {name!r}; known: {', '.join(LOADER_MODULES)}.") from None
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise LoaderUnavailableError(
            f"The {name} loader needs a package that is not installed ({error.name}). "
            "Run the installer again, or pick another loader."
        ) from error


def is_available(name: str) -> bool:
    """True when the loader's backing library imports (used by detection to prefer llama.cpp for GGUF)."""
    probe = {"llama.cpp": "llama_cpp"}.get(name)
    if probe is None:
        return name in LOADER_MODULES
    return importlib.util.find_spec(probe) is not None


def plan_for_path(loader: str, path: Path, settings: LoaderSettings) -> LoadPlan:
    """Read the model at `path` and plan `loader`'s load of it on this machine."""
    files = read_model_files(Path(path), gguf_file=getattr(settings, "file", ""),
                             weights_file=getattr(settings, "weights_file", ""))  # fmt: skip
    return plan_load(loader, files, settings, snapshot())


def load_plan(plan: LoadPlan, settings: LoaderSettings, *, name: str) -> LoadedModel:
    """Carry out `plan` with its loader's module (freed load-time copies go back to the system: `host_memory`)."""
    return_freed_memory()
    module = loader_module(plan.loader)
    if plan.loader not in TORCH_LOADERS:
        return module.load_plan(plan, settings, name=name)
    compute = ComputeThread(f"torch-{name}")  # the model's one thread for torch work, from its load on
    try:
        model = compute.run(module.load_plan, plan, settings, name=name)
    except BaseException:
        compute.close()
        raise
    model.use_compute_thread(compute)
    return model


def loader_for_paths(loader: str) -> Callable[..., LoadedModel]:
    """A loader module's `load(path, settings, *, name)`: read the files, plan, carry the plan out."""

    def load(path: Path, settings: LoaderSettings, *, name: str) -> LoadedModel:
        return load_model(loader, path, settings, name=name)

    load.__doc__ = f"Load the model at `path` with the {loader} loader (files read and the load planned first)."
    return load


def load_model(loader: str, path: Path, settings: LoaderSettings, *, name: str) -> LoadedModel:
    """Load `path` with `loader`: files read, plan made, plan carried out."""
    if loader == "remote":
        return loader_module(loader).load(path, settings, name=name)
    return load_plan(plan_for_path(loader, path, settings), settings, name=name)
