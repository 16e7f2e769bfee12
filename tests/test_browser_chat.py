"""Browser test of the first slice: the app started as the README starts it, a real model picked and autoloaded in
the Model tab, a chat message sent, and the streamed reply read back; then the Notebook continues a text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.browser import screenshot, select_dropdown, start_app, stop_app
from tests.conftest import link_tree

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, smollm2_hf: Path):
    """One app for the module (the page shows what it holds: a model loaded by the first test stays loaded)."""
    root = tmp_path_factory.mktemp("chat")
    link_tree(smollm2_hf, root / "models" / "SmolLM2-135M-Instruct")
    running = start_app(root / "models", root, "--data-dir", str(root / "data"))
    yield running
    stop_app(running)


def load_model(page, name: str) -> None:
    page.get_by_role("tab", name="Model").click()
    page.wait_for_function("() => document.querySelector('#model-status')?.innerText.trim()")  # filled on load
    if f"{name} loaded with" in page.locator("#model-status").inner_text():
        return
    select_dropdown(page, "model-dropdown", name)
    page.wait_for_function(
        "() => document.querySelector('#model-status').innerText.includes('loaded with')", timeout=180_000
    )


QUESTION = "What is the capital of France? Answer in one sentence, then say one thing about the city."


def test_chat_streams_a_reply_from_smollm2(app, browser_page) -> None:
    page = browser_page
    page.goto(app.url)
    load_model(page, "SmolLM2-135M-Instruct")
    assert "SmolLM2-135M-Instruct" in page.locator("#model-status").inner_text()

    page.get_by_role("tab", name="Chat").click()
    page.locator("#chat-input textarea").fill(QUESTION)
    # Streaming: every text the bot message shows is recorded as the page changes it (polling missed a short reply
    # that a fast decode finished between two looks).
    page.evaluate("""() => {
        window.botTexts = new Set();
        new MutationObserver(() => {
            const bot = [...document.querySelectorAll("#chat-box [data-testid='bot']")].pop();
            if (bot && bot.innerText.trim()) window.botTexts.add(bot.innerText);
        }).observe(document.querySelector("#chat-box"), {subtree: true, childList: true, characterData: true});
    }""")
    page.locator("#chat-send").click()

    bot = page.locator("#chat-box [data-testid='bot']").last
    bot.wait_for(timeout=120_000)
    page.wait_for_function("() => document.querySelector('#chat-status').innerText.includes('tokens/s')",
                           timeout=120_000)  # fmt: skip
    final = bot.inner_text()
    screenshot(page, "chat-reply")
    assert final.strip(), "the reply is empty"
    seen = page.evaluate("() => [...window.botTexts]")
    assert len(seen) >= 2 or len(final.split()) <= 3, f"the reply did not stream: {seen}"

    # The chat is on disk after the reply, with both messages.
    chats = list((app.log.parent / "data" / "chats").glob("*.json"))
    saved = [json.loads(p.read_text()) for p in chats]
    assert any(m["content"] == QUESTION for c in saved for m in c["messages"])
    assert any(
        re.sub(r"\s+", " ", m["content"]).strip() == re.sub(r"\s+", " ", final).strip()
        for c in saved
        for m in c["messages"]
        if m["role"] == "assistant"
    )


def test_notebook_continues_text(app, browser_page) -> None:
    page = browser_page
    page.goto(app.url)
    load_model(page, "SmolLM2-135M-Instruct")
    page.get_by_role("tab", name="Parameters").click()
    limit = page.locator("#param-max_new_tokens input[type=number]")
    limit.fill("24")
    limit.press("Enter")
    page.get_by_role("tab", name="Notebook").click()
    page.locator("#notebook-text textarea").fill("The three primary colors are")
    page.locator("#notebook-generate").click()
    page.wait_for_function(
        "() => document.querySelector('#notebook-status').innerText.includes('tokens/s')", timeout=120_000
    )
    text = page.locator("#notebook-text textarea").input_value()
    screenshot(page, "notebook")
    assert text.startswith("The three primary colors are")
    assert len(text) > len("The three primary colors are") + 5
    status = page.locator("#notebook-status").inner_text()
    assert re.search(r"\b(2[0-4]|1\d|\d) tokens in", status), status  # max_new_tokens from the Parameters tab
