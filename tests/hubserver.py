"""A Hugging Face Hub stand-in for tests and benches: serves model repos with branches from a folder on disk.

Layout on disk: `root/<owner>/<repo>/<branch>/<files...>`. The server speaks the calls `huggingface_hub` 2.4 makes
(paths and headers read from its `hf_api.py`, `file_download.py` and `utils/_http.py`):

- `GET /api/models/{repo}[/revision/{rev}]` (`?blobs=true` adds sizes, blob ids and LFS sha256 to `siblings`)
- `GET /api/models/{repo}/tree/{rev}[/{path}]` (paginated with a `Link: <...>; rel="next"` header)
- `GET /api/models/{repo}/refs`, `POST /api/models/{repo}/paths-info/{rev}`
- `HEAD`/`GET /{repo}/resolve/{rev}/{file}`: `X-Repo-Commit` and `ETag` always; LFS files answer with a 302 to a
  second port (a "CDN": another origin, so the client keeps the 302's `X-Linked-Etag` / `X-Linked-Size` metadata
  and drops the Authorization header, as with the real Hub), which serves the bytes with HTTP `Range` support.
- Errors carry the Hub's `X-Error-Code` header (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`, `GatedRepo`).

No Xet headers are ever sent, so the client downloads over plain HTTP. Fault knobs (`HubServer.faults`): cut the
connection after N bytes of a file, stall (send nothing for a while) after N bytes, answer HTTP errors (429 with
`Retry-After`, 503) before serving, serve corrupted bytes, throttle; `HubServer.requests` counts GETs per file. A
hostile Hub (`HubState.hostile`): listing fields of a file replaced (a path as its sha256 or blobId, no hash at all).
`hub_root` / `hub_server` / `hub` are the pytest fixtures (import `hub_root_fixture`, `hub_server_fixture` and
`hub_fixture` into a test module to use them).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")
LFS_MIN_SIZE = 10 * 1024 * 1024
SEND_CHUNK = 1024 * 1024


# --- repository model -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedFile:
    """One file of a branch as the Hub describes it."""

    path: str
    size: int
    blob_id: str  # git blob sha1 (for LFS files: of the pointer, as on the Hub)
    sha256: str | None  # LFS files only
    disk: Path | None  # None for names injected by a test (they have no bytes)

    def tree_entry(self) -> dict:
        entry: dict = {"type": "file", "oid": self.blob_id, "size": self.size, "path": self.path}
        if self.sha256 is not None:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": 134}
        return entry

    def sibling(self, blobs: bool) -> dict:
        entry: dict = {"rfilename": self.path}
        if blobs:
            entry.update(size=self.size, blobId=self.blob_id)
            if self.sha256 is not None:
                entry["lfs"] = {"sha256": self.sha256, "size": self.size, "pointerSize": 134}
        return entry


@dataclass
class Fault:
    """What to do wrong when serving one file: cut after `cut_after` bytes (`cuts` times), stall `stall_s` seconds
    after `stall_after` bytes then drop the connection (`stalls` times), answer `statuses` (one per GET, in order,
    with `Retry-After: retry_after` when set) before serving, corrupt, throttle."""

    cut_after: int | None = None
    cuts: int = 1
    corrupt: bool = False
    bytes_per_s: float | None = None
    stall_after: int | None = None
    stall_s: float = 0.0
    stalls: int = 1
    statuses: list[int] = field(default_factory=list)
    retry_after: str | None = None


@dataclass
class HubState:
    """Everything the handlers share: repos on disk, hash cache, faults, gating, counters."""

    root: Path
    page_size: int = 1000
    faults: dict[tuple[str, str], Fault] = field(default_factory=dict)
    gated: dict[str, str] = field(default_factory=dict)  # repo id -> the token that has access
    injected: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # repo id -> extra (name, size)
    # repo id -> file -> sibling fields replaced in model info (`lfs` merged key by key; a None value removes the key)
    hostile: dict[str, dict[str, dict]] = field(default_factory=dict)
    requests: Counter = field(default_factory=Counter)  # (repo id, file) -> number of GETs of its bytes
    ranges: list[tuple[str, str, int]] = field(default_factory=list)  # (repo id, file, first byte) of each GET
    refused: list[tuple[str, str, int, float]] = field(default_factory=list)  # (repo, file, status, monotonic time)
    cdn_url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    _hashes: dict[tuple[int, int, int, int], tuple[str, str]] = field(default_factory=dict)

    def repo_dir(self, repo_id: str) -> Path | None:
        folder = self.root / repo_id
        return folder if repo_id.count("/") == 1 and folder.is_dir() else None

    def branches(self, repo_id: str) -> dict[str, Path]:
        folder = self.root / repo_id
        # Branch names may hold "/" (e.g. "feature/x"): stored on disk with "%2F", as quote(safe="") spells it.
        return {unquote(p.name): p for p in sorted(folder.iterdir()) if p.is_dir()}

    def files(self, repo_id: str, branch: str) -> list[ServedFile]:
        folder = self.branches(repo_id)[branch]
        found = [self._served(folder, p) for p in sorted(folder.rglob("*")) if p.is_file()]
        extra = [ServedFile(name, size, _git_blob_id(b""), None, None) for name, size in self.injected.get(repo_id, [])]
        return found + extra

    def commit(self, repo_id: str, branch: str) -> str:
        digest = hashlib.sha1(f"{repo_id}@{branch}".encode())
        for item in self.files(repo_id, branch):
            digest.update(f"{item.path}\0{item.blob_id}\0{item.sha256}\n".encode())
        return digest.hexdigest()

    def resolve(self, repo_id: str, revision: str) -> str | None:
        """Branch name for a branch name or a commit sha; None if neither."""
        branches = self.branches(repo_id)
        if revision in branches:
            return revision
        return next((b for b in branches if self.commit(repo_id, b) == revision), None)

    def _served(self, folder: Path, path: Path) -> ServedFile:
        stat = path.stat()
        key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with self.lock:
            cached = self._hashes.get(key)
        if cached is None:
            cached = _hash_file(path)
            with self.lock:
                self._hashes[key] = cached
        sha1, sha256 = cached
        name = path.relative_to(folder).as_posix()
        if path.suffix in LFS_SUFFIXES or stat.st_size >= LFS_MIN_SIZE:
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {stat.st_size}\n"
            return ServedFile(name, stat.st_size, _git_blob_id(pointer.encode()), sha256, path)
        return ServedFile(name, stat.st_size, sha1, None, path)


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _hash_file(path: Path) -> tuple[str, str]:
    """(git blob sha1, sha256) of a file's bytes."""
    size = path.stat().st_size
    sha1 = hashlib.sha1(b"blob %d\0" % size)
    sha256 = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(SEND_CHUNK * 8):
            sha1.update(chunk)
            sha256.update(chunk)
    return sha1.hexdigest(), sha256.hexdigest()


# --- HTTP -------------------------------------------------------------------------------------------------------------


class _HubError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}
        super().__init__(message)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState  # set on the subclass made per server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep test output quiet
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        query = parse_qs(url.query)
        try:
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                self._api(method, "/".join(parts[2:4]), parts[4:], query)
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._resolve(method, "/".join(parts[:2]), parts[3], "/".join(parts[4:]))
            elif parts[0] == "cdn" and len(parts) >= 5:
                self._send_file(method, "/".join(parts[1:3]), parts[3], "/".join(parts[4:]))
            else:
                raise _HubError(404, "", "Not Found")
        except _HubError as error:
            self._error(error)

    # api ---------------------------------------------------------------------------------------------------------

    def _api(self, method: str, repo_id: str, rest: list[str], query: dict[str, list[str]]) -> None:
        self._check_repo(repo_id, gated_too=False)
        if rest == ["refs"]:
            return self._json(self._refs(repo_id))
        if not rest:
            rest = ["revision", "main"]
        if len(rest) < 2 or rest[0] not in ("revision", "tree", "paths-info"):
            raise _HubError(404, "", "Not Found")
        branch = self._branch(repo_id, rest[1])
        if rest[0] == "revision":
            return self._json(self._model_info(repo_id, branch, query.get("blobs", [""])[0].lower() == "true"))
        if rest[0] == "tree":
            return self._tree(repo_id, branch, "/".join(rest[2:]), query)
        form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
        wanted = set(form.get("paths", []))
        return self._json([f.tree_entry() for f in self.state.files(repo_id, branch) if f.path in wanted])

    def _model_info(self, repo_id: str, branch: str, blobs: bool) -> dict:
        gated = "manual" if repo_id in self.state.gated else False
        overrides = self.state.hostile.get(repo_id, {})
        siblings = [_override(f.sibling(blobs), overrides.get(f.path)) for f in self.state.files(repo_id, branch)]
        sha = self.state.commit(repo_id, branch)
        return {"id": repo_id, "modelId": repo_id, "sha": sha, "private": False, "gated": gated, "siblings": siblings}

    def _refs(self, repo_id: str) -> dict:
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": self.state.commit(repo_id, name)}
            for name in self.state.branches(repo_id)
        ]
        return {"branches": branches, "converts": [], "tags": []}

    def _tree(self, repo_id: str, branch: str, under: str, query: dict[str, list[str]]) -> None:
        recursive = query.get("recursive", [""])[0].lower() == "true"
        entries = _tree_entries(self.state.files(repo_id, branch), under, recursive)
        start = int(query.get("cursor", ["0"])[0])
        page = entries[start : start + self.state.page_size]
        headers = {}
        if start + self.state.page_size < len(entries):
            base = self.path.split("?")[0]
            link = f"{base}?recursive={str(recursive).lower()}&cursor={start + self.state.page_size}"
            headers["Link"] = f'<http://{self.headers["Host"]}{link}>; rel="next"'
        self._json(page, headers)

    # resolve / cdn ---------------------------------------------------------------------------------------------------

    def _resolve(self, method: str, repo_id: str, revision: str, path: str) -> None:
        self._check_repo(repo_id, gated_too=True)
        branch = self._branch(repo_id, revision)
        served = self._served(repo_id, branch, path)
        headers = {"X-Repo-Commit": self.state.commit(repo_id, branch), "Accept-Ranges": "bytes"}
        if served.sha256 is None:
            headers["ETag"] = f'"{served.blob_id}"'
            return self._send_file(method, repo_id, branch, path, headers)
        cdn = f"{self.state.cdn_url}/cdn/{repo_id}/{quote(branch, safe='')}/{quote(path)}?sha256={served.sha256}"
        headers.update(
            {
                "ETag": f'"{served.blob_id}"',
                "X-Linked-Etag": f'"{served.sha256}"',
                "X-Linked-Size": str(served.size),
                "Location": cdn,
                "Content-Length": "0",
            }
        )
        self._head(302, headers)

    def _send_file(self, method: str, repo_id: str, branch: str, path: str, headers: dict | None = None) -> None:
        served = self._served(repo_id, branch, path)
        if method == "GET":
            self._refuse_if_told(repo_id, path)
        first, last = _byte_range(self.headers.get("Range"), served.size)
        headers = dict(headers or {}, **{"Content-Length": str(last - first + 1), "Accept-Ranges": "bytes"})
        headers.setdefault("ETag", f'"{served.sha256 or served.blob_id}"')
        if self.headers.get("Range"):
            headers["Content-Range"] = f"bytes {first}-{last}/{served.size}"
        self._head(206 if self.headers.get("Range") else 200, headers)
        if method == "HEAD":
            return
        with self.state.lock:
            self.state.requests[(repo_id, path)] += 1
            self.state.ranges.append((repo_id, path, first))
        self._stream(served, first, last + 1, self._take_fault(repo_id, path))

    def _stream(self, served: ServedFile, start: int, end: int, fault: Fault | None) -> None:
        assert served.disk is not None
        with open(served.disk, "rb") as handle:
            if fault is None:
                self.connection.sendfile(handle, start, end - start)
                return
            handle.seek(start)
            for offset, chunk in _chunks(handle, start, end):
                if fault.cut_after is not None and offset + len(chunk) > fault.cut_after:
                    self.wfile.write(chunk[: max(fault.cut_after - offset, 0)])
                    self.close_connection = True
                    return
                if fault.stall_after is not None and offset + len(chunk) > fault.stall_after:
                    self.wfile.write(chunk[: max(fault.stall_after - offset, 0)])
                    self.wfile.flush()
                    time.sleep(fault.stall_s)  # the connection stays open and silent
                    self.close_connection = True
                    return
                if fault.corrupt:
                    chunk = bytes(b ^ 0x5A for b in chunk[:16]) + chunk[16:]
                self.wfile.write(chunk)
                if fault.bytes_per_s:
                    time.sleep(len(chunk) / fault.bytes_per_s)

    def _take_fault(self, repo_id: str, path: str) -> Fault | None:
        """The fault for this GET; cuts and stalls are used up (`cuts`, `stalls` times), corruption and throttling
        stay."""
        with self.state.lock:
            fault = self.state.faults.get((repo_id, path))
            if fault is None:
                return None
            this = Fault(corrupt=fault.corrupt, bytes_per_s=fault.bytes_per_s)
            if fault.cut_after is not None and fault.cuts > 0:
                fault.cuts -= 1
                this.cut_after = fault.cut_after
            if fault.stall_after is not None and fault.stalls > 0:
                fault.stalls -= 1
                this.stall_after, this.stall_s = fault.stall_after, fault.stall_s
            return this

    def _refuse_if_told(self, repo_id: str, path: str) -> None:
        """Answer the next status of the file's `Fault.statuses` instead of its bytes (used up one per GET)."""
        with self.state.lock:
            fault = self.state.faults.get((repo_id, path))
            if fault is None or not fault.statuses:
                return
            status = fault.statuses.pop(0)
            self.state.refused.append((repo_id, path, status, time.monotonic()))
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        raise _HubError(status, "", f"HTTP {status} (a test fault)", headers)

    # helpers ---------------------------------------------------------------------------------------------------------

    def _check_repo(self, repo_id: str, *, gated_too: bool) -> None:
        if self.state.repo_dir(repo_id) is None:
            raise _HubError(404, "RepoNotFound", "Repository not found")
        token = self.state.gated.get(repo_id)
        if gated_too and token is not None:
            auth = self.headers.get("Authorization")
            if auth != f"Bearer {token}":
                status = 401 if auth is None else 403
                message = f"Access to model {repo_id} is restricted. You must have access to it and be authenticated."
                raise _HubError(status, "GatedRepo", message)

    def _branch(self, repo_id: str, revision: str) -> str:
        branch = self.state.resolve(repo_id, revision)
        if branch is None:
            raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return branch

    def _served(self, repo_id: str, branch: str, path: str) -> ServedFile:
        served = next((f for f in self.state.files(repo_id, branch) if f.path == path and f.disk), None)
        if served is None:
            raise _HubError(404, "EntryNotFound", f"Entry not found: {path}")
        return served

    def _json(self, data: object, headers: dict | None = None) -> None:
        body = json.dumps(data).encode()
        self._head(200, dict(headers or {}, **{"Content-Type": "application/json", "Content-Length": str(len(body))}))
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, error: _HubError) -> None:
        body = json.dumps({"error": error.message}).encode()
        headers = {
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            "X-Error-Message": error.message,
            **error.headers,
        }
        if error.code:
            headers["X-Error-Code"] = error.code
        self._head(error.status, headers)
        if self.command != "HEAD":
            self.wfile.write(body)

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()


def _override(entry: dict, fields: dict | None) -> dict:
    """A sibling with a hostile Hub's fields: replaced, `lfs` merged; a None value removes the key."""
    result = dict(entry)
    for key, value in (fields or {}).items():
        if key == "lfs" and isinstance(value, dict) and isinstance(result.get("lfs"), dict):
            value = {**result["lfs"], **value}
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def _tree_entries(files: list[ServedFile], under: str, recursive: bool) -> list[dict]:
    prefix = f"{under.strip('/')}/" if under.strip("/") else ""
    entries: dict[str, dict] = {}
    for item in files:
        if not item.path.startswith(prefix):
            continue
        rest = item.path[len(prefix) :].split("/")
        for depth in range(1, len(rest)):  # folders on the way
            folder = prefix + "/".join(rest[:depth])
            entries.setdefault(
                folder, {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "path": folder}
            )
            if not recursive:
                break
        if recursive or len(rest) == 1:
            entries[item.path] = item.tree_entry()
    return list(entries.values())


def _byte_range(header: str | None, size: int) -> tuple[int, int]:
    """(first, last) byte of a `Range: bytes=a-[b]` request, whole file without one."""
    if not header:
        return 0, size - 1
    first_text, _, last_text = header.removeprefix("bytes=").partition("-")
    first = int(first_text) if first_text else max(size - int(last_text), 0)
    last = min(int(last_text), size - 1) if last_text and first_text else size - 1
    if first >= size:
        raise _HubError(416, "", "Range Not Satisfiable")
    return first, last


def _chunks(handle, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    offset = start
    while offset < end and (chunk := handle.read(min(SEND_CHUNK // 16, end - offset))):
        yield offset, chunk
        offset += len(chunk)


class HubServer:
    """Two threaded HTTP servers on 127.0.0.1 (the Hub, and its "CDN" on a second port) over one `HubState`."""

    def __init__(self, root: Path) -> None:
        self.state = HubState(root=root)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._servers = [ThreadingHTTPServer(("127.0.0.1", 0), handler) for _ in range(2)]
        for server in self._servers:
            server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._servers[0].server_port}"
        self.state.cdn_url = f"http://127.0.0.1:{self._servers[1].server_port}"
        self._threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in self._servers]

    def start(self) -> HubServer:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def reset(self) -> None:
        """Clear faults, gating, injected names and counters (between tests)."""
        with self.state.lock:
            self.state.faults.clear()
            self.state.gated.clear()
            self.state.injected.clear()
            self.state.hostile.clear()
            self.state.requests.clear()
            self.state.ranges.clear()
            self.state.refused.clear()
            self.state.page_size = 1000

    def branch_dir(self, repo_id: str, branch: str = "main") -> Path:
        folder = self.state.root / repo_id / quote(branch, safe="")
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def gets(self, repo_id: str, path: str) -> int:
        """How many times the bytes of a file were requested (GET on resolve or CDN)."""
        with self.state.lock:
            return self.state.requests[(repo_id, path)]

    def sha256(self, repo_id: str, branch: str, path: str) -> str:
        served = next(f for f in self.state.files(repo_id, branch) if f.path == path)
        return served.sha256 or _hash_file(served.disk)[1]  # type: ignore[arg-type]


# --- fixture repos built from the real SmolLM2 files ---------------------------------------------------------------

TRANSFORMERS_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_REPO = "corral-test/SmolLM2-135M-Instruct-GGUF"
GPTQ_REPO = "corral-test/SmolLM2-135M-Instruct-GPTQ"
GPTQ_BRANCH = "gptq-4bit-32g-actorder_True"
QUANTS_REPO = "corral-test/tiny-quants-GGUF"  # synthetic: three small fake GGUF quants, for choosing among them
QUANT_FILES = {"tiny.Q2_K.gguf": 1_000_000, "tiny.Q4_K_M.gguf": 1_500_000, "tiny.Q8_0.gguf": 2_500_000}
SMALL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def build_repos(root: Path, smollm2_hf: Path, smollm2_gguf: Path) -> None:
    """The fixture repos: Transformers (main), multi-GGUF, GPTQ-style branches, and tiny synthetic quants."""
    hf_main = root / TRANSFORMERS_REPO / "main"
    for item in smollm2_hf.iterdir():
        _link(item, hf_main / item.name)
    (hf_main / "README.md").write_text("# SmolLM2-135M-Instruct\n")
    (hf_main / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")

    gguf = root / GGUF_REPO / "main"
    _link(smollm2_gguf, gguf / smollm2_gguf.name)
    _link(smollm2_gguf, gguf / "SmolLM2-135M-Instruct.Q4_K_M.gguf")
    with open(smollm2_gguf, "rb") as src, open(gguf / "SmolLM2-135M-Instruct.Q8_0.gguf", "wb") as dst:
        dst.write(src.read(24 * 1024 * 1024))  # a different size is all the download tests need
    (gguf / "README.md").write_text("# GGUF quants of SmolLM2-135M-Instruct\n")
    (gguf / ".gitattributes").write_text("*.gguf filter=lfs diff=lfs merge=lfs -text\n")

    _build_gptq_repo(root / GPTQ_REPO, smollm2_hf)
    _build_quants_repo(root / QUANTS_REPO / "main")


def _build_quants_repo(folder: Path) -> None:
    """Files named like quants, GGUF magic and filler bytes: downloads only need names, sizes and hashes."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, size in QUANT_FILES.items():
        filler = name.encode() * (size // len(name) + 1)
        (folder / name).write_bytes((b"GGUF" + filler)[:size])
    (folder / "README.md").write_text("# Tiny fake GGUF quants\n")


def _build_gptq_repo(repo: Path, smollm2_hf: Path) -> None:
    """`main` and `gptq-4bit-32g-actorder_True`: real configs and tokenizer, weights = layer 0 of SmolLM2."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(smollm2_hf / "model.safetensors", framework="pt") as weights:
        layer0 = {k: weights.get_tensor(k) for k in weights.keys() if k.startswith("model.layers.0.")}  # noqa: SIM118
    config = json.loads((smollm2_hf / "config.json").read_text())
    for branch, group, act_order in (("main", 128, False), (GPTQ_BRANCH, 32, True)):
        folder = repo / quote(branch, safe="")
        folder.mkdir(parents=True, exist_ok=True)
        for name in SMALL_FILES[1:]:
            _link(smollm2_hf / name, folder / name)
        quant = {"bits": 4, "group_size": group, "desc_act": act_order, "sym": True, "quant_method": "gptq"}
        (folder / "config.json").write_text(json.dumps(dict(config, quantization_config=quant), indent=2))
        (folder / "quantize_config.json").write_text(json.dumps(quant, indent=2))
        save_file(layer0, folder / "model.safetensors", metadata={"format": "pt", "branch": branch})


@pytest.fixture(scope="session", name="hub_root")
def hub_root_fixture(tmp_path_factory: pytest.TempPathFactory, smollm2_hf: Path, smollm2_gguf: Path) -> Path:
    root = tmp_path_factory.mktemp("hub")
    build_repos(root, smollm2_hf, smollm2_gguf)
    return root


@pytest.fixture(scope="session", name="hub_server")
def hub_server_fixture(hub_root: Path) -> Iterator[HubServer]:
    server = HubServer(hub_root).start()
    yield server
    server.stop()


@pytest.fixture(name="hub")
def hub_fixture(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch) -> HubServer:
    """The session's hub server, reset, with HF_ENDPOINT pointing at it and no token in the environment."""
    hub_server.reset()
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    return hub_server
