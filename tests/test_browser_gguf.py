"""Browser test of issue 5: both GGUF loaders (llama.cpp through llama-cpp-python, and the native `gguf` loader on
our own kernels) load SmolLM2 Q4_1 from the Model tab and drive the Chat tab to a reply."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser import screenshot, select_dropdown, start_app, stop_app
from tests.conftest import link_tree

pytestmark = pytest.mark.browser

GGUF = "SmolLM2-135M-Instruct-GGUF"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path):
    root = tmp_path_factory.mktemp("gguf-chat")
    link_tree(smollm2_gguf.parent, root / "models" / GGUF)
    running = start_app(root / "models", root, "--data-dir", str(root / "data"))
    yield running
    stop_app(running)


def load_with(page, loader: str) -> str:
    page.get_by_role("tab", name="Model").click()
    select_dropdown(page, "model-loader", loader)
    # The loader's own controls, filled from the file (n_ctx from the GGUF metadata), and only those.
    key = loader.replace(".", "")
    page.locator(f"#loader-{key}").first.wait_for(state="visible")
    assert int(page.locator(f"#{key}-n_ctx input[type=number]").input_value()) == 8192
    assert not page.locator("#loader-transformers").first.is_visible()
    page.locator("#model-load").click()
    page.wait_for_function(
        "want => document.querySelector('#model-status').innerText.includes(want)",
        arg=f"{GGUF} loaded with {loader} from",
        timeout=240_000,
    )
    return page.locator("#model-status").inner_text()


def chat_reply(page, message: str) -> str:
    page.get_by_role("tab", name="Chat").click()
    page.locator("#chat-new").click()
    page.wait_for_function("() => document.querySelector('#chat-status').innerText.includes('New chat')")
    page.locator("#chat-input textarea").fill(message)
    page.locator("#chat-send").click()
    page.wait_for_function(
        "() => document.querySelector('#chat-status').innerText.includes('tokens/s')", timeout=240_000
    )
    return page.locator("#chat-box [data-testid='bot']").last.inner_text()


@pytest.mark.parametrize("loader", ["llama.cpp", "gguf"])
def test_gguf_loader_drives_the_chat_tab(app, browser_page, loader: str) -> None:
    page = browser_page
    page.goto(app.url)
    page.get_by_role("tab", name="Parameters").click()
    limit = page.locator("#param-max_new_tokens input[type=number]")
    limit.fill("12")
    limit.press("Enter")
    page.get_by_role("tab", name="Model").click()
    page.locator("#model-autoload input").uncheck()  # load once, with the loader picked below
    select_dropdown(page, "model-dropdown", GGUF)
    page.wait_for_function("() => document.querySelector('#model-details').innerText.includes('Detected')")

    status = load_with(page, loader)
    assert "context 8192 tokens" in status, status
    reply = chat_reply(page, "What is the capital of France?")
    screenshot(page, f"gguf-chat-{loader}")
    assert reply.strip(), "the reply is empty"
    stats = page.locator("#chat-status").inner_text()
    assert "Traceback" not in stats and "Error:" not in stats, stats
