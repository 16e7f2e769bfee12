"""Safe file writes and YAML reads: the only way Corral writes user data (chats, settings, presets).

Writes go to a temporary file in the same folder, are flushed to disk, then `os.replace`d over the target, so a
crash leaves either the old file or the new one, never half of one. A user file that cannot be read, decoded or
parsed is moved aside (`name.broken-<time>.yaml`, its bytes untouched) by `quarantine`, never silently overwritten;
`read_problem` says in a few words what was wrong with it.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

BROKEN_MARK = ".broken-"  # in the name of every quarantined file: listings skip those


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_yaml(path: Path, data: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; raises `yaml.YAMLError` (with line numbers) on malformed input, `OSError` if unreadable."""
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def quarantine(path: Path) -> Path:
    """Move a broken file aside so the user's content is kept (a rename: the bytes are untouched); returns the new
    path. Raises `OSError` when the file cannot be moved."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.stem}{BROKEN_MARK}{stamp}{path.suffix}")
    counter = 1
    while target.exists():
        target = path.with_name(f"{path.stem}{BROKEN_MARK}{stamp}-{counter}{path.suffix}")
        counter += 1
    os.replace(path, target)
    return target


def read_problem(error: Exception) -> str:
    """What is wrong with a file that `read_yaml` refused, for a message: not UTF-8, malformed YAML, unreadable."""
    if isinstance(error, UnicodeDecodeError):
        return f"it is not UTF-8 text (it holds the byte 0x{error.object[error.start]:02x})"
    if isinstance(error, yaml.YAMLError):
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"it is not valid YAML{where} ({getattr(error, 'problem', None) or error})"
    if isinstance(error, OSError):
        return f"it cannot be read ({error.strerror or error})"
    return str(error)
