"""Small JSON files of a model (config.json, quantize_config.json, tokenizer_config.json...), read with a size cap.

Every JSON file Corral reads from a model folder or the Hub comes through `read_json_object`: the size is checked
before the bytes are read, the text must be UTF-8 and hold one object, and a failure names the file without echoing
its content.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loaders.errors import ModelFormatError

MAX_JSON_BYTES = 64 * 1024 * 1024  # Gemma's tokenizer.json is ~33 MB; configs are a few KB


def parse_json_object(data: bytes, name: str, *, path: Path | None = None) -> dict[str, Any]:
    """`data` (the bytes of `name`) as a JSON object, or `ModelFormatError` naming the file."""
    if len(data) > MAX_JSON_BYTES:
        raise ModelFormatError(f"{name} is {len(data)} bytes, more than a model's JSON file can be", path=path)
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ModelFormatError(f"{name} is not a UTF-8 text file; download it again", path=path) from error
    except json.JSONDecodeError as error:
        raise ModelFormatError(
            f"{name} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); "
            "download it again or fix it",
            path=path,
        ) from error
    except RecursionError as error:
        raise ModelFormatError(f"{name} is nested too deeply to be a model's JSON file", path=path) from error
    if not isinstance(value, dict):
        raise ModelFormatError(f"{name} should hold a JSON object, not {type(value).__name__}", path=path)
    return value


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in the file `path` (size-capped before reading)."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise ModelFormatError(f"{path.name} is {size} bytes, more than a model's JSON file can be", path=path)
        data = path.read_bytes()
    except OSError as error:
        raise ModelFormatError(f"{path.name} cannot be read ({error.strerror or error})", path=path) from error
    return parse_json_object(data, path.name, path=path)


def read_json_if_exists(path: Path) -> dict[str, Any] | None:
    return read_json_object(path) if path.is_file() else None
