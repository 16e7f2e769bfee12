"""LoRA adapters on a loaded model: which fit it, and applying a set of them with a scale each, never merged.

`AdapterStack` belongs to one loaded model (the model service makes it at load and closes it before the unload).
`apply(choices)` reads each adapter (`loaders.files.adapter`), checks that all of them fit (`fit`) before anything
changes, then hands the set to the backend:
- PyTorch models (Transformers, GPTQ, native GGUF): `peft_torch`, peft's layers beside the (quantized) Linears;
- llama.cpp: `llama_cpp`, llama.cpp's own adapter API; a PEFT adapter is first written as a GGUF LoRA for that base
  (`to_gguf`), a GGUF LoRA is used as it is.
A remote engine takes no adapters. The empty set removes them all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loaders.errors import SettingsError, UnsupportedModelError
from loaders.files.adapter import AdapterFiles, adapter_path, list_adapters, read_adapter
from loaders.registry import TORCH_LOADERS

MAX_SCALE = 4.0  # a scale beyond this is a typo, not a use (1 = as trained; negative subtracts the adapter)


@dataclass(frozen=True)
class AdapterChoice:
    """An adapter by name in the loras folder and the scale it is applied with."""

    name: str
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.scale, int | float) or isinstance(self.scale, bool) or not math.isfinite(self.scale) \
                or abs(self.scale) > MAX_SCALE:  # fmt: skip
            raise SettingsError(f"The scale of adapter {self.name!r} must be a number from -{MAX_SCALE:g} to "
                                f"{MAX_SCALE:g}, not {self.scale!r}.")  # fmt: skip


@dataclass(frozen=True)
class AdapterFit:
    """An adapter of the loras folder and whether it fits the loaded model (`problem` says why not)."""

    name: str
    problem: str = ""

    @property
    def fits(self) -> bool:
        return not self.problem


class AdapterStack:
    """The adapters applied to one loaded model, in order with their scales (empty at load)."""

    def __init__(self, model: Any, loras_dir: Path) -> None:
        self._model, self.loras_dir = model, Path(loras_dir)
        self._active: tuple[AdapterChoice, ...] = ()
        self._llama: Any = None  # loaders.lora.llama_cpp.LlamaCppAdapters, made on first use

    @property
    def active(self) -> tuple[AdapterChoice, ...]:
        return self._active

    def names(self) -> list[str]:
        return list_adapters(self.loras_dir)

    def fits(self) -> list[AdapterFit]:
        """Every adapter in the loras folder and whether it fits this model."""
        out = []
        for name in self.names():
            try:
                self.read(name)
            except (UnsupportedModelError, SettingsError, ValueError, OSError) as error:
                out.append(AdapterFit(name, str(error)))
            else:
                out.append(AdapterFit(name))
        return out

    def read(self, name: str) -> AdapterFiles:
        """The adapter `name`, checked against this model (raises with both names when it does not fit)."""
        from loaders.lora import fit

        adapter = read_adapter(adapter_path(self.loras_dir, name))
        kind = self._kind()
        if kind == "torch":
            fit.check_torch(adapter, self._model.module, self._model.name)
        elif adapter.format == "gguf":
            fit.check_gguf(adapter, self._header(), self._model.name)
        else:
            fit.check_peft_on_gguf(adapter, self._header(), self._model.name)
        return adapter

    def apply(self, choices: Sequence[AdapterChoice]) -> None:
        """Apply exactly `choices` (an empty sequence removes every adapter); all are checked first."""
        names = [c.name for c in choices]
        if len(set(names)) != len(names):
            raise SettingsError("An adapter is listed twice; give each adapter once, with its scale.")
        adapters = [self.read(c.name) for c in choices]
        if self._kind() == "torch":
            self._active = ()  # peft starts from the bare model: if it fails half-way, none is applied
            self._apply_torch(adapters, choices)
        else:  # llama.cpp refuses a file before changing the context's set
            self._apply_llama_cpp(adapters, choices)
        self._active = tuple(choices)

    def close(self) -> None:
        """Release the adapters before the model itself is unloaded (llama.cpp frees them with the model)."""
        if self._llama is not None:
            self._llama.close()
            self._llama = None
        self._active = ()

    def _kind(self) -> str:
        loader = getattr(self._model, "loader", "")
        if loader in TORCH_LOADERS and getattr(self._model, "module", None) is not None:
            return "torch"
        if loader == "llama.cpp" and getattr(self._model, "engine", None) is not None:
            return "llama.cpp"
        raise UnsupportedModelError(f"The {loader or 'remote'} loader takes no LoRA adapters here; load the model with "
                                    "transformers, gptq, gguf or llama.cpp.")  # fmt: skip

    def _header(self) -> Any:
        plan = getattr(self._model, "plan", None)
        header = plan.files.header if plan is not None else None
        if header is None:
            raise UnsupportedModelError("The loaded GGUF model's header is unknown; reload it to apply adapters.")
        return header

    def _apply_torch(self, adapters: list[AdapterFiles], choices: Sequence[AdapterChoice]) -> None:
        from loaders.lora.peft_torch import ScaledAdapter, apply_peft

        scaled = [ScaledAdapter(a, c.scale) for a, c in zip(adapters, choices, strict=True)]
        self._model.on_compute_thread(apply_peft, self._model.module, scaled)
        self._model.weights_changed()  # cached prompts and captured CUDA graphs used the layers before

    def _apply_llama_cpp(self, adapters: list[AdapterFiles], choices: Sequence[AdapterChoice]) -> None:
        from loaders.lora.llama_cpp import LlamaCppAdapters
        from loaders.lora.to_gguf import to_gguf

        header = self._header()
        files = [a.weights if a.format == "gguf" else to_gguf(a, header, self._model.name) for a in adapters]
        if self._llama is None:
            self._llama = LlamaCppAdapters(self._model)
        self._llama.set([(f, c.scale) for f, c in zip(files, choices, strict=True)])


__all__ = ["MAX_SCALE", "AdapterChoice", "AdapterFit", "AdapterStack"]
