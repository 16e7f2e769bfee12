"""Browser tests of issue 14's download jobs, against the hub test server: one app and one browser for the module.

1. A download cancelled half-way stays in the job list across a page reload; Resume on its row finishes it from
   the kept bytes ("Done"), the file's sha256 is the Hub's, and the model list has the new folder.
2. Picking Q8_0 among three real SmolLM2 quants downloads only Q8_0 (the table, the job and the folder agree), and
   the model loads from that file.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest

from tests.browser import (
    browser_context,
    doc_screenshots,
    screenshot,
    select_dropdown,
    start_hub_app,
    stop_app,
    wait_text,
)
from tests.conftest import link_tree
from tests.hubserver import GPTQ_BRANCH, GPTQ_REPO, Fault, HubServer, hub_root_fixture, hub_server_fixture  # noqa: F401

pytestmark = pytest.mark.browser

FOLDER = f"{GPTQ_REPO.replace('/', '_')}_{GPTQ_BRANCH}"
QUANTS = "corral-test/SmolLM2-quants-GGUF"
Q8_0 = "smollm2-135m-instruct.Q8_0.gguf"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, hub_server: HubServer):
    running = start_hub_app(tmp_path_factory.mktemp("download-jobs"), hub_server.url)
    yield running
    stop_app(running)


@pytest.fixture(scope="module")
def page(app):
    with browser_context(1280, 800) as context:
        page = context.new_page()
        page.goto(app.url)
        page.get_by_role("tab", name="Model").click()
        yield page


@pytest.fixture()
def hub(hub_server: HubServer) -> HubServer:
    hub_server.reset()
    yield hub_server
    hub_server.reset()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def job_row(page, repo: str) -> str:
    return f'#download-jobs .job[data-ref="{repo}"]'


def test_a_cancelled_download_survives_a_reload_and_resumes_from_its_row(page, app, hub: HubServer) -> None:
    weights = hub.branch_dir(GPTQ_REPO, GPTQ_BRANCH) / "model.safetensors"
    hub.state.faults[(GPTQ_REPO, "model.safetensors")] = Fault(bytes_per_s=weights.stat().st_size / 8)
    repo = f"{GPTQ_REPO}:{GPTQ_BRANCH}"
    page.locator("#download-repo textarea").fill(repo)
    page.locator("#download-start").click()
    row = job_row(page, repo)
    wait_text(page, row, "Downloading", "B/s", "ETA")
    doc_screenshots(page, "download-jobs", focus="#download-jobs")
    page.locator(f"{row} button[data-action=cancel]").click()
    wait_text(page, row, "Cancelled", "kept")
    assert not (app.models_dir / FOLDER / "model.safetensors").exists()  # never a half file under its name

    page.reload()  # the job list is the server's: the cancelled job is still there, with its Resume button
    page.get_by_role("tab", name="Model").click()
    wait_text(page, row, "Cancelled", timeout=30_000)
    hub.state.faults.clear()
    page.locator(f"{row} button[data-action=resume]").click()
    wait_text(page, row, "Done", timeout=120_000)
    screenshot(page, "download-jobs-done")
    assert sha256(app.models_dir / FOLDER / "model.safetensors") == sha256(weights)
    assert hub.state.ranges, "the resumed download asked for the missing bytes only"
    page.locator("#model-dropdown input").click()  # the model list was refreshed when the job ended
    assert page.get_by_role("option", name=FOLDER, exact=True).count() == 1
    page.keyboard.press("Escape")


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python")
def test_the_q8_0_pick_is_the_one_downloaded_and_loaded(page, app, hub: HubServer) -> None:
    from tests.realmodel import smollm2_quants

    link_tree(smollm2_quants(), hub.branch_dir(QUANTS))
    page.locator("#download-repo textarea").fill(QUANTS)
    page.locator("#download-list").click()
    wait_text(page, "#download-files", "to download")
    page.locator("#download-gguf-file label", has_text=Q8_0).click()
    table = wait_text(page, "#download-files", f"{Q8_0} chosen")
    doc_screenshots(page, "download-gguf-picker", focus="#download-gguf-file")
    rows = {line.split("\t")[0]: line for line in table.splitlines() if ".gguf\t" in line}
    assert rows[Q8_0].endswith("download") and sum(r.endswith("download") for r in rows.values()) == 1, table
    page.locator("#download-start").click()
    row = job_row(page, QUANTS)
    wait_text(page, row, "Done", f"GGUF: {Q8_0}", timeout=120_000)
    folder = app.models_dir / QUANTS.replace("/", "_")
    assert sorted(p.name for p in folder.glob("*.gguf")) == [Q8_0]

    select_dropdown(page, "model-dropdown", folder.name)  # autoload: the folder's pick, by the one rule
    status = wait_text(page, "#model-status", "loaded with llama.cpp", timeout=240_000)
    assert f"from {Q8_0}" in status, status
