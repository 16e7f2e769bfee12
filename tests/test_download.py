"""Downloads against the hub test server with the real SmolLM2 files: placement, resume, integrity, cancel, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from loaders.errors import BranchNotFoundError, DiskSpaceError, GatedRepoError, RepoNotFoundError, UnsafePathError
from loaders.files.gguf_choice import choose_gguf, group_gguf
from tests.hubserver import (  # noqa: F401 - fixtures
    GGUF_REPO,
    GPTQ_BRANCH,
    GPTQ_REPO,
    QUANTS_REPO,
    TRANSFORMERS_REPO,
    Fault,
    HubServer,
    hub_fixture,
    hub_root_fixture,
    hub_server_fixture,
)
from webui import download
from webui.download import (
    METADATA_NAME,
    PARTIAL_DIR,
    DownloadManager,
    RepoRef,
    check,
    choose_files,
    destination,
    list_files,
)

ROOT = Path(__file__).resolve().parents[1]
Q4_K_M = "SmolLM2-135M-Instruct.Q4_K_M.gguf"
Q8_0 = "SmolLM2-135M-Instruct.Q8_0.gguf"
TINY_Q2_K, TINY_Q4_K_M, TINY_Q8_0 = "tiny.Q2_K.gguf", "tiny.Q4_K_M.gguf", "tiny.Q8_0.gguf"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def run_job(models: Path, ref: str, **options) -> download.DownloadProgress:
    manager = DownloadManager(models, retries=options.pop("retries", 3))
    return manager.start(ref, **options).wait(120)


def final_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_file()}


def source_record(folder: Path) -> dict:
    return json.loads((folder / METADATA_NAME).read_text())


def test_server_speaks_the_client_calls(hub: HubServer) -> None:
    api = HfApi(endpoint=hub.url)
    hub.state.page_size = 2  # several pages: the client must follow the Link header
    tree = [f.path for f in api.list_repo_tree(GPTQ_REPO, revision=GPTQ_BRANCH)]
    assert "quantize_config.json" in tree and len(tree) == 7
    (info,) = api.get_paths_info(GPTQ_REPO, ["model.safetensors"], revision=GPTQ_BRANCH)
    assert info.lfs.sha256 == sha256(hub.branch_dir(GPTQ_REPO, GPTQ_BRANCH) / "model.safetensors")
    refs = api.list_repo_refs(GPTQ_REPO)
    assert sorted(b.name for b in refs.branches) == [GPTQ_BRANCH, "main"]


def test_transformers_repo_lands_in_its_folder_and_a_second_run_fetches_nothing(hub: HubServer, tmp_path: Path) -> None:
    models = tmp_path / "models"
    result = run_job(models, TRANSFORMERS_REPO)
    assert result.state == "done", result.message
    folder = models / "HuggingFaceTB_SmolLM2-135M-Instruct"
    assert result.folder == folder
    assert final_files(folder) == {
        "README.md",
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        METADATA_NAME,
    }
    assert sha256(folder / "model.safetensors") == hub.sha256(TRANSFORMERS_REPO, "main", "model.safetensors")
    record = json.loads((folder / METADATA_NAME).read_text())
    assert record["repo"] == TRANSFORMERS_REPO and record["branch"] == "main"
    assert record["commit"] == HfApi(endpoint=hub.url).model_info(TRANSFORMERS_REPO).sha
    assert not (folder / PARTIAL_DIR).exists()  # nothing to resume: no leftovers in the model folder

    gets = dict(hub.state.requests)
    again = run_job(models, TRANSFORMERS_REPO)
    assert again.state == "done"
    assert dict(hub.state.requests) == gets  # nothing fetched twice
    assert {f.state for f in again.files} == {"present"}
    assert check(folder).ok


def test_branch_downloads_that_branch_into_its_own_folder(hub: HubServer, tmp_path: Path) -> None:
    result = run_job(tmp_path, f"{GPTQ_REPO}:{GPTQ_BRANCH}")
    assert result.state == "done", result.message
    folder = tmp_path / "corral-test_SmolLM2-135M-Instruct-GPTQ_gptq-4bit-32g-actorder_True"
    quant = json.loads((folder / "quantize_config.json").read_text())
    assert quant["group_size"] == 32 and quant["desc_act"] is True  # the branch's file, not main's (128)
    branch_weights = hub.branch_dir(GPTQ_REPO, GPTQ_BRANCH) / "model.safetensors"
    assert sha256(folder / "model.safetensors") == sha256(branch_weights)
    assert not (tmp_path / "corral-test_SmolLM2-135M-Instruct-GPTQ").exists()


def test_multi_gguf_repo_gets_one_file_and_file_picks_another(hub: HubServer, tmp_path: Path) -> None:
    result = run_job(tmp_path, GGUF_REPO)
    assert result.state == "done", result.message
    folder = destination(tmp_path, RepoRef(GGUF_REPO))
    assert final_files(folder) == {Q4_K_M, "README.md", METADATA_NAME}
    assert sha256(folder / Q4_K_M) == hub.sha256(GGUF_REPO, "main", Q4_K_M)

    result = run_job(tmp_path, GGUF_REPO, gguf_file=Q8_0)
    assert result.state == "done", result.message
    assert final_files(folder) == {Q4_K_M, Q8_0, "README.md", METADATA_NAME}
    assert hub.gets(GGUF_REPO, "SmolLM2-135M-Instruct.Q4_1.gguf") == 0
    assert hub.gets(GGUF_REPO, "README.md") == 1


def test_the_picked_quant_alone_is_downloaded_and_the_folder_remembers_it(hub: HubServer, tmp_path: Path) -> None:
    result = run_job(tmp_path, QUANTS_REPO, gguf_file=TINY_Q8_0)
    assert result.state == "done", result.message
    folder = destination(tmp_path, RepoRef(QUANTS_REPO))
    assert final_files(folder) == {TINY_Q8_0, "README.md", METADATA_NAME}
    assert hub.gets(QUANTS_REPO, TINY_Q4_K_M) == hub.gets(QUANTS_REPO, TINY_Q2_K) == 0
    record = source_record(folder)
    assert record["gguf_file"] == TINY_Q8_0
    assert record["repo"] == QUANTS_REPO and set(record["files"]) == {TINY_Q8_0, "README.md"}

    gets = dict(hub.state.requests)
    again = run_job(tmp_path, QUANTS_REPO)  # no pick: the folder's quant, not the default Q4_K_M
    assert again.state == "done", again.message
    assert {f.name: f.state for f in again.files} == {TINY_Q8_0: "present", "README.md": "present"}
    assert dict(hub.state.requests) == gets and TINY_Q4_K_M not in final_files(folder)

    other = run_job(tmp_path, QUANTS_REPO, gguf_file=TINY_Q2_K)  # an explicit other pick is allowed...
    assert other.state == "done", other.message
    assert final_files(folder) == {TINY_Q8_0, TINY_Q2_K, "README.md", METADATA_NAME}
    assert source_record(folder)["gguf_file"] == TINY_Q2_K  # ...and becomes the folder's pick


def test_with_no_pick_the_shared_gguf_rule_chooses_q4_k_m(hub: HubServer, tmp_path: Path) -> None:
    listing = list_files(RepoRef(QUANTS_REPO))
    shared, _reason = choose_gguf(group_gguf((f.path, f.size) for f in listing.files))
    assert choose_files(listing).gguf_file == shared.name == TINY_Q4_K_M
    result = run_job(tmp_path, QUANTS_REPO)
    assert result.state == "done", result.message
    folder = destination(tmp_path, RepoRef(QUANTS_REPO))
    assert final_files(folder) == {TINY_Q4_K_M, "README.md", METADATA_NAME}
    assert source_record(folder)["gguf_file"] == TINY_Q4_K_M


def test_a_record_from_before_gguf_file_is_read_and_its_fields_kept(hub: HubServer, tmp_path: Path) -> None:
    assert run_job(tmp_path, QUANTS_REPO).state == "done"
    folder = destination(tmp_path, RepoRef(QUANTS_REPO))
    older = source_record(folder)
    del older["gguf_file"]
    (folder / METADATA_NAME).write_text(json.dumps(dict(older, note="written by hand")))
    gets = dict(hub.state.requests)
    again = run_job(tmp_path, QUANTS_REPO)
    assert again.state == "done", again.message
    assert dict(hub.state.requests) == gets  # the verified stats of the older record still hold
    record = source_record(folder)
    assert record["note"] == "written by hand" and record["gguf_file"] == TINY_Q4_K_M
    assert record["files"] == older["files"]


def test_cut_connection_is_resumed_within_the_run(hub: HubServer, tmp_path: Path) -> None:
    hub.state.faults[(GPTQ_REPO, "model.safetensors")] = Fault(cut_after=5_000_000, cuts=1)
    result = run_job(tmp_path, GPTQ_REPO)
    assert result.state == "done", result.message
    starts = [first for repo, path, first in hub.state.ranges if path == "model.safetensors"]
    assert starts[0] == 0 and 0 < starts[1] <= 5_000_000
    folder = destination(tmp_path, RepoRef(GPTQ_REPO))
    assert sha256(folder / "model.safetensors") == sha256(hub.branch_dir(GPTQ_REPO) / "model.safetensors")


def test_failed_run_keeps_partial_data_and_the_next_run_resumes_without_refetching(
    hub: HubServer, tmp_path: Path
) -> None:
    hub.state.faults[(GPTQ_REPO, "model.safetensors")] = Fault(cut_after=6_000_000, cuts=99)
    first = run_job(tmp_path, GPTQ_REPO, retries=1)
    assert first.state == "failed"
    assert "model.safetensors" in first.message and "connection lost" in first.message
    folder = destination(tmp_path, RepoRef(GPTQ_REPO))
    assert not (folder / "model.safetensors").exists()  # never a partial file under the final name
    (part,) = (folder / PARTIAL_DIR).glob("*.part")
    assert part.stat().st_size == 6_000_000
    assert (folder / "tokenizer.json").is_file()

    hub.state.faults.clear()
    counts = dict(hub.state.requests)
    second = run_job(tmp_path, GPTQ_REPO)
    assert second.state == "done", second.message
    assert hub.state.ranges[-1] == (GPTQ_REPO, "model.safetensors", 6_000_000)  # resumed, not restarted
    fetched_again = {path for (repo, path), n in hub.state.requests.items() if n != counts.get((repo, path))}
    assert fetched_again == {"model.safetensors"}
    assert sha256(folder / "model.safetensors") == sha256(hub.branch_dir(GPTQ_REPO) / "model.safetensors")
    assert check(folder, rehash=True).ok


def test_corrupted_file_is_reported_and_not_kept(hub: HubServer, tmp_path: Path) -> None:
    hub.state.faults[(GGUF_REPO, Q8_0)] = Fault(corrupt=True)
    result = run_job(tmp_path, GGUF_REPO, gguf_file=Q8_0)
    assert result.state == "failed"
    assert "sha256" in result.message and Q8_0 in result.message
    folder = destination(tmp_path, RepoRef(GGUF_REPO))
    assert final_files(folder) == {"README.md", METADATA_NAME}
    assert not (folder / PARTIAL_DIR).exists()
    assert {f.name: f.state for f in result.files} == {Q8_0: "failed", "README.md": "done"}

    hub.state.faults.clear()
    assert run_job(tmp_path, GGUF_REPO, gguf_file=Q8_0).state == "done"
    assert sha256(folder / Q8_0) == hub.sha256(GGUF_REPO, "main", Q8_0)


@pytest.mark.parametrize("name", ["../../x", "/etc/passwd"])
def test_unsafe_names_from_the_server_are_refused(hub: HubServer, tmp_path: Path, name: str) -> None:
    hub.state.injected[GGUF_REPO] = [(name, 10)]
    with pytest.raises(UnsafePathError, match="escape"):
        list_files(RepoRef(GGUF_REPO))
    result = run_job(tmp_path / "models", GGUF_REPO)
    assert result.state == "failed" and "escape" in result.message
    assert not (tmp_path / "x").exists() and list(tmp_path.rglob("*.gguf")) == []


def test_wrong_repo_branch_and_gated_repo_each_say_what_to_do(hub: HubServer, tmp_path: Path) -> None:
    with pytest.raises(RepoNotFoundError, match="No repository corral-test/nope") as repo_error:
        list_files(RepoRef("corral-test/nope"))
    with pytest.raises(BranchNotFoundError, match="no branch 'gptq-8bit'") as branch_error:
        list_files(RepoRef(GPTQ_REPO, "gptq-8bit"))
    assert branch_error.value.branches == [GPTQ_BRANCH, "main"]
    assert GPTQ_BRANCH in str(branch_error.value)

    hub.state.gated[GGUF_REPO] = "hf_secret"
    with pytest.raises(GatedRepoError, match="HF_TOKEN") as gated_error:
        list_files(RepoRef(GGUF_REPO))
    assert len({str(repo_error.value), str(branch_error.value), str(gated_error.value)}) == 3
    assert list_files(RepoRef(GGUF_REPO), token="hf_secret").commit
    os.environ["HF_TOKEN"] = "hf_secret"  # the `hub` fixture's monkeypatch restores the environment
    try:
        result = run_job(tmp_path, GGUF_REPO, gguf_file=Q8_0)
    finally:
        del os.environ["HF_TOKEN"]
    assert result.state == "done", result.message


def test_cancel_stops_promptly_keeps_no_half_file_and_a_later_run_completes(hub: HubServer, tmp_path: Path) -> None:
    hub.state.faults[(GPTQ_REPO, "model.safetensors")] = Fault(bytes_per_s=3_000_000)
    job = DownloadManager(tmp_path).start(GPTQ_REPO)
    deadline = time.monotonic() + 30
    while job.snapshot().done_bytes < 4_000_000 + 3_600_000 and time.monotonic() < deadline:
        time.sleep(0.05)  # the small files (tokenizer.json: 3.5 MB) plus some of the weights
    snap = job.snapshot()
    assert snap.state == "running" and snap.speed_bps > 0 and snap.eta_s is not None
    asked = time.monotonic()
    job.cancel()
    result = job.wait(10)
    assert time.monotonic() - asked < 1.5
    assert result.state == "cancelled" and "resume" in result.message
    folder = destination(tmp_path, RepoRef(GPTQ_REPO))
    assert not (folder / "model.safetensors").exists()
    (part,) = (folder / PARTIAL_DIR).glob("*.part")
    kept = part.stat().st_size
    assert kept > 0

    hub.state.faults.clear()
    done: list[str] = []
    later = DownloadManager(tmp_path, on_done=lambda j: done.append(j.snapshot().state)).start(GPTQ_REPO).wait(60)
    assert later.state == "done" and done == ["done"]
    assert hub.state.ranges[-1] == (GPTQ_REPO, "model.safetensors", kept)
    assert sha256(folder / "model.safetensors") == sha256(hub.branch_dir(GPTQ_REPO) / "model.safetensors")


def test_not_enough_disk_is_refused_with_numbers(hub: HubServer, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: type("U", (), {"free": 10_000_000})())
    listing = list_files(RepoRef(GGUF_REPO))
    plan = choose_files(listing)
    tracker = download.ProgressTracker(listing.ref, tmp_path)
    with pytest.raises(DiskSpaceError, match=r"needs 98\.4 MB, 10\.0 MB free"):
        download.run_plan(plan, tmp_path / "g", tracker, threading.Event())
    assert hub.gets(GGUF_REPO, Q4_K_M) == 0


# --- command line -----------------------------------------------------------------------------------------------------


def cli(hub: HubServer, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_DISABLE_TELEMETRY="1")
    command = [sys.executable, "-m", "webui.download", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_cli_list_download_check_and_exit_codes(hub: HubServer, tmp_path: Path) -> None:
    listed = cli(hub, GGUF_REPO, "--list", "--models-dir", str(tmp_path))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert any(line.split()[:1] == ["get"] and line.endswith(Q4_K_M) for line in lines)
    assert any(line.startswith("  skip") and "Q4_1.gguf" in line for line in lines)
    assert "98.4 MB" in listed.stdout and not tmp_path.joinpath("corral-test_SmolLM2-135M-Instruct-GGUF").exists()

    got = cli(hub, f" {GGUF_REPO} ", "--file", Q8_0, "--models-dir", str(tmp_path), "--threads", "2")
    assert got.returncode == 0, got.stderr
    assert "Done" in got.stdout and "MB" in got.stderr  # progress goes to stderr
    folder = destination(tmp_path, RepoRef(GGUF_REPO))
    assert final_files(folder) == {Q8_0, "README.md", METADATA_NAME}

    checked = cli(hub, GGUF_REPO, "--check", "--models-dir", str(tmp_path))
    assert checked.returncode == 0 and "all files OK" in checked.stdout
    with open(folder / Q8_0, "r+b") as handle:  # same size, one byte flipped
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 1]))
    damaged = cli(hub, GGUF_REPO, "--check", "--models-dir", str(tmp_path))
    assert damaged.returncode == 1 and "hash" in damaged.stdout

    for args, message in (
        (("corral-test/nope",), "No repository corral-test/nope"),
        ((f"{GPTQ_REPO}:nope",), "Branches: gptq-4bit-32g-actorder_True, main"),
        (("not a repo",), "owner/repo:branch"),
        ((GGUF_REPO, "--file", "missing.gguf"), "has no file 'missing.gguf'"),
    ):
        failed = cli(hub, *args, "--models-dir", str(tmp_path / "other"))
        assert failed.returncode == 1
        assert failed.stderr.strip().splitlines()[-1].startswith("error: ") and message in failed.stderr
