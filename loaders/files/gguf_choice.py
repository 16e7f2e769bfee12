"""Which `.gguf` of a repository or folder to use: the one rule for downloads, detection, estimates and loaders.

A repository or folder often holds one model in several quantizations (Q2_K ... Q8_0), some split into shards
(`-00001-of-00003.gguf`). `group_gguf` turns file names into one `GGUFCandidate` per quant (the first shard names
the group: llama.cpp finds the others from it); `choose_gguf` picks one: the name the user asked for, else the pick
remembered for the folder (what was downloaded), else Q4_K_M, then the usual good quants in order, else the
smallest that is not too lossy. The quant label comes from GGUF metadata (`general.file_type`) when the file is on
disk, and from the file name only when it is not (a Hub listing before download).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import PurePosixPath

from loaders.errors import ModelFormatError

PREFERRED = "Q4_K_M"
PREFERENCE = ("Q4_K_M", "Q4_K_S", "Q5_K_M", "Q4_0", "Q4_1", "Q5_K_S", "Q5_0", "Q6_K", "Q8_0")
_TOO_LOSSY = re.compile(r"(?i)^(IQ1|IQ2|Q2|IQ3|Q3)")
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})(?=\.gguf$)")
_QUANT_IN_NAME = re.compile(r"(?i)(?<![A-Za-z0-9])(I?Q\d(?:_[A-Z0-9]+)*|BF16|F16|F32)(?=[-_.])")


@dataclass(frozen=True)
class GGUFCandidate:
    """One quantization: `name` is the file to open (the first shard of a split model), `parts` every file."""

    name: str
    quant: str  # "Q4_K_M"; "" when neither the metadata nor the name tells
    size: int
    parts: tuple[str, ...]

    @property
    def is_projector(self) -> bool:  # a vision projector (mmproj) is not a language model to chat with
        return "mmproj" in PurePosixPath(self.name).name.lower()


def quant_from_name(name: str) -> str:
    """The quant label written in a file name (`model.Q4_K_M.gguf` -> Q4_K_M); "" when there is none."""
    found = _QUANT_IN_NAME.findall(PurePosixPath(name).name)
    return found[-1].upper() if found else ""


def group_key(name: str) -> str:
    """The name a shard is grouped under: its own name with `-0000N-of-0000M` removed."""
    return _SHARD.sub("", name)


def shard_number(name: str) -> int:
    """1-based shard number (1 for an unsplit file)."""
    match = _SHARD.search(name)
    return int(match.group(1)) if match else 1


def group_gguf(files: Iterable[tuple[str, int]], quants: dict[str, str] | None = None) -> list[GGUFCandidate]:
    """(name, size) of `.gguf` files -> one candidate per quant, in name order. `quants` maps a file name to the
    label read from its metadata; names not in it are labelled from the name."""
    groups: dict[str, list[tuple[str, int]]] = {}
    for name, size in files:
        if name.lower().endswith(".gguf"):
            groups.setdefault(group_key(name), []).append((name, size))
    candidates = []
    for key in sorted(groups):
        parts = sorted(groups[key], key=lambda item: shard_number(item[0]))
        first = parts[0][0]
        label = (quants or {}).get(first) or quant_from_name(first)
        candidates.append(GGUFCandidate(first, label, sum(size for _, size in parts), tuple(n for n, _ in parts)))
    return candidates


def find_candidate(candidates: Sequence[GGUFCandidate], name: str) -> GGUFCandidate | None:
    """The candidate a user-given name means: a file's name, a shard's name, or the group's name."""
    key = group_key(name)
    for candidate in candidates:
        if name in candidate.parts or group_key(candidate.name) == key:
            return candidate
    return None


def choose_gguf(
    candidates: Sequence[GGUFCandidate], *, wanted: str | None = None, remembered: str | None = None
) -> tuple[GGUFCandidate, str]:
    """The candidate to use and a sentence saying why. `wanted` (the user's pick) must exist; `remembered` (the
    folder's earlier pick) is used when it still does."""
    if not candidates:
        raise ModelFormatError("No .gguf file to choose from")
    if wanted:
        found = find_candidate(candidates, wanted)
        if found is None:
            names = ", ".join(c.name for c in candidates)
            raise ModelFormatError(f"There is no GGUF file {wanted!r} here; the GGUF files are: {names}")
        return found, f"{found.name} ({found.quant or 'GGUF'}): the file you picked"
    if len(candidates) == 1:
        only = candidates[0]
        return only, f"{only.name} ({only.quant or 'GGUF'}): the only GGUF file"
    if remembered:
        found = find_candidate(candidates, remembered)
        if found is not None:
            return found, f"{found.name} ({found.quant or 'GGUF'}): the file you downloaded"
    models = [c for c in candidates if not c.is_projector] or list(candidates)
    for label in PREFERENCE:
        match = [c for c in models if c.quant.upper() == label]
        if match:
            return match[0], (
                f"{len(candidates)} GGUF files; chose {match[0].name}: {label}, "
                + ("a good balance of size and quality" if label == PREFERRED else f"no {PREFERRED} here")
            )
    usable = [c for c in models if not _TOO_LOSSY.match(c.quant)] or models
    smallest = min(usable, key=lambda c: c.size)
    return smallest, f"{len(candidates)} GGUF files, none of the usual quants; chose the smallest, {smallest.name}"


def with_quants(candidates: Sequence[GGUFCandidate], quants: dict[str, str]) -> list[GGUFCandidate]:
    """The candidates relabelled from metadata (`quants`: first-file name -> label)."""
    return [replace(c, quant=quants.get(c.name, c.quant)) for c in candidates]
