"""A hostile or unreliable Hub: malformed hashes refused at the edge, small files verified by their git blob id,
429/5xx answers retried with `Retry-After`, stalled transfers resumed, damaged records set aside."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest

from loaders.errors import DownloadError, IntegrityError, UnsafePathError
from tests.hubserver import (  # noqa: F401 - fixtures
    QUANTS_REPO,
    Fault,
    HubServer,
    hub_fixture,
    hub_root_fixture,
    hub_server_fixture,
)
from webui import download
from webui.download import METADATA_NAME, PARTIAL_DIR, DownloadManager, RemoteFile, RepoRef, check, destination
from webui.download.record import SourceRecord

TINY_Q4_K_M = "tiny.Q4_K_M.gguf"
HOSTILE = "../../../outside/x"


def run_job(models: Path, ref: str, **options) -> download.DownloadProgress:
    manager = DownloadManager(models, retries=options.pop("retries", 3), stall_s=options.pop("stall_s", 30.0))
    return manager.start(ref, **options).wait(120)


def snapshot_outside(root: Path, models: Path) -> dict[str, bytes]:
    """Every file under `root` that is not under `models`, with its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.is_relative_to(models)
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- malformed hashes: refused where the record is made --------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    ["../../../outside/x", "/etc/passwd", "0" * 63, "0" * 65, "g" * 64, "", 12345],
)
def test_a_remote_file_refuses_a_sha256_that_is_not_64_hex_digits(bad: object) -> None:
    with pytest.raises(IntegrityError, match="64 hex digits"):
        RemoteFile("model.gguf", 10, sha256=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["../../../outside/x", "0" * 39, "0" * 64, "z" * 40])
def test_a_remote_file_refuses_a_blob_id_that_is_not_40_hex_digits(bad: str) -> None:
    with pytest.raises(IntegrityError, match="40 hex digits"):
        RemoteFile("config.json", 10, blob_id=bad)


def test_hex_is_taken_in_either_case_and_kept_lower() -> None:
    assert RemoteFile("a.gguf", 1, sha256="AB" * 32).sha256 == "ab" * 32


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        (TINY_Q4_K_M, {"lfs": {"sha256": HOSTILE}}),
        ("README.md", {"blobId": HOSTILE}),
        ("README.md", {"blobId": None}),  # no hash at all: cannot be verified
        (TINY_Q4_K_M, {"lfs": {"sha256": None}}),
    ],
)
def test_a_hostile_hub_is_refused_and_nothing_outside_the_models_folder_is_touched(
    hub: HubServer, tmp_path: Path, path: str, fields: dict
) -> None:
    models = tmp_path / "models"
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "x.part"  # where `.corral-partial/<hash>.part` would land with the hostile hash
    victim.write_bytes(b"the user's file" * 1_000_000)  # bigger than the file: a resume would delete it
    (outside / "x").write_bytes(b"another user file")
    before = snapshot_outside(tmp_path, models)
    hub.state.hostile[QUANTS_REPO] = {path: fields}

    with pytest.raises(IntegrityError, match="refused"):
        download.list_files(RepoRef(QUANTS_REPO))
    result = run_job(models, QUANTS_REPO)

    assert result.state == "failed" and path in result.message and "refused" in result.message
    assert snapshot_outside(tmp_path, models) == before  # the victim is intact and nothing new appeared outside
    assert not list(models.rglob("*.gguf"))


def test_a_partial_path_outside_its_folder_is_refused_even_past_the_record(tmp_path: Path) -> None:
    """Belt and braces: `_Transfer.partial` checks the path it builds, whatever made the RemoteFile."""
    item = RemoteFile("a.gguf", 1, sha256="0" * 64)
    object.__setattr__(item, "sha256", HOSTILE)  # as if a future code path skipped the check
    job = download.transfer._Transfer(None, tmp_path, None, threading.Lock(), None, threading.Event(), {}, 0)  # type: ignore[arg-type]
    with pytest.raises(UnsafePathError, match="outside"):
        job.partial(item)


# --- small files verified by their git blob id -------------------------------------------------------------------


def test_a_flipped_byte_in_a_small_file_is_detected_and_not_kept(hub: HubServer, tmp_path: Path) -> None:
    hub.state.faults[(QUANTS_REPO, "README.md")] = Fault(corrupt=True)
    result = run_job(tmp_path, QUANTS_REPO)
    assert result.state == "failed"
    assert "README.md" in result.message and "git-sha1" in result.message and "does not match" in result.message
    folder = destination(tmp_path, RepoRef(QUANTS_REPO))
    assert not (folder / "README.md").exists()  # the damaged bytes never get the final name
    assert not list(folder.rglob("*.part"))  # nor kept to resume from
    assert {f.name: f.state for f in result.files}["README.md"] == "failed"

    hub.state.faults.clear()
    assert run_job(tmp_path, QUANTS_REPO).state == "done"
    assert (folder / "README.md").read_bytes() == (hub.branch_dir(QUANTS_REPO) / "README.md").read_bytes()


def test_a_small_file_damaged_on_disk_is_fetched_again_not_accepted_on_its_size(hub: HubServer, tmp_path: Path) -> None:
    assert run_job(tmp_path, QUANTS_REPO).state == "done"
    folder = destination(tmp_path, RepoRef(QUANTS_REPO))
    readme = folder / "README.md"
    good = readme.read_bytes()
    readme.write_bytes(bytes([good[0] ^ 1]) + good[1:])  # same size, one byte flipped, new mtime
    assert not check(folder).ok
    gets = hub.gets(QUANTS_REPO, "README.md")
    assert run_job(tmp_path, QUANTS_REPO).state == "done"
    assert hub.gets(QUANTS_REPO, "README.md") == gets + 1 and readme.read_bytes() == good


def test_an_integrity_error_is_raised_for_a_flipped_small_file(hub: HubServer, tmp_path: Path) -> None:
    hub.state.faults[(QUANTS_REPO, "README.md")] = Fault(corrupt=True)
    listing = download.list_files(RepoRef(QUANTS_REPO))
    item = next(f for f in listing.files if f.path == "README.md")
    assert item.blob_id and item.sha256 is None  # a small (non-LFS) file: verified by its git blob id
    job = _transfer(listing, tmp_path)
    with pytest.raises(IntegrityError, match="git-sha1"):
        download.transfer._fetch(item, job)
    assert not (tmp_path / "README.md").exists()


def _transfer(listing: download.RepoListing, folder: Path) -> download.transfer._Transfer:
    plan = download.choose_files(listing)
    tracker = download.ProgressTracker(listing.ref, folder)
    tracker.plan(plan.chosen)
    (folder / PARTIAL_DIR).mkdir(parents=True, exist_ok=True)
    record = SourceRecord(listing.ref.repo_id, "main", listing.commit, listing.endpoint)
    for item in plan.chosen:
        record.expect(item)
    return download.transfer._Transfer(plan, folder, record, threading.Lock(), tracker, threading.Event(), {}, 1)


# --- an unreliable Hub: 429 / 503, stalls --------------------------------------------------------------------------


def test_429_with_retry_after_then_503_then_ok_completes(hub: HubServer, tmp_path: Path) -> None:
    hub.state.faults[(QUANTS_REPO, TINY_Q4_K_M)] = Fault(statuses=[429, 503], retry_after="1")
    hub.state.faults[(QUANTS_REPO, "README.md")] = Fault(statuses=[503])  # a small file, served without the CDN
    started = time.monotonic()
    result = run_job(tmp_path, QUANTS_REPO)
    assert result.state == "done", result.message
    refused = [(path, status) for _repo, path, status, _t in hub.state.refused]
    assert sorted(refused) == sorted([(TINY_Q4_K_M, 429), (TINY_Q4_K_M, 503), ("README.md", 503)])
    times = [t for _repo, path, _status, t in hub.state.refused if path == TINY_Q4_K_M]
    assert times[1] - times[0] >= 1.0 and time.monotonic() - started >= 1.0  # Retry-After was honoured
    folder = destination(tmp_path, RepoRef(QUANTS_REPO))
    assert sha256(folder / TINY_Q4_K_M) == hub.sha256(QUANTS_REPO, "main", TINY_Q4_K_M)


def test_a_hub_that_keeps_answering_503_fails_with_the_status(hub: HubServer, tmp_path: Path) -> None:
    hub.state.faults[(QUANTS_REPO, TINY_Q4_K_M)] = Fault(statuses=[503] * 10)
    result = run_job(tmp_path, QUANTS_REPO, retries=1)
    assert result.state == "failed" and "503" in result.message and TINY_Q4_K_M in result.message


def test_a_stalled_transfer_is_resumed_from_where_it_stopped(hub: HubServer, tmp_path: Path) -> None:
    hub.state.faults[(QUANTS_REPO, TINY_Q4_K_M)] = Fault(stall_after=600_000, stall_s=4.0)
    started = time.monotonic()
    result = run_job(tmp_path, QUANTS_REPO, stall_s=0.5)
    assert result.state == "done", result.message
    assert time.monotonic() - started < 4.0  # it did not wait for the server to give up
    starts = [first for _repo, path, first in hub.state.ranges if path == TINY_Q4_K_M]
    assert starts == [0, 600_000]  # resumed at the byte it stalled on, not restarted
    folder = destination(tmp_path, RepoRef(QUANTS_REPO))
    assert sha256(folder / TINY_Q4_K_M) == hub.sha256(QUANTS_REPO, "main", TINY_Q4_K_M)


def test_a_transfer_that_always_stalls_says_so(hub: HubServer, tmp_path: Path) -> None:
    hub.state.faults[(QUANTS_REPO, TINY_Q4_K_M)] = Fault(stall_after=100_000, stall_s=2.0, stalls=99)
    result = run_job(tmp_path, QUANTS_REPO, stall_s=0.3, retries=1)
    assert result.state == "failed" and "stalled" in result.message and "resume" in result.message


# --- `.corral-source.json` read back with the same checks -----------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        {"sha256": HOSTILE},
        {"blob_id": HOSTILE, "sha256": None},
        {"sha256": None, "blob_id": None},
        {"size": "big"},
    ],
)
def test_a_record_with_a_malformed_entry_is_set_aside_and_the_download_repairs(
    hub: HubServer, tmp_path: Path, damage: dict
) -> None:
    assert run_job(tmp_path, QUANTS_REPO).state == "done"
    folder = destination(tmp_path, RepoRef(QUANTS_REPO))
    record = json.loads((folder / METADATA_NAME).read_text())
    record["files"][TINY_Q4_K_M].update(damage)
    damaged = json.dumps(record)
    (folder / METADATA_NAME).write_text(damaged)

    with pytest.raises(DownloadError, match="damaged"):
        check(folder)
    (kept,) = folder.glob(".corral-source.broken-*")
    assert kept.read_text() == damaged  # the user's file is kept as it was
    assert run_job(tmp_path, QUANTS_REPO).state == "done"
    assert check(folder).ok
    assert not (tmp_path / "outside").exists()


def test_a_record_with_an_unsafe_file_name_or_gguf_pick_is_not_trusted(hub: HubServer, tmp_path: Path) -> None:
    assert run_job(tmp_path, QUANTS_REPO).state == "done"
    folder = destination(tmp_path, RepoRef(QUANTS_REPO))
    record = json.loads((folder / METADATA_NAME).read_text())
    for hostile in ({"gguf_file": "../../x.gguf"}, {"files": {"../x": {"size": 1, "sha256": "0" * 64}}}):
        (folder / METADATA_NAME).write_text(json.dumps(dict(record, **hostile)))
        assert SourceRecord.read(folder, repair=False) is None
