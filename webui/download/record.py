"""Where a download goes and its `.corral-source.json`: the repo, branch and commit a folder came from, the Hub's
size and hash of every file with the stat it was last verified at, and `gguf_file`, the GGUF quant downloaded into
the folder (the first shard's name), so a later download and the loaders keep to that pick.

Records written before `gguf_file` existed are read as having no pick; keys this version does not know are kept.
A record is checked as it is read, as the Hub's answers are (`hub.RemoteFile`): every file name stays in the folder
and every file has a size and a hash of the right form; a record that fails is damaged, set aside, and a fresh one
starts (its files are then hashed again).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from loaders.errors import DownloadError
from webui.download.hub import RemoteFile, RepoRef, safe_name
from webui.fileio import atomic_write_text, quarantine

METADATA_NAME = ".corral-source.json"
_FIELDS = ("repo", "branch", "commit", "endpoint", "files")


def destination(models_dir: Path, ref: RepoRef) -> Path:
    """`models/<owner>_<repo>` for main, `models/<owner>_<repo>_<branch>` otherwise (text-generation-webui's rule)."""
    name = ref.repo_id.replace("/", "_")
    if ref.branch != "main":
        name += "_" + ref.branch.replace("/", "_")
    return Path(models_dir) / name


@dataclass
class SourceRecord:
    """`.corral-source.json` of one folder, read and written as a whole."""

    repo: str
    branch: str
    commit: str
    endpoint: str
    files: dict[str, dict] = field(default_factory=dict)
    gguf_file: str | None = None
    extra: dict = field(default_factory=dict)  # keys of a newer version, written back unchanged

    @classmethod
    def read(cls, folder: Path, *, repair: bool = True) -> SourceRecord | None:
        """The folder's record, None if it has none. A damaged one is set aside (`repair`) so a fresh one starts."""
        path = folder / METADATA_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            known = {k: data[k] for k in _FIELDS}
            _check_files(known["files"])
            if data.get("gguf_file"):
                _safe(data["gguf_file"])
            extra = {k: v for k, v in data.items() if k not in (*_FIELDS, "gguf_file")}
            return cls(**known, gguf_file=data.get("gguf_file") or None, extra=extra)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, AttributeError, DownloadError):  # UnicodeDecodeError is a ValueError
            if repair:
                quarantine(path)  # keep the user's file, start a fresh record
            return None

    def write(self, folder: Path) -> None:
        data = dict(self.extra, repo=self.repo, branch=self.branch, commit=self.commit, endpoint=self.endpoint)
        if self.gguf_file:
            data["gguf_file"] = self.gguf_file
        atomic_write_text(folder / METADATA_NAME, json.dumps(dict(data, files=self.files), indent=2) + "\n")

    def is_of(self, ref: RepoRef) -> bool:
        return (self.repo, self.branch) == (ref.repo_id, ref.branch)

    def expect(self, item: RemoteFile) -> None:
        """Record what the Hub says `item` is; a verified stat survives only if the expected content is unchanged."""
        old = self.files.get(item.path, {})
        entry = {"size": item.size, "sha256": item.sha256, "blob_id": item.blob_id}
        same = all(old.get(k) == v for k, v in entry.items())
        self.files[item.path] = dict(entry, verified=old.get("verified") if same else None)

    def verified(self, item: RemoteFile, stat: os.stat_result) -> None:
        self.files[item.path]["verified"] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _check_files(files: object) -> None:
    """Each entry must make a valid `RemoteFile` (safe name, size, hex hash) and carry a hash; raises otherwise."""
    if not isinstance(files, dict):
        raise TypeError("files is not a mapping")
    for name, entry in files.items():
        item = RemoteFile(_safe(name), entry["size"], entry.get("sha256"), entry.get("blob_id"))
        if item.sha256 is None and item.blob_id is None:
            raise ValueError(f"{name}: no hash")


def _safe(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError("a file name is not a string")
    return safe_name(name)


def remembered_gguf(folder: Path, ref: RepoRef) -> str | None:
    """The GGUF file downloaded into `folder` from `ref` earlier, if any (read only: nothing is repaired)."""
    record = SourceRecord.read(folder, repair=False)
    return record.gguf_file if record is not None and record.is_of(ref) else None
