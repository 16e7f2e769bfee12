"""Per-model settings: what detection found, the shipped defaults by name pattern, and what the user saved.

Two YAML files, both readable and editable by hand:
- `models/config.yaml` (shipped in the repo; a models folder may carry its own): regex on the lower-cased model name
  -> values, every matching pattern applied in file order. Values are `template`, `preset`, `context_length` and
  any loader-settings field (`rope_freq_base`, `n_gpu_layers`...). Patterns never choose the loader nor override
  what the files say (GPTQ bits...): those are decided from metadata.
- `models/config-user.yaml` (created on the first save): model name -> loader, loader_settings, template, preset,
  context_length and loras (the LoRA adapters applied after each load: [{name, scale}]), as stored by "Save
  settings for this model".

`SettingsStore.resolve` layers detected settings, pattern defaults, the user's values (and an explicit loader
override) and records which layer each value came from. A value of None means "no preference" at every layer.
A broken user file (unreadable, not UTF-8, malformed YAML, not a mapping) is moved aside with its content kept
(`fileio.quarantine`) and reported as a warning; the app goes on with defaults, so it never blocks a load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from loaders.detect import Detection, detect
from loaders.errors import CorralError, SettingsError
from loaders.files import file_in_folder
from loaders.lora import AdapterChoice
from loaders.settings import SETTINGS_CLASSES, LoaderSettings, parallel_problem, settings_for
from webui import fileio
from webui.templates import AUTO_TEMPLATE, MODEL_TEMPLATE, TemplateRegistry

SHIPPED_DEFAULTS = Path(__file__).resolve().parent.parent / "models" / "config.yaml"
SHIPPED_TEMPLATES = Path(__file__).resolve().parent / "templates"
DEFAULTS_NAME = "config.yaml"
USER_NAME = "config-user.yaml"
MODEL_KEYS = ("loader", "template", "preset", "context_length", "loras")
# The loader-settings field that holds the context length; `context_length` at model level is the one knob.
CONTEXT_FIELDS = {"transformers": "context_length", "gptq": "context_length", "llama.cpp": "n_ctx", "gguf": "n_ctx"}
# Facts about the weights: only detection sets them (the UI shows them read-only).
FILE_FACTS = frozenset({"bits", "group_size", "desc_act", "sym", "checkpoint_format"})
FILE_FIELDS = ("file", "weights_file")  # a file name inside the model folder


@dataclass
class ModelSettings:
    """What "Save settings for this model" stores for one model."""

    loader: str
    loader_settings: dict[str, Any] = field(default_factory=dict)
    template: str | None = None  # None = no preference (the model's own template, or a pattern default)
    preset: str | None = None
    context_length: int | None = None
    loras: tuple[AdapterChoice, ...] = ()  # the LoRA adapters applied after each load, in order, with their scales


@dataclass(frozen=True)
class Source:
    """Where a resolved value came from. `layer`: default | detected | pattern | user | override."""

    layer: str
    label: str  # for the UI: "from quantize_config.json", "from models/config.yaml (.*llama-2.*chat)", "saved by you"

    def __str__(self) -> str:
        return self.label


DEFAULT = Source("default", "default")
SAVED = Source("user", "saved by you")
OVERRIDE = Source("override", "chosen for this load")


@dataclass
class ResolvedSettings:
    """Everything the Model tab shows for a model and everything a load needs, with the origin of each value."""

    model_name: str
    detection: Detection
    loader: str
    loader_settings: LoaderSettings  # the context field (n_ctx / context_length) holds `context_length`
    template: str | None
    preset: str | None
    context_length: int | None
    sources: dict[str, Source]  # "loader", "template", "preset", "context_length" and every loader-settings field
    loras: tuple[AdapterChoice, ...] = ()
    patterns: list[str] = field(default_factory=list)  # the models/config.yaml patterns that matched
    saved: bool = False  # the user has saved settings for this model
    warnings: list[str] = field(default_factory=list)

    def to_model_settings(self) -> ModelSettings:
        """These values as `save` takes them (the detected facts are left out: they come from the files)."""
        values = {f.name: getattr(self.loader_settings, f.name) for f in fields(self.loader_settings)}
        kept = {k: v for k, v in values.items() if k not in FILE_FACTS and k != CONTEXT_FIELDS[self.loader]}
        return ModelSettings(self.loader, kept, self.template, self.preset, self.context_length, self.loras)


Layer = dict[str, tuple[Any, Source]]  # key -> (value, where it came from)


class SettingsStore:
    """Pattern defaults and saved settings of the models in `models_dir`. Files are read on every call (they are
    small), so a hand edit is seen at once and two stores on one folder never disagree."""

    def __init__(self, models_dir: Path, *, templates_dir: Path = SHIPPED_TEMPLATES) -> None:
        self.models_dir = Path(models_dir)
        self.templates_dir = Path(templates_dir)  # a saved template name must be one of these (or auto / model)
        self.user_path = self.models_dir / USER_NAME
        self.warnings: list[str] = []  # every problem reported so far, for a status area

    @property
    def defaults_path(self) -> Path:
        own = self.models_dir / DEFAULTS_NAME
        return own if own.is_file() else SHIPPED_DEFAULTS

    # --- public API ------------------------------------------------------------------------------------------------

    def resolve(self, model_name: str, detection: Detection | None = None, *, loader: str | None = None
                ) -> ResolvedSettings:
        """Settings of `model_name`: detected, then pattern defaults, then saved by the user, then `loader` if given.
        Detects the model when `detection` is None (raises `ModelFormatError` & co. for a broken model)."""
        detection = detection if detection is not None else detect(self.models_dir / model_name)
        warnings: list[str] = []
        patterns, pattern_layers = self._pattern_layers(model_name, warnings)
        user_layer = self._user_layer(model_name, warnings)
        layers = [_detected_layer(detection), *pattern_layers, user_layer]
        if loader is not None:
            layers.append({"loader": (_check_loader(loader), OVERRIDE)})
        merged: Layer = {}
        for layer in layers:
            merged.update(layer)
        resolved = _build(model_name, detection, merged, warnings)
        resolved.patterns, resolved.saved = patterns, bool(user_layer)
        self.warnings.extend(warnings)
        return resolved

    def saved(self, model_name: str) -> ModelSettings | None:
        """The user's saved settings of `model_name`, as stored (None when nothing is saved)."""
        warnings: list[str] = []
        entry = self._read_user(warnings).get(model_name)
        self.warnings.extend(warnings)  # kept: the file is moved aside now, a later read would not see the problem
        if not isinstance(entry, dict):
            return None
        return ModelSettings(
            loader=entry.get("loader", ""),
            loader_settings=dict(entry.get("loader_settings") or {}),
            template=entry.get("template"),
            preset=entry.get("preset"),
            context_length=entry.get("context_length"),
            loras=loras_of(entry.get("loras")) if _loras_problem(entry.get("loras")) is None else (),
        )

    def save(self, model_name: str, settings: ModelSettings) -> list[str]:
        """Store `settings` for `model_name` (atomic write). Returns warnings (a broken file moved aside).
        Raises `SettingsError` for an invalid value, an unknown template name included."""
        entry = _entry(settings)
        self._check_template(entry.get("template"))
        warnings: list[str] = []
        data = self._read_user(warnings, for_write=True)
        data[model_name] = entry
        self._write_user(data)
        self.warnings.extend(warnings)
        return warnings

    def forget(self, model_name: str) -> bool:
        """Delete the saved settings of `model_name`; False when there were none."""
        warnings: list[str] = []
        data = self._read_user(warnings, for_write=True)
        self.warnings.extend(warnings)
        if data.pop(model_name, None) is None:
            return False
        self._write_user(data)
        return True

    def _check_template(self, name: str | None) -> None:
        # Refused, not warned about: a saved name that does not exist would break every later chat with this model.
        if name in (None, "", AUTO_TEMPLATE, MODEL_TEMPLATE):
            return
        known = TemplateRegistry(self.templates_dir).names()
        if name.lower() not in {k.lower() for k in known}:
            choices = ", ".join([AUTO_TEMPLATE, MODEL_TEMPLATE, *known])
            raise SettingsError(f"Cannot save: unknown prompt template {name!r}. Choose one of: {choices}.")

    # --- the user file ------------------------------------------------------------------------------------------------

    def _read_user(self, warnings: list[str], *, for_write: bool = False) -> dict[str, Any]:
        """The user file as a dict; an unreadable, undecodable or malformed one is moved aside and reported, and {}
        returned. `for_write`: the caller will write the file, so one that cannot be moved aside is an error."""
        if not self.user_path.is_file():
            return {}
        try:
            data = fileio.read_yaml(self.user_path)
        except yaml.YAMLError as error:
            return self._quarantine(f"is not valid YAML ({_yaml_where(error)})", warnings, for_write=for_write)
        except (OSError, UnicodeDecodeError) as error:
            problem = fileio.read_problem(error).removeprefix("it ")
            return self._quarantine(problem, warnings, for_write=for_write)
        if data is None:
            return {}
        if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
            return self._quarantine("should map model names to settings", warnings, for_write=for_write)
        return data

    def _quarantine(self, problem: str, warnings: list[str], *, for_write: bool) -> dict[str, Any]:
        try:
            moved = fileio.quarantine(self.user_path)
        except OSError as error:
            message = f"{self.user_path} {problem} and cannot be moved aside ({error.strerror or error})"
            if for_write:  # writing now would overwrite the user's file: refuse instead
                raise SettingsError(f"Cannot save: {message}. Fix or move that file first.") from error
            warnings.append(f"{message}; your saved settings are not used.")
            return {}
        error = SettingsError(
            f"{self.user_path.name} {problem}. It was moved to {moved.name} and your saved settings are not used; "
            f"fix that file and rename it back to {self.user_path.name} to get them back."
        )
        warnings.append(str(error))
        return {}

    def _write_user(self, data: dict[str, Any]) -> None:
        try:
            fileio.atomic_write_yaml(self.user_path, data)
        except OSError as error:
            raise SettingsError(f"Could not save {self.user_path}: {error}") from error

    def _user_layer(self, model_name: str, warnings: list[str]) -> Layer:
        entry = self._read_user(warnings).get(model_name)
        if entry is None:
            return {}
        if not isinstance(entry, dict):
            warnings.append(f"{USER_NAME}: the entry of {model_name} is not a mapping; it is ignored")
            return {}
        flat = {k: v for k, v in entry.items() if k != "loader_settings"}
        extra = entry.get("loader_settings") or {}
        if not isinstance(extra, dict):
            warnings.append(f"{USER_NAME}: loader_settings of {model_name} is not a mapping; it is ignored")
            extra = {}
        return _layer({**extra, **flat}, SAVED, f"{USER_NAME} ({model_name})", warnings, allow_loader=True)

    # --- pattern defaults ---------------------------------------------------------------------------------------------

    def _pattern_layers(self, model_name: str, warnings: list[str]) -> tuple[list[str], list[Layer]]:
        path = self.defaults_path
        rules = _read_patterns(path, warnings)
        label_file = f"models/{path.name}"
        matched, layers = [], []
        for pattern, values in rules.items():
            try:
                hit = re.match(pattern, model_name.lower(), flags=re.IGNORECASE)
            except re.error as error:
                warnings.append(f"{label_file}: pattern {pattern!r} is not a valid regular expression ({error})")
                continue
            if hit:
                source = Source("pattern", f"from {label_file} ({pattern})")
                matched.append(pattern)
                layers.append(_layer(values, source, f"{label_file} ({pattern})", warnings, allow_loader=False))
        return matched, layers


# --- reading and checking values -------------------------------------------------------------------------------------


def _read_patterns(path: Path, warnings: list[str]) -> dict[str, dict[str, Any]]:
    """Pattern -> values. A broken file is reported (on every read, until fixed) and ignored; it is never written,
    so it is not moved aside."""
    if not path.is_file():
        return {}
    try:
        data = fileio.read_yaml(path)
    except yaml.YAMLError as error:
        warnings.append(str(SettingsError(
            f"{path} is not valid YAML ({_yaml_where(error)}); the per-model defaults are not applied until it is fixed"
        )))
        return {}
    except (OSError, UnicodeDecodeError) as error:
        warnings.append(f"Cannot read {path}: {error}; the per-model defaults are not applied")
        return {}
    if not isinstance(data, dict):
        warnings.append(f"{path} should map name patterns to settings; the per-model defaults are not applied")
        return {}
    rules = {str(k): v for k, v in data.items() if isinstance(v, dict)}
    for bad in (str(k) for k, v in data.items() if not isinstance(v, dict)):
        warnings.append(f"{path}: the values of pattern {bad!r} are not a mapping; they are ignored")
    return rules


def _yaml_where(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or "parse error"
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else str(problem)


def _layer(values: dict[str, Any], source: Source, where: str, warnings: list[str], *, allow_loader: bool) -> Layer:
    """Checked (key -> (value, source)) of one pattern or user entry; bad values are reported and skipped."""
    layer: Layer = {}
    for key, value in values.items():
        if value is None or key in FILE_FACTS:
            continue
        problem = _problem(key, value, allow_loader=allow_loader)
        if problem:
            warnings.append(f"{where}: {problem}; it is ignored")
            continue
        layer["context_length" if key == "n_ctx" else key] = (value, source)
    if "n_ctx" in values and "context_length" in values and values["context_length"] is not None:
        layer["context_length"] = (values["context_length"], source)  # the model-level knob wins
    return layer


def _problem(key: str, value: Any, *, allow_loader: bool) -> str | None:
    if key == "loader":
        if not allow_loader:
            return "the loader is decided from the model's files, not from its name"
        return None if value in SETTINGS_CLASSES else f"unknown loader {value!r} (known: {', '.join(SETTINGS_CLASSES)})"
    if key in ("template", "preset"):
        return None if isinstance(value, str) else f"{key} should be a name, not {value!r}"
    if key in ("context_length", "n_ctx"):
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        return None if ok else f"{key} should be a positive whole number, not {value!r}"
    if key == "parallel":
        return parallel_problem(value)
    if key == "loras":
        return _loras_problem(value)
    default = _field_default(key)
    if default is _UNKNOWN:
        return f"unknown setting {key!r}"
    return None if _same_kind(default, value) else f"{key} should be like {default!r}, not {value!r}"


_UNKNOWN = object()


def _field_default(key: str) -> Any:
    for cls in SETTINGS_CLASSES.values():
        for item in fields(cls):
            if item.name == key:
                return getattr(cls(), key)
    return _UNKNOWN


def _same_kind(default: Any, value: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float)
    if default is None:  # max_memory_gib: a mapping of device -> GiB
        return isinstance(value, dict)
    return isinstance(value, type(default))


def _loras_problem(value: Any) -> str | None:
    """None when `value` is a list of {name, scale} entries (the YAML of `loras`), else what is wrong."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, dict) and isinstance(v.get("name"), str) for v in value):
        return f"loras should be a list of {{name: ..., scale: ...}} entries, not {str(value)[:80]!r}"
    try:
        loras_of(value)
    except CorralError as error:
        return str(error)
    return None


def loras_of(value: Any) -> tuple[AdapterChoice, ...]:
    """`loras` as stored ([{name, scale}]) -> adapter choices; raises `SettingsError` for a bad scale."""
    return tuple(AdapterChoice(str(v["name"]), v.get("scale", 1.0)) for v in value or ())


def _check_loader(loader: str) -> str:
    if loader not in SETTINGS_CLASSES:
        raise SettingsError(f"Unknown loader {loader!r}; pick one of {', '.join(SETTINGS_CLASSES)}")
    return loader


def _entry(settings: ModelSettings) -> dict[str, Any]:
    """The YAML entry of `settings`, checked; detected facts and Nones are not stored."""
    _check_loader(settings.loader)
    context = settings.context_length
    loader_settings = dict(settings.loader_settings)
    context = context or loader_settings.pop(CONTEXT_FIELDS[settings.loader], None) or None
    for key in ("context_length", "n_ctx"):
        loader_settings.pop(key, None)
    names = {f.name for f in fields(SETTINGS_CLASSES[settings.loader])}
    kept = {k: v for k, v in loader_settings.items() if k in names and k not in FILE_FACTS and v is not None}
    loras = [{"name": c.name, "scale": float(c.scale)} for c in settings.loras]
    for key, value in [*kept.items(), ("template", settings.template), ("preset", settings.preset),
                       ("context_length", context), ("loras", loras or None)]:
        problem = None if value is None else _problem(key, value, allow_loader=True)
        if problem:
            raise SettingsError(f"Cannot save: {problem}")
    entry: dict[str, Any] = {"loader": settings.loader, "loader_settings": kept}
    for key, value in (("template", settings.template), ("preset", settings.preset), ("context_length", context),
                       ("loras", loras or None)):  # fmt: skip
        if value is not None:
            entry[key] = value
    return entry


# --- building the result --------------------------------------------------------------------------------------------


def _detected_layer(detection: Detection) -> Layer:
    layer: Layer = {"loader": (detection.loader, Source("detected", "detected from the model's files"))}
    for key, value in detection.settings.items():
        origin = detection.settings_sources.get(key, "the model's files")
        layer[key] = (value, Source("detected", f"from {origin}"))
    context_field = CONTEXT_FIELDS[detection.loader]
    if context_field in layer:
        layer["context_length"] = layer.pop(context_field)
    elif detection.context_length:
        layer["context_length"] = (detection.context_length, Source("detected", "from config.json"))
    if detection.has_chat_template:
        layer["template"] = (None, Source("detected", f"the model's own ({detection.chat_template_source})"))
    return layer


def _build(model_name: str, detection: Detection, merged: Layer, warnings: list[str]) -> ResolvedSettings:
    loader = merged["loader"][0]
    context_field = CONTEXT_FIELDS[loader]
    _check_files(detection, merged, warnings)
    values = {k: v for k, (v, _) in merged.items() if k not in MODEL_KEYS}
    context, context_source = merged.get("context_length", (None, DEFAULT))
    if context:
        values[context_field] = context
    loader_settings = settings_for(loader, values)
    sources = {f.name: merged.get(f.name, (None, DEFAULT))[1] for f in fields(loader_settings)}
    sources[context_field] = context_source
    for key in MODEL_KEYS:
        sources[key] = merged.get(key, (None, DEFAULT))[1]
    return ResolvedSettings(
        model_name=model_name,
        detection=detection,
        loader=loader,
        loader_settings=loader_settings,
        template=merged.get("template", (None, DEFAULT))[0],
        preset=merged.get("preset", (None, DEFAULT))[0],
        context_length=context,
        sources=sources,
        loras=loras_of(merged.get("loras", ((), DEFAULT))[0]),
        warnings=warnings,
    )


def _check_files(detection: Detection, merged: Layer, warnings: list[str]) -> None:
    """A saved file name that is no longer in the folder falls back to the detected one."""
    folder = detection.path if detection.path.is_dir() else detection.path.parent
    for key in FILE_FIELDS:
        value, source = merged.get(key, ("", DEFAULT))
        if source.layer in ("pattern", "user") and value and not _is_file_in(folder, value):
            detected = detection.settings.get(key, "")
            warnings.append(f"{key} {value!r} ({source}) is not in {folder.name}; using {detected or 'the default'}")
            merged[key] = (detected, Source("detected", f"from {detection.settings_sources.get(key, 'the files')}"))


def _is_file_in(folder: Path, name: str) -> bool:
    """A saved file name is usable when it names a file inside the model's folder (a name, never a path)."""
    try:
        file_in_folder(folder, name)
    except CorralError:
        return False
    return True
