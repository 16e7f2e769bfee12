"""Browser test: a chat created in one tab is in another tab's Past chats (the list is filled as each page opens,
not when the app was built). No model is needed: the user's message is saved before the reply is asked for."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser import start_app, stop_app

pytestmark = pytest.mark.browser


@pytest.fixture()
def app(tmp_path: Path):
    models = tmp_path / "models"
    models.mkdir()
    running = start_app(models, tmp_path, "--data-dir", str(tmp_path / "data"))
    yield running
    stop_app(running)


def past_chats(page) -> list[str]:
    page.locator("#chat-past input").click()
    options = page.get_by_role("option")
    options.first.wait_for(timeout=10_000)
    names = options.all_inner_texts()
    page.keyboard.press("Escape")
    return names


def test_a_chat_created_in_one_tab_is_listed_in_a_new_tab(app, browser_page) -> None:
    first = browser_page
    first.goto(app.url)
    first.locator("#chat-input textarea").fill("hello from the first tab")
    first.locator("#chat-send").click()
    # No model is loaded, so the reply fails, but the message (and so the chat) is saved first.
    first.wait_for_function("() => document.querySelector('#chat-status').innerText.trim().length > 0")
    assert list((Path(app.log).parent / "data" / "chats").glob("*.json")), first.locator("#chat-status").inner_text()

    second = first.context.new_page()
    second.goto(app.url)
    assert any("hello from the first tab" in name for name in past_chats(second))
