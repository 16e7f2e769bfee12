"""LoRA adapters on a model loaded by llama.cpp, through llama-cpp-python's adapter API (never merged).

Each GGUF LoRA file is loaded once into the model (`llama_adapter_lora_init`) and the context is given the active
set with their scales in one call (`llama_set_adapters_lora`; an empty set removes them all). Every sequence's cached
prompt is dropped whenever the set changes: the keys and values it holds were computed with other weights.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import llama_cpp

from loaders.errors import ModelFormatError


class LlamaCppAdapters:
    """The adapters loaded into one llama.cpp model (`loaders.llamacpp.LlamaCppModel`, its weights and its one
    context); freed with `close()` (or with the model)."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._loaded: dict[Path, llama_cpp.llama_adapter_lora_p] = {}

    def set(self, files: Sequence[tuple[Path, float]]) -> None:
        """Make the context apply exactly `files` (GGUF LoRA paths with their scales), in order."""
        handles = [self._load(path) for path, _ in files]
        array = (llama_cpp.llama_adapter_lora_p_ctypes * max(len(handles), 1))(*handles)
        scales = (ctypes.c_float * max(len(files), 1))(*[scale for _, scale in files])
        if llama_cpp.llama_set_adapters_lora(self._engine().ctx, array, len(handles), scales) != 0:
            raise ModelFormatError("llama.cpp refused the adapters for this model")
        self._model.forget_prompts()  # their keys and values were computed without (or with other) adapters
        for path in [p for p in self._loaded if p not in {p for p, _ in files}]:
            llama_cpp.llama_adapter_lora_free(self._loaded.pop(path))

    def close(self) -> None:
        """Free every adapter (before the model is closed)."""
        if self._loaded and self._model.engine is not None:
            llama_cpp.llama_set_adapters_lora(self._model.engine.ctx, None, 0, None)
        for handle in self._loaded.values():
            llama_cpp.llama_adapter_lora_free(handle)
        self._loaded.clear()

    def _load(self, path: Path) -> llama_cpp.llama_adapter_lora_p:
        if path not in self._loaded:
            handle = llama_cpp.llama_adapter_lora_init(self._engine().model, str(path).encode("utf-8"))
            if not handle:
                raise ModelFormatError("llama.cpp could not load this LoRA adapter (see the log for why)", path=path)
            self._loaded[path] = handle
        return self._loaded[path]

    def _engine(self) -> Any:
        return self._model._live()  # raises ModelNotLoadedError once the model is unloaded
