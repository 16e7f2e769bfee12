"""Chats in and out of Corral: export one chat as Corral's JSON and as Markdown, and import a chat file in one of
three forms, each becoming a new chat (a new id, never written over an existing one):

- Corral's own JSON (what `export` writes and `<user data>/chats/*.json` hold);
- an OpenAI-style `messages` list (`{"messages": [{"role": ..., "content": ...}]}` or the bare list): system and
  developer messages become the chat's system prompt, content may be text or a list of `{"type": "text"}` parts,
  tool and function messages are left out (and counted);
- text-generation-webui's chat JSON, `{"internal": [[user, bot], ...], "visible": [...]}`: the `internal` texts
  (the raw ones), its greeting-only first pair ("<|BEGIN-VISIBLE-CHAT|>") as a bot message.

An imported file is untrusted: its size, message count and text lengths are bounded before anything is built, and
an error names what is wrong without echoing the file's content.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loaders.errors import HistoryError
from webui.chat_prompt import chat_title
from webui.fileio import atomic_write_text
from webui.history import Chat, HistoryStore, chat_from_json, chat_to_json, new_chat_id
from webui.templates import Message

MAX_IMPORT_BYTES = 32 * 1000 * 1000
MAX_MESSAGES = 20_000
MAX_TEXT_CHARS = 2_000_000  # one message or system prompt
TGWUI_GREETING = "<|BEGIN-VISIBLE-CHAT|>"  # text-generation-webui's user text before a character's greeting
_OPENAI_SYSTEM = ("system", "developer")
_OPENAI_SKIPPED = ("tool", "function", "ipython")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9 ._-]+")


@dataclass(frozen=True)
class Imported:
    """A chat read from a file (not saved yet), the format it was in, and what was left out."""

    chat: Chat
    source: str  # "Corral", "OpenAI messages", "text-generation-webui"
    notes: tuple[str, ...] = ()


# --- export ----------------------------------------------------------------------------------------------------------


def export_json(chat: Chat) -> str:
    return json.dumps(chat_to_json(chat), ensure_ascii=False, indent=1) + "\n"


def export_markdown(chat: Chat) -> str:
    """The chat as a readable Markdown document: title, when and how it was held, then each message."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(chat.created))
    lines = [f"# {chat.display_title}", "", f"*{when}, {chat.mode} mode, template {chat.template}*", ""]
    if chat.system_prompt:
        lines += ["## System prompt", "", chat.system_prompt, ""]
    names = {"user": chat.user_name, "assistant": chat.bot_name, "system": "System"}
    for message in chat.messages:
        lines += [f"## {names[message.role]}", "", message.content, ""]
    return "\n".join(lines)


def export_files(chat: Chat, folder: Path) -> list[Path]:
    """Write `<title>.json` and `<title>.md` into `folder` (a fresh folder per export); returns both paths."""
    stem = _UNSAFE_NAME.sub("_", chat.display_title).strip(" ._")[:60] or "chat"
    paths = [folder / f"{stem}.json", folder / f"{stem}.md"]
    atomic_write_text(paths[0], export_json(chat))
    atomic_write_text(paths[1], export_markdown(chat))
    return paths


# --- import ----------------------------------------------------------------------------------------------------------


def read_import_file(path: Path, *, store: HistoryStore) -> Imported:
    """`read_import` of a file, its size checked before it is read."""
    try:
        size = path.stat().st_size
        if size > MAX_IMPORT_BYTES:
            raise HistoryError(f"{path.name} is {size:,} bytes; a chat file to import may have {MAX_IMPORT_BYTES:,}.")
        data = path.read_bytes()
    except OSError as error:
        raise HistoryError(f"{path.name} cannot be read: {error.strerror or error}.") from error
    return read_import(data, store=store, name=path.name)


def read_import(data: bytes, *, store: HistoryStore, name: str = "the file") -> Imported:
    """Parse a chat file in any of the three forms; `HistoryError` says why it cannot be imported."""
    if len(data) > MAX_IMPORT_BYTES:
        raise HistoryError(f"{name} is {len(data):,} bytes; a chat file to import may have {MAX_IMPORT_BYTES:,}.")
    try:
        parsed = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise HistoryError(f"{name} is not UTF-8 text, so it is not a chat file.") from error
    except (ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError
        raise HistoryError(f"{name} is not valid JSON ({_short(error)}).") from error
    try:
        imported = _convert(parsed, store)
    except (ValueError, TypeError, KeyError) as error:
        raise HistoryError(f"{name} cannot be imported: {_short(error)}") from error
    _check_bounds(imported.chat)
    return imported


def _convert(data: Any, store: HistoryStore) -> Imported:
    if isinstance(data, dict) and "internal" in data:
        return _from_tgwui(data, store)
    if isinstance(data, dict) and "version" in data and "mode" in data:
        try:
            chat = chat_from_json(data)
        except ValueError as error:  # its message may quote a field's value: say what, not the content
            raise ValueError("it looks like a Corral chat, but a field is missing or of the wrong type") from error
        fresh = dataclasses.replace(chat, id=new_chat_id(), revision=0, synced=0, updated=time.time())
        return Imported(fresh, "Corral")
    if isinstance(data, list) or (isinstance(data, dict) and "messages" in data):
        return _from_openai(data if isinstance(data, list) else data["messages"], store)
    raise ValueError(
        "it is not a Corral chat, an OpenAI-style messages list or a text-generation-webui chat "
        "(expected a 'messages' list, an 'internal' list, or Corral's 'version'/'mode'/'messages')."
    )


def _from_openai(items: Any, store: HistoryStore) -> Imported:
    if not isinstance(items, list):
        raise ValueError("'messages' must be a list")
    _check_count(len(items))
    system: list[str] = []
    messages: list[Message] = []
    skipped = 0
    for number, item in enumerate(items, 1):
        if not isinstance(item, dict) or not isinstance(item.get("role"), str):
            raise ValueError(f"message {number} is not an object with a 'role'")
        role = item["role"]
        if role in _OPENAI_SKIPPED:
            skipped += 1
            continue
        text = _openai_text(item.get("content"), number)
        if role in _OPENAI_SYSTEM:
            system.append(text)
        elif role in ("user", "assistant"):
            messages.append(Message(role, text))
        else:
            raise ValueError(f"message {number} has the role {role[:40]!r}; expected system, user or assistant")
    notes = (f"{skipped} tool or function message(s) left out.",) if skipped else ()
    return Imported(_new_chat(store, messages, "\n\n".join(system)), "OpenAI messages", notes)


def _openai_text(content: Any, number: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, {"type": "image_url", ...}]
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    raise ValueError(f"message {number}: 'content' must be text or a list of parts")


def _from_tgwui(data: dict[str, Any], store: HistoryStore) -> Imported:
    pairs = data["internal"]
    if not isinstance(pairs, list):
        raise ValueError("'internal' must be a list of [user, bot] pairs")
    _check_count(2 * len(pairs))
    messages: list[Message] = []
    for number, pair in enumerate(pairs, 1):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise ValueError(f"'internal' item {number} is not a [user, bot] pair of texts")
        user, bot = pair
        if user and user != TGWUI_GREETING:
            messages.append(Message("user", user))
        if bot:
            messages.append(Message("assistant", bot))
    return Imported(_new_chat(store, messages, "", mode="chat"), "text-generation-webui")


def _new_chat(store: HistoryStore, messages: list[Message], system: str, *, mode: str = "instruct") -> Chat:
    chat = store.new(mode=mode, system_prompt=system)  # type: ignore[arg-type]
    first = next((m.content for m in messages if m.role == "user"), "")
    chat.messages, chat.title = messages, chat_title(first) if first else "Imported chat"
    return chat


def _check_count(count: int) -> None:
    if count > MAX_MESSAGES:
        raise ValueError(f"it has {count:,} messages; at most {MAX_MESSAGES:,} can be imported")


def _check_bounds(chat: Chat) -> None:
    _check_count(len(chat.messages))
    texts = [chat.system_prompt, chat.title, *(m.content for m in chat.messages)]
    if any(len(text) > MAX_TEXT_CHARS for text in texts):
        raise HistoryError(f"A message in the file is longer than {MAX_TEXT_CHARS:,} characters; not imported.")


def _short(error: BaseException) -> str:
    """The error's own words, short; they name positions and keys, never the file's content."""
    text = str(error) if not isinstance(error, RecursionError) else "nested too deeply"
    return text if len(text) <= 300 else text[:300] + "..."
