"""Generation presets: named sets of `GenerationParams` values stored as `presets/<name>.yaml`.

A preset file is a YAML mapping whose keys are `GenerationParams` field names; keys left out take the defaults.
`save` writes only the values that differ from the defaults, so a preset says what makes it special and reads the
same way as the shipped ones. Every problem with a file (malformed YAML, not a mapping, unknown key, wrong type, value
out of range) is a `PresetError` naming the file and the problem; the store itself keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from loaders.base import GenerationParams
from loaders.errors import PresetError
from webui.fileio import atomic_write_yaml, read_yaml

_SUFFIX = ".yaml"
_MAX_NAME = 100
_FORBIDDEN_IN_NAME = ("/", "\\", "\0", ":")

# (field, lowest, highest) allowed; None = unbounded on that side.
_RANGES: tuple[tuple[str, float | None, float | None], ...] = (
    ("max_new_tokens", 1, None),
    ("temperature", 0.0, None),
    ("top_p", 0.0, 1.0),
    ("top_k", 0, None),
    ("typical_p", 0.0, 1.0),
    ("min_p", 0.0, 1.0),
    ("repetition_penalty", 0.0, None),
    ("repetition_penalty_range", 0, None),
    ("seed", -1, None),
    ("truncation_length", 1, None),
)


def validate_name(name: str) -> str:
    """A preset name that is safe as a file name; raises `PresetError` otherwise."""
    stripped = name.strip()
    if not stripped or stripped.startswith(".") or len(stripped) > _MAX_NAME:
        raise PresetError(
            f"'{name}' is not a usable preset name: give 1 to {_MAX_NAME} characters, not starting with '.'."
        )
    if any(bad in stripped for bad in _FORBIDDEN_IN_NAME):
        raise PresetError(f"A preset name cannot contain / \\ or : (got '{name}').")
    return stripped


@dataclass(frozen=True)
class PresetStore:
    """The presets in `directory`; every call reads the disk, so files edited by hand take effect at once."""

    directory: Path

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted((p.stem for p in self.directory.glob(f"*{_SUFFIX}") if not p.stem.startswith(".")), key=str.lower)

    def path(self, name: str) -> Path:
        return self.directory / f"{validate_name(name)}{_SUFFIX}"

    def load(self, name: str) -> GenerationParams:
        path = self.path(name)
        if not path.is_file():
            known = ", ".join(self.names())
            raise PresetError(f"No preset named '{name}' in {self.directory}. Known presets: {known}.")
        try:
            data = read_yaml(path)
        except (OSError, yaml.YAMLError) as error:
            raise PresetError(f"Preset file {path} cannot be read: {error}") from error
        return params_from_mapping(data, source=path)

    def save(self, name: str, params: GenerationParams) -> Path:
        """Write the preset atomically (values that differ from the defaults only); returns its path."""
        path = self.path(name)
        _check_ranges(params, source=path)
        atomic_write_yaml(path, non_default_values(params))
        return path

    def delete(self, name: str) -> None:
        path = self.path(name)
        try:
            path.unlink()
        except FileNotFoundError as error:
            raise PresetError(f"No preset named '{name}' to delete in {self.directory}.") from error


def non_default_values(params: GenerationParams) -> dict[str, Any]:
    """The fields of `params` that differ from `GenerationParams()`, in field order, as plain YAML values."""
    defaults = GenerationParams()
    values: dict[str, Any] = {}
    for f in fields(GenerationParams):
        value = getattr(params, f.name)
        if value != getattr(defaults, f.name):
            values[f.name] = list(value) if isinstance(value, tuple) else value
    return values


def params_from_mapping(data: Any, *, source: Path | str) -> GenerationParams:
    """Validate a preset mapping (keys, types, ranges) and build the params; `PresetError` names `source`."""
    if data is None:  # an empty file: the defaults
        data = {}
    if not isinstance(data, dict):
        raise PresetError(f"Preset file {source} must hold a mapping of parameter: value, not {type(data).__name__}.")
    unknown = sorted(str(key) for key in data if key not in GenerationParams.field_names())
    if unknown:
        raise PresetError(
            f"Preset file {source} has unknown parameter(s): {', '.join(unknown)}. "
            f"Known: {', '.join(GenerationParams.field_names())}."
        )
    values = {key: _coerce(key, value, source) for key, value in data.items()}
    params = GenerationParams.from_dict(values)
    _check_ranges(params, source=source)
    return params


def _coerce(key: str, value: Any, source: Path | str) -> Any:
    default = getattr(GenerationParams(), key)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:  # stop strings: a list of strings
        ok = isinstance(value, list | tuple) and all(isinstance(item, str) for item in value)
        value = tuple(value) if ok else value
    if not ok:
        expected = "a list of strings" if isinstance(default, tuple) else type(default).__name__
        raise PresetError(f"Preset file {source}: '{key}' must be {expected}, got {value!r}.")
    return value


def _check_ranges(params: GenerationParams, *, source: Path | str) -> None:
    for key, low, high in _RANGES:
        value = getattr(params, key)
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            raise PresetError(f"Preset {source}: '{key}' must be {bounds}, got {value}.")
