"""Model detection: what is on disk -> which loader, which settings, and why.

`detect(path)` is a pure function of a folder or a file. It reads metadata only (JSON configs, safetensors headers,
GGUF key/values and tensor infos), never weights, and decides from that metadata, never from how a file is named:
- `quantize_config.json`, or `quantization_config` with `quant_method: gptq` in `config.json` -> `gptq`;
- `.gguf` files -> `llama.cpp` when llama-cpp-python is installed, else `gguf` (the native loader);
- `config.json` + safetensors (or `.bin`) weights -> `transformers`;
- old GGML `.bin` files -> `UnsupportedModelError`.
Broken or contradictory input raises `ModelFormatError` naming the file. `reasons` are sentences for the UI.

    python -m loaders.detect PATH   # prints the detection as JSON (exit 0) or the error (exit 1)
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loaders import registry
from loaders.errors import CorralError, ModelFormatError, ModelNotFoundError, UnsupportedModelError

GPTQ_BITS = (2, 3, 4, 8)
GPTQ_FORMATS = ("gptq", "gptq_v2")
# Little-endian magics of the pre-GGUF formats (ggml, ggmf, ggjt, ggla): llama.cpp dropped them in August 2023.
GGML_MAGICS = (0x67676D6C, 0x67676D66, 0x67676A74, 0x67676C61)
PREFERRED_GGUF_QUANT = "Q4_K_M"
# The largest n_ctx chosen automatically for GGUF: the KV cache of a 128k window does not fit most machines.
AUTO_N_CTX_MAX = 8192
PARTIAL_SUFFIXES = (".part", ".partial", ".incomplete", ".tmp", ".download", ".lock")
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length")


@dataclass
class GGUFFileInfo:
    """One `.gguf` file of a folder; `quant` comes from its `general.file_type`."""

    name: str
    quant: str
    size_bytes: int


@dataclass
class Detection:
    """What detection found. `settings` are values of the loader's settings dataclass (`loaders/settings.py`);
    `settings_sources` names the file each of them came from."""

    path: Path
    loader: str
    settings: dict[str, Any] = field(default_factory=dict)
    settings_sources: dict[str, str] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    model_type: str | None = None
    architecture: str | None = None
    context_length: int | None = None
    rope_theta: float | None = None
    n_params: int | None = None
    quant: str | None = None  # "GPTQ 4-bit g128 act-order", "GGUF Q4_1"; None for unquantized weights
    gguf_files: list[GGUFFileInfo] = field(default_factory=list)
    has_chat_template: bool = False
    chat_template: str | None = None
    chat_template_source: str | None = None  # "tokenizer_config.json", "chat_template.jinja", "GGUF metadata"
    bos_token: str | None = None
    eos_token: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


# --- public entry points -----------------------------------------------------------------------------------------


def detect(path: Path) -> Detection:
    """Detect the loader and settings of the model at `path` (a folder, a `.gguf` file or a GGML `.bin`)."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"No model at {path}. Check the name, or download it in the Model tab.")
    if path.is_file():
        return _detect_file(path)
    return _detect_folder(path)


def list_models(models_dir: Path) -> list[str]:
    """Model names under `models_dir`: folders and loose `.gguf` files, without hidden or partial downloads."""
    if not models_dir.is_dir():
        return []
    names = [item.name for item in models_dir.iterdir() if _is_model_entry(item)]
    return sorted(names, key=str.lower)


def _is_model_entry(item: Path) -> bool:
    if item.name.startswith((".", "_")) or item.name.endswith(PARTIAL_SUFFIXES):
        return False
    if item.is_dir():
        return any(True for _ in _visible_files(item))
    return item.suffix.lower() == ".gguf"


def _visible_files(folder: Path) -> Iterable[Path]:
    for item in folder.iterdir():
        if item.is_file() and not item.name.startswith(".") and not item.name.endswith(PARTIAL_SUFFIXES):
            yield item


def _detect_file(path: Path) -> Detection:
    if path.suffix.lower() == ".gguf":
        return _detect_gguf(path, [path])
    if _is_ggml(path):
        raise _ggml_error(path)
    raise ModelFormatError(
        "This file is not a model Corral can load on its own: pick a .gguf file or a model folder", path=path
    )


def _detect_folder(folder: Path) -> Detection:
    files = sorted(_visible_files(folder), key=lambda p: p.name)
    ggufs = [p for p in files if p.suffix.lower() == ".gguf"]
    has_config = (folder / "config.json").is_file()
    if has_config and _hf_weight_files(folder, files):
        return _detect_hf(folder, files)
    if ggufs:
        return _detect_gguf(folder, ggufs)
    ggml = [p for p in files if p.suffix.lower() == ".bin" and _is_ggml(p)]
    if ggml:
        raise _ggml_error(ggml[0])
    if has_config:
        return _detect_hf(folder, files)  # raises: the weights are missing
    if (folder / "quantize_config.json").is_file():
        raise ModelFormatError("config.json is missing next to quantize_config.json; download it again", path=folder)
    raise ModelFormatError(
        "No model found in this folder: expected config.json with .safetensors weights, or a .gguf file", path=folder
    )


# --- GGML --------------------------------------------------------------------------------------------------------


def _is_ggml(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(4)
    return len(head) == 4 and struct.unpack("<I", head)[0] in GGML_MAGICS


def _ggml_error(path: Path) -> UnsupportedModelError:
    return UnsupportedModelError(
        "GGML is no longer supported, use a GGUF file: download the GGUF version of this model "
        "(the same repository name with -GGUF)",
        path=path,
    )


# --- JSON helpers ------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelFormatError(
            f"{path.name} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); "
            "download it again or fix it",
            path=path,
        ) from error
    except UnicodeDecodeError as error:
        raise ModelFormatError(f"{path.name} is not a UTF-8 text file; download it again", path=path) from error
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path.name} should hold a JSON object, not {type(data).__name__}", path=path)
    return data


def _read_json_if_exists(path: Path) -> dict[str, Any] | None:
    return _read_json(path) if path.is_file() else None


# --- Transformers and GPTQ folders ---------------------------------------------------------------------------------


def _hf_weight_files(folder: Path, files: list[Path]) -> list[Path]:
    """Weight files of a Transformers/GPTQ folder (an index's shards, or every .safetensors, or .bin files)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelFormatError("model.safetensors.index.json has no weight_map", path=index)
        return [folder / name for name in sorted(set(weight_map.values()))]
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    if safetensors:
        return safetensors
    return [p for p in files if p.suffix == ".bin" and not _is_ggml(p) and p.name != "training_args.bin"]


def _detect_hf(folder: Path, files: list[Path]) -> Detection:
    config = _read_json(folder / "config.json")
    gptq = _gptq_config(folder, config)
    weights = _weights_for(folder, files, gptq)
    detection = Detection(path=folder, loader="gptq" if gptq else "transformers")
    _describe_config(detection, config)
    if gptq is not None:
        _apply_gptq(detection, gptq, weights)
    else:
        detection.reasons.insert(0, f"config.json and {_names(weights)}: a Transformers model")
        detection.n_params = _count_params(weights, bits=None)
    _describe_weights(detection, weights)
    _describe_tokenizer(detection, folder, config)
    return detection


def _names(paths: list[Path]) -> str:
    if len(paths) > 2:
        return f"{paths[0].name} and {len(paths) - 1} more weight files"
    return " and ".join(p.name for p in paths)


def _weights_for(folder: Path, files: list[Path], gptq: GPTQInfo | None) -> list[Path]:
    if gptq is not None and gptq.base_name:  # older repos: gptq_model-4bit-128g.safetensors
        named = [folder / f"{gptq.base_name}{ext}" for ext in (".safetensors", ".bin")]
        found = [p for p in named if p.is_file()]
        if found:
            return found[:1]
    weights = _hf_weight_files(folder, files)
    if not weights:
        expected = f"{gptq.base_name}.safetensors" if gptq is not None and gptq.base_name else "model.safetensors"
        raise ModelFormatError(
            f"The weights are missing: config.json is here but no {expected} (or shards); download them again",
            path=folder,
        )
    missing = [p for p in weights if not p.is_file()]
    if missing:
        raise ModelFormatError(
            f"Weight shard {missing[0].name} listed in model.safetensors.index.json is missing; download it again",
            path=missing[0],
        )
    return weights


def _describe_config(detection: Detection, config: dict[str, Any]) -> None:
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    detection.model_type = config.get("model_type") or text.get("model_type")
    architectures = config.get("architectures") or text.get("architectures") or []
    detection.architecture = architectures[0] if architectures else None
    detection.context_length = _first_int(config, text, CONTEXT_KEYS)
    detection.rope_theta = _rope_theta(config) or _rope_theta(text)
    parts = [f"model type {detection.model_type}" if detection.model_type else None]
    if detection.context_length:
        parts.append(f"context length {detection.context_length}")
    if detection.rope_theta:
        parts.append(f"RoPE theta {detection.rope_theta:g}")
    said = ", ".join(p for p in parts if p)
    if said:
        detection.reasons.append(f"config.json says {said}")


def _first_int(config: dict[str, Any], text: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for source in (config, text):
        for key in keys:
            value = source.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _rope_theta(config: dict[str, Any]) -> float | None:
    """`rope_theta` (Transformers 4) or `rope_parameters.rope_theta` (Transformers 5, possibly per layer type)."""
    if isinstance(config.get("rope_theta"), int | float):
        return float(config["rope_theta"])
    params = config.get("rope_parameters")
    if not isinstance(params, dict):
        return None
    if isinstance(params.get("rope_theta"), int | float):
        return float(params["rope_theta"])
    nested = params.get("full_attention") or next((v for v in params.values() if isinstance(v, dict)), None)
    if isinstance(nested, dict) and isinstance(nested.get("rope_theta"), int | float):
        return float(nested["rope_theta"])
    return None


def _describe_weights(detection: Detection, weights: list[Path]) -> None:
    if detection.n_params is None:
        detection.reasons.append("Parameter count unknown: .bin weights have no header to read it from")
    else:
        detection.reasons.append(f"{_names(weights)} hold{'s' if len(weights) == 1 else ''} "
                                 f"{_human_count(detection.n_params)} parameters")


def _human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


# --- GPTQ ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GPTQInfo:
    """The GPTQ facts of a folder, validated; `source` is the file they came from."""

    bits: int
    group_size: int
    desc_act: bool
    sym: bool
    checkpoint_format: str
    base_name: str
    source: str
    path: Path


def _gptq_config(folder: Path, config: dict[str, Any]) -> GPTQInfo | None:
    """Validated GPTQ settings from quantize_config.json and/or config.json's quantization_config."""
    infos = []
    quantize_config = _read_json_if_exists(folder / "quantize_config.json")
    if quantize_config is not None:
        infos.append(_gptq_info(quantize_config, "quantize_config.json", folder / "quantize_config.json"))
    embedded = config.get("quantization_config")
    if isinstance(embedded, dict):
        method = str(embedded.get("quant_method", "")).lower()
        if method == "gptq":
            infos.append(_gptq_info(embedded, "config.json quantization_config", folder / "config.json"))
        elif method and quantize_config is None:
            raise UnsupportedModelError(
                f"config.json says the weights are quantized with {method}, which Corral cannot load; "
                "download a GPTQ or GGUF version of this model",
                path=folder / "config.json",
            )
    if len(infos) == 2:
        _check_agree(*infos)
    return infos[0] if infos else None


def _gptq_info(values: dict[str, Any], source: str, path: Path) -> GPTQInfo:
    bits = values.get("bits")
    if not isinstance(bits, int) or isinstance(bits, bool) or bits not in GPTQ_BITS:
        raise ModelFormatError(
            f"{source} says bits: {bits!r}; GPTQ weights are 2, 3, 4 or 8-bit. The file is damaged or not GPTQ",
            path=path,
        )
    group_size = values.get("group_size", -1)
    if not isinstance(group_size, int) or isinstance(group_size, bool) or not (group_size == -1 or group_size > 0):
        raise ModelFormatError(
            f"{source} says group_size: {group_size!r}; it must be -1 (no groups) or a positive number such as 128",
            path=path,
        )
    checkpoint_format = str(values.get("checkpoint_format") or values.get("format") or "gptq").lower()
    if checkpoint_format not in GPTQ_FORMATS:
        raise UnsupportedModelError(
            f"{source} says checkpoint_format: {checkpoint_format}; Corral reads {' and '.join(GPTQ_FORMATS)}",
            path=path,
        )
    return GPTQInfo(
        bits=bits,
        group_size=group_size,
        desc_act=_as_bool(values.get("desc_act", False), "desc_act", source, path),
        sym=_as_bool(values.get("sym", True), "sym", source, path),
        checkpoint_format=checkpoint_format,
        base_name=str(values.get("model_file_base_name") or ""),
        source=source,
        path=path,
    )


def _as_bool(value: Any, key: str, source: str, path: Path) -> bool:
    if not isinstance(value, bool):
        raise ModelFormatError(f"{source} says {key}: {value!r}; it must be true or false", path=path)
    return value


def _check_agree(first: GPTQInfo, second: GPTQInfo) -> None:
    for key in ("bits", "group_size", "desc_act", "sym"):
        if getattr(first, key) != getattr(second, key):
            raise ModelFormatError(
                f"{first.source} says {key}: {getattr(first, key)} but {second.source} says "
                f"{getattr(second, key)}; the folder mixes two quantizations, download it again",
                path=first.path.parent,
            )


def _apply_gptq(detection: Detection, gptq: GPTQInfo, weights: list[Path]) -> None:
    detection.settings = {
        "bits": gptq.bits,
        "group_size": gptq.group_size,
        "desc_act": gptq.desc_act,
        "sym": gptq.sym,
        "checkpoint_format": gptq.checkpoint_format,
        "weights_file": weights[0].name if len(weights) == 1 else "",
    }
    detection.settings_sources = {key: gptq.source for key in detection.settings}
    named = bool(gptq.base_name) and weights[0].stem == gptq.base_name
    weights_source = f"{gptq.source} model_file_base_name" if named else "the folder's files"
    detection.settings_sources["weights_file"] = weights_source
    detection.quant = _gptq_label(gptq)
    groups = "no groups" if gptq.group_size == -1 else f"group size {gptq.group_size}"
    detection.reasons.insert(
        0,
        f"{gptq.source} says {gptq.bits}-bit, {groups}, act-order {'on' if gptq.desc_act else 'off'}, "
        f"{'symmetric' if gptq.sym else 'asymmetric'}, checkpoint format {gptq.checkpoint_format}: a GPTQ model",
    )
    detection.n_params = _count_params(weights, bits=gptq.bits)
    if detection.n_params is not None:
        _check_gptq_tensors(weights, gptq)


def _gptq_label(gptq: GPTQInfo) -> str:
    parts = [f"GPTQ {gptq.bits}-bit"]
    if gptq.group_size != -1:
        parts.append(f"g{gptq.group_size}")
    if gptq.desc_act:
        parts.append("act-order")
    return " ".join(parts)


# --- safetensors headers -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors spelling: I32, F16, BF16, F32...


def _tensor_infos(path: Path) -> list[TensorInfo]:
    """Names, shapes and dtypes from a safetensors header; the data is never read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy") as handle:
            return [_tensor_info(handle, name) for name in handle.keys()]  # noqa: SIM118 (not a dict)
    except SafetensorError as error:
        raise ModelFormatError(
            f"{path.name} is truncated or corrupt ({error}); download it again", path=path
        ) from error


def _tensor_info(handle: Any, name: str) -> TensorInfo:
    view = handle.get_slice(name)
    return TensorInfo(name, tuple(view.get_shape()), view.get_dtype())


def _count_params(weights: list[Path], *, bits: int | None) -> int | None:
    """Parameters from safetensors headers; a GPTQ qweight [in * bits / 32, out] counts in * out. None for .bin."""
    if any(p.suffix != ".safetensors" for p in weights):
        return None
    total = 0
    for path in weights:
        for info in _tensor_infos(path):
            total += _tensor_params(info, bits)
    return total


def _tensor_params(info: TensorInfo, bits: int | None) -> int:
    if bits is not None and info.name.endswith((".qzeros", ".scales", ".g_idx")):
        return 0
    if bits is not None and info.name.endswith(".qweight") and len(info.shape) == 2:
        return info.shape[0] * 32 // bits * info.shape[1]
    return math.prod(info.shape)


def _check_gptq_tensors(weights: list[Path], gptq: GPTQInfo) -> None:
    """Every quantized layer's tensors must have the shapes the config's bits and group size imply."""
    found = False
    for path in weights:
        tensors = {info.name: info for info in _tensor_infos(path)}
        for name in tensors:
            if name.endswith(".qweight"):
                found = True
                _check_gptq_layer(tensors, name[: -len(".qweight")], gptq, path)
    if not found:
        raise ModelFormatError(
            f"{gptq.source} says GPTQ but the weights hold no qweight tensors; the folder mixes two downloads",
            path=weights[0],
        )


def _check_gptq_layer(tensors: dict[str, TensorInfo], prefix: str, gptq: GPTQInfo, path: Path) -> None:
    qweight = tensors[f"{prefix}.qweight"]
    if qweight.dtype != "I32" or len(qweight.shape) != 2 or qweight.shape[0] * 32 % gptq.bits:
        _shape_error(qweight, gptq, path)
    in_features, out_features = qweight.shape[0] * 32 // gptq.bits, qweight.shape[1]
    groups = 1 if gptq.group_size == -1 else math.ceil(in_features / gptq.group_size)
    g_idx, qzeros, scales = (tensors.get(f"{prefix}.{part}") for part in ("g_idx", "qzeros", "scales"))
    if g_idx is not None and g_idx.shape != (in_features,):
        _shape_error(qweight, gptq, path, other=g_idx)
    if qzeros is not None and (len(qzeros.shape) != 2 or qzeros.shape[1] * 32 != out_features * gptq.bits):
        _shape_error(qweight, gptq, path, other=qzeros)
    for grouped in (qzeros, scales):
        if grouped is not None and grouped.shape[0] != groups:
            raise ModelFormatError(
                f"{grouped.name} has {grouped.shape[0]} groups but {gptq.source} says group size "
                f"{gptq.group_size}, which gives {groups} for {in_features} inputs; "
                "the weights and the config disagree",
                path=path,
            )


def _shape_error(qweight: TensorInfo, gptq: GPTQInfo, path: Path, *, other: TensorInfo | None = None) -> None:
    shapes = f"{qweight.name} {list(qweight.shape)} {qweight.dtype}"
    if other is not None:
        shapes += f" and {other.name} {list(other.shape)}"
    raise ModelFormatError(
        f"{shapes} do not fit {gptq.bits}-bit GPTQ as {gptq.source} says (bits: {gptq.bits}); "
        "the weights and the config disagree, download the folder again",
        path=path,
    )


# --- tokenizer and chat template (Transformers folders) -----------------------------------------------------------


def _describe_tokenizer(detection: Detection, folder: Path, config: dict[str, Any]) -> None:
    tokenizer_config = _read_json_if_exists(folder / "tokenizer_config.json") or {}
    template, source = _hf_chat_template(folder, tokenizer_config)
    _set_template(detection, template, source)
    special = _read_json_if_exists(folder / "special_tokens_map.json") or {}
    detection.bos_token = _token_text(tokenizer_config.get("bos_token")) or _token_text(special.get("bos_token"))
    detection.eos_token = _token_text(tokenizer_config.get("eos_token")) or _token_text(special.get("eos_token"))
    if detection.bos_token is None or detection.eos_token is None:
        _tokens_from_ids(detection, folder, config)


def _hf_chat_template(folder: Path, tokenizer_config: dict[str, Any]) -> tuple[str | None, str | None]:
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if isinstance(template, str) and template.strip():
        return template, "tokenizer_config.json"
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8"), jinja.name
    template_json = _read_json_if_exists(folder / "chat_template.json") or {}
    if isinstance(template_json.get("chat_template"), str):
        return template_json["chat_template"], "chat_template.json"
    return None, None


def _set_template(detection: Detection, template: str | None, source: str | None) -> None:
    detection.has_chat_template = template is not None
    detection.chat_template = template
    detection.chat_template_source = source
    if template is not None:
        detection.reasons.append(f"The model ships its own chat template ({source})")
    else:
        detection.reasons.append("The model ships no chat template: pick a prompt template")


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # a serialized AddedToken
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _tokens_from_ids(detection: Detection, folder: Path, config: dict[str, Any]) -> None:
    """bos/eos strings from config.json's ids and tokenizer.json's added tokens, when tokenizer_config has none."""
    tokenizer = _read_json_if_exists(folder / "tokenizer.json") or {}
    added = {t.get("id"): t.get("content") for t in tokenizer.get("added_tokens") or [] if isinstance(t, dict)}
    bos_id, eos_id = config.get("bos_token_id"), config.get("eos_token_id")
    eos_id = eos_id[0] if isinstance(eos_id, list) and eos_id else eos_id
    detection.bos_token = detection.bos_token or added.get(bos_id)
    detection.eos_token = detection.eos_token or added.get(eos_id)


# --- GGUF ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GGUFMeta:
    """What detection needs from one GGUF file's header."""

    path: Path
    quant: str
    architecture: str | None
    context_length: int | None
    rope_theta: float | None
    n_params: int
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None


def _detect_gguf(where: Path, files: list[Path]) -> Detection:
    metas = [_read_gguf(path) for path in files]
    chosen, why = _choose_gguf(metas)
    loader = "llama.cpp" if registry.is_available("llama.cpp") else "gguf"
    detection = Detection(
        path=where,
        loader=loader,
        model_type=chosen.architecture,
        architecture=chosen.architecture,
        context_length=chosen.context_length,
        rope_theta=chosen.rope_theta,
        n_params=chosen.n_params,
        quant=f"GGUF {chosen.quant}",
        gguf_files=[GGUFFileInfo(m.path.name, m.quant, m.path.stat().st_size) for m in metas] if len(metas) > 1 else [],
        bos_token=chosen.bos_token,
        eos_token=chosen.eos_token,
    )
    n_ctx = min(chosen.context_length or AUTO_N_CTX_MAX, AUTO_N_CTX_MAX)
    detection.settings = {"file": chosen.path.name, "n_ctx": n_ctx}
    detection.settings_sources = {"file": "the folder's .gguf files", "n_ctx": "GGUF metadata"}
    detection.reasons.extend([why, _loader_reason(loader), _gguf_meta_reason(chosen, n_ctx)])
    _set_template(detection, chosen.chat_template, "GGUF metadata" if chosen.chat_template else None)
    return detection


def _loader_reason(loader: str) -> str:
    if loader == "llama.cpp":
        return "GGUF file and llama-cpp-python is installed: the llama.cpp loader"
    return "GGUF file and llama-cpp-python is not installed: Corral's native GGUF loader"


def _gguf_meta_reason(meta: GGUFMeta, n_ctx: int) -> str:
    said = [f"architecture {meta.architecture}", f"{_human_count(meta.n_params)} parameters"]
    if meta.context_length:
        said.append(f"context length {meta.context_length}")
    if meta.rope_theta:
        said.append(f"RoPE theta {meta.rope_theta:g}")
    reason = f"{meta.path.name} metadata says {', '.join(said)}"
    if meta.context_length and n_ctx < meta.context_length:
        reason += f"; n_ctx set to {n_ctx} to save memory (raise it if you need a longer context)"
    return reason


def _choose_gguf(metas: list[GGUFMeta]) -> tuple[GGUFMeta, str]:
    if len(metas) == 1:
        return metas[0], f"{metas[0].path.name}: GGUF {metas[0].quant} (from its general.file_type)"
    preferred = [m for m in metas if m.quant == PREFERRED_GGUF_QUANT]
    if preferred:
        return preferred[0], (
            f"{len(metas)} GGUF files; chose {preferred[0].path.name}: it is {PREFERRED_GGUF_QUANT} "
            "(from its general.file_type), a good balance of size and quality"
        )
    quants = ", ".join(f"{m.path.name} = {m.quant}" for m in metas)
    return metas[0], f"{len(metas)} GGUF files ({quants}); none is {PREFERRED_GGUF_QUANT}, chose the first by name"


def _read_gguf(path: Path) -> GGUFMeta:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except (ValueError, IndexError, struct.error) as error:
        # GGUFReader reports a bad magic, a truncated header or truncated tensor data as one of these.
        raise ModelFormatError(
            f"{path.name} is not a complete GGUF file ({error}); "
            "the download was probably cut short, download it again",
            path=path,
        ) from error
    return _gguf_meta(path, reader)


def _gguf_meta(path: Path, reader: Any) -> GGUFMeta:
    arch = _gguf_value(reader, "general.architecture")
    bos_id = _gguf_value(reader, "tokenizer.ggml.bos_token_id")
    eos_id = _gguf_value(reader, "tokenizer.ggml.eos_token_id")
    return GGUFMeta(
        path=path,
        quant=_gguf_quant(reader),
        architecture=arch,
        context_length=_gguf_value(reader, f"{arch}.context_length"),
        rope_theta=_gguf_value(reader, f"{arch}.rope.freq_base"),
        n_params=sum(int(t.n_elements) for t in reader.tensors),
        chat_template=_gguf_value(reader, "tokenizer.chat_template"),
        bos_token=_gguf_token(reader, bos_id),
        eos_token=_gguf_token(reader, eos_id),
    )


def _gguf_value(reader: Any, key: str) -> Any:
    item = reader.fields.get(key)
    return None if item is None else item.contents()


def _gguf_token(reader: Any, token_id: int | None) -> str | None:
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is None or token_id is None or not 0 <= token_id < len(tokens.data):
        return None
    return tokens.contents(token_id)


def _gguf_quant(reader: Any) -> str:
    """The quant from `general.file_type`, else the type holding most of the weights."""
    from gguf import LlamaFileType

    file_type = _gguf_value(reader, "general.file_type")
    if file_type is not None:
        try:
            return LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            return f"file type {file_type}"
    sizes: dict[str, int] = {}
    for tensor in reader.tensors:
        sizes[tensor.tensor_type.name] = sizes.get(tensor.tensor_type.name, 0) + int(tensor.n_elements)
    return max(sizes, key=sizes.__getitem__) if sizes else "unknown"


# --- command line ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m loaders.detect PATH", file=sys.stderr)
        return 2
    try:
        detection = detect(Path(args[0]))
    except CorralError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(detection.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

