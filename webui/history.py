"""Chat histories on disk: one JSON file per chat, `<dir>/<id>.json`, written atomically after every message.

Owns the `Chat` record (messages plus the settings a chat was held with), its JSON form, and the `HistoryStore`
that lists, loads, saves and deletes chats. A file that cannot be read as a chat is never deleted: it is moved
aside with `fileio.quarantine` (`<id>.broken-<time>.json`) and reported, and the other chats stay usable.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
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


@dataclass(frozen=True)
class ChatListing:
    """`HistoryStore.scan`: the readable chats, newest first, and one message per file that was quarantined."""

    chats: list[ChatSummary]
    problems: list[str]


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
    messages = _typed(data, "messages", list)
    return Chat(
        **text,
        mode=data["mode"],
        messages=[_message_from_json(item) for item in messages],
        created=float(_typed(data, "created", int | float)),
        updated=float(_typed(data, "updated", int | float)),
    )


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
        """Write the chat atomically: a crash leaves the previous version or this one, never half a file."""
        path = self.path(chat.id)
        atomic_write_text(path, json.dumps(chat_to_json(chat), ensure_ascii=False, indent=1))
        return path

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
        try:
            path.unlink()
        except FileNotFoundError as error:
            raise HistoryError(f"No saved chat '{chat_id}' to delete in {self.directory}.") from error

    def scan(self) -> ChatListing:
        """All readable chats, newest first; damaged files are quarantined, logged and reported in `problems`."""
        chats: list[ChatSummary] = []
        problems: list[str] = []
        for path in self._chat_files():
            try:
                chat = self.load(path.stem)
            except HistoryError as error:
                log.warning("%s", error)
                problems.append(str(error))
                continue
            chats.append(ChatSummary(chat.id, chat.display_title, chat.updated, len(chat.messages)))
        chats.sort(key=lambda summary: summary.updated, reverse=True)
        return ChatListing(chats=chats, problems=problems)

    def list(self) -> list[ChatSummary]:
        """`scan().chats`: readable chats, newest first (damaged ones are quarantined and skipped)."""
        return self.scan().chats

    def _chat_files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        # Quarantined files (`<id>.broken-<time>.json`) and temporary files do not match the id pattern.
        return [p for p in self.directory.glob(f"*{_SUFFIX}") if _ID_PATTERN.fullmatch(p.stem)]
