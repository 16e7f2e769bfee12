"""Is a file what the Hub says it is: sha256 for LFS files, git's blob sha1 for the others, and `check`, which
verifies a downloaded folder against its `.corral-source.json` without network.

A hash is trusted again while the file's size and mtime are those it was verified at, so a second download or check
of a large model does not read every byte again. A file is never accepted on its size alone: with no hash to compare
against, `expected_digest` raises `IntegrityError` (the listing refuses such files before that).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from loaders.errors import DownloadCancelled, DownloadError, IntegrityError
from webui.download.hub import RemoteFile, RepoRef, safe_name
from webui.download.record import METADATA_NAME, SourceRecord

HASH_CHUNK = 8 * 1024 * 1024


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


@dataclass(frozen=True)
class FileCheck:
    name: str
    status: Literal["ok", "missing", "size", "hash"]
    detail: str = ""


@dataclass(frozen=True)
class CheckReport:
    folder: Path
    source: str
    commit: str
    files: tuple[FileCheck, ...]

    @property
    def ok(self) -> bool:
        return all(f.status == "ok" for f in self.files)


def expected_digest(item: RemoteFile) -> tuple[str, str]:
    """(kind, hex digest) the Hub gave for `item`; `IntegrityError` when it gave none (nothing to verify against)."""
    if item.sha256:
        return "sha256", item.sha256
    if item.blob_id:
        return "git-sha1", item.blob_id
    raise IntegrityError(f"{item.path}: the Hub gave no sha256 or blob id, so its bytes cannot be verified; refused.")


def new_hasher(item: RemoteFile) -> Hasher:
    """sha256 for LFS files; git's blob sha1 (`blob <size>\\0` + bytes) for the others."""
    kind, _digest = expected_digest(item)
    return hashlib.sha256() if kind == "sha256" else hashlib.sha1(b"blob %d\0" % item.size)


def hash_into(path: Path, hasher: Hasher, cancel: threading.Event | None = None) -> Hasher:
    """Feed the bytes of `path` to `hasher`, stopping with DownloadCancelled when `cancel` is set."""
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled("Download cancelled.")
            hasher.update(chunk)
    return hasher


def is_complete(folder: Path, item: RemoteFile, record: SourceRecord, cancel: threading.Event | None) -> bool:
    """True if the final file matches the Hub's size and hash; the hash is trusted while size and mtime hold."""
    path = folder / item.path
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    if stat.st_size != item.size:
        return False
    if record.files.get(item.path, {}).get("verified") == _stat_key(stat.st_size, stat.st_mtime_ns):
        return True
    if hash_into(path, new_hasher(item), cancel).hexdigest() != expected_digest(item)[1]:
        return False
    record.verified(item, stat)
    return True


def _stat_key(size: int, mtime_ns: int) -> dict[str, int]:
    return {"size": size, "mtime_ns": mtime_ns}


def check(folder: Path, *, rehash: bool = False) -> CheckReport:
    """Verify a downloaded folder against its record, offline: present, right size, right hash."""
    folder = Path(folder)
    had_record = (folder / METADATA_NAME).exists()
    record = SourceRecord.read(folder)
    if record is None and had_record:
        raise DownloadError(
            f"{folder / METADATA_NAME} is damaged (it was set aside as a .broken file); download the model again "
            "to rebuild it."
        )
    if record is None:
        raise DownloadError(f"{folder} has no {METADATA_NAME}: it was not downloaded by Corral, nothing to check.")
    results = tuple(_check_one(folder, name, entry, rehash) for name, entry in record.files.items())
    source = str(RepoRef(record.repo, record.branch))
    return CheckReport(folder=folder, source=source, commit=record.commit, files=results)


def _check_one(folder: Path, name: str, entry: dict, rehash: bool) -> FileCheck:
    item = RemoteFile(safe_name(name), entry["size"], entry.get("sha256"), entry.get("blob_id"))
    path = folder / name
    if not path.is_file():
        return FileCheck(name, "missing", "not downloaded yet")
    stat = path.stat()
    if stat.st_size != item.size:
        return FileCheck(name, "size", f"{stat.st_size} bytes, expected {item.size}")
    if not rehash and entry.get("verified") == _stat_key(stat.st_size, stat.st_mtime_ns):
        return FileCheck(name, "ok", "verified earlier, unchanged since")
    expected = expected_digest(item)
    actual = hash_into(path, new_hasher(item)).hexdigest()
    if actual != expected[1]:
        return FileCheck(name, "hash", f"{expected[0]} {actual[:12]}…, expected {expected[1][:12]}…")
    return FileCheck(name, "ok", f"{expected[0]} matches")
