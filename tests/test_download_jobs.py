"""The download job list of issue 14 (webui/download/jobs.py): jobs have ids, show their GGUF pick, and a cancelled
or failed job resumes in its own place with the same pick, from the bytes kept; finished jobs can be removed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from loaders.errors import DownloadError
from tests.hubserver import GGUF_REPO, GPTQ_REPO, Fault, HubServer, hub_fixture, hub_root_fixture, hub_server_fixture  # noqa: F401
from webui.download import DownloadManager

Q8_0 = "SmolLM2-135M-Instruct.Q8_0.gguf"


def wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_cancelled_job_resumes_in_its_place_with_its_pick(hub: HubServer, tmp_path: Path) -> None:
    hub.state.faults[(GGUF_REPO, Q8_0)] = Fault(bytes_per_s=4_000_000)
    manager = DownloadManager(tmp_path)
    first = manager.start(GPTQ_REPO)
    job = manager.start(GGUF_REPO, gguf_file=Q8_0)
    assert job.gguf_pick == Q8_0 and first.id != job.id
    wait_for(lambda: job.snapshot().done_bytes > 1_000_000)
    assert job.snapshot().state == "running"
    with pytest.raises(DownloadError, match="still running"):
        manager.dismiss(job.id)
    manager.cancel(job.id)
    assert job.wait(10).state == "cancelled"
    hub.state.faults.clear()
    resumed = manager.resume(job.id)
    assert resumed.id != job.id and [j.id for j in manager.jobs()] == [first.id, resumed.id]  # in its place
    assert resumed.wait(60).state == "done" and resumed.gguf_pick == Q8_0
    assert sorted(p.name for p in resumed.folder.glob("*.gguf")) == [Q8_0]
    with pytest.raises(DownloadError, match="no longer in the list"):
        manager.resume(job.id)
    first.wait(60)
    manager.dismiss(first.id)
    assert [j.id for j in manager.jobs()] == [resumed.id]


def test_the_check_of_files_on_disk_is_the_verifying_state(
    hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from webui.download.progress import ProgressTracker

    states: list[str] = []
    original = ProgressTracker.set
    monkeypatch.setattr(ProgressTracker, "set", lambda self, state, message: (states.append(state),
                                                                              original(self, state, message)))
    manager = DownloadManager(tmp_path)
    assert manager.start(GPTQ_REPO).wait(60).state == "done"
    assert states == ["running", "verifying", "running", "done"]  # listing, checking the disk, fetching, done
    again = manager.start(GPTQ_REPO).wait(60)
    assert again.state == "done" and all(f.state == "present" for f in again.files)
