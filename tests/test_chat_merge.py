"""Chats never lose a turn: two sessions with one chat open, two sends at once in one session, and stale copies
all end with every turn on disk (revisions and merges in `webui/history.py`, one writer per chat in
`webui/chat_service.py`)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from loaders.base import GenerationParams
from loaders.errors import HistoryError
from tests.test_chat_turn import FakeModel, FakeTokenizer, info, own_template
from webui import chat_prompt, chat_service
from webui.history import Chat, HistoryStore
from webui.state import AppConfig, AppState
from webui.templates import Message

GREEDY = GenerationParams(do_sample=False, max_new_tokens=16)


def fake_app(tmp_path: Path) -> AppState:
    """An app on empty folders under `tmp_path` with a fake model loaded (it answers "ok")."""
    (tmp_path / "models").mkdir()
    app = AppState(config=AppConfig(models_dir=tmp_path / "models", user_data_dir=tmp_path / "data"))
    app.models._loaded = info(FakeModel("fake", FakeTokenizer("<s>", own_template("T")), "ok"), "fake")
    return app


@pytest.fixture()
def state(tmp_path: Path) -> AppState:
    return fake_app(tmp_path)


def opened(state: AppState) -> tuple[Chat, Chat]:
    """One saved chat, opened in two sessions (two copies loaded from disk)."""
    chat = state.history.new()
    chat.messages = [Message("user", "hello"), Message("assistant", "hi")]
    state.history.save(chat)
    return state.history.load(chat.id), state.history.load(chat.id)


def send(state: AppState, session: str, chat: Chat, text: str) -> Chat:
    """A whole send, as the UI drives it; the chat the UI state would keep."""
    updates = list(chat_service.send(state, session, chat, text, GREEDY))
    return updates[-1][0]


def contents(state: AppState, chat_id: str) -> list[str]:
    return [m.content for m in state.history.load(chat_id).messages]


def test_two_sessions_each_send_and_both_turns_are_on_disk(state: AppState) -> None:
    first, second = opened(state)
    after_first = send(state, "a", first, "from A")
    after_second = send(state, "b", second, "from B")  # B's copy never saw A's turn
    assert contents(state, first.id) == ["hello", "hi", "from A", "ok", "from B", "ok"]
    assert [m.content for m in after_second.messages] == contents(state, first.id)  # the UI takes the merge back
    assert after_first.revision < after_second.revision == state.history.load(first.id).revision


def test_the_second_sessions_reply_is_answered_with_the_first_turn_in_the_prompt(state: AppState) -> None:
    first, second = opened(state)
    send(state, "a", first, "from A")
    tokenizer = state.models._loaded.model.tokenizer  # type: ignore[union-attr]
    tokenizer.encoded.clear()
    send(state, "b", second, "from B")
    assert "from A" in tokenizer.encoded[0] and "from B" in tokenizer.encoded[0]


def test_two_sends_at_once_in_one_session_keep_both_turns(state: AppState) -> None:
    hold = threading.Event()
    slow = FakeModel("slow", FakeTokenizer("<s>", own_template("T")), "ok", hold=hold)
    state.models._loaded = info(slow, "slow")
    chat, _ = opened(state)  # both sends start from the same copy (Enter plus a click)
    done: list[Chat] = []
    threads = [threading.Thread(target=lambda t=t: done.append(send(state, "s", chat, t))) for t in ("one", "two")]
    threads[0].start()
    assert slow.started.wait(10)  # the first reply is streaming
    threads[1].start()
    time.sleep(0.2)  # the second send is now waiting for the chat's writer lock
    assert threads[1].is_alive()
    hold.set()
    for thread in threads:
        thread.join(20)
    assert contents(state, chat.id) == ["hello", "hi", "one", "ok", "two", "ok"]
    assert [m.content for m in done[-1].messages] == contents(state, chat.id)


def test_a_save_while_streaming_keeps_the_reply_last_and_the_other_turn(state: AppState) -> None:
    mine, other = opened(state)
    mine = chat_prompt.add_user_message(mine, "mine")
    state.history.save(mine)
    reply = chat_prompt.StreamedReply(mine, continue_last=False)
    state.history.save(reply.update("par"))
    other = state.history.load(mine.id)  # as a second process would: sees the partial reply ...
    other.messages[-1] = Message("assistant", "partial reply, taken over")
    state.history.save(other)  # ... and saves (a newer revision than the streaming copy's)
    state.history.save(reply.update("partial reply done"))
    assert contents(state, mine.id)[-1] == "partial reply done"
    assert "partial reply, taken over" in contents(state, mine.id)


def test_a_file_without_a_revision_reads_as_revision_0_and_merges(state: AppState) -> None:
    first, second = opened(state)
    path = state.history.path(first.id)
    data = json.loads(path.read_text(encoding="utf-8"))
    del data["revision"]
    path.write_text(json.dumps(data), encoding="utf-8")
    old_a, old_b = state.history.load(first.id), state.history.load(first.id)
    assert old_a.revision == 0
    send(state, "a", old_a, "A")
    send(state, "b", old_b, "B")
    assert contents(state, first.id) == ["hello", "hi", "A", "ok", "B", "ok"]


def test_edits_of_a_stale_copy_refuse_instead_of_dropping_a_turn(state: AppState) -> None:
    first, second = opened(state)
    send(state, "a", first, "from A")
    with pytest.raises(HistoryError, match="another tab"):
        list(chat_service.regenerate(state, "b", second, GREEDY))
    with pytest.raises(HistoryError, match="another tab"):
        chat_service.remove_last(state, second)
    with pytest.raises(HistoryError, match="another tab"):
        chat_service.clear(state, second)
    assert contents(state, first.id) == ["hello", "hi", "from A", "ok"]
    fresh = state.history.load(first.id)
    chat, text = chat_service.remove_last(state, fresh)
    assert text == "from A" and contents(state, first.id) == ["hello", "hi"] == [m.content for m in chat.messages]


def test_an_edit_waits_for_a_streaming_turn_then_says_why(state: AppState, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chat_service, "EDIT_WAIT_SECONDS", 0.05)
    chat, _ = opened(state)
    lock = state.history.chat_lock(chat.id)
    with lock, pytest.raises(HistoryError, match="being written"):
        chat_service.clear(state, chat)
    assert not lock.locked()


def test_a_closed_stream_releases_the_chat(state: AppState) -> None:
    chat, _ = opened(state)
    stream = chat_service.send(state, "s", chat, "x", GREEDY)
    next(stream)
    assert state.history.chat_lock(chat.id).locked()
    stream.close()  # a client gone mid-reply
    assert not state.history.chat_lock(chat.id).locked()
    assert contents(state, chat.id)[:3] == ["hello", "hi", "x"]


def test_stores_on_one_folder_share_the_chat_lock(tmp_path: Path) -> None:
    assert HistoryStore(tmp_path).chat_lock("a") is HistoryStore(tmp_path / ".." / tmp_path.name).chat_lock("a")
    assert HistoryStore(tmp_path).chat_lock("a") is not HistoryStore(tmp_path).chat_lock("b")


# --- a browser tab's view of its chat (TabRef) -----------------------------------------------------------------------


SETTINGS = chat_service.ChatSettings(mode="instruct", template="auto")


def test_a_send_from_a_tab_behind_the_file_goes_after_its_messages_and_says_so(state: AppState) -> None:
    chat, _ = opened(state)
    tab = chat_service.TabRef.of(chat)  # this tab showed revision 1
    send(state, "other", state.history.load(chat.id), "from the other tab")
    to_send, note = chat_service.chat_to_send(state, tab, SETTINGS)
    assert note == chat_service.BEHIND
    assert [m.content for m in to_send.messages][-2:] == ["from the other tab", "ok"]
    send(state, "mine", to_send, "mine")
    assert contents(state, chat.id) == ["hello", "hi", "from the other tab", "ok", "mine", "ok"]
    current = chat_service.TabRef.of(state.history.load(chat.id))
    assert chat_service.chat_to_send(state, current, SETTINGS)[1] == ""


def test_an_edit_from_a_tab_behind_the_file_gets_the_chat_as_saved_now(state: AppState) -> None:
    chat, _ = opened(state)
    tab = chat_service.TabRef.of(chat)
    send(state, "other", state.history.load(chat.id), "from the other tab")
    with pytest.raises(chat_service.StaleChat) as stale:
        chat_service.chat_to_edit(state, tab, SETTINGS)
    assert [m.content for m in stale.value.chat.messages][-2:] == ["from the other tab", "ok"]
    fresh = chat_service.TabRef.of(stale.value.chat)
    assert chat_service.chat_to_edit(state, fresh, SETTINGS).revision == stale.value.chat.revision


def test_no_model_refuses_a_send_before_anything_is_saved(state: AppState) -> None:
    state.models._loaded = None
    chat = state.history.new()
    with pytest.raises(chat_service.ModelNotLoadedError, match="still in the box"):
        list(chat_service.send(state, "s", chat, "hello?", GREEDY))
    assert state.history.list() == []


def test_a_tab_ref_from_the_browser_is_checked(state: AppState) -> None:
    TabRef = chat_service.TabRef
    assert TabRef.from_browser({"id": "abc", "revision": 3}) == TabRef("abc", 3)
    for junk in (None, "x", {"id": 5, "revision": 1}, {"id": "a", "revision": True}, {"id": "a"}):
        assert TabRef.from_browser(junk) == TabRef()
    assert chat_service.saved_chat(state, TabRef("../../etc/passwd", 1)) is None  # not a chat id: no chat
    assert chat_service.saved_chat(state, TabRef("gone-chat", 1)) is None


def test_an_empty_reply_is_explained(state: AppState) -> None:
    from webui.engine import GenerationStats

    chat = Chat(id="c", template="llama-2-chat", messages=[Message("user", "hi"), Message("assistant", "")])
    stats = GenerationStats(prompt_tokens=10, new_tokens=0, seconds=0.1, stop_reason="eos")
    note = chat_service.reply_note(state, chat, stats)
    assert "empty" in note and "'llama-2-chat'" in note and "'auto'" in note
    chat.template = "auto"
    assert "Prompt view" in chat_service.reply_note(state, chat, stats) and "'auto'" not in chat_service.reply_note(
        state, chat, stats)
    chat.messages[-1] = Message("assistant", "Hello")
    assert chat_service.reply_note(state, chat, stats) == ""
