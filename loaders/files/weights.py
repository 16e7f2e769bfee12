"""Which files hold a Transformers / GPTQ model's weights: one rule for detection, loaders and estimates.

It works on file names (a folder's listing or a Hub branch's), in this order:
1. the file the user named (`weights_file`);
2. the older GPTQ repos' `model_file_base_name` (`gptq_model-4bit-128g.safetensors`);
3. the shards named by `model.safetensors.index.json`;
4. every `.safetensors` file in the folder;
5. only when there is no safetensors file at all: PyTorch pickles (`.bin`, `.pt`, `.pth`), never training state.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Literal

from loaders.errors import ModelFormatError

SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
NOT_WEIGHTS = ("training_args", "optimizer", "scheduler", "rng_state", "adapter_model")


@dataclass(frozen=True)
class WeightFiles:
    names: tuple[str, ...]
    format: Literal["safetensors", "pickle"]
    source: str  # why these: "the folder's .safetensors files", "quantize_config.json model_file_base_name"...


def is_weight_name(name: str) -> bool:
    base = PurePosixPath(name).name
    return base.endswith((".safetensors", *PICKLE_SUFFIXES)) and not base.startswith(NOT_WEIGHTS)


def find_weight_files(
    names: Collection[str], *, index: dict[str, Any] | None = None, base_name: str = "", wanted: str = "",
    base_name_source: str = "model_file_base_name",
) -> WeightFiles:  # fmt: skip
    """The weight files among `names` (top-level file names); `index` is the parsed safetensors index, if any.
    Raises `ModelFormatError` when a named file or shard is missing, or there are no weights."""
    present = set(names)
    if wanted:
        if wanted not in present:
            raise ModelFormatError(f"The weights file {wanted!r} set for this model is not in its folder; pick another")
        return WeightFiles((wanted,), _format(wanted), "your weights_file setting")
    if base_name:
        for suffix in (".safetensors", *PICKLE_SUFFIXES):
            if f"{base_name}{suffix}" in present:
                return WeightFiles((f"{base_name}{suffix}",), _format(suffix), base_name_source)
    if index is not None:
        return _from_index(index, present)
    safetensors = sorted(n for n in present if n.endswith(".safetensors") and is_weight_name(n))
    if safetensors:
        return WeightFiles(tuple(safetensors), "safetensors", "the folder's .safetensors files")
    pickles = sorted(n for n in present if n.endswith(PICKLE_SUFFIXES) and is_weight_name(n))
    if pickles:
        return WeightFiles(tuple(pickles), "pickle", "the folder's PyTorch files (no safetensors)")
    expected = f"{base_name}.safetensors" if base_name else "model.safetensors"
    raise ModelFormatError(f"The weights are missing: config.json is here but no {expected} (or shards); download "
                           "them again")  # fmt: skip


def _from_index(index: dict[str, Any], present: set[str]) -> WeightFiles:
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ModelFormatError(f"{SAFETENSORS_INDEX} has no weight_map; download it again")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if "/" in shard or "\\" in shard or shard.startswith("."):
            raise ModelFormatError(f"{SAFETENSORS_INDEX} names a shard {shard[:80]!r} outside the folder; refused")
        if shard not in present:
            raise ModelFormatError(f"Weight shard {shard} listed in {SAFETENSORS_INDEX} is missing; download it again")
    return WeightFiles(tuple(shards), "safetensors", SAFETENSORS_INDEX)


def _format(name: str) -> Literal["safetensors", "pickle"]:
    return "safetensors" if name.endswith(".safetensors") else "pickle"
