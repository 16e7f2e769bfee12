"""A model's quantization config: `quantize_config.json` and/or `config.json`'s `quantization_config`, validated once.

The one parser every part uses (detection, the GPTQ loader, local and Hub estimates). It takes the parsed JSON
objects, so it serves a folder on disk and a repository on the Hub alike. GPTQ is the quantization Corral loads;
any other `quant_method` is refused with the name of the method, so the user knows what to download instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loaders.errors import ModelFormatError, UnsupportedModelError

GPTQ_BITS = (2, 3, 4, 8)
GPTQ_FORMATS = ("gptq", "gptq_v2")
QUANTIZE_CONFIG = "quantize_config.json"
EMBEDDED = "config.json quantization_config"


@dataclass(frozen=True)
class GPTQConfig:
    """The GPTQ facts of a model, validated; `source` names the file they came from."""

    bits: int
    group_size: int  # -1 = one group per column
    desc_act: bool
    sym: bool
    checkpoint_format: str  # gptq (v1: zeros stored minus one) | gptq_v2
    base_name: str  # model_file_base_name of older repos ("gptq_model-4bit-128g"), "" when absent
    source: str

    @property
    def zero_offset(self) -> int:
        return 1 if self.checkpoint_format == "gptq" else 0

    @property
    def label(self) -> str:
        """"GPTQ 4-bit g128 act-order"."""
        parts = [f"GPTQ {self.bits}-bit"]
        if self.group_size != -1:
            parts.append(f"g{self.group_size}")
        if self.desc_act:
            parts.append("act-order")
        return " ".join(parts)

    def groups(self, in_features: int) -> int:
        return 1 if self.group_size == -1 else -(-in_features // self.group_size)


def gptq_config(config: dict[str, Any] | None, quantize_config: dict[str, Any] | None) -> GPTQConfig | None:
    """The GPTQ config of a model from its two possible sources (None: not quantized). Both present must agree;
    another quantization method raises `UnsupportedModelError`; a malformed value `ModelFormatError`."""
    found = []
    if quantize_config is not None:
        found.append(_parse(quantize_config, QUANTIZE_CONFIG))
    embedded = (config or {}).get("quantization_config")
    if isinstance(embedded, dict):
        method = str(embedded.get("quant_method", "gptq")).lower()
        if method == "gptq":
            found.append(_parse(embedded, EMBEDDED))
        elif quantize_config is None:
            raise UnsupportedModelError(
                f"config.json says the weights are quantized with {method}, which Corral cannot load; "
                "download a GPTQ or GGUF version of this model"
            )
    if len(found) == 2:
        _check_agree(*found)
    return found[0] if found else None


def _parse(values: dict[str, Any], source: str) -> GPTQConfig:
    bits = values.get("bits")
    if not _is_int(bits) or bits not in GPTQ_BITS:
        raise ModelFormatError(f"{source} says bits: {bits!r}; GPTQ weights are 2, 3, 4 or 8-bit. The file is damaged "
                               "or not GPTQ")  # fmt: skip
    group_size = values.get("group_size", -1)
    if not _is_int(group_size) or not (group_size == -1 or group_size > 0):
        raise ModelFormatError(
            f"{source} says group_size: {group_size!r}; it must be -1 (no groups) or a positive number such as 128"
        )
    if values.get("is_marlin_format"):
        raise UnsupportedModelError(f"{source}: Marlin-format GPTQ checkpoints are not supported; download a plain "
                                    "GPTQ branch")  # fmt: skip
    checkpoint_format = str(values.get("checkpoint_format") or values.get("format") or "gptq").lower()
    if checkpoint_format not in GPTQ_FORMATS:
        raise UnsupportedModelError(
            f"{source} says checkpoint_format: {checkpoint_format}; Corral reads {' and '.join(GPTQ_FORMATS)}"
        )
    base_name = values.get("model_file_base_name") or ""
    if not isinstance(base_name, str) or "/" in base_name or "\\" in base_name or base_name.startswith("."):
        raise ModelFormatError(f"{source} says model_file_base_name: {base_name!r}; it must be a plain file name")
    desc_act, sym = _as_bool(values, "desc_act", False, source), _as_bool(values, "sym", True, source)
    return GPTQConfig(bits, group_size, desc_act, sym, checkpoint_format, base_name, source)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_bool(values: dict[str, Any], key: str, default: bool, source: str) -> bool:
    value = values.get(key, default)
    if not isinstance(value, bool):
        raise ModelFormatError(f"{source} says {key}: {value!r}; it must be true or false")
    return value


def _check_agree(first: GPTQConfig, second: GPTQConfig) -> None:
    for key in ("bits", "group_size", "desc_act", "sym"):
        if getattr(first, key) != getattr(second, key):
            raise ModelFormatError(
                f"{first.source} says {key}: {getattr(first, key)} but {second.source} says {getattr(second, key)}; "
                "the folder mixes two quantizations, download it again"
            )
