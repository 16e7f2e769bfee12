"""Browser tests of issue 14: the page tells the server's truth after a reload, in two tabs, across a server
restart, and shows the exact prompt. One app and one browser for the module; the scenarios run in order and build
on each other (a GPTQ model loaded and its settings saved; then chats), short replies throughout.

1. A message sent with no model loaded stays in the box and nothing is saved.
2. GPTQ SmolLM2 loaded, its preset (Min-P) and settings saved; after a reload the Model tab shows the model, its
   GPTQ controls and status, the sliders hold the preset file's values, and Save / Reload work.
3. The Llama-2 template on this ChatML model: the Prompt view shows `[INST] <<SYS>>` ... `[/INST]`; a reload with
   the chat open shows the chat and the list.
4. Two tabs send to the same chat at once: both turns are on disk, and the tab that was behind is told.
5. The server restarts under an open tab; a message sent from it keeps the saved history intact.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests import gptq_fixtures
from tests.browser import (
    app_port,
    browser_context,
    doc_screenshots,
    screenshot,
    select_dropdown,
    start_app,
    stop_app,
    wait_text,
)
from tests.conftest import link_tree
from webui.config import REPO_ROOT

pytestmark = pytest.mark.browser

GPTQ = "SmolLM2-135M-Instruct-GPTQ"
PRESET = "Min-P"  # temperature 1.0, top_p 1.0, top_k 0, min_p 0.05: none of them the defaults
MAX_NEW = "8"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ui-state")
    link_tree(gptq_fixtures.smollm2_gptq("main"), root / "models" / GPTQ)
    return root


@pytest.fixture(scope="module")
def app(root: Path):
    running = start_app(root / "models", root, "--data-dir", str(root / "data"))
    yield running
    stop_app(running)


@pytest.fixture(scope="module")
def browser():
    with browser_context(1280, 800) as context:
        yield context


@pytest.fixture(scope="module")
def page(browser, app):
    page = browser.new_page()
    page.goto(app.url)
    return page


def chats(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "data" / "chats").glob("*.json"))]


def contents(chat: dict) -> list[str]:
    return [m["content"] for m in chat["messages"]]


def set_max_new_tokens(page) -> None:
    page.get_by_role("tab", name="Parameters").click()
    box = page.locator("#param-max_new_tokens input[type=number]")
    box.fill(MAX_NEW)
    box.press("Enter")


def send(page, text: str) -> str:
    """Send `text` from the Chat tab; returns the status line as it was (for `replied`)."""
    page.get_by_role("tab", name="Chat").click()
    before = page.locator("#chat-status").inner_text()
    page.locator("#chat-input textarea").fill(text)
    page.locator("#chat-send").click()
    return before


def replied(page, before: str, timeout: float = 120_000) -> str:
    """Wait for the reply's statistics: a status line other than `before` that reports tokens/s."""
    page.wait_for_function(
        "before => { const t = document.querySelector('#chat-status')?.innerText || ''; "
        "return t !== before && t.includes('tokens/s'); }",
        arg=before,
        timeout=timeout,
    )
    return page.locator("#chat-status").inner_text()


def slider(page, name: str) -> float:
    return float(page.locator(f"#param-{name} input[type=number]").input_value())


def test_a_message_sent_without_a_model_stays_in_the_box(page, root: Path) -> None:
    send(page, "hello, anyone?")
    text = wait_text(page, "#chat-status", "No model is loaded")
    assert "Error:" in text and page.locator("#chat-input textarea").input_value() == "hello, anyone?"
    assert not (root / "data" / "chats").exists() or not chats(root)


def test_a_reload_shows_the_loaded_gptq_model_its_controls_and_its_preset(page, app) -> None:
    page.get_by_role("tab", name="Parameters").click()
    select_dropdown(page, "param-preset", PRESET)
    wait_text(page, "#param-status", f"Preset {PRESET} applied")
    page.get_by_role("tab", name="Model").click()
    select_dropdown(page, "model-dropdown", GPTQ)
    wait_text(page, "#model-status", f"{GPTQ} loaded with gptq", timeout=240_000)
    page.locator("#model-save").click()
    wait_text(page, "#model-status", "Saved settings for", GPTQ)
    saved = yaml.safe_load((app.models_dir / "config-user.yaml").read_text())
    assert saved[GPTQ]["preset"] == PRESET and saved[GPTQ]["loader"] == "gptq"

    page.reload()  # the page fills itself from the server: model, loader controls, status, preset and values
    page.get_by_role("tab", name="Model").click()
    wait_text(page, "#model-status", f"{GPTQ} loaded with gptq", timeout=30_000)
    assert page.locator("#model-dropdown input").input_value() == GPTQ
    assert page.locator("#model-loader input").input_value() == "gptq"
    assert page.locator("#loader-gptq").first.is_visible()
    assert not page.locator("#loader-transformers").first.is_visible()
    assert int(float(page.locator("#gptq-bits input[type=number]").input_value())) == 4
    wait_text(page, "#model-memory", "at load", "at full context")
    doc_screenshots(page, "model-memory-bar", focus="#model-memory")
    preset = yaml.safe_load((REPO_ROOT / "presets" / f"{PRESET}.yaml").read_text())
    page.get_by_role("tab", name="Parameters").click()
    assert page.locator("#param-preset input").input_value() == PRESET
    assert {k: slider(page, k) for k in preset} == {k: float(v) for k, v in preset.items()}

    page.get_by_role("tab", name="Model").click()
    page.locator("#model-save").click()  # the name is known again: Save and Reload work
    wait_text(page, "#model-status", "Saved settings for", GPTQ)
    page.locator("#model-reload").click()
    wait_text(page, "#model-status", "Loading")
    wait_text(page, "#model-status", f"{GPTQ} loaded with gptq", timeout=240_000)


def test_the_prompt_view_shows_the_llama2_prompt_and_a_reload_keeps_the_chat(page, root: Path) -> None:
    set_max_new_tokens(page)
    page.get_by_role("tab", name="Chat").click()
    page.locator("#chat-new").click()
    select_dropdown(page, "chat-template", "llama-2-chat")
    page.locator("#chat-system textarea").fill("Be brief.")
    replied(page, send(page, "Name a color."))
    page.locator("#chat-prompt-view").click()
    prompt = wait_text(page, "#chat-prompt", "[INST] <<SYS>>", "[/INST]", "tokens of the")
    assert "Be brief.\n<</SYS>>\n\nName a color. [/INST]" in prompt
    doc_screenshots(page, "chat-prompt-view", focus="#chat-prompt")
    screenshot(page, "chat-prompt-view")
    (saved,) = chats(root)
    assert contents(saved)[0] == "Name a color."

    page.reload()
    wait_text(page, "#chat-past", "Name a color.", timeout=30_000)
    assert page.locator("#chat-past input:checked").count() == 1  # the open chat is the one selected
    wait_text(page, "#chat-box", "Name a color.", timeout=30_000)
    assert page.locator("#chat-template input").input_value() == "llama-2-chat"


def test_two_tabs_sending_to_one_chat_keep_both_turns(page, browser, app, root: Path) -> None:
    other = browser.new_page()  # same browser: it opens the same chat, at the same revision, and lists it
    other.goto(app.url)
    wait_text(other, "#chat-box", "Name a color.", timeout=30_000)
    wait_text(other, "#chat-past", "Name a color.")
    set_max_new_tokens(other)
    set_max_new_tokens(page)
    first = send(page, "from the first tab")
    second = send(other, "from the second tab")  # at once: neither tab has seen the other's message
    statuses = {"first": replied(page, first), "second": replied(other, second)}
    (saved,) = chats(root)
    users = [m["content"] for m in saved["messages"] if m["role"] == "user"]
    assert users[0] == "Name a color." and sorted(users[1:]) == ["from the first tab", "from the second tab"]
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant"] * 3, contents(saved)
    told = [tab for tab, status in statuses.items() if "another tab" in status]
    assert len(told) == 1, statuses  # the tab whose turn went second is told, and shows the other's turn
    wait_text(page if told == ["first"] else other, "#chat-box", "from the first tab", "from the second tab")
    other.close()


def test_a_server_restart_under_an_open_tab_keeps_the_history(page, app, root: Path) -> None:
    (before,) = chats(root)
    stop_app(app)
    restarted = start_app(root / "models", root, "--data-dir", str(root / "data"), "--model", GPTQ,
                          port=app_port(app), timeout=240)  # fmt: skip
    app.process, app.log = restarted.process, restarted.log  # the module fixture stops the new one
    replied(page, send(page, "after the restart"), timeout=240_000)  # the tab was not reloaded: it keeps its chat
    (after,) = chats(root)
    assert contents(after)[: len(before["messages"])] == contents(before)
    assert contents(after)[len(before["messages"])] == "after the restart"
    assert after["revision"] > before["revision"]
