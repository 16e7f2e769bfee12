"""PEFT LoRA adapters on a PyTorch model (the Transformers, GPTQ and native GGUF loaders), applied by `peft` itself.

`apply_peft(module, adapters)` makes the model carry exactly `adapters` (each with its scale), never merged into
the weights: peft's `inject_adapter_in_model` wraps every target module and `set_peft_model_state_dict` loads the
adapter's weights. A plain `nn.Linear` gets peft's own LoRA layer (DoRA and rsLoRA included); Corral's quantized
Linear modules (GPTQ, GGUF blocks, CPU int4...), which peft does not know, get `BesideLoraLinear`: peft's layer for
quantized Linears, `base(x) + B(A(x)) · scale`, the quantized weights left untouched and only the module's
`in_features` / `out_features` read. `remove_peft(module)` puts the original modules back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora.gptq import GPTQLoraLinear
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from torch import nn

from loaders.errors import UnsupportedModelError
from loaders.files.adapter import PEFT_PREFIX, AdapterFiles


@dataclass(frozen=True)
class ScaledAdapter:
    """An adapter read from disk and the scale it is applied with (1 = as trained)."""

    files: AdapterFiles
    scale: float = 1.0


class BesideLoraLinear(GPTQLoraLinear):
    """peft's LoRA layer for a quantized Linear (its output plus the LoRA product, nothing merged), for modules
    peft does not recognise: their sizes come from `in_features` / `out_features`."""

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        return module.in_features, module.out_features


def apply_peft(module: nn.Module, adapters: Sequence[ScaledAdapter]) -> None:
    """Make `module` carry exactly `adapters`, in order, each scaled; the adapters' fit was checked before."""
    remove_peft(module)
    names = [f"corral_{i}" for i in range(len(adapters))]
    try:
        for name, adapter in zip(names, adapters, strict=True):
            _inject(module, adapter.files, name)
    except (ValueError, KeyError, RuntimeError) as error:  # peft refuses a layer type or a shape
        remove_peft(module)
        raise UnsupportedModelError(f"peft could not apply the adapter: {error}") from error
    for layer in _tuner_layers(module):
        present = [n for n in names if n in layer.lora_A]
        layer.set_adapter(present, inference_mode=True)
        for name, adapter in zip(names, adapters, strict=True):
            if isinstance(layer, LoraLayer):
                layer.set_scale(name, adapter.scale)


def remove_peft(module: nn.Module) -> None:
    """Put back every module a LoRA layer wraps (the base weights were never changed)."""
    wrapped = [name for name, m in module.named_modules() if isinstance(m, BaseTunerLayer)]
    outer = [n for n in wrapped if not any(n.startswith(f"{o}.") for o in wrapped if o != n)]
    for name in outer:
        module.set_submodule(name, module.get_submodule(name).get_base_layer())
    if hasattr(module, "peft_config"):
        del module.peft_config


def _inject(module: nn.Module, adapter: AdapterFiles, name: str) -> None:
    config = LoraConfig.from_pretrained(str(adapter.path))
    config.inference_mode = True
    custom = {type(module.get_submodule(t)) for t in adapter.targets} - {nn.Linear}
    custom = {cls for cls in custom if not _peft_knows(cls)}
    if custom:
        config._register_custom_module(dict.fromkeys(custom, BesideLoraLinear))
    state = {key.removeprefix(PEFT_PREFIX): value for key, value in load_file(adapter.weights).items()}
    inject_adapter_in_model(config, module, adapter_name=name, state_dict=state)
    result = set_peft_model_state_dict(module, state, adapter_name=name)
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise ValueError(f"weights with no place in the model: {', '.join(unexpected[:3])}")


def _peft_knows(cls: type) -> bool:
    """Layer types peft dispatches itself (bitsandbytes' Linear4bit / Linear8bitLt...)."""
    return cls.__module__.startswith(("bitsandbytes", "torch.nn"))


def _tuner_layers(module: nn.Module) -> list[BaseTunerLayer]:
    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
