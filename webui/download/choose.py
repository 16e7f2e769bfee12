"""Which files of a listing to download: one weight format, one GGUF quant, configs and tokenizer, small docs.

The GGUF quant is chosen by `loaders.files.gguf_choice`, the rule detection, estimates and loaders use too: the file
the user asked for, else the one remembered for the destination folder, else that rule's default. A Hub listing has
no GGUF metadata, so the candidates are labelled from their names (`group_gguf` does that).

A PEFT adapter repository (`adapter_config.json` with `adapter_model.safetensors`) is a plan of kind "adapter": its
config and safetensors weights are fetched (never a pickled `adapter_model.bin`), and the download goes to the
loras folder. A GGUF LoRA is recognised by its header once downloaded (`jobs.DownloadJob`), then moved there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import Literal

from loaders.errors import DownloadError
from loaders.files.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from loaders.files.gguf_choice import GGUFCandidate, choose_gguf, find_candidate, group_gguf, group_key
from loaders.units import format_bytes
from webui.download.hub import RemoteFile, RepoListing, safe_name

SMALL_FILE_LIMIT = 64 * 1024 * 1024  # Gemma's tokenizer.json is ~33 MB
_TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_OTHER_FRAMEWORKS = (".h5", ".msgpack", ".onnx", ".onnx_data", ".ot", ".tflite", ".mlmodel", ".npz", ".pb")
_TEXT_SUFFIXES = (".json", ".md", ".txt", ".jinja", ".model", ".tiktoken", ".yaml", ".yml", ".py", ".cfg")
_NOT_WEIGHTS = ("training_args", "optimizer", "scheduler", "rng_state")


@dataclass(frozen=True)
class SkippedFile:
    file: RemoteFile
    reason: str


@dataclass(frozen=True)
class DownloadPlan:
    """What `choose_files` decided: the files to fetch, the rest with a reason, and the GGUF files one may pick.

    `gguf_choices` and `gguf_file` are group names (shard numbers removed), what the UI offers; `gguf` is the chosen
    candidate itself (its `name` is the first shard, what the folder's record remembers)."""

    listing: RepoListing
    chosen: tuple[RemoteFile, ...]
    skipped: tuple[SkippedFile, ...]
    gguf_choices: tuple[str, ...] = ()
    gguf_file: str | None = None
    gguf: GGUFCandidate | None = None
    gguf_reason: str = ""
    kind: Literal["model", "adapter"] = "model"  # an adapter goes to the loras folder

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.chosen)


def choose_files(listing: RepoListing, *, gguf_file: str | None = None, remembered: str | None = None) -> DownloadPlan:
    """Pick what to download. `gguf_file`: the GGUF the user asked for (must exist); `remembered`: the folder's
    earlier pick, kept when the user asks for none so that a second download does not fetch another quant."""
    files = [replace(f, path=safe_name(f.path)) for f in listing.files]
    if is_adapter_listing(files):
        return _adapter_plan(listing, files)
    candidates = group_gguf((f.path, f.size) for f in files)
    pick, reason = _pick_gguf(candidates, listing, files, wanted=gguf_file, remembered=remembered)
    chosen: list[RemoteFile] = []
    skipped: list[SkippedFile] = []
    for item in files:
        why = _skip_reason(item, files, pick)
        if why is None:
            chosen.append(item)
        else:
            skipped.append(SkippedFile(item, why))
    choices = tuple(group_key(c.name) for c in candidates)
    label = group_key(pick.name) if pick else None
    return DownloadPlan(listing, tuple(chosen), tuple(skipped), choices, label, pick, reason)


def is_adapter_listing(files: list[RemoteFile]) -> bool:
    """A PEFT adapter repository: adapter_config.json at the top and no config.json (a model with an adapter
    beside it is a model)."""
    names = {f.path for f in files}
    return ADAPTER_CONFIG in names and "config.json" not in names


def _adapter_plan(listing: RepoListing, files: list[RemoteFile]) -> DownloadPlan:
    names = {f.path for f in files}
    if ADAPTER_WEIGHTS not in names:
        pickled = " (only adapter_model.bin, a pickle that can run code, which Corral does not load)" \
            if "adapter_model.bin" in names else ""  # fmt: skip
        raise DownloadError(f"{listing.ref} is a LoRA adapter without {ADAPTER_WEIGHTS}{pickled}.")
    chosen, skipped = [], []
    for item in files:
        why = _adapter_skip_reason(item)
        if why is None:
            chosen.append(item)
        else:
            skipped.append(SkippedFile(item, why))
    return DownloadPlan(listing, tuple(chosen), tuple(skipped), kind="adapter")


def _adapter_skip_reason(item: RemoteFile) -> str | None:
    if item.path in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        return None
    if "/" in item.path or item.path.startswith(".git"):
        return "in a subfolder (not needed to apply the adapter)"
    if item.path.endswith((".safetensors", *_TORCH_SUFFIXES, ".gguf")):
        return "not the adapter's weights (adapter_model.safetensors is)"
    return _skip_other_reason(item)


def _pick_gguf(
    candidates: list[GGUFCandidate],
    listing: RepoListing,
    files: list[RemoteFile],
    *,
    wanted: str | None,
    remembered: str | None,
) -> tuple[GGUFCandidate | None, str]:
    if wanted and find_candidate(candidates, wanted) is None:
        names = ", ".join(group_key(c.name) for c in candidates) or "none"
        raise DownloadError(f"{listing.ref} has no file {wanted!r}. GGUF files: {names}.")
    known = bool(remembered) and find_candidate(candidates, remembered or "") is not None
    other_weights = _has(files, ".safetensors") or _has(files, *_TORCH_SUFFIXES)
    if not candidates or (not wanted and not known and other_weights):
        return None, ""  # a GGUF beside safetensors/PyTorch weights is fetched only when asked for
    return choose_gguf(candidates, wanted=wanted, remembered=remembered)


def _has(files: list[RemoteFile], *suffixes: str) -> bool:
    return any(_is_weight(f, *suffixes) for f in files)


def _is_weight(item: RemoteFile, *suffixes: str) -> bool:
    name = PurePosixPath(item.path).name
    return name.endswith(suffixes) and not name.startswith(_NOT_WEIGHTS)


def _skip_reason(item: RemoteFile, files: list[RemoteFile], pick: GGUFCandidate | None) -> str | None:
    name = PurePosixPath(item.path).name
    if name.startswith(".git") or any(p.startswith(".git") for p in PurePosixPath(item.path).parts):
        return "git metadata"
    if "/" in item.path:
        return "in a subfolder (not needed to run the model)"
    if item.path.lower().endswith(".gguf"):
        if pick is None:
            return "GGUF: this repo also has safetensors/PyTorch weights (pick a GGUF file to get it instead)"
        return None if item.path in pick.parts else f"another GGUF quant ({group_key(pick.name)} chosen)"
    return _skip_weight_reason(item, files, pick) or _skip_other_reason(item)


def _skip_weight_reason(item: RemoteFile, files: list[RemoteFile], pick: GGUFCandidate | None) -> str | None:
    name = item.path
    is_weight = _is_weight(item, ".safetensors", *_TORCH_SUFFIXES) or name.endswith(".safetensors.index.json")
    torch_index = name.endswith(".bin.index.json")
    if not (is_weight or torch_index):
        return None
    if pick is not None:
        return f"a GGUF file was chosen ({group_key(pick.name)})"
    if _has(files, ".safetensors") and (torch_index or _is_weight(item, *_TORCH_SUFFIXES)):
        return "PyTorch pickle weights: the safetensors copy is downloaded instead"
    return None


def _skip_other_reason(item: RemoteFile) -> str | None:
    name = item.path
    if name.endswith(_OTHER_FRAMEWORKS) or name.startswith(_NOT_WEIGHTS):
        return "not used by Corral's loaders"
    if name.endswith((".safetensors", *_TORCH_SUFFIXES)):
        return None
    if not name.endswith(_TEXT_SUFFIXES) and name not in ("LICENSE", "NOTICE", "USE_POLICY"):
        return "not needed to run the model"
    if item.size > SMALL_FILE_LIMIT:
        return f"large extra file ({format_bytes(item.size)})"
    return None
