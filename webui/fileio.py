"""Safe file writes and YAML reads: the only way Corral writes user data (chats, settings, presets).

Writes go to a temporary file in the same folder, are flushed to disk, then `os.replace`d over the target, so a
crash leaves either the old file or the new one, never half of one. A YAML file that fails to parse is moved aside
(`name.broken-<time>.yaml`) by `quarantine`, never silently overwritten.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml


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
    """Move a broken file aside so the user's content is kept; returns the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.stem}.broken-{stamp}{path.suffix}")
    counter = 1
    while target.exists():
        target = path.with_name(f"{path.stem}.broken-{stamp}-{counter}{path.suffix}")
        counter += 1
    os.replace(path, target)
    return target
