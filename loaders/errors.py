"""Corral's exception hierarchy: one home for every error a user may see.

Every error carries a message written for the person using the app (what went wrong and what to do next).
Each class also derives from the Python built-in it refines, so callers can catch either.
The UI turns a `CorralError` into a message; anything else is a bug and is logged, never shown as a traceback.
This module is a leaf: it imports nothing from Corral, so loaders, kernels and services may all use it.
"""

from __future__ import annotations

from pathlib import Path


class CorralError(Exception):
    """Base class: `str(error)` is a complete, user-facing message."""


# --- models on disk -------------------------------------------------------------------------------------------------


class ModelNotFoundError(CorralError, FileNotFoundError):
    """No model of that name in the models folder."""


class ModelNameError(CorralError, ValueError):
    """A model or file name that is not one plain name inside the models folder (`..`, `/etc`, `a/b`)."""


class ModelFormatError(CorralError, ValueError):
    """A model file or folder is malformed, contradictory or incomplete; `path` names the culprit."""

    def __init__(self, message: str, *, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else None
        super().__init__(f"{message} ({self.path})" if self.path is not None else message)


class UnsupportedModelError(ModelFormatError):
    """A well-formed model that this loader cannot run (architecture, quant type, GGML...)."""


class LoaderUnavailableError(CorralError, ImportError):
    """The loader's library is not installed (e.g. llama-cpp-python)."""


class RemoteEngineError(CorralError, ConnectionError):
    """A remote engine (loader `remote`) cannot be reached, refuses our key, or is misconfigured."""


class ModelNotLoadedError(CorralError, RuntimeError):
    """An action needs a loaded model and none is loaded."""


class InsufficientMemoryError(CorralError, MemoryError):
    """The estimate says the load will not fit; `needed` / `available` are bytes."""

    def __init__(self, message: str, *, needed: int, available: int) -> None:
        self.needed = needed
        self.available = available
        super().__init__(message)


# --- user data: templates, presets, settings, chats -----------------------------------------------------------------


class TemplateNotFoundError(CorralError, KeyError):
    """Unknown prompt template name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class TemplateRenderError(CorralError, ValueError):
    """A Jinja chat template failed to render."""


class PresetError(CorralError, ValueError):
    """A preset is missing or its YAML is malformed."""


class SettingsError(CorralError, ValueError):
    """A settings file is malformed or a value is out of range."""


class HistoryError(CorralError, ValueError):
    """A saved chat could not be read."""


# --- downloads -------------------------------------------------------------------------------------------------------


class DownloadError(CorralError, OSError):
    """Base for download failures."""


class RepoNameError(DownloadError, ValueError):
    """The text typed is not `owner/repo[:branch]` or a Hub URL."""


class RepoNotFoundError(DownloadError):
    """The Hub has no such repository (or it is private)."""


class BranchNotFoundError(DownloadError):
    """The repository exists but the branch does not; `branches` lists those that do."""

    def __init__(self, message: str, *, branches: list[str]) -> None:
        self.branches = branches
        super().__init__(message)


class GatedRepoError(DownloadError, PermissionError):
    """The repository needs a token (HF_TOKEN) with access granted."""


class UnsafePathError(DownloadError, ValueError):
    """A file name from the server would escape the model folder."""


class IntegrityError(DownloadError):
    """A downloaded file's size or sha256 differs from the Hub's record."""


class DiskSpaceError(DownloadError):
    """Not enough free disk for the download."""


class DownloadCancelled(DownloadError):
    """The user cancelled; partial files are kept for resuming."""


# --- generation -------------------------------------------------------------------------------------------------------


class GenerationError(CorralError, RuntimeError):
    """Generation failed for a reason the user can act on (e.g. prompt longer than the context)."""


class ConstraintError(GenerationError, ValueError):
    """A JSON schema or grammar that the grammar engine cannot compile (structured output)."""
