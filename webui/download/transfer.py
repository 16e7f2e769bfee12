"""Getting a plan's files onto disk intact: several at once, resumable, cancellable, every file hashed as it streams.

Bytes go to `.corral-partial/<hash>.part` and get their final name only once verified, so a model folder never
holds a half file. A cut connection is retried from where it stopped (HTTP Range); a failed or cancelled run keeps
its `.part` files for the next one. HTTP 429 and 5xx answers are retried with backoff, honouring `Retry-After`
(huggingface_hub's `http_stream_backoff`), and a transfer that receives no bytes for `stall_s` seconds is cut and
resumed like a dropped connection. Why not `hf_hub_download(local_dir=...)`: in huggingface_hub 2.4 it streams into a
process-unique temporary name and deletes it on any failure (huggingface_hub#4228), so nothing is left to resume,
and its progress hook only sees 10 MB chunks; we use the client's pieces (`hf_hub_url`, `build_hf_headers`,
`get_session`, `hf_raise_for_status`) instead.
"""

from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import filelock
import httpx2
from huggingface_hub import constants, hf_hub_url
from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_stream_backoff

from loaders.errors import (
    CorralError,
    DiskSpaceError,
    DownloadCancelled,
    DownloadError,
    IntegrityError,
    UnsafePathError,
)
from loaders.units import format_bytes
from webui.download.choose import DownloadPlan
from webui.download.hub import RemoteFile, hub_errors_as_corral, safe_name
from webui.download.progress import ProgressTracker
from webui.download.record import SourceRecord
from webui.download.verify import expected_digest, hash_into, is_complete, new_hasher

PARTIAL_DIR = ".corral-partial"  # resumable `.part` files, named by content hash, never under a final name
DISK_MARGIN = 64 * 1024 * 1024
DEFAULT_THREADS = 4
DEFAULT_RETRIES = 3
DEFAULT_STALL_S = 30.0  # no byte for this long: the transfer is cut and resumed
_TRANSIENT = (httpx2.TransportError,)  # a read timeout (a stall) is one of these
_RETRY_STATUS = (429, 500, 502, 503, 504)
_BACKOFF_S = 1.0  # first wait after a 429/5xx without Retry-After; doubles up to 8 s


@dataclass(frozen=True)
class _Transfer:
    """What every worker of one download shares."""

    plan: DownloadPlan
    folder: Path
    record: SourceRecord
    record_lock: threading.Lock
    tracker: ProgressTracker
    cancel: threading.Event
    headers: dict[str, str]
    retries: int
    stall_s: float = DEFAULT_STALL_S

    def partial(self, item: RemoteFile) -> Path:
        """`.corral-partial/<hash>.part`; the hash is hex (checked by `RemoteFile`), checked again as a path here."""
        partial_dir = self.folder / PARTIAL_DIR
        path = partial_dir / f"{expected_digest(item)[1]}.part"
        if path.resolve().parent != partial_dir.resolve():
            raise UnsafePathError(f"{item.path}: its partial file would be written outside {partial_dir}; refused.")
        return path

    def save_record(self, item: RemoteFile, path: Path) -> None:
        with self.record_lock:
            self.record.verified(item, path.stat())
            self.record.write(self.folder)


def run_plan(
    plan: DownloadPlan,
    folder: Path,
    tracker: ProgressTracker,
    cancel: threading.Event,
    *,
    token: str | None = None,
    threads: int = DEFAULT_THREADS,
    retries: int = DEFAULT_RETRIES,
    stall_s: float = DEFAULT_STALL_S,
) -> None:
    """Download `plan` into `folder`; files already complete and correct are not fetched again.

    `retries`: tries after a cut, stalled or refused (429/5xx) transfer; `stall_s`: seconds without a byte that
    count as a stall."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PARTIAL_DIR).mkdir(exist_ok=True)
    lock = filelock.FileLock(folder / PARTIAL_DIR / "download.lock", timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout as error:
        raise DownloadError(f"Another download into {folder} is running; wait for it or cancel it.") from error
    try:
        headers = build_hf_headers(token=token)
        record = _updated_record(plan, folder)
        job = _Transfer(plan, folder, record, threading.Lock(), tracker, cancel, headers, retries, stall_s)
        _run_locked(job, threads=threads)
    finally:
        if not any((folder / PARTIAL_DIR).glob("*.part")):  # nothing left to resume: leave a clean model folder
            shutil.rmtree(folder / PARTIAL_DIR, ignore_errors=True)
        lock.release()


def _run_locked(job: _Transfer, *, threads: int) -> None:
    plan, folder, tracker = job.plan, job.folder, job.tracker
    tracker.plan(plan.chosen)
    tracker.set("verifying", "Checking the files already on disk against the Hub's hashes…")
    todo = [f for f in plan.chosen if not _mark_present(folder, f, job.record, tracker, job.cancel)]
    job.record.write(folder)
    _check_disk(folder, sum(f.size - _size(job.partial(f)) for f in todo))
    tracker.set("running", f"Downloading {len(todo)} of {len(plan.chosen)} files…")
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="corral-download") as pool:
        results = list(pool.map(lambda item: _fetch_reporting(item, job), todo))
    _finish(job.cancel, results)


def _updated_record(plan: DownloadPlan, folder: Path) -> SourceRecord:
    """The folder's record for this download: same repo and branch kept, new commit, the plan's files, its GGUF."""
    listing = plan.listing
    record = SourceRecord.read(folder)
    if record is None or not record.is_of(listing.ref):
        record = SourceRecord(listing.ref.repo_id, listing.ref.branch, listing.commit, listing.endpoint)
    record.commit, record.endpoint = listing.commit, listing.endpoint
    if plan.gguf is not None:  # the quant the folder now stands for; loaders and later downloads keep to it
        record.gguf_file = plan.gguf.name
    for item in plan.chosen:
        record.expect(item)
    return record


def _mark_present(
    folder: Path, item: RemoteFile, record: SourceRecord, tracker: ProgressTracker, cancel: threading.Event
) -> bool:
    if not is_complete(folder, item, record, cancel):
        return False
    tracker.file(item.path, state="present", done=item.size)
    return True


def _check_disk(folder: Path, needed: int) -> None:
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed + DISK_MARGIN > free:
        raise DiskSpaceError(
            f"Not enough disk space in {probe}: the download needs {format_bytes(needed)}, {format_bytes(free)} free. "
            "Free some space or choose a smaller file."
        )


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
        return str(error) if item.path in str(error) else f"{item.path}: {error}"  # say which file
    return None


def _finish(cancel: threading.Event, results: list[str | None]) -> None:
    if cancel.is_set():
        raise DownloadCancelled("Download cancelled; the downloaded part is kept and a new download resumes it.")
    failures = [r for r in results if r is not None]
    if failures:
        raise DownloadError(f"{len(failures)} of {len(results)} files failed: " + " | ".join(failures))


def _fetch(item: RemoteFile, job: _Transfer) -> None:
    """Download one file to its `.part`, verify it, then give it its final name."""
    if job.cancel.is_set():
        raise DownloadCancelled("Download cancelled.")
    expected = expected_digest(item)  # no hash: refused before a byte is fetched
    part = job.partial(item)
    job.tracker.file(item.path, state="downloading", done=_size(part))
    digest = _stream_with_retries(item, part, job)
    if digest != expected[1]:
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
                what = "stalled" if isinstance(error, httpx2.TimeoutException) else "connection lost"
                raise DownloadError(
                    f"{item.path}: {what} ({type(error).__name__}) after {attempt + 1} tries; "
                    f"{format_bytes(_size(part))} kept, run the download again to resume."
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
    hasher = hash_into(part, new_hasher(item), job.cancel) if offset else new_hasher(item)
    if offset == item.size:
        return hasher.hexdigest()
    headers = dict(job.headers, Range=f"bytes={offset}-") if offset else job.headers
    with _open_stream(url, headers, job) as response:
        hf_raise_for_status(response)
        if offset and response.status_code == 200:  # the server ignored Range: start over
            offset, hasher = 0, new_hasher(item)
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


def _open_stream(url: str, headers: dict[str, str], job: _Transfer):  # noqa: ANN202 - a context manager of a response
    """GET `url` streaming; 429/5xx answers are retried by the client's own backoff, which honours `Retry-After`.

    Exceptions are left to `_stream_with_retries` (retry_on_exceptions=()): it resumes from the bytes kept, where the
    helper would start the request over. The read timeout is the stall limit: no byte for `stall_s` raises."""
    timeout = httpx2.Timeout(constants.HF_HUB_DOWNLOAD_TIMEOUT, read=job.stall_s)
    return http_stream_backoff(
        "GET", url, headers=headers, follow_redirects=True, timeout=timeout,
        max_retries=job.retries, base_wait_time=_BACKOFF_S, retry_on_exceptions=(), retry_on_status_codes=_RETRY_STATUS,
    )  # fmt: skip
