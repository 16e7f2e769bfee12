"""Browser test: the Notebook's "Fill in the middle" mode fills the <FILL_ME> of a text in place on a model with FIM
tokens (SmolLM2 with StarCoder's, `tests/fim_fixtures.py`), and Undo brings the marker back; then the Model tab's
LoRA box applies an adapter to the loaded model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests import fim_fixtures, lora_fixtures
from tests.browser import screenshot, select_dropdown, start_app, stop_app
from tests.conftest import link_tree

pytestmark = pytest.mark.browser

PREFIX, SUFFIX = "Count to ten: 1, 2, 3, 4, ", "7, 8, 9, 10."


@pytest.fixture()
def app(tmp_path: Path):
    models, loras = tmp_path / "models", tmp_path / "loras"
    link_tree(fim_fixtures.smollm2_starcoder_fim(), models / "SmolLM2-FIM")
    shutil.copytree(lora_fixtures.smollm2_adapter("mlp"), loras / "smollm2-mlp")
    running = start_app(models, tmp_path, "--data-dir", str(tmp_path / "data"), "--loras-dir", str(loras))
    yield running
    stop_app(running)


def test_notebook_fills_the_middle_and_the_model_tab_applies_an_adapter(app, browser_page) -> None:
    page = browser_page
    page.goto(app.url)
    page.get_by_role("tab", name="Model").click()
    select_dropdown(page, "model-dropdown", "SmolLM2-FIM")
    page.wait_for_function("() => document.querySelector('#model-status').innerText.includes('loaded with')",
                           timeout=180_000)  # fmt: skip
    page.get_by_role("tab", name="Parameters").click()
    limit = page.locator("#param-max_new_tokens input[type=number]")
    limit.fill("16")
    limit.press("Enter")

    page.get_by_role("tab", name="Notebook").click()
    page.locator("#notebook-mode").get_by_text("Fill in the middle", exact=True).click()
    page.locator("#notebook-text textarea").fill(f"{PREFIX}<FILL_ME>{SUFFIX}")
    page.locator("#notebook-generate").click()
    page.wait_for_function("() => document.querySelector('#notebook-status').innerText.includes('tokens/s')",
                           timeout=120_000)  # fmt: skip
    text = page.locator("#notebook-text textarea").input_value()
    screenshot(page, "notebook-fill")
    assert text.startswith(PREFIX) and text.endswith(SUFFIX) and "<FILL_ME>" not in text
    middle = text[len(PREFIX) : len(text) - len(SUFFIX)]
    assert middle.strip() and "7, 8, 9" not in middle, middle
    page.get_by_role("button", name="Undo").click()
    page.wait_for_function("() => document.querySelector('#notebook-text textarea').value.includes('<FILL_ME>')")

    page.get_by_role("tab", name="Model").click()
    page.locator("#lora-box").get_by_text("LoRA adapters").first.click()
    page.locator("#lora-refresh").click()
    select_dropdown(page, "lora-names", "smollm2-mlp")
    page.locator("#lora-scales textarea").fill("0.5")
    page.locator("#lora-apply").click()
    page.wait_for_function("() => document.querySelector('#lora-status').innerText.includes('smollm2-mlp × 0.5')")
    screenshot(page, "model-lora")
