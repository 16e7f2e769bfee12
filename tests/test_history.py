"""Chat histories on disk: roundtrip, newest-first listing from the index, atomic saves, damaged files reported by
the listing and quarantined by `load` (never deleted)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest

from loaders.errors import HistoryError
from webui.history import INDEX_NAME, Chat, HistoryStore, chat_to_json
from webui.templates import Message


@pytest.fixture()
def store(tmp_path: Path) -> HistoryStore:
    return HistoryStore(tmp_path / "chats")


def sample(store: HistoryStore, title: str, updated: float) -> Chat:
    chat = store.new(mode="chat-instruct", template="llama-2-chat", system_prompt="Be brief.",
                     user_name="Ann", bot_name="Bob")  # fmt: skip
    chat.title = title
    chat.messages = [Message("user", f"Hello from {title} — ünïcödé ✓"), Message("assistant", "Hi!\n\n```py\nx\n```")]
    chat.updated = updated
    return chat


def test_save_load_roundtrip(store: HistoryStore) -> None:
    chat = sample(store, "first", 1000.0)
    path = store.save(chat)
    assert path == store.directory / f"{chat.id}.json"
    assert store.load(chat.id) == chat
    assert json.loads(path.read_text(encoding="utf-8"))["messages"][0]["content"].endswith("✓")


def test_list_is_newest_first(store: HistoryStore) -> None:
    old, new, middle = sample(store, "old", 100.0), sample(store, "new", 300.0), sample(store, "middle", 200.0)
    for chat in (old, new, middle):
        store.save(chat)
    listed = store.list()
    assert [s.title for s in listed] == ["new", "middle", "old"]
    assert [s.id for s in listed] == [new.id, middle.id, old.id]
    assert all(s.message_count == 2 for s in listed)


def test_new_chat_is_not_written_until_saved(store: HistoryStore) -> None:
    chat = store.new()
    assert chat.id and chat.messages == [] and chat.display_title == "New chat"
    assert store.list() == []
    assert store.new().id != chat.id


def test_delete(store: HistoryStore) -> None:
    chat = sample(store, "doomed", 1.0)
    store.save(chat)
    store.delete(chat.id)
    assert store.list() == []
    with pytest.raises(HistoryError):
        store.load(chat.id)
    with pytest.raises(HistoryError):
        store.delete(chat.id)


def test_failed_write_leaves_the_previous_version_and_no_partial_file(
    store: HistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    chat = sample(store, "safe", 1.0)
    store.save(chat)
    before = store.path(chat.id).read_bytes()

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    changed = dataclasses.replace(chat, messages=[*chat.messages, Message("user", "lost?")])
    with pytest.raises(OSError, match="No space"):
        store.save(changed)
    monkeypatch.undo()
    assert store.path(chat.id).read_bytes() == before
    assert sorted(p.name for p in store.directory.iterdir()) == sorted([f"{chat.id}.json", INDEX_NAME])
    assert store.load(chat.id) == chat


@pytest.mark.parametrize(
    "content",
    [
        '{"version": 1, "id": "x", "messages": [',  # truncated JSON
        "[1, 2, 3]",
        '{"version": 1, "id": "x", "title": "t", "mode": "chat", "template": "auto", "system_prompt": "",'
        ' "user_name": "a", "bot_name": "b", "created": 1, "updated": 1,'
        ' "messages": [{"role": "robot", "content": ""}]}',
        '{"version": 99}',
    ],
)
def test_damaged_file_is_reported_by_the_listing_and_quarantined_by_load(store: HistoryStore, content: str) -> None:
    good = sample(store, "good", 5.0)
    store.save(good)
    broken = store.directory / "20240101-000000-abcdef.json"
    broken.write_text(content, encoding="utf-8")

    listing = store.scan()
    assert [s.id for s in listing.chats] == [good.id]
    assert len(listing.problems) == 1 and "20240101-000000-abcdef" in listing.problems[0]
    assert broken.read_text(encoding="utf-8") == content  # listing moves nothing
    assert [s.id for s in store.list()] == [good.id]
    assert len(store.scan().problems) == 1  # still reported while the file is there
    with pytest.raises(HistoryError, match="moved to"):
        store.load("20240101-000000-abcdef")
    (moved,) = store.directory.glob("20240101-000000-abcdef.broken-*.json")
    assert moved.read_text(encoding="utf-8") == content  # the user's data is kept as it was
    assert [s.id for s in store.list()] == [good.id]  # quarantined files are not listed
    assert store.scan().problems == []


def test_load_of_damaged_file_names_it(store: HistoryStore) -> None:
    path = store.directory / "abc.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(HistoryError, match="abc.json") as caught:
        store.load("abc")
    assert "moved to" in str(caught.value)
    assert list(store.directory.glob("abc.broken-*.json"))


@pytest.mark.parametrize("chat_id", ["../x", "a/b", "", "a.b", "x" * 200])
def test_bad_ids_are_refused(store: HistoryStore, chat_id: str) -> None:
    with pytest.raises(HistoryError):
        store.load(chat_id)
    with pytest.raises(HistoryError):
        store.save(Chat(id=chat_id))


def test_save_is_cheap_for_a_long_chat(store: HistoryStore) -> None:
    chat = sample(store, "long", 1.0)
    chat.messages = [Message("user" if i % 2 == 0 else "assistant", "word " * 200) for i in range(400)]
    start = time.perf_counter()
    store.save(chat)
    assert time.perf_counter() - start < 1.0
    assert len(store.load(chat.id).messages) == 400


def test_listing_reads_the_index_not_the_chat_files(store: HistoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    chats = [sample(store, f"chat {i}", float(i)) for i in range(5)]
    for chat in chats:
        store.save(chat)
    read: list[str] = []
    original = Path.read_bytes

    def counting(path: Path) -> bytes:
        read.append(path.name)
        return original(path)

    monkeypatch.setattr(Path, "read_bytes", counting)
    assert [s.title for s in store.list()] == [f"chat {i}" for i in reversed(range(5))]
    assert read == []  # every chat came from the index
    chats[2].title = "renamed"
    store.save(chats[2])
    assert store.list()[2].title == "renamed" and read == []


def test_files_changed_or_copied_by_hand_are_picked_up(store: HistoryStore) -> None:
    first = sample(store, "first", 1.0)
    store.save(first)
    assert [s.title for s in store.list()] == ["first"]
    copied = sample(store, "copied", 2.0)
    copied_path = store.directory / f"{copied.id}.json"
    copied_path.write_text(json.dumps(chat_to_json(copied)), encoding="utf-8")  # not through save()
    edited = dataclasses.replace(first, title="edited by hand", messages=first.messages[:1])
    store.path(first.id).write_text(json.dumps(chat_to_json(edited)) + "\n" * 3, encoding="utf-8")
    listed = store.list()
    assert [(s.title, s.message_count) for s in listed] == [("copied", 2), ("edited by hand", 1)]
    copied_path.unlink()  # removed by hand
    assert [s.title for s in store.list()] == ["edited by hand"]


def test_damaged_or_missing_index_is_rebuilt(store: HistoryStore) -> None:
    chat = sample(store, "kept", 1.0)
    store.save(chat)
    index = store.directory / INDEX_NAME
    index.write_text("{not json", encoding="utf-8")
    assert [s.title for s in store.list()] == ["kept"]
    assert json.loads(index.read_text(encoding="utf-8"))["chats"][chat.id]["title"] == "kept"
    index.unlink()
    assert [s.title for s in store.list()] == ["kept"] and index.exists()


def test_delete_updates_the_index(store: HistoryStore) -> None:
    keep, doomed = sample(store, "keep", 1.0), sample(store, "doomed", 2.0)
    store.save(keep)
    store.save(doomed)
    store.delete(doomed.id)
    entries = json.loads((store.directory / INDEX_NAME).read_text(encoding="utf-8"))["chats"]
    assert list(entries) == [keep.id]


def test_concurrent_saves_keep_every_chat_in_the_index(store: HistoryStore) -> None:
    import threading

    chats = [sample(store, f"t{i}", float(i)) for i in range(16)]
    threads = [threading.Thread(target=store.save, args=(chat,)) for chat in chats]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    entries = json.loads((store.directory / INDEX_NAME).read_text(encoding="utf-8"))["chats"]
    assert sorted(entries) == sorted(chat.id for chat in chats)


def test_a_chat_saved_after_the_store_was_made_is_listed_by_a_fresh_read(store: HistoryStore) -> None:
    first = sample(store, "before", 1.0)
    store.save(first)
    assert [s.title for s in store.list()] == ["before"]  # the index now exists
    later = HistoryStore(store.directory)  # another tab's, or the same store later: the list is read each time
    second = sample(later, "after", 2.0)
    later.save(second)
    assert [s.title for s in store.list()] == ["after", "before"]
    assert [s.title for s in HistoryStore(store.directory).list()] == ["after", "before"]


def test_every_save_bumps_the_revision_and_old_files_read_as_revision_0(store: HistoryStore) -> None:
    chat = sample(store, "counted", 1.0)
    store.save(chat)
    store.save(chat)
    assert chat.revision == 2 == store.load(chat.id).revision
    path = store.path(chat.id)
    data = json.loads(path.read_text(encoding="utf-8"))
    del data["revision"]
    path.write_text(json.dumps(data), encoding="utf-8")
    assert store.load(chat.id).revision == 0
    data["revision"] = -1
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(HistoryError, match="revision"):
        store.load(chat.id)


def test_trash_moves_the_chat_aside_for_30_days_and_moving_it_back_restores_it(store: HistoryStore) -> None:
    import os

    from webui.history import TRASH_DAYS

    keep, doomed = sample(store, "keep", 1.0), sample(store, "doomed", 2.0)
    store.save(keep)
    store.save(doomed)
    moved = store.trash(doomed.id)
    assert moved.parent == store.trash_dir == store.directory.parent / "trash" / "chats"
    assert [s.title for s in store.list()] == ["keep"] and not store.path(doomed.id).exists()
    assert json.loads(moved.read_text(encoding="utf-8"))["title"] == "doomed"  # kept as it was
    os.replace(moved, store.path(doomed.id))  # restore by hand: the listing picks it up
    assert [s.title for s in store.list()] == ["doomed", "keep"]
    old = store.trash(doomed.id, now=time.time() - (TRASH_DAYS + 1) * 86400)
    store.trash(keep.id)  # trashing another purges the trash of what is older than TRASH_DAYS
    assert not old.exists() and len(list(store.trash_dir.iterdir())) == 1
    with pytest.raises(HistoryError, match="No saved chat"):
        store.trash(keep.id)


def test_a_save_that_takes_in_another_copys_turn_says_so(store: HistoryStore) -> None:
    chat = sample(store, "shared", 1.0)
    store.save(chat)
    mine, theirs = store.load(chat.id), store.load(chat.id)
    theirs.messages.append(Message("user", "from the other tab"))
    store.save(theirs)
    assert not theirs.merged
    mine.messages.append(Message("user", "mine"))
    store.save(mine)
    assert mine.merged and [m.content for m in mine.messages][-2:] == ["from the other tab", "mine"]


def test_the_listing_carries_when_each_chat_was_started(store: HistoryStore) -> None:
    chat = sample(store, "dated", 5.0)
    chat.created = 3.0
    store.save(chat)
    assert store.list()[0].created == 3.0
    index = store.directory / INDEX_NAME
    data = json.loads(index.read_text(encoding="utf-8"))
    data["version"] = 1  # an index written before `created` existed is rebuilt from the files
    for entry in data["chats"].values():
        entry.pop("created", None)
    index.write_text(json.dumps(data), encoding="utf-8")
    assert HistoryStore(store.directory).list()[0].created == 3.0
