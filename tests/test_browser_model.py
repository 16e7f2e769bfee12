"""Browser test of the Model tab (issue 4): a model autoloads on select and shows why it was detected so; a changed
context length is saved for the model, survives a page reload, and "Reload the model" loads with it (the status
line reports what the loaded model says). Bad input (no models, a folder without weights) gives a message in the
page, and the app keeps serving."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.browser import screenshot, select_dropdown, start_app, stop_app
from tests.conftest import link_tree

pytestmark = pytest.mark.browser

GGUF, HF, NO_WEIGHTS = "SmolLM2-135M-Instruct-GGUF", "SmolLM2-135M-Instruct", "Broken-No-Weights"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, smollm2_hf: Path, smollm2_gguf: Path):
    """One app for the module, on a models folder with both SmolLM2 formats and a folder with config.json only."""
    root = tmp_path_factory.mktemp("model-tab")
    models = root / "models"
    link_tree(smollm2_hf, models / HF)
    link_tree(smollm2_gguf.parent, models / GGUF)
    (models / NO_WEIGHTS).mkdir()
    (models / NO_WEIGHTS / "config.json").write_text((smollm2_hf / "config.json").read_text())
    running = start_app(models, root)
    yield running
    stop_app(running)


def status(page) -> str:
    return page.locator("#model-status").inner_text()


def wait_status(page, *parts: str, timeout: float = 240_000) -> str:
    """Wait until the Model tab's status line holds every one of `parts`."""
    page.wait_for_function(
        "parts => parts.every(p => document.querySelector('#model-status').innerText.includes(p))",
        arg=list(parts),
        timeout=timeout,
    )
    return status(page)


def open_model_tab(page, url: str) -> None:
    page.goto(url)
    page.get_by_role("tab", name="Model").click()
    page.locator("#model-dropdown").wait_for()


@pytest.mark.parametrize(
    ("name", "field", "value", "reason"),
    [
        (GGUF, "#llamacpp-n_ctx", 2048, "general.file_type"),
        (HF, "#transformers-context_length", 1024, "config.json says model type llama"),
    ],
)
def test_saved_context_survives_a_page_reload_and_reload_uses_it(
    app, browser_page, name: str, field: str, value: int, reason: str
) -> None:
    page = browser_page
    open_model_tab(page, app.url)
    select_dropdown(page, "model-dropdown", name)
    wait_status(page, f"{name} loaded with")
    details = page.locator("#model-details").inner_text()
    assert "Detected:" in details and reason in details, details
    box = page.locator(f"{field} input[type=number]")
    assert int(box.input_value()) != value  # the detected context, not yet ours

    box.fill(str(value))
    box.press("Enter")
    page.locator("#model-save").click()
    wait_status(page, "Saved settings for", name)
    saved = yaml.safe_load((app.models_dir / "config-user.yaml").read_text())
    assert saved[name]["context_length"] == value
    page.locator("#model-reload").click()
    text = wait_status(page, f"{name} loaded with", f"context {value} tokens")
    screenshot(page, f"model-reloaded-{name}")

    # A new page: the saved value comes back when the model is picked again, and the load uses it.
    open_model_tab(page, app.url)
    wait_status(page, f"{name} loaded with", timeout=30_000)  # what the app holds, not the page's first "no model"
    page.locator("#model-unload").click()
    wait_status(page, "No model loaded")
    select_dropdown(page, "model-dropdown", name)
    text = wait_status(page, f"{name} loaded with")
    assert f"context {value} tokens" in text, text
    assert int(page.locator(f"{field} input[type=number]").input_value()) == value
    assert "saved by you" in page.locator("#model-details").inner_text()


def test_a_folder_without_weights_is_a_message_not_a_crash(app, browser_page) -> None:
    page = browser_page
    open_model_tab(page, app.url)
    select_dropdown(page, "model-dropdown", NO_WEIGHTS)
    page.wait_for_function("() => document.querySelector('#model-details').innerText.includes('weights are missing')")
    text = wait_status(page, "Could not load", NO_WEIGHTS)
    screenshot(page, "model-no-weights")
    assert "Traceback" not in text and "weights are missing" in text
    assert not page.locator("#loader-transformers").first.is_visible()  # no stale controls of another model
    assert app.process.poll() is None
    select_dropdown(page, "model-dropdown", GGUF)  # the app still works
    wait_status(page, f"{GGUF} loaded with")


def test_an_empty_models_folder_says_where_to_get_one(tmp_path: Path, browser_page) -> None:
    (tmp_path / "models").mkdir()
    running = start_app(tmp_path / "models", tmp_path)
    try:
        page = browser_page
        open_model_tab(page, running.url)
        text = wait_status(page, "No models in")
        assert "download one" in text
        page.locator("#model-load").click()
        wait_status(page, "Pick a model first")
        screenshot(page, "model-empty-folder")
        assert running.process.poll() is None
    finally:
        stop_app(running)


def test_the_picked_quant_is_planned_estimated_and_loaded(tmp_path: Path, browser_page) -> None:
    """A folder with Q4_K_M, Q8_0 and Q2_K: the Model tab shows the plan and the memory at load / at full context
    for the detected Q4_K_M; picking Q8_0 and loading loads Q8_0, and the status line names the file."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("needs llama-cpp-python to make the quants")
    from tests.realmodel import smollm2_quants

    models = tmp_path / "models"
    link_tree(smollm2_quants(), models / "SmolLM2-quants-GGUF")
    running = start_app(models, tmp_path)
    try:
        page = browser_page
        open_model_tab(page, running.url)
        page.locator("#model-autoload input").uncheck()
        select_dropdown(page, "model-dropdown", "SmolLM2-quants-GGUF")
        page.wait_for_function("() => document.querySelector('#model-details').innerText.includes('Plan:')")
        details = page.locator("#model-details").inner_text()
        assert "Q4_K_M.gguf (Q4_K_M)" in details and "at load" in details and "at the full context" in details
        select_dropdown(page, "llamacpp-file", "smollm2-135m-instruct.Q8_0.gguf")
        page.locator("#model-estimate").click()
        page.wait_for_function("() => document.querySelector('#model-details').innerText.includes('Q8_0.gguf (Q8_0)')")
        page.locator("#model-load").click()
        text = wait_status(page, "loaded with", "smollm2-135m-instruct.Q8_0.gguf", "at load")
        assert "Q4_K_M" not in text
        open_model_tab(page, running.url)  # a reload: the page shows what the server holds
        wait_status(page, "loaded with", "smollm2-135m-instruct.Q8_0.gguf", timeout=30_000)
        screenshot(page, "model-picked-quant")
    finally:
        stop_app(running)
