"""The header of a GGUF file (metadata key/values and tensor infos), parsed with every count bounded.

`parse_gguf_header(data)` reads the first bytes of a file (a local read or an HTTP Range answer): it needs no file
handle and never touches tensor data. A GGUF file is untrusted input: before anything is allocated, every string
length and array count is checked against the bytes that remain (each item takes at least one byte) and against
fixed limits, so a 1 KB file that declares a 2^40-element array fails at once with a clear error instead of
allocating gigabytes. `read_gguf_header(path)` reads a local file, growing the read only while the header needs it.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType, Keys, LlamaFileType

from loaders.errors import ModelFormatError, UnsupportedModelError

MIB = 1024**2
FIRST_READ = 8 * MIB
MAX_HEADER_BYTES = 512 * MIB  # a 256k-token vocabulary with merges is ~20 MB; nothing real comes near this
MAX_STRING_BYTES = 64 * MIB  # the longest value is a chat template or a merges entry
MAX_ARRAY_ITEMS = 1 << 24  # 16M: vocabularies are ~256k tokens
MAX_KV_COUNT = 1 << 16
MAX_TENSOR_COUNT = 1 << 20
MAX_DIMS = 4  # GGML_MAX_DIMS
FLOAT_ITEMSIZE = {GGMLQuantizationType.F32: 4, GGMLQuantizationType.F16: 2, GGMLQuantizationType.BF16: 2}

_SCALAR = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}  # fmt: skip


class TruncatedHeader(Exception):
    """The bytes end inside the header: read more of the file."""


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor of a GGUF file: dims innermost first (as stored), its block type and bytes."""

    name: str
    dims: tuple[int, ...]
    qtype: GGMLQuantizationType

    @property
    def n_elements(self) -> int:
        return math.prod(self.dims)

    @property
    def nbytes(self) -> int:
        block, type_size = GGML_QUANT_SIZES[self.qtype]
        return self.n_elements // block * type_size

    @property
    def float_itemsize(self) -> int:
        """Bytes per element of a floating-point tensor; 0 for block-quantized data (kept as stored)."""
        return FLOAT_ITEMSIZE.get(self.qtype, 0)


@dataclass(frozen=True)
class GGUFHeader:
    """The metadata and tensor infos of a GGUF file; `size` = bytes of the header (where tensor data starts)."""

    metadata: dict[str, Any]
    tensors: tuple[GGUFTensorInfo, ...]
    size: int

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> str:
        return str(self.get(Keys.General.ARCHITECTURE, "llama"))

    def arch_key(self, template: str, default: Any = None) -> Any:
        """A `{arch}.…` key, e.g. `arch_key(Keys.LLM.CONTEXT_LENGTH)`."""
        return self.get(template.format(arch=self.architecture), default)

    @cached_property
    def quant(self) -> str:
        """The quantization from `general.file_type` ("Q4_K_M"), else the block type holding most weights."""
        file_type = self.get(Keys.General.FILE_TYPE)
        if file_type is not None:
            try:
                return LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
            except ValueError:
                return f"file type {file_type}"
        sizes: dict[str, int] = {}
        for tensor in self.tensors:
            sizes[tensor.qtype.name] = sizes.get(tensor.qtype.name, 0) + tensor.n_elements
        return max(sizes, key=sizes.__getitem__) if sizes else "unknown"

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    def token(self, token_id: Any) -> str | None:
        """The text of vocabulary entry `token_id` (None when out of range or absent)."""
        tokens = self.get(Keys.Tokenizer.LIST) or []
        if not isinstance(token_id, int) or not 0 <= token_id < len(tokens):
            return None
        return tokens[token_id]

    @property
    def split_number(self) -> int:
        """0 for an unsplit file or the first shard of a split model (llama.cpp opens that one)."""
        return int(self.get(Keys.Split.LLM_KV_SPLIT_NO, 0) or 0)


class _Cursor:
    """Little-endian GGUF values from a buffer that may stop anywhere; every length is checked before use."""

    def __init__(self, data: bytes | memoryview, *, file_size: int | None) -> None:
        self.data, self.pos = memoryview(data), 0
        # What a count can be checked against: the whole file when its size is known, else a fixed ceiling.
        self.limit = min(file_size if file_size is not None else MAX_HEADER_BYTES, MAX_HEADER_BYTES)

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise TruncatedHeader
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def count(self, what: str, ceiling: int, item_bytes: int) -> int:
        """A count read from the file, refused when its items could not fit in the rest of the file."""
        value = self.scalar("<Q")
        if value > ceiling or value * item_bytes > self.limit - self.pos:
            raise ModelFormatError(f"GGUF header declares {value} {what}, more than the file can hold")
        return value

    def string(self) -> str:
        length = self.count("bytes in a string", MAX_STRING_BYTES, 1)
        return bytes(self.take(length)).decode("utf-8", errors="replace")

    def value_type(self) -> GGUFValueType:
        raw = self.scalar("<I")
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise ModelFormatError(f"GGUF header holds an unknown value type {raw}") from None

    def value(self, vtype: GGUFValueType, *, depth: int = 0) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            if depth > 2:
                raise ModelFormatError("GGUF header nests arrays too deeply")
            item_type = self.value_type()
            item_bytes = struct.calcsize(_SCALAR[item_type]) if item_type in _SCALAR else 8
            count = self.count("array items", MAX_ARRAY_ITEMS, item_bytes)
            if item_type in _SCALAR:  # numbers: one numpy view, not `count` unpack calls
                fmt = _SCALAR[item_type]
                return np.frombuffer(self.take(count * item_bytes), dtype=np.dtype(fmt)).tolist()
            return [self.value(item_type, depth=depth + 1) for _ in range(count)]
        return self.scalar(_SCALAR[vtype])


def parse_gguf_header(data: bytes | memoryview, *, file_size: int | None = None) -> GGUFHeader:
    """Parse a GGUF header from the first bytes of a file of `file_size` bytes (None: unknown).

    Raises `TruncatedHeader` when `data` ends inside the header, `ModelFormatError` for a malformed or hostile one."""
    cur = _Cursor(data, file_size=file_size)
    if cur.scalar("<I") != GGUF_MAGIC:
        raise ModelFormatError("not a GGUF file (its first bytes are not the GGUF magic)")
    version = cur.scalar("<I")
    if version < 2:
        raise UnsupportedModelError(f"GGUF version {version} is too old; convert the file again with llama.cpp")
    n_tensors = cur.count("tensors", MAX_TENSOR_COUNT, 8 + 4 + 4 + 8)
    n_kv = cur.count("metadata keys", MAX_KV_COUNT, 8 + 4)
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.value_type())
    tensors = tuple(_tensor_info(cur) for _ in range(n_tensors))
    alignment = metadata.get(Keys.General.ALIGNMENT, 32)
    if not isinstance(alignment, int) or not 0 < alignment <= 1 << 20:
        raise ModelFormatError(f"GGUF header declares an alignment of {alignment!r}")
    return GGUFHeader(metadata, tensors, -(-cur.pos // alignment) * alignment)


def _tensor_info(cur: _Cursor) -> GGUFTensorInfo:
    name = cur.string()
    n_dims = cur.scalar("<I")
    if not 1 <= n_dims <= MAX_DIMS:
        raise ModelFormatError(f"GGUF tensor {name[:80]!r} declares {n_dims} dimensions (at most {MAX_DIMS})")
    dims = tuple(cur.scalar("<Q") for _ in range(n_dims))
    raw_type = cur.scalar("<I")
    try:
        qtype = GGMLQuantizationType(raw_type)
    except ValueError:
        raise UnsupportedModelError(f"GGUF tensor {name[:80]!r} has an unknown type {raw_type}") from None
    cur.scalar("<Q")  # offset in the data section
    if any(d <= 0 for d in dims) or math.prod(dims) > 1 << 48 or dims[0] % GGML_QUANT_SIZES[qtype][0]:
        raise ModelFormatError(f"GGUF tensor {name[:80]!r} declares impossible dimensions {list(dims)}")
    return GGUFTensorInfo(name, dims, qtype)


def read_gguf_header(path: Path, *, first: int = FIRST_READ) -> GGUFHeader:
    """The header of a local GGUF file, reading more of it only when the header is longer than `first` bytes."""
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as handle:
            size = first
            while True:
                handle.seek(0)
                data = handle.read(size)
                try:
                    return parse_gguf_header(data, file_size=file_size)
                except TruncatedHeader:
                    if len(data) < size:
                        raise _incomplete(path, "it ends inside its header") from None
                    size *= 4
                except ModelFormatError as error:
                    if error.path is None:
                        raise _incomplete(path, str(error), type(error)) from error
                    raise
    except OSError as error:
        raise ModelFormatError(f"{path.name} cannot be read ({error.strerror or error})", path=path) from error


def _incomplete(path: Path, why: str, kind: type[ModelFormatError] = ModelFormatError) -> ModelFormatError:
    return kind(f"{path.name} is not a complete GGUF file ({why}); the download was probably cut short, download "
                "it again", path=path)  # fmt: skip
