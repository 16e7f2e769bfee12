"""A model's quantization config: `quantize_config.json` and/or `config.json`'s `quantization_config`, validated once.

The one parser every part uses (detection, the GPTQ loader, local and Hub estimates). It takes the parsed JSON
objects, so it serves a folder on disk and a repository on the Hub alike. GPTQ runs on Corral's own loader
(`gptq_config`); the methods Transformers' own quantizers load (AWQ, compressed-tensors, fp8, bitsandbytes, HQQ) are
read by `transformers_quant`, which names the package each needs; any other `quant_method` is refused by name.
"""

from __future__ import annotations

import importlib.util
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
    another quantization method is `transformers_quant`'s; a malformed value raises `ModelFormatError`."""
    found = []
    if quantize_config is not None:
        found.append(_parse(quantize_config, QUANTIZE_CONFIG))
    embedded = (config or {}).get("quantization_config")
    if isinstance(embedded, dict) and _method(embedded) == "gptq":
        found.append(_parse(embedded, EMBEDDED))
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


# --- quantizations Transformers loads ------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantMethod:
    """A `quant_method` that Transformers' own quantizer loads, and the package that backs it."""

    name: str  # as the Model tab says it: "AWQ"
    package: str  # the distribution to install: "gptqmodel"
    module: str  # what it imports as: "gptqmodel"
    notes: str = ""  # what the user should know (device limits)


# Transformers 5's quantizers (`transformers/quantizers/auto.py`) and what each one imports in `validate_environment`.
TRANSFORMERS_METHODS: dict[str, QuantMethod] = {
    "awq": QuantMethod("AWQ", "gptqmodel", "gptqmodel", "AWQ kernels run on CUDA"),
    "compressed-tensors": QuantMethod("compressed-tensors", "compressed-tensors", "compressed_tensors"),
    "fp8": QuantMethod("FP8", "accelerate", "accelerate",
                       "without a GPU of compute capability 8.9+ Transformers dequantizes the weights to bfloat16"),
    "bitsandbytes": QuantMethod("bitsandbytes", "bitsandbytes", "bitsandbytes"),
    "hqq": QuantMethod("HQQ", "hqq", "hqq", "HQQ runs on CUDA only"),
}  # fmt: skip


@dataclass(frozen=True)
class TransformersQuant:
    """A checkpoint quantized with a method Transformers loads: `config.json`'s `quantization_config`, checked."""

    method: str  # the key of TRANSFORMERS_METHODS
    bits: int | None  # None when the config does not say (fp8: 8, compressed-tensors: per scheme)
    details: str  # "4-bit, group size 128, gemm"
    source: str = EMBEDDED

    @property
    def info(self) -> QuantMethod:
        return TRANSFORMERS_METHODS[self.method]

    @property
    def label(self) -> str:
        """"AWQ 4-bit"."""
        return f"{self.info.name} {self.bits}-bit" if self.bits else self.info.name

    @property
    def installed(self) -> bool:
        return importlib.util.find_spec(self.info.module) is not None

    def missing_message(self) -> str:
        """Why it cannot load here and the exact package to install."""
        return (f"This model is quantized with {self.info.name} ({self.source}); Transformers loads it with the "
                f"{self.info.package} package, which is not installed. Install it into Corral's environment "
                f"(installer_files/env/bin/python -m pip install {self.info.package}) and load again, or download "
                "a GPTQ or GGUF version of this model.")  # fmt: skip


def transformers_quant(config: dict[str, Any] | None) -> TransformersQuant | None:
    """The `quantization_config` of a checkpoint that Transformers' own quantizers load (None: not quantized, or
    GPTQ, which is `gptq_config`'s). Another method raises `UnsupportedModelError` naming it."""
    embedded = (config or {}).get("quantization_config")
    if not isinstance(embedded, dict) or _method(embedded) == "gptq":
        return None
    method = _method(embedded)
    if method not in TRANSFORMERS_METHODS:
        raise UnsupportedModelError(
            f"config.json says the weights are quantized with {method[:40]}, which Corral cannot load (it loads GPTQ, "
            f"GGUF and, through Transformers, {', '.join(m.name for m in TRANSFORMERS_METHODS.values())}); "
            "download a GPTQ or GGUF version of this model"
        )
    bits = _quant_bits(method, embedded)
    return TransformersQuant(method, bits, _details(method, embedded, bits))


def _method(values: dict[str, Any]) -> str:
    return str(values.get("quant_method", "gptq")).lower().replace("_", "-")


def _quant_bits(method: str, values: dict[str, Any]) -> int | None:
    if method == "fp8":
        return 8
    if method == "bitsandbytes":
        return 4 if values.get("load_in_4bit") or values.get("_load_in_4bit") else 8
    bits = values.get("bits", values.get("w_bit", values.get("nbits")))
    return bits if _is_int(bits) and 1 <= bits <= 16 else None


def _details(method: str, values: dict[str, Any], bits: int | None) -> str:
    parts = [f"{bits}-bit"] if bits else []
    group = values.get("group_size", values.get("q_group_size"))
    if _is_int(group) and group > 0:
        parts.append(f"group size {group}")
    if method == "bitsandbytes" and bits == 4:
        parts.append(str(values.get("bnb_4bit_quant_type", "fp4")))
    if method == "fp8" and isinstance(values.get("weight_block_size"), list):
        parts.append("blocks " + "x".join(str(v) for v in values["weight_block_size"][:2]))
    if method == "awq" and isinstance(values.get("version"), str):
        parts.append(values["version"][:20])
    if method == "compressed-tensors" and isinstance(values.get("format"), str):
        parts.append(values["format"][:40])
    return ", ".join(parts)
