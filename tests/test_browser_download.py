"""Browser test of the Model tab's download box (issue 3) against the hub test server: `repo:branch` → file list with
sizes → Download with live progress → "Done" → the new folder is in the model dropdown; a mistyped repo or a name
that is not a repo gives its own message in the page."""

from __future__ import annotations

import pytest

from loaders.units import format_bytes
from tests.browser import screenshot, start_hub_app, stop_app
from tests.hubserver import GGUF_REPO, GPTQ_BRANCH, GPTQ_REPO, Fault, HubServer, hub_root_fixture, hub_server_fixture  # noqa: F401

pytestmark = pytest.mark.browser

Q4_K_M = "SmolLM2-135M-Instruct.Q4_K_M.gguf"
Q8_0 = "SmolLM2-135M-Instruct.Q8_0.gguf"
FOLDER = f"{GPTQ_REPO.replace('/', '_')}_{GPTQ_BRANCH}"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, hub_server: HubServer):
    running = start_hub_app(tmp_path_factory.mktemp("download-tab"), hub_server.url)
    yield running
    stop_app(running)


@pytest.fixture()
def hub(hub_server: HubServer) -> HubServer:
    hub_server.reset()
    yield hub_server
    hub_server.reset()


def list_files(page, text: str) -> str:
    page.locator("#download-repo textarea").fill(text)
    page.locator("#download-list").click()
    page.wait_for_function(
        "() => /Error:|to download/.test(document.querySelector('#download-files').innerText)", timeout=120_000
    )
    return page.locator("#download-files").inner_text()


def open_model_tab(page, url: str) -> None:
    page.goto(url)
    page.get_by_role("tab", name="Model").click()
    page.locator("#download-repo").wait_for()


def test_download_a_branch_from_the_model_tab(app, hub: HubServer, browser_page) -> None:
    page = browser_page
    open_model_tab(page, app.url)
    weights = hub.branch_dir(GPTQ_REPO, GPTQ_BRANCH) / "model.safetensors"
    size = format_bytes(weights.stat().st_size)
    table = list_files(page, f"  {GPTQ_REPO}:{GPTQ_BRANCH} ")
    assert GPTQ_REPO in table and GPTQ_BRANCH in table
    assert "model.safetensors" in table and size in table, table
    assert "quantize_config.json" in table and not (app.models_dir / FOLDER).exists()  # listing downloads nothing

    # Throttled so the progress is seen moving: about 3 s for the weights.
    hub.state.faults[(GPTQ_REPO, "model.safetensors")] = Fault(bytes_per_s=weights.stat().st_size / 3)
    page.locator("#download-start").click()
    page.wait_for_function("() => document.querySelector('#download-jobs').innerText.includes('B/s')")
    progress = page.locator("#download-jobs").inner_text()
    screenshot(page, "download-progress")
    assert "Downloading" in progress and "model.safetensors" in progress, progress
    page.wait_for_function(
        "() => document.querySelector('#download-jobs').innerText.includes('Done')", timeout=120_000
    )
    screenshot(page, "download-done")
    assert (app.models_dir / FOLDER / "model.safetensors").stat().st_size == weights.stat().st_size

    # The finished download is in the model dropdown without a page reload; the "no models" hint is gone.
    assert "No models in" not in page.locator("#model-status").inner_text()
    page.locator("#model-dropdown input").click()
    assert page.get_by_role("option", name=FOLDER, exact=True).count() == 1


def test_a_multi_gguf_repo_offers_one_file(app, hub: HubServer, browser_page) -> None:
    page = browser_page
    open_model_tab(page, app.url)
    table = list_files(page, GGUF_REPO)
    screenshot(page, "download-gguf-list")
    row = next(line for line in table.splitlines() if line.startswith(f"{Q4_K_M}\t"))  # the file table's row
    assert row.endswith("download"), table  # the default quant, and only it
    assert table.count("skipped: another GGUF quant") == 2, table
    assert page.locator("#download-gguf-file input:checked").input_value() == Q4_K_M

    # Another pick redraws the table from the plan for that pick: Q8_0 downloaded, Q4_K_M skipped.
    page.locator("#download-gguf-file label", has_text=Q8_0).click()
    page.wait_for_function(
        f"() => document.querySelector('#download-files').innerText.includes('{Q8_0} chosen')", timeout=30_000
    )
    table = page.locator("#download-files").inner_text()
    rows = {line.split("\t")[0]: line for line in table.splitlines() if ".gguf\t" in line}
    assert rows[Q8_0].endswith("download"), table
    assert f"another GGUF quant ({Q8_0} chosen)" in rows[Q4_K_M], table
    assert "Q4_K_M.gguf chosen" not in table, table


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"{GPTQ_REPO}Q", "No repository"),
        (f"{GPTQ_REPO}:no-such-branch", GPTQ_BRANCH),  # the message lists the branches that exist
        ("just-a-name", "owner/repo"),
    ],
)
def test_a_mistyped_repo_gets_its_own_message(app, hub: HubServer, browser_page, text: str, expected: str) -> None:
    page = browser_page
    open_model_tab(page, app.url)
    message = list_files(page, text)
    assert "Error:" in message and expected in message and "Traceback" not in message, message
    page.locator("#download-start").click()  # Download on the same text: its own message, no job left running
    page.wait_for_function(
        "() => /Error:|Failed/.test(document.querySelector('#download-progress').innerText + "
        "document.querySelector('#download-jobs').innerText)"
    )
    assert "Traceback" not in page.locator("#download-progress").inner_text()
    assert app.process.poll() is None
