"""Chat export and import (webui/chat_io.py) and the Past chats list (webui/chat_list.py): Corral's JSON round
trip, Markdown, OpenAI `messages` and text-generation-webui files, hostile files refused with a message that does
not quote them, titles from the first words made unique with the date, newest first, search."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from loaders.errors import HistoryError
from webui import chat_io
from webui.chat_list import MAX_SHOWN, chat_choices, chat_labels
from webui.chat_prompt import add_user_message, chat_title
from webui.history import ChatSummary, HistoryStore
from webui.templates import Message


@pytest.fixture()
def store(tmp_path: Path) -> HistoryStore:
    return HistoryStore(tmp_path / "chats")


def saved_chat(store: HistoryStore):
    chat = store.new(mode="chat-instruct", template="llama-2-chat", system_prompt="Be brief.", user_name="Ann")
    chat = add_user_message(chat, "Tell me about ships and the sea")
    chat.messages.append(Message("assistant", "Ships sail.\n\n```py\nx = 1\n```"))
    store.save(chat)
    return chat


def test_corral_json_round_trips_as_a_new_chat(store: HistoryStore, tmp_path: Path) -> None:
    chat = saved_chat(store)
    json_path, md_path = chat_io.export_files(chat, tmp_path / "out")
    imported = chat_io.read_import_file(json_path, store=store)
    assert imported.source == "Corral" and imported.chat.id != chat.id
    assert (imported.chat.messages, imported.chat.mode, imported.chat.system_prompt) == (
        chat.messages, chat.mode, chat.system_prompt)
    store.save(imported.chat)
    assert store.load(chat.id).messages == chat.messages  # the original is untouched
    markdown = md_path.read_text()
    assert markdown.startswith("# Tell me about ships and the sea") and "## Ann" in markdown
    assert "## System prompt\n\nBe brief." in markdown and "```py\nx = 1\n```" in markdown


def test_openai_messages_become_a_chat(store: HistoryStore) -> None:
    data = {"messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "image_url", "image_url": {}},
                                     {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": "Hello."},
        {"role": "tool", "content": "{}", "tool_call_id": "x"},
    ]}  # fmt: skip
    imported = chat_io.read_import(json.dumps(data).encode(), store=store)
    assert imported.source == "OpenAI messages" and imported.chat.system_prompt == "You are terse."
    assert imported.chat.messages == [Message("user", "Hi there"), Message("assistant", "Hello.")]
    assert imported.notes and "1 tool" in imported.notes[0]
    assert chat_io.read_import(json.dumps(data["messages"][:3]).encode(), store=store).chat.title == "Hi there"


def test_text_generation_webui_history_becomes_a_chat(store: HistoryStore) -> None:
    data = {"internal": [[chat_io.TGWUI_GREETING, "Welcome!"], ["What is 2+2?", "4"], ["Thanks", ""]],
            "visible": [["", "Welcome!"], ["What is 2+2?", "4"], ["Thanks", ""]]}  # fmt: skip
    imported = chat_io.read_import(json.dumps(data).encode(), store=store)
    assert imported.source == "text-generation-webui" and imported.chat.mode == "chat"
    assert [(m.role, m.content) for m in imported.chat.messages] == [
        ("assistant", "Welcome!"), ("user", "What is 2+2?"), ("assistant", "4"), ("user", "Thanks")]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\xff\xfe not text", "not UTF-8"),
        (b"{not json", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (json.dumps({"something": "else"}).encode(), "is not a Corral chat"),
        (json.dumps({"messages": [{"role": "wizard", "content": "SECRET-TEXT"}]}).encode(), "role"),
        (json.dumps({"internal": [["only one SECRET-TEXT"]]}).encode(), "pair"),
        (json.dumps({"version": 1, "mode": "chat", "messages": [{"role": "user", "content": 5}], "id": "x",
                     "title": "SECRET-TEXT"}).encode(), "a field is missing"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}] * (chat_io.MAX_MESSAGES + 1)}).encode(),
         "messages"),
    ],
)
def test_bad_files_are_refused_without_quoting_them(store: HistoryStore, data: bytes, expected: str) -> None:
    with pytest.raises(HistoryError, match=expected) as caught:
        chat_io.read_import(data, store=store)
    assert "SECRET-TEXT" not in str(caught.value)


def test_a_file_too_big_is_refused_before_it_is_read(store: HistoryStore, tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    with open(big, "wb") as out:
        out.truncate(chat_io.MAX_IMPORT_BYTES + 1)
    with pytest.raises(HistoryError, match="may have"):
        chat_io.read_import_file(big, store=store)


def test_titles_are_the_first_words() -> None:
    assert chat_title("  What is   the capital of France?  ") == "What is the capital of France?"
    long = chat_title("one two three four five six seven eight nine ten")
    assert long == "one two three four five six seven eight..."
    assert len(chat_title("x" * 200)) <= 51


def test_labels_are_unique_dated_and_stable_and_the_list_is_searchable() -> None:
    noon = time.mktime((2025, 3, 1, 12, 0, 0, 0, 0, -1))
    chats = [ChatSummary("c", "Hello", noon + 30, 2, created=noon + 20), ChatSummary("b", "Hello", noon + 20, 2,
             created=noon + 10), ChatSummary("a", "Hello", noon + 10, 2, created=noon)]  # fmt: skip
    labels = chat_labels(chats)
    assert labels == {"a": "Hello, 2025-03-01 12:00", "b": "Hello, 2025-03-01 12:00 (2)",
                      "c": "Hello, 2025-03-01 12:00 (3)"}  # fmt: skip
    assert chat_labels(chats[1:]) == {k: labels[k] for k in ("a", "b")}  # a newer chat changes no older label
    assert [i for _, i in chat_choices(chats)] == ["c", "b", "a"]  # as listed: newest first
    assert [i for _, i in chat_choices(chats, "hello (2)")] == ["b"]
    assert chat_choices(chats, "nothing") == []
    many = [ChatSummary(str(i), f"t{i}", float(i), 1, float(i)) for i in range(MAX_SHOWN + 5)]
    assert len(chat_choices(many)) == MAX_SHOWN
