"""Chat histories on disk: one JSON file per chat, `<dir>/<id>.json`, written atomically after every message.

Owns the `Chat` record (messages plus the settings a chat was held with), its JSON form, and the `HistoryStore`
that lists, loads, saves and deletes chats. Listing reads a small index (`<dir>/index.cache`, JSON: per chat its
title, time, message count and the file's mtime/size), kept up to date by `save` and `delete` under a lock and
refreshed by the listing only for files whose mtime/size changed or that it lacks (a chat file copied in by hand);
it is a cache, rebuilt from the chat files if it is damaged or deleted. Listing has no side effect on the chats:
an unreadable file is reported, not moved. `load` of a file that cannot be read as a chat moves it aside with
`fileio.quarantine` (`<id>.broken-<time>.json`) and says so; no chat file is ever deleted except by `delete`.

Chats never lose a turn: each file carries a `revision` (older files without one read as 0), bumped by every save.
`save` is a merge onto the file's current revision: a copy older than the file keeps the file's messages and
appends the copy's own (those after its `synced` prefix, i.e. the turn it added since it last matched the file),
so two tabs, or two sends in one tab, never overwrite each other's turns; the copy's `merged` flag then says so,
for the UI to tell the user. `chat_lock(id)` is the one writer per chat in this process: the chat service holds it
for a whole turn.

`trash(id)` is the UI's Delete: the file moves to `<user data>/trash/chats/` (named `<id>.<time>.json`), where it
is kept `TRASH_DAYS` days (older ones are removed at the next trash); moving it back restores it, since the listing
picks up files copied in by hand.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from loaders.errors import HistoryError
from webui.fileio import atomic_write_text, quarantine
from webui.templates import AUTO_TEMPLATE, ROLES, Message

log = logging.getLogger(__name__)

ChatMode = Literal["chat", "chat-instruct", "instruct"]
CHAT_MODES: tuple[str, ...] = get_args(ChatMode)
FORMAT_VERSION = 1
_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,80}")
_SUFFIX = ".json"
_TEXT_FIELDS = ("id", "title", "template", "system_prompt", "user_name", "bot_name")
INDEX_NAME = "index.cache"  # not "*.json": only chat files match that
INDEX_VERSION = 2  # 2: entries carry `created` (the chat list's date); a version-1 index is rebuilt once
TRASH_DAYS = 30
_LOCKS: dict[Path, threading.Lock] = {}  # one per chats folder: every store on it shares the index
_LOCKS_GUARD = threading.Lock()
_CHAT_LOCKS: dict[tuple[Path, str], threading.Lock] = {}  # one per chat: a turn is written by one writer at a time


@dataclass
class Chat:
    """One conversation. `system_prompt` is the system message in instruct mode and the context written above the
    transcript in the chat modes. `template` is a template name or "auto". Times are Unix seconds."""

    id: str
    title: str = ""
    mode: ChatMode = "instruct"
    template: str = AUTO_TEMPLATE
    system_prompt: str = ""
    user_name: str = "You"
    bot_name: str = "Assistant"
    messages: list[Message] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    revision: int = 0  # the file's revision this copy was loaded or last saved at
    # How many leading messages are the file's at `revision`; the rest are this copy's own (not saved, or changed).
    synced: int = field(default=0, compare=False, repr=False)
    # Set by a save that took in messages saved elsewhere (another tab) that this copy lacked: the UI says so.
    merged: bool = field(default=False, compare=False, repr=False)

    @property
    def display_title(self) -> str:
        return self.title or "New chat"


@dataclass(frozen=True)
class ChatSummary:
    """What the chat list shows."""

    id: str
    title: str
    updated: float
    message_count: int
    created: float = 0.0


@dataclass(frozen=True)
class ChatListing:
    """`HistoryStore.scan`: the readable chats, newest first, and one message per file that cannot be read."""

    chats: list[ChatSummary]
    problems: list[str]


@dataclass(frozen=True)
class _Entry:
    """One chat file in the index: its summary (or why it cannot be read) and the file's mtime and size then."""

    mtime_ns: int
    size: int
    title: str = ""
    updated: float = 0.0
    message_count: int = 0
    problem: str = ""
    revision: int = 0  # lets a save skip reading an unchanged file that is no newer than its copy
    created: float = 0.0

    def matches(self, stat: os.stat_result) -> bool:
        return (self.mtime_ns, self.size) == (stat.st_mtime_ns, stat.st_size)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v or k in ("mtime_ns", "size")}

    @classmethod
    def from_json(cls, data: Any) -> _Entry | None:
        """None for anything that is not an entry we wrote (the file is then read again)."""
        if not isinstance(data, dict) or not isinstance(data.get("mtime_ns"), int):
            return None
        try:
            return cls(mtime_ns=data["mtime_ns"], size=int(data["size"]), title=str(data.get("title", "")),
                       updated=float(data.get("updated", 0.0)), message_count=int(data.get("message_count", 0)),
                       problem=str(data.get("problem", "")), revision=int(data.get("revision", 0)),
                       created=float(data.get("created", 0.0)))
        except (KeyError, TypeError, ValueError):
            return None


def new_chat_id() -> str:
    """Sortable by creation time, unique enough for one user's folder."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def chat_to_json(chat: Chat) -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
        "id": chat.id,
        "title": chat.title,
        "mode": chat.mode,
        "template": chat.template,
        "system_prompt": chat.system_prompt,
        "user_name": chat.user_name,
        "bot_name": chat.bot_name,
        "created": chat.created,
        "updated": chat.updated,
        "revision": chat.revision,
        "messages": [{"role": m.role, "content": m.content} for m in chat.messages],
    }


def chat_from_json(data: Any) -> Chat:
    """Build a `Chat` from its JSON form; `ValueError` says what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    if data.get("version") != FORMAT_VERSION:
        raise ValueError(f"unknown format version {data.get('version')!r}")
    text = {key: _typed(data, key, str) for key in _TEXT_FIELDS}
    if data.get("mode") not in CHAT_MODES:
        raise ValueError(f"mode must be one of {', '.join(CHAT_MODES)}, got {data.get('mode')!r}")
    messages = [_message_from_json(item) for item in _typed(data, "messages", list)]
    revision = data.get("revision", 0)  # files written before revisions existed are revision 0
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
        raise ValueError(f"'revision' must be a whole number >= 0, got {revision!r}")
    return Chat(
        **text,
        mode=data["mode"],
        messages=messages,
        created=float(_typed(data, "created", int | float)),
        updated=float(_typed(data, "updated", int | float)),
        revision=revision,
        synced=len(messages),
    )


def merged_messages(disk: Chat, copy: Chat) -> list[Message]:
    """The messages a save of `copy` writes over `disk`: the copy's if it is as new as the file, else the file's
    followed by the copy's own (the turn it added since it last matched the file): never drops a saved turn."""
    if copy.revision >= disk.revision:
        return copy.messages
    return [*disk.messages, *copy.messages[copy.synced :]]


def common_prefix(old: list[Message], new: list[Message]) -> int:
    """How many leading messages two lists share (a chat operation keeps `synced` within them)."""
    count = 0
    for a, b in zip(old, new, strict=False):
        if a != b:
            break
        count += 1
    return count


def _typed(data: dict[str, Any], key: str, kind: Any) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"'{key}' is missing or has the wrong type ({value!r})")
    return value


def _message_from_json(item: Any) -> Message:
    if not isinstance(item, dict) or item.get("role") not in ROLES or not isinstance(item.get("content"), str):
        raise ValueError(f"a message must be {{'role': one of {', '.join(ROLES)}, 'content': text}}, got {item!r}")
    return Message(role=item["role"], content=item["content"])


@dataclass(frozen=True)
class HistoryStore:
    """The chats in `directory`."""

    directory: Path

    def new(
        self,
        *,
        mode: ChatMode = "instruct",
        template: str = AUTO_TEMPLATE,
        system_prompt: str = "",
        user_name: str = "You",
        bot_name: str = "Assistant",
    ) -> Chat:
        """A fresh, empty chat with a new id. Not written until `save` (so empty chats leave no files)."""
        if mode not in CHAT_MODES:
            raise ValueError(f"chat mode must be one of {', '.join(CHAT_MODES)}, not {mode!r}")
        return Chat(id=new_chat_id(), mode=mode, template=template, system_prompt=system_prompt,
                    user_name=user_name, bot_name=bot_name)  # fmt: skip

    def path(self, chat_id: str) -> Path:
        if not _ID_PATTERN.fullmatch(chat_id):
            raise HistoryError(f"'{chat_id}' is not a chat id (letters, digits, '-' and '_' only).")
        return self.directory / f"{chat_id}{_SUFFIX}"

    def save(self, chat: Chat) -> Path:
        """Write the chat atomically (a crash leaves the previous version or this one, never half a file), merged
        onto the file's current revision (`merged_messages`). `chat` takes the result back: the next revision and,
        if the file had turns it lacked, the merged messages (the copy's own stay last, so a streaming reply is
        still the last message)."""
        path = self.path(chat.id)
        with self._lock:  # read, merge and write as one step; the file and its index entry change together
            index = self._read_index()
            disk = self._current(path, index.get(chat.id), chat.revision)
            if disk is not None and disk.revision > chat.revision:
                log.info("Chat %s changed since this copy (revision %d < %d); merging.", chat.id,
                         chat.revision, disk.revision)  # fmt: skip
            messages = chat.messages if disk is None else merged_messages(disk, chat)
            revision = max(chat.revision, disk.revision if disk else 0) + 1
            saved = dataclasses.replace(chat, messages=messages, revision=revision)
            atomic_write_text(path, json.dumps(chat_to_json(saved), ensure_ascii=False, indent=1))
            merged = disk is not None and disk.revision > chat.revision and messages != chat.messages
            chat.messages, chat.revision, chat.synced = messages, revision, len(messages)  # only once it is written
            chat.merged = chat.merged or merged
            stat = path.stat()
            index[chat.id] = _Entry(stat.st_mtime_ns, stat.st_size, chat.title, chat.updated, len(messages),
                                    revision=revision, created=chat.created)  # fmt: skip
            self._write_index(index)
        return path

    def chat_lock(self, chat_id: str) -> threading.Lock:
        """The lock of one chat in this process: whoever writes a turn into the chat holds it for the turn. A plain
        Lock, not an RLock: a streaming turn may be resumed, and end, on another thread than the one it began on."""
        key = (self.directory.resolve(), chat_id)
        with _LOCKS_GUARD:
            return _CHAT_LOCKS.setdefault(key, threading.Lock())

    def newer(self, chat: Chat) -> Chat | None:
        """The saved chat if its file is at a newer revision than `chat` (an edit of the copy's messages could then
        drop a turn saved since), else None."""
        with self._lock:
            disk = self._current(self.path(chat.id), self._read_index().get(chat.id), chat.revision)
        return disk if disk is not None and disk.revision > chat.revision else None

    def _current(self, path: Path, known: _Entry | None, revision: int) -> Chat | None:
        """The chat in `path` as it is now, for a merge; None if there is none or it is not a readable chat (then
        the save replaces it, as it always did: `load` would have quarantined it). A file the index knows as it is,
        at no newer a revision than `revision`, is not read: its messages do not matter then, only its revision."""
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        except OSError:
            stat = None
        if stat is not None and known is not None and known.matches(stat) and known.revision <= revision:
            return Chat(id=path.stem, revision=known.revision)
        try:
            return chat_from_json(json.loads(path.read_bytes().decode("utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            log.warning("Saved chat %s cannot be read (%s); saving over it.", path, error)
            return None

    def load(self, chat_id: str) -> Chat:
        """The saved chat; a file that is not a valid chat is quarantined and raises `HistoryError` naming it."""
        path = self.path(chat_id)
        try:
            raw = path.read_bytes()
        except FileNotFoundError as error:
            raise HistoryError(f"No saved chat '{chat_id}' in {self.directory}.") from error
        except OSError as error:
            raise HistoryError(f"Saved chat {path} cannot be read: {error}") from error
        try:
            chat = chat_from_json(json.loads(raw.decode("utf-8")))
        except ValueError as error:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors too
            moved = quarantine(path)
            raise HistoryError(f"Saved chat {path} is damaged ({error}); it was moved to {moved}.") from error
        if chat.id != chat_id:
            chat.id = chat_id  # a file renamed by hand: the name on disk wins, so save() writes back to it
        return chat

    def delete(self, chat_id: str) -> None:
        path = self.path(chat_id)
        with self._lock:
            try:
                path.unlink()
            except FileNotFoundError as error:
                raise HistoryError(f"No saved chat '{chat_id}' to delete in {self.directory}.") from error
            index = self._read_index()
            if index.pop(chat_id, None) is not None:
                self._write_index(index)

    def trash(self, chat_id: str, *, now: float | None = None) -> Path:
        """Move the chat to the trash folder (Delete in the UI); returns where it went. Trashed chats older than
        `TRASH_DAYS` are removed now."""
        path = self.path(chat_id)
        now = time.time() if now is None else now
        target = self.trash_dir / f"{chat_id}.{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}{_SUFFIX}"
        with self._lock:
            try:
                self.trash_dir.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
            except FileNotFoundError as error:
                raise HistoryError(f"No saved chat '{chat_id}' to delete in {self.directory}.") from error
            except OSError as error:
                raise HistoryError(f"Could not move chat {path} to the trash {self.trash_dir}: {error}") from error
            os.utime(target, (now, now))  # the trash keeps it TRASH_DAYS from now, not from its last save
            index = self._read_index()
            if index.pop(chat_id, None) is not None:
                self._write_index(index)
        self._purge_trash(now)
        return target

    @property
    def trash_dir(self) -> Path:
        """`<user data>/trash/chats` for chats in `<user data>/chats`."""
        return self.directory.parent / "trash" / self.directory.name

    def _purge_trash(self, now: float) -> None:
        cutoff = now - TRASH_DAYS * 86400
        for item in self.trash_dir.glob(f"*{_SUFFIX}"):
            try:
                if item.stat().st_mtime < cutoff:
                    item.unlink()
            except OSError as error:  # another process got there first, or no permission: try next time
                log.warning("Could not remove %s from the trash: %s", item, error)

    def scan(self) -> ChatListing:
        """All readable chats, newest first, from the index; files it does not know as they are now are read (and
        the index updated). Unreadable files are reported in `problems` and left where they are."""
        with self._lock:
            index = self._read_index()
            fresh = {chat_id: self._entry(path, stat, index.get(chat_id)) for chat_id, path, stat in self._chat_files()}
            if fresh != index:
                self._write_index(fresh)
        chats = [ChatSummary(chat_id, e.title or "New chat", e.updated, e.message_count, e.created or e.updated)
                 for chat_id, e in fresh.items() if not e.problem]
        chats.sort(key=lambda summary: summary.updated, reverse=True)
        return ChatListing(chats=chats, problems=[e.problem for e in fresh.values() if e.problem])

    def list(self) -> list[ChatSummary]:
        """`scan().chats`: readable chats, newest first (unreadable ones are skipped)."""
        return self.scan().chats

    @property
    def _lock(self) -> threading.Lock:
        key = self.directory.resolve()
        with _LOCKS_GUARD:
            return _LOCKS.setdefault(key, threading.Lock())

    def _chat_files(self) -> list[tuple[str, Path, os.stat_result]]:
        """(id, path, stat) of every chat file; quarantined and temporary files do not match the id pattern."""
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        except OSError as error:
            raise HistoryError(f"The chats folder {self.directory} cannot be read: {error}") from error
        found = []
        for item in entries:
            stem = item.name.removesuffix(_SUFFIX)
            if item.name.endswith(_SUFFIX) and _ID_PATTERN.fullmatch(stem) and item.is_file():
                found.append((stem, Path(item.path), item.stat()))
        return found

    def _entry(self, path: Path, stat: os.stat_result, known: _Entry | None) -> _Entry:
        """The index entry of one file: `known` if the file is unchanged, else read from the file (never moved)."""
        if known is not None and known.matches(stat):
            return known
        try:
            chat = chat_from_json(json.loads(path.read_bytes().decode("utf-8")))
        except (OSError, ValueError) as error:  # ValueError: bad JSON, bad UTF-8 or not a chat
            problem = (f"Saved chat {path} cannot be read ({error}); it is not listed. Fix or remove the file "
                       "(opening it moves it aside).")
            log.warning("%s", problem)
            return _Entry(stat.st_mtime_ns, stat.st_size, problem=problem)
        return _Entry(stat.st_mtime_ns, stat.st_size, chat.title, chat.updated, len(chat.messages),
                      revision=chat.revision, created=chat.created)  # fmt: skip

    @property
    def _index_path(self) -> Path:
        return self.directory / INDEX_NAME

    def _read_index(self) -> dict[str, _Entry]:
        """The index as saved; empty (so every file is read again) if it is missing or damaged."""
        try:
            data = json.loads(self._index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            log.warning("Chat index %s is unreadable (%s); rebuilding it from the chat files.", self._index_path, error)
            return {}
        chats = data.get("chats") if isinstance(data, dict) and data.get("version") == INDEX_VERSION else None
        if not isinstance(chats, dict):
            return {}
        entries = {str(chat_id): _Entry.from_json(value) for chat_id, value in chats.items()}
        return {chat_id: entry for chat_id, entry in entries.items() if entry is not None}

    def _write_index(self, index: dict[str, _Entry]) -> None:
        data = {"version": INDEX_VERSION, "chats": {k: e.to_json() for k, e in index.items()}}
        try:
            atomic_write_text(self._index_path, json.dumps(data, ensure_ascii=False, separators=(",", ":")))
        except OSError as error:  # only a cache: the next listing reads the changed files again
            log.warning("Could not update the chat index %s: %s", self._index_path, error)
