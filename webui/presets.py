"""Generation presets: named sets of `GenerationParams` values stored as `presets/<name>.yaml`.

A preset file is a YAML mapping whose keys are `GenerationParams` field names; keys left out take the defaults.
`save` writes only the values that differ from the defaults, so a preset says what makes it special and reads the
same way as the shipped ones. A file that cannot be used (unreadable, not UTF-8, malformed YAML, not a mapping,
unknown key, wrong type, value out of range) is moved aside with its content kept (`fileio.quarantine`,
`<name>.broken-<time>.yaml`), the problem is recorded in `PresetStore.warnings`, and the built-in defaults
(`GenerationParams()`) are used in its place, then and on every later load of that name until it is fixed and
renamed back: a broken `Default.yaml` never makes a request fail. Only a name with no file at all is a `PresetError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loaders.base import GenerationParams
from loaders.errors import PresetError
from webui.fileio import BROKEN_MARK, atomic_write_yaml, quarantine, read_problem, read_yaml

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
    """The presets in `directory`; every call reads the disk, so files edited by hand take effect at once.
    `warnings`: every broken preset set aside so far (once each), for the Parameters tab."""

    directory: Path
    warnings: list[str] = field(default_factory=list, compare=False, repr=False)

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        usable = (p.stem for p in self.directory.glob(f"*{_SUFFIX}") if not _hidden_or_broken(p.stem))
        return sorted(usable, key=str.lower)

    def path(self, name: str) -> Path:
        return self.directory / f"{validate_name(name)}{_SUFFIX}"

    def load(self, name: str) -> GenerationParams:
        """The preset's params; the built-in defaults (with a warning) when its file is broken or was set aside."""
        return self.load_with_warning(name)[0]

    def load_with_warning(self, name: str) -> tuple[GenerationParams, str | None]:
        """(params, warning): the warning says the preset was broken and the defaults are used in its place."""
        path = self.path(name)
        if not path.is_file():
            return self._set_aside_earlier(name)
        try:
            return params_from_mapping(_read(path), source=path), None
        except PresetError as error:
            return self._set_aside(path, error)

    def _set_aside(self, path: Path, error: PresetError) -> tuple[GenerationParams, str]:
        try:
            moved = quarantine(path)
        except OSError as move_error:
            warning = f"{error} It could not be moved aside ({move_error}); the built-in defaults are used."
        else:
            warning = (
                f"{error} It was moved to {moved.name} (its content kept) and the built-in defaults are used; "
                f"fix that file and rename it back to {path.name} to use it."
            )
        return GenerationParams(), self._warn(warning)

    def _set_aside_earlier(self, name: str) -> tuple[GenerationParams, str]:
        """A name whose file was set aside as broken keeps working with the defaults; any other is an error."""
        stem = validate_name(name)
        broken = sorted(p.name for p in self._files() if p.stem.startswith(f"{stem}{BROKEN_MARK}"))
        if not broken:
            known = ", ".join(self.names())
            raise PresetError(f"No preset named '{name}' in {self.directory}. Known presets: {known}.")
        return GenerationParams(), self._warn(
            f"Preset '{stem}' was broken and set aside as {broken[-1]}; the built-in defaults are used until it is "
            f"fixed and renamed back to {stem}{_SUFFIX}."
        )

    def _files(self) -> list[Path]:
        return list(self.directory.glob(f"*{_SUFFIX}")) if self.directory.is_dir() else []

    def _warn(self, warning: str) -> str:
        if warning not in self.warnings:  # the same broken file is reported once, not on every request
            self.warnings.append(warning)
        return warning

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


def _hidden_or_broken(stem: str) -> bool:
    return stem.startswith(".") or BROKEN_MARK in stem


def _read(path: Path) -> Any:
    """The file's YAML; `PresetError` naming the file when it cannot be read, decoded or parsed."""
    try:
        return read_yaml(path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise PresetError(f"Preset file {path} cannot be read: {read_problem(error)}.") from error


def non_default_values(params: GenerationParams) -> dict[str, Any]:
    """The fields of `params` that differ from `GenerationParams()`, in field order, as plain YAML values."""
    defaults = GenerationParams()
    values: dict[str, Any] = {}
    for name in GenerationParams.field_names():  # per-request fields are never saved
        value = getattr(params, name)
        if value != getattr(defaults, name):
            values[name] = list(value) if isinstance(value, tuple) else value
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
