"""Downloads in the background: `plan_download` (list a branch and choose its files for a folder), `DownloadJob`
(one download in its own thread, polled and cancelled by the UI and the CLI) and `DownloadManager` (starts jobs
into the models folder, one per destination folder at a time, and keeps the list the Model tab shows: it lives as
long as the server, so a reloaded page sees every job).

Each job has an id, and knows its GGUF pick: the file asked for, then the plan's own choice once listed, so the
job list shows the same quant the file table showed and the loader will load. `resume(id)` starts a finished
(cancelled or failed) job again in its place, with the same pick: the bytes kept in `.corral-partial/` are reused.
"""

from __future__ import annotations

import itertools
import shutil
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from loaders.errors import CorralError, DownloadCancelled, DownloadError
from webui.download.choose import DownloadPlan, choose_files
from webui.download.hub import RepoRef, list_files, parse_repo
from webui.download.progress import DownloadProgress, ProgressTracker
from webui.download.record import destination, remembered_gguf
from webui.download.transfer import DEFAULT_RETRIES, DEFAULT_STALL_S, DEFAULT_THREADS, run_plan


def plan_download(
    ref: RepoRef, folder: Path, *, gguf_file: str | None = None, token: str | None = None
) -> DownloadPlan:
    """What a download of `ref` into `folder` would fetch: with no `gguf_file`, the GGUF already downloaded there."""
    return choose_files(list_files(ref, token=token), gguf_file=gguf_file, remembered=remembered_gguf(folder, ref))


def gguf_lora_downloaded(plan: DownloadPlan, folder: Path) -> bool:
    """The GGUF just downloaded into `folder` is a LoRA adapter (its header says `general.type: adapter`)."""
    from loaders.files.adapter import is_gguf_lora
    from loaders.files.gguf_header import read_gguf_header

    if plan.gguf is None or not (folder / plan.gguf.name).is_file():
        return False
    try:
        return is_gguf_lora(read_gguf_header(folder / plan.gguf.name))
    except CorralError:  # not a readable GGUF: the loaders will say what it is
        return False


class DownloadJob:
    """One download running in a background thread; the UI polls `snapshot()` and may `cancel()`."""

    def __init__(
        self,
        ref: RepoRef,
        folder: Path,
        *,
        gguf_file: str | None,
        token: str | None,
        threads: int,
        retries: int,
        stall_s: float = DEFAULT_STALL_S,
        job_id: str = "job",
        loras_dir: Path | None = None,
    ) -> None:
        self.id, self.ref, self.folder = job_id, ref, folder
        self.target = folder  # where the files go: `folder`, or the loras folder once the plan says "adapter"
        self._loras_dir = loras_dir
        self.plan: DownloadPlan | None = None
        self._gguf_file, self._token, self._threads, self._retries = gguf_file, token, threads, retries
        self._stall_s = stall_s
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
        return self.snapshot().finished

    @property
    def gguf_pick(self) -> str | None:
        """The GGUF file this job fetches: the plan's choice once listed, else the one asked for (None: no GGUF)."""
        plan = self.plan
        if plan is not None:
            return plan.gguf.name if plan.gguf is not None else None
        return self._gguf_file

    @property
    def token(self) -> str | None:
        return self._token

    def _start(self, on_done: Callable[[DownloadJob], None] | None) -> None:
        self._on_done = on_done
        self._thread.start()

    def _to_loras_if_adapter(self) -> None:
        """A GGUF that turns out (by its header) to be a LoRA adapter moves from the models to the loras folder."""
        if self.plan is None or self.plan.kind != "model" or self._loras_dir is None:
            return
        if not gguf_lora_downloaded(self.plan, self.target):
            return
        destination = Path(self._loras_dir) / self.target.name
        if destination.exists():
            raise DownloadError(f"{self.ref} is a LoRA adapter, but {destination} already exists; it stays in "
                                f"{self.target}: move it to the loras folder yourself.")  # fmt: skip
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(self.target, destination)
        self.plan, self.target = replace(self.plan, kind="adapter"), destination

    def _run(self) -> None:
        tracker = self._tracker
        try:
            tracker.set("running", f"Listing the files of {self.ref}…")
            self.plan = plan_download(self.ref, self.folder, gguf_file=self._gguf_file, token=self._token)
            if self.plan.kind == "adapter" and self._loras_dir is not None:
                self.target = Path(self._loras_dir) / self.folder.name
            run_plan(
                self.plan, self.target, tracker, self._cancel,
                token=self._token, threads=self._threads, retries=self._retries, stall_s=self._stall_s,
            )  # fmt: skip
            self._to_loras_if_adapter()
            what = "the LoRA adapter " if self.plan.kind == "adapter" else ""
            tracker.set("done", f"Done: {what}{self.ref} is in {self.target}")
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

    `on_done(job)` runs in the download's own thread when a job ends (done, failed or cancelled); `stall_s`: seconds
    without a byte after which a transfer is cut and resumed.
    """

    def __init__(
        self,
        models_dir: Path,
        *,
        threads: int = DEFAULT_THREADS,
        retries: int = DEFAULT_RETRIES,
        stall_s: float = DEFAULT_STALL_S,
        on_done: Callable[[DownloadJob], None] | None = None,
        loras_dir: Path | None = None,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.loras_dir = Path(loras_dir) if loras_dir is not None else None  # adapter repos go here
        self.threads, self.retries, self.stall_s = threads, retries, stall_s
        self.on_done = on_done
        self._jobs: list[DownloadJob] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def start(self, ref: RepoRef | str, *, gguf_file: str | None = None, token: str | None = None) -> DownloadJob:
        """Start downloading in the background; raises `RepoNameError` at once for a malformed name."""
        ref = parse_repo(ref) if isinstance(ref, str) else ref
        return self._start(ref, gguf_file=gguf_file, token=token or None, replacing=None)

    def resume(self, job_id: str) -> DownloadJob:
        """Start a cancelled or failed job again, in its place in the list, with the same GGUF pick."""
        old = self.get(job_id)
        if not old.finished:
            raise DownloadError(f"The download of {old.ref} is still running.")
        return self._start(old.ref, gguf_file=old.gguf_pick, token=old.token, replacing=old)

    def cancel(self, job_id: str) -> DownloadJob:
        job = self.get(job_id)
        job.cancel()
        return job

    def dismiss(self, job_id: str) -> None:
        """Take a finished job off the list (its files stay where they are)."""
        job = self.get(job_id)
        if not job.finished:
            raise DownloadError(f"The download of {job.ref} is still running: cancel it first.")
        with self._lock:
            self._jobs = [j for j in self._jobs if j is not job]

    def get(self, job_id: str) -> DownloadJob:
        with self._lock:
            found = next((job for job in self._jobs if job.id == job_id), None)
        if found is None:
            raise DownloadError("That download is no longer in the list; start it again from the repo name.")
        return found

    def jobs(self) -> list[DownloadJob]:
        with self._lock:
            return list(self._jobs)

    def _start(
        self, ref: RepoRef, *, gguf_file: str | None, token: str | None, replacing: DownloadJob | None
    ) -> DownloadJob:
        folder = destination(self.models_dir, ref)
        with self._lock:
            if any(job.folder == folder and not job.finished for job in self._jobs):
                raise DownloadError(f"{ref} is already downloading into {folder}.")
            job = DownloadJob(
                ref, folder, gguf_file=gguf_file, token=token or None,
                threads=self.threads, retries=self.retries, stall_s=self.stall_s, job_id=f"job-{next(self._ids)}",
                loras_dir=self.loras_dir,
            )  # fmt: skip
            if replacing is not None and replacing in self._jobs:
                self._jobs[self._jobs.index(replacing)] = job
            else:
                self._jobs.append(job)
        job._start(self.on_done)
        return job
