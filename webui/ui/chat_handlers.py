"""The Chat tab's handlers: plain functions of `(state, values, ctx)` returning what changes, by name (see
`webui/ui/wiring.py`), so tests call them without a browser. The logic is in `webui/chat_service.py` (turns, the
tab's chat reference, stale tabs), `webui/chat_list.py` (the list), `webui/chat_io.py` (export, import) and
`webui/prompt_record.py` (the Prompt view); these only word the results.

A tab's open chat lives in the browser (`ref`: a `TabRef` value in the page's BrowserState), so a reloaded page and
a tab left open across a server restart still know their chat; every action starts from the saved file.

While a reply streams, the chatbot's message list is built once and then only its last message changes, and the
browser gets at most `UI_REFRESH_SECONDS` worth of updates: Gradio re-serializes and diffs the whole chatbot value
on every yield, so yielding per token would cost the length of the history per token.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from loaders.errors import CorralError, HistoryError
from webui import chat_io, chat_service
from webui.chat_list import chat_choices, chat_labels
from webui.chat_service import ChatSettings, StaleChat, TabRef
from webui.engine import describe_stats
from webui.generation import Pacer, StreamUpdate, status_text
from webui.history import Chat
from webui.state import AppState
from webui.templates import AUTO_TEMPLATE
from webui.ui.common import UI_REFRESH_SECONDS, error_text
from webui.ui.parameters import params_from_values
from webui.ui.prompt_view import prompt_html
from webui.ui.wiring import Ctx, Values

GENERATING = "Generating..."


class ShownReply:
    """The chatbot's messages while one reply streams: built from the chat once, then only the last one changes
    (the chat service updates the same chat in place). `due()` paces the updates sent to the browser."""

    def __init__(self) -> None:
        self._shown: list[dict[str, str]] | None = None
        self._length = 0  # messages in the chat when `_shown` was built
        self._pacer: Pacer | None = None

    def update(self, chat: Chat) -> list[dict[str, str]]:
        if self._shown is None or len(chat.messages) != self._length:  # the first update, or the reply's first
            self._shown, self._length = messages_of(chat), len(chat.messages)  # after waiting in line without one
        else:
            self._shown[-1]["content"] = chat.messages[-1].content
        return self._shown

    def due(self) -> bool:
        """True for the first update (the user's message appears at once), then at most once per refresh."""
        if self._pacer is None:
            self._pacer = Pacer(UI_REFRESH_SECONDS)
            return True
        return self._pacer.due()


def messages_of(chat: Chat | None) -> list[dict[str, str]]:
    if chat is None:
        return []
    return [{"role": m.role, "content": m.content} for m in chat.messages if m.role in ("user", "assistant")]


def past_update(state: AppState, query: str, selected: str | None) -> Any:
    """The Past chats list for `query`, with the tab's chat selected (when it is listed)."""
    choices = chat_choices(state.history.list(), query or "")
    return gr.update(choices=choices, value=selected if any(i == selected for _, i in choices) else None)


def shown_chat(state: AppState, chat: Chat | None, query: str = "", status: str = "") -> Values:
    """Everything the tab shows for `chat` (None: a new, empty chat)."""
    settings = ChatSettings.of(chat) if chat is not None else None
    values: Values = {
        "chatbot": messages_of(chat),
        "ref": TabRef.of(chat).to_browser(),
        "past": past_update(state, query, chat.id if chat else None),
        "prompt": prompt_html(state.prompts.get(chat.id if chat else None)),
        "status": status,
    }
    if settings is not None:
        values["settings"] = {"mode": settings.mode, "template": settings.template, "system": settings.system_prompt,
                              "user_name": settings.user_name, "bot_name": settings.bot_name}  # fmt: skip
    return values


def settings_of(values: Values) -> ChatSettings:
    s = values["settings"]
    return ChatSettings(s["mode"], s["template"] or AUTO_TEMPLATE, s["system"] or "", s["user_name"] or "You",
                        s["bot_name"] or "Assistant")  # fmt: skip


# --- page and list ---------------------------------------------------------------------------------------------------


def on_page_load(state: AppState, values: Values, ctx: Ctx) -> Values:
    """The tab as the server has it: the chat this browser had open (if it still exists) and the list."""
    try:
        return shown_chat(state, chat_service.saved_chat(state, TabRef.from_browser(values["ref"])))
    except CorralError as error:
        return {"status": error_text(error, "listing the chats")}


def on_open(state: AppState, values: Values, ctx: Ctx) -> Values:
    chat_id = values["past"]
    if not chat_id:
        return {}
    try:
        chat = state.history.load(chat_id)
    except CorralError as error:
        return {"status": error_text(error, "opening the chat"), "past": past_update(state, values["query"], None)}
    return shown_chat(state, chat, values["query"], f"Opened \u201c{chat.display_title}\u201d.")


def on_new(state: AppState, values: Values, ctx: Ctx) -> Values:
    return {"chatbot": [], "ref": TabRef().to_browser(), "past": gr.update(value=None), "status": "New chat.",
            "prompt": prompt_html(None)}  # fmt: skip


def on_search(state: AppState, values: Values, ctx: Ctx) -> Values:
    return {"past": past_update(state, values["query"], TabRef.from_browser(values["ref"]).id)}


def on_delete_ask(state: AppState, values: Values, ctx: Ctx) -> Values:
    chat = chat_service.saved_chat(state, TabRef.from_browser(values["ref"]))
    if chat is None:
        return {"status": "There is no saved chat open to delete."}
    label = chat_labels(state.history.list()).get(chat.id, chat.display_title)
    text = f"Move \u201c{label}\u201d to the trash? It is kept there for 30 days."
    return {"confirm": gr.update(visible=True), "confirm_text": text}


def on_delete_confirm(state: AppState, values: Values, ctx: Ctx) -> Values:
    ref = TabRef.from_browser(values["ref"])
    hidden = {"confirm": gr.update(visible=False)}
    if ref.id is None:
        return hidden
    try:
        where = state.history.trash(ref.id)
    except CorralError as error:
        return hidden | {"status": error_text(error, "deleting the chat")}
    status = f"Chat moved to the trash ({where.parent}); move the file back to the chats folder to restore it."
    return hidden | shown_chat(state, None, values["query"], status)


def on_delete_cancel(state: AppState, values: Values, ctx: Ctx) -> Values:
    return {"confirm": gr.update(visible=False), "status": "Kept."}


def on_export(state: AppState, values: Values, ctx: Ctx) -> Values:
    chat = chat_service.saved_chat(state, TabRef.from_browser(values["ref"]))
    if chat is None:
        return {"status": "There is no saved chat open to export.", "files": gr.update(visible=False)}
    paths = chat_io.export_files(chat, Path(tempfile.mkdtemp(prefix="corral-export-")))
    status = f"Exported \u201c{chat.display_title}\u201d as JSON and Markdown: download them below."
    return {"files": gr.update(value=[str(p) for p in paths], visible=True), "status": status}


def on_import(state: AppState, values: Values, ctx: Ctx) -> Values:
    path = values["upload"]
    if not path:
        return {}
    try:
        imported = chat_io.read_import_file(Path(path), store=state.history)
        state.history.save(imported.chat)
    except CorralError as error:
        return {"status": error_text(error, "importing the chat")}
    notes = " ".join(imported.notes)
    status = f"Imported a {imported.source} chat as \u201c{imported.chat.display_title}\u201d. {notes}".strip()
    return shown_chat(state, imported.chat, values["query"], status)


# --- turns -----------------------------------------------------------------------------------------------------------


def on_send(state: AppState, values: Values, ctx: Ctx) -> Iterator[Values]:
    text = values["message"] or ""
    if not text.strip():
        yield {"status": "Write a message first."}
        return
    try:
        chat_service.require_model(state)
        chat, note = chat_service.chat_to_send(state, TabRef.from_browser(values["ref"]), settings_of(values))
        params = params_from_values(values["params"])
    except (CorralError, ValueError) as error:
        yield {"status": error_text(_as_ours(error), "sending")}  # the message stays in the box
        return
    stream = chat_service.send(state, ctx.session, chat, text, params)
    yield from _turn(state, stream, chat, values, note, sent=text)


def on_regenerate(state: AppState, values: Values, ctx: Ctx) -> Iterator[Values]:
    yield from _edit_turn(state, values, ctx, chat_service.regenerate)


def on_continue(state: AppState, values: Values, ctx: Ctx) -> Iterator[Values]:
    yield from _edit_turn(state, values, ctx, chat_service.continue_reply)


def on_remove_last(state: AppState, values: Values, ctx: Ctx) -> Values:
    try:
        chat = chat_service.chat_to_edit(state, TabRef.from_browser(values["ref"]), settings_of(values))
        chat, text = chat_service.remove_last(state, chat)
    except StaleChat as stale:
        return shown_chat(state, stale.chat, values["query"], error_text(stale, "saving the chat"))
    except CorralError as error:
        return {"status": error_text(error, "saving the chat")}
    return shown_chat(state, chat, values["query"], "Removed the last exchange.") | {"message": text}


def on_clear(state: AppState, values: Values, ctx: Ctx) -> Values:
    try:
        chat = chat_service.clear(state, chat_service.chat_to_edit(state, TabRef.from_browser(values["ref"]),
                                                                   settings_of(values)))  # fmt: skip
    except StaleChat as stale:
        return shown_chat(state, stale.chat, values["query"], error_text(stale, "saving the chat"))
    except CorralError as error:
        return {"status": error_text(error, "saving the chat")}
    return shown_chat(state, chat, values["query"], "Cleared.")


def on_stop(state: AppState, values: Values, ctx: Ctx) -> Values:
    state.generation.stop(ctx.session)
    return {}


def _edit_turn(state: AppState, values: Values, ctx: Ctx, action: Any) -> Iterator[Values]:
    try:
        chat = chat_service.chat_to_edit(state, TabRef.from_browser(values["ref"]), settings_of(values))
        params = params_from_values(values["params"])
    except StaleChat as stale:
        yield shown_chat(state, stale.chat, values["query"], error_text(stale, "generating"))
        return
    except (CorralError, ValueError) as error:
        yield {"status": error_text(_as_ours(error), "generating")}
        return
    yield from _turn(state, action(state, ctx.session, chat, params), chat, values, "")


def _turn(
    state: AppState, stream: Iterator[tuple[Chat, StreamUpdate]], chat: Chat, values: Values, note: str, *,
    sent: str | None = None,
) -> Iterator[Values]:
    """Drive a chat_service stream into updates of the tab; the last one shows the chat as saved (and empties the
    message box once the message `sent` is saved)."""
    shown, status, first = ShownReply(), "", True
    stats = None
    try:
        for chat, update in stream:
            messages = shown.update(chat)
            if update.stats is not None:
                stats = update.stats
            elif update.queued:  # waiting in line: its place, and the user's message shown already
                yield {"chatbot": messages, "status": f"{note} {status_text(update)}".strip()}
            elif shown.due():
                start = {"ref": TabRef.of(chat).to_browser(), "message": ""} if first else {}
                first = False
                yield {"chatbot": messages, "status": f"{note} {GENERATING}".strip()} | start
    except Exception as error:  # noqa: BLE001 - error_text shows ours and logs anything else as a bug
        status = error_text(error, "generating")
    if stats is not None:  # after the loop: the last save, which may merge another tab's turn, is done
        notes = [note or (chat_service.BEHIND if chat.merged else ""), chat_service.reply_note(state, chat, stats)]
        status = " ".join([describe_stats(stats), *(n for n in notes if n)])
    saved = chat_service.saved_chat(state, TabRef(chat.id)) or chat
    final = shown_chat(state, saved, values["query"], status)
    if sent is not None and any(m.role == "user" and m.content == sent for m in saved.messages[-2:]):
        final["message"] = ""
    yield final


def _as_ours(error: Exception) -> CorralError:
    return error if isinstance(error, CorralError) else HistoryError(f"A parameter is not valid: {error}")
