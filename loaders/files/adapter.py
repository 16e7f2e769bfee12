"""What is on disk for one LoRA adapter, read once into a read-only `AdapterFiles` record.

Two kinds of adapter live in the loras folder (`--loras-dir`, default `loras/`):
- a PEFT folder: `adapter_config.json` (peft_type LORA, rank, alpha, target modules, the base model's name) and
  `adapter_model.safetensors` (`base_model.model.<module>.lora_A.weight` [rank, in] / `lora_B.weight` [out, rank]);
- a GGUF LoRA: a `.gguf` file (loose, or alone in a folder) whose `general.type` is `adapter` and `adapter.type` is
  `lora`, with `<tensor>.lora_a` / `.lora_b` pairs, as llama.cpp's converter writes them.
Only headers are read (tensor names and shapes), never the weights; the fit against a loaded model is checked by
`loaders.lora.fit`. Adapter names are checked like model names: one plain name inside the folder, never a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from loaders.errors import ModelFormatError, ModelNotFoundError, UnsupportedModelError
from loaders.files.gguf_header import GGUFHeader, read_gguf_header
from loaders.files.jsonfile import read_json_object
from loaders.files.model_files import PARTIAL_SUFFIXES, check_name, visible_files
from loaders.files.safetensors_header import read_safetensors_header

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
MAX_RANK = 4096
MAX_TENSORS = 100_000


@dataclass(frozen=True)
class LoraTensorPair:
    """One adapted layer: the model's module (PEFT name, or the GGUF tensor without `.weight`) and its shapes."""

    target: str  # "model.layers.0.self_attn.q_proj" (PEFT) or "blk.0.attn_q" (GGUF)
    rank: int
    in_features: int
    out_features: int


@dataclass(frozen=True)
class AdapterFiles:
    """One adapter, read once. `weights` is the file holding its tensors (safetensors or .gguf)."""

    name: str
    path: Path
    format: Literal["peft", "gguf"]
    weights: Path
    rank: int
    alpha: float
    base_model: str | None  # the model it was trained on, as the adapter says ("HuggingFaceTB/SmolLM2-135M-Instruct")
    architecture: str | None  # GGUF `general.architecture`; PEFT: adapter_config's auto_mapping class, when saved
    pairs: tuple[LoraTensorPair, ...]
    config: dict[str, Any] | None = None  # adapter_config.json (PEFT)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(pair.target for pair in self.pairs)

    @property
    def made_for(self) -> str:
        """"HuggingFaceTB/SmolLM2-135M-Instruct (llama)" for messages; what the adapter says it was made for."""
        parts = [p for p in (self.base_model, f"({self.architecture})" if self.architecture else None) if p]
        return " ".join(parts) or "an unnamed base model"


def adapter_path(loras_dir: Path, name: str) -> Path:
    """The adapter called `name` in `loras_dir` (a folder or a .gguf file); checked as a name, never resolved."""
    path = Path(loras_dir) / check_name(name, what="adapter")
    if not path.exists():
        known = ", ".join(list_adapters(loras_dir)) or "none: download one in the Model tab"
        raise ModelNotFoundError(f"No LoRA adapter named {name!r} in {loras_dir}. Adapters found: {known}.")
    return path


def list_adapters(loras_dir: Path) -> list[str]:
    """Adapter names under `loras_dir`: folders holding an adapter, and loose `.gguf` files."""
    root = Path(loras_dir)
    if not root.is_dir():
        return []
    names = [item.name for item in root.iterdir() if _is_adapter_entry(item)]
    return sorted(names, key=str.lower)


def _is_adapter_entry(item: Path) -> bool:
    if item.name.startswith((".", "_")) or item.name.endswith(PARTIAL_SUFFIXES):
        return False
    if item.is_dir():
        return (item / ADAPTER_CONFIG).is_file() or any(p.suffix.lower() == ".gguf" for p in visible_files(item))
    return item.suffix.lower() == ".gguf" and item.is_file()


def is_adapter_folder(folder: Path) -> bool:
    """A folder that holds a PEFT adapter rather than a model (adapter_config.json, no config.json)."""
    return (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file()


def read_adapter(path: Path) -> AdapterFiles:
    """Read the adapter at `path` (a PEFT folder, a folder with one GGUF LoRA, or a .gguf file)."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"No adapter at {path}.")
    if path.is_file():
        return _read_gguf(path.name, path, path)
    if (path / ADAPTER_CONFIG).is_file():
        return _read_peft(path)
    ggufs = [p for p in visible_files(path) if p.suffix.lower() == ".gguf"]
    if len(ggufs) == 1:
        return _read_gguf(path.name, path, ggufs[0])
    if ggufs:
        raise ModelFormatError(f"This adapter folder holds {len(ggufs)} .gguf files; keep one (or give each its own "
                               "file in the loras folder)", path=path)  # fmt: skip
    raise ModelFormatError(f"No adapter here: expected {ADAPTER_CONFIG} with {ADAPTER_WEIGHTS}, or a GGUF LoRA",
                           path=path)  # fmt: skip


# --- PEFT ---------------------------------------------------------------------------------------------------------


def _read_peft(folder: Path) -> AdapterFiles:
    config = read_json_object(folder / ADAPTER_CONFIG)
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise UnsupportedModelError(f"{ADAPTER_CONFIG} says peft_type {peft_type[:40]}; Corral applies LoRA adapters "
                                    "only", path=folder / ADAPTER_CONFIG)  # fmt: skip
    if config.get("modules_to_save"):
        raise UnsupportedModelError(
            f"{ADAPTER_CONFIG} lists modules_to_save ({_short(config['modules_to_save'])}): this adapter replaces "
            "whole layers besides its LoRA weights, which Corral does not apply; merge it into the model instead",
            path=folder / ADAPTER_CONFIG,
        )
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        other = "adapter_model.bin (a pickle, refused: it can run code)" if (folder / "adapter_model.bin").is_file() \
            else "nothing"  # fmt: skip
        raise ModelFormatError(f"{ADAPTER_WEIGHTS} is missing next to {ADAPTER_CONFIG} (found {other}); download "
                               "the adapter again", path=weights)  # fmt: skip
    rank, alpha = _positive(config, "r", folder), config.get("lora_alpha", 8)
    if not isinstance(alpha, int | float) or isinstance(alpha, bool):
        raise ModelFormatError(f"{ADAPTER_CONFIG} says lora_alpha: {alpha!r}; it must be a number",
                               path=folder / ADAPTER_CONFIG)  # fmt: skip
    pairs = _peft_pairs(read_safetensors_header(weights), weights)
    base = config.get("base_model_name_or_path")
    mapping = config.get("auto_mapping") if isinstance(config.get("auto_mapping"), dict) else {}
    arch = mapping.get("base_model_class")  # peft records the class it was trained on: "LlamaForCausalLM"
    return AdapterFiles(folder.name, folder, "peft", weights, rank, float(alpha),
                        base[:200] if isinstance(base, str) and base else None,
                        arch[:100] if isinstance(arch, str) and arch else None, pairs, config)  # fmt: skip


def _positive(config: dict[str, Any], key: str, folder: Path) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_RANK:
        raise ModelFormatError(f"{ADAPTER_CONFIG} says {key}: {value!r}; the rank must be a whole number from 1 to "
                               f"{MAX_RANK}", path=folder / ADAPTER_CONFIG)  # fmt: skip
    return value


def _peft_pairs(tensors: list[Any], path: Path) -> tuple[LoraTensorPair, ...]:
    """Pair `<module>.lora_A.weight` [r, in] with `<module>.lora_B.weight` [out, r]; anything else is refused."""
    shapes = {t.name: t.shape for t in tensors[:MAX_TENSORS]}
    pairs = []
    for name, shape_a in sorted(shapes.items()):
        if not name.endswith(".lora_A.weight"):
            if not name.endswith(".lora_B.weight"):
                raise UnsupportedModelError(f"{path.name} holds {name[:80]!r}, which is not a LoRA A/B weight (DoRA "
                                            "magnitudes, embeddings...): Corral applies plain LoRA", path=path)
            continue
        target = name.removeprefix(PEFT_PREFIX).removesuffix(".lora_A.weight")
        shape_b = shapes.get(name.replace(".lora_A.", ".lora_B."))
        pairs.append(_pair(target, shape_a, shape_b, path))
    if not pairs:
        raise ModelFormatError(f"{path.name} holds no LoRA weights", path=path)
    return tuple(pairs)


def _pair(target: str, shape_a: tuple[int, ...], shape_b: tuple[int, ...] | None, path: Path) -> LoraTensorPair:
    """A/B shapes: A [rank, in], B [out, rank] (PEFT and GGUF numpy order alike)."""
    if shape_b is None or len(shape_a) != 2 or len(shape_b) != 2 or shape_a[0] != shape_b[1]:
        raise ModelFormatError(f"The LoRA weights of {target[:80]} do not pair up (A {list(shape_a)}, B "
                               f"{list(shape_b or ())}); the file is damaged", path=path)  # fmt: skip
    return LoraTensorPair(target, shape_a[0], shape_a[1], shape_b[0])


def _short(value: Any) -> str:
    return ", ".join(str(v)[:40] for v in value[:4]) if isinstance(value, list) else str(value)[:80]


# --- GGUF ---------------------------------------------------------------------------------------------------------


def _read_gguf(name: str, path: Path, file: Path) -> AdapterFiles:
    if file.suffix.lower() != ".gguf":
        raise ModelFormatError("An adapter file must be a .gguf LoRA (or a PEFT folder)", path=file)
    header = read_gguf_header(file)
    if not is_gguf_lora(header):
        kind = header.get("general.type") or "model"
        raise UnsupportedModelError(f"{file.name} is a GGUF {str(kind)[:20]}, not a LoRA adapter (general.type "
                                    "adapter, adapter.type lora)", path=file)  # fmt: skip
    shapes = {t.name: tuple(reversed(t.dims)) for t in header.tensors}  # numpy order: [rank, in] / [out, rank]
    pairs = tuple(_pair(n.removesuffix(".weight.lora_a"), shape, shapes.get(n.removesuffix("_a") + "_b"), file)
                  for n, shape in sorted(shapes.items()) if n.endswith(".lora_a"))  # fmt: skip
    if not pairs:
        raise ModelFormatError(f"{file.name} holds no LoRA tensors", path=file)
    alpha = header.get("adapter.lora.alpha", 0.0)
    alpha = float(alpha) if isinstance(alpha, int | float) else 0.0
    base = header.get("general.basename") or header.get("general.name")
    return AdapterFiles(name, path, "gguf", file, pairs[0].rank, alpha, str(base)[:200] if base else None,
                        header.architecture, pairs)  # fmt: skip


def is_gguf_lora(header: GGUFHeader) -> bool:
    return header.get("general.type") == "adapter" and header.get("adapter.type", "lora") == "lora"
