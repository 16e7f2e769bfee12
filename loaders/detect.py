"""Model detection: what is on disk -> which loader, which settings, and why.

`detect(path)` reads the model's files once (`loaders.files.read_model_files`) and decides from their metadata,
never from how a file is named:
- a GPTQ config (`quantize_config.json`, or `quantization_config` with `quant_method: gptq`) -> `gptq`;
- a `quantization_config` of AWQ, compressed-tensors, fp8, bitsandbytes or HQQ -> `transformers` (its own quantizer;
  the reasons name the package it needs and whether it is installed);
- `.gguf` files -> `llama.cpp` when llama-cpp-python is installed, else `gguf` (the native loader);
- `config.json` + safetensors (or `.bin`) weights -> `transformers`;
- old GGML `.bin` files -> `UnsupportedModelError`.
Broken or contradictory input raises `ModelFormatError` naming the file. `reasons` are sentences for the UI.

    python -m loaders.detect PATH   # prints the detection as JSON (exit 0) or the error (exit 1)
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loaders import registry
from loaders.errors import CorralError, ModelFormatError
from loaders.files import ModelFiles, read_model_files
from loaders.files.quant_config import GPTQConfig, TransformersQuant
from loaders.files.safetensors_header import SafetensorsTensor
from loaders.files.shape import rope_theta

# The largest n_ctx chosen automatically for GGUF: the KV cache of a 128k window does not fit most machines.
AUTO_N_CTX_MAX = 8192
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length")


@dataclass
class GGUFFileInfo:
    """One quantization among a folder's `.gguf` files; `quant` comes from its `general.file_type`."""

    name: str
    quant: str
    size_bytes: int


@dataclass
class Detection:
    """What detection found. `settings` are values of the loader's settings dataclass (`loaders/settings.py`);
    `settings_sources` names the file each of them came from; `files` is the record everything else reads."""

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
    files: ModelFiles | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("files")
        data["path"] = str(self.path)
        return data


def detect(path: Path) -> Detection:
    """Detect the loader and settings of the model at `path` (a folder, a `.gguf` file or a GGML `.bin`)."""
    return detect_files(read_model_files(Path(path)))


def detect_files(files: ModelFiles) -> Detection:
    """Detection from files already read."""
    detection = _detect_gguf(files) if files.format == "gguf" else _detect_hf(files)
    detection.files = files
    chat = files.chat
    detection.has_chat_template = chat.template is not None
    detection.chat_template, detection.chat_template_source = chat.template, chat.template_source
    detection.bos_token, detection.eos_token = chat.bos_token, chat.eos_token
    if chat.template is not None:
        detection.reasons.append(f"The model ships its own chat template ({chat.template_source})")
    else:
        detection.reasons.append("The model ships no chat template: pick a prompt template")
    return detection


# --- Transformers and GPTQ folders ---------------------------------------------------------------------------------


def _detect_hf(files: ModelFiles) -> Detection:
    assert files.config is not None and files.weights is not None
    gptq = files.gptq
    detection = Detection(path=files.path, loader="gptq" if gptq else "transformers")
    _describe_config(detection, files.config)
    names = _names(list(files.weights.names))
    if gptq is not None:
        _apply_gptq(detection, files, gptq)
    else:
        detection.reasons.insert(0, f"config.json and {names}: a Transformers model")
    if files.quant is not None:
        detection.quant = files.quant.label
        detection.reasons.insert(1, quant_reason(files.quant))
    detection.n_params = files.n_params
    if detection.n_params is None:
        detection.reasons.append("Parameter count unknown: .bin weights have no header to read it from")
    else:
        verb = "holds" if len(files.weights.names) == 1 else "hold"
        detection.reasons.append(f"{names} {verb} {_human_count(detection.n_params)} parameters")
    return detection


def quant_reason(quant: TransformersQuant) -> str:
    """Why a pre-quantized checkpoint goes to the Transformers loader, and whether it can load here."""
    said = f" ({quant.details})" if quant.details else ""
    method = quant.info
    reason = f"{quant.source} says quant_method {quant.method}{said}: loaded through Transformers' {method.name} " \
             f"quantizer, which needs the {method.package} package"  # fmt: skip
    reason += " (installed)" if quant.installed else f", not installed: pip install {method.package}"
    return reason + (f"; {method.notes}" if method.notes else "")


def _names(names: list[str]) -> str:
    if len(names) > 2:
        return f"{names[0]} and {len(names) - 1} more weight files"
    return " and ".join(names)


def _describe_config(detection: Detection, config: dict[str, Any]) -> None:
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    detection.model_type = config.get("model_type") or text.get("model_type")
    architectures = config.get("architectures") or text.get("architectures") or []
    detection.architecture = architectures[0] if isinstance(architectures, list) and architectures else None
    detection.context_length = _first_int(config, text, CONTEXT_KEYS)
    detection.rope_theta = rope_theta(config) or rope_theta(text)
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


def _human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _apply_gptq(detection: Detection, files: ModelFiles, gptq: GPTQConfig) -> None:
    weights = files.weights
    assert weights is not None
    detection.settings = {
        "bits": gptq.bits, "group_size": gptq.group_size, "desc_act": gptq.desc_act, "sym": gptq.sym,
        "checkpoint_format": gptq.checkpoint_format,
        "weights_file": weights.names[0] if len(weights.names) == 1 else "",
    }  # fmt: skip
    detection.settings_sources = {key: gptq.source for key in detection.settings}
    detection.settings_sources["weights_file"] = weights.source
    detection.quant = gptq.label
    groups = "no groups" if gptq.group_size == -1 else f"group size {gptq.group_size}"
    detection.reasons.insert(
        0,
        f"{gptq.source} says {gptq.bits}-bit, {groups}, act-order {'on' if gptq.desc_act else 'off'}, "
        f"{'symmetric' if gptq.sym else 'asymmetric'}, checkpoint format {gptq.checkpoint_format}: a GPTQ model",
    )
    if files.tensors:
        _check_gptq_tensors(files, gptq)


def _check_gptq_tensors(files: ModelFiles, gptq: GPTQConfig) -> None:
    """Every quantized layer's tensors must have the shapes the config's bits and group size imply."""
    by_name = {t.name: t for t in files.tensors}
    where = {t.name: name for name in files.weights.names for t in files.tensors}  # type: ignore[union-attr]
    qweights = [name for name in by_name if name.endswith(".qweight")]
    if not qweights:
        raise ModelFormatError(f"{gptq.source} says GPTQ but the weights hold no qweight tensors; the folder mixes "
                               "two downloads", path=files.weight_paths[0])  # fmt: skip
    for name in qweights:
        _check_gptq_layer(by_name, name[: -len(".qweight")], gptq, files.folder / where.get(name, ""))


def _check_gptq_layer(tensors: dict[str, SafetensorsTensor], prefix: str, gptq: GPTQConfig, path: Path) -> None:
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
                f"{gptq.group_size}, which gives {groups} for {in_features} inputs; the weights and the config "
                "disagree",
                path=path,
            )


def _shape_error(qweight: SafetensorsTensor, gptq: GPTQConfig, path: Path, *,
                 other: SafetensorsTensor | None = None) -> None:  # fmt: skip
    shapes = f"{qweight.name} {list(qweight.shape)} {qweight.dtype}"
    if other is not None:
        shapes += f" and {other.name} {list(other.shape)}"
    raise ModelFormatError(
        f"{shapes} do not fit {gptq.bits}-bit GPTQ as {gptq.source} says (bits: {gptq.bits}); "
        "the weights and the config disagree, download the folder again",
        path=path,
    )


# --- GGUF ----------------------------------------------------------------------------------------------------------


def _detect_gguf(files: ModelFiles) -> Detection:
    header, chosen = files.header, files.gguf
    assert header is not None and chosen is not None
    shape = files.shape
    loader = "llama.cpp" if registry.is_available("llama.cpp") else "gguf"
    context = shape.context_max
    infos = [GGUFFileInfo(c.name, c.quant, c.size) for c in files.ggufs] if len(files.ggufs) > 1 else []
    detection = Detection(path=files.path, loader=loader, model_type=shape.arch, architecture=shape.arch,
                          context_length=context, rope_theta=shape.rope_theta, n_params=header.n_params,
                          quant=f"GGUF {chosen.quant}", gguf_files=infos)  # fmt: skip
    n_ctx = default_n_ctx(context)
    detection.settings = {"file": chosen.name, "n_ctx": n_ctx}
    detection.settings_sources = {"file": "the folder's .gguf files", "n_ctx": "GGUF metadata"}
    reason = f"{chosen.name} metadata says architecture {shape.arch}, {_human_count(header.n_params)} parameters, " \
             f"context length {context}, RoPE theta {shape.rope_theta:g}"  # fmt: skip
    if n_ctx < context:
        reason += f"; n_ctx set to {n_ctx} to save memory (raise it if you need a longer context)"
    why = f"{files.gguf_reason} (the quant from each file's general.file_type, not its name)"
    detection.reasons.extend([why, _loader_reason(loader), reason])
    return detection


def default_n_ctx(context_max: int) -> int:
    """The context a GGUF model is loaded with unless the user sets one: its own, at most `AUTO_N_CTX_MAX`."""
    return min(context_max, AUTO_N_CTX_MAX)


def _loader_reason(loader: str) -> str:
    if loader == "llama.cpp":
        return "GGUF file and llama-cpp-python is installed: the llama.cpp loader"
    return "GGUF file and llama-cpp-python is not installed: Corral's native GGUF loader"


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
