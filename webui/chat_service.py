"""Chat service: one chat turn from message to saved reply, for the UI (and any other front end).

Streams the reply through the generation service with the chat's turn builder (`webui/chat_turn.py`: the prompt for
the chat's mode, rendered with the template, tokens and stop strings of the model that actually runs the turn), and
saves the chat to disk after the user's message, at most once a second while the reply streams, and after the
reply, so nothing typed is lost even if generation fails or is stopped. Each streamed token costs the same however
long the chat: the reply is written into the last message in place (`chat_prompt.StreamedReply`).

One writer per chat: a turn holds the chat's lock (`HistoryStore.chat_lock`) from the user's message to the saved
reply, so two sends into one chat (two tabs, or Enter plus a click) run one after the other; each save merges onto
the file (`HistoryStore.save`), so the second turn is appended after the first and answered with it in the prompt.
Operations that change earlier messages (Regenerate, Continue, Remove last, Clear) refuse a copy older than the
file rather than drop a turn saved elsewhere.

A browser tab holds only a `TabRef` (the open chat's id and the revision it last showed), kept in the browser so it
outlives a page reload and a server restart; every action starts from the saved file (`chat_to_send`,
`chat_to_edit`). A send from a tab that is behind the file goes after the file's messages and says so; an edit from
such a tab is refused with the chat as saved now (`StaleChat`), for the tab to show. A send with no model loaded is
refused before anything is saved. Each turn's exact prompt is kept for the Prompt view (`webui/prompt_record.py`),
and `reply_note` explains an empty reply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from loaders.base import GenerationParams
from loaders.errors import HistoryError, ModelNotLoadedError
from webui import chat_prompt, chat_turn
from webui.engine import GenerationStats
from webui.generation import Pacer, StreamUpdate
from webui.history import CHAT_MODES, Chat
from webui.prompt_record import recording
from webui.state import AppState
from webui.templates import AUTO_TEMPLATE, MODEL_TEMPLATE

SAVE_SECONDS = 1.0  # while streaming, the chat is saved at most this often (and always at the end)
EDIT_WAIT_SECONDS = 2.0  # an edit waits this long for a turn streaming into the chat, then says why it cannot run
STALE = (
    "This chat was changed in another tab or window since you opened it, so this would drop a message saved "
    "there. Open it again from Past chats, then try again."
)
BUSY = "A reply is being written into this chat. Wait for it (or press Stop), then try again."
BEHIND = ("This chat was changed in another tab or window since this one showed it; nothing was lost: its messages "
          "are shown above yours.")
SHOWN_NOW = "This chat was changed in another tab or window; here it is as saved now. Try again if you still want to."
NO_MODEL = "No model is loaded, so nothing was sent: load one in the Model tab. Your message is still in the box."


@dataclass(frozen=True)
class ChatSettings:
    """What the Chat tab's side controls set on the open chat."""

    mode: str = "instruct"
    template: str = AUTO_TEMPLATE
    system_prompt: str = ""
    user_name: str = "You"
    bot_name: str = "Assistant"

    def applied(self, chat: Chat) -> Chat:
        if self.mode not in CHAT_MODES:
            raise HistoryError(f"Chat mode must be one of {', '.join(CHAT_MODES)}, not {self.mode!r}.")
        return dataclasses.replace(chat, mode=self.mode, template=self.template or AUTO_TEMPLATE,  # type: ignore[arg-type]
                                   system_prompt=self.system_prompt, user_name=self.user_name,
                                   bot_name=self.bot_name)  # fmt: skip

    @classmethod
    def of(cls, chat: Chat) -> ChatSettings:
        return cls(chat.mode, chat.template, chat.system_prompt, chat.user_name, chat.bot_name)


@dataclass(frozen=True)
class TabRef:
    """The open chat of one browser tab: its id (None: a new chat, not saved yet) and the revision the tab shows."""

    id: str | None = None
    revision: int = 0

    @classmethod
    def from_browser(cls, value: Any) -> TabRef:
        """From the value the browser sent back (untrusted: anything malformed is no chat)."""
        if not isinstance(value, dict):
            return cls()
        chat_id, revision = value.get("id"), value.get("revision")
        if not isinstance(chat_id, str) or not isinstance(revision, int) or isinstance(revision, bool):
            return cls()
        return cls(chat_id[:100], max(0, revision))

    @classmethod
    def of(cls, chat: Chat | None) -> TabRef:
        return cls(chat.id, chat.revision) if chat is not None else cls()

    def to_browser(self) -> dict[str, Any]:
        return {"id": self.id, "revision": self.revision}


class StaleChat(HistoryError):
    """An edit from a tab behind the file: `chat` is the chat as saved now, for the tab to show."""

    def __init__(self, chat: Chat) -> None:
        super().__init__(SHOWN_NOW)
        self.chat = chat


def saved_chat(state: AppState, ref: TabRef) -> Chat | None:
    """The tab's chat as saved now; None for a new chat, or one that is gone (deleted in another tab)."""
    if ref.id is None:
        return None
    try:
        return state.history.load(ref.id)
    except HistoryError:
        return None


def chat_to_send(state: AppState, ref: TabRef, settings: ChatSettings) -> tuple[Chat, str]:
    """The chat a send from the tab goes into: the saved one (a new one if there is none) with the tab's settings,
    and a note when the file had moved on since the tab last showed it."""
    chat = saved_chat(state, ref)
    note = BEHIND if chat is not None and chat.revision != ref.revision else ""
    return settings.applied(chat or state.history.new()), note


def chat_to_edit(state: AppState, ref: TabRef, settings: ChatSettings) -> Chat:
    """The chat an edit (Regenerate, Continue, Remove last, Clear) works on; `StaleChat` if the tab is behind."""
    chat = saved_chat(state, ref)
    if chat is None:
        raise HistoryError("There is nothing to change yet: write a message first.")
    if chat.revision != ref.revision:
        raise StaleChat(chat)
    return settings.applied(chat)


def require_model(state: AppState) -> None:
    """Refuse a send while no model is loaded, before the message is saved."""
    if state.models.current_info is None:
        raise ModelNotLoadedError(NO_MODEL)


def reply_note(state: AppState, chat: Chat, stats: GenerationStats) -> str:
    """A line explaining an empty reply (a model that stopped at once), else ""."""
    reply = chat.messages[-1].content if chat.messages and chat.messages[-1].role == "assistant" else ""
    if reply.strip() or stats.stop_reason in ("cancelled", "stop_string"):
        return ""
    head = f"The reply is empty: the model stopped at once ({stats.new_tokens} tokens, stopped by {stats.stop_reason})."
    info = state.models.current_info
    own = info is not None and bool(info.model.tokenizer.chat_template)
    if chat.mode != "chat" and chat.template not in (AUTO_TEMPLATE, MODEL_TEMPLATE) and own:
        return (f"{head} The template '{chat.template}' may not be the format this model was trained on: pick "
                f"'{AUTO_TEMPLATE}' (the model's own chat template) in Prompt template and send again. "
                "The Prompt view shows what was sent.")
    return f"{head} The Prompt view shows what was sent; try Regenerate, another template, or ban_eos_token."


def send(
    state: AppState, session: str, chat: Chat, text: str, params: GenerationParams
) -> Iterator[tuple[Chat, StreamUpdate]]:
    require_model(state)
    with _writer(state, chat):
        chat = chat_prompt.add_user_message(chat, text)
        state.history.save(chat)  # merged onto the file: a turn saved elsewhere now comes before this message
        yield from _reply(state, session, chat, params, continue_last=False)


def regenerate(
    state: AppState, session: str, chat: Chat, params: GenerationParams
) -> Iterator[tuple[Chat, StreamUpdate]]:
    with _writer(state, chat):
        chat = _rebased(state, chat_prompt.prepare_regenerate(chat), replaces_last_reply=True)
        yield from _reply(state, session, chat, params, continue_last=False)


def continue_reply(
    state: AppState, session: str, chat: Chat, params: GenerationParams
) -> Iterator[tuple[Chat, StreamUpdate]]:
    with _writer(state, chat):
        chat = _rebased(state, chat_prompt.prepare_continue(chat))
        yield from _reply(state, session, chat, params, continue_last=True)


def remove_last(state: AppState, chat: Chat) -> tuple[Chat, str]:
    """`chat_prompt.remove_last`, saved; the removed user text comes back for the input box."""
    with _writer(state, chat, wait=EDIT_WAIT_SECONDS):
        chat, text = chat_prompt.remove_last(_rebased(state, chat))
        state.history.save(chat)
    return chat, text


def clear(state: AppState, chat: Chat) -> Chat:
    """`chat_prompt.clear_messages`, saved."""
    with _writer(state, chat, wait=EDIT_WAIT_SECONDS):
        chat = chat_prompt.clear_messages(_rebased(state, chat))
        state.history.save(chat)
    return chat


@contextmanager
def _writer(state: AppState, chat: Chat, *, wait: float = -1) -> Iterator[None]:
    """Hold the chat's lock (waiting `wait` seconds at most; -1: as long as a turn takes). Released in `finally`,
    also when a streaming caller closes the generator early."""
    lock = state.history.chat_lock(chat.id)
    if not lock.acquire(timeout=wait):
        raise HistoryError(BUSY)
    try:
        yield
    finally:
        lock.release()


def _rebased(state: AppState, chat: Chat, *, replaces_last_reply: bool = False) -> Chat:
    """`chat`, ready for an edit of its messages: unchanged if it is as new as its file; moved to the file's
    revision if the file holds nothing the edit would drop (the same messages, or with `replaces_last_reply` only a
    different last reply, which Regenerate replaces anyway); else `HistoryError`."""
    disk = state.history.newer(chat)
    if disk is None:
        return chat
    kept = disk.messages
    if replaces_last_reply and kept and kept[-1].role == "assistant":
        kept = kept[:-1]
    if kept != chat.messages:
        raise HistoryError(STALE)
    return dataclasses.replace(chat, revision=disk.revision, synced=len(chat.messages))


def _reply(
    state: AppState, session: str, chat: Chat, params: GenerationParams, *, continue_last: bool
) -> Iterator[tuple[Chat, StreamUpdate]]:
    """(chat, update) per streamed piece; the chat yielded is the same object each time, its last message updated."""
    reply = chat_prompt.StreamedReply(chat, continue_last=continue_last)
    build = chat_turn.chat_turn(state.templates, chat, params, continue_last=continue_last)
    build = recording(build, state.prompts, chat.id, template=chat.template)
    saves = Pacer(SAVE_SECONDS)
    try:
        for update in state.generation.stream(session, build):
            current = reply.chat if update.queued else reply.update(update.text)  # no empty reply while in line
            if update.stats is None and saves.due():
                state.history.save(current)
            yield current, update
    finally:
        state.history.save(reply.chat)
