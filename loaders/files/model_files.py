"""What is on disk for one model, read once into a read-only `ModelFiles` record.

`read_model_files(path)` reads a model folder or a `.gguf` file: for a Transformers / GPTQ folder, config.json, the
quantization config, the weight files and their safetensors headers, the tokenizer's template and special tokens;
for GGUF, every `.gguf` file's header, the chosen file (the user's pick, else the folder's remembered pick, else the
shared preference rule) and its shape. Detection, the load plans, the estimator and the loaders all read this
record; none of them parses a model file itself. Names from users are checked by `model_path` / `file_in_folder`:
one plain name inside the folder (links allowed), never a path.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from loaders.errors import ModelFormatError, ModelNameError, ModelNotFoundError, UnsupportedModelError
from loaders.files.gguf_choice import GGUFCandidate, choose_gguf, group_gguf, with_quants
from loaders.files.gguf_header import GGUFHeader, read_gguf_header
from loaders.files.jsonfile import read_json_if_exists, read_json_object
from loaders.files.quant_config import (
    EMBEDDED,
    QUANTIZE_CONFIG,
    GPTQConfig,
    TransformersQuant,
    gptq_config,
    transformers_quant,
)
from loaders.files.safetensors_header import SafetensorsTensor, read_safetensors_header
from loaders.files.shape import ModelShape
from loaders.files.weights import SAFETENSORS_INDEX, WeightFiles, find_weight_files

SOURCE_RECORD = ".corral-source.json"  # written by the downloader: where the folder came from, the GGUF picked
PARTIAL_SUFFIXES = (".part", ".partial", ".incomplete", ".tmp", ".download", ".lock")
# Little-endian magics of the pre-GGUF formats (ggml, ggmf, ggjt, ggla): llama.cpp dropped them in August 2023.
GGML_MAGICS = (0x67676D6C, 0x67676D66, 0x67676A74, 0x67676C61)


@dataclass(frozen=True)
class ChatFacts:
    """The model's own chat template and special tokens, as its files state them."""

    template: str | None = None
    template_source: str | None = None  # "tokenizer_config.json", "chat_template.jinja", "GGUF metadata"
    bos_token: str | None = None
    eos_token: str | None = None


@dataclass(frozen=True)
class ModelFiles:
    """One model's files, read once. `path` is what was asked for (a folder or a .gguf file)."""

    path: Path
    folder: Path
    format: Literal["hf", "gguf"]
    shape: ModelShape
    chat: ChatFacts
    config: dict[str, Any] | None = None  # config.json (hf)
    gptq: GPTQConfig | None = None
    quant: TransformersQuant | None = None  # a checkpoint Transformers' own quantizer loads (AWQ, fp8, bnb...)
    weights: WeightFiles | None = None
    tensors: tuple[SafetensorsTensor, ...] = ()  # from the safetensors headers; () for pickles
    ggufs: tuple[GGUFCandidate, ...] = ()  # every quant in the folder (gguf)
    gguf: GGUFCandidate | None = None  # the chosen one
    gguf_reason: str = ""
    header: GGUFHeader | None = None  # the chosen file's header
    headers: dict[str, GGUFHeader] | None = None  # every first file's header, by name
    remote_bytes: int = 0  # a record of a Hub branch: the weight files' sizes as listed

    def file(self, name: str) -> Path:
        return file_in_folder(self.folder, name)

    @property
    def weight_paths(self) -> list[Path]:
        return [self.folder / name for name in (self.weights.names if self.weights else ())]

    @property
    def gguf_path(self) -> Path:
        if self.gguf is None:
            raise ModelFormatError("This model has no GGUF file", path=self.path)
        return self.path if self.path.is_file() else self.folder / self.gguf.name

    @property
    def n_params(self) -> int | None:
        """Parameters from the headers (a GPTQ qweight [in·bits/32, out] counts in·out); None for .bin weights."""
        if self.header is not None:
            return self.header.n_params
        if not self.tensors:
            return None
        bits = self.gptq.bits if self.gptq else None
        total = 0
        for t in self.tensors:
            if bits is not None and t.name.endswith((".qzeros", ".scales", ".g_idx")):
                continue
            if bits is not None and t.name.endswith(".qweight") and len(t.shape) == 2:
                total += t.shape[0] * 32 // bits * t.shape[1]
            else:
                total += math.prod(t.shape)
        return total

    @property
    def file_bytes(self) -> int:
        if self.format == "gguf":
            return self.gguf.size if self.gguf else 0
        return self.remote_bytes or sum(_size(p) for p in self.weight_paths)

    def with_gguf(self, name: str) -> ModelFiles:
        """The same folder with another of its GGUF files chosen (by name)."""
        if self.format != "gguf" or not name or (self.gguf is not None and name in self.gguf.parts):
            return self
        chosen, why = choose_gguf(self.ggufs, wanted=name)
        header = (self.headers or {}).get(chosen.name) or read_gguf_header(self.folder / chosen.name)
        return replace(self, gguf=chosen, gguf_reason=why, header=header, shape=_gguf_shape(header),
                       chat=_gguf_chat(header))  # fmt: skip


# --- names ------------------------------------------------------------------------------------------------------


def check_name(name: str, *, what: str = "model") -> str:
    """`name` if it is one plain name (no separators, not `..`); else `ModelNameError` saying why."""
    if not isinstance(name, str) or not name.strip():
        raise ModelNameError(f"Give a {what} name.")
    if "/" in name or "\\" in name or "\x00" in name or name in (".", "..") or Path(name).is_absolute():
        raise ModelNameError(
            f"{name[:120]!r} is not a {what} name: give the name of a {what} inside the folder, not a path "
            "(no '/', '\\' or '..')."
        )
    return name


def model_path(models_dir: Path, name: str) -> Path:
    """The model called `name` in `models_dir` (a folder, a link to one, or a .gguf file); the name is checked,
    never resolved, so a model folder that is a symbolic link to another disk works."""
    path = Path(models_dir) / check_name(name)
    if not path.exists():
        known = ", ".join(list_models(models_dir)) or "none: download one in the Model tab"
        raise ModelNotFoundError(f"No model named {name!r} in {models_dir}. Models found: {known}.")
    return path


def file_in_folder(folder: Path, name: str) -> Path:
    """A file named by a setting (`file`, `weights_file`) inside the model's folder; never a path."""
    path = Path(folder) / check_name(name, what="file")
    if not path.is_file():
        raise ModelNotFoundError(f"There is no file {name!r} in the model's folder {Path(folder).name}; pick one "
                                 "of its files.")  # fmt: skip
    return path


def list_models(models_dir: Path) -> list[str]:
    """Model names under `models_dir`: folders (or links to them) and loose `.gguf` files, without hidden or partial
    downloads."""
    if not Path(models_dir).is_dir():
        return []
    names = [item.name for item in Path(models_dir).iterdir() if _is_model_entry(item)]
    return sorted(names, key=str.lower)


def _is_model_entry(item: Path) -> bool:
    if item.name.startswith((".", "_")) or item.name.endswith(PARTIAL_SUFFIXES):
        return False
    if item.is_dir():
        return any(True for _ in visible_files(item))
    return item.suffix.lower() == ".gguf" and item.is_file()


def visible_files(folder: Path) -> list[Path]:
    """The folder's files, without hidden ones and partial downloads, in name order."""
    items = [p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".")]
    return sorted((p for p in items if not p.name.endswith(PARTIAL_SUFFIXES)), key=lambda p: p.name)


# --- reading ----------------------------------------------------------------------------------------------------


def read_model_files(path: Path, *, gguf_file: str = "", weights_file: str = "") -> ModelFiles:
    """Read the model at `path` (a folder, a .gguf file). `gguf_file` / `weights_file`: the user's pick (a name)."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"No model at {path}. Check the name, or download it in the Model tab.")
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return _read_gguf(path, path.parent, [path], gguf_file="")
        if is_ggml(path):
            raise ggml_error(path)
        raise ModelFormatError("This file is not a model Corral can load on its own: pick a .gguf file or a model "
                               "folder", path=path)  # fmt: skip
    files = visible_files(path)
    ggufs = [p for p in files if p.suffix.lower() == ".gguf"]
    has_config = (path / "config.json").is_file()
    weight_names = [p.name for p in files if p.suffix != ".bin" or not is_ggml(p)]
    if has_config and (_has_weights(weight_names) or not ggufs):
        return _read_hf(path, weight_names, weights_file)
    if ggufs:
        return _read_gguf(path, path, ggufs, gguf_file=gguf_file)
    ggml = [p for p in files if p.suffix.lower() == ".bin" and is_ggml(p)]
    if ggml:
        raise ggml_error(ggml[0])
    if (path / "adapter_config.json").is_file():
        raise UnsupportedModelError("This folder holds a LoRA adapter (adapter_config.json), not a model: move it to "
                                    "the loras folder and apply it to a model in the Model tab", path=path)  # fmt: skip
    if (path / QUANTIZE_CONFIG).is_file() or _has_weights(weight_names):
        next_to = QUANTIZE_CONFIG if (path / QUANTIZE_CONFIG).is_file() else "the weights"
        raise ModelFormatError(f"config.json is missing next to {next_to}; download it again",
                               path=path / "config.json")  # fmt: skip
    raise ModelFormatError("No model found in this folder: expected config.json with .safetensors weights, or a "
                           ".gguf file", path=path)  # fmt: skip


def _has_weights(names: list[str]) -> bool:
    from loaders.files.weights import is_weight_name

    return any(is_weight_name(n) for n in names)


def _read_hf(folder: Path, names: list[str], weights_file: str) -> ModelFiles:
    config = read_json_object(folder / "config.json")
    gptq = _with_path(lambda: gptq_config(config, read_json_if_exists(folder / QUANTIZE_CONFIG)), folder)
    quant = None if gptq else _with_path(lambda: transformers_quant(config), folder / "config.json")
    index = read_json_if_exists(folder / SAFETENSORS_INDEX)
    base_source = f"{gptq.source} model_file_base_name" if gptq else ""
    try:
        weights = find_weight_files(names, index=index, base_name=gptq.base_name if gptq else "",
                                    wanted=weights_file, base_name_source=base_source)  # fmt: skip
    except ModelFormatError as error:
        raise ModelFormatError(str(error), path=_missing_path(folder, str(error))) from error
    tensors: list[SafetensorsTensor] = []
    if weights.format == "safetensors":
        for name in weights.names:
            tensors += read_safetensors_header(folder / name)
    shape = _with_path(lambda: ModelShape.from_config(config), folder / "config.json")
    return ModelFiles(path=folder, folder=folder, format="hf", shape=shape, chat=_hf_chat(folder, config),
                      config=config, gptq=gptq, quant=quant, weights=weights, tensors=tuple(tensors))  # fmt: skip


def _missing_path(folder: Path, message: str) -> Path:
    if not message.startswith("Weight shard"):
        return folder
    for word in message.split():
        if word.endswith(".safetensors") and (folder / word).name == word:
            return folder / word
    return folder


def _with_path(read: Any, path: Path) -> Any:
    """Run `read()`; a `ModelFormatError` without a file gets the file it is about."""
    try:
        return read()
    except ModelFormatError as error:
        if error.path is not None:
            raise
        target = path
        if path.is_dir():
            message = str(error)
            if " but " in message:
                target = path
            elif message.startswith(QUANTIZE_CONFIG):
                target = path / QUANTIZE_CONFIG
            elif message.startswith((EMBEDDED, "config.json")):
                target = path / "config.json"
        raise type(error)(str(error), path=target) from error


def _read_gguf(path: Path, folder: Path, files: list[Path], *, gguf_file: str) -> ModelFiles:
    candidates = group_gguf((p.name, _size(p)) for p in files)
    headers = {c.name: read_gguf_header(folder / c.name) for c in candidates}
    adapters = [name for name, header in headers.items() if header.get("general.type") == "adapter"]
    if adapters and len(adapters) == len(headers):
        raise UnsupportedModelError(f"{adapters[0]} is a LoRA adapter (GGUF general.type adapter), not a model: move "
                                    "it to the loras folder and apply it to a model in the Model tab",
                                    path=folder / adapters[0])  # fmt: skip
    candidates = [c for c in candidates if c.name not in adapters]
    headers = {name: header for name, header in headers.items() if name not in adapters}
    candidates = with_quants(candidates, {name: header.quant for name, header in headers.items()})
    # A later shard of a split model is not a model on its own: llama.cpp opens the first.
    candidates = [c for c in candidates if headers[c.name].split_number == 0] or candidates
    chosen, why = choose_gguf(candidates, wanted=gguf_file or None, remembered=remembered_gguf(folder))
    header = headers[chosen.name]
    return ModelFiles(path=path, folder=folder, format="gguf", shape=_gguf_shape(header, folder / chosen.name),
                      chat=_gguf_chat(header), ggufs=tuple(candidates), gguf=chosen, gguf_reason=why,
                      header=header, headers=headers)  # fmt: skip


def _gguf_shape(header: GGUFHeader, path: Path | None = None) -> ModelShape:
    return _with_path(lambda: ModelShape.from_gguf(header.metadata, (t.name for t in header.tensors)),
                      path or Path("."))  # fmt: skip


def _gguf_chat(header: GGUFHeader) -> ChatFacts:
    from gguf import Keys

    template = header.get(Keys.Tokenizer.CHAT_TEMPLATE)
    template = template if isinstance(template, str) and template.strip() else None
    return ChatFacts(template, "GGUF metadata" if template else None, header.token(header.get(Keys.Tokenizer.BOS_ID)),
                     header.token(header.get(Keys.Tokenizer.EOS_ID)))  # fmt: skip


def remembered_gguf(folder: Path) -> str | None:
    """The GGUF file the downloader recorded for this folder (`.corral-source.json` `gguf_file`), if any."""
    record = folder / SOURCE_RECORD
    try:
        value = read_json_object(record).get("gguf_file") if record.is_file() else None
    except ModelFormatError:
        return None  # a damaged record is the downloader's to repair; the choice falls back to the rule
    return value if isinstance(value, str) and value else None


# --- the tokenizer's template and tokens (Transformers folders) ---------------------------------------------------


def _hf_chat(folder: Path, config: dict[str, Any]) -> ChatFacts:
    tokenizer_config = read_json_if_exists(folder / "tokenizer_config.json") or {}
    template, source = _hf_template(folder, tokenizer_config)
    special = read_json_if_exists(folder / "special_tokens_map.json") or {}
    bos = _token_text(tokenizer_config.get("bos_token")) or _token_text(special.get("bos_token"))
    eos = _token_text(tokenizer_config.get("eos_token")) or _token_text(special.get("eos_token"))
    if bos is None or eos is None:
        bos, eos = _tokens_from_ids(folder, config, bos, eos)
    return ChatFacts(template, source, bos, eos)


def _hf_template(folder: Path, tokenizer_config: dict[str, Any]) -> tuple[str | None, str | None]:
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if isinstance(template, str) and template.strip():
        return template, "tokenizer_config.json"
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        try:
            return jinja.read_text(encoding="utf-8"), jinja.name
        except UnicodeDecodeError as error:
            raise ModelFormatError("chat_template.jinja is not a UTF-8 text file", path=jinja) from error
    template_json = read_json_if_exists(folder / "chat_template.json") or {}
    if isinstance(template_json.get("chat_template"), str):
        return template_json["chat_template"], "chat_template.json"
    return None, None


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # a serialized AddedToken
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _tokens_from_ids(folder: Path, config: dict[str, Any], bos: str | None, eos: str | None) -> tuple[Any, Any]:
    """bos/eos strings from config.json's ids and tokenizer.json's added tokens, when tokenizer_config has none."""
    tokenizer = read_json_if_exists(folder / "tokenizer.json") or {}
    added = {t.get("id"): t.get("content") for t in tokenizer.get("added_tokens") or [] if isinstance(t, dict)}
    bos_id, eos_id = config.get("bos_token_id"), config.get("eos_token_id")
    eos_id = eos_id[0] if isinstance(eos_id, list) and eos_id else eos_id
    return bos or _hashable_get(added, bos_id), eos or _hashable_get(added, eos_id)


def _hashable_get(mapping: dict[Any, Any], key: Any) -> Any:
    return mapping.get(key) if isinstance(key, int | str) else None


# --- GGML and sizes ---------------------------------------------------------------------------------------------


def is_ggml(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(4)
    return len(head) == 4 and struct.unpack("<I", head)[0] in GGML_MAGICS


def ggml_error(path: Path) -> UnsupportedModelError:
    """GGML (the format before GGUF): refused with the reason and the GGUF repository to look for, named from the
    folder's download record when it has one (`owner/Name-GGML` -> `owner/Name-GGUF`)."""
    sibling = _gguf_sibling_name(path.parent)
    where = f"download {sibling} (the GGUF version of the repository this came from)" if sibling else \
        "download the GGUF version of this model (usually the same repository name ending in -GGUF)"  # fmt: skip
    return UnsupportedModelError(
        f"{path.name} is a GGML file, a format llama.cpp stopped reading in August 2023 and Corral cannot load; "
        f"GGML is no longer supported, use a GGUF file: {where}",
        path=path,
    )


def _gguf_sibling_name(folder: Path) -> str | None:
    record = folder / SOURCE_RECORD
    try:
        repo = read_json_object(record).get("repo") if record.is_file() else None
    except ModelFormatError:
        return None
    if not isinstance(repo, str) or "/" not in repo or not repo.lower().endswith("-ggml"):
        return None
    return repo[:-4] + "GGUF"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
