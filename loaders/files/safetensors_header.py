"""The header of a `.safetensors` file: tensor names, dtypes, shapes and byte ranges, never the data.

The format: an 8-byte little-endian length, then that many bytes of JSON. The length is checked against the file
size and a cap before anything is read, every entry is checked (dtype known, shape of non-negative ints, offsets
inside the data and matching the shape), and a failure names the file.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loaders.errors import ModelFormatError
from loaders.files.jsonfile import parse_json_object

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit in the safetensors crate
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
            "I8": 1, "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8}  # fmt: skip
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})


@dataclass(frozen=True)
class SafetensorsTensor:
    name: str
    dtype: str  # safetensors spelling: I32, F16, BF16, F32...
    shape: tuple[int, ...]
    nbytes: int
    end: int = 0  # where its bytes end in the data section

    @property
    def float_itemsize(self) -> int:
        """Bytes per element of a floating-point tensor (a load may cast it); 0 for integer data."""
        return ITEMSIZE[self.dtype] if self.dtype in FLOAT_DTYPES else 0


def tensors_from_header(header: dict[str, Any], name: str, *, path: Path | None = None) -> list[SafetensorsTensor]:
    """Typed records from a parsed header (a local file's or the Hub's `get_safetensors_metadata`)."""
    tensors = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        tensors.append(_tensor(key, entry, name, path))
    return tensors


def _tensor(key: str, entry: Any, name: str, path: Path | None) -> SafetensorsTensor:
    problem = None
    if not isinstance(entry, dict) or entry.get("dtype") not in ITEMSIZE:
        problem = "an unknown dtype"
    else:
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            problem = "a malformed shape"
        elif not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            problem = "malformed data offsets"
        elif offsets[1] - offsets[0] != math.prod(shape) * ITEMSIZE[entry["dtype"]] or offsets[0] < 0:
            problem = "data offsets that do not match its shape"
        else:
            return SafetensorsTensor(key, entry["dtype"], tuple(shape), offsets[1] - offsets[0], offsets[1])
    raise ModelFormatError(f"{name}: tensor {key[:80]!r} has {problem}; the file is damaged, download it again",
                           path=path)


def read_safetensors_header(path: Path) -> list[SafetensorsTensor]:
    """The tensors listed in the header of the local file `path`."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise ModelFormatError(f"{path.name} is too short to be a safetensors file", path=path)
            (length,) = struct.unpack("<Q", head)
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise ModelFormatError(
                    f"{path.name} is truncated or corrupt (a {length}-byte header in a {size}-byte file); "
                    "download it again",
                    path=path,
                )
            data = handle.read(length)
    except OSError as error:
        raise ModelFormatError(f"{path.name} cannot be read ({error.strerror or error})", path=path) from error
    tensors = tensors_from_header(parse_json_object(data, f"{path.name} header", path=path), path.name, path=path)
    if max((t.end for t in tensors), default=0) > size - 8 - length:
        raise ModelFormatError(f"{path.name} is truncated or corrupt (its tensors end past the file); download it "
                               "again", path=path)  # fmt: skip
    return tensors
