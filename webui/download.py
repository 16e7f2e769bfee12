"""Model downloads from the Hugging Face Hub: what to fetch, where it goes, and getting it there intact.

This module owns the whole path from the text a user pastes (`owner/repo:branch` or a Hub URL) to a verified model
folder: parsing (`parse_repo`), listing a branch through `HfApi` (`list_files`), choosing the files worth having
(`choose_files`), the destination folder and its `.corral-source.json` record (`destination`), the transfer itself
(resumable, several files at once, cancellable, every file hashed against the Hub's value), `check` of a folder
without network, the background `DownloadManager` the UI polls, and the `python -m webui.download` command line.

Why not `hf_hub_download(local_dir=...)`: in huggingface_hub 2.4 it streams into a process-unique temporary name
and deletes it on any failure (`_download_to_tmp_and_move`, huggingface_hub#4228), so a cancelled or cut download
keeps nothing to resume, and its progress hook only sees 10 MB chunks. We use the client's own pieces instead:
`HfApi` for listings, `hf_hub_url` / `build_hf_headers` (HF_ENDPOINT, HF_TOKEN, user agent), `get_session` for the
HTTP stream and `hf_raise_for_status` for the Hub's error headers, converted into Corral errors in one place.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Literal, Protocol
from urllib.parse import unquote, urlsplit

import filelock
import httpx2
from huggingface_hub import HfApi, constants, hf_hub_url
from huggingface_hub import errors as hub_errors
from huggingface_hub.hf_api import RepoSibling
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status, validate_repo_id

from loaders.errors import (
    BranchNotFoundError,
    CorralError,
    DiskSpaceError,
    DownloadCancelled,
    DownloadError,
    GatedRepoError,
    IntegrityError,
    RepoNameError,
    RepoNotFoundError,
    UnsafePathError,
)
from webui.fileio import atomic_write_text, quarantine

METADATA_NAME = ".corral-source.json"
PARTIAL_DIR = ".corral-partial"  # resumable `.part` files, named by content hash, never under a final name
HASH_CHUNK = 8 * 1024 * 1024
SMALL_FILE_LIMIT = 64 * 1024 * 1024  # Gemma's tokenizer.json is ~33 MB
DISK_MARGIN = 64 * 1024 * 1024
DEFAULT_THREADS = 4
DEFAULT_RETRIES = 3
REPO_FORM = "owner/repo, owner/repo:branch or https://huggingface.co/owner/repo/tree/branch"

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
FileState = Literal["waiting", "downloading", "done", "present", "failed", "cancelled"]


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


# --- records ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepoRef:
    """A repository and branch on the Hub."""

    repo_id: str
    branch: str = "main"

    def __str__(self) -> str:
        return self.repo_id if self.branch == "main" else f"{self.repo_id}:{self.branch}"


@dataclass(frozen=True)
class RemoteFile:
    """A file of a branch as the Hub lists it: `sha256` for LFS files, `blob_id` (git sha1) for the others."""

    path: str
    size: int
    sha256: str | None = None
    blob_id: str | None = None


@dataclass(frozen=True)
class RepoListing:
    ref: RepoRef
    commit: str
    files: tuple[RemoteFile, ...]
    endpoint: str


@dataclass(frozen=True)
class SkippedFile:
    file: RemoteFile
    reason: str


@dataclass(frozen=True)
class DownloadPlan:
    """What `choose_files` decided: the files to fetch, the rest with a reason, and the GGUF files one may pick."""

    listing: RepoListing
    chosen: tuple[RemoteFile, ...]
    skipped: tuple[SkippedFile, ...]
    gguf_choices: tuple[str, ...] = ()
    gguf_file: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.chosen)


@dataclass(frozen=True)
class FileProgress:
    name: str
    done: int
    total: int
    state: FileState
    error: str | None = None


@dataclass(frozen=True)
class DownloadProgress:
    """A snapshot of one download for the UI and the CLI: plain data, safe to read from any thread."""

    ref: str
    folder: Path
    state: JobState
    message: str
    files: tuple[FileProgress, ...] = ()
    done_bytes: int = 0
    total_bytes: int = 0
    speed_bps: float = 0.0
    eta_s: float | None = None
    errors: tuple[str, ...] = ()

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else (1.0 if self.state == "done" else 0.0)


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


# --- parsing ------------------------------------------------------------------------------------------------------

_HUB_HOSTS = ("huggingface.co", "www.huggingface.co", "hf.co")
# git check-ref-format: no spaces, control characters, ~ ^ : ? * [ \ , "..", "@{", leading "/" or "-".
_BAD_BRANCH = re.compile(r"[\s~^:?*\[\\\x00-\x1f\x7f]|\.\.|@\{|^[/-]|/$|\.lock$|^$")


def parse_repo(text: str) -> RepoRef:
    """`owner/repo`, `owner/repo:branch` or a Hub URL (`.../owner/repo[/tree/branch]`) -> RepoRef."""
    cleaned = text.strip()
    if cleaned.startswith(("http://", "https://")):
        repo_id, branch = _split_url(cleaned)
    else:
        repo_id, _, branch = cleaned.partition(":")
        branch = branch if ":" in cleaned else "main"
    _validate_ref(repo_id, branch, text)
    return RepoRef(repo_id, branch)


def _split_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if parts.hostname not in _HUB_HOSTS or len(segments) < 2:
        raise RepoNameError(f"Not a Hugging Face model URL: {url!r}. Expected {REPO_FORM}.")
    repo_id = "/".join(segments[:2])
    if len(segments) == 2:
        return repo_id, "main"
    if segments[2] in ("tree", "blob", "resolve") and len(segments) >= 4:
        return repo_id, segments[3]
    raise RepoNameError(f"Cannot read a repository and branch from {url!r}. Expected {REPO_FORM}.")


def _validate_ref(repo_id: str, branch: str, text: str) -> None:
    if repo_id.count("/") != 1:
        raise RepoNameError(f"{text.strip()!r} is not a model name. Expected {REPO_FORM}.")
    try:
        validate_repo_id(repo_id)
    except hub_errors.HFValidationError as error:
        raise RepoNameError(f"{repo_id!r} is not a valid repository name ({error}). Expected {REPO_FORM}.") from error
    if _BAD_BRANCH.search(branch):
        raise RepoNameError(f"{branch!r} is not a valid branch name. Expected {REPO_FORM}.")


def safe_name(name: str) -> str:
    """A file name from the server, refused if it could land outside the model folder."""
    pure = PurePosixPath(name)
    if (
        not name
        or "\\" in name
        or "\x00" in name
        or pure.is_absolute()
        or re.match(r"^[A-Za-z]:", name)
        or any(part in ("..", ".", "") for part in name.split("/"))
    ):
        raise UnsafePathError(f"The server listed a file named {name!r}, which would escape the model folder; refused.")
    return name


# --- talking to the Hub ---------------------------------------------------------------------------------------------


def hub_endpoint() -> str:
    """HF_ENDPOINT as it is now (huggingface_hub reads it once at import; a test server sets it later)."""
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


@contextmanager
def hub_errors_as_corral(ref: RepoRef, *, endpoint: str, token: str | None) -> Iterator[None]:
    """The one place where the Hub's exceptions become Corral's."""
    try:
        yield
    except hub_errors.GatedRepoError as error:  # subclass of RepositoryNotFoundError: first
        raise GatedRepoError(
            f"{ref.repo_id} is gated: accept its license on https://huggingface.co/{ref.repo_id} and set HF_TOKEN "
            "to a token of that account (or enter it in the token box)."
        ) from error
    except hub_errors.RepositoryNotFoundError as error:
        raise RepoNotFoundError(
            f"No repository {ref.repo_id} on {endpoint}. Check the name on its model card; if it is private, "
            "set HF_TOKEN to a token that can read it."
        ) from error
    except hub_errors.RevisionNotFoundError as error:
        branches = _branches(ref, endpoint=endpoint, token=token)
        raise BranchNotFoundError(
            f"{ref.repo_id} has no branch {ref.branch!r}. Branches: {', '.join(branches) or 'none found'}.",
            branches=branches,
        ) from error
    except hub_errors.RemoteEntryNotFoundError as error:
        raise DownloadError(
            f"A file of {ref} vanished from the Hub while downloading; list the files again."
        ) from error
    except hub_errors.HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise DownloadError(f"The Hub answered HTTP {status} for {ref}: {error.server_message or error}") from error
    except httpx2.TransportError as error:
        raise DownloadError(f"Cannot reach {endpoint} ({error}). Check the connection and try again.") from error


def _branches(ref: RepoRef, *, endpoint: str, token: str | None) -> list[str]:
    try:
        refs = HfApi(endpoint=endpoint, token=token).list_repo_refs(ref.repo_id)
    except (hub_errors.HfHubHTTPError, httpx2.TransportError):
        return []
    return sorted(b.name for b in refs.branches)


def list_files(ref: RepoRef, *, token: str | None = None) -> RepoListing:
    """The files of `ref`'s branch with sizes and hashes, and its commit; nothing is downloaded."""
    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors_as_corral(ref, endpoint=endpoint, token=token):
        info = api.model_info(ref.repo_id, revision=ref.branch, files_metadata=True)
        files = tuple(_remote_file(s) for s in info.siblings or [])
        if info.gated and files:
            _probe_access(ref, info.sha or ref.branch, files[0].path, endpoint=endpoint, token=token)
    return RepoListing(ref=ref, commit=info.sha or ref.branch, files=files, endpoint=endpoint)


def _remote_file(sibling: RepoSibling) -> RemoteFile:
    lfs = sibling.lfs
    return RemoteFile(
        path=safe_name(sibling.rfilename),
        size=int(lfs.size if lfs else sibling.size or 0),
        sha256=lfs.sha256 if lfs else None,
        blob_id=None if lfs else sibling.blob_id,
    )


def _probe_access(ref: RepoRef, revision: str, path: str, *, endpoint: str, token: str | None) -> None:
    """Model info of a gated repo is public; its files are not. A HEAD tells us before the user clicks Download."""
    url = hf_hub_url(ref.repo_id, path, revision=revision, endpoint=endpoint)
    response = get_session().head(url, headers=build_hf_headers(token=token), follow_redirects=False)
    hf_raise_for_status(response)


# --- choosing files -------------------------------------------------------------------------------------------------

_TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_OTHER_FRAMEWORKS = (".h5", ".msgpack", ".onnx", ".onnx_data", ".ot", ".tflite", ".mlmodel", ".npz", ".pb")
_TEXT_SUFFIXES = (".json", ".md", ".txt", ".jinja", ".model", ".tiktoken", ".yaml", ".yml", ".py", ".cfg")
_NOT_WEIGHTS = ("training_args", "optimizer", "scheduler", "rng_state")
_SHARD = re.compile(r"-\d{5}-of-\d{5}(?=\.gguf$)")
_QUANT = re.compile(r"(?i)(?<![A-Za-z0-9])(I?Q\d(?:_[A-Z0-9]+)*|BF16|F16|F32)(?=[-_.])")
_GGUF_PREFERENCE = ("Q4_K_M", "Q4_K_S", "Q5_K_M", "Q4_0", "Q4_1", "Q5_K_S", "Q5_0", "Q6_K", "Q8_0")
_GGUF_TOO_LOSSY = re.compile(r"(?i)^(IQ1|IQ2|Q2|IQ3|Q3)")


def choose_files(listing: RepoListing, *, gguf_file: str | None = None) -> DownloadPlan:
    """Pick what to download: one weight format, one GGUF quant, configs and tokenizer, small docs."""
    files = [replace(f, path=safe_name(f.path)) for f in listing.files]
    groups = _gguf_groups(files)
    pick = _pick_gguf(groups, gguf_file, listing, has_safetensors=_has(files, ".safetensors"))
    chosen: list[RemoteFile] = []
    skipped: list[SkippedFile] = []
    for item in files:
        reason = _skip_reason(item, files, pick)
        if reason is None:
            chosen.append(item)
        else:
            skipped.append(SkippedFile(item, reason))
    return DownloadPlan(listing, tuple(chosen), tuple(skipped), tuple(groups), pick)


def _has(files: list[RemoteFile], *suffixes: str) -> bool:
    return any(_is_weight(f, *suffixes) for f in files)


def _is_weight(item: RemoteFile, *suffixes: str) -> bool:
    name = PurePosixPath(item.path).name
    return name.endswith(suffixes) and not name.startswith(_NOT_WEIGHTS)


def _gguf_groups(files: list[RemoteFile]) -> dict[str, list[RemoteFile]]:
    """GGUF choices: one entry per quant, split files (`-00001-of-00003.gguf`) grouped under the first name."""
    groups: dict[str, list[RemoteFile]] = {}
    for item in files:
        if item.path.endswith(".gguf"):
            groups.setdefault(_SHARD.sub("", item.path), []).append(item)
    return groups


def _pick_gguf(
    groups: dict[str, list[RemoteFile]], gguf_file: str | None, listing: RepoListing, *, has_safetensors: bool
) -> str | None:
    if gguf_file is not None:
        key = _SHARD.sub("", gguf_file)
        if key not in groups:
            raise DownloadError(f"{listing.ref} has no file {gguf_file!r}. GGUF files: {', '.join(groups) or 'none'}.")
        return key
    if not groups or has_safetensors or _has(list(listing.files), *_TORCH_SUFFIXES):
        return None
    return default_gguf(groups)


def default_gguf(groups: dict[str, list[RemoteFile]]) -> str:
    """Q4_K_M when present, then the usual good quants in order, else the smallest that is not too lossy."""
    labels = {key: (_quant_label(key) or "").upper() for key in groups}
    for wanted in _GGUF_PREFERENCE:
        match = [key for key, label in labels.items() if label == wanted and "mmproj" not in key]
        if match:
            return match[0]
    candidates = [k for k in groups if "mmproj" not in k and not _GGUF_TOO_LOSSY.match(labels[k])] or list(groups)
    return min(candidates, key=lambda key: sum(f.size for f in groups[key]))


def _quant_label(name: str) -> str | None:
    found = _QUANT.findall(PurePosixPath(name).name)
    return found[-1] if found else None


def _skip_reason(item: RemoteFile, files: list[RemoteFile], pick: str | None) -> str | None:
    name = PurePosixPath(item.path).name
    if name.startswith(".git") or any(p.startswith(".git") for p in PurePosixPath(item.path).parts):
        return "git metadata"
    if "/" in item.path:
        return "in a subfolder (not needed to run the model)"
    if item.path.endswith(".gguf"):
        if pick is None:
            return "GGUF: this repo also has safetensors/PyTorch weights (pick a GGUF file to get it instead)"
        return None if _SHARD.sub("", item.path) == pick else f"another GGUF quant ({pick} chosen)"
    return _skip_weight_reason(item, files, pick) or _skip_other_reason(item)


def _skip_weight_reason(item: RemoteFile, files: list[RemoteFile], pick: str | None) -> str | None:
    name = item.path
    is_weight = _is_weight(item, ".safetensors", *_TORCH_SUFFIXES) or name.endswith(".safetensors.index.json")
    torch_index = name.endswith(".bin.index.json")
    if not (is_weight or torch_index):
        return None
    if pick is not None:
        return f"a GGUF file was chosen ({pick})"
    if _has(files, ".safetensors") and (torch_index or _is_weight(item, *_TORCH_SUFFIXES)):
        return "PyTorch pickle weights: the safetensors copy is downloaded instead"
    return None


def _skip_other_reason(item: RemoteFile) -> str | None:
    name = item.path
    if name.endswith(_OTHER_FRAMEWORKS) or name.startswith(_NOT_WEIGHTS):
        return "not used by Corral's loaders"
    if name.endswith((".safetensors", *_TORCH_SUFFIXES)):
        return None
    if not name.endswith(_TEXT_SUFFIXES) and name not in ("LICENSE", "NOTICE", "USE_POLICY"):
        return "not needed to run the model"
    if item.size > SMALL_FILE_LIMIT:
        return f"large extra file ({_mb(item.size)})"
    return None


# --- destination and its record -------------------------------------------------------------------------------------


def destination(models_dir: Path, ref: RepoRef) -> Path:
    """`models/<owner>_<repo>` for main, `models/<owner>_<repo>_<branch>` otherwise (text-generation-webui's rule)."""
    name = ref.repo_id.replace("/", "_")
    if ref.branch != "main":
        name += "_" + ref.branch.replace("/", "_")
    return Path(models_dir) / name


@dataclass
class _Record:
    """`.corral-source.json`: where the folder came from and, per file, its hash and the stat it was verified at."""

    repo: str
    branch: str
    commit: str
    endpoint: str
    files: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def read(cls, folder: Path) -> _Record | None:
        path = folder / METADATA_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**{k: data[k] for k in ("repo", "branch", "commit", "endpoint", "files")})
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            quarantine(path)  # keep the user's file, start a fresh record
            return None

    def write(self, folder: Path) -> None:
        data = {"repo": self.repo, "branch": self.branch, "commit": self.commit, "endpoint": self.endpoint}
        atomic_write_text(folder / METADATA_NAME, json.dumps(dict(data, files=self.files), indent=2) + "\n")

    def expect(self, item: RemoteFile) -> None:
        """Record what the Hub says `item` is; a verified stat survives only if the expected content is unchanged."""
        old = self.files.get(item.path, {})
        entry = {"size": item.size, "sha256": item.sha256, "blob_id": item.blob_id}
        same = all(old.get(k) == v for k, v in entry.items())
        self.files[item.path] = dict(entry, verified=old.get("verified") if same else None)

    def verified(self, item: RemoteFile, stat: os.stat_result) -> None:
        self.files[item.path]["verified"] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _expected_digest(item: RemoteFile) -> tuple[str, str] | None:
    if item.sha256:
        return "sha256", item.sha256
    if item.blob_id:
        return "git-sha1", item.blob_id
    return None


def _new_hasher(item: RemoteFile) -> _Hasher:
    """sha256 for LFS files; git's blob sha1 (`blob <size>\\0` + bytes) for the others."""
    if item.sha256 or not item.blob_id:
        return hashlib.sha256()
    return hashlib.sha1(b"blob %d\0" % item.size)


def _hash_file(path: Path, item: RemoteFile, cancel: threading.Event | None = None) -> str:
    hasher = _new_hasher(item)
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled("Download cancelled.")
            hasher.update(chunk)
    return hasher.hexdigest()


def _is_complete(folder: Path, item: RemoteFile, record: _Record, cancel: threading.Event | None) -> bool:
    """True if the final file matches the Hub's size and hash; the hash is trusted while size and mtime hold."""
    path = folder / item.path
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    if stat.st_size != item.size:
        return False
    seen = record.files.get(item.path, {}).get("verified")
    if seen == {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}:
        return True
    expected = _expected_digest(item)
    if expected is not None and _hash_file(path, item, cancel) != expected[1]:
        return False
    record.verified(item, stat)
    return True


def check(folder: Path, *, rehash: bool = False) -> CheckReport:
    """Verify a downloaded folder against its record, offline: present, right size, right hash."""
    folder = Path(folder)
    record = _Record.read(folder)
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
    if not rehash and entry.get("verified") == {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}:
        return FileCheck(name, "ok", "verified earlier, unchanged since")
    expected = _expected_digest(item)
    if expected is None:
        return FileCheck(name, "ok", "size matches (the Hub gave no hash)")
    actual = _hash_file(path, item)
    if actual != expected[1]:
        return FileCheck(name, "hash", f"{expected[0]} {actual[:12]}…, expected {expected[1][:12]}…")
    return FileCheck(name, "ok", f"{expected[0]} matches")


# --- progress -------------------------------------------------------------------------------------------------------


class ProgressTracker:
    """Per-file bytes and states, written by worker threads and read as `DownloadProgress` snapshots."""

    def __init__(self, ref: RepoRef, folder: Path) -> None:
        self._lock = threading.Lock()
        self.ref, self.folder = ref, folder
        self.state: JobState = "queued"
        self.message = "Waiting to start…"
        self.errors: list[str] = []
        self._files: dict[str, FileProgress] = {}
        self._samples: deque[tuple[float, int]] = deque(maxlen=64)
        self._moved = 0  # bytes received in this run, for the speed

    def set(self, state: JobState, message: str) -> None:
        with self._lock:
            self.state, self.message = state, message

    def plan(self, files: tuple[RemoteFile, ...]) -> None:
        with self._lock:
            self._files = {f.path: FileProgress(f.path, 0, f.size, "waiting") for f in files}

    def file(
        self, name: str, *, state: FileState | None = None, done: int | None = None, error: str | None = None
    ) -> None:
        with self._lock:
            old = self._files[name]
            self._files[name] = replace(
                old, state=state or old.state, done=old.done if done is None else done, error=error or old.error
            )
            if error:
                self.errors.append(f"{name}: {error}")

    def add(self, name: str, count: int) -> None:
        with self._lock:
            old = self._files[name]
            self._files[name] = replace(old, done=old.done + count)
            self._moved += count
            self._samples.append((time.monotonic(), self._moved))

    def snapshot(self) -> DownloadProgress:
        with self._lock:
            files = tuple(self._files.values())
            speed = self._speed()
            done = sum(f.done for f in files)
            total = sum(f.total for f in files)
            eta = (total - done) / speed if speed > 0 and self.state == "running" else None
            return DownloadProgress(
                str(self.ref), self.folder, self.state, self.message, files, done, total, speed, eta, tuple(self.errors)
            )

    def _speed(self) -> float:
        now = time.monotonic()
        recent = [(t, n) for t, n in self._samples if now - t <= 5.0]
        if len(recent) < 2 or self.state != "running":
            return 0.0
        (t0, n0), (t1, n1) = recent[0], recent[-1]
        return (n1 - n0) / max(t1 - t0, now - t1, 1e-3)


# --- transfer -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Transfer:
    """What every worker of one download shares."""

    plan: DownloadPlan
    folder: Path
    record: _Record
    record_lock: threading.Lock
    tracker: ProgressTracker
    cancel: threading.Event
    headers: dict[str, str]
    retries: int

    @property
    def partial_dir(self) -> Path:
        return self.folder / PARTIAL_DIR

    def partial(self, item: RemoteFile) -> Path:
        digest = item.sha256 or item.blob_id or hashlib.sha256(item.path.encode()).hexdigest()
        return self.partial_dir / f"{digest}.part"

    def save_record(self, item: RemoteFile, path: Path) -> None:
        with self.record_lock:
            self.record.verified(item, path.stat())
            self.record.write(self.folder)


_TRANSIENT = (httpx2.TransportError,)


def _fetch(item: RemoteFile, job: _Transfer) -> None:
    """Download one file to its `.part`, verify it, then give it its final name."""
    if job.cancel.is_set():
        raise DownloadCancelled("Download cancelled.")
    part = job.partial(item)
    job.tracker.file(item.path, state="downloading", done=_size(part))
    digest = _stream_with_retries(item, part, job)
    expected = _expected_digest(item)
    if expected is not None and digest != expected[1]:
        part.unlink(missing_ok=True)  # corrupted bytes are no use for resuming
        raise IntegrityError(
            f"{item.path}: {expected[0]} {digest[:12]}… does not match the Hub's {expected[1][:12]}…; "
            "the damaged download was deleted, run the download again."
        )
    final = _final_path(job.folder, item)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, final)
    job.save_record(item, final)
    job.tracker.file(item.path, state="done", done=item.size)


def _final_path(folder: Path, item: RemoteFile) -> Path:
    path = (folder / safe_name(item.path)).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise UnsafePathError(f"{item.path!r} would be written outside {folder}; refused.")
    return path


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _stream_with_retries(item: RemoteFile, part: Path, job: _Transfer) -> str:
    listing = job.plan.listing
    url = hf_hub_url(listing.ref.repo_id, item.path, revision=listing.commit, endpoint=listing.endpoint)
    for attempt in range(job.retries + 1):
        try:
            return _stream(url, item, part, job)
        except _TRANSIENT as error:
            if attempt == job.retries:
                raise DownloadError(
                    f"{item.path}: connection lost ({type(error).__name__}) after {attempt + 1} tries; "
                    f"{_mb(_size(part))} kept, run the download again to resume."
                ) from error
            if job.cancel.wait(0.5 * (attempt + 1)):
                raise DownloadCancelled("Download cancelled.") from error
    raise AssertionError("unreachable")


def _stream(url: str, item: RemoteFile, part: Path, job: _Transfer) -> str:
    """Append the missing bytes of `item` to `part` (HTTP Range), hashing as it goes; returns the hex digest."""
    offset = _size(part)
    if offset > item.size:
        part.unlink()
        offset = 0
    hasher = _new_hasher(item)
    if offset:
        _hash_prefix(part, hasher, job.cancel)
    if offset == item.size:
        return hasher.hexdigest()
    headers = dict(job.headers, Range=f"bytes={offset}-") if offset else job.headers
    timeout = constants.HF_HUB_DOWNLOAD_TIMEOUT
    with get_session().stream("GET", url, headers=headers, follow_redirects=True, timeout=timeout) as response:
        hf_raise_for_status(response)
        if offset and response.status_code == 200:  # the server ignored Range: start over
            offset, hasher = 0, _new_hasher(item)
        job.tracker.file(item.path, done=offset)
        with open(part, "r+b" if offset else "wb") as out:
            out.seek(offset)
            for chunk in response.iter_bytes():  # as received: fine-grained cancel, nothing lost on a cut
                if job.cancel.is_set():
                    raise DownloadCancelled("Download cancelled.")
                out.write(chunk)
                hasher.update(chunk)
                job.tracker.add(item.path, len(chunk))
    if _size(part) != item.size:
        raise httpx2.RemoteProtocolError(f"got {_size(part)} of {item.size} bytes")
    return hasher.hexdigest()


def _hash_prefix(part: Path, hasher: _Hasher, cancel: threading.Event) -> None:
    with open(part, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            if cancel.is_set():
                raise DownloadCancelled("Download cancelled.")
            hasher.update(chunk)


def _check_disk(folder: Path, needed: int) -> None:
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed + DISK_MARGIN > free:
        raise DiskSpaceError(
            f"Not enough disk space in {probe}: the download needs {_mb(needed)}, {_mb(free)} free. "
            "Free some space or choose a smaller file."
        )


def _mb(count: int) -> str:
    return f"{count / 1e9:.2f} GB" if count >= 1e9 else f"{count / 1e6:.1f} MB"


def run_plan(
    plan: DownloadPlan,
    folder: Path,
    tracker: ProgressTracker,
    cancel: threading.Event,
    *,
    token: str | None = None,
    threads: int = DEFAULT_THREADS,
    retries: int = DEFAULT_RETRIES,
) -> None:
    """Download `plan` into `folder`; files already complete and correct are not fetched again."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PARTIAL_DIR).mkdir(exist_ok=True)
    lock = filelock.FileLock(folder / PARTIAL_DIR / "download.lock", timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout as error:
        raise DownloadError(f"Another download into {folder} is running; wait for it or cancel it.") from error
    try:
        _run_locked(plan, folder, tracker, cancel, token=token, threads=threads, retries=retries)
    finally:
        if not any((folder / PARTIAL_DIR).glob("*.part")):  # nothing left to resume: leave a clean model folder
            shutil.rmtree(folder / PARTIAL_DIR, ignore_errors=True)
        lock.release()


def _run_locked(
    plan: DownloadPlan,
    folder: Path,
    tracker: ProgressTracker,
    cancel: threading.Event,
    *,
    token: str | None,
    threads: int,
    retries: int,
) -> None:
    record = _Record.read(folder)
    listing = plan.listing
    if record is None or (record.repo, record.branch) != (listing.ref.repo_id, listing.ref.branch):
        record = _Record(listing.ref.repo_id, listing.ref.branch, listing.commit, listing.endpoint)
    record.commit, record.endpoint = listing.commit, listing.endpoint
    for item in plan.chosen:
        record.expect(item)
    tracker.plan(plan.chosen)
    tracker.set("running", "Checking files already on disk…")
    todo = [f for f in plan.chosen if not _mark_present(folder, f, record, tracker, cancel)]
    record.write(folder)
    job = _Transfer(plan, folder, record, threading.Lock(), tracker, cancel, build_hf_headers(token=token), retries)
    _check_disk(folder, sum(f.size - _size(job.partial(f)) for f in todo))
    tracker.set("running", f"Downloading {len(todo)} of {len(plan.chosen)} files…")
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="corral-download") as pool:
        results = list(pool.map(lambda item: _fetch_reporting(item, job), todo))
    _finish(tracker, cancel, results)


def _mark_present(
    folder: Path, item: RemoteFile, record: _Record, tracker: ProgressTracker, cancel: threading.Event
) -> bool:
    if not _is_complete(folder, item, record, cancel):
        return False
    tracker.file(item.path, state="present", done=item.size)
    return True


def _fetch_reporting(item: RemoteFile, job: _Transfer) -> str | None:
    """Run `_fetch`; a failure of one file is recorded and returned, so the other files go on."""
    try:
        with hub_errors_as_corral(job.plan.listing.ref, endpoint=job.plan.listing.endpoint, token=None):
            _fetch(item, job)
    except DownloadCancelled:
        job.tracker.file(item.path, state="cancelled")
        return "cancelled"
    except CorralError as error:
        job.tracker.file(item.path, state="failed", error=str(error))
        return str(error)
    return None


def _finish(tracker: ProgressTracker, cancel: threading.Event, results: list[str | None]) -> None:
    if cancel.is_set():
        raise DownloadCancelled("Download cancelled; the downloaded part is kept and a new download resumes it.")
    failures = [r for r in results if r is not None]
    if failures:
        raise DownloadError(f"{len(failures)} of {len(results)} files failed: " + " | ".join(failures))


# --- background jobs ------------------------------------------------------------------------------------------------


class DownloadJob:
    """One download running in a background thread; the UI polls `snapshot()` and may `cancel()`."""

    def __init__(
        self, ref: RepoRef, folder: Path, *, gguf_file: str | None, token: str | None, threads: int, retries: int
    ) -> None:
        self.ref, self.folder = ref, folder
        self.plan: DownloadPlan | None = None
        self._gguf_file, self._token, self._threads, self._retries = gguf_file, token, threads, retries
        self._cancel = threading.Event()
        self._tracker = ProgressTracker(ref, folder)
        self._thread = threading.Thread(target=self._run, name=f"download {ref}", daemon=True)
        self._on_done: Callable[[DownloadJob], None] | None = None

    def snapshot(self) -> DownloadProgress:
        return self._tracker.snapshot()

    def cancel(self) -> None:
        """Stop within about a second; downloaded bytes stay in `.corral-partial/` for the next run."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> DownloadProgress:
        self._thread.join(timeout)
        return self.snapshot()

    @property
    def finished(self) -> bool:
        return self.snapshot().state in ("done", "failed", "cancelled")

    def _start(self, on_done: Callable[[DownloadJob], None] | None) -> None:
        self._on_done = on_done
        self._thread.start()

    def _run(self) -> None:
        tracker = self._tracker
        try:
            tracker.set("running", f"Listing the files of {self.ref}…")
            self.plan = choose_files(list_files(self.ref, token=self._token), gguf_file=self._gguf_file)
            run_plan(
                self.plan, self.folder, tracker, self._cancel,
                token=self._token, threads=self._threads, retries=self._retries,
            )  # fmt: skip
            tracker.set("done", f"Done: {self.ref} is in {self.folder}")
        except DownloadCancelled as error:
            tracker.set("cancelled", str(error))
        except CorralError as error:
            tracker.set("failed", str(error))
        except OSError as error:  # disk full, permissions...: the user can act on these
            tracker.set("failed", f"Download of {self.ref} failed: {error}")
        finally:
            if self._on_done is not None:
                self._on_done(self)


class DownloadManager:
    """Starts downloads into `models_dir` and keeps track of them; one job per destination folder at a time.

    `on_done(job)` runs in the download's own thread when a job ends (done, failed or cancelled).
    """

    def __init__(
        self,
        models_dir: Path,
        *,
        threads: int = DEFAULT_THREADS,
        retries: int = DEFAULT_RETRIES,
        on_done: Callable[[DownloadJob], None] | None = None,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.threads, self.retries = threads, retries
        self.on_done = on_done
        self._jobs: list[DownloadJob] = []
        self._lock = threading.Lock()

    def start(self, ref: RepoRef | str, *, gguf_file: str | None = None, token: str | None = None) -> DownloadJob:
        """Start downloading in the background; raises `RepoNameError` at once for a malformed name."""
        ref = parse_repo(ref) if isinstance(ref, str) else ref
        folder = destination(self.models_dir, ref)
        with self._lock:
            if any(job.folder == folder and not job.finished for job in self._jobs):
                raise DownloadError(f"{ref} is already downloading into {folder}.")
            job = DownloadJob(
                ref, folder, gguf_file=gguf_file, token=token or None, threads=self.threads, retries=self.retries
            )
            self._jobs.append(job)
        job._start(self.on_done)
        return job

    def jobs(self) -> list[DownloadJob]:
        with self._lock:
            return list(self._jobs)


# --- command line ---------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m webui.download", description="Download a model from the Hub.")
    parser.add_argument("repo", help=f"model to download: {REPO_FORM}")
    parser.add_argument("--file", help="the GGUF file to download from a repo with several")
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="models folder (default: models)")
    parser.add_argument("--list", action="store_true", help="print the chosen and skipped files, download nothing")
    parser.add_argument("--check", action="store_true", help="verify the downloaded folder, download nothing")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="files downloaded at once")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        ref = parse_repo(args.repo)
        if args.check:
            return _print_check(check(destination(args.models_dir, ref)))
        if args.list:
            return _print_plan(choose_files(list_files(ref), gguf_file=args.file), args.models_dir)
        return _download_cli(ref, args)
    except CorralError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _print_plan(plan: DownloadPlan, models_dir: Path) -> int:
    print(f"{plan.listing.ref} @ {plan.listing.commit[:12]} -> {destination(models_dir, plan.listing.ref)}")
    for item in plan.chosen:
        print(f"  get   {_mb(item.size):>10}  {item.path}")
    for skip in plan.skipped:
        print(f"  skip  {_mb(skip.file.size):>10}  {skip.file.path}  ({skip.reason})")
    if len(plan.gguf_choices) > 1:
        print(f"GGUF files (choose with --file): {', '.join(plan.gguf_choices)}")
    print(f"total {_mb(plan.total_bytes)} in {len(plan.chosen)} files")
    return 0


def _print_check(report: CheckReport) -> int:
    print(f"{report.folder} ({report.source} @ {report.commit[:12]})")
    for item in report.files:
        print(f"  {item.status:7} {item.name}  {item.detail}")
    print("all files OK" if report.ok else "some files are missing or damaged: download again to repair")
    return 0 if report.ok else 1


def _download_cli(ref: RepoRef, args: argparse.Namespace) -> int:
    manager = DownloadManager(args.models_dir, threads=args.threads)
    job = manager.start(ref, gguf_file=args.file, token=os.environ.get("HF_TOKEN"))
    reported: set[str] = set()
    try:
        while not job.finished:
            _print_progress(job.wait(0.5), reported)
    except KeyboardInterrupt:
        job.cancel()
        job.wait()
    final = job.snapshot()
    _print_progress(final, reported)
    if final.state == "done":
        print(final.message)
        return 0
    print(f"error: {final.message}", file=sys.stderr)
    return 130 if final.state == "cancelled" else 1


def _print_progress(snap: DownloadProgress, reported: set[str]) -> None:
    """On stderr: one line per finished file, and the running totals (rewritten in place on a terminal)."""
    tty = sys.stderr.isatty()
    for item in snap.files:
        if item.state in ("done", "present", "failed") and item.name not in reported:
            reported.add(item.name)
            status = {"done": "got", "present": "had"}.get(item.state, "FAILED")
            print(f"{chr(13) if tty else ''}  {status:6} {_mb(item.total):>10}  {item.name}", file=sys.stderr)
    if snap.state != "running" or not snap.total_bytes:
        return
    eta = f"ETA {snap.eta_s:.0f}s" if snap.eta_s is not None else "ETA ?"
    finished = sum(f.state in ("done", "present") for f in snap.files)
    line = (
        f"{snap.fraction:6.1%}  {_mb(snap.done_bytes)} / {_mb(snap.total_bytes)}  {snap.speed_bps / 1e6:.1f} MB/s  "
        f"{eta}  ({finished}/{len(snap.files)} files)"
    )
    print(f"\r{line}" if tty else line, end="" if tty else "\n", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
