"""Does an adapter fit the loaded model? The base architecture and every adapted layer's shape, checked before
anything is applied, so a mismatch is a message naming both sides rather than a crash inside a forward pass."""

from __future__ import annotations

from torch import nn

from loaders.errors import UnsupportedModelError
from loaders.files.adapter import AdapterFiles, LoraTensorPair
from loaders.files.gguf_header import GGUFHeader


def check_torch(adapter: AdapterFiles, module: nn.Module, model: str) -> None:
    """A PEFT adapter on a PyTorch model: every target module exists and takes the adapter's in/out sizes."""
    if adapter.format != "peft":
        raise UnsupportedModelError(f"{adapter.name} is a GGUF LoRA: it runs on the llama.cpp loader. Load {model} "
                                    "as GGUF with llama.cpp, or use the PEFT version of the adapter.")  # fmt: skip
    ours = _architecture(module)
    sizes: dict[str, tuple[int, int] | None] = {}
    for target in adapter.targets:
        try:
            found = module.get_submodule(target)
        except AttributeError:
            continue
        sizes[target] = _sizes(found)
        if sizes[target] is None:
            raise _mismatch(adapter, model, ours, f"{target} is a {type(found).__name__}, not a Linear layer")
    _check_pairs(adapter, model, ours, sizes)


def check_gguf(adapter: AdapterFiles, header: GGUFHeader, model: str) -> None:
    """A GGUF LoRA on a GGUF model: the same `general.architecture` and every tensor's shape."""
    ours = header.architecture
    if adapter.architecture and adapter.architecture != ours:
        raise _mismatch(adapter, model, ours, f"its architecture is {adapter.architecture}, the model's {ours}")
    _check_pairs(adapter, model, ours, _gguf_shapes(header))


def check_peft_on_gguf(adapter: AdapterFiles, header: GGUFHeader, model: str) -> None:
    """A PEFT adapter for a GGUF model (llama.cpp): every target has a GGUF tensor of its shape."""
    from loaders.lora.to_gguf import gguf_names

    shapes = _gguf_shapes(header)
    sizes = {target: shapes.get(name) for target, name in gguf_names(adapter, header).items() if name}
    _check_pairs(adapter, model, header.architecture, sizes)


def _check_pairs(adapter: AdapterFiles, model: str, ours: str, sizes: dict[str, tuple[int, int] | None]) -> None:
    """Every adapted layer is in `sizes` (target -> the model's (in, out)) with the adapter's sizes."""
    for pair in adapter.pairs:
        found = sizes.get(pair.target)
        if found is None:
            raise _mismatch(adapter, model, ours, f"it adapts {pair.target}, which {model} does not have")
        if found != (pair.in_features, pair.out_features):
            raise _mismatch(adapter, model, ours, _shape_text(pair, found))


def _gguf_shapes(header: GGUFHeader) -> dict[str, tuple[int, int] | None]:
    """Base tensor (without `.weight`) -> (in, out): GGUF lists dims innermost first."""
    return {t.name.removesuffix(".weight"): (t.dims[0], t.dims[1]) for t in header.tensors if len(t.dims) == 2}


def _sizes(module: nn.Module) -> tuple[int, int] | None:
    inner = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    in_f, out_f = getattr(inner, "in_features", None), getattr(inner, "out_features", None)
    return (in_f, out_f) if isinstance(in_f, int) and isinstance(out_f, int) else None


def _architecture(module: nn.Module) -> str:
    config = getattr(module, "config", None)
    names = getattr(config, "architectures", None) or []
    return names[0] if names else type(module).__name__


def _shape_text(pair: LoraTensorPair, sizes: tuple[int, int]) -> str:
    return (f"{pair.target} takes {sizes[0]} inputs and gives {sizes[1]} outputs in the model, but "
            f"{pair.in_features} -> {pair.out_features} in the adapter")  # fmt: skip


def _mismatch(adapter: AdapterFiles, model: str, ours: str, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"The adapter {adapter.name} was made for {adapter.made_for} and does not fit the "
                                 f"loaded model {model} ({ours}): {why}.")  # fmt: skip
