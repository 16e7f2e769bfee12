"""Progress of one download: per-file bytes and states written by the worker threads, read by the UI and the CLI
as plain `DownloadProgress` snapshots (with speed over the last seconds and an ETA).

A job is "queued" until its thread starts, "verifying" while the files already on disk are hashed against the
Hub's, "running" while bytes arrive, then "done", "cancelled" or "failed" (with the reason in `message`)."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from webui.download.hub import RemoteFile, RepoRef

JobState = Literal["queued", "verifying", "running", "done", "failed", "cancelled"]
FINISHED: tuple[str, ...] = ("done", "failed", "cancelled")
FileState = Literal["waiting", "downloading", "done", "present", "failed", "cancelled"]
_SPEED_WINDOW_S = 5.0


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

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


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
        recent = [(t, n) for t, n in self._samples if now - t <= _SPEED_WINDOW_S]
        if len(recent) < 2 or self.state != "running":
            return 0.0
        (t0, n0), (t1, n1) = recent[0], recent[-1]
        return (n1 - n0) / max(t1 - t0, now - t1, 1e-3)
